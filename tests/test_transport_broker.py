"""Both engines against a real mutual-TLS Mosquitto: delivery, refusals, broker restart, SIGTERM drain."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker

from factory_core.fleet import GROUND_TRUTH_SEGMENT, TOPIC_ROOT
from factory_core.payload_contract import validate_payload

PROJECT = Path(__file__).resolve().parent.parent
ENGINES = ["fleet", "sdk"]
pytestmark = pytest.mark.integration


class Subscriber:
    """The rule runner's identity reading factory/simulator/#, validating every payload."""

    def __init__(self, broker: Broker, *, persistent: bool = False) -> None:
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        context = ssl.create_default_context(cafile=str(broker.pki.ca.ca_cert_path))
        context.load_cert_chain(str(broker.pki.reader.cert_path), str(broker.pki.reader.key_path))
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(0.2, 1)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, dict]] = []
        self.invalid: list[str] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber did not subscribe"

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        if not reason.is_failure:
            client.subscribe(f"{TOPIC_ROOT}/#", qos=1)

    def _on_message(self, client, userdata, message) -> None:
        try:
            document = validate_payload(message.payload)
        except ValueError as error:
            self.invalid.append(f"{message.topic}: {error}")
            return
        with self.lock:
            self.messages.append((message.topic, document))

    def distinct(self) -> set[tuple[str, int]]:
        with self.lock:
            return {(topic, doc["seq"]) for topic, doc in self.messages}

    def wait_for(self, count: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.distinct()) >= count:
                break
            time.sleep(0.1)
        return len(self.distinct())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_simulator(broker: Broker, engine: str, *args: str) -> subprocess.Popen[str]:
    """The simulator with a certificate per connection, as the local stack runs it (the broker
    takes a certificate's CN as its client id, so connections sharing one would close each other)."""
    pki = broker.pki
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--engine",
            engine,
            "--endpoint",
            broker.host,
            "--port",
            str(broker.port),
            "--ca",
            str(pki.ca.ca_cert_path),
            "--cert-dir",
            str(broker.device_dir(0, connections=64)),
            "--client-id-prefix",
            "g1-",
            "--metrics-port",
            "0",
            *args,
        ],
        cwd=PROJECT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 90) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Traceback" not in stderr, stderr
    return process.returncode, stderr


def summary_counts(stderr: str) -> tuple[int, int, int]:
    """(generated, published, unsent at exit) from the simulator's final line."""
    match = re.search(r"generated (\d+) messages .* published (\d+) .* unsent at exit (\d+)", stderr)
    assert match, stderr
    return int(match[1]), int(match[2]), int(match[3])


def assert_no_gaps(subscriber: Subscriber) -> dict[str, list[int]]:
    seqs: dict[str, set[int]] = defaultdict(set)
    with subscriber.lock:
        for topic, document in subscriber.messages:
            seqs[topic].add(document["seq"])
    for topic, numbers in seqs.items():
        assert numbers == set(range(1, max(numbers) + 1)), f"gap in {topic}: {sorted(numbers)[:20]}..."
    return {topic: sorted(numbers) for topic, numbers in seqs.items()}


@pytest.mark.parametrize("engine", ENGINES)
def test_telemetry_arrives_on_the_right_topics_without_gaps(broker: Broker, engine: str) -> None:
    subscriber = Subscriber(broker)
    try:
        process = start_simulator(
            broker,
            engine,
            "--lines",
            "2",
            "--machines",
            "cnc_mill=2,hydraulic_press=1,conveyor=1,air_compressor=1",
            "--publish-interval",
            "0.02",
            "--speed",
            "50",
            "--duration",
            "150",
        )
        code, stderr = finish(process)
        assert code == 0, stderr
        generated, published, unsent = summary_counts(stderr)
        assert generated == published and unsent == 0
        assert subscriber.wait_for(generated, 15) == generated
        assert not subscriber.invalid, subscriber.invalid[:3]
        with subscriber.lock:
            for topic, document in subscriber.messages:
                parts = topic.split("/")
                if "event" in document:
                    assert parts[:3] == [*TOPIC_ROOT.split("/"), GROUND_TRUTH_SEGMENT]
                    parts = [*TOPIC_ROOT.split("/"), *parts[3:]]
                assert parts == [
                    *TOPIC_ROOT.split("/"),
                    document["site"],
                    document["line"],
                    document["machine"],
                ]
                assert document["site"] == "site-00"
        telemetry = {t: s for t, s in assert_no_gaps(subscriber).items() if GROUND_TRUTH_SEGMENT not in t}
        assert len(telemetry) == 10
        assert all(len(numbers) >= 100 for numbers in telemetry.values())
        # 10 machines every 0.02 s = 500 msg/s: 7 connections keep each under 80 msg/s.
        assert "plan: site-00: 10 machines, 500 msg/s" in stderr and "connected 7/7" in stderr
    finally:
        subscriber.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_many_connections_each_with_its_own_client_id(broker: Broker, engine: str) -> None:
    subscriber = Subscriber(broker)
    try:
        process = start_simulator(
            broker,
            engine,
            "--lines",
            "4",
            "--machines",
            "conveyor=5",
            "--publish-interval",
            "0.25",
            "--connections",
            "4",
            "--duration",
            "3",
        )
        code, stderr = finish(process)
        assert code == 0, stderr
        generated, _, _ = summary_counts(stderr)
        assert subscriber.wait_for(generated, 15) == generated
        assert_no_gaps(subscriber)
        log = broker.process.log_path.read_text()
        for index in range(4):
            assert f"as g1-site-00-c{index:02d} (" in log
    finally:
        subscriber.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_broker_restart_loses_nothing_for_a_persistent_subscriber(broker: Broker, engine: str) -> None:
    subscriber = Subscriber(broker, persistent=True)
    try:
        process = start_simulator(
            broker,
            engine,
            "--lines",
            "1",
            "--machines",
            "cnc_mill=3,conveyor=2",
            "--publish-interval",
            "0.02",
            "--duration",
            "9",
        )
        time.sleep(3)
        broker.process.stop()  # SIGTERM: mosquitto saves its persistence database
        time.sleep(2)
        broker.process.start()
        code, stderr = finish(process)
        assert code == 0, stderr
        generated, published, unsent = summary_counts(stderr)
        assert unsent == 0 and published >= generated
        assert "queue_full" not in stderr
        assert subscriber.wait_for(generated, 30) == generated
        telemetry = {t: s for t, s in assert_no_gaps(subscriber).items() if GROUND_TRUTH_SEGMENT not in t}
        assert len(telemetry) == 5
        assert not subscriber.invalid
    finally:
        subscriber.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_sigterm_drains_what_was_generated_and_exits_0(broker: Broker, engine: str) -> None:
    subscriber = Subscriber(broker)
    try:
        process = start_simulator(
            broker,
            engine,
            "--lines",
            "2",
            "--machines",
            "cnc_mill=10,conveyor=10",
            "--publish-interval",
            "0.01",
        )
        time.sleep(4)
        assert process.poll() is None
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code, stderr = finish(process, timeout_s=35)
        assert time.monotonic() - sent_at < 30
        assert code == 0, stderr
        generated, published, unsent = summary_counts(stderr)
        assert unsent == 0 and published == generated and generated > 1000
        assert subscriber.wait_for(generated, 20) == generated
        assert_no_gaps(subscriber)
    finally:
        subscriber.close()


def test_client_without_certificate_is_refused(broker: Broker) -> None:
    """paho (the library under both engines) without a client certificate never gets a CONNACK.

    The simulator itself cannot be started without one (see test_simulator_cli), and the SDK
    refuses to open a connection without key and certificate files at all.
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="no-cert")
    client.tls_set_context(ssl.create_default_context(cafile=str(broker.pki.ca.ca_cert_path)))
    outcome: list[object] = []
    client.on_connect = lambda c, u, f, reason, p: outcome.append(reason)
    try:
        client.connect(broker.host, broker.port, keepalive=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and client.loop(0.1) == mqtt.MQTT_ERR_SUCCESS:
            pass
    except (ssl.SSLError, OSError):
        pass
    finally:
        client.disconnect()
    assert not any(not reason.is_failure for reason in outcome), "the broker accepted a client without a cert"
