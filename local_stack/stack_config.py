"""The local stack's config: `Pulumi.local.yaml`, the same shape as the cloud stack files, validated once.

    config:
      iotfactory:fleet: {...}            # factory_core.fleet.FleetSettings, shared with dev/prod
      iotfactory:simulatorCount: 2
      iotfactory:local: {...}            # LocalSettings below: ports, archive, broker persistence

Every problem becomes one `UsageError` line naming the key and the fix.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from factory_core.errors import UsageError
from factory_core.fleet import FleetSettings

FLEET_KEY = "iotfactory:fleet"
COUNT_KEY = "iotfactory:simulatorCount"
LOCAL_KEY = "iotfactory:local"
DEFAULT_SIMULATOR_COUNT = 2
# Each simulator is a Python process of its own; more than this does not fit one machine usefully.
MAX_SIMULATORS = 50

Port = Annotated[int, Field(ge=0, le=65535, description="TCP port on 127.0.0.1; 0 picks a free one")]


class _LocalModel(BaseModel):
    # Pulumi config keys are camelCase (`simulatorCount`); the local section follows suit.
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class S3Archive(_LocalModel):
    """Any S3-compatible endpoint; credentials come from boto3's usual chain (env, profile), never config."""

    endpoint: Annotated[str, Field(pattern=r"^https?://", description="e.g. http://127.0.0.1:5000")]
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+[a-z0-9]$")]
    region: str = "us-east-1"


class ArchiveSettings(_LocalModel):
    """Where the rule runner writes: a folder (default `archive` under the state dir) or S3."""

    folder: str | None = None
    s3: S3Archive | None = None

    @model_validator(mode="after")
    def _one_destination(self) -> ArchiveSettings:
        if self.folder is not None and self.s3 is not None:
            raise ValueError("set either folder or s3, not both")
        return self


class MosquittoSettings(_LocalModel):
    persistence: bool = True
    # Seconds between saves of the broker's in-memory state (queued QoS 1 messages, sessions).
    # SIGTERM always saves; SIGKILL loses what arrived since the last save. 0 = save only on exit.
    autosave_interval_s: Annotated[int, Field(ge=0, le=86_400)] = 5


class RuleRunnerSettings(_LocalModel):
    flush_interval_s: Annotated[float, Field(gt=0, le=300)] = 1.0
    batch_max_messages: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class LocalSettings(_LocalModel):
    broker_port: Port = 8883
    prometheus_port: Port = 9490
    grafana_port: Port = 3300
    # Rule runner at the base, simulator i at base + 1 + i. Not 9100: Debian's node exporter.
    metrics_port_base: Port = 9800
    scrape_interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    prometheus_retention: Annotated[str, Field(pattern=r"^\d+[smhdwy]$")] = "7d"
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    mosquitto: MosquittoSettings = Field(default_factory=MosquittoSettings)
    rule_runner: RuleRunnerSettings = Field(default_factory=RuleRunnerSettings)

    @model_validator(mode="after")
    def _distinct_ports(self) -> LocalSettings:
        fixed = {
            "brokerPort": self.broker_port,
            "prometheusPort": self.prometheus_port,
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

    def archive_folder(self, state_root: Path) -> Path | None:
        if self.local.archive.s3 is not None:
            return None
        folder = Path(self.local.archive.folder or "archive").expanduser()
        return folder if folder.is_absolute() else state_root / folder


def _describe(error: dict[str, Any], prefix: str) -> str:
    location = ".".join(str(part) for part in error["loc"] if part != "__root__")
    key = f"{prefix}.{location}" if location else prefix
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; check its spelling against docs/local-stack.md"
    message = str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    if error["type"] not in ("missing",) and not isinstance(got, dict | list):
        message += f" (got {got!r})"
    return f"{key}: {message}"


def _validated(model: type[BaseModel], raw: Any, prefix: str, source: Path) -> Any:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise UsageError(f"config {_describe(dict(first), prefix)}; edit {source}") from None


def _read_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(
            f"stack config {path} not found; restore Pulumi.local.yaml from the repository or point "
            "IOTFACTORY_LOCAL_CONFIG at a stack file"
        )
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"{path}{where}: not valid YAML ({problem}); fix the file") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a mapping with a 'config:' section")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise UsageError(f"{path}: 'config:' must be a mapping of key: value")
    return config


def load(path: Path) -> StackConfig:
    config = _read_document(path)
    known = {FLEET_KEY, COUNT_KEY, LOCAL_KEY}
    for key in config:
        if str(key).startswith("iotfactory:") and key not in known:
            raise UsageError(
                f"config {key}: not used by the local stack (known: {', '.join(sorted(known))}); edit {path}"
            )
    fleet_raw = config.get(FLEET_KEY) or {}
    if not isinstance(fleet_raw, dict):
        raise UsageError(f"config {FLEET_KEY}: must be a mapping of fleet settings; edit {path}")
    fleet = _validated(FleetSettings, fleet_raw, FLEET_KEY, path)
    local = _validated(LocalSettings, config.get(LOCAL_KEY), LOCAL_KEY, path)
    count_raw = config.get(COUNT_KEY, DEFAULT_SIMULATOR_COUNT)
    if isinstance(count_raw, bool) or not isinstance(count_raw, int | str) or not str(count_raw).isdigit():
        raise UsageError(f"config {COUNT_KEY}: must be a whole number (got {count_raw!r}); edit {path}")
    count = int(count_raw)
    check_simulator_count(count, f"config {COUNT_KEY}", f"edit {path}")
    return StackConfig(path, fleet, count, local, fleet_raw)


def check_simulator_count(count: int, what: str, fix: str) -> None:
    if not 1 <= count <= MAX_SIMULATORS:
        raise UsageError(
            f"{what}: {count} is outside 1..{MAX_SIMULATORS} simulators for the local stack; {fix}"
        )


_COUNT_LINE = re.compile(
    r"^(?P<indent>[ \t]+)" + re.escape(COUNT_KEY) + r":[^\n#]*(?P<comment>#[^\n]*)?$", re.MULTILINE
)
_CONFIG_LINE = re.compile(r"^config:[ \t]*(#[^\n]*)?$", re.MULTILINE)
_FIRST_CHILD = re.compile(r"\n(?P<indent>[ \t]+)\S")


def record_simulator_count(path: Path, count: int) -> bool:
    """Write `iotfactory:simulatorCount: N` into the stack file, keeping every other line and comment.

    Returns whether the file changed. The result is parsed again before it replaces the original.
    """
    check_simulator_count(count, "--simulators", "choose a count in that range")
    text = path.read_text(encoding="utf-8")
    match = _COUNT_LINE.search(text)
    if match:
        comment = f"  {match['comment']}" if match["comment"] else ""
        updated = (
            text[: match.start()] + f"{match['indent']}{COUNT_KEY}: {count}{comment}" + text[match.end() :]
        )
    elif config_line := _CONFIG_LINE.search(text):
        child = _FIRST_CHILD.match(text, config_line.end())
        indent = child["indent"] if child else "  "
        updated = text[: config_line.end()] + f"\n{indent}{COUNT_KEY}: {count}" + text[config_line.end() :]
    else:
        updated = text.rstrip("\n") + ("\n" if text.strip() else "") + f"config:\n  {COUNT_KEY}: {count}\n"
    if updated == text:
        return False
    document = yaml.safe_load(updated)
    if not isinstance(document, dict) or (document.get("config") or {}).get(COUNT_KEY) != count:
        raise UsageError(f"{path}: could not record {COUNT_KEY} without breaking the file; set it by hand")
    _write_atomically(path, updated)
    return True


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fleet_file_text(stack: StackConfig) -> str:
    """The simulators' `--config` file: a stack-file-shaped document holding only the fleet section."""
    header = f"# Written by the local stack from {stack.path}; edit that file instead.\n"
    return header + yaml.safe_dump({"config": {FLEET_KEY: stack.fleet_document}}, sort_keys=False)
