"""Running one Pulumi operation (up, preview, destroy) for a verb: progress events, Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

import psutil

from automation.progress import progress_event
from automation.stack_context import busy
from automation.stack_port import (
    StackBusyError,
    StackMissingError,
    StackPort,
    UpdateFailedError,
    UpdateResult,
)
from factory_core.errors import OperationFailed
from factory_core.verbs import ProgressSink


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, a container stopped) gets the same clean cancel as Ctrl-C.

    A terminal's Ctrl-C reaches the Pulumi CLI too (same process group); SIGTERM reaches only
    this process, so it is passed on to the children as SIGINT, Pulumi's signal to stop safely.
    """

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        _interrupt_children()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_children() -> None:
    for child in psutil.Process().children():
        # psutil checks the child is still the process it listed, so a reused pid is never signalled.
        with suppress(psutil.Error):
            child.send_signal(signal.SIGINT)


def run_update(port: StackPort, operation: str, sink: ProgressSink) -> UpdateResult:
    """`operation` on the stack with its engine events reported to `sink`; failures as one line."""
    run: Callable[..., UpdateResult] = getattr(port, operation)

    def on_event(event: Any) -> None:
        converted = progress_event(event)
        if converted is not None:
            sink.event(converted)

    with sink.operation(operation), _terminate_as_interrupt():
        try:
            return run(on_event)
        except KeyboardInterrupt:
            _cancel(port, sink)
            raise
        except StackBusyError:
            raise busy(port.name) from None
        except UpdateFailedError as exc:
            raise OperationFailed(f"{operation} of stack '{port.name}' failed: {exc}") from None


def _cancel(port: StackPort, sink: ProgressSink) -> None:
    sink.step("interrupted: cancelling the update (press Ctrl-C again only if this hangs)", warning=True)
    try:
        port.cancel()
    except KeyboardInterrupt:
        sink.step(
            f"cancel interrupted; if the stack stays locked run `pulumi cancel --stack {port.name}`",
            warning=True,
        )
    except (UpdateFailedError, StackBusyError, StackMissingError) as exc:
        # Pulumi stops on the same Ctrl-C and may already have released its lock.
        sink.step(f"update stopped ({exc}); no lock left")
    else:
        sink.step(
            f"update cancelled and the lock released; run the command again to finish stack '{port.name}'"
        )
