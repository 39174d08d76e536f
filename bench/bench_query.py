"""`query` against a plain Python loop over the same archive: a count and a per-machine aggregate.

The archive is what the rule runner writes (GZIP JSON-lines batches, Firehose key layout) of at
least a million dry-run messages of the real model. Each query runs `--repeats` times both ways,
in the same run, and the script prints medians and their ratio; the answers must agree.

- DuckDB: `ArchiveDatabase` over the folder (views created, files read, query answered), as
  `python cli.py query` does minus the interpreter's start.
- Python: gzip + orjson over the same objects, one message at a time, computing the same answer
  (the `telemetry` view's deduplication included).

    .venv/bin/python bench/bench_query.py [--messages 1000000] [--repeats 5] [--archive DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import orjson  # noqa: E402

from analytics.archive_db import ArchiveDatabase  # noqa: E402
from factory_core.fleet import FleetSettings  # noqa: E402
from local_stack.archive import RAW_PREFIX, LocalArchive, batch_key, encode_batch  # noqa: E402
from simulator.dry_run import generate  # noqa: E402

BATCH = 10_000  # messages per object, the rule runner's --max-batch
COUNT_SQL = "SELECT count(*) FROM telemetry"
AGGREGATE_SQL = (
    "SELECT machine, count(*) AS messages, avg(temperature) AS temperature, max(vibration_rms) AS vibration "
    "FROM telemetry GROUP BY machine ORDER BY machine"
)


def build(folder: Path, messages: int) -> int:
    """At least `messages` telemetry messages of one 10-machine site, written in batches."""
    fleet = FleetSettings.model_validate({"seed": 3, "lines_per_site": 2})
    machines = 10
    duration_s = messages / machines + 1
    archive = LocalArchive(folder)
    written_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    batch: list[bytes] = []
    total = 0
    for payload in generate(fleet, 0, duration_s):
        batch.append(payload)
        if len(batch) == BATCH:
            archive.put_object(batch_key("bench", written_at), encode_batch(batch))
            written_at += dt.timedelta(seconds=20)
            total += len(batch)
            batch = []
    if batch:
        archive.put_object(batch_key("bench", written_at), encode_batch(batch))
        total += len(batch)
    return total


def duckdb_answer(folder: Path, sql: str) -> list[tuple[Any, ...]]:
    with ArchiveDatabase(LocalArchive(folder)) as database:
        return database.query(sql).rows


def _telemetry(folder: Path) -> Any:
    """Every telemetry message once (machine, seq, ts identify a redelivery), like the view."""
    seen: set[tuple[str, int, str]] = set()
    for path in sorted((folder / RAW_PREFIX).rglob("*.gz")):
        for line in gzip.decompress(path.read_bytes()).split(b"\n"):
            if not line:
                continue
            message = orjson.loads(line)
            if message.get("kind") != "telemetry":
                continue
            key = (message["machine"], message["seq"], message["ts"])
            if key in seen:
                continue
            seen.add(key)
            yield message


def python_count(folder: Path) -> list[tuple[Any, ...]]:
    return [(sum(1 for _ in _telemetry(folder)),)]


def python_aggregate(folder: Path) -> list[tuple[Any, ...]]:
    count: dict[str, int] = defaultdict(int)
    temperature: dict[str, list[float]] = defaultdict(list)
    vibration: dict[str, float] = {}
    for message in _telemetry(folder):
        machine = message["machine"]
        count[machine] += 1
        signals = message["signals"]
        if signals.get("temperature") is not None:
            temperature[machine].append(signals["temperature"])
        if signals.get("vibration_rms") is not None:
            vibration[machine] = max(vibration.get(machine, 0.0), signals["vibration_rms"])
    return [
        (machine, count[machine], sum(temperature[machine]) / len(temperature[machine]), vibration[machine])
        for machine in sorted(count)
    ]


def timed(function: Callable[[], list[tuple[Any, ...]]], repeats: int) -> tuple[float, list[tuple[Any, ...]]]:
    durations = []
    answer: list[tuple[Any, ...]] = []
    for _ in range(repeats):
        began = time.perf_counter()
        answer = function()
        durations.append(time.perf_counter() - began)
    return statistics.median(durations), answer


def same(left: list[tuple[Any, ...]], right: list[tuple[Any, ...]]) -> bool:
    def close(a: Any, b: Any) -> bool:
        return abs(a - b) <= 1e-6 * max(1.0, abs(a)) if isinstance(a, float) else a == b

    if len(left) != len(right):
        return False
    return all(
        len(x) == len(y) and all(close(a, b) for a, b in zip(x, y, strict=True))
        for x, y in zip(left, right, strict=True)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archive", type=Path, help="reuse (or create) the archive in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as scratch:
        folder = args.archive or Path(scratch)
        if not (folder / RAW_PREFIX).is_dir():
            began = time.perf_counter()
            total = build(folder, args.messages)
            print(f"archive: {total:,} messages written in {time.perf_counter() - began:.1f} s to {folder}")
        size = sum(path.stat().st_size for path in (folder / RAW_PREFIX).rglob("*.gz"))
        print(f"archive: {size / 1e6:.1f} MB of GZIP JSON lines; {args.repeats} repeats, medians\n")
        print(f"{'query':<22}{'duckdb s':>10}{'python s':>10}{'python / duckdb':>18}")
        for name, sql, reference in (
            ("count", COUNT_SQL, python_count),
            ("per-machine aggregate", AGGREGATE_SQL, python_aggregate),
        ):
            duck_s, duck = timed(lambda sql=sql: duckdb_answer(folder, sql), args.repeats)
            loop_s, loop = timed(lambda reference=reference: reference(folder), args.repeats)
            if not same(duck, loop):
                print(f"{name}: answers differ:\n  duckdb {duck[:3]}\n  python {loop[:3]}", file=sys.stderr)
                return 1
            print(f"{name:<22}{duck_s:>10.2f}{loop_s:>10.2f}{loop_s / duck_s:>17.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
