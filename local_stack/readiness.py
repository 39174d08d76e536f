"""Readiness: the one way the local stack waits for something — a probe, polled until a deadline.

A service is ready when each stage of its readiness holds in turn (a port is open, a file appeared,
a metric reached a value). `wait_ready` fails as soon as the process exits, and at a stage's
deadline with a message naming the service, what it did not do, the end of its log and the log
file. Every other wait in the local stack (a port in a test, Prometheus picking up its targets, the
archive settling before shutdown) goes through `wait_until` too: the only sleep is its bounded poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from factory_core import metric_catalog as catalog
from factory_core.errors import OperationFailed, UsageError
from local_stack.ports import HOST, port_open
from local_stack.status_view import scrape, total

if TYPE_CHECKING:  # processes waits with `wait_until`, so only the type is imported
    from local_stack.processes import ManagedProcess

POLL_S = 0.05


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = POLL_S) -> bool:
    """True as soon as `condition()` holds; False once `timeout_s` has passed without it."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(poll_s, remaining))


class Probe(Protocol):
    """One condition a service reaches when it is up; `goal` completes "<service> did not ..."."""

    @property
    def goal(self) -> str: ...

    def __call__(self) -> bool: ...


@dataclass(frozen=True)
class PortOpen:
    port: int
    host: str = HOST

    @property
    def goal(self) -> str:
        return f"open port {self.port}"

    def __call__(self) -> bool:
        return port_open(self.port, self.host)


@dataclass(frozen=True)
class FileAppears:
    """The service writes a file once it is ready (the rule runner, once it has subscribed)."""

    path: Path
    goal: str

    def __call__(self) -> bool:
        return self.path.exists()


@dataclass(frozen=True)
class AllConnectionsUp:
    """A simulator is steady once its exporter reports every planned MQTT connection up."""

    metrics_port: int
    goal: str = "connect"

    def __call__(self) -> bool:
        samples = scrape(self.metrics_port)
        if samples is None:
            return False
        planned = total(samples, catalog.CONNECTIONS_PLANNED.name)
        return planned > 0 and total(samples, catalog.CONNECTIONS_UP.name) >= planned


@dataclass
class LogLineAfter:
    """A line containing `text` was written to `log` past `offset` (the broker's "Reloading config.")."""

    log: Path
    text: str
    goal: str
    offset: int = 0

    @classmethod
    def from_now(cls, log: Path, text: str, goal: str) -> LogLineAfter:
        try:
            offset = log.stat().st_size
        except OSError:
            offset = 0
        return cls(log, text, goal, offset)

    def __call__(self) -> bool:
        try:
            with self.log.open("rb") as stream:
                stream.seek(self.offset)
                return self.text.encode() in stream.read()
        except OSError:
            return False


@dataclass
class CountersSettle:
    """The rule runner has archived the backlog: its counters stopped moving for `quiet_s`."""

    metrics_port: int
    quiet_s: float
    goal: str = "finish archiving"
    _last: float | None = None
    _changed_at: float = field(default_factory=time.monotonic)

    def __call__(self) -> bool:
        samples = scrape(self.metrics_port)
        if samples is not None:
            seen = total(samples, catalog.ARCHIVED.name) + total(samples, catalog.QUARANTINED.name)
            if seen != self._last:
                self._last, self._changed_at = seen, time.monotonic()
        return time.monotonic() - self._changed_at >= self.quiet_s


@dataclass(frozen=True)
class Stage:
    probe: Probe
    timeout_s: float
    poll_s: float = POLL_S  # a probe that scrapes an exporter polls slower: the service is booting


Readiness = tuple[Stage, ...]


def wait_ready(name: str, process: ManagedProcess, readiness: Sequence[Stage]) -> None:
    """Return once every stage holds; raise if the process exits first or a stage misses its deadline.

    An exit with code 2 (the service refused its input) is a UsageError, any other an OperationFailed.
    A service that misses a deadline is left running: the caller's cleanup stops it gracefully, so a
    simulator still drains and writes its checkpoint.
    """
    for stage in readiness:
        reached = wait_until(
            lambda stage=stage: not process.running() or stage.probe(), stage.timeout_s, stage.poll_s
        )
        if not process.running():
            raise exited_during_start(name, process)
        if not reached:
            raise OperationFailed(
                f"{name} did not {stage.probe.goal} within {stage.timeout_s:g} s: "
                f"{process.log_tail()}; see {process.log_path}"
            )


def exited_during_start(name: str, process: ManagedProcess) -> Exception:
    code = process.returncode
    message = f"{name} exited during start (exit {code}): {process.log_tail()}; see {process.log_path}"
    return UsageError(message) if code == 2 else OperationFailed(message)
