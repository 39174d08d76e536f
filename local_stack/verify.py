"""Reconcile the archive against what was published: per machine and kind, gaps and duplicates in `seq`.

Reads any `Archive` (local folder, S3-compatible bucket, or the cloud bucket in either archive mode),
one object at a time, and keeps per stream only run-length sets of sequence numbers and a sparse
latency histogram, so archives far larger than memory can be checked. The report's shape is
`factory_core.archive_report`; `python cli.py verify` renders it.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from factory_core.archive_report import (
    KindTotals,
    QuarantineSample,
    Restart,
    SeqRange,
    SiteReconciliation,
    StreamReport,
    VerifyReport,
)
from factory_core.fleet import TOPIC_ROOT
from factory_core.payload_contract import PayloadInvalid, decode_payload, payload_kind
from local_stack.archive import QUARANTINE_PREFIX, RAW_PREFIX, Archive, ObjectInfo, StoredObject, iter_records
from local_stack.verify_tallies import AHEAD_TOLERANCE_S, LatencyHistogram, SeqSet

# Objects holding messages: the batched layout, and the cloud's direct mode (keyed by topic).
DATA_PREFIXES = (RAW_PREFIX, TOPIC_ROOT + "/")
_PREFETCH_OBJECTS = 8
_SAMPLES_KEPT = 5


# -- the scan --------------------------------------------------------------------------------------


class _Run:
    """One simulator process's messages of one stream: a boot, or (payloads without one) a count from 1."""

    __slots__ = ("boot", "first_timestamp", "max_seq", "seqs")

    def __init__(self, boot: str | None, first_timestamp: str | None = None) -> None:
        self.boot = boot
        self.seqs = SeqSet()
        self.first_timestamp = first_timestamp  # unbooted runs: ts of their seq 1, when archived
        self.max_seq = 0

    def add(self, seq: int) -> tuple[bool, bool]:
        """(new, out of order): False if a duplicate; out of order if a higher seq came first."""
        if not self.seqs.add(seq):
            return False, False
        if seq < self.max_seq:
            return True, True
        self.max_seq = seq
        return True, False


class _Stream:
    __slots__ = ("boots", "duplicates", "latency", "messages", "out_of_order", "site", "unbooted")

    def __init__(self, site: str) -> None:
        self.site = site
        self.unbooted: list[_Run] = [_Run(None)]
        self.boots: dict[str, _Run] = {}
        self.messages = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.latency = LatencyHistogram()

    def add(self, seq: int, timestamp: str, boot: str | None) -> None:
        self.messages += 1
        if boot is not None:
            run = self.boots.get(boot)
            if run is None:
                run = self.boots[boot] = _Run(boot)
        else:
            run = self._unbooted_run(seq, timestamp)
        new, late = run.add(seq)
        if not new:
            self.duplicates += 1
        elif late and (boot is not None or run is self.unbooted[-1]):
            self.out_of_order += 1

    def _unbooted_run(self, seq: int, timestamp: str) -> _Run:
        """Payloads without `boot`: a seq 1 with a new timestamp means the simulator counted again."""
        run = self.unbooted[-1]
        if seq != 1:
            return run
        known = next((r for r in self.unbooted if r.first_timestamp == timestamp), None)
        if known is not None:
            return known  # a redelivered seq 1 of this or an earlier run
        if run.first_timestamp is None and 1 not in run.seqs:
            run.first_timestamp = timestamp
            return run
        run = _Run(None, timestamp)
        self.unbooted.append(run)
        return run

    def runs(self) -> list[_Run]:
        """Every run with messages, oldest first (boots are UUIDv7s: their order is their age)."""
        ordered = [run for run in self.unbooted if run.seqs.starts]
        return ordered + [self.boots[boot] for boot in sorted(self.boots)]


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
                message = decode_payload(record)
                machine = message["machine"]
                seq = message["seq"]
                timestamp = message["ts"]
                boot = message.get("boot")
                if isinstance(seq, float) and seq.is_integer():
                    seq = int(seq)  # JSON Schema's integer: what the runner accepted, read alike
                if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(machine, str):
                    raise TypeError("seq must be an integer and machine a string")
                if boot is not None and not isinstance(boot, str):
                    raise TypeError("boot must be a string")
                kind = payload_kind(message)
            except (PayloadInvalid, KeyError, TypeError, AttributeError) as error:
                self.unreadable += 1
                if len(self.unreadable_samples) < _SAMPLES_KEPT:
                    self.unreadable_samples.append(f"{stored.key}: {type(error).__name__}: {error}")
                continue
            key = (str(message.get("site", "")), machine, kind)
            stream = self.streams.get(key)
            if stream is None:
                stream = self.streams[key] = _Stream(key[0])
            stream.add(seq, timestamp, boot)
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


def _stream_report(
    machine: str, kind: str, stream: _Stream, expect_seq_from: int | None, machine_first_boot: str | None
) -> StreamReport:
    """Gaps within each run are missing messages; what lies between two runs is a restart.

    A run with a boot that starts right after the previous run's last seq took over cleanly (a
    drained simulator resumed from its checkpoint): the same run goes on. One that starts further
    on followed a crash: the seqs between were published by the crashed process but never reached
    the broker, or were reserved and never used; nobody can tell which, so they are `possibly_lost`,
    not missing. One that starts at or below it had no ledger to continue from: a restart whose loss
    cannot be sized. Runs without a boot (older payloads) each count again from 1.
    """
    runs = stream.runs()
    gaps: list[SeqRange] = []
    restarts: list[Restart] = []
    run_index = 0
    previous: _Run | None = None
    for run in runs:
        first = run.seqs.first or 0
        if previous is None and run.boot is not None and machine_first_boot not in (None, run.boot):
            # The machine's other kind shows an earlier run: this stream's first archived run is
            # not the machine's first, so its start is a restart too (nothing archived before it).
            restarts.append(Restart(run.boot, 0, first, first - 1))
            expected: int | None = None
        elif previous is None or run.boot is None:
            expected = expect_seq_from
            if previous is not None:
                run_index += 1
                restarts.append(Restart(None, previous.seqs.last or 0, first, None))
        else:
            expected = None
            before = previous.seqs.last or 0
            if first != before + 1:
                run_index += 1
                lost = first - before - 1 if first > before else None
                restarts.append(Restart(run.boot, before, first, lost))
        gaps += [SeqRange(a, b, run_index) for a, b in run.seqs.missing(expected)]
        previous = run
    return StreamReport(
        machine=machine,
        kind=kind,
        site=stream.site,
        messages=stream.messages,
        unique=sum(len(run.seqs) for run in runs),
        first_seq=(runs[0].seqs.first or 0) if runs else 0,
        last_seq=(runs[-1].seqs.last or 0) if runs else 0,
        gaps=tuple(gaps),
        missing=sum(gap.size for gap in gaps),
        duplicates=stream.duplicates,
        out_of_order=stream.out_of_order,
        runs=run_index + 1,
        boots=len(stream.boots),
        restarts=tuple(restarts),
        possibly_lost=sum(restart.possibly_lost or 0 for restart in restarts),
        latency=stream.latency.summary(),
    )


def _report(
    scan: _Scan, published: Mapping[tuple[str, str], int], expect_seq_from: int | None
) -> VerifyReport:
    first_boots = _first_boots(scan)
    streams = [
        _stream_report(machine, kind, stream, expect_seq_from, first_boots.get((site, machine)))
        for (site, machine, kind), stream in sorted(scan.streams.items())
    ]
    totals, overall = _kind_totals(scan, streams)
    unique_by_site: Counter[tuple[str, str]] = Counter()
    for stream_report in streams:
        unique_by_site[(stream_report.site, stream_report.kind)] += stream_report.unique
    reconciliation = tuple(
        SiteReconciliation(site, kind, count, unique_by_site.get((site, kind), 0))
        for (site, kind), count in sorted(published.items())
    )
    return VerifyReport(
        archive=scan.archive,
        objects=scan.objects,
        bytes=scan.bytes,
        first_written_at=scan.first_written_at,
        last_written_at=scan.last_written_at,
        totals=tuple(totals),
        latency=overall.summary(),
        latency_meaningful=overall.ahead == 0,
        streams=tuple(streams),
        quarantined=dict(sorted(scan.quarantined.items())),
        quarantine_samples=tuple(scan.quarantine_samples),
        unreadable=scan.unreadable,
        unreadable_samples=tuple(scan.unreadable_samples),
        reconciliation=reconciliation,
        notes=tuple(_notes(scan, streams, overall)),
    )


def _first_boots(scan: _Scan) -> dict[tuple[str, str], str]:
    """A machine's first boot, over both its kinds: keyed by (site, machine) like its streams."""
    first_boots: dict[tuple[str, str], str] = {}
    for (site, machine, _kind), stream in scan.streams.items():
        if stream.boots:
            earliest = min(stream.boots)
            first_boots[(site, machine)] = min(first_boots.get((site, machine), earliest), earliest)
    return first_boots


def _kind_totals(scan: _Scan, streams: list[StreamReport]) -> tuple[list[KindTotals], LatencyHistogram]:
    """Per kind, the streams' counts added up and their latencies merged; and every latency merged."""
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
                restarts=sum(len(s.restarts) for s in of_kind),
                possibly_lost=sum(s.possibly_lost for s in of_kind),
                latency=histogram.summary(),
            )
        )
    return totals, overall


def _notes(scan: _Scan, streams: list[StreamReport], overall: LatencyHistogram) -> list[str]:
    """What the reader needs to know to read the numbers: skewed clocks, an empty archive, restarts."""
    notes: list[str] = []
    if overall.ahead:
        notes.append(
            f"{overall.ahead} messages carry timestamps more than {AHEAD_TOLERANCE_S:g} s ahead of"
            " their archive write time: the simulated clock runs faster than real time (speed > 1)"
            " or clocks are skewed, so publish→archive latency is not meaningful; it is, at speed 1."
        )
    if not streams and not scan.quarantined:
        notes.append(f"the archive at {scan.archive} holds no messages yet")
    restarts = [restart for stream in streams for restart in stream.restarts]
    if any(restart.possibly_lost for restart in restarts):
        notes.append(
            "some simulators were restarted without draining (a crash or kill -9): the seqs between the"
            " last archived message of the old run and the first of the new one were published by the"
            " dead process but never reached the broker, or reserved and never used; they are counted"
            " as possibly lost, not missing."
        )
    if any(restart.possibly_lost is None for restart in restarts):
        notes.append(
            "some machines counted their seq again from a lower value (a simulator restarted without"
            " its seq ledger, or an older simulator): each run is checked on its own, gaps name the run"
            " they belong to, and what a crash lost between runs cannot be sized."
        )
    return notes
