"""Encoding of telemetry and ground-truth payloads (compact JSON, schema version 1)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from time import gmtime

import orjson

from simulator.model.machine import LabelEvent
from simulator.model.profiles import SIGNAL_UNITS

# Bump on any change a consumer could notice; the JSON Schemas in simulator/schema/ pin it.
SCHEMA_VERSION = 1
_MS_PER_DAY = 86_400_000


@lru_cache(maxsize=16)
def _date_prefix(day: int) -> str:
    year, month, mday = gmtime(day * 86_400)[:3]
    return f"{year:04d}-{month:02d}-{mday:02d}T"


def iso_timestamp(epoch_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and `Z`, e.g. 2026-01-01T00:00:01.250Z (faster than datetime)."""
    day, ms_of_day = divmod(epoch_ms, _MS_PER_DAY)
    seconds, ms = divmod(ms_of_day, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{_date_prefix(day)}{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


def encode_telemetry(
    header: Mapping[str, str],
    timestamp: str,
    seq: int,
    state: str,
    readings: Mapping[str, float | None],
    parts_good: int,
    parts_rejected: int,
) -> bytes:
    """One telemetry message; signals are `[value, unit]` pairs, value null on sensor dropout."""
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            **header,
            "ts": timestamp,
            "seq": seq,
            "state": state,
            "signals": {name: [value, SIGNAL_UNITS[name]] for name, value in readings.items()},
            "parts": {"good": parts_good, "rejected": parts_rejected},
        }
    )


def encode_ground_truth(
    header: Mapping[str, str], timestamp: str, seq: int, event: LabelEvent, start_epoch_ms: int
) -> bytes:
    """One label event; every key is always present (null when it does not apply) for flat tables."""
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            **header,
            "ts": timestamp,
            "seq": seq,
            "event": event.event,
            "onset": iso_timestamp(start_epoch_ms + round(event.onset_s * 1000)),
            "end": (
                None if event.end_s is None else iso_timestamp(start_epoch_ms + round(event.end_s * 1000))
            ),
            "fault": event.fault,
            "fault_class": event.fault_class,
            "fault_id": event.fault_id,
            "signal": event.signal,
            "severity": event.severity,
            "scheduled": event.scheduled,
            "from_state": event.from_state,
            "to_state": event.to_state,
            "reason": event.reason,
        }
    )
