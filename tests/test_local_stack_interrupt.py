"""Ctrl-C at the worst moment of a foreground `up`: while the supervisor is still starting.

Python drops a KeyboardInterrupt raised inside an at-fork handler ("Exception ignored in
_releaseLock"), so a Ctrl-C that lands while a child process is being forked used to be lost and
`up` ran on until killed. The stand-in supervisor below swallows the interrupt the same way.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from factory_core.verbs import QuietSink
from local_stack import lifecycle
from local_stack.paths import StatePaths


class StartingSupervisor:
    """The lifecycle's view of a supervisor; `start()` gets a SIGINT and loses its exception."""

    def __init__(self, *_args: Any) -> None:
        self.stop = threading.Event()
        self.calls: list[str] = []
        StartingSupervisor.last = self

    last: StartingSupervisor

    def acquire_lock(self) -> None:
        self.calls.append("lock")

    def start(self) -> None:
        self.calls.append("start")
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before kill() returns here
        except KeyboardInterrupt:
            self.calls.append("interrupt swallowed")  # as an at-fork handler would

    def outputs_report(self) -> Any:
        return type("Report", (), {"to_result": lambda _self: None})()

    def serve(self) -> None:
        # Returns once a stop is requested; without one, the test fails instead of hanging.
        assert self.stop.wait(10), "a Ctrl-C during start was lost: up kept serving"

    def request_stop(self) -> None:
        self.stop.set()

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def status_report(self) -> Any:
        return type("Report", (), {"to_result": lambda _self, **_kw: _Final()})()


class _Final:
    first_archived_after_s = None


def test_a_ctrl_c_lost_while_starting_still_stops_the_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lifecycle, "Supervisor", StartingSupervisor)
    monkeypatch.setattr(lifecycle, "LocalStarted", lambda *args: None)
    monkeypatch.setattr(lifecycle, "LocalUpResult", lambda **fields: fields)
    config = type("Config", (), {"simulator_count": 1})()
    before = signal.getsignal(signal.SIGINT)
    result: Any = lifecycle.up_foreground(config, StatePaths(tmp_path), QuietSink())  # type: ignore[arg-type]
    assert StartingSupervisor.last.calls == ["lock", "start", "interrupt swallowed", "shutdown"]
    assert result["running"] is False
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back
