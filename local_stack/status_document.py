"""What the supervisor says about a running local stack: typed status, outputs and state documents.

The same models travel over the control socket and fill the state file, so `status` reads the
same shape from a running supervisor and from the file a stopped one left behind. Field names are
snake_case in Python; the JSON keys come from one alias rule (`_KEYS`), so changing the JSON style
is one line here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from factory_core.verb_results import BrokerRefusals
from local_stack import alertmanager, grafana, prometheus
from local_stack.certificate_authority import CA_CERT_FILE
from local_stack.paths import ALERTMANAGER, BROKER, GRAFANA, PROMETHEUS, StatePaths
from local_stack.ports import HOST
from local_stack.stack_config import StackConfig
from local_stack.status_view import PipelineSnapshot

_KEYS = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Document(BaseModel):
    """A model whose `as_dict()` is exactly the JSON object callers of the string API have always seen."""

    model_config = _KEYS

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ServiceReport(Document):
    name: str
    kind: str
    state: str  # running | starting | stopped | exited (N) | failed (exit N)
    pid: int | None
    port: int | None
    restarts: int
    generation: str | None  # simulators: the certificate generation they connect with
    log: str


class SimulatorCounts(Document):
    desired: int
    up: int


class RotationInProgress(Document):
    from_generation: str = Field(alias="from")
    to_generation: str = Field(alias="to")
    step: str


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

    @field_serializer("pipeline")
    def _pipeline_keys(self, pipeline: PipelineSnapshot) -> dict[str, Any]:
        # The snapshot's own field names (its owner, status_view, reads them back), not aliases.
        return pipeline.as_dict()


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


class StateDocument(StatusReport):
    """The state file: the last status plus where to find things and which pids the stack owns."""

    outputs: StackOutputs
    control_socket: str
    pids: list[int]
    exit_code: int | None = None  # set once start failed: 2 bad input, 1 the work failed

    def as_dict(self) -> dict[str, Any]:
        document = super().as_dict()
        if self.exit_code is None:
            del document["exitCode"]
        return document


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
