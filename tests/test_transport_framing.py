"""The fleet engine's own PUBLISH framing and PUBACK parsing agree with paho, byte for byte."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from factory_core.mqtt_wire import topic_field as _topic_field
from simulator.transport.fleet_engine import _Connection
from simulator.transport.paho_fastpath import CoalescingSocket as _CoalescingSocket
from simulator.transport.paho_fastpath import FastLink, self_test

TOPIC = "factory/telemetry/site-00/line-01/site-00-line-01-cnc_mill-01"


class _Capture:
    """Stands in for a connected socket: paho only needs it to exist while we capture packets."""

    def fileno(self) -> int:
        return -1

    def close(self) -> None:  # paho closes its socket when the client is collected
        pass


def _paho_publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="framing-test", protocol=mqtt.MQTTv311)
    captured: list[bytes] = []

    def capture(command: int, packet: bytes | bytearray, *_: Any, **__: Any) -> MQTTErrorCode:
        captured.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._sock = _Capture()  # type: ignore[assignment]
    client._packet_queue = capture  # type: ignore[method-assign]
    client._send_publish(mid, topic.encode(), payload, qos=qos)
    return captured[0]


def _ours(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    """What the fleet engine's fast path writes into the connection's buffer for this message."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="framing-test", protocol=mqtt.MQTTv311)
    link = FastLink(client, lambda mid, now: None, qos, {})
    link.sock = _CoalescingSocket(None)
    link.mid = mid - 1
    link.publish(topic, payload, qos)
    return bytes(link.sock.buffer)


@pytest.mark.parametrize("size", [0, 1, 60, 61, 62, 200, 340, 16_300, 16_400, 200_000])
@pytest.mark.parametrize("qos", [0, 1])
def test_publish_packets_match_paho(size: int, qos: int) -> None:
    # Sizes around the 1-, 2- and 3-byte boundaries of the remaining length (127, 16383).
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for mid in (1, 255, 256, 65_535):
        assert _ours(TOPIC, payload, qos, mid) == _paho_publish_packet(TOPIC, payload, qos, mid)


@pytest.mark.parametrize("topic", ["", "factory/+/x", "factory/#"])
def test_topics_paho_would_refuse_are_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="invalid topic"):
        _topic_field(topic)


def _connection_with(inflight_mids: list[int]) -> tuple[FastLink, _Connection]:
    conn = _Connection(0, "framing-test", None, 1.0)
    for seq, mid in enumerate(inflight_mids, start=1):
        conn.inflight[mid] = (seq, 0.0, _Note())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="framing-test", protocol=mqtt.MQTTv311)
    assert self_test() is None  # the fast path (and its PUBACK handler) applies to this paho
    return FastLink(client, conn.acknowledged, 1, {}), conn


def _take_pubacks(link: FastLink, sock: _CoalescingSocket) -> None:
    link.sock = sock
    link.take_pubacks()


class _Note:
    kind = "telemetry"


def _socket_holding(data: bytes) -> _CoalescingSocket:
    sock = _CoalescingSocket(None)
    sock.read_buffer = data
    return sock


def test_pubacks_at_the_front_are_taken_and_the_rest_left_to_paho() -> None:
    link, conn = _connection_with([1, 2, 3, 300])
    pingresp = b"\xd0\x00"
    data = b"\x40\x02\x00\x01" + b"\x40\x02\x01\x2c" + pingresp + b"\x40\x02\x00\x02"
    sock = _socket_holding(data)
    _take_pubacks(link, sock)
    assert sorted(conn.inflight) == [2, 3]  # mids 1 and 300 released, stopped at the PINGRESP
    assert conn.stats.published["telemetry"] == 2
    assert sock.read_position == 8
    assert sock.read_buffer[sock.read_position :].startswith(pingresp)


def test_a_puback_cut_at_the_end_of_a_read_waits_for_paho() -> None:
    link, conn = _connection_with([1, 2])
    sock = _socket_holding(b"\x40\x02\x00\x01\x40\x02\x00")
    _take_pubacks(link, sock)
    assert sorted(conn.inflight) == [2]
    assert sock.read_position == 4  # the three bytes of the next PUBACK stay for paho


def test_nothing_is_taken_while_paho_holds_part_of_a_packet() -> None:
    link, conn = _connection_with([1])
    link.client._in_packet["command"] = 0x40  # paho read the command byte of a packet already
    sock = _socket_holding(b"\x40\x02\x00\x01")
    _take_pubacks(link, sock)
    assert sorted(conn.inflight) == [1]
    assert sock.read_position == 0


def test_an_unknown_puback_changes_nothing() -> None:
    link, conn = _connection_with([5])
    sock = _socket_holding(b"\x40\x02\x00\x07")
    _take_pubacks(link, sock)
    assert sorted(conn.inflight) == [5]
    assert conn.stats.published["telemetry"] == 0


def test_read_errors_and_end_of_stream_reach_paho() -> None:
    class Failing:
        def __init__(self, outcome: bytes | OSError) -> None:
            self.outcome = outcome

        def recv(self, size: int) -> bytes:
            if isinstance(self.outcome, OSError):
                raise self.outcome
            return self.outcome

    reset = ConnectionResetError(104, "reset")
    sock = _CoalescingSocket(Failing(reset))
    assert sock.fill() and sock.has_news()
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    closed = _CoalescingSocket(Failing(b""))
    assert closed.fill() and closed.has_news()
    assert closed.recv(1) == b""
