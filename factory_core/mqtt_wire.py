"""MQTT 3.1.1 on the wire (OASIS standard, §2-3): the packets this project frames and parses itself.

Protocol, not product logic: the simulator's fleet engine frames PUBLISH packets with it, the local
stack's rule runner speaks a persistent-session subscriber with it. Only the small part of MQTT
those two need is here: the fixed header with its variable-length "remaining length", PUBLISH,
PUBACK, CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT, and a parser that frames every complete packet
of a byte stream. Everything is pure: bytes in, bytes out, no sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# Control packet types (§2.2.1): the high nibble of a packet's first byte.
CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13
# First bytes of the packets framed here (type << 4 | flags, §2.2.2).
CONNECT_FIRST_BYTE = 0x10
PUBLISH_QOS0 = 0x30  # no DUP, QoS 0, no RETAIN
PUBLISH_QOS1 = 0x32  # no DUP, QoS 1, no RETAIN
PUBACK_FIRST_BYTE = 0x40
SUBSCRIBE_FIRST_BYTE = 0x82  # the reserved flags of SUBSCRIBE are 0010
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
# PUBLISH flags (§3.3.1).
PUBLISH_DUP, PUBLISH_QOS_MASK, PUBLISH_RETAIN = 0x08, 0x06, 0x01

PACKET_ID = struct.Struct("!H")  # also the length prefix of every UTF-8 string field
MAX_PACKET_ID = 65535
MAX_REMAINING_LENGTH = 268_435_455  # four 7-bit digits
# A PUBACK is 4 bytes: 0x40, remaining length 2, the packet id; as one big-endian word that is
# 0x40020000 | packet id, so the PUBACKs of a whole batch are framed by one `struct.pack`.
_PUBACK_WORD = 0x40020000
# CONNACK return codes that refuse the connection (§3.2.2.3).
CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
# The parser caches decoded topics by their bytes; a stream of ever-new topics clears it.
TOPIC_CACHE_LIMIT = 65_536

Publish = tuple[int, str, int, bytes]  # (first byte: DUP/QoS/RETAIN flags, topic, packet id, payload)
Control = tuple[int, bytes]  # (first byte, body) of any other packet


class MalformedPacket(ValueError):
    """The byte stream is not MQTT 3.1.1 framing."""


def fixed_header(first_byte: int, length: int) -> bytes:
    """Packet type byte and the "remaining length" (§2.2.3: 7 bits per byte, low digits first)
    of a packet whose variable header and payload are `length` bytes."""
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"MQTT packet too large: {length} bytes > {MAX_REMAINING_LENGTH}")
    header = bytearray((first_byte,))
    while True:
        digit, length = length & 0x7F, length >> 7
        header.append(digit | 0x80 if length else digit)
        if not length:
            return bytes(header)


def packet(first_byte: int, body: bytes) -> bytes:
    return fixed_header(first_byte, len(body)) + body


def string_field(text: str) -> bytes:
    """A UTF-8 string as MQTT frames it: two bytes of length, then the bytes (§1.5.3)."""
    encoded = text.encode()
    if len(encoded) > 65535:
        raise ValueError(f"MQTT string longer than 65535 bytes: {text[:40]!r}…")
    return PACKET_ID.pack(len(encoded)) + encoded


def topic_field(topic: str) -> bytes:
    """A PUBLISH topic name, length-prefixed; refused as paho refuses it (empty, wildcards, too long)."""
    encoded = topic.encode()
    if not encoded or len(encoded) > 65535 or b"+" in encoded or b"#" in encoded:
        raise ValueError(f"invalid topic to publish to: {topic!r}")
    return PACKET_ID.pack(len(encoded)) + encoded


def puback_bytes(mids: Sequence[int]) -> bytes:
    """PUBACK packets for `mids`, concatenated: what the broker reads as that many acknowledgements."""
    return struct.pack(f"!{len(mids)}I", *(_PUBACK_WORD | mid for mid in mids))


def connect_packet(client_id: str, keepalive_s: int, *, clean_session: bool) -> bytes:
    """CONNECT at protocol level 4 (3.1.1), no will, no user name or password (§3.1)."""
    flags = 0x02 if clean_session else 0x00
    variable = string_field("MQTT") + bytes((4, flags)) + PACKET_ID.pack(keepalive_s)
    return packet(CONNECT_FIRST_BYTE, variable + string_field(client_id))


def subscribe_packet(mid: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE to one topic filter at `qos` (§3.8)."""
    return packet(SUBSCRIBE_FIRST_BYTE, PACKET_ID.pack(mid) + string_field(topic_filter) + bytes((qos,)))


def parse_packets(
    buffer: bytearray, publishes: list[Publish], control: list[Control], topics: dict[bytes, str]
) -> bool:
    """Frame every complete packet at the front of `buffer` and remove it from there.

    PUBLISHes are appended to `publishes`, other packets but PINGRESP to `control`; a partial
    packet stays in `buffer` for the next call. Returns True when a PINGRESP was among them.
    `topics` caches decoded topic names by their bytes (one per machine at 10k+ msg/s).
    Raises `MalformedPacket` for a remaining length over four bytes.
    """
    size = len(buffer)
    position = 0
    pong = False
    while size - position >= 2:
        first = buffer[position]
        length = 0
        shift = 0
        index = position + 1
        complete = False
        while index < size:
            digit = buffer[index]
            index += 1
            length |= (digit & 0x7F) << shift
            if digit < 0x80:
                complete = True
                break
            shift += 7
            if shift > 21:
                raise MalformedPacket("remaining length > 4 bytes")
        if not complete or size - index < length:
            break  # incomplete: wait for more bytes
        end = index + length
        kind = first >> 4
        if kind == PUBLISH:
            topic_end = index + 2 + ((buffer[index] << 8) | buffer[index + 1])
            raw_topic = bytes(buffer[index + 2 : topic_end])
            topic = topics.get(raw_topic)
            if topic is None:
                topic = _decoded_topic(raw_topic, topics)
            if first & PUBLISH_QOS_MASK:
                mid = (buffer[topic_end] << 8) | buffer[topic_end + 1]
                topic_end += 2
            else:
                mid = 0
            publishes.append((first, topic, mid, bytes(buffer[topic_end:end])))
        elif kind == PINGRESP:
            pong = True
        else:
            control.append((first, bytes(buffer[index:end])))
        position = end
    if position:
        del buffer[:position]
    return pong


def _decoded_topic(raw_topic: bytes, topics: dict[bytes, str]) -> str:
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:  # MQTT requires UTF-8 topics and Mosquitto enforces it
        topic = "<topic not UTF-8>"
    if len(topics) >= TOPIC_CACHE_LIMIT:
        topics.clear()
    topics[raw_topic] = topic
    return topic
