"""The local broker enforces what AWS IoT Core enforces: mTLS, the device policy, revocation."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from support_mqtt import tls_client

from local_stack.certificate_authority import CertificateAuthority, IssuedCertificate


def _client(broker: Broker, cert: IssuedCertificate | None, client_id: str) -> mqtt.Client:
    return tls_client(broker.pki.ca.ca_cert_path, cert, client_id)


def _connects(broker: Broker, cert: IssuedCertificate | None, client_id: str) -> bool:
    client = _client(broker, cert, client_id)
    outcome: list[bool] = []
    settled = threading.Event()

    def on_connect(c, u, f, rc, p) -> None:
        outcome.append(rc == 0)
        settled.set()

    def on_gone(*_args) -> None:
        outcome.append(False)
        settled.set()

    client.on_connect = on_connect
    client.on_disconnect = on_gone
    client.on_connect_fail = on_gone
    try:
        client.connect(broker.host, broker.port, keepalive=30)
        client.loop_start()
        settled.wait(5)
        ok = bool(outcome) and outcome[0]
    except (ssl.SSLError, OSError):
        ok = False
    finally:
        client.loop_stop()
        client.disconnect()
    return ok


def _collect(broker: Broker, topic_filter: str) -> tuple[mqtt.Client, list[str]]:
    received: list[str] = []
    reader = _client(broker, broker.pki.reader, "test-reader")
    subscribed = threading.Event()
    reader.on_message = lambda c, u, m: received.append(m.topic)
    reader.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    reader.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)
    reader.connect(broker.host, broker.port)
    reader.loop_start()
    assert subscribed.wait(5)
    return reader, received


def test_device_with_certificate_connects(broker: Broker) -> None:
    assert _connects(broker, broker.pki.device, "site-00-c00")


def test_no_certificate_is_refused(broker: Broker) -> None:
    assert not _connects(broker, None, "anonymous")


def test_certificate_from_another_ca_is_refused(broker: Broker, tmp_path) -> None:
    other = CertificateAuthority.create(tmp_path / "other-ca")
    foreign = other.issue_client("site-00", tmp_path / "foreign")
    assert not _connects(broker, foreign, "site-00-c00")


def test_revoked_certificate_is_refused_after_reload(broker: Broker) -> None:
    device = broker.pki.device_cert("site-01")
    assert _connects(broker, device, "site-01-c00")
    broker.pki.ca.revoke(device.serial)
    broker.process.reload()
    time.sleep(0.5)
    assert not _connects(broker, device, "site-01-c00")
    assert _connects(broker, broker.pki.device, "site-00-c00")


def test_device_may_publish_only_under_its_own_site(broker: Broker) -> None:
    reader, received = _collect(broker, "factory/simulator/#")
    device = _client(broker, broker.pki.device, "site-00-c00")
    device.connect(broker.host, broker.port)
    device.loop_start()
    try:
        for topic in (
            "factory/simulator/site-00/line-01/m1",
            "factory/simulator/ground-truth/site-00/line-01/m1",
            "factory/simulator/site-01/line-01/m1",  # another site's prefix
            "factory/other",
        ):
            device.publish(topic, b"{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 3
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        device.loop_stop()
        device.disconnect()
        reader.loop_stop()
        reader.disconnect()
    assert sorted(received) == [
        "factory/simulator/ground-truth/site-00/line-01/m1",
        "factory/simulator/site-00/line-01/m1",
    ]


def test_device_receives_nothing_it_subscribes_to(broker: Broker) -> None:
    """Mosquitto 2.0 grants the SUBACK but enforces the read ACL at delivery: nothing arrives."""
    snooper = _client(broker, broker.pki.device_cert("site-07"), "site-07-c00")
    received: list[str] = []
    subscribed = threading.Event()
    snooper.on_message = lambda c, u, m: received.append(m.topic)
    snooper.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    snooper.on_connect = lambda c, u, f, rc, p: c.subscribe("factory/simulator/#", qos=1)
    snooper.connect(broker.host, broker.port)
    snooper.loop_start()
    reader, archived = _collect(broker, "factory/simulator/#")
    device = _client(broker, broker.pki.device, "site-00-c00")
    device.connect(broker.host, broker.port)
    device.loop_start()
    try:
        assert subscribed.wait(5)
        device.publish("factory/simulator/site-00/line-01/m1", b"{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 3
        while not archived and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        for client in (device, reader, snooper):
            client.loop_stop()
            client.disconnect()
    assert archived == ["factory/simulator/site-00/line-01/m1"]
    assert received == []


@pytest.mark.parametrize("protocol", [ssl.TLSVersion.TLSv1_1])
def test_old_tls_is_refused(broker: Broker, protocol: ssl.TLSVersion) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(broker.pki.ca.ca_cert_path))
    context.load_cert_chain(str(broker.pki.device.cert_path), str(broker.pki.device.key_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: that's the point
            context.minimum_version = protocol
            context.maximum_version = protocol
    except ValueError:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    with (
        socket.create_connection((broker.host, broker.port), timeout=3) as raw,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        context.wrap_socket(raw, server_hostname="localhost").do_handshake()
