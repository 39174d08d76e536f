"""Errors every part of the product raises for the CLI to print as one line."""


class UsageError(Exception):
    """Bad input: config, flags, certificates, files. Printed as one line; exit code 2.

    The message names what is wrong and how to fix it, e.g.
    "config fleet.qos: must be 0 or 1 (got 2); edit Pulumi.local.yaml".
    """


class OperationFailed(Exception):
    """The input was fine but the work failed (a broker died, an update failed). Exit code 1."""
