"""The rule runner's MQTT 3.1.1 framing: PUBLISH packets split anywhere across reads, PUBACK batches."""

from __future__ import annotations

import random
import ssl

import pytest

from factory_core.mqtt_wire import puback_bytes
from local_stack.mqtt_session import ConnectionLost, SubscriberSession


def _remaining_length(length: int) -> bytes:
    # MQTT 3.1.1 §2.2.3, written independently of the runner's decoder.
    out = []
    while True:
        length, digit = divmod(length, 128)
        out.append(digit + (128 if length else 0))
        if not length:
            return bytes(out)


def _publish(
    topic: str, payload: bytes, *, qos: int, mid: int, dup: bool = False, retain: bool = False
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    encoded = topic.encode()
    body = len(encoded).to_bytes(2, "big") + encoded + (mid.to_bytes(2, "big") if qos else b"") + payload
    return bytes([first]) + _remaining_length(len(body)) + body


def _session() -> SubscriberSession:
    return SubscriberSession("127.0.0.1", 1, ssl.create_default_context(), "test", 30)


def _feed(
    session: SubscriberSession, stream: bytes, chunk_sizes: list[int]
) -> list[tuple[int, str, int, bytes]]:
    parsed = []
    position = 0
    for size in chunk_sizes:
        session._in += stream[position : position + size]
        position += size
        session._parse()
        parsed += session._publishes
        session._publishes = []
    assert position >= len(stream)
    return parsed


def test_publishes_split_at_every_possible_boundary_are_framed_exactly() -> None:
    rng = random.Random(7)
    expected = []
    stream = b""
    for number in range(300):
        # Payload sizes cross the 1-, 2- and 3-byte remaining-length encodings.
        size = rng.choice([0, 1, 100, 126, 127, 128, 16_380, 16_384, 131_072])
        payload = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64) + b"x" * (size % 64)
        topic = f"factory/simulator/site-0{number % 3}/line-01/m-{number % 5}"
        qos = 0 if number % 17 == 0 else 1
        mid = (number * 977) % 65_535 + 1 if qos else 0
        dup, retain = number % 11 == 0, number % 13 == 0
        stream += _publish(topic, payload, qos=qos, mid=mid, dup=dup, retain=retain)
        first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
        expected.append((first, topic, mid, payload))
    for chunks in ([len(stream)], [1] * 5000 + [len(stream)], [rng.randint(1, 70_000) for _ in range(400)]):
        session = _session()
        assert _feed(session, stream, chunks) == expected
        assert not session._in, "a complete stream leaves nothing unparsed"


def test_control_packets_are_kept_apart_and_pingresp_clears_the_ping() -> None:
    session = _session()
    session._ping_sent_at = 123.0
    session._in += b"\x20\x02\x01\x00" + b"\xd0\x00" + b"\x90\x03\x00\x01\x01"
    session._parse()
    assert session._control == [(0x20, b"\x01\x00"), (0x90, b"\x00\x01\x01")]
    assert session._ping_sent_at == 0.0
    assert session._publishes == []


def test_a_remaining_length_over_four_bytes_is_a_lost_connection() -> None:
    session = _session()
    session._in += b"\x30\xff\xff\xff\xff\x01"
    with pytest.raises(ConnectionLost, match="malformed"):
        session._parse()


def test_pubacks_of_a_batch_are_one_buffer_of_four_byte_packets() -> None:
    assert puback_bytes([1, 258, 65_535]) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    assert puback_bytes([]) == b""
    session = _session()
    session.ack([5, 6])
    session.ack([])
    assert session.want_write and bytes(session._out) == b"\x40\x02\x00\x05\x40\x02\x00\x06"
