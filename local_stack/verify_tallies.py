"""The bounded-memory tallies `local_stack.verify` keeps per stream: sequence numbers as run-length
ranges, and latencies in a sparse log-bucketed histogram, so archives far larger than memory can be
checked.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter

from factory_core.archive_report import LatencySummary

# Log-spaced latency buckets, 1 % apart: percentiles are exact to within 1 % without keeping values.
_BUCKET_GROWTH = 1.01
_LOG_GROWTH = math.log(_BUCKET_GROWTH)
_MIN_LATENCY_S = 0.001  # everything faster lands in the first bucket (reported as <= 1 ms)
# Payload clocks ahead of the archive clock by more than this mean the latency says nothing.
AHEAD_TOLERANCE_S = 1.0


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
