"""What the local stack is doing, read from its exporters: totals that survive restarts, rates, lag.

`cli_render.local_views` draws it (from the typed status the verbs return).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from factory_core import metric_catalog as catalog

_RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> list[Sample] | None:
    """Every sample of one exporter, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        return [
            Sample(sample.name, sample.labels, float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except ValueError:
        return None


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@dataclass
class PipelineSnapshot:
    """Totals since the supervisor started (robust to process restarts) and current rates."""

    published_total: float = 0.0
    archived_total: float = 0.0
    quarantined_total: float = 0.0
    publish_failures_total: float = 0.0
    published_per_s: float = 0.0
    archived_per_s: float = 0.0
    lag_s: float | None = None
    connections_up: float = 0.0
    connections_planned: float = 0.0
    queued: float = 0.0
    inflight: float = 0.0
    exporters_up: int = 0
    exporters_expected: int = 0
    sampled_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = {
    "published_total": catalog.MESSAGES_PUBLISHED.name,
    "publish_failures_total": catalog.PUBLISH_FAILURES.name,
    "archived_total": catalog.ARCHIVED.name,
    "quarantined_total": catalog.QUARANTINED.name,
}


@dataclass
class PipelineSampler:
    """Turns successive scrapes into totals and rates. A counter that went down was a restart."""

    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0.0))
    _history: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=64))

    def sample(self, exporters: Mapping[str, int], now: float | None = None) -> PipelineSnapshot:
        """`exporters`: service name -> metrics port (simulators and the rule runner)."""
        now = time.time() if now is None else now
        snapshot = PipelineSnapshot(exporters_expected=len(exporters), sampled_at=now)
        lags: list[float] = []
        for service, port in exporters.items():
            samples = scrape(port)
            if samples is None:
                continue
            snapshot.exporters_up += 1
            for field_name, metric in _COUNTERS.items():
                value = total(samples, metric)
                key = (service, metric)
                previous = self._last.get(key)
                # First sight of a process, or a counter that went down (it restarted): all of
                # its count is new.
                increase = value if previous is None or value < previous else value - previous
                self._last[key] = value
                self._totals[field_name] += increase
            snapshot.connections_up += total(samples, catalog.CONNECTIONS_UP.name)
            snapshot.connections_planned += total(samples, catalog.CONNECTIONS_PLANNED.name)
            snapshot.queued += total(samples, catalog.QUEUED.name)
            snapshot.inflight += total(samples, catalog.INFLIGHT.name)
            if any(s.name == catalog.ARCHIVE_LAG.name for s in samples):
                lags.append(total(samples, catalog.ARCHIVE_LAG.name))
        for field_name, value in self._totals.items():
            setattr(snapshot, field_name, value)
        snapshot.lag_s = max(lags) if lags else None
        self._history.append((now, snapshot.published_total, snapshot.archived_total))
        snapshot.published_per_s, snapshot.archived_per_s = self._rates(now)
        return snapshot

    def forget(self, service: str) -> None:
        """A process is about to be replaced: its next counter starts from zero."""
        for key in [key for key in self._last if key[0] == service]:
            del self._last[key]

    def _rates(self, now: float) -> tuple[float, float]:
        oldest = next((entry for entry in self._history if now - entry[0] <= _RATE_WINDOW_S + 0.5), None)
        if oldest is None or now - oldest[0] < 0.5:
            return 0.0, 0.0
        elapsed = now - oldest[0]
        newest = self._history[-1]
        return (newest[1] - oldest[1]) / elapsed, (newest[2] - oldest[2]) / elapsed
