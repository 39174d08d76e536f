"""The test that matters: every dashboard query and alert expression returns data from a real pipeline.

Real processes on ephemeral ports: Mosquitto (mutual TLS), the simulator (`python -m simulator`,
its real exporter), the rule runner (archive metrics), Prometheus scraping every second with the
rules the local stack ships, `for:` shortened via `render_rules(for_scale=...)`, and Alertmanager
(the process the local stack starts, its config from the same bundle) notifying a webhook receiver
that runs in this test process, its grouping intervals shortened the same way.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support_alerting import WebhookReceiver, add_silence, post_alert, wait_state, webhook_receiver

from factory_core.connection_plan import plan_connections
from factory_core.fleet import FaultSettings, FleetSettings, MachineType, ScheduledFault
from local_stack import alertmanager
from local_stack import prometheus as prom
from local_stack.certificate_authority import CertificateAuthority
from local_stack.dynamic_security import BrokerAccess
from local_stack.identities import RULE_RUNNER_IDENTITY
from local_stack.mosquitto import BrokerConfig, MosquittoProcess
from local_stack.ports import free_port, wait_for_port
from local_stack.processes import ManagedProcess, python_command
from observability.alert_rules import render_rules
from observability.alertmanager_config import Channels, Timing
from observability.config_bundle import (
    ALERTMANAGER_CONFIG_KEY,
    PROMETHEUS_CONFIG_KEY,
    RULES_KEY,
    local_bundle,
    write_bundle,
)
from observability.query_inventory import CheckedQuery, iter_queries

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
    pytest.mark.skipif(shutil.which(alertmanager.BINARY) is None, reason="needs prometheus-alertmanager"),
]

SCRAPE_INTERVAL_S = 1.0
# Overheating must fire within seconds: `for: 1m` becomes 1.2 s.
FOR_SCALE = 0.02
OVERHEATED = "site-00-line-02-cnc_mill-01"
# A failing coolant supply of this damage heats the mill past its alarm temperature (65 °C) without
# tripping it (75 °C): with the simulated start fixed (the hall's temperature follows the date) and
# no maintenance to end it, at speed 10 it crosses ~90 s after start and stays above for ~4 minutes,
# so the alert is still firing while the silence is tested (simulator/model/failure_modes.py).
OVERHEAT_SEVERITY = 0.65
START = "2026-01-01T00:00:00Z"
SPEED = 10.0
# Alertmanager's group_wait 30 s, group_interval 5 m, repeat_interval 4 h, shrunk like `for:`.
ALERT_TIMING = Timing(group_wait_s=0.2, group_interval_s=0.5, repeat_interval_s=1.0)
# Grafana's $__rate_interval is at least 4 scrape intervals; $__range is the dashboard's time range.
BUILTINS = {"__rate_interval": "10s", "__range": "1m", "__interval": "1s"}


@dataclass
class Pipeline:
    prometheus_port: int
    simulator: ManagedProcess
    rule_runner: ManagedProcess
    directory: Path
    alertmanager_url: str
    webhook: WebhookReceiver


def _fleet() -> FleetSettings:
    return FleetSettings(
        seed=42,
        speed=SPEED,
        faults=FaultSettings(
            maintenance="run_to_failure",
            scheduled=[
                ScheduledFault(
                    machine=OVERHEATED, fault="coolant_failure", at_s=0, severity=OVERHEAT_SEVERITY
                )
            ],
        ),
    )


def _start(process: ManagedProcess, port: int, what: str) -> None:
    process.start()
    if not wait_for_port(port, timeout_s=20):
        process.stop(5)
        raise AssertionError(f"{what} did not open port {port}: {process.log_tail(5)}")


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, webhook: WebhookReceiver) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("observability")
    ca = CertificateAuthority.create(root / "ca")
    server = ca.issue_server("broker", root / "broker")
    # One certificate per simulator connection (CN = client id), as the local stack issues them.
    devices = plan_connections(_fleet(), 0, "g1-").client_ids
    for client_id in devices:
        ca.issue_client(client_id, root / "devices")
    reader = ca.issue_client(RULE_RUNNER_IDENTITY, root / "devices")
    broker_port = free_port()
    broker = MosquittoProcess(
        BrokerConfig(port=broker_port, data_dir=root / "mosquitto", ca_file=ca.ca_cert_path,
                     cert_file=server.cert_path, key_file=server.key_path, crl_file=ca.crl_path,
                     access=BrokerAccess(devices=dict.fromkeys(devices, "site-00"))),
        root / "mosquitto.log",
    )
    config_file = root / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(_fleet().model_dump(mode="json")))
    simulator_port, archive_port, prometheus_port = free_port(), free_port(), free_port()
    alertmanager_port = free_port()
    tls = ["--endpoint", "127.0.0.1", "--port", str(broker_port), "--ca", str(ca.ca_cert_path)]
    simulator = ManagedProcess("simulator", python_command(
        "simulator", "--config", str(config_file), "--site-index", "0", "--engine", "fleet", "--start", START,
        "--metrics-port", str(simulator_port), *tls,
        "--cert-dir", str(root / "devices"), "--client-id-prefix", "g1-",
    ), root / "simulator.log", stop_timeout_s=30)
    rule_runner = ManagedProcess("rule-runner", python_command(
        "local_stack.rule_runner", *tls, "--cert", str(reader.cert_path), "--key", str(reader.key_path),
        "--archive", str(root / "archive"), "--metrics-port", str(archive_port), "--flush-interval", "0.5",
    ), root / "rule-runner.log", stop_timeout_s=30)

    bundle = local_bundle(
        simulator_targets={"site-00": f"127.0.0.1:{simulator_port}"},
        archive_targets={"rule-runner": f"127.0.0.1:{archive_port}"},
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        scrape_interval_s=SCRAPE_INTERVAL_S,
        grafana_dir=root / "grafana",
        alertmanager_url=alertmanager.url(alertmanager_port),
        alert_channels=Channels(webhook_url=webhook.url, timing=ALERT_TIMING),
    )
    # Test-only: the shipped rules with every `for:` scaled down, evaluated every scrape.
    bundle[RULES_KEY] = render_rules(target="local", for_scale=FOR_SCALE)
    write_bundle(bundle, root / "bundle")
    prometheus = ManagedProcess("prometheus", [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={root / 'bundle' / PROMETHEUS_CONFIG_KEY}",
        f"--storage.tsdb.path={root / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ], root / "prometheus.log", stop_timeout_s=20)
    alerts = alertmanager.process(
        root / "bundle" / ALERTMANAGER_CONFIG_KEY, root / "alertmanager-data", alertmanager_port,
        root / "alertmanager.log",
    )

    started: list[ManagedProcess] = []
    try:
        broker.start()
        for process, port in ((rule_runner, archive_port), (simulator, simulator_port),
                              (alerts, alertmanager_port), (prometheus, prometheus_port)):
            started.append(process)
            _start(process, port, process.name)
        yield Pipeline(prometheus_port, simulator, rule_runner, root, alertmanager.url(alertmanager_port),
                       webhook)
    finally:
        for process in reversed(started):
            process.stop()
        broker.stop()


def _scraped_enough(port: int) -> bool:
    """Every target up and scraped at least 8 times, and telemetry archived (lag is set)."""
    samples = prom.query(port, "min by (job) (count_over_time(up[1m]))")
    ups = prom.query(port, "up")
    archived = prom.query(port, "sum(archive_messages_archived_total)")
    return (
        {sample["metric"]["job"] for sample in samples} == {"simulator", "archive"}
        and all(float(sample["value"][1]) >= 8 for sample in samples)
        and all(float(sample["value"][1]) == 1 for sample in ups)
        and bool(archived) and float(archived[0]["value"][1]) > 0
    )


def _machines_by_type(port: int) -> dict[str, str]:
    result = prom.query(port, "group by (machine, type) (factory_machine_state)")
    machines: dict[str, str] = {}
    for sample in sorted(result, key=lambda s: s["metric"]["machine"]):
        machines.setdefault(sample["metric"]["type"], sample["metric"]["machine"])
    return machines


def _run(port: int, checked: CheckedQuery) -> str | None:
    """None if the query is fine, else why not."""
    try:
        document = prom.api_get(port, "/api/v1/query", {"query": checked.expr})
    except OSError as error:  # HTTP 400 for a bad expression
        body = getattr(error, "read", lambda: b"")().decode(errors="replace")
        return f"error {error}: {body}"
    if document.get("status") != "success":
        return f"error: {document.get('error')}"
    if checked.must_have_series and not document["data"]["result"]:
        return "no series"
    return None


def test_every_dashboard_query_and_alert_expression_returns_data(pipeline: Pipeline) -> None:
    port = pipeline.prometheus_port
    _wait_until(lambda: _scraped_enough(port), 60, "8 scrapes of every target and archived messages")
    machines = _machines_by_type(port)
    assert set(machines) == {t.value for t in MachineType}, machines

    failures: list[str] = []
    checked = 0
    for machine_type, machine in sorted(machines.items()):
        variables = {**BUILTINS, "site": "site-00", "machine": machine}
        for query in iter_queries(variables, target=None):
            if query.machine_types is None and machine_type != min(machines):
                continue  # not about one machine: checking it once is enough
            if query.machine_types is not None and machine_type not in query.machine_types:
                continue  # e.g. pressure on a conveyor: the panel says "Not measured"
            checked += 1
            problem = _run(port, query)
            if problem:
                failures.append(f"{query.source} [{machine}]: {problem}\n    {query.expr}")
    # The "All" value of the multi-value $site variable, as Grafana sends it.
    for query in iter_queries({**BUILTINS, "site": ".*", "machine": machines["cnc_mill"]}, target=None):
        if query.machine_types is not None and "cnc_mill" not in query.machine_types:
            continue
        checked += 1
        problem = _run(port, query)
        if problem:
            failures.append(f"{query.source} [site=All]: {problem}\n    {query.expr}")
    assert not failures, f"{len(failures)} of {checked} queries failed:\n" + "\n".join(failures)
    assert pipeline.simulator.running() and pipeline.rule_runner.running()


def test_overheating_fault_fires_the_overheating_alert(pipeline: Pipeline) -> None:
    port = pipeline.prometheus_port
    selector = f'alertname="MachineOverheating", machine="{OVERHEATED}"'

    def firing() -> bool:
        """Firing now in /api/v1/alerts, or, if the other test ran long and it has cleared since,
        firing earlier: Prometheus writes every firing alert into its ALERTS series."""
        alerts = prom.api_get(port, "/api/v1/alerts")["data"]["alerts"]
        if any(alert["labels"].get("alertname") == "MachineOverheating"
               and alert["labels"].get("machine") == OVERHEATED and alert["state"] == "firing"
               for alert in alerts):
            return True
        return bool(prom.query(port, f'max_over_time(ALERTS{{{selector}, alertstate="firing"}}[10m])'))

    _wait_until(firing, 150, f"MachineOverheating firing for {OVERHEATED}")
    # Only the machine with the injected fault overheated.
    every_firing = 'max_over_time(ALERTS{alertname="MachineOverheating", alertstate="firing"}[10m])'
    fired = prom.query(port, every_firing)
    assert {sample["metric"]["machine"] for sample in fired} == {OVERHEATED}
    assert {sample["metric"]["severity"] for sample in fired} == {"critical"}


def test_the_alert_reaches_the_webhook_and_a_silence_holds_back_the_next_notifications(
    pipeline: Pipeline,
) -> None:
    """Prometheus → Alertmanager → webhook, routed as critical; then a silence added through
    Alertmanager's API stops the repeats while the alert keeps firing."""
    url, webhook = pipeline.alertmanager_url, pipeline.webhook
    first = webhook.wait_for(120, "the overheating", alertname="MachineOverheating", machine=OVERHEATED)
    assert first.receiver == "iotfactory-critical"
    assert first.group_labels == {"alertname": "MachineOverheating", "site": "site-00"}
    webhook.wait_for_count(2, 10, machine=OVERHEATED)  # repeated while it fires (repeat_interval 1 s)

    silence = add_silence(url, {"alertname": "MachineOverheating", "machine": OVERHEATED})
    wait_state(url, lambda states: bool(states) and all(silence in s["silencedBy"] for s in states),
               "the silence", machine=OVERHEATED)
    # A canary group on the same schedule shows when the silenced group would have been repeated.
    canary = {"alertname": "WebhookCanary", "severity": "warning", "site": "site-99"}
    post_alert(url, canary)
    webhook.wait_for(10, "the canary", alertname="WebhookCanary")  # and anything sent before the silence
    before = len(webhook.matching(machine=OVERHEATED))
    canaries = len(webhook.matching(alertname="WebhookCanary"))
    webhook.wait_for_count(canaries + 3, 15, alertname="WebhookCanary")
    assert len(webhook.matching(machine=OVERHEATED)) == before
    # Still firing: it was the silence that held the notifications back, not the alert resolving.
    wait_state(url, lambda states: any(s["state"] == "suppressed" for s in states), "suppressed",
               machine=OVERHEATED)
