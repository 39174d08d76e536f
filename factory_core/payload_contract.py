"""The payload contract: what telemetry and ground-truth messages contain, and their validation.

This module is the one source of the contract's facts (signals per machine type with their units
and physical bounds, events, reasons, fault kinds); `factory_core.payload_schema` renders the JSON
Schemas in factory_core/schema/ and the signal table of docs/model.md from them, and the model
clamps its readings to the same bounds.

`decode_payload` is the one reading of a payload's bytes: the rule runner decides with it what to
archive, and `verify` reads the archive with it, so the two never disagree on what is valid JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator, FormatChecker

from factory_core.fleet import FAILURE_MODES, SENSOR_FAULTS, MachineType
from factory_core.metric_catalog import MACHINE_SIGNALS, MACHINE_STATES

# Bump on any change a consumer could notice; the JSON Schemas pin it.
SCHEMA_VERSION = 2

# The simulator process run a live message comes from (a UUIDv7 drawn at process start): the
# encoders write it right after `type`; optional, since a model run outside a process has none.
BOOT_FIELD = "boot"
# The largest integer every JSON reader holds exactly (RFC 7493): the bound of seqs and counters.
MAX_JSON_INTEGER = 2**53 - 1

PayloadKind = Literal["telemetry", "ground_truth"]
PAYLOAD_KINDS: tuple[PayloadKind, ...] = ("telemetry", "ground_truth")

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
SCHEMA_FILES: dict[PayloadKind, Path] = {
    "telemetry": SCHEMA_DIR / "telemetry.schema.json",
    "ground_truth": SCHEMA_DIR / "ground_truth.schema.json",
}

# Payload unit of every signal: the metric catalog's, so payload and metrics never disagree.
SIGNAL_UNITS: dict[str, str] = {
    metric.signal: metric.payload_unit
    for metric in MACHINE_SIGNALS
    if metric.signal is not None and metric.payload_unit is not None
}


@dataclass(frozen=True)
class SignalSpec:
    """One signal of one machine type: its transmitter range (the physical bounds) and resolution."""

    name: str
    low: float
    high: float
    decimals: int  # resolution the payload reports
    description: str

    @property
    def unit(self) -> str:
        return SIGNAL_UNITS[self.name]


def _temperature(what: str) -> SignalSpec:
    return SignalSpec("temperature", -20.0, 150.0, 1, f"{what} temperature")


def _vibration() -> SignalSpec:
    return SignalSpec("vibration_rms", 0.0, 50.0, 2, "vibration velocity RMS (ISO 10816/20816)")


# Signals of each machine type in payload order, with the transmitter's measurement range: a
# reading outside it is impossible (the transmitter saturates), so the schema rejects it.
SIGNALS: dict[MachineType, tuple[SignalSpec, ...]] = {
    MachineType.CNC_MILL: (
        _temperature("spindle bearing"),
        _vibration(),
        SignalSpec("speed", 0.0, 24_000.0, 0, "spindle speed; 0 unless running"),
        SignalSpec("power", 0.0, 60.0, 2, "electrical power drawn"),
        SignalSpec("cycle_time", 0.0, 3_600.0, 2, "duration of the last completed part"),
    ),
    MachineType.HYDRAULIC_PRESS: (
        _temperature("hydraulic oil"),
        _vibration(),
        SignalSpec("speed", 0.0, 3_000.0, 0, "pump motor speed; 0 unless running"),
        SignalSpec("power", 0.0, 120.0, 2, "electrical power drawn"),
        SignalSpec("pressure", 0.0, 400.0, 1, "hydraulic system pressure (gauge)"),
        SignalSpec("cycle_time", 0.0, 600.0, 2, "duration of the last completed stroke"),
    ),
    MachineType.CONVEYOR: (
        _temperature("drive motor frame"),
        _vibration(),
        SignalSpec("speed", 0.0, 3_000.0, 0, "drive motor speed; 0 unless running"),
        SignalSpec("power", 0.0, 30.0, 2, "electrical power drawn"),
    ),
    MachineType.AIR_COMPRESSOR: (
        _temperature("air-end discharge"),
        _vibration(),
        SignalSpec("speed", 0.0, 4_000.0, 0, "motor speed; 0 unless running"),
        SignalSpec("power", 0.0, 120.0, 2, "electrical power drawn"),
        SignalSpec("pressure", 0.0, 16.0, 2, "receiver pressure (gauge)"),
    ),
}
ALL_SIGNALS: tuple[str, ...] = tuple(SIGNAL_UNITS)

EVENTS = ("state_change", "fault_start", "fault_update", "fault_end")
# A protective trip into the `fault` state names what tripped.
TRIP_REASONS = (
    "bearing_failure",
    "tool_breakage",
    "overtemperature_trip",
    "pressure_loss",
    "overload_trip",
    "vibration_trip",
)
STATE_CHANGE_REASONS = (
    "start",
    "waiting",
    "resumed",
    "changeover",
    "setup_done",
    "starved",
    "blocked",
    *TRIP_REASONS,
    "repair_started",
    "condition_based_maintenance",
    "preventive_maintenance",
    "maintenance_done",
)
# Why a fault ended: its time ran out (sensor faults, scheduled durations), corrective repair after
# a trip, a repair planned from a condition alarm, or scheduled preventive maintenance.
FAULT_END_REASONS = ("cleared", "repaired", "condition_based", "preventive")
FAILURE_MODE, SENSOR = "failure_mode", "sensor"
ALL_FAILURE_MODES: tuple[str, ...] = tuple(mode for modes in FAILURE_MODES.values() for mode in modes)

_MACHINE_ID = re.compile(r"^(site-[0-9]{2,})-(line-[0-9]{2,})-([a-z_]+)-[0-9]{2,}$")


class PayloadInvalid(ValueError):
    """A payload that is not JSON or breaks its schema; the message names the first problem."""


@cache
def load_schema(kind: PayloadKind) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILES[kind].read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def validator(kind: PayloadKind) -> Draft202012Validator:
    return Draft202012Validator(load_schema(kind), format_checker=FormatChecker())


def decode_payload(payload: bytes | str) -> Any:
    """The JSON value of `payload`; `PayloadInvalid` for anything but one unambiguous JSON text.

    Refused beyond what orjson refuses: duplicate object keys (readers disagree on which one wins,
    RFC 8259 §4) and NaN/Infinity. Fast path: orjson, and if writing the value back gives the same
    bytes (what every simulator payload does: it is written by orjson) the input had no duplicate
    key and no number orjson could not hold exactly. Anything else is read again by the standard
    library, which keeps every integer exact and reports repeated keys.
    """
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise PayloadInvalid(f"not JSON: {error}") from None
    raw = payload.encode() if isinstance(payload, str) else payload
    if orjson.dumps(document) == raw:
        return document
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except ValueError as error:
        raise PayloadInvalid(f"not JSON: {error}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"duplicate key {repeated!r}")
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, Mapping):
        return payload
    return decode_payload(payload)


def payload_kind(payload: Mapping[str, Any]) -> PayloadKind:
    """The payload's `kind`; schema-1 payloads (no `kind`) are told apart by shape."""
    kind = payload.get("kind")
    if kind in PAYLOAD_KINDS:
        return kind  # type: ignore[return-value]
    return "ground_truth" if "event" in payload else "telemetry"


def identity_error(document: Mapping[str, Any]) -> str | None:
    """The machine id must name the payload's own site, line and type (JSON Schema cannot say so)."""
    machine = document.get("machine")
    match = _MACHINE_ID.match(machine) if isinstance(machine, str) else None
    if match is None:
        return None  # the schema's pattern reports it
    named = {"site": match[1], "line": match[2], "type": match[3]}
    for key, value in named.items():
        if document.get(key) != value:
            return f"$.{key}: machine {machine!r} belongs to {key} {value!r}, not {document.get(key)!r}"
    return None


def payload_errors(payload: bytes | str | Mapping[str, Any], kind: PayloadKind | None = None) -> list[str]:
    """Every contract violation as `path: message` (empty when valid)."""
    try:
        document = _decode(payload)
    except PayloadInvalid as error:
        return [str(error)]
    if not isinstance(document, Mapping):
        return [f"$: expected a JSON object, got {type(document).__name__}"]
    chosen = kind or payload_kind(document)
    errors = sorted(validator(chosen).iter_errors(document), key=lambda error: list(error.absolute_path))
    found = [f"{error.json_path}: {error.message}" for error in errors]
    identity = identity_error(document)
    if identity is not None:
        found.append(identity)
    return found


def validate_payload(
    payload: bytes | str | Mapping[str, Any], kind: PayloadKind | None = None
) -> dict[str, Any]:
    """The decoded payload if it meets the contract; otherwise `PayloadInvalid` naming the problem."""
    errors = payload_errors(payload, kind)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PayloadInvalid(f"{errors[0]}{more}")
    document = _decode(payload)
    return dict(document)


def validate_payloads(payloads: Iterable[bytes | str | Mapping[str, Any]]) -> int:
    """Validate every payload of a stream (kind from its content); returns how many were checked."""
    count = 0
    for count, payload in enumerate(payloads, start=1):
        errors = payload_errors(payload)
        if errors:
            raise PayloadInvalid(f"payload #{count}: {errors[0]}; payload: {payload!r:.300}")
    return count


__all__ = [
    "ALL_FAILURE_MODES",
    "ALL_SIGNALS",
    "BOOT_FIELD",
    "EVENTS",
    "FAILURE_MODE",
    "FAILURE_MODES",
    "FAULT_END_REASONS",
    "MACHINE_STATES",
    "MAX_JSON_INTEGER",
    "PAYLOAD_KINDS",
    "SCHEMA_VERSION",
    "SENSOR",
    "SENSOR_FAULTS",
    "SIGNALS",
    "SIGNAL_UNITS",
    "STATE_CHANGE_REASONS",
    "TRIP_REASONS",
    "PayloadInvalid",
    "PayloadKind",
    "SignalSpec",
    "decode_payload",
    "identity_error",
    "load_schema",
    "payload_errors",
    "payload_kind",
    "validate_payload",
    "validate_payloads",
    "validator",
]
