"""Reconcile the archive against what was published: per machine and kind, gaps and duplicates in `seq`.

Reads any `Archive` (local folder, S3-compatible bucket, or the cloud bucket in either archive mode),
one object at a time, and keeps per stream only run-length sets of sequence numbers and a sparse
latency histogram, so archives far larger than memory can be checked. The report's shape is
`factory_core.archive_report`; `python cli.py verify` renders it.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from factory_core.archive_report import (
    KindTotals,
    LatencySummary,
    QuarantineSample,
    SeqRange,
    SiteReconciliation,
    StreamReport,
    VerifyReport,
)
from factory_core.fleet import TOPIC_ROOT
from factory_core.payload_contract import payload_kind
from local_stack.archive import QUARANTINE_PREFIX, RAW_PREFIX, Archive, ObjectInfo, StoredObject, iter_records

# Objects holding messages: the batched layout, and the cloud's direct mode (keyed by topic).
DATA_PREFIXES = (RAW_PREFIX, TOPIC_ROOT + "/")
# Log-spaced latency buckets, 1 % apart: percentiles are exact to within 1 % without keeping values.
_BUCKET_GROWTH = 1.01
_LOG_GROWTH = math.log(_BUCKET_GROWTH)
_MIN_LATENCY_S = 0.001  # everything faster lands in the first bucket (reported as <= 1 ms)
# Payload clocks ahead of the archive clock by more than this mean the latency says nothing.
AHEAD_TOLERANCE_S = 1.0
_PREFETCH_OBJECTS = 8
_SAMPLES_KEPT = 5


# -- streaming building blocks ---------------------------------------------------------------------


class SeqSet:
    """A set of integers stored as sorted, disjoint, inclusive ranges: O(gaps) memory, O(1) in order."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, value: int) -> bool:
        """Add `value`; False if it was already present."""
        starts, ends = self.starts, self.ends
        if ends and value == ends[-1] + 1:  # the common case: the next seq
            ends[-1] = value
            return True
        index = bisect_right(starts, value) - 1
        if index >= 0 and value <= ends[index]:
            return False
        joins_left = index >= 0 and ends[index] + 1 == value
        joins_right = index + 1 < len(starts) and starts[index + 1] - 1 == value
        if joins_left and joins_right:
            ends[index] = ends[index + 1]
            del starts[index + 1], ends[index + 1]
        elif joins_left:
            ends[index] = value
        elif joins_right:
            starts[index + 1] = value
        else:
            starts.insert(index + 1, value)
            ends.insert(index + 1, value)
        return True

    def __contains__(self, value: int) -> bool:
        index = bisect_right(self.starts, value) - 1
        return index >= 0 and value <= self.ends[index]

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in zip(self.starts, self.ends, strict=True))

    @property
    def first(self) -> int | None:
        return self.starts[0] if self.starts else None

    @property
    def last(self) -> int | None:
        return self.ends[-1] if self.ends else None

    def missing(self, expected_first: int | None = None) -> list[tuple[int, int]]:
        """Inclusive ranges absent between `expected_first` (or the first present) and the last."""
        gaps: list[tuple[int, int]] = []
        if not self.starts:
            return gaps
        if expected_first is not None and expected_first < self.starts[0]:
            gaps.append((expected_first, self.starts[0] - 1))
        for end, next_start in zip(self.ends, self.starts[1:], strict=False):
            gaps.append((end + 1, next_start - 1))
        return gaps


class LatencyHistogram:
    """Sparse log-bucketed histogram of non-negative latencies (seconds), plus exact max."""

    __slots__ = ("ahead", "buckets", "count", "max_s", "negative")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max_s = 0.0
        self.negative = 0  # payload timestamp later than the write time
        self.ahead = 0  # ... by more than AHEAD_TOLERANCE_S

    def add(self, latency_s: float) -> None:
        if latency_s < 0:
            self.negative += 1
            if latency_s < -AHEAD_TOLERANCE_S:
                self.ahead += 1
            return
        self.count += 1
        if latency_s > self.max_s:
            self.max_s = latency_s
        self.buckets[_bucket(latency_s)] += 1

    def merge(self, other: LatencyHistogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.max_s = max(self.max_s, other.max_s)
        self.negative += other.negative
        self.ahead += other.ahead

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_bucket_upper(index), self.max_s)
        return self.max_s

    def summary(self) -> LatencySummary | None:
        if self.count == 0 and self.negative == 0:
            return None
        return LatencySummary(
            count=self.count,
            p50_s=self.quantile(0.50),
            p90_s=self.quantile(0.90),
            p99_s=self.quantile(0.99),
            max_s=self.max_s if self.count else None,
            ahead=self.ahead,
        )


def _bucket(latency_s: float) -> int:
    if latency_s <= _MIN_LATENCY_S:
        return 0
    return 1 + int(math.log(latency_s / _MIN_LATENCY_S) / _LOG_GROWTH)


def _bucket_upper(index: int) -> float:
    return _MIN_LATENCY_S * _BUCKET_GROWTH**index


# -- the scan --------------------------------------------------------------------------------------


class _Run:
    __slots__ = ("first_timestamp", "seqs")

    def __init__(self, first_timestamp: str | None) -> None:
        self.seqs = SeqSet()
        self.first_timestamp = first_timestamp  # ts of this run's seq 1, when archived


class _Stream:
    __slots__ = ("duplicates", "latency", "max_seq", "messages", "out_of_order", "runs", "site")

    def __init__(self, site: str) -> None:
        self.site = site
        self.runs: list[_Run] = [_Run(None)]
        self.messages = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.max_seq = 0
        self.latency = LatencyHistogram()

    def add(self, seq: int, timestamp: str) -> None:
        self.messages += 1
        run = self.runs[-1]
        if seq == 1:
            known = next((r for r in self.runs if r.first_timestamp == timestamp), None)
            if known is not None:
                run = known  # a redelivered seq 1 of this or an earlier run
            elif run.first_timestamp is None and 1 not in run.seqs:
                run.first_timestamp = timestamp
            else:
                # The simulator restarted and counts from 1 again: a new run, not duplicates.
                run = _Run(timestamp)
                self.runs.append(run)
                self.max_seq = 0
        if not run.seqs.add(seq):
            self.duplicates += 1
        elif run is self.runs[-1]:
            if seq < self.max_seq:
                self.out_of_order += 1
            else:
                self.max_seq = seq


@dataclass
class _Scan:
    archive: str
    # (site, machine, kind): a machine id names its site, but the key does not rely on that.
    streams: dict[tuple[str, str, str], _Stream] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    first_written_at: dt.datetime | None = None
    last_written_at: dt.datetime | None = None
    quarantined: Counter[str] = field(default_factory=Counter)
    quarantine_samples: list[QuarantineSample] = field(default_factory=list)
    unreadable: int = 0
    unreadable_samples: list[str] = field(default_factory=list)

    def saw_object(self, info: ObjectInfo, stored: StoredObject) -> None:
        self.objects += 1
        self.bytes += info.size
        written = stored.written_at
        if self.first_written_at is None or written < self.first_written_at:
            self.first_written_at = written
        if self.last_written_at is None or written > self.last_written_at:
            self.last_written_at = written

    def add_data(self, stored: StoredObject) -> None:
        written_s = stored.written_at.timestamp()
        parse_timestamp = _timestamp_parser()
        for record in iter_records(stored.body):
            try:
                message = orjson.loads(record)
                machine = message["machine"]
                seq = message["seq"]
                timestamp = message["ts"]
                if not isinstance(seq, int) or not isinstance(machine, str):
                    raise TypeError("seq must be an integer and machine a string")
                kind = payload_kind(message)
            except (orjson.JSONDecodeError, KeyError, TypeError) as error:
                self.unreadable += 1
                if len(self.unreadable_samples) < _SAMPLES_KEPT:
                    self.unreadable_samples.append(f"{stored.key}: {type(error).__name__}: {error}")
                continue
            key = (str(message.get("site", "")), machine, kind)
            stream = self.streams.get(key)
            if stream is None:
                stream = self.streams[key] = _Stream(key[0])
            stream.add(seq, timestamp)
            published_s = parse_timestamp(timestamp)
            if published_s is not None:
                stream.latency.add(written_s - published_s)

    def add_quarantine(self, stored: StoredObject) -> None:
        for record in iter_records(stored.body):
            try:
                entry = orjson.loads(record)
                reason = str(entry["reason"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                # Not our envelope (someone else's error output): count it under the key's reason.
                reason = stored.key[len(QUARANTINE_PREFIX) :].split("/", 1)[0]
                entry = {}
            self.quarantined[reason] += 1
            if len(self.quarantine_samples) < _SAMPLES_KEPT and entry:
                self.quarantine_samples.append(_quarantine_sample(reason, entry))


def _quarantine_sample(reason: str, entry: Mapping[str, Any]) -> QuarantineSample:
    try:
        # `payload_base64`: the whole payload, as records written before the excerpt held it.
        excerpt = entry.get("payload_excerpt_base64", entry.get("payload_base64", ""))
        raw = base64.b64decode(excerpt, validate=True)
        preview = raw[:80].decode("utf-8", errors="replace")
    except ValueError:
        preview = "?"
    return QuarantineSample(
        reason,
        str(entry.get("topic", "")),
        str(entry.get("detail", ""))[:200],
        str(entry.get("received_at", "")),
        preview,
    )


def _timestamp_parser() -> Any:
    """ISO-8601 `...Z` → epoch seconds, memoised per second: messages of one batch share most seconds."""
    cache: dict[str, float] = {}

    def parse(timestamp: Any) -> float | None:
        if not isinstance(timestamp, str) or len(timestamp) < 20:
            return None
        second, fraction = timestamp[:19], timestamp[19:]
        base = cache.get(second)
        if base is None:
            try:
                base = dt.datetime.fromisoformat(second + "+00:00").timestamp()
            except ValueError:
                return None
            if len(cache) > 4096:
                cache.clear()
            cache[second] = base
        if fraction.startswith("."):
            digits = fraction[1:].rstrip("Z")
            if digits.isdigit():
                return base + int(digits) / 10 ** len(digits)
        return base

    return parse


def _fetch_in_order(
    archive: Archive, infos: Iterable[ObjectInfo], prefetch: int
) -> Iterator[tuple[ObjectInfo, StoredObject]]:
    """Objects in listing order, with up to `prefetch` downloads in flight (S3 latency hides here)."""
    with ThreadPoolExecutor(max_workers=prefetch) as pool:
        window: deque[tuple[ObjectInfo, Future[StoredObject]]] = deque()
        for info in infos:
            window.append((info, pool.submit(archive.get_object, info.key)))
            if len(window) >= prefetch:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()


def _archive_objects(archive: Archive) -> Iterator[ObjectInfo]:
    for prefix in (*DATA_PREFIXES, QUARANTINE_PREFIX):
        yield from archive.list_objects(prefix)


def verify_archive(
    archive: Archive,
    *,
    published: Mapping[tuple[str, str], int] | None = None,
    expect_seq_from: int | None = 1,
    prefetch: int = _PREFETCH_OBJECTS,
) -> VerifyReport:
    """Scan every object of `archive` and reconcile each machine's `seq` per kind.

    `published` maps (site, kind) to the number of messages the simulators report as published
    (e.g. `simulator_messages_published_total`): loss at the end of a stream leaves no gap in `seq`,
    and only this comparison shows it. `expect_seq_from`: the first `seq` of a run (1 for this
    simulator); a stream whose archive starts later counts the difference as a gap. Pass None
    when checking a time window of a longer archive.
    """
    scan = _Scan(archive.location)
    for info, stored in _fetch_in_order(archive, _archive_objects(archive), max(1, prefetch)):
        scan.saw_object(info, stored)
        if info.key.startswith(QUARANTINE_PREFIX):
            scan.add_quarantine(stored)
        else:
            scan.add_data(stored)
    return _report(scan, published or {}, expect_seq_from)


def _report(
    scan: _Scan, published: Mapping[tuple[str, str], int], expect_seq_from: int | None
) -> VerifyReport:
    streams: list[StreamReport] = []
    for (_site, machine, kind), stream in sorted(scan.streams.items()):
        gaps: list[SeqRange] = []
        unique = 0
        for run_index, run in enumerate(stream.runs):
            if not run.seqs.starts:
                continue
            unique += len(run.seqs)
            gaps += [SeqRange(a, b, run_index) for a, b in run.seqs.missing(expect_seq_from)]
        first_run = next(run for run in stream.runs if run.seqs.starts)
        streams.append(
            StreamReport(
                machine=machine,
                kind=kind,
                site=stream.site,
                messages=stream.messages,
                unique=unique,
                first_seq=first_run.seqs.first or 0,
                last_seq=stream.runs[-1].seqs.last or 0,
                gaps=tuple(gaps),
                missing=sum(gap.size for gap in gaps),
                duplicates=stream.duplicates,
                out_of_order=stream.out_of_order,
                runs=sum(1 for run in stream.runs if run.seqs.starts),
                latency=stream.latency.summary(),
            )
        )
    totals: list[KindTotals] = []
    overall = LatencyHistogram()
    for kind in sorted({stream.kind for stream in streams}):
        of_kind = [s for s in streams if s.kind == kind]
        histogram = LatencyHistogram()
        for (_site, _machine, stream_kind), stream in scan.streams.items():
            if stream_kind == kind:
                histogram.merge(stream.latency)
        overall.merge(histogram)
        totals.append(
            KindTotals(
                kind=kind,
                machines=len(of_kind),
                messages=sum(s.messages for s in of_kind),
                unique=sum(s.unique for s in of_kind),
                duplicates=sum(s.duplicates for s in of_kind),
                missing=sum(s.missing for s in of_kind),
                gaps=sum(len(s.gaps) for s in of_kind),
                out_of_order=sum(s.out_of_order for s in of_kind),
                restarts=sum(s.runs - 1 for s in of_kind),
                latency=histogram.summary(),
            )
        )
    unique_by_site: Counter[tuple[str, str]] = Counter()
    for stream_report in streams:
        unique_by_site[(stream_report.site, stream_report.kind)] += stream_report.unique
    reconciliation = tuple(
        SiteReconciliation(site, kind, count, unique_by_site.get((site, kind), 0))
        for (site, kind), count in sorted(published.items())
    )
    notes: list[str] = []
    latency_meaningful = overall.ahead == 0
    if overall.ahead:
        notes.append(
            f"{overall.ahead} messages carry timestamps more than {AHEAD_TOLERANCE_S:g} s ahead of"
            " their archive write time: the simulated clock runs faster than real time (speed > 1)"
            " or clocks are skewed, so publish→archive latency is not meaningful; it is, at speed 1."
        )
    if not streams and not scan.quarantined:
        notes.append(f"the archive at {scan.archive} holds no messages yet")
    if any(stream.runs > 1 for stream in streams):
        notes.append(
            "some machines restarted counting at seq 1 (a simulator process restarted): each run is"
            " checked on its own; gaps name the run they belong to."
        )
    return VerifyReport(
        archive=scan.archive,
        objects=scan.objects,
        bytes=scan.bytes,
        first_written_at=scan.first_written_at,
        last_written_at=scan.last_written_at,
        totals=tuple(totals),
        latency=overall.summary(),
        latency_meaningful=latency_meaningful,
        streams=tuple(streams),
        quarantined=dict(sorted(scan.quarantined.items())),
        quarantine_samples=tuple(scan.quarantine_samples),
        unreadable=scan.unreadable,
        unreadable_samples=tuple(scan.unreadable_samples),
        reconciliation=reconciliation,
        notes=tuple(notes),
    )
