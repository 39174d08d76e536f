"""What the local stack is doing, read from its exporters, shown with rich: rates, lag, errors, services."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

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


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def pipeline_line(pipeline: Mapping[str, Any], simulators: Mapping[str, Any]) -> Text:
    lag = pipeline.get("lag_s")
    errors = pipeline.get("publish_failures_total", 0) + pipeline.get("quarantined_total", 0)
    text = Text()
    text.append(f"simulators {simulators.get('up', 0)}/{simulators.get('desired', 0)} up", style="bold")
    text.append(f"   published {_rate(pipeline.get('published_per_s', 0.0))} msg/s")
    text.append(f"   archived {_rate(pipeline.get('archived_per_s', 0.0))} msg/s")
    text.append(f"   lag {max(0.0, lag):.1f} s" if lag is not None else "   lag -")
    text.append(
        f"   errors {errors:,.0f}",
        style="red" if errors else None,
    )
    text.append(
        f"   (total: {pipeline.get('published_total', 0):,.0f} published,"
        f" {pipeline.get('archived_total', 0):,.0f} archived,"
        f" {pipeline.get('quarantined_total', 0):,.0f} quarantined)",
        style="dim",
    )
    return text


def services_table(services: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("service", "state", "pid", "port", "restarts", "certificate"):
        table.add_column(column)
    for service in services:
        state = str(service.get("state", "?"))
        style = "green" if state == "running" else ("yellow" if state in ("starting", "stopping") else "red")
        table.add_row(
            str(service["name"]),
            Text(state, style=style),
            str(service.get("pid") or "-"),
            str(service.get("port") or "-"),
            str(service.get("restarts", 0)),
            str(service.get("generation") or "-"),
        )
    return table


def status_renderable(status: Mapping[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [pipeline_line(status.get("pipeline", {}), status.get("simulators", {}))]
    rotation = status.get("rotation")
    if rotation:
        parts.append(
            Text(
                f"certificate rotation {rotation['from']} -> {rotation['to']} at step {rotation['step']}",
                style="yellow",
            )
        )
    parts.append(services_table(status.get("services", [])))
    events = list(status.get("events", []))[-5:]
    if events:
        parts.append(Text("recent: " + " | ".join(events), style="dim"))
    return Group(*parts)


def where_table(outputs: Mapping[str, Any]) -> Table:
    """The block `up` prints and `outputs` shows: where every piece of the stack is."""
    rows = [
        ("Broker (MQTT over mTLS)", outputs.get("brokerUrl")),
        ("CA certificate", outputs.get("caCertificate")),
        ("Prometheus", outputs.get("prometheusUrl")),
        ("Grafana", outputs.get("grafanaUrl") or outputs.get("grafanaSkipped") or "-"),
        ("Archive", outputs.get("archive")),
        ("Logs", outputs.get("logsDir")),
        ("State", outputs.get("stateDir")),
        ("Config", outputs.get("configFile")),
        (
            "Simulators",
            f"{outputs.get('simulatorCount')} "
            f"(certificate generation {outputs.get('certificateGeneration')})",
        ),
    ]
    if outputs.get("grafanaUrl") and outputs.get("grafanaPasswordFile"):
        rows.insert(4, ("Grafana login", f"admin / password in {outputs['grafanaPasswordFile']}"))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, str(value) if value is not None else "-")
    return table
