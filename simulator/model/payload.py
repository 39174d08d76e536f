"""Encoding of telemetry and ground-truth payloads (compact JSON, schema version 1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from time import gmtime

import orjson

from simulator.model.machine import LabelEvent
from simulator.model.profiles import SIGNAL_UNITS

# Bump on any change a consumer could notice; the JSON Schemas in factory_core/schema/ pin it.
SCHEMA_VERSION = 1
# The process run a live message comes from (a UUIDv7, see simulator/checkpoint.py): part of each
# machine's header, so both encoders write it right after `type`. Optional in schema version 1.
BOOT_FIELD = "boot"


@lru_cache(maxsize=16)
def _date_prefix(day: int) -> str:
    year, month, mday = gmtime(day * 86_400)[:3]
    return f"{year:04d}-{month:02d}-{mday:02d}T"


def _second_prefix(epoch_s: int) -> str:
    day, seconds = divmod(epoch_s, 86_400)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{_date_prefix(day)}{hour:02d}:{minute:02d}:{second:02d}."


# Machines are sampled in phase order, so consecutive timestamps mostly share their second: the
# "YYYY-MM-DDTHH:MM:SS." part is cached per second and only the milliseconds are looked up.
_MS_SUFFIX: tuple[str, ...] = tuple(f"{ms:03d}Z" for ms in range(1000))
_SECOND_CACHE_LIMIT = 4096
_second_cache: dict[int, str] = {}


def iso_timestamp(epoch_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and `Z`, e.g. 2026-01-01T00:00:01.250Z (faster than datetime)."""
    epoch_s, ms = divmod(epoch_ms, 1000)
    prefix = _second_cache.get(epoch_s)
    if prefix is None:
        if len(_second_cache) >= _SECOND_CACHE_LIMIT:
            _second_cache.clear()
        prefix = _second_cache[epoch_s] = _second_prefix(epoch_s)
    return prefix + _MS_SUFFIX[ms]


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


class TelemetryEncoder:
    """`encode_telemetry` for one machine, byte for byte, without rebuilding the message per sample.

    The header, key order and units never change for a machine, so the dict handed to orjson is
    built once and only its values are replaced: building it afresh (header merge, a list per
    signal) cost twice as much as orjson's own work. Not thread-safe, as the model is not.
    """

    __slots__ = ("_message", "_parts", "_signals")

    def __init__(self, header: Mapping[str, str], signal_names: Iterable[str]) -> None:
        self._signals: dict[str, list[float | str | None]] = {
            name: [None, SIGNAL_UNITS[name]] for name in signal_names
        }
        self._parts = {"good": 0, "rejected": 0}
        # Same keys in the same order as encode_telemetry, so orjson writes the same bytes.
        self._message: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            **header,
            "ts": "",
            "seq": 0,
            "state": "",
            "signals": self._signals,
            "parts": self._parts,
        }

    def encode(
        self,
        timestamp: str,
        seq: int,
        state: str,
        readings: Mapping[str, float | None],
        parts_good: int,
        parts_rejected: int,
    ) -> bytes:
        signals = self._signals
        if len(readings) != len(signals):
            raise ValueError(f"readings {list(readings)} do not match this encoder's {list(signals)}")
        for name, value in readings.items():
            signals[name][0] = value  # a KeyError here is a signal this machine never had
        message = self._message
        message["ts"] = timestamp
        message["seq"] = seq
        message["state"] = state
        parts = self._parts
        parts["good"] = parts_good
        parts["rejected"] = parts_rejected
        return orjson.dumps(message)


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
