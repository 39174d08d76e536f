"""The local broker binds each client id to one certificate and each certificate to its rights.

Against the real Mosquitto (the local stack's configuration), the real rule runner and archive:
a valid device certificate asking for someone else's client id takes over nothing; devices publish
only their own site's topics and read nothing; readers and observers only read; oversize payloads
never reach the rule runner.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psutil
import pytest
from conftest import Broker
from test_rule_runner_support import DevicePublisher, fleet_messages, running_runner

from factory_core.mqtt_wire import PUBLISH_QOS1, connect_packet, fixed_header, topic_field
from factory_core.payload_contract import payload_kind
from local_stack.archive import QUARANTINE_PREFIX, RAW_PREFIX, LocalArchive, iter_records, wait_for_objects
from local_stack.certificate_authority import IssuedCertificate
from local_stack.dynamic_security import OBSERVERS_GROUP
from local_stack.identities import RULE_RUNNER_IDENTITY
from local_stack.verify import verify_archive

pytestmark = pytest.mark.integration

MiB = 1 << 20


class Watched:
    """A paho client that records what happens to it: CONNACK, disconnects, SUBACKs, PUBACKs, messages."""

    def __init__(
        self,
        broker: Broker,
        cert: IssuedCertificate,
        client_id: str,
        *,
        clean_session: bool = True,
        mqtt5: bool = False,
    ) -> None:
        protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        options: dict[str, Any] = {} if mqtt5 else {"clean_session": clean_session}
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, **options
        )
        context = ssl.create_default_context(cafile=str(broker.pki.ca.ca_cert_path))
        context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
        self.client.tls_set_context(context)
        self.connack: str | None = None
        self.session_present: bool | None = None
        self.disconnects: list[str] = []
        self.subacks: list[str] = []
        self.pubacks: dict[int, str] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(str(reason))
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.extend(map(str, codes))
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None or bool(self.disconnects), "a CONNACK")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        self.connack = str(reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            self.pubacks[mid] = str(reason)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def subscribe(self, topic_filter: str) -> str:
        before = len(self.subacks)
        self.client.subscribe(topic_filter, qos=1)
        wait_for(lambda: len(self.subacks) > before, f"the SUBACK for {topic_filter}")
        return self.subacks[-1]

    def publish(self, topic: str, payload: bytes = b"{}") -> str:
        mid = self.client.publish(topic, payload, qos=1).mid
        wait_for(lambda: mid in self.pubacks or bool(self.disconnects), f"the PUBACK for {topic}")
        return self.pubacks.get(mid, "no PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextmanager
def watched(*args: Any, **kwargs: Any) -> Iterator[Watched]:
    client = Watched(*args, **kwargs)
    try:
        yield client
    finally:
        client.close()


def _seqs(payloads: list[bytes]) -> set[tuple[str, str, str, int]]:
    seen = set()
    for payload in payloads:
        document = orjson.loads(payload)
        seen.add((document["site"], document["machine"], payload_kind(document), document["seq"]))
    return seen


def test_a_device_certificate_takes_over_nothing(broker: Broker, tmp_path: Path) -> None:
    """A valid device certificate asks for the rule runner's and another site's client ids while a
    publisher runs: it gets CONNACK 0 under its own identity, the victims stay connected, the
    runner's persistent session keeps every queued message, and the archive misses nothing."""
    archive = LocalArchive(tmp_path / "archive")
    messages = fleet_messages(rounds=120)  # 3 machines of site-00, ~360 telemetry + ground truth
    half = len(messages) // 2
    victim_cert, attacker_cert = broker.device(1), broker.device(2)
    attacker_id = attacker_cert.common_name
    with (
        watched(broker, broker.pki.observer, "auditor") as auditor,
        watched(broker, victim_cert, victim_cert.common_name) as victim,
    ):
        assert auditor.subscribe("factory/simulator/#") == "Granted QoS 1"
        # The runner's persistent session exists; while the runner is away the broker queues for it.
        with running_runner(broker, str(archive.root), tmp_path, ["--flush-interval", "0.2"]) as runner:
            assert runner.stop() == 0
        publisher = DevicePublisher(broker)
        try:
            publisher.publish_all(messages[:half])
            publisher.wait_all_acknowledged()
            # Today's takeover: a clean-session connect under the runner's id wiped its session.
            for clean in (True, False):
                with watched(broker, attacker_cert, RULE_RUNNER_IDENTITY, clean_session=clean) as attacker:
                    assert attacker.connack == "Success" and attacker.disconnects == []
                    assert attacker.session_present is False  # its own (empty) session, not the runner's
            with running_runner(broker, str(archive.root), tmp_path, ["--flush-interval", "0.2"]) as runner:
                sender = threading.Thread(target=publisher.publish_all, args=(messages[half:], 400.0))
                sender.start()
                for asked in (RULE_RUNNER_IDENTITY, victim_cert.common_name, RULE_RUNNER_IDENTITY):
                    with watched(broker, attacker_cert, asked, mqtt5=True) as attacker:
                        assert attacker.connack == "Success"
                        # It still acts as itself only: site-01's topics are not its to write.
                        assert attacker.publish("factory/simulator/site-01/line-01/x") == "Not authorized"
                sender.join()
                publisher.wait_all_acknowledged()
                wait_for(
                    lambda: len(_archived(archive)) >= len(messages), "every message in the archive", 30
                )
                assert runner.stop() == 0, runner.log()
                runner_log = runner.log()
        finally:
            publisher.close()
        assert victim.disconnects == []
        wait_for(lambda: len(auditor.messages) >= len(messages), "the auditor to see every message")

    log = broker.log()
    for session in ("p2, c1", "p2, c0", "p5"):  # the broker filed every attempt under its own CN
        assert f"as {attacker_id} ({session}" in log
    assert "Client rule-runner already connected" not in log
    assert f"Client {victim_cert.common_name} already connected" not in log
    assert "connection to the broker lost" not in runner_log
    published = _seqs([message.payload for message in messages])
    assert _seqs(_archived(archive)) == published
    assert _seqs([payload for _topic, payload in auditor.messages]) == published
    report = verify_archive(archive)
    assert report.missing == 0 and report.duplicates == 0 and report.unique == len(messages)


def _archived(archive: LocalArchive, prefix: str = RAW_PREFIX) -> list[bytes]:
    objects = [archive.get_object(info.key).body for info in archive.list_objects(prefix)]
    return [record for body in objects for record in iter_records(body)]


def test_devices_write_only_their_site_and_read_nothing_readers_only_read(broker: Broker) -> None:
    own = "factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-01"
    own_truth = "factory/simulator/ground-truth/site-00/line-01/site-00-line-01-cnc_mill-01"
    sentinel = "factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-02"
    # A listener of its own (an observer identity as `tail` borrows one): the fixed `observer`
    # certificate is among those tested below, and a second connection with it would close the first.
    listener_cert = broker.pki.device_cert("observer-0000beef")
    broker.admin().create_clients({listener_cert.common_name: OBSERVERS_GROUP})
    with watched(broker, listener_cert, "listener", mqtt5=True) as listener:
        assert listener.subscribe("factory/simulator/#") == "Granted QoS 1"
        assert listener.subscribe("#") == "Not authorized"
        assert listener.subscribe("$SYS/#") == "Not authorized"
        for reader in (broker.pki.reader, broker.pki.observer):
            with watched(broker, reader, "x", mqtt5=True) as client:
                assert client.publish(own) == "Not authorized"
        # An identity the broker does not know (valid certificate, no rights) can do nothing.
        with watched(broker, broker.pki.device_cert("g1-site-00-c07"), "x", mqtt5=True) as stranger:
            assert stranger.publish(own) == "Not authorized"
            assert stranger.subscribe("factory/simulator/#") == "Not authorized"
        with watched(broker, broker.pki.device, "anything") as device311:
            assert device311.subscribe("factory/simulator/#") == "Unspecified error"  # 3.1.1: 0x80
        with watched(broker, broker.pki.device, "anything", mqtt5=True) as device:
            # Devices subscribe to nothing: refused in the SUBACK, and nothing is ever delivered.
            assert device.subscribe("factory/simulator/#") == "Not authorized"
            assert device.subscribe("#") == "Not authorized"
            assert device.publish(own) == "Success"
            assert device.publish(own_truth) == "Success"
            for foreign in (
                "factory/simulator/site-01/line-01/site-01-line-01-cnc_mill-01",
                "factory/simulator/ground-truth/site-01/line-01/site-01-line-01-cnc_mill-01",
                "factory/simulator/ground-truth/site-00x/line-01/m",
                "factory/other",
                "$CONTROL/dynamic-security/v1",
            ):
                assert device.publish(foreign) == "Not authorized", foreign
            # Everything above was handled (answered) before this: once it arrives, nothing else will.
            assert device.publish(sentinel) == "Success"
            assert device.connack == "Success" and device.disconnects == [] and device.messages == []
        wait_for(lambda: any(topic == sentinel for topic, _ in listener.messages), "the sentinel")
        assert [topic for topic, _payload in listener.messages] == [own, own_truth, sentinel]


@pytest.mark.parametrize("bad", ["site-00/x", "site-+", "#", "", " site-00", "a" * 65, "site\n00"])
def test_the_ca_refuses_a_common_name_that_is_not_a_plain_identity(broker: Broker, bad: str) -> None:
    with pytest.raises(ValueError, match="common name"):
        broker.pki.device_cert(bad)


def _raw_oversize_publish(broker: Broker, declared_bytes: int) -> int:
    """A device that announces a `declared_bytes` PUBLISH and streams it; returns what it got to send."""
    context = ssl.create_default_context(cafile=str(broker.pki.ca.ca_cert_path))
    context.load_cert_chain(str(broker.pki.device.cert_path), str(broker.pki.device.key_path))
    sent = 0
    with (
        socket.create_connection((broker.host, broker.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(connect_packet("oversize", 30, clean_session=True))
        assert tls.recv(4)[:1] == b"\x20"  # CONNACK
        topic = topic_field("factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-01")
        tls.sendall(fixed_header(PUBLISH_QOS1, declared_bytes) + topic + b"\x00\x01")
        chunk = b"\x00" * (64 << 10)
        try:
            while sent < declared_bytes:
                tls.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the broker hung up
            pass
    return sent


def test_oversize_payloads_never_reach_the_rule_runner(broker: Broker, tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    with running_runner(broker, str(archive.root), tmp_path, ["--flush-interval", "0.2"]) as runner:
        assert runner.process is not None
        process = psutil.Process(runner.process.pid)
        rss_before = process.memory_info().rss
        # 200 MB announced: the broker cuts the connection on the header and buffers nothing.
        sent = _raw_oversize_publish(broker, 200 * 1000 * 1000)
        assert sent < 32 * MiB
        # An ordinary client with a 200 kB QoS 1 message: disconnected, no PUBACK.
        with watched(broker, broker.pki.device, "big") as big:
            assert big.publish("factory/simulator/site-00/line-01/m", b"x" * 200_000) == "no PUBACK"
            wait_for(lambda: bool(big.disconnects), "the broker to cut the client")
        # Just over AWS IoT's 128 KiB payload limit: dropped by the broker (3.1.1 sees a PUBACK).
        # Exactly the limit passes and is quarantined with an excerpt, its size and its hash.
        at_limit = b"\xff" * (128 << 10)
        device = DevicePublisher(broker)
        try:
            device.publish("factory/simulator/site-00/line-01/m", b"y" * ((128 << 10) + 1))
            device.publish("factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-01", at_limit)
            good = fleet_messages(rounds=1)[0]
            device.publish(good.topic, good.payload)
            device.wait_all_acknowledged()
        finally:
            device.close()
        wait_for_objects(archive, QUARANTINE_PREFIX, 1, 10)
        wait_for(lambda: len(_archived(archive)) >= 1, "the good message in the archive")
        assert runner.alive()
        assert process.memory_info().rss - rss_before < 50 * MiB
        assert runner.stop() == 0

    assert "disconnected due to oversize packet" in broker.log()
    assert _archived(archive) == [good.payload]
    entries = [orjson.loads(line) for line in _archived(archive, QUARANTINE_PREFIX)]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["reason"] == "invalid_json"
    assert entry["payload_bytes"] == len(at_limit)
    assert entry["payload_sha256"] == hashlib.sha256(at_limit).hexdigest()
    assert len(entry["payload_excerpt_base64"]) <= 1400  # 1 KiB, base64
    assert "payload_base64" not in entry
