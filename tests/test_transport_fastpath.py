"""The fleet engine's fast path: its self-test notices changed paho internals, and the fallback delivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker, Pki
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families
from test_transport_broker import Subscriber, assert_no_gaps, finish, summary_counts

from factory_core import metric_catalog as catalog
from factory_core.connection_plan import ConnectionPlan
from local_stack.ports import free_port
from simulator.transport import paho_fastpath
from simulator.transport.fleet_engine import FleetPublisher
from simulator.transport.publisher import TransportOptions

PROJECT = Path(__file__).resolve().parent.parent
FASTPATH_WARNING = "is not what the fleet engine's fast path was verified on"


def test_the_installed_paho_passes_and_is_the_pinned_minor() -> None:
    assert paho_fastpath.self_test() is None
    lines: list[str] = []
    assert paho_fastpath.fastpath_enabled(lines.append) and lines == []
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    (pin,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "paho-mqtt"]
    assert version("paho-mqtt") in pin.specifier
    # A pin to one minor version: the next minor release is outside it.
    major, minor = (int(part) for part in version("paho-mqtt").split(".")[:2])
    assert f"{major}.{minor + 1}.0" not in pin.specifier


def _send_publish_with_dup(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(self: mqtt.Client, mid: int, topic: bytes, payload: bytes = b"", qos: int = 0, **kw: Any) -> Any:
        return original(self, mid, topic, payload, qos, dup=True)

    return send


def _without_in_packet(original: Callable[..., None]) -> Callable[..., None]:
    def init(self: mqtt.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._in_packet_v3 = self.__dict__.pop("_in_packet")  # type: ignore[attr-defined]

    return init


CHANGES: dict[str, tuple[str, Callable[[pytest.MonkeyPatch], None]]] = {
    "PUBACK handler renamed": (
        "_handle_pubackcomp is missing",
        lambda mp: mp.delattr(mqtt.Client, "_handle_pubackcomp"),
    ),
    "incoming packet state renamed": (
        "_in_packet",
        lambda mp: mp.setattr(mqtt.Client, "__init__", _without_in_packet(mqtt.Client.__init__)),
    ),
    "keep-alive on another clock": (
        "time.monotonic",
        lambda mp: mp.setattr(mqtt, "time_func", time.time),
    ),
    "PUBLISH framed differently": (
        "PUBLISH framing differs",
        lambda mp: mp.setattr(
            mqtt.Client, "_send_publish", _send_publish_with_dup(mqtt.Client._send_publish)
        ),
    ),
    "PUBACKs no longer dispatched to the handler": (
        "did not reach the installed handler",
        lambda mp: mp.setattr(
            mqtt.Client, "_packet_handle", lambda self: mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        ),
    ),
    "packets written around the socket": (
        "did not go through the installed socket",
        lambda mp: mp.setattr(mqtt.Client, "_sock_send", lambda self, buf: len(buf)),
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_self_test_notices_changed_internals(monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    expected, apply = CHANGES[change]
    apply(monkeypatch)
    problem = paho_fastpath.self_test()
    assert problem is not None and expected in problem, problem
    lines: list[str] = []
    assert not paho_fastpath.fastpath_enabled(lines.append)
    assert len(lines) == 1 and FASTPATH_WARNING in lines[0] and expected in lines[0], lines


@pytest.mark.parametrize("passes", [True, False])
def test_the_engine_reports_what_its_self_test_decided(
    monkeypatch: pytest.MonkeyPatch, pki: Pki, passes: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    if not passes:
        monkeypatch.setattr(paho_fastpath, "self_test", lambda: "forced by the test")
    plan = ConnectionPlan("site-00", 1, 1.0, ("test-c00",), 20, 80)
    options = TransportOptions(
        "127.0.0.1", 1, pki.ca.ca_cert_path, pki.device.cert_path, pki.device.key_path
    )
    publisher = FleetPublisher(plan, options)  # not started: nothing connects
    try:
        assert publisher.snapshot().fastpath_enabled is passes
    finally:
        publisher.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if FASTPATH_WARNING in line]
    assert len(warnings) == (0 if passes else 1)


# The simulator with its self-test failing, exactly as `python -m simulator`.
_FASTPATH_OFF = (
    "import sys\n"
    "from simulator.transport import paho_fastpath\n"
    "paho_fastpath.self_test = lambda: 'forced off by the test'\n"
    "from simulator.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _start(
    broker: Broker, *extra: str, fastpath: bool, qos: int, metrics_port: int = 0
) -> subprocess.Popen[str]:
    pki = broker.pki
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    entry = ["-m", "simulator"] if fastpath else ["-c", _FASTPATH_OFF]
    return subprocess.Popen(
        [sys.executable, *entry, "--engine", "fleet", "--qos", str(qos),
         "--endpoint", broker.host, "--port", str(broker.port), "--ca", str(pki.ca.ca_cert_path),
         "--cert-dir", str(broker.device_dir(0)), "--client-id-prefix", "g1-",
         "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port),
         "--lines", "1", "--machines", "cnc_mill=3,conveyor=2", "--publish-interval", "0.02", *extra],
        cwd=PROJECT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _scrape_until_published(port: int, count: int, timeout_s: float = 30) -> dict[str, float]:
    """Gauges and counters of the live exporter once it reports `count` published messages."""
    deadline = time.monotonic() + timeout_s
    values: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                body = response.read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
            if not sample.labels.get("kind") and not sample.labels.get("reason")
        }
        published = sum(
            sample.value
            for family in text_string_to_metric_families(body)
            if family.name == catalog.MESSAGES_PUBLISHED.name.removesuffix("_total")
            for sample in family.samples
        )
        if published >= count:
            return values
        time.sleep(0.2)
    pytest.fail(f"the simulator did not publish {count} messages within {timeout_s} s: {values}")


@pytest.mark.integration
@pytest.mark.parametrize(("fastpath", "qos"), [(False, 1), (False, 0), (True, 1)])
def test_the_simulator_delivers_everything_with_and_without_the_fast_path(
    broker: Broker, fastpath: bool, qos: int
) -> None:
    subscriber = Subscriber(broker)
    port = free_port()
    process = _start(broker, fastpath=fastpath, qos=qos, metrics_port=port)
    try:
        values = _scrape_until_published(port, 300)
        assert values[catalog.FASTPATH_ENABLED.name] == (1 if fastpath else 0)
        process.send_signal(signal.SIGTERM)
        code, stderr = finish(process, timeout_s=35)
        assert code == 0, stderr
        warnings = [line for line in stderr.splitlines() if FASTPATH_WARNING in line]
        assert warnings == ([] if fastpath else [warnings[0]]) and (fastpath or "forced off" in warnings[0])
        generated, published, unsent = summary_counts(stderr)
        assert unsent == 0 and published == generated
        assert subscriber.wait_for(generated, 20) == generated
        assert_no_gaps(subscriber)
        assert not subscriber.invalid
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        subscriber.close()


@pytest.mark.integration
def test_without_the_fast_path_a_broker_restart_loses_nothing(broker: Broker) -> None:
    subscriber = Subscriber(broker, persistent=True)
    process = _start(broker, "--duration", "8", fastpath=False, qos=1)
    try:
        assert subscriber.wait_for(200, 30) >= 200, "nothing arrived before the restart"
        assert process.poll() is None
        broker.process.stop()  # SIGTERM: mosquitto saves the subscriber's session
        broker.process.start()
        code, stderr = finish(process)
        assert code == 0, stderr
        generated, published, unsent = summary_counts(stderr)
        assert unsent == 0 and published >= generated
        assert subscriber.wait_for(generated, 30) == generated
        assert_no_gaps(subscriber)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        subscriber.close()
