"""What the supervisor says about a running local stack: typed status, outputs and state documents.

The same models travel over the control socket and fill the state file, so `status` reads the
same shape from a running supervisor and from the file a stopped one left behind, and each turns
itself into the verb result (`factory_core.local_results`) in one step: there is no other reader.
Their JSON keys are their field names, snake_case like every JSON document of the project.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from factory_core.local_results import BrokerRefusals, LocalOutputs, LocalService, LocalStatus, PipelineStatus
from factory_core.local_results import SimulatorCounts as SimulatorCountsResult
from local_stack import alertmanager, grafana, prometheus
from local_stack.certificate_authority import CA_CERT_FILE
from local_stack.paths import ALERTMANAGER, BROKER, GRAFANA, PROMETHEUS, StatePaths
from local_stack.ports import HOST
from local_stack.stack_config import StackConfig
from local_stack.status_view import PipelineSnapshot

STACK = "local"


class Document(BaseModel):
    """A typed document of the supervisor; `as_dict()` is its JSON object (field names as keys)."""

    model_config = ConfigDict(extra="ignore")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ServiceReport(Document):
    name: str
    kind: str
    state: str  # running | starting | stopped | exited (N) | failed (exit N)
    pid: int | None
    port: int | None
    restarts: int
    generation: str | None  # simulators: the certificate generation they connect with
    log: str

    def to_result(self) -> LocalService:
        return LocalService(**self.model_dump())


class SimulatorCounts(Document):
    desired: int
    up: int


class RotationInProgress(Document):
    from_generation: str
    to_generation: str
    step: str

    def to_result(self) -> dict[str, str]:
        return {"from": self.from_generation, "to": self.to_generation, "step": self.step}


class StatusReport(Document):
    stack: str = "local"
    running: bool
    phase: str  # starting | running | stopping | stopped | failed
    supervisor_pid: int
    started_at: float
    uptime_s: float
    first_archived_after_s: float | None
    simulators: SimulatorCounts
    generation: str | None
    rotation: RotationInProgress | None
    pipeline: PipelineSnapshot
    services: list[ServiceReport]
    events: list[str]
    error: str | None
    broker_refusals: BrokerRefusals | None = None

    def to_result(self, *, running: bool, state_dir: str) -> LocalStatus:
        """The `status` verb's answer; `running` is what the lock says, not what this document says."""
        return LocalStatus(
            stack=STACK,
            running=running,
            phase=self.phase,
            state_dir=state_dir,
            supervisor_pid=self.supervisor_pid,
            started_at=_time(self.started_at),
            uptime_s=self.uptime_s,
            first_archived_after_s=self.first_archived_after_s,
            simulators=SimulatorCountsResult(self.simulators.desired, self.simulators.up),
            generation=self.generation,
            rotation=self.rotation.to_result() if self.rotation else None,
            pipeline=pipeline_status(self.pipeline),
            services=tuple(service.to_result() for service in self.services),
            events=tuple(self.events),
            error=self.error,
            broker_refusals=self.broker_refusals,
        )


class StackOutputs(Document):
    stack: str = "local"
    broker_url: str | None
    broker_endpoint: str
    broker_port: int | None
    ca_certificate: str
    prometheus_url: str | None
    grafana_url: str | None
    grafana_password_file: str | None
    grafana_skipped: str | None
    archive: str | None
    logs_dir: str
    state_dir: str
    config_file: str
    simulator_count: int
    certificate_generation: str | None
    metrics_ports: dict[str, int]
    alertmanager_url: str | None = None
    silence_command: str | None = None
    grafana_container: str | None = None

    def to_result(self) -> LocalOutputs:
        return LocalOutputs(**self.model_dump(exclude={"stack"}))


class StateDocument(StatusReport):
    """The state file: the last status plus where to find things and which pids the stack owns."""

    outputs: StackOutputs
    control_socket: str
    pids: list[int]
    exit_code: int | None = None  # set once start failed: 2 bad input, 1 the work failed

    def as_dict(self) -> dict[str, Any]:
        document = super().as_dict()
        if self.exit_code is None:
            del document["exit_code"]
        return document


def _time(epoch_s: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC) if epoch_s else None


def pipeline_status(snapshot: PipelineSnapshot) -> PipelineStatus:
    """The sampler's snapshot as the verb result: counts are whole numbers (samples arrive as floats)."""
    return PipelineStatus(
        published_total=round(snapshot.published_total),
        archived_total=round(snapshot.archived_total),
        quarantined_total=round(snapshot.quarantined_total),
        publish_failures_total=round(snapshot.publish_failures_total),
        published_per_s=snapshot.published_per_s,
        archived_per_s=snapshot.archived_per_s,
        lag_s=snapshot.lag_s,
        connections_up=round(snapshot.connections_up),
        connections_planned=round(snapshot.connections_planned),
        queued=round(snapshot.queued),
        inflight=round(snapshot.inflight),
        exporters_up=snapshot.exporters_up,
        exporters_expected=snapshot.exporters_expected,
        sampled_at=_time(snapshot.sampled_at),
        archive_write_errors_total=round(snapshot.archive_write_errors_total),
        scrape_failures_total=snapshot.scrape_failures_total,
        unanswered=tuple(snapshot.unanswered),
    )


def stack_outputs(
    stack: StackConfig,
    paths: StatePaths,
    ports: dict[str, int],
    grafana_skipped: str | None,
    simulator_count: int,
    generation: str | None,
    grafana_container: str | None = None,
) -> StackOutputs:
    archive_folder = stack.archive_folder(paths.root)
    s3 = stack.local.archive.s3
    archive = str(archive_folder) if archive_folder else f"s3://{s3.bucket} at {s3.endpoint}" if s3 else None
    return StackOutputs(
        broker_url=f"mqtts://{HOST}:{ports[BROKER]}" if BROKER in ports else None,
        broker_endpoint=HOST,
        broker_port=ports.get(BROKER),
        ca_certificate=str(paths.ca_dir / CA_CERT_FILE),
        prometheus_url=prometheus.url(ports[PROMETHEUS]) if PROMETHEUS in ports else None,
        grafana_url=grafana.url(ports[GRAFANA]) if GRAFANA in ports else None,
        grafana_password_file=str(grafana.password_file(paths.grafana_dir)) if GRAFANA in ports else None,
        grafana_skipped=grafana_skipped,
        archive=archive,
        logs_dir=str(paths.logs_dir),
        state_dir=str(paths.root),
        config_file=str(stack.path),
        simulator_count=simulator_count,
        certificate_generation=generation,
        metrics_ports={
            name: port
            for name, port in ports.items()
            if name not in (BROKER, PROMETHEUS, ALERTMANAGER, GRAFANA)
        },
        alertmanager_url=alertmanager.url(ports[ALERTMANAGER]) if ALERTMANAGER in ports else None,
        silence_command=alertmanager.silence_command(ports[ALERTMANAGER]) if ALERTMANAGER in ports else None,
        grafana_container=grafana_container,
    )
