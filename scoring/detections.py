"""A detector's output: CSV or JSON lines of (machine, timestamp, optional failure mode, optional score)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory_core.errors import UsageError
from factory_core.fleet import FAILURE_MODES, SENSOR_FAULTS
from scoring.labels import epoch_seconds

KNOWN_FAULTS = frozenset({*(mode for modes in FAILURE_MODES.values() for mode in modes), *SENSOR_FAULTS})
TIMESTAMP_KEYS = ("timestamp", "ts", "time")


@dataclass(frozen=True, slots=True)
class Detection:
    """The detector said: something is wrong with `machine` at `time` (epoch seconds)."""

    machine: str
    time: float
    failure_mode: str | None = None
    score: float | None = None

    def as_record(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "timestamp": _iso(self.time),
            "failure_mode": self.failure_mode,
            "score": self.score,
        }


def _iso(epoch_s: float) -> str:
    import datetime as dt

    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            return epoch_seconds(text)
        except ValueError:
            pass
    raise UsageError(
        f"{where}: timestamp {value!r} is neither ISO-8601 (2026-01-01T00:00:00Z) nor epoch seconds"
    )


def _detection(record: dict[str, Any], where: str) -> Detection:
    machine = record.get("machine")
    if not isinstance(machine, str) or not machine:
        raise UsageError(f"{where}: a detection needs a machine id, e.g. site-00-line-01-cnc_mill-01")
    stamp = next((record[key] for key in TIMESTAMP_KEYS if record.get(key) not in (None, "")), None)
    if stamp is None:
        raise UsageError(f"{where}: a detection needs a timestamp (column or key 'timestamp')")
    mode = record.get("failure_mode") or None
    if mode is not None and mode not in KNOWN_FAULTS:
        raise UsageError(
            f"{where}: unknown failure_mode {mode!r}; use a fault name from docs/model.md or leave it empty"
        )
    raw_score = record.get("score")
    score = None
    if raw_score not in (None, ""):
        try:
            score = float(raw_score)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: score {raw_score!r} is not a number") from None
    return Detection(machine, _time(stamp, where), mode, score)


def _json_lines(text: str, name: str) -> Iterator[Detection]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise UsageError(f"{name}:{number}: not JSON ({error}); write one JSON object per line") from None
        if not isinstance(record, dict):
            raise UsageError(f"{name}:{number}: expected a JSON object per line")
        yield _detection(record, f"{name}:{number}")


def _csv(text: str, name: str) -> Iterator[Detection]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "machine" not in reader.fieldnames:
        raise UsageError(f"{name}: CSV needs a header row: machine,timestamp[,failure_mode][,score]")
    for number, row in enumerate(reader, start=2):
        yield _detection(dict(row), f"{name}:{number}")


def parse_detections(text: str, name: str = "detections") -> list[Detection]:
    """Detections from CSV (with a header) or JSON lines, whichever `text` is."""
    stripped = text.lstrip()
    rows = _json_lines(text, name) if stripped.startswith("{") else _csv(text, name)
    return sorted(rows, key=lambda detection: (detection.machine, detection.time))


def read_detections(path: Path, threshold: float | None = None) -> list[Detection]:
    """Detections from a file; with `threshold`, those with a score below it are left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read detections {path}: {error.strerror or error}") from None
    detections = parse_detections(text, str(path))
    if threshold is not None:
        detections = [d for d in detections if d.score is None or d.score >= threshold]
    return detections


def write_detections(detections: Iterable[Detection], path: Path) -> None:
    """As CSV, the format `read_detections` reads (examples and tests write their detectors' output)."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["machine", "timestamp", "failure_mode", "score"])
        for detection in detections:
            record = detection.as_record()
            writer.writerow(
                [
                    record["machine"],
                    record["timestamp"],
                    record["failure_mode"] or "",
                    "" if record["score"] is None else record["score"],
                ]
            )
