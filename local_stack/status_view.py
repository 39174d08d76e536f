"""What the local stack is doing, read from its exporters: totals that survive restarts, rates, lag.

`cli_render.local_views` draws it (from the typed status the verbs return).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
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
    return parse_exposition(text)


def read_exposition(path: Path) -> list[Sample] | None:
    """The samples of an exposition a process left in a file on exit, or None without one."""
    try:
        return parse_exposition(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def parse_exposition(text: str) -> list[Sample] | None:
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
    archive_write_errors_total: float = 0.0
    scrape_failures_total: int = 0  # samples an exporter of a running process did not answer
    published_per_s: float = 0.0
    archived_per_s: float = 0.0
    lag_s: float | None = None
    connections_up: float = 0.0
    connections_planned: float = 0.0
    queued: float = 0.0
    inflight: float = 0.0
    exporters_up: int = 0
    exporters_expected: int = 0
    unanswered: list[str] = field(default_factory=list)  # running services whose exporter is silent
    sampled_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = {
    "published_total": catalog.MESSAGES_PUBLISHED.name,
    "publish_failures_total": catalog.PUBLISH_FAILURES.name,
    "archived_total": catalog.ARCHIVED.name,
    "quarantined_total": catalog.QUARANTINED.name,
    "archive_write_errors_total": catalog.ARCHIVE_WRITE_ERRORS.name,
}
# Lag by counts: once the archive is further behind the published count than this, `lag_s` says
# how far back in time the count stood where the archive stands now (the runner's own gauge cannot
# say it: it moves only when something is written).
COUNT_LAG_SHOWN_AFTER_S = 5.0


@dataclass
class PipelineSampler:
    """Turns successive scrapes into totals and rates. A counter that went down was a restart.

    Totals add each process's increases; a process that exits cleanly leaves its final exposition,
    and `settle` adds what it counted after the last scrape (a drain's last second), so totals are
    the processes' final counters, not the sum of what happened to be scraped.
    """

    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0.0))
    _history: deque[tuple[float, float, float]] = field(default_factory=lambda: deque(maxlen=4096))
    _scrape_failures: int = 0

    def sample(
        self,
        exporters: Mapping[str, int],
        now: float | None = None,
        still_expected: Callable[[], Collection[str]] | None = None,
    ) -> PipelineSnapshot:
        """`exporters`: service name -> metrics port (simulators and the rule runner);
        `still_expected`: asked after the scrapes, so one that stopped meanwhile is no failure."""
        now = time.time() if now is None else now
        snapshot = PipelineSnapshot(exporters_expected=len(exporters), sampled_at=now)
        lags: list[float] = []
        for service, port in exporters.items():
            samples = scrape(port)
            if samples is None:
                snapshot.unanswered.append(service)
                continue
            snapshot.exporters_up += 1
            self._count(service, samples)
            snapshot.connections_up += total(samples, catalog.CONNECTIONS_UP.name)
            snapshot.connections_planned += total(samples, catalog.CONNECTIONS_PLANNED.name)
            snapshot.queued += total(samples, catalog.QUEUED.name)
            snapshot.inflight += total(samples, catalog.INFLIGHT.name)
            if any(s.name == catalog.ARCHIVE_LAG.name for s in samples):
                lags.append(total(samples, catalog.ARCHIVE_LAG.name))
        if snapshot.unanswered and still_expected is not None:
            expected = still_expected()
            snapshot.unanswered = [service for service in snapshot.unanswered if service in expected]
        self._scrape_failures += len(snapshot.unanswered)
        self._fill(snapshot)
        self._history.append((now, snapshot.published_total, snapshot.archived_total))
        snapshot.published_per_s, snapshot.archived_per_s = self._rates(now)
        snapshot.lag_s = self._lag(now, snapshot, max(lags) if lags else None)
        return snapshot

    def settle(self, service: str, final: Iterable[Sample], snapshot: PipelineSnapshot) -> PipelineSnapshot:
        """`service` exited cleanly leaving `final`: count the rest, and return `snapshot` with it."""
        self._count(service, list(final))
        settled = replace(snapshot, unanswered=list(snapshot.unanswered))
        self._fill(settled)
        return settled

    def forget(self, service: str) -> None:
        """A process is about to be replaced: its next counter starts from zero."""
        for key in [key for key in self._last if key[0] == service]:
            del self._last[key]

    def _count(self, service: str, samples: list[Sample]) -> None:
        for field_name, metric in _COUNTERS.items():
            value = total(samples, metric)
            key = (service, metric)
            previous = self._last.get(key)
            # First sight of a process, or a counter that went down (it restarted): all of
            # its count is new.
            increase = value if previous is None or value < previous else value - previous
            self._last[key] = value
            self._totals[field_name] += increase

    def _fill(self, snapshot: PipelineSnapshot) -> None:
        for field_name, value in self._totals.items():
            setattr(snapshot, field_name, value)
        snapshot.scrape_failures_total = self._scrape_failures

    def _lag(self, now: float, snapshot: PipelineSnapshot, gauge: float | None) -> float | None:
        """The runner's gauge; or, once the archive is further behind than that shows, how long ago
        the published count stood where the archived count stands now (it grows while nothing is
        written, whether the writes fail or the runner does not run)."""
        handled = snapshot.archived_total + snapshot.quarantined_total
        if snapshot.published_total <= handled:
            return gauge
        caught_up_at = next((t for t, published, _ in reversed(self._history) if published <= handled), None)
        oldest = self._history[0][0] if self._history else now
        behind = now - (caught_up_at if caught_up_at is not None else oldest)
        if behind < COUNT_LAG_SHOWN_AFTER_S:
            return gauge
        return max(behind, gauge or 0.0)

    def _rates(self, now: float) -> tuple[float, float]:
        oldest = next((entry for entry in self._history if now - entry[0] <= _RATE_WINDOW_S + 0.5), None)
        if oldest is None or now - oldest[0] < 0.5:
            return 0.0, 0.0
        elapsed = now - oldest[0]
        newest = self._history[-1]
        return (newest[1] - oldest[1]) / elapsed, (newest[2] - oldest[2]) / elapsed
