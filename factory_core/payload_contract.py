"""The payload contract: loads the JSON Schemas in factory_core/schema/ and validates payloads.

`decode_payload` is the one reading of a payload's bytes: the rule runner decides with it what to
archive, and `verify` reads the archive with it, so the two never disagree on what is valid JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator, FormatChecker

PayloadKind = Literal["telemetry", "ground_truth"]

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
SCHEMA_FILES: dict[PayloadKind, Path] = {
    "telemetry": SCHEMA_DIR / "telemetry.schema.json",
    "ground_truth": SCHEMA_DIR / "ground_truth.schema.json",
}


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
    """Ground-truth events carry `event`; telemetry carries `signals`."""
    return "ground_truth" if "event" in payload else "telemetry"


def payload_errors(payload: bytes | str | Mapping[str, Any], kind: PayloadKind | None = None) -> list[str]:
    """Every schema violation as `path: message` (empty when valid)."""
    try:
        document = _decode(payload)
    except PayloadInvalid as error:
        return [str(error)]
    if not isinstance(document, Mapping):
        return [f"$: expected a JSON object, got {type(document).__name__}"]
    chosen = kind or payload_kind(document)
    errors = sorted(validator(chosen).iter_errors(document), key=lambda error: list(error.absolute_path))
    return [f"{error.json_path}: {error.message}" for error in errors]


def validate_payload(
    payload: bytes | str | Mapping[str, Any], kind: PayloadKind | None = None
) -> dict[str, Any]:
    """The decoded payload if it matches its schema; otherwise `PayloadInvalid` naming the problem."""
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
