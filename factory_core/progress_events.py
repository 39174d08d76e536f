"""What a verb reports while it runs: the events a `ProgressSink` receives.

With `--json` each event is one line `{"event": <kind>, <fields>}`; the rich renderer draws them
(a progress bar for Pulumi resources, coloured notes, log lines). Field rules as in
`factory_core.verb_results`: the fields are the JSON keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

from factory_core.local_results import LocalOutputs, PipelineStatus, SimulatorCounts
from factory_core.verb_results import CostChange


@dataclass(frozen=True)
class ProgressEvent:
    """Base of every event; `kind` is the value of its JSON line's `event` key."""

    kind: ClassVar[str] = "event"


@dataclass(frozen=True)
class Note(ProgressEvent):
    """A step message for people (`ProgressSink.step`)."""

    kind: ClassVar[str] = "note"
    message: str
    level: str = "info"  # info | warning


# -- Pulumi engine events (cloud updates) ------------------------------------------------------------


@dataclass(frozen=True)
class ResourceStarted(ProgressEvent):
    kind: ClassVar[str] = "resource-start"
    op: str
    urn: str
    type: str


@dataclass(frozen=True)
class ResourceDone(ProgressEvent):
    kind: ClassVar[str] = "resource-done"
    op: str
    urn: str
    type: str


@dataclass(frozen=True)
class ResourceFailed(ProgressEvent):
    kind: ClassVar[str] = "resource-failed"
    op: str
    urn: str
    type: str


@dataclass(frozen=True)
class Diagnostic(ProgressEvent):
    kind: ClassVar[str] = "diagnostic"
    severity: str
    urn: str | None
    message: str


@dataclass(frozen=True)
class UpdateSummary(ProgressEvent):
    kind: ClassVar[str] = "summary"
    resource_changes: dict[str, int]
    duration_s: float
    maybe_corrupt: bool


@dataclass(frozen=True)
class ScalePlanned(ProgressEvent):
    """What a cloud fleet of N simulators asks of AWS IoT Core, before the update runs."""

    kind: ClassVar[str] = "scale-plan"
    simulators: int
    publishes_per_second: float
    connections: int
    account_publishes_per_second: int
    verdict: str  # ok | near-quota
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CostChanged(ProgressEvent):
    """Cloud `up` and `scale`, before the update: the monthly estimate before and after it."""

    kind: ClassVar[str] = "cost-change"
    change: CostChange


# -- local stack -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalStarted(ProgressEvent):
    """Foreground `up`: every service is up; the stack runs until Ctrl-C."""

    kind: ClassVar[str] = "started"
    supervisor_pid: int
    startup_s: float
    outputs: LocalOutputs


@dataclass(frozen=True)
class StatusSample(ProgressEvent):
    """Foreground `up` without a terminal (or with --json): the pipeline, now and then."""

    kind: ClassVar[str] = "status"
    simulators: SimulatorCounts
    pipeline: PipelineStatus


@dataclass(frozen=True)
class LogSources(ProgressEvent):
    """`logs`: the services whose lines follow (again when `scale` adds one while following)."""

    kind: ClassVar[str] = "log-sources"
    services: tuple[str, ...]
    follow: bool


@dataclass(frozen=True)
class LogLine(ProgressEvent):
    kind: ClassVar[str] = "log"
    service: str
    line: str


@dataclass(frozen=True)
class TailMessage(ProgressEvent):
    """`tail`: one message seen on the broker, with where it came from (parsed from its topic)."""

    kind: ClassVar[str] = "message"
    topic: str
    payload_kind: str | None  # telemetry | ground_truth; None for a topic outside the contract
    site: str | None
    line: str | None
    machine: str | None
    received_at: dt.datetime
    payload: dict[str, Any] | None  # the JSON object; None when it is not one
    excerpt: str | None = None  # the first bytes, as text, when it is not a JSON object
