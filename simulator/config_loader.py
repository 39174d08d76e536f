"""Command line, environment and YAML file → one validated run configuration.

Precedence, lowest first: the YAML file (`--config`, or FACTORY_CONFIG_FILE), FACTORY_CONFIG_JSON,
the other FACTORY_* variables, then flags. Each layer contributes raw values; the merged result is
validated once with pydantic (FleetSettings for the fleet, `RunSettings` for the rest), and the
first problem is reported as one `UsageError` line naming the setting and the layer it came from.
Plain pydantic, not pydantic-settings: the layers are four dict updates, the simulator image stays
without another dependency, and the error can name the exact variable or flag to fix.

The file is either a plain FleetSettings mapping or a Pulumi stack file with the fleet under
`config: iotfactory:fleet` (read by factory_core.stack_file, so `--config Pulumi.local.yaml` reads
exactly what the stack reads).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory_core.archive_modes import TOPIC_PREFIX_PATTERN
from factory_core.errors import UsageError, describe_validation_error
from factory_core.fleet import MAX_SITES, Engine, FleetSettings, MachineType
from simulator.connection_settings import (
    DEFAULT_CLIENT_ID_PREFIX,
    DEFAULT_METRICS_PORT,
    DEFAULT_MQTT_PORT,
    ConnectionSettings,
)

ENVIRONMENT_VARIABLES: dict[str, str] = {
    "FACTORY_CONFIG_FILE": "YAML config file (like --config)",
    "FACTORY_CONFIG_JSON": "FleetSettings as JSON; overrides the file",
    "FACTORY_SITE_INDEX": "site this process simulates (site-<NN>)",
    "FACTORY_ENDPOINT": "MQTT endpoint host (AWS IoT data endpoint)",
    "FACTORY_PORT": f"MQTT port (default {DEFAULT_MQTT_PORT})",
    "FACTORY_CA_FILE": "CA certificate file that signed the broker",
    "FACTORY_CERT_FILE": "device certificate file",
    "FACTORY_KEY_FILE": "device private key file",
    "FACTORY_CERT_DIR": "folder with one <client id>.pem and .key per connection (instead of one cert)",
    "FACTORY_CA_PEM": "CA certificate as PEM text (written to a private temp file)",
    "FACTORY_CERT_PEM": "device certificate as PEM text (written to a private temp file)",
    "FACTORY_KEY_PEM": "device private key as PEM text (written to a private temp file)",
    "FACTORY_CLIENT_ID_PREFIX": f"client id prefix (default {DEFAULT_CLIENT_ID_PREFIX})",
    "FACTORY_METRICS_PORT": f"Prometheus exporter port (default {DEFAULT_METRICS_PORT}; 0 = off)",
    "FACTORY_METRICS_HOST": "address the exporter binds (default 0.0.0.0)",
    "FACTORY_STATE_FILE": "model checkpoint, saved on exit and resumed from on start",
    "FACTORY_TOPIC_PREFIX": "before every topic: the archive rule's Basic Ingest prefix $aws/rules/<rule>/",
}
# Which RunSettings field each variable sets (the PEM variables are read by materialize_pem_env).
_ENV_FIELDS = {
    "FACTORY_SITE_INDEX": "site_index",
    "FACTORY_ENDPOINT": "endpoint",
    "FACTORY_PORT": "port",
    "FACTORY_CA_FILE": "ca_path",
    "FACTORY_CERT_FILE": "cert_path",
    "FACTORY_KEY_FILE": "key_path",
    "FACTORY_CERT_DIR": "cert_dir",
    "FACTORY_CLIENT_ID_PREFIX": "client_id_prefix",
    "FACTORY_METRICS_PORT": "metrics_port",
    "FACTORY_METRICS_HOST": "metrics_host",
    "FACTORY_STATE_FILE": "state_file",
    "FACTORY_TOPIC_PREFIX": "topic_prefix",
}
# Which flag sets each RunSettings / FleetSettings field.
_RUN_FLAGS = {
    "site_index": "--site-index",
    "endpoint": "--endpoint",
    "port": "--port",
    "ca_path": "--ca",
    "cert_path": "--cert",
    "key_path": "--key",
    "cert_dir": "--cert-dir",
    "client_id_prefix": "--client-id-prefix",
    "metrics_port": "--metrics-port",
    "metrics_host": "--metrics-host",
    "connections": "--connections",
    "state_file": "--state-file",
    "topic_prefix": "--topic-prefix",
    "duration_s": "--duration",
    "count": "--count",
}
_FLEET_FLAGS = {
    "seed": "--seed",
    "speed": "--speed",
    "qos": "--qos",
    "engine": "--engine",
    "lines_per_site": "--lines",
    "publish_interval_s": "--publish-interval",
    "inflight_window": "--window",
    "max_machine_series": "--max-machine-series",
}
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOST_NAME.match(value):
        raise ValueError("must be a host name or IP address, without scheme or port; e.g. 127.0.0.1")
    return value


Host = Annotated[str, AfterValidator(_host)]


class RunSettings(BaseModel):
    """Everything but the fleet that the environment and flags set, validated in one pass."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    endpoint: Host | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = DEFAULT_MQTT_PORT
    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    cert_dir: Path | None = None
    # MQTT client ids: AWS IoT takes up to 128 characters; the site and connection number follow.
    client_id_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.-]{0,64}$")] = DEFAULT_CLIENT_ID_PREFIX
    metrics_host: Host = "0.0.0.0"
    metrics_port: Annotated[int, Field(ge=0, le=65535, description="0 turns the exporter off")] = (
        DEFAULT_METRICS_PORT
    )
    connections: Annotated[int, Field(ge=1, le=10_000)] | None = None
    site_index: Annotated[int, Field(ge=0, lt=MAX_SITES, description="site-00..site-99")] = 0
    state_file: Path | None = None
    duration_s: Annotated[float, Field(gt=0)] | None = None
    count: Annotated[int, Field(ge=1)] | None = None
    # Basic Ingest (archive mode basic-ingest): publish to the archive rule's own topic.
    topic_prefix: Annotated[str, Field(pattern=TOPIC_PREFIX_PATTERN)] = ""

    @field_validator("state_file")
    @classmethod
    def _a_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_file():
            raise ValueError("must be a file (the checkpoint), not a folder or device")
        return value


@dataclass(frozen=True)
class RunConfig:
    fleet: FleetSettings
    connection: ConnectionSettings
    site_index: int = 0
    duration_s: float | None = None  # simulated seconds; None = until stopped
    count: int | None = None  # telemetry messages; None = no limit
    dry_run: bool = False
    max_rate: bool = False
    start_epoch_ms: int | None = None
    check_config: Path | None = None
    state_file: Path | None = None  # model checkpoint: saved on exit, resumed from on start
    sources: tuple[str, ...] = ()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see python -m simulator --help")


def build_parser() -> argparse.ArgumentParser:
    # Values stay text here: RunSettings and FleetSettings parse them, so flags, variables and files
    # are held to the same rules (no '²' or Arabic digits sneaking through int()).
    parser = _Parser(
        prog="python -m simulator",
        description="Simulate one factory site and publish its telemetry over mutual-TLS MQTT.",
        epilog="Environment: " + "; ".join(f"{k}: {v}" for k, v in ENVIRONMENT_VARIABLES.items())
        + ". Exit codes: 0 ok, 1 failed, 2 bad config or input.",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="YAML fleet settings, or a Pulumi stack file (uses config: iotfactory:fleet)")
    run.add_argument("--check-config", type=Path, metavar="FILE",
                     help="validate FILE (and env, flags, certificates) and exit")
    run.add_argument("--dry-run", action="store_true",
                     help="write the payloads as JSON lines to stdout; no network, no sleeping")
    run.add_argument("--duration", metavar="SECONDS",
                     help="stop after this many simulated seconds (dry-run default 3600)")
    run.add_argument("--count", metavar="N", help="stop after N telemetry messages")
    run.add_argument("--start", metavar="ISO8601",
                     help="simulated start time (dry-run default 2026-01-01T00:00:00Z; live: now)")
    run.add_argument("--state-file", type=Path, metavar="FILE",
                     help="save the model here on exit and resume from it on start, so a restarted"
                     " simulator continues every machine's seq (env FACTORY_STATE_FILE)")
    run.add_argument("--max-rate", action="store_true",
                     help="ignore the schedule and publish as fast as the broker acknowledges"
                          " (benchmarks against a local broker; exceeds AWS quotas)")
    fleet = parser.add_argument_group("fleet (override the config file)")
    fleet.add_argument("--seed")
    fleet.add_argument("--speed", help="simulated seconds per wall second")
    fleet.add_argument("--qos", help="0 or 1")
    fleet.add_argument("--engine", help="fleet (paho-mqtt, one selector thread) or sdk (AWSIoTPythonSDK)")
    fleet.add_argument("--lines", help="lines per site")
    fleet.add_argument("--machines", metavar="TYPE=N,...",
                       help="machines per line, e.g. cnc_mill=2,conveyor=1")
    fleet.add_argument("--publish-interval", metavar="SECONDS",
                       help="wall seconds between two samples of one machine")
    fleet.add_argument("--window", help="QoS 1 in-flight window per connection (<= 100)")
    fleet.add_argument("--max-machine-series",
                       help="per-machine metric series cap; past it only per-line aggregates")
    conn = parser.add_argument_group("connection (override the environment)")
    conn.add_argument("--site-index")
    conn.add_argument("--endpoint", help="MQTT broker host")
    conn.add_argument("--port")
    conn.add_argument("--ca", type=Path, metavar="FILE")
    conn.add_argument("--cert", type=Path, metavar="FILE")
    conn.add_argument("--key", type=Path, metavar="FILE")
    conn.add_argument("--cert-dir", type=Path, metavar="DIR",
                      help="one certificate per connection: DIR/<client id>.pem and .key (the local"
                      " broker binds each client id to one certificate)")
    conn.add_argument("--client-id-prefix")
    conn.add_argument("--connections", help="override the planned number of connections")
    conn.add_argument("--metrics-port", help="0 turns the exporter off")
    conn.add_argument("--metrics-host")
    conn.add_argument("--topic-prefix", metavar="PREFIX",
                      help="put this before every topic: the archive rule's Basic Ingest prefix"
                           " $aws/rules/<rule>/ (env FACTORY_TOPIC_PREFIX)")
    return parser


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def read_fleet_file(path: Path) -> dict[str, Any]:
    """The fleet mapping of a plain settings file or of a Pulumi stack file."""
    from factory_core import stack_file

    fix = "fix the file, or pass an existing YAML file"
    data = stack_file.load_yaml_file(path, what="config file", fix=fix)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of fleet settings, not a {type(data).__name__}; {fix}")
    stack_config = data.get(stack_file.CONFIG_FIELD)
    if isinstance(stack_config, dict):
        fleet = stack_config.get(stack_file.FLEET_KEY, {})
        if not isinstance(fleet, dict):
            raise UsageError(f"{path}: config.{stack_file.FLEET_KEY} must be a mapping of fleet settings")
        return fleet
    if isinstance(data.get(stack_file.FLEET_KEY), dict):
        return dict(data[stack_file.FLEET_KEY])
    return data


def parse_machines(text: str) -> dict[str, int]:
    known = ", ".join(t.value for t in MachineType)
    mix: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        name, count = name.strip(), count.strip()
        if not sep:
            raise UsageError(f"--machines item '{item}' needs TYPE=COUNT, e.g. cnc_mill=2")
        if name not in {t.value for t in MachineType}:
            raise UsageError(f"unknown machine type '{name}' in --machines; use one of: {known}")
        if not re.fullmatch(r"[0-9]{1,9}", count):
            raise UsageError(f"--machines {name}={count}: the count must be a whole number")
        mix[name] = int(count)
    if not mix:
        raise UsageError("--machines is empty; e.g. --machines cnc_mill=2,conveyor=1")
    return mix


def _parse_start(text: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--start {text!r} is not ISO 8601; e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


@dataclass
class _Layers:
    """Values from each source, lowest precedence first, and which source set each top-level key."""

    values: dict[str, Any]
    origins: dict[str, list[str]]

    def add(self, source: str, values: Mapping[str, Any], *, deep: bool = False) -> None:
        if not values:
            return
        self.values = _deep_merge(self.values, values) if deep else {**self.values, **values}
        for key in values:
            self.origins[key] = [*self.origins.get(key, []), source] if deep else [source]

    def validate(self, model: type[BaseModel], fallback: str) -> Any:
        try:
            return model.model_validate(self.values)
        except ValidationError as error:
            first = error.errors()[0]["loc"]
            where = self.origins.get(str(first[0]), []) if first else []
            fix = f"fix it in {' + '.join(where or [fallback])}"
            raise UsageError(describe_validation_error(error, "", fix, model=model, most=1)) from None


def _fleet_layers(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[_Layers, list[str]]:
    from factory_core import stack_file

    layers, sources = _Layers({}, {}), []
    config_file: Path | None = args.check_config or args.config
    if config_file is None and environ.get("FACTORY_CONFIG_FILE", "").strip():
        config_file = Path(environ["FACTORY_CONFIG_FILE"].strip())
    if config_file is not None:
        layers.add(str(config_file), read_fleet_file(config_file))
        sources.append(str(config_file))
    if environ.get("FACTORY_CONFIG_JSON"):
        fix = "fix the environment variable"
        override = stack_file.parse_json(environ["FACTORY_CONFIG_JSON"], "FACTORY_CONFIG_JSON", fix)
        if not isinstance(override, dict):
            raise UsageError("FACTORY_CONFIG_JSON must be a JSON object of fleet settings")
        layers.add("FACTORY_CONFIG_JSON", override, deep=True)
        sources.append("FACTORY_CONFIG_JSON")
    if args.engine is not None and args.engine not in {e.value for e in Engine}:
        raise UsageError(f"unknown --engine '{args.engine}'; use fleet or sdk")
    flags = {field: getattr(args, flag[2:].replace("-", "_")) for field, flag in _FLEET_FLAGS.items()}
    if args.machines is not None:
        flags["machines_per_line"] = parse_machines(args.machines)
    for field, value in flags.items():
        if value is not None:
            layers.add(_FLEET_FLAGS.get(field, "--machines"), {field: value})
    if any(value is not None for value in flags.values()):
        sources.append("flags")
    return layers, sources


def _run_layers(args: argparse.Namespace, environ: Mapping[str, str]) -> _Layers:
    layers = _Layers({}, {})
    for name, field in _ENV_FIELDS.items():
        value = environ.get(name, "")
        if value.strip():
            layers.add(name, {field: value.strip()})
    # PEM text in the environment beats a file path in the environment (the image sets a default
    # FACTORY_CA_FILE); `materialize_pem_env` fills the paths left empty here. Flags beat both.
    pems = {"FACTORY_CA_PEM": "ca_path", "FACTORY_CERT_PEM": "cert_path", "FACTORY_KEY_PEM": "key_path"}
    for pem, field in pems.items():
        if environ.get(pem):
            layers.values.pop(field, None)
    for field, flag in _RUN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            layers.add(flag, {field: value})
    return layers


def load_run_config(argv: Sequence[str], environ: Mapping[str, str]) -> RunConfig:
    args = build_parser().parse_args(list(argv))
    fleet_layers, sources = _fleet_layers(args, environ)
    fleet: FleetSettings = fleet_layers.validate(FleetSettings, " + ".join(sources) or "the defaults")
    run: RunSettings = _run_layers(args, environ).validate(RunSettings, "the environment or flags")
    connection = ConnectionSettings(
        endpoint=run.endpoint,
        port=run.port,
        ca_path=run.ca_path,
        cert_path=run.cert_path,
        key_path=run.key_path,
        cert_dir=run.cert_dir,
        client_id_prefix=run.client_id_prefix,
        metrics_host=run.metrics_host,
        metrics_port=run.metrics_port,
        connections=run.connections,
        topic_prefix=run.topic_prefix,
    )
    return RunConfig(
        fleet=fleet,
        connection=connection,
        site_index=run.site_index,
        duration_s=run.duration_s,
        count=run.count,
        dry_run=args.dry_run,
        max_rate=args.max_rate,
        start_epoch_ms=_parse_start(args.start) if args.start else None,
        state_file=run.state_file,
        check_config=args.check_config,
        sources=tuple(sources),
    )
