"""Running one Pulumi operation (up, preview, destroy, refresh) for a verb: events, Ctrl-C and SIGTERM.

An interrupted update must never become two updates on one state. So the CLI never cancels (on
the S3 backend `pulumi cancel` deletes the lock while the engine may still be writing): it passes
the interrupt to the engine once, keeps showing its events while it finishes the operations in
flight, waits for it to exit, and only then reads the stack's lock and says what to do.

The operation runs on a worker thread; this (main) thread only waits, so a signal never lands
inside the Automation API while it reads the engine's output (a KeyboardInterrupt there would close
the engine's pipes and kill it mid-write).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from automation.progress import progress_event
from automation.stack_context import busy
from automation.stack_port import (
    StackBusyError,
    StackLock,
    StackPort,
    UpdateFailedError,
    UpdateResult,
)
from factory_core.errors import OperationFailed
from factory_core.verbs import ProgressSink

# While waiting for the engine after an interrupt, say so this often.
STILL_WAITING_EVERY_S = 15.0
# The main thread waits in slices this long: a signal the kernel hands to another thread (any thread
# may take a process-directed signal) wakes no blocked lock, so Python runs its handler only when
# the main thread next checks; this bounds how late an interrupt is noticed.
_WAIT_SLICE_S = 0.2
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _Run:
    """The worker's outcome, and the interrupts the main thread received meanwhile."""

    finished: threading.Event = field(default_factory=threading.Event)
    result: UpdateResult | None = None
    error: BaseException | None = None
    signals: list[int] = field(default_factory=list)
    # Only while the main thread waits does a signal raise there; at any other moment (starting the
    # worker, printing) it is recorded and handled as soon as the waiting resumes.
    waiting: bool = False


@contextmanager
def _signals_interrupt(run: _Run) -> Iterator[bool]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in this thread and are recorded; yields False when
    this is not the main thread (signals stay as they are; the caller runs the operation inline)."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        run.signals.append(signum)
        if run.waiting:
            run.waiting = False
            raise KeyboardInterrupt

    try:
        previous = {number: signal.signal(number, interrupt) for number in _SIGNALS}
    except ValueError:  # not the main thread
        yield False
        return
    try:
        yield True
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def engine_already_interrupted(signum: int) -> bool:
    """Whether the Pulumi engine got this signal itself: a terminal sends Ctrl-C to the whole
    foreground process group, the engine included. A second SIGINT would make it stop abruptly."""
    if signum != signal.SIGINT:
        return False
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def run_update(
    port: StackPort, operation: str, sink: ProgressSink, *, watch: Callable[[Any], None] | None = None
) -> UpdateResult:
    """`operation` on the stack with its engine events reported to `sink` (and to `watch`, raw);
    failures as one line."""
    run_operation: Callable[..., UpdateResult] = getattr(port, operation)

    def on_event(event: Any) -> None:
        if watch is not None:
            watch(event)
        converted = progress_event(event)
        if converted is not None:
            sink.event(converted)

    run = _Run()

    def work() -> None:
        try:
            run.result = run_operation(on_event)
        except BaseException as error:  # handed to the main thread as it is
            run.error = error
        finally:
            run.finished.set()

    with sink.operation(operation), _signals_interrupt(run) as on_main_thread:
        if on_main_thread:
            threading.Thread(target=work, name=f"pulumi-{operation}", daemon=True).start()
            _wait(port, run, sink)
        else:
            work()
    if run.signals:
        return _after_interrupt(port, operation, run, sink)
    return _outcome(port, operation, run)


def _wait(port: StackPort, run: _Run, sink: ProgressSink) -> None:
    """Until the engine exits; the first interrupt is passed on, the second stops the waiting."""
    waited_since: float | None = None
    said_at = 0.0
    handled = 0
    while True:
        try:
            run.waiting = True
            if len(run.signals) > handled:  # arrived while this thread was busy elsewhere
                run.waiting = False
                raise KeyboardInterrupt
            done = run.finished.wait(_WAIT_SLICE_S)
            run.waiting = False
            if done:
                return
            now = time.monotonic()
            if waited_since is not None and now - said_at >= STILL_WAITING_EVERY_S:
                said_at = now
                sink.step(f"still waiting for Pulumi to stop ({now - waited_since:.0f} s)")
        except KeyboardInterrupt:
            handled = len(run.signals)
            if waited_since is not None:
                sink.step(
                    f"stopped waiting: Pulumi may still be running and holding the lock of stack "
                    f"'{port.name}'; do not start another update until `pulumi stack history --stack "
                    f"{port.name}` shows this one ended (docs/cloud.md, Interruption)",
                    warning=True,
                )
                raise
            waited_since = said_at = time.monotonic()
            if not engine_already_interrupted(run.signals[-1]):
                port.interrupt_engine()
            sink.step(
                f"interrupted: waiting for Pulumi to finish the operations in flight and release the lock "
                f"of stack '{port.name}' (Ctrl-C again stops waiting; the update may then stay locked)",
                warning=True,
            )


def _outcome(port: StackPort, operation: str, run: _Run) -> UpdateResult:
    if run.error is None:
        assert run.result is not None
        return run.result
    try:
        raise run.error
    except StackBusyError:
        raise busy(port.name) from None
    except UpdateFailedError as exc:
        raise OperationFailed(f"{operation} of stack '{port.name}' failed: {exc}") from None


def _after_interrupt(port: StackPort, operation: str, run: _Run, sink: ProgressSink) -> UpdateResult:
    """The engine has exited after an interrupt: report what it left behind, then stop (exit 130)."""
    if run.error is None and run.result is not None:
        sink.step(f"{operation} of stack '{port.name}' finished before the interrupt took effect")
        return run.result
    sink.step(lock_report(port.name, port.lock_holders()), warning=True)
    raise KeyboardInterrupt


def lock_report(stack: str, locks: list[StackLock] | None) -> str:
    """What the user reads once the engine has exited: whether the stack is locked, and what to do."""
    if locks is None:
        return (
            f"Pulumi stopped; its backend releases the lock of stack '{stack}' when the engine exits. "
            "Run the same command again to finish; if it says the stack is locked, see docs/cloud.md"
        )
    if not locks:
        return (
            f"Pulumi stopped and stack '{stack}' is not locked; resources it had not reached are "
            "unchanged. Run the same command again to finish"
        )
    lock = locks[0]
    return (
        f"Pulumi stopped but stack '{stack}' is still locked ({lock.where}, {lock.holder}); if no "
        f"update is running there, release it with `pulumi cancel --stack {stack} --yes`, then run "
        "the same command again"
    )
