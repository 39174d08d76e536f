"""What the local stack's verbs return: its addresses, status, pipeline counts and lifecycle answers.

The same rules as every result (`factory_core.verb_results`): frozen dataclasses whose field names
are the JSON keys, checked by tests/test_json_style.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from factory_core.verb_results import VerbResult


@dataclass(frozen=True)
class LocalOutputs:
    """Where every piece of a local stack is (its last run's addresses when it is stopped)."""

    broker_url: str | None
    broker_endpoint: str
    broker_port: int | None
    ca_certificate: str
    prometheus_url: str | None
    grafana_url: str | None
    grafana_password_file: str | None
    grafana_skipped: str | None  # why Grafana does not run (not installed), else None
    archive: str | None
    logs_dir: str
    state_dir: str
    config_file: str
    simulator_count: int
    certificate_generation: str | None
    metrics_ports: dict[str, int] = field(default_factory=dict)
    alertmanager_url: str | None = None
    silence_command: str | None = None  # a runnable `amtool ... silence add ...` for this stack
    grafana_container: str | None = None  # the Docker container Grafana runs in, when it does


@dataclass(frozen=True)
class SimulatorCounts:
    desired: int
    up: int


@dataclass(frozen=True)
class PipelineStatus:
    """Totals since the supervisor started (each process's final counts once it stopped), current
    rates, and what the exporters report now."""

    published_total: int
    archived_total: int
    quarantined_total: int
    publish_failures_total: int
    published_per_s: float
    archived_per_s: float
    lag_s: float | None  # how far behind the archive is (grows while nothing gets written)
    connections_up: int
    connections_planned: int
    queued: int
    inflight: int
    exporters_up: int
    exporters_expected: int
    sampled_at: dt.datetime | None
    archive_write_errors_total: int = 0  # batch writes the archive refused (retried)
    scrape_failures_total: int = 0  # times a running service's exporter did not answer
    unanswered: tuple[str, ...] = ()  # running services whose exporter does not answer now
    # Everything that went wrong: failed publishes, quarantined messages, refused archive writes,
    # and exporters that did not answer.
    errors_total: int = field(init=False)

    def __post_init__(self) -> None:
        errors = (
            self.publish_failures_total
            + self.quarantined_total
            + self.archive_write_errors_total
            + self.scrape_failures_total
        )
        object.__setattr__(self, "errors_total", errors)


@dataclass(frozen=True)
class BrokerRefusals:
    """What the local broker refused that only its log shows, counted since the supervisor started.

    MQTT 3.1.1 clients learn nothing of a refusal: they are cut, or their PUBACK looks normal.
    """

    oversize_disconnects: int = 0  # clients cut for a packet over max_packet_size
    tls_refusals: int = 0  # connections refused in the TLS handshake (revoked, foreign, no certificate)
    sessions_cut: int = 0  # connections closed because their identity was deleted (revoked)
    takeovers: int = 0  # a connection closed by a second one of the same certificate


@dataclass(frozen=True)
class LocalService:
    name: str
    kind: str  # broker | rule-runner | simulator | prometheus | grafana
    state: str
    pid: int | None
    port: int | None
    restarts: int
    generation: str | None  # simulators: the certificate generation in use
    log: str


@dataclass(frozen=True)
class LocalStatus(VerbResult):
    """A local stack's state: live from its supervisor, else the last run's from its state file."""

    stack: str
    running: bool
    phase: str  # absent (never started) | starting | running | stopping | stopped | failed
    state_dir: str
    supervisor_pid: int | None = None
    started_at: dt.datetime | None = None
    uptime_s: float | None = None
    first_archived_after_s: float | None = None
    simulators: SimulatorCounts | None = None
    generation: str | None = None
    rotation: dict[str, str] | None = None  # the rotation record: from, to, step
    pipeline: PipelineStatus | None = None
    services: tuple[LocalService, ...] = ()
    events: tuple[str, ...] = ()
    error: str | None = None
    broker_refusals: BrokerRefusals | None = None


@dataclass(frozen=True)
class PanelLink:
    """A dashboard panel opened in Prometheus's own graph page (for stacks without Grafana)."""

    title: str
    url: str


@dataclass(frozen=True)
class LocalOutputsResult(VerbResult):
    stack: str
    running: bool
    outputs: LocalOutputs
    prometheus_links: tuple[PanelLink, ...] = ()  # the main panels, when Grafana does not run


@dataclass(frozen=True)
class LocalUpResult(VerbResult):
    """`up`: detached, the stack keeps running; in the foreground, it has stopped when this returns."""

    stack: str
    detached: bool
    running: bool
    supervisor_pid: int
    first_archived_after_s: float | None
    outputs: LocalOutputs | None
    final_status: LocalStatus | None = None  # foreground: the status as it stopped


@dataclass(frozen=True)
class LocalStopResult(VerbResult):
    stack: str
    stopped: bool  # False: it was not running
    supervisor_pid: int | None
    state_dir: str


@dataclass(frozen=True)
class LocalDestroyResult(VerbResult):
    stack: str
    destroyed: bool  # False: there was nothing to destroy
    state_dir: str
    config_file: str  # kept
    stopped_supervisor: int | None = None
    killed_leftovers: int = 0
    archive: str | None = None  # where the archive is
    archive_deleted: bool = False  # False: it lies outside the state folder (or in S3) and is kept
    archive_objects: int | None = None  # None: not counted (an S3 archive, kept)
    archive_bytes: int | None = None
    deleted: tuple[str, ...] = ()  # what went with the state folder, in words

    @property
    def deleted_text(self) -> str:
        return describe_deleted(
            self.archive, self.archive_deleted, self.archive_objects, self.archive_bytes, self.deleted
        )


def describe_deleted(
    archive: str | None,
    archive_deleted: bool,
    objects: int | None,
    size_bytes: int | None,
    deleted: tuple[str, ...],
) -> str:
    """What deleting a local stack's state folder deletes, for its prompt and its report."""
    if archive_deleted:
        others = [item for item in deleted if item != "archive"]
        counted = f"the archive ({objects or 0:,} objects, {(size_bytes or 0) / 1e6:,.1f} MB)"
        return ", ".join([counted, *others])
    kept = [f"but not the archive at {archive}"] if archive else []
    return ", ".join([*deleted, *kept])


@dataclass(frozen=True)
class LocalScaleResult(VerbResult):
    stack: str
    running: bool  # False: only recorded for the next `up`
    simulators: int
    before: int | None  # None: not running
    config_file: str  # where the count is recorded


@dataclass(frozen=True)
class TailResult(VerbResult):
    """`tail`: the messages went out as `TailMessage` events while it watched; this is the summary."""

    stack: str
    identity: str  # the read-only identity it watched with
    topic_filters: tuple[str, ...]
    messages: int


@dataclass(frozen=True)
class LogsResult(VerbResult):
    """`logs`: the lines went out as `LogLine` events; this is what was read."""

    stack: str
    services: tuple[str, ...]
    lines: int
    followed: bool
