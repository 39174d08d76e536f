"""The exporter: catalog names only, base units, the series cap, and `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import Broker
from prometheus_client.parser import text_string_to_metric_families
from test_transport_broker import start_simulator

from factory_core import metric_catalog as catalog
from factory_core.fleet import FleetSettings
from local_stack.ports import free_port
from simulator.metrics.accumulators import BucketCounts
from simulator.metrics.exporter import SERIES_PER_MACHINE, RuntimeProbe, SimulatorExporter
from simulator.model.site import SiteModel
from simulator.transport.publisher import ConnectionStats, merge_stats

PROJECT = Path(__file__).resolve().parent.parent


def exporter_for(fleet: FleetSettings, samples: int = 50, warnings: list[str] | None = None):
    model = SiteModel(fleet, 0, 1_767_225_600_000)
    for _ in range(samples):
        for index in range(len(model.machines)):
            model.sample(index)
    stats = ConnectionStats()
    stats.published["telemetry"] = 40
    stats.puback.observe(0.002)
    stats.fail("queue_full", 3)
    lag = BucketCounts(catalog.LAG_BUCKETS)
    lag.observe(0.004)
    probe = RuntimeProbe(
        site="site-00",
        view=model.view,
        machine_count=len(model.machines),
        model_lock=threading.Lock(),
        ready=lambda: True,
        transport=lambda: merge_stats([stats], planned=2, up=2, inflight=1, queued=5),
        scheduler_lag=lambda: lag,
        simulated_time_s=lambda: 50.0,
    )
    collected: list[str] = [] if warnings is None else warnings
    return model, SimulatorExporter(probe, fleet.max_machine_series, warn=collected.append)


def families(exposition: bytes) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(exposition.decode())}


def promtool_check(exposition: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()


def test_exposition_passes_promtool_and_uses_only_catalog_names() -> None:
    _, exporter = exporter_for(FleetSettings(seed=5))
    exposition = exporter.exposition()
    promtool_check(exposition)
    known = {m.name.removesuffix("_total") for m in catalog.SIMULATOR_METRICS}
    exported = set(families(exposition))
    assert exported <= known, exported - known
    for metric in (*catalog.MACHINE_METRICS, *catalog.LINE_METRICS, *catalog.TRANSPORT_METRICS):
        assert metric.name.removesuffix("_total") in exported, metric.name


def test_signals_are_exported_in_base_units() -> None:
    model, exporter = exporter_for(FleetSettings(seed=9, lines_per_site=1, machines_per_line={"cnc_mill": 1}))
    view = model.view(0)
    parsed = families(exporter.exposition())
    for metric in catalog.MACHINE_SIGNALS:
        if metric.signal is None or view.signals.get(metric.signal) is None:
            continue
        (sample,) = parsed[metric.name].samples
        assert sample.labels == {
            "site": "site-00",
            "line": "line-01",
            "machine": view.spec.machine_id,
            "type": "cnc_mill",
        }
        assert sample.value == pytest.approx(view.signals[metric.signal] / metric.display_scale)
    states = {s.labels["state"]: s.value for s in parsed[catalog.MACHINE_STATE.name].samples}
    assert states[view.state] == 1 and sum(states.values()) == 1
    parts = parsed[catalog.PARTS_GOOD.name.removesuffix("_total")].samples[0]
    assert parts.value == view.parts_good


def test_series_cap_keeps_only_line_aggregates_and_warns_once() -> None:
    warnings: list[str] = []
    fleet = FleetSettings(seed=1, lines_per_site=2, machines_per_line={"conveyor": 3}, max_machine_series=10)
    _, exporter = exporter_for(fleet, samples=5, warnings=warnings)
    exposition = exporter.exposition()
    promtool_check(exposition)
    parsed = families(exposition)
    assert not any(name.startswith("factory_machine_") for name in parsed)
    machines = parsed[catalog.LINE_MACHINES.name].samples
    assert sum(s.value for s in machines) == 6
    assert {s.labels["line"] for s in machines} == {"line-01", "line-02"}
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(6 * SERIES_PER_MACHINE) in warnings[0] and "max_machine_series" in warnings[0]


def test_under_the_cap_every_machine_has_its_series() -> None:
    fleet = FleetSettings(seed=1, lines_per_site=1, machines_per_line={"conveyor": 2})
    fleet = fleet.model_copy(update={"max_machine_series": 2 * SERIES_PER_MACHINE})
    _, exporter = exporter_for(fleet, samples=5)
    machines = {
        s.labels["machine"] for s in families(exporter.exposition())[catalog.MACHINE_STATE.name].samples
    }
    assert len(machines) == 2


def test_transport_metrics_report_the_publisher() -> None:
    _, exporter = exporter_for(FleetSettings(seed=2))
    parsed = families(exporter.exposition())
    published = {s.labels["kind"]: s.value for s in parsed["simulator_messages_published"].samples}
    assert published == {"telemetry": 40, "ground_truth": 0}
    failures = {s.labels["reason"]: s.value for s in parsed["simulator_publish_failures"].samples}
    assert failures["queue_full"] == 3
    assert parsed["simulator_connections_up"].samples[0].value == 2
    assert parsed["simulator_queued_messages"].samples[0].value == 5
    counts = [s for s in parsed["simulator_puback_latency_seconds"].samples if s.name.endswith("_count")]
    assert counts[0].value == 1


@pytest.mark.integration
def test_live_simulator_exposition_passes_promtool(broker: Broker) -> None:
    port = free_port()
    process = start_simulator(
        broker, "fleet", "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
        "--publish-interval", "0.05", "--speed", "20",
    )
    try:
        body = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read()
            except OSError:
                time.sleep(0.2)
                continue
            published = families(body).get("simulator_messages_published")
            if published is not None and sum(s.value for s in published.samples) > 50:
                break
            time.sleep(0.2)
        promtool_check(body)
        parsed = families(body)
        assert parsed["simulator_connections_up"].samples[0].value >= 1
        assert parsed["simulator_machines"].samples[0].value == 10
        assert parsed["factory_machine_temperature_celsius"].samples
        assert sum(s.value for s in parsed["simulator_messages_published"].samples) > 50
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=35)
    assert process.returncode == 0, stderr
