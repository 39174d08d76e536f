"""The rule runner's check of one message: archive it, or quarantine it and say why.

The cloud rule archives whatever arrives; locally every message is also held to the payload
contract (JSON, its JSON Schema, a machine id that names its own site, line and type, the topic it
came on), and what fails is quarantined, never lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Literal

from factory_core.fleet import (
    GROUND_TRUTH_SEGMENT,
    IOT_MAX_PAYLOAD_BYTES,
    TOPIC_ROOT,
    ground_truth_topic,
    telemetry_topic,
)
from factory_core.payload_contract import (
    PayloadInvalid,
    PayloadKind,
    decode_payload,
    identity_error,
    load_schema,
    payload_errors,
    payload_kind,
    validator,
)

log = logging.getLogger("iotfactory.rule_runner")

QuarantineReason = Literal[
    "invalid_json", "schema_violation", "topic_mismatch", "payload_too_large", "machine_mismatch"
]
QUARANTINE_REASONS: tuple[QuarantineReason, ...] = (
    "invalid_json",
    "schema_violation",
    "topic_mismatch",
    "payload_too_large",
    "machine_mismatch",
)
PAYLOAD_KINDS: tuple[PayloadKind, ...] = ("telemetry", "ground_truth")
# AWS IoT Core refuses larger publishes. The local broker drops them too (message_size_limit); the
# runner checks again so that an archive behind another broker keeps the same promise.
MAX_PAYLOAD_BYTES = IOT_MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class MessageVerdict:
    """What the rule runner decided about one message."""

    kind: PayloadKind | None  # None when the topic says nothing and the payload is unreadable
    reason: QuarantineReason | None = None  # None: archive it
    detail: str = ""
    timestamp_s: float | None = None  # the payload's `ts`, for the lag gauge


@dataclass(slots=True)
class Received:
    """One PUBLISH the broker delivered, with the verdict on it, until its batch is written."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: float  # epoch seconds
    verdict: MessageVerdict


@lru_cache(maxsize=65_536)  # one entry per machine topic; a hot path at 10k+ msg/s
def topic_kind(topic: str) -> PayloadKind | None:
    """telemetry: factory/simulator/<site>/<line>/<machine>; ground truth: .../ground-truth/<site>/...."""
    parts = topic.split("/")
    root = TOPIC_ROOT.split("/")
    if parts[: len(root)] != root:
        return None
    rest = parts[len(root) :]
    if len(rest) == 4 and rest[0] == GROUND_TRUTH_SEGMENT:
        return "ground_truth"
    if len(rest) == 3 and rest[0] != GROUND_TRUTH_SEGMENT:
        return "telemetry"
    return None


SchemaCheck = Callable[[dict[str, Any]], bool]


@cache
def schema_check(kind: PayloadKind) -> SchemaCheck:
    """A yes/no check of one decoded payload against the contract's JSON Schema for `kind`.

    `jsonschema` is the reference and explains every failure, but takes ~300 µs per message here,
    which caps the archive at ~3k msg/s. When `jsonschema-rs` is installed it runs the same schema
    files in ~5 µs (tests check both agree); `jsonschema` then only words the rejections.
    """
    try:
        import jsonschema_rs
    except ImportError:
        return validator(kind).is_valid
    compiled = jsonschema_rs.validator_for(load_schema(kind), validate_formats=True)
    return compiled.is_valid  # type: ignore[no-any-return]


def check_message(topic: str, payload: bytes) -> MessageVerdict:
    """The payload contract, applied where the cloud has no check: JSON, schema, and the topic it came on.

    The topic must be the one the payload's own machine publishes on, and the machine id must be one
    of the payload's own site, line and type (`<site>-<line>-<type>-<nn>`): the broker keeps a device
    under its own site's topics, and these two checks keep it from writing into a machine's stream
    that is not its own, of its site or of another (verify keys streams by site and machine).
    """
    kind = topic_kind(topic)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return MessageVerdict(kind, "payload_too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        # The contract's reading, the same `verify` uses: what is archived, verify can read.
        document = decode_payload(payload)
    except PayloadInvalid as error:
        return MessageVerdict(kind, "invalid_json", str(error))
    if not isinstance(document, dict):
        return MessageVerdict(
            kind, "schema_violation", f"$: expected a JSON object, got {type(document).__name__}"
        )
    chosen = kind or payload_kind(document)
    # Before the schema, whose per-type id pattern would call another type's id a plain violation.
    identity = identity_error(document)  # the machine id names its own site, line and type
    if identity is not None:
        return MessageVerdict(chosen, "machine_mismatch", identity)
    if not schema_check(chosen)(document):
        return MessageVerdict(chosen, "schema_violation", "; ".join(payload_errors(document, chosen)[:3]))
    expected = (telemetry_topic if chosen == "telemetry" else ground_truth_topic)(
        document["site"], document["line"], document["machine"]
    )
    if topic != expected:
        return MessageVerdict(
            chosen, "topic_mismatch", f"payload of {document['machine']} belongs on {expected}"
        )
    return MessageVerdict(chosen, None, "", _epoch_seconds(document["ts"]))


def verdict_for(topic: str, payload: bytes) -> MessageVerdict:
    """`check_message`, except that a bug in the check costs one message's quarantine, not the runner."""
    try:
        return check_message(topic, payload)
    except Exception as error:
        log.exception("checking a message on %s failed", topic)
        return MessageVerdict(topic_kind(topic), "schema_violation", f"could not be checked: {error!r}")


def _epoch_seconds(timestamp: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None
