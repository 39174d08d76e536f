"""The ground floor every part stands on: stack file, fleet schema and limits, errors and exit codes,
metric catalog, payload contract, certificate-generation state machine, connection planning.

It imports none of `simulator`, `infra`, `observability`, `local_stack` or `automation`.
"""
