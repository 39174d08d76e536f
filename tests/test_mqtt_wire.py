"""MQTT 3.1.1 framing shared by the simulator and the rule runner, against the standard and paho."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from factory_core import mqtt_wire
from factory_core.mqtt_wire import (
    MalformedPacket,
    connect_packet,
    fixed_header,
    parse_packets,
    subscribe_packet,
    topic_field,
)

# The examples of MQTT 3.1.1 §2.2.3 (Table 2.4): the edges of each encoded length.
REMAINING_LENGTHS = {
    0: b"\x00",
    127: b"\x7f",
    128: b"\x80\x01",
    16_383: b"\xff\x7f",
    16_384: b"\x80\x80\x01",
    2_097_151: b"\xff\xff\x7f",
    2_097_152: b"\x80\x80\x80\x01",
    268_435_455: b"\xff\xff\xff\x7f",
}


@pytest.mark.parametrize(("length", "encoded"), sorted(REMAINING_LENGTHS.items()))
def test_remaining_length_is_encoded_as_the_standard_shows(length: int, encoded: bytes) -> None:
    assert fixed_header(0x30, length) == b"\x30" + encoded


def test_a_packet_longer_than_four_length_bytes_allow_is_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        fixed_header(0x30, 268_435_456)


class _Capture:
    """Stands in for a connected socket: paho only needs it to exist while we capture packets."""

    def fileno(self) -> int:
        return -1

    def close(self) -> None:  # paho closes its socket when the client is collected
        pass


def _captured(build: Any) -> bytes:
    """The packet a scratch paho client queues when `build(client)` runs."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="rule-runner", clean_session=False, protocol=mqtt.MQTTv311
    )
    captured: list[bytes] = []

    def capture(command: int, packet: bytes | bytearray, *_: Any, **__: Any) -> MQTTErrorCode:
        captured.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._packet_queue = capture  # type: ignore[method-assign]
    client._sock = _Capture()  # type: ignore[assignment]  # paho publishes only while "connected"
    build(client)
    return captured[0]


def test_connect_matches_paho_for_a_persistent_session() -> None:
    assert connect_packet("rule-runner", 30, clean_session=False) == _captured(lambda c: c._send_connect(30))


def test_subscribe_matches_paho() -> None:
    topic_filter = "factory/simulator/#"
    expected = _captured(lambda c: c._send_subscribe(False, [(topic_filter.encode(), 1)]))
    assert subscribe_packet(1, topic_filter, 1) == expected


def test_publishes_framed_by_paho_parse_back_to_what_was_sent() -> None:
    stream = bytearray()
    sent = []
    for number, size in enumerate((0, 100, 130, 16_400)):
        topic, payload, qos, mid = f"factory/simulator/site-00/m-{number}", b"p" * size, number % 2, number
        stream += _captured(lambda c, t=topic, p=payload, q=qos, m=mid: c._send_publish(m, t.encode(), p, q))
        sent.append((0x30 | qos << 1, topic, mid if qos else 0, payload))
    stream += b"\xd0\x00"  # a PINGRESP after them
    publishes: list[mqtt_wire.Publish] = []
    control: list[mqtt_wire.Control] = []
    assert parse_packets(stream, publishes, control, {}) is True
    assert publishes == sent and control == [] and stream == b""


def test_a_partial_packet_stays_for_the_next_read() -> None:
    whole = b"\x32" + fixed_header(0, 2 + 5 + 2 + 3)[1:] + topic_field("a/b/c") + b"\x00\x07" + b"abc"
    buffer = bytearray(whole[:-1])
    publishes: list[mqtt_wire.Publish] = []
    assert parse_packets(buffer, publishes, [], {}) is False
    assert publishes == [] and bytes(buffer) == whole[:-1]
    buffer += whole[-1:]
    parse_packets(buffer, publishes, [], {})
    assert publishes == [(0x32, "a/b/c", 7, b"abc")] and buffer == b""


def test_a_fifth_length_byte_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        parse_packets(bytearray(b"\x30\xff\xff\xff\xff\x01"), [], [], {})
