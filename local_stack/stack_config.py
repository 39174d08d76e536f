"""The local stack's config: `Pulumi.local.yaml`, the same shape as the cloud stack files, validated once.

    config:
      iotfactory:fleet: {...}            # factory_core.fleet.FleetSettings, shared with dev/prod
      iotfactory:simulatorCount: 2
      iotfactory:archiveMode: batched    # or basic-ingest / direct, as on the cloud stacks
      iotfactory:local: {...}            # LocalSettings below: ports, archive, broker persistence

The file is read and edited by `factory_core.stack_file`; this module holds the local schema. Every
problem becomes one `UsageError` line naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from factory_core import stack_file
from factory_core.archive_modes import ARCHIVE_MODES, ArchiveMode, archive_rule_name, ingest_prefix
from factory_core.errors import SECRET_VALUE_ERROR, UsageError, describe_validation_error, shown
from factory_core.fleet import LOCAL_SIMULATORS, FleetSettings
from factory_core.stack_file import ARCHIVE_MODE_KEY, FLEET_KEY, LOCAL_KEY, SIMULATOR_COUNT_KEY

DEFAULT_SIMULATOR_COUNT = 2
# The local stack's bound on simulators (factory_core.fleet.SIMULATOR_COUNT_LIMITS says why).
MAX_SIMULATORS = LOCAL_SIMULATORS.maximum
# Prometheus 2.42 reads durations in whole milliseconds ("100us" is refused) and takes a scrape
# interval of 0 as "use the default" (one minute): anything that rounds below 1 ms is refused here.
PROMETHEUS_RESOLUTION_S = 0.001

Port = Annotated[int, Field(ge=0, le=65535, description="TCP port on 127.0.0.1; 0 picks a free one")]


class _LocalModel(BaseModel):
    # Pulumi config keys are camelCase (`simulatorCount`); the local section follows suit.
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, allow_inf_nan=False
    )


class S3ArchiveSettings(_LocalModel):
    """Any S3-compatible endpoint; credentials come from boto3's usual chain (env, profile), never config."""

    endpoint: Annotated[str, Field(description="e.g. http://127.0.0.1:5000")]
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+[a-z0-9]$")]
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] = "us-east-1"

    @field_validator("endpoint")
    @classmethod
    def _endpoint_url(cls, value: str) -> str:
        problem = endpoint_url_problem(value)
        if problem is not None:
            # An error type the formatter never echoes the value of (the URL may hold a password).
            raise PydanticCustomError(SECRET_VALUE_ERROR, problem)
        return value


def endpoint_url_problem(value: str) -> str | None:
    """What is wrong with an S3 endpoint URL, never repeating it (it may hold a password); None if fine."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "not a URL with a valid host and port; e.g. http://127.0.0.1:5000"
    if parts.username is not None or parts.password is not None:
        return (
            "credentials do not belong in the URL (the value is not shown); remove 'user:password@' -"
            " the S3 client takes them from boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            " or AWS_PROFILE"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return "must be http(s)://host[:port]; e.g. http://127.0.0.1:5000"
    if parts.query or parts.fragment:
        return "must not carry a query or fragment; e.g. http://127.0.0.1:5000"
    return None


class ArchiveSettings(_LocalModel):
    """Where the rule runner writes: a folder (default `archive` under the state dir) or S3."""

    folder: Annotated[str | None, Field(min_length=1, max_length=4096)] = None
    s3: S3ArchiveSettings | None = None

    @model_validator(mode="after")
    def _one_destination(self) -> ArchiveSettings:
        if self.folder is not None and self.s3 is not None:
            raise ValueError("set either folder or s3, not both")
        if self.folder is not None and "\x00" in self.folder:
            raise ValueError("folder: a path cannot hold a NUL character")
        return self


class MosquittoSettings(_LocalModel):
    persistence: bool = True
    # Seconds between saves of the broker's in-memory state (queued QoS 1 messages, sessions).
    # SIGTERM always saves; SIGKILL loses what arrived since the last save. 0 = save only on exit.
    autosave_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 5


class RuleRunnerBatching(_LocalModel):
    """`iotfactory:local.ruleRunner`: how the rule runner batches archive writes."""

    flush_interval_s: Annotated[float, Field(gt=0, le=300)] = 1.0
    batch_max_messages: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


_ADDRESS = r"^[^@\s,]+@[^@\s,]+$"


class AlertEmailSettings(_LocalModel):
    """`iotfactory:local.alerting.email`: critical alerts by e-mail. The password is not here: it is
    read from `<state folder>/alertmanager/smtp-password` (0600) when `username` is set."""

    smarthost: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$", description="host:port")]
    from_address: Annotated[str, Field(alias="from", pattern=_ADDRESS)]
    to: Annotated[list[Annotated[str, Field(pattern=_ADDRESS)]], Field(min_length=1, max_length=20)]
    username: Annotated[str | None, Field(min_length=1, max_length=256, pattern=r"^\S+$")] = None
    require_tls: bool = True


class AlertingSettings(_LocalModel):
    """`iotfactory:local.alerting`: where Alertmanager sends alerts (observability/alertmanager_config.py)."""

    webhook_url: Annotated[str | None, Field(max_length=2048)] = None
    email: AlertEmailSettings | None = None

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # The same rules as an S3 endpoint: http(s), no credentials or tokens in the URL (the stack
        # file is committed), and the value is never echoed.
        problem = endpoint_url_problem(value)
        if problem is not None:
            raise PydanticCustomError(SECRET_VALUE_ERROR, problem)
        return value


class LocalSettings(_LocalModel):
    broker_port: Port = 8883
    prometheus_port: Port = 9490
    # Not 9093: the Alertmanager package's own service.
    alertmanager_port: Port = 9493
    grafana_port: Port = 3300
    # Rule runner at the base, simulator i at base + 1 + i. Not 9100: Debian's node exporter.
    metrics_port_base: Port = 9800
    scrape_interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    prometheus_retention: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,5}(ms|[smhdwy])$")] = "7d"
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    mosquitto: MosquittoSettings = Field(default_factory=MosquittoSettings)
    rule_runner: RuleRunnerBatching = Field(default_factory=RuleRunnerBatching)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)

    @field_validator("scrape_interval_s")
    @classmethod
    def _prometheus_duration(cls, value: float) -> float:
        milliseconds = value / PROMETHEUS_RESOLUTION_S
        if value < PROMETHEUS_RESOLUTION_S or abs(milliseconds - round(milliseconds)) > 1e-6:
            raise ValueError(
                "Prometheus takes whole milliseconds of at least 0.001 s (below that it silently"
                " scrapes once a minute); e.g. 15 or 0.5"
            )
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalSettings:
        fixed = {
            "brokerPort": self.broker_port,
            "prometheusPort": self.prometheus_port,
            "alertmanagerPort": self.alertmanager_port,
            "grafanaPort": self.grafana_port,
        }
        base = self.metrics_port_base
        if base and base + 1 + MAX_SIMULATORS > 65535:
            raise ValueError(f"metricsPortBase: leave room for {MAX_SIMULATORS + 1} ports below 65536")
        for name, port in fixed.items():
            if not port:
                continue
            if list(fixed.values()).count(port) > 1:
                raise ValueError(f"{name}: port {port} is used twice; give each service its own port")
            if base and base <= port <= base + 1 + MAX_SIMULATORS:
                raise ValueError(
                    f"{name}: port {port} falls in the metrics ports {base}..{base + 1 + MAX_SIMULATORS}"
                    " (metricsPortBase); move one of them"
                )
        return self


@dataclass(frozen=True)
class StackConfig:
    path: Path
    fleet: FleetSettings
    simulator_count: int
    local: LocalSettings
    fleet_document: dict[str, Any]  # the fleet section as written, for the simulators' config file
    # How the rule runner gets the messages and writes them (factory_core.archive_modes): basic-ingest
    # has the simulators publish to the local rule's Basic Ingest topic, as on AWS.
    archive_mode: ArchiveMode = "batched"

    @property
    def topic_prefix(self) -> str:
        """What the simulators put before their topics: the local rule's Basic Ingest prefix, or ""."""
        return ingest_prefix(
            self.archive_mode, archive_rule_name(stack_file.NAMESPACE, stack_file.LOCAL_STACK)
        )

    def archive_folder(self, state_root: Path) -> Path | None:
        if self.local.archive.s3 is not None:
            return None
        folder = Path(self.local.archive.folder or "archive").expanduser()
        return folder if folder.is_absolute() else state_root / folder


def _validated(model: type[BaseModel], raw: Any, prefix: str, source: Path) -> Any:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        fix = f"edit {source} (keys: docs/local-stack.md)"
        raise UsageError(describe_validation_error(exc, prefix, fix, model=model, most=1)) from None


def load(path: Path) -> StackConfig:
    fix = f"edit {path}"
    missing_fix = (
        "restore Pulumi.local.yaml from the repository or point IOTFACTORY_LOCAL_CONFIG at a stack file"
    )
    if not path.exists():
        raise UsageError(f"stack config {path} not found; {missing_fix}")
    config = stack_file.read_config(path, fix=fix)
    known = (FLEET_KEY, SIMULATOR_COUNT_KEY, LOCAL_KEY, ARCHIVE_MODE_KEY)
    stack_file.refuse_unknown_keys(config, known, "the local stack", fix)
    fleet_raw = config.get(FLEET_KEY) or {}
    if not isinstance(fleet_raw, dict):
        raise UsageError(f"config {FLEET_KEY}: must be a mapping of fleet settings; {fix}")
    fleet = _validated(FleetSettings, fleet_raw, FLEET_KEY, path)
    local = _validated(LocalSettings, config.get(LOCAL_KEY), LOCAL_KEY, path)
    raw_count = config.get(SIMULATOR_COUNT_KEY, DEFAULT_SIMULATOR_COUNT)
    count = stack_file.whole_number(raw_count, SIMULATOR_COUNT_KEY, fix)
    check_simulator_count(count, f"config {SIMULATOR_COUNT_KEY}", fix)
    archive_mode = config.get(ARCHIVE_MODE_KEY, "batched")
    if archive_mode not in ARCHIVE_MODES:
        modes = ", ".join(ARCHIVE_MODES)
        raise UsageError(
            f"config {ARCHIVE_MODE_KEY}: must be one of {modes} (got {shown(archive_mode)}); {fix}"
        )
    return StackConfig(path, fleet, count, local, fleet_raw, archive_mode)


def check_simulator_count(count: int, what: str, fix: str) -> None:
    if count not in LOCAL_SIMULATORS:
        raise UsageError(
            f"{what}: {count} is outside {LOCAL_SIMULATORS.range_text} simulators for the local stack"
            f" ({LOCAL_SIMULATORS.why}); {fix}"
        )


def record_simulator_count(path: Path, count: int) -> bool:
    """Write `iotfactory:simulatorCount: N` into the stack file, keeping every other line and comment.

    Returns whether the file changed. The result is parsed again before it replaces the original.
    """
    check_simulator_count(count, "--simulators", "choose a count in that range")
    return stack_file.set_config_values(path, {SIMULATOR_COUNT_KEY: count})


def fleet_file_text(stack: StackConfig) -> str:
    """The simulators' `--config` file: a stack-file-shaped document holding only the fleet section."""
    header = f"# Written by the local stack from {stack.path}; edit that file instead.\n"
    return stack_file.render({stack_file.CONFIG_FIELD: {FLEET_KEY: stack.fleet_document}}, header)
