"""Errors every part of the product raises for the CLI to print as one line, and their exit codes."""

from enum import IntEnum


class UsageError(Exception):
    """Bad input: config, flags, certificates, files. Printed as one line; exit code 2.

    The message names what is wrong and how to fix it, e.g.
    "config fleet.qos: must be 0 or 1 (got 2); edit Pulumi.local.yaml".
    """


class OperationFailed(Exception):
    """The input was fine but the work failed (a broker died, an update failed). Exit code 1."""


class VerbUnavailable(UsageError):
    """A verb this kind of stack does not have. The one line says so and names what to run instead."""


class ExitCode(IntEnum):
    """The process exit codes of `cli.py`: the one table; cli.py is the only place that applies it."""

    OK = 0
    FAILED = 1  # OperationFailed, or a result that reports failure (verify found loss)
    USAGE = 2  # UsageError (bad input, config, an unavailable verb, confirmation missing)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it)


# Most specific first: VerbUnavailable is a UsageError.
_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (OperationFailed, ExitCode.FAILED),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
)


def exit_code_for(error: BaseException) -> ExitCode | None:
    """The exit code for an error a verb raised, or None for an error that is a bug (let it show)."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def exit_code_for_result(failed: bool) -> ExitCode:
    """A verb that returned a result: 0, or 1 when the result itself reports failure."""
    return ExitCode.FAILED if failed else ExitCode.OK
