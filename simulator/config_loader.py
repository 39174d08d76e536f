"""Command line, environment and YAML file → one validated run configuration.

Precedence, lowest first: the YAML file (`--config`, or FACTORY_CONFIG_FILE), FACTORY_CONFIG_JSON,
the other FACTORY_* variables, then flags. The file is either a plain FleetSettings mapping or a
Pulumi stack file with the fleet under `config: iotfactory:fleet`, so `--config Pulumi.local.yaml`
runs what the stack would run. Every problem becomes one `UsageError` line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from factory_core.errors import UsageError
from factory_core.fleet import Engine, FleetSettings, MachineType
from simulator.connection_settings import (
    DEFAULT_CLIENT_ID_PREFIX,
    DEFAULT_METRICS_PORT,
    DEFAULT_MQTT_PORT,
    ConnectionSettings,
)

PULUMI_FLEET_KEY = "iotfactory:fleet"

ENVIRONMENT_VARIABLES: dict[str, str] = {
    "FACTORY_CONFIG_FILE": "YAML config file (like --config)",
    "FACTORY_CONFIG_JSON": "FleetSettings as JSON; overrides the file",
    "FACTORY_SITE_INDEX": "site this process simulates (site-<NN>)",
    "FACTORY_ENDPOINT": "MQTT endpoint host (AWS IoT data endpoint)",
    "FACTORY_PORT": f"MQTT port (default {DEFAULT_MQTT_PORT})",
    "FACTORY_CA_FILE": "CA certificate file that signed the broker",
    "FACTORY_CERT_FILE": "device certificate file",
    "FACTORY_KEY_FILE": "device private key file",
    "FACTORY_CA_PEM": "CA certificate as PEM text (written to a private temp file)",
    "FACTORY_CERT_PEM": "device certificate as PEM text (written to a private temp file)",
    "FACTORY_KEY_PEM": "device private key as PEM text (written to a private temp file)",
    "FACTORY_CLIENT_ID_PREFIX": f"client id prefix (default {DEFAULT_CLIENT_ID_PREFIX})",
    "FACTORY_METRICS_PORT": f"Prometheus exporter port (default {DEFAULT_METRICS_PORT}; 0 = off)",
    "FACTORY_METRICS_HOST": "address the exporter binds (default 0.0.0.0)",
    "FACTORY_STATE_FILE": "model checkpoint, saved on exit and resumed from on start",
}


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


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").strip()
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
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
    run.add_argument("--duration", type=float, metavar="SECONDS",
                     help="stop after this many simulated seconds (dry-run default 3600)")
    run.add_argument("--count", type=int, metavar="N", help="stop after N telemetry messages")
    run.add_argument("--start", metavar="ISO8601",
                     help="simulated start time (dry-run default 2026-01-01T00:00:00Z; live: now)")
    run.add_argument("--state-file", type=Path, metavar="FILE",
                     help="save the model here on exit and resume from it on start, so a restarted"
                     " simulator continues every machine's seq (env FACTORY_STATE_FILE)")
    run.add_argument("--max-rate", action="store_true",
                     help="ignore the schedule and publish as fast as the broker acknowledges"
                          " (benchmarks against a local broker; exceeds AWS quotas)")
    fleet = parser.add_argument_group("fleet (override the config file)")
    fleet.add_argument("--seed", type=int)
    fleet.add_argument("--speed", type=float, help="simulated seconds per wall second")
    fleet.add_argument("--qos", type=int, help="0 or 1")
    fleet.add_argument("--engine", help="fleet (paho-mqtt, one selector thread) or sdk (AWSIoTPythonSDK)")
    fleet.add_argument("--lines", type=int, help="lines per site")
    fleet.add_argument("--machines", metavar="TYPE=N,...",
                       help="machines per line, e.g. cnc_mill=2,conveyor=1")
    fleet.add_argument("--publish-interval", type=float, metavar="SECONDS",
                       help="wall seconds between two samples of one machine")
    fleet.add_argument("--window", type=int, help="QoS 1 in-flight window per connection (<= 100)")
    fleet.add_argument("--max-machine-series", type=int,
                       help="per-machine metric series cap; past it only per-line aggregates")
    conn = parser.add_argument_group("connection (override the environment)")
    conn.add_argument("--site-index", type=int)
    conn.add_argument("--endpoint", help="MQTT broker host")
    conn.add_argument("--port", type=int)
    conn.add_argument("--ca", type=Path, metavar="FILE")
    conn.add_argument("--cert", type=Path, metavar="FILE")
    conn.add_argument("--key", type=Path, metavar="FILE")
    conn.add_argument("--client-id-prefix")
    conn.add_argument("--connections", type=int, help="override the planned number of connections")
    conn.add_argument("--metrics-port", type=int, help="0 turns the exporter off")
    conn.add_argument("--metrics-host")
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
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UsageError(f"cannot parse {path}{where}: {problem}; fix the YAML syntax") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of fleet settings, not a {type(data).__name__}")
    stack_config = data.get("config")
    if isinstance(stack_config, dict):
        fleet = stack_config.get(PULUMI_FLEET_KEY, {})
        if not isinstance(fleet, dict):
            raise UsageError(f"{path}: config.{PULUMI_FLEET_KEY} must be a mapping of fleet settings")
        return fleet
    if PULUMI_FLEET_KEY in data and isinstance(data[PULUMI_FLEET_KEY], dict):
        return dict(data[PULUMI_FLEET_KEY])
    return data


def parse_machines(text: str) -> dict[str, int]:
    known = ", ".join(t.value for t in MachineType)
    mix: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"--machines item '{item}' needs TYPE=COUNT, e.g. cnc_mill=2")
        if name not in {t.value for t in MachineType}:
            raise UsageError(f"unknown machine type '{name}' in --machines; use one of: {known}")
        try:
            mix[name] = int(count)
        except ValueError:
            raise UsageError(f"--machines {name}={count}: the count must be a whole number") from None
    if not mix:
        raise UsageError("--machines is empty; e.g. --machines cnc_mill=2,conveyor=1")
    return mix


def describe_validation_error(error: ValidationError, sources: Sequence[str]) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if part != "[key]")
    where = " + ".join(sources) if sources else "the defaults"
    if first["type"] == "extra_forbidden":
        problem = f"unknown setting '{location}'"
    else:
        problem = f"{location}: {first['msg'][0].lower()}{first['msg'][1:]} (got {first.get('input')!r})"
    more = error.error_count() - 1
    suffix = f" (+{more} more)" if more > 0 else ""
    return f"invalid fleet config, {problem}{suffix}; fix it in {where}"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a whole number; fix the environment variable") from None


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None


def _parse_start(text: str) -> int:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--start {text!r} is not ISO 8601; e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def load_run_config(argv: Sequence[str], environ: Mapping[str, str]) -> RunConfig:
    args = build_parser().parse_args(list(argv))
    sources: list[str] = []
    fleet_data: dict[str, Any] = {}
    config_file: Path | None = args.check_config or args.config or _env_path(environ, "FACTORY_CONFIG_FILE")
    if config_file is not None:
        fleet_data = read_fleet_file(config_file)
        sources.append(str(config_file))
    if environ.get("FACTORY_CONFIG_JSON"):
        try:
            override = json.loads(environ["FACTORY_CONFIG_JSON"])
        except json.JSONDecodeError as error:
            raise UsageError(
                f"FACTORY_CONFIG_JSON is not valid JSON ({error.msg} at char {error.pos})"
            ) from None
        if not isinstance(override, dict):
            raise UsageError("FACTORY_CONFIG_JSON must be a JSON object of fleet settings")
        fleet_data = _deep_merge(fleet_data, override)
        sources.append("FACTORY_CONFIG_JSON")
    flag_overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "seed": args.seed,
            "speed": args.speed,
            "qos": args.qos,
            "engine": args.engine,
            "lines_per_site": args.lines,
            "publish_interval_s": args.publish_interval,
            "inflight_window": args.window,
            "max_machine_series": args.max_machine_series,
        }.items()
        if value is not None
    }
    if args.machines is not None:
        flag_overrides["machines_per_line"] = parse_machines(args.machines)
    if args.engine is not None and args.engine not in {e.value for e in Engine}:
        raise UsageError(f"unknown --engine '{args.engine}'; use fleet or sdk")
    if flag_overrides:
        fleet_data = {**fleet_data, **flag_overrides}
        sources.append("flags")
    try:
        fleet = FleetSettings.model_validate(fleet_data)
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, sources)) from None

    # PEM text in the environment beats a file path in the environment (the image sets a default
    # FACTORY_CA_FILE); `materialize_pem_env` fills the paths left empty here. Flags beat both.
    connection = ConnectionSettings(
        endpoint=environ.get("FACTORY_ENDPOINT") or None,
        port=_env_int(environ, "FACTORY_PORT") or DEFAULT_MQTT_PORT,
        ca_path=None if environ.get("FACTORY_CA_PEM") else _env_path(environ, "FACTORY_CA_FILE"),
        cert_path=None if environ.get("FACTORY_CERT_PEM") else _env_path(environ, "FACTORY_CERT_FILE"),
        key_path=None if environ.get("FACTORY_KEY_PEM") else _env_path(environ, "FACTORY_KEY_FILE"),
        client_id_prefix=environ.get("FACTORY_CLIENT_ID_PREFIX", DEFAULT_CLIENT_ID_PREFIX),
        metrics_host=environ.get("FACTORY_METRICS_HOST") or "0.0.0.0",
    )
    env_metrics_port = _env_int(environ, "FACTORY_METRICS_PORT")
    if env_metrics_port is not None:
        connection = replace(connection, metrics_port=env_metrics_port)
    flag_connection = {
        key: value
        for key, value in {
            "endpoint": args.endpoint,
            "port": args.port,
            "ca_path": args.ca,
            "cert_path": args.cert,
            "key_path": args.key,
            "client_id_prefix": args.client_id_prefix,
            "metrics_port": args.metrics_port,
            "metrics_host": args.metrics_host,
            "connections": args.connections,
        }.items()
        if value is not None
    }
    connection = replace(connection, **flag_connection)
    if not 0 <= connection.metrics_port <= 65535:
        raise UsageError(
            f"metrics port {connection.metrics_port} is not a TCP port; use 1-65535, or 0 for none"
        )
    if connection.connections is not None and connection.connections < 1:
        raise UsageError("--connections must be at least 1")

    site_index = args.site_index
    if site_index is None:
        site_index = _env_int(environ, "FACTORY_SITE_INDEX") or 0
    if not 0 <= site_index <= 99:
        raise UsageError(f"site index {site_index} is out of range; use 0-99 (sites are site-00..site-99)")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration {args.duration:g} must be more than 0 simulated seconds")
    if args.count is not None and args.count <= 0:
        raise UsageError(f"--count {args.count} must be at least 1")
    return RunConfig(
        fleet=fleet,
        connection=connection,
        site_index=site_index,
        duration_s=args.duration,
        count=args.count,
        dry_run=args.dry_run,
        max_rate=args.max_rate,
        start_epoch_ms=_parse_start(args.start) if args.start else None,
        state_file=args.state_file or _env_path(environ, "FACTORY_STATE_FILE"),
        check_config=args.check_config,
        sources=tuple(sources),
    )
