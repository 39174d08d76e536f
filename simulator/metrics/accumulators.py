"""Lock-free histogram accumulator for hot paths; the exporter turns it into a histogram at scrape time.

prometheus-client's `Histogram.observe` takes a lock per call. At 20k observations/s that is
measurable, and every writer here is a single thread (the I/O thread of the fleet engine, one SDK
callback thread per connection, the scheduler), so each writer owns its own accumulator and the
exporter sums them when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable


class BucketCounts:
    """Counts per upper bound (`le`) plus sum; written by one thread, read by the scrape thread."""

    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound into that bound's bucket (le is inclusive).
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    @staticmethod
    def merged(parts: Iterable[BucketCounts], buckets: tuple[float, ...]) -> BucketCounts:
        result = BucketCounts(buckets)
        for part in parts:
            for index, value in enumerate(list(part.counts)):
                result.counts[index] += value
            result.total += part.total
        return result

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs as prometheus-client's HistogramMetricFamily wants them."""
        pairs: list[tuple[str, float]] = []
        running = 0
        for bound, value in zip(self.buckets, self.counts, strict=False):
            running += value
            pairs.append((_float_label(bound), float(running)))
        running += self.counts[-1]
        pairs.append(("+Inf", float(running)))
        return pairs


def _float_label(value: float) -> str:
    # Same spelling as prometheus-client uses for bucket bounds ("0.005", "1.0").
    return repr(float(value))
