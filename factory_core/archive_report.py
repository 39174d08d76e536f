"""What `verify` finds in an archive: per machine and kind, gaps and duplicates in `seq`, restarts and
what they may have lost, latency, quarantine, and published-versus-archived counts. The scan that
builds it is `local_stack.verify`.

Derived totals are fields computed in `__post_init__`, so the `--json` document carries them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from factory_core.verb_results import VerbResult


@dataclass(frozen=True)
class SeqRange:
    first: int
    last: int
    run: int = 0  # which simulator run of the machine (0 = the first one archived)

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class LatencySummary:
    """Publish (payload `ts`) → archive (object write time) latency; percentiles within 1 %."""

    count: int
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None
    ahead: int  # messages whose timestamp is ahead of their write time beyond the tolerance


@dataclass(frozen=True)
class Restart:
    """A simulator process that stopped without handing over (a crash), as one stream shows it."""

    boot: str | None  # the new process's boot (None: payloads without one)
    last_seq: int  # the last seq archived from the process before (0: none archived)
    resumed_seq: int  # the first seq archived from the new process
    # The seqs in between: published by the dead process but never delivered, or reserved and never
    # used. None when the new process counted again from below (no seq ledger): unknown.
    possibly_lost: int | None


@dataclass(frozen=True)
class StreamReport:
    """One machine's messages of one kind (`seq` counts per machine per kind)."""

    machine: str
    kind: str
    site: str
    messages: int  # records read, duplicates included
    unique: int
    first_seq: int
    last_seq: int
    gaps: tuple[SeqRange, ...]
    missing: int
    duplicates: int
    out_of_order: int  # new seqs that arrived after a higher one
    runs: int  # 1 + restarts: stretches of seq each process continued without a break
    boots: int  # simulator processes that sent messages with a `boot` (clean handovers included)
    restarts: tuple[Restart, ...]
    possibly_lost: int  # what the restarts may have lost (sized ones only)
    latency: LatencySummary | None

    @property
    def ok(self) -> bool:
        return self.missing == 0


@dataclass(frozen=True)
class QuarantineSample:
    reason: str
    topic: str
    detail: str
    received_at: str
    payload_preview: str


@dataclass(frozen=True)
class SiteReconciliation:
    """Published counts (from the simulators' metrics) against unique archived messages."""

    site: str
    kind: str
    published: int
    archived_unique: int
    unaccounted: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unaccounted", self.published - self.archived_unique)


@dataclass(frozen=True)
class KindTotals:
    kind: str
    machines: int
    messages: int
    unique: int
    duplicates: int
    missing: int
    gaps: int
    out_of_order: int
    restarts: int
    possibly_lost: int
    latency: LatencySummary | None


@dataclass(frozen=True)
class VerifyReport(VerbResult):
    archive: str
    objects: int
    bytes: int
    first_written_at: dt.datetime | None
    last_written_at: dt.datetime | None
    totals: tuple[KindTotals, ...]
    latency: LatencySummary | None  # every kind together
    latency_meaningful: bool
    streams: tuple[StreamReport, ...]
    quarantined: dict[str, int]
    quarantine_samples: tuple[QuarantineSample, ...]
    unreadable: int  # records in data objects that are not a JSON object with machine and seq
    unreadable_samples: tuple[str, ...]
    reconciliation: tuple[SiteReconciliation, ...]
    notes: tuple[str, ...]
    # Derived from the fields above.
    messages: int = field(init=False)
    unique: int = field(init=False)
    duplicates: int = field(init=False)
    missing: int = field(init=False)
    restarts: int = field(init=False)  # simulator crashes seen, summed over streams
    possibly_lost: int = field(init=False)  # what those crashes may have lost (not in `missing`)
    quarantined_total: int = field(init=False)
    # Nothing lost that reached the broker: no gaps, nothing unreadable, every published one
    # archived. What a crashed simulator never delivered is `possibly_lost`, reported beside it.
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        derived = {
            "messages": sum(total.messages for total in self.totals),
            "unique": sum(total.unique for total in self.totals),
            "duplicates": sum(total.duplicates for total in self.totals),
            "missing": sum(total.missing for total in self.totals),
            "restarts": sum(total.restarts for total in self.totals),
            "possibly_lost": sum(total.possibly_lost for total in self.totals),
            "quarantined_total": sum(self.quarantined.values()),
        }
        derived["ok"] = (
            derived["missing"] == 0
            and self.unreadable == 0
            and all(item.unaccounted <= 0 for item in self.reconciliation)
        )
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def failed(self) -> bool:
        return not self.ok
