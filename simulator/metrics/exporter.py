"""Prometheus exporter of one simulator process: machine signals, per-line aggregates, transport health.

Everything is read at scrape time by custom collectors (from `SiteModel.view()` and the
publisher's counters) instead of updating client-library metrics per sample: a scrape every 15 s
costs less than 10k gauge updates per second. Names, labels and units come from the catalog.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from factory_core import metric_catalog as catalog
from factory_core.errors import UsageError
from factory_core.fleet import FAILURE_MODES, SENSOR_FAULTS, MachineType
from simulator.metrics.accumulators import BucketCounts
from simulator.transport.publisher import KINDS, OVERSIZE_REASON, TransportSnapshot

# A machine reports the faults it can have: its type's failure modes and every sensor fault.
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    machine_type.value: (*FAILURE_MODES[machine_type], *SENSOR_FAULTS) for machine_type in MachineType
}
FAILURE_REASONS = ("queue_full", "publish_error", "connect_error", "shutdown", OVERSIZE_REASON)
_SIGNAL_METRICS = tuple(m for m in catalog.MACHINE_SIGNALS if m.signal is not None)
_HEALTH = catalog.by_name("factory_machine_health_ratio")
_TEMPERATURE = catalog.by_name("factory_machine_temperature_celsius")
_VIBRATION = catalog.by_name("factory_machine_vibration_rms_meters_per_second")
# Upper bound of series one machine can export: signals + health, state one-hot, three part/cycle
# series, seconds per state, one gauge per fault kind.
SERIES_PER_MACHINE = (
    len(catalog.MACHINE_SIGNALS)
    + 2 * len(catalog.MACHINE_STATES)
    + 3
    + max(len(kinds) for kinds in FAULT_KINDS.values())
)


@dataclass(frozen=True)
class RuntimeProbe:
    """What the exporter reads from the running process."""

    site: str
    view: Callable[[int], Any]  # SiteModel.view, called under the model lock
    machine_count: int
    model_lock: threading.Lock
    ready: Callable[[], bool]  # False until the model exists (while connecting)
    transport: Callable[[], TransportSnapshot | None]
    scheduler_lag: Callable[[], BucketCounts]
    simulated_time_s: Callable[[], float]


def _base(value: float, metric: catalog.MetricDef) -> float:
    """Payload unit → Prometheus base unit (display_scale converts the other way)."""
    return value / metric.display_scale


def _gauge(metric: catalog.MetricDef) -> GaugeMetricFamily:
    return GaugeMetricFamily(metric.name, metric.help, labels=list(metric.labels))


def _counter(metric: catalog.MetricDef) -> CounterMetricFamily:
    return CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))


def _histogram(metric: catalog.MetricDef, counts: BucketCounts, labels: list[str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    family.add_metric(labels, counts.cumulative(), counts.total)
    return family


class MachineCollector(Collector):
    def __init__(self, probe: RuntimeProbe, per_machine: bool) -> None:
        self.probe = probe
        self.per_machine = per_machine

    def collect(self) -> Iterator[Metric]:
        probe = self.probe
        signals = {m.name: _gauge(m) for m in catalog.MACHINE_SIGNALS}
        state = _gauge(catalog.MACHINE_STATE)
        good, rejected = _counter(catalog.PARTS_GOOD), _counter(catalog.PARTS_REJECTED)
        ideal = _gauge(catalog.IDEAL_CYCLE_TIME)
        state_seconds = _counter(catalog.STATE_SECONDS)
        faults = _gauge(catalog.ACTIVE_FAULTS)
        # (line, type) -> aggregates
        line_states: dict[tuple[str, str], dict[str, int]] = {}
        line_good: dict[tuple[str, str], int] = {}
        line_rejected: dict[tuple[str, str], int] = {}
        line_temp: dict[tuple[str, str], float] = {}
        line_vib: dict[tuple[str, str], float] = {}
        for index in range(probe.machine_count if probe.ready() else 0):
            with probe.model_lock:
                view = probe.view(index)
            spec = view.spec
            machine_type = spec.type.value
            key = (spec.line, machine_type)
            counts = line_states.setdefault(key, dict.fromkeys(catalog.MACHINE_STATES, 0))
            counts[view.state] = counts.get(view.state, 0) + 1
            line_good[key] = line_good.get(key, 0) + view.parts_good
            line_rejected[key] = line_rejected.get(key, 0) + view.parts_rejected
            temperature = view.signals.get(_TEMPERATURE.signal)
            if temperature is not None:
                line_temp[key] = max(line_temp.get(key, float("-inf")), _base(temperature, _TEMPERATURE))
            vibration = view.signals.get(_VIBRATION.signal)
            if vibration is not None:
                line_vib[key] = max(line_vib.get(key, float("-inf")), _base(vibration, _VIBRATION))
            if not self.per_machine:
                continue
            labels = [spec.site, spec.line, spec.machine_id, machine_type]
            for metric in _SIGNAL_METRICS:
                value = view.signals.get(metric.signal)
                if value is not None:  # a dropout is an absent sample, not a zero
                    signals[metric.name].add_metric(labels, _base(value, metric))
            signals[_HEALTH.name].add_metric(labels, view.health)
            for name in catalog.MACHINE_STATES:
                state.add_metric([*labels, name], 1.0 if view.state == name else 0.0)
                state_seconds.add_metric([*labels, name], view.state_seconds.get(name, 0.0))
            good.add_metric(labels, view.parts_good)
            rejected.add_metric(labels, view.parts_rejected)
            if view.ideal_cycle_time_s > 0:
                ideal.add_metric(labels, view.ideal_cycle_time_s)
            for fault in FAULT_KINDS[machine_type]:
                faults.add_metric([*labels, fault], 1.0 if fault in view.active_faults else 0.0)
        if self.per_machine:
            yield from signals.values()
            yield from (state, good, rejected, ideal, state_seconds, faults)
        machines = _gauge(catalog.LINE_MACHINES)
        parts_good, parts_rejected = _counter(catalog.LINE_PARTS_GOOD), _counter(catalog.LINE_PARTS_REJECTED)
        temp_max, vib_max = _gauge(catalog.LINE_TEMPERATURE_MAX), _gauge(catalog.LINE_VIBRATION_MAX)
        for (line, machine_type), counts in sorted(line_states.items()):
            labels = [probe.site, line, machine_type]
            for name, count in counts.items():
                machines.add_metric([*labels, name], count)
            parts_good.add_metric(labels, line_good[(line, machine_type)])
            parts_rejected.add_metric(labels, line_rejected[(line, machine_type)])
            if (line, machine_type) in line_temp:
                temp_max.add_metric(labels, line_temp[(line, machine_type)])
            if (line, machine_type) in line_vib:
                vib_max.add_metric(labels, line_vib[(line, machine_type)])
        yield from (machines, parts_good, parts_rejected, temp_max, vib_max)


class TransportCollector(Collector):
    def __init__(self, probe: RuntimeProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        probe = self.probe
        site = [probe.site]
        snapshot = probe.transport()
        published = _counter(catalog.MESSAGES_PUBLISHED)
        failures = _counter(catalog.PUBLISH_FAILURES)
        reasons = dict.fromkeys(FAILURE_REASONS, 0)
        if snapshot is not None:
            reasons.update(snapshot.failures)
        for kind in KINDS:
            published.add_metric([*site, kind], snapshot.published.get(kind, 0) if snapshot else 0)
        for reason, count in sorted(reasons.items()):
            failures.add_metric([*site, reason], count)
        yield published
        yield failures
        puback = snapshot.puback if snapshot else BucketCounts(catalog.PUBACK_BUCKETS)
        yield _histogram(catalog.PUBACK_LATENCY, puback, site)
        for metric, value in (
            (catalog.CONNECTIONS_UP, snapshot.connections_up if snapshot else 0),
            (catalog.CONNECTIONS_PLANNED, snapshot.connections_planned if snapshot else 0),
            (catalog.INFLIGHT, snapshot.inflight if snapshot else 0),
            (catalog.QUEUED, snapshot.queued if snapshot else 0),
            (catalog.MACHINES_SIMULATED, probe.machine_count),
            (catalog.SIMULATED_TIME, probe.simulated_time_s()),
            (catalog.FASTPATH_ENABLED, int(snapshot.fastpath_enabled) if snapshot else 0),
        ):
            family = _gauge(metric)
            family.add_metric(site, value)
            yield family
        reconnects = _counter(catalog.RECONNECTS)
        reconnects.add_metric(site, snapshot.reconnects if snapshot else 0)
        yield reconnects
        yield _histogram(catalog.SCHEDULER_LAG, probe.scheduler_lag(), site)


def machine_series(machine_count: int) -> int:
    return machine_count * SERIES_PER_MACHINE


class SimulatorExporter:
    """The registry of one process and, optionally, the HTTP server that serves it."""

    def __init__(
        self, probe: RuntimeProbe, max_machine_series: int, warn: Callable[[str], None] | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        series = machine_series(probe.machine_count)
        self.per_machine = series <= max_machine_series
        if not self.per_machine:
            (warn or _stderr)(
                f"warning: {probe.machine_count} machines would export {series} per-machine series,"
                f" over max_machine_series={max_machine_series}: exporting per-line aggregates only;"
                " raise max_machine_series to keep per-machine series"
            )
        self.registry.register(MachineCollector(probe, self.per_machine))
        self.registry.register(TransportCollector(probe))
        self._server: Any = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def write_final(self, path: Path) -> None:
        """The last exposition, to a file (replaced atomically): the counts a scrape would miss."""
        write_to_textfile(str(path), self.registry)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; returns the bound port. A taken port is a usage error."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise UsageError(
                f"metrics port {host}:{port} is not available ({error.strerror}); pass --metrics-port"
                " (FACTORY_METRICS_PORT) with a free port, or 0 to turn the exporter off"
            ) from None
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
