"""Everything in the simulator that reaches into paho-mqtt's private attributes, with its self-test.

The fleet engine's per-message work bypasses paho while paho keeps the connection (CONNECT,
keep-alive, any packet but PUBACK, DISCONNECT). Measured with py-spy: paho's `publish` (an
`MQTTMessageInfo` with a `threading.Condition`, topic checks, a packet queue) was a third of the
CPU at QoS 0, its packet reader (three `recv` calls and several dispatch layers per 4-byte
PUBACK) a seventh at 16,000 msg/s, and one TLS write per packet more than the rest of the client.
So `FastLink` wraps paho's socket in a `CoalescingSocket`, frames PUBLISH packets straight into
its write buffer and takes the PUBACKs at the front of each read itself.

That relies on paho 2.2 internals (`_sock`, `_in_packet`, `_handle_pubackcomp`,
`_last_bytes_received`, paho writing each of its packets whole through `_sock.send`), so the
minor version is pinned in pyproject.toml and `self_test()` checks them, byte for byte against
paho's own framing, before an engine uses them. When they differ, `fastpath_enabled()` says so
in one line and the engine publishes through plain paho (`paho_link.PlainLink`) instead.

The SDK engine's two peeks into AWSIoTPythonSDK (its client status and its bundled paho's
unsent-packet queue) are here too, so that this is the one module to check on an upgrade.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from factory_core.mqtt_wire import (
    MAX_PACKET_ID,
    PACKET_ID,
    PUBACK_FIRST_BYTE,
    PUBLISH_QOS0,
    PUBLISH_QOS1,
    fixed_header,
    topic_field,
)
from simulator.transport.paho_link import CONNECTION_LOST, AckCallback

READ_CHUNK_BYTES = 1 << 16
# QoS 0 has no acknowledgement to wait for: stop framing messages while this much is unsent.
MAX_BUFFERED_BYTES = 1 << 20


class CoalescingSocket:
    """Batches paho's socket calls: one TLS write per loop round, one TLS read per 64 KiB.

    paho writes every packet with its own `send` and reads every packet in two or three tiny
    `recv` calls; over TLS on a busy host those calls (record encryption, syscalls, waking the
    broker) cost more than the rest of the client. paho only calls `send`, `recv`, `pending`,
    `setblocking`, `fileno` and `close` on its socket, so this wrapper, installed after the
    handshake, buffers writes until `flush` and serves reads from one large read.
    """

    __slots__ = ("buffer", "eof", "read_buffer", "read_error", "read_position", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.read_buffer = b""
        self.read_position = 0
        # Met by `fill`, kept for paho's next `recv`, so that paho's own handling sees them.
        self.read_error: OSError | None = None
        self.eof = False

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> bool:
        """Send what the kernel takes; True when the buffer is empty."""
        buffer = self.buffer
        while buffer:
            try:
                sent = self.sock.send(buffer)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return False
            del buffer[:sent]
        return True

    def fill(self) -> bool:
        """Read a chunk now unless one is buffered; False when there was nothing to read yet."""
        if self.read_position < len(self.read_buffer) or self.read_error is not None or self.eof:
            return True
        try:
            data = self.sock.recv(READ_CHUNK_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError as error:
            self.read_error = error
            return True
        self.eof = not data
        self.read_buffer, self.read_position = data, 0
        return True

    def has_news(self) -> bool:
        """Buffered input, or an error or end of stream that paho has not seen yet."""
        return self.read_position < len(self.read_buffer) or self.read_error is not None or self.eof

    def recv(self, size: int) -> bytes:
        if self.read_position >= len(self.read_buffer):
            if self.read_error is not None:
                error, self.read_error = self.read_error, None
                raise error
            if self.eof:
                return b""
            # Raises SSLWantReadError when nothing is there; paho treats that as "try later".
            self.read_buffer = self.sock.recv(READ_CHUNK_BYTES)
            self.read_position = 0
            if not self.read_buffer:
                return b""
        start = self.read_position
        self.read_position = start + size
        return self.read_buffer[start : start + size]

    def buffered_input(self) -> bool:
        return self.read_position < len(self.read_buffer)

    def pending(self) -> int:
        return len(self.read_buffer) - self.read_position + int(self.sock.pending())

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        # paho closes right after "writing" DISCONNECT: send it for real first (best effort).
        with contextlib.suppress(OSError):
            self.flush()
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class FastLink:
    """One paho client whose PUBLISH packets and PUBACKs the fleet engine handles itself.

    Its own packets and paho's go into the same write buffer, each whole, so they never
    interleave. Packet ids come from the link's own counter: paho never sees these messages.
    """

    __slots__ = ("client", "mid", "on_ack", "sock", "takes_pubacks", "topics")
    lingers = True  # the engine sends the buffer once its oldest message has waited linger_s

    def __init__(self, client: mqtt.Client, on_ack: AckCallback, qos: int, topics: dict[str, bytes]) -> None:
        self.client = client
        self.on_ack = on_ack
        self.topics = topics  # topic -> its length-prefixed field, shared by a process's links
        self.sock: CoalescingSocket | None = None
        self.mid = 0  # last packet id framed here
        self.takes_pubacks = qos == 1
        if self.takes_pubacks:
            self._install_puback_handler()

    def _install_puback_handler(self) -> None:
        """PUBACKs that paho reads itself (cut across reads, or after another packet) come here.

        paho's handler would find no message to release, and it builds a ReasonCode and a
        Properties object per PUBACK, even on MQTT 3.1.1, where a PUBACK is just a packet id.
        """
        client = self.client
        generic = client._handle_pubackcomp
        on_ack = self.on_ack

        def handle(cmd: str) -> MQTTErrorCode:
            packet = client._in_packet["packet"]
            if cmd != "PUBACK" or len(packet) != 2:
                return generic(cmd)  # type: ignore[arg-type]
            (mid,) = PACKET_ID.unpack(packet)
            on_ack(mid, time.monotonic())
            return MQTTErrorCode.MQTT_ERR_SUCCESS

        client._handle_pubackcomp = handle  # type: ignore[method-assign]

    def attach(self) -> bool:
        """Wrap paho's socket once `connect` returned; False when the broker hung up meanwhile."""
        raw = self.client._sock
        if raw is None:
            return False
        # CONNECT went out unbuffered inside connect(); everything after goes through flush().
        self.sock = CoalescingSocket(raw)
        self.client._sock = self.sock  # type: ignore[assignment]
        return True

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """Frame one PUBLISH into the write buffer: its packet id (QoS 1), or 0 (QoS 0, done)."""
        sock = self.sock
        if sock is None:
            return CONNECTION_LOST
        field = self.topics.get(topic)
        if field is None:
            field = self.topics[topic] = topic_field(topic)
        buffer = sock.buffer
        if qos:
            self.mid = mid = self.mid + 1 if self.mid < MAX_PACKET_ID else 1
            buffer += fixed_header(PUBLISH_QOS1, len(field) + 2 + len(payload))
            buffer += field
            buffer += PACKET_ID.pack(mid)
            buffer += payload
            return mid
        buffer += fixed_header(PUBLISH_QOS0, len(field) + len(payload))
        buffer += field
        buffer += payload
        return 0

    def backlogged(self) -> bool:
        sock = self.sock
        return sock is not None and len(sock.buffer) >= MAX_BUFFERED_BYTES

    def buffered_bytes(self) -> int:
        return len(self.sock.buffer) if self.sock is not None else 0

    def read(self) -> bool:
        """Handle what the socket has; False when the connection turned out to be lost."""
        client, sock = self.client, self.sock
        if sock is None:
            return False
        while True:
            if self.takes_pubacks:
                # PUBACKs are taken here; paho reads whatever else came (errors and end of
                # stream included, which `fill` keeps for paho's next recv).
                if not sock.fill():
                    return True
                self.take_pubacks()
                if not sock.has_news():
                    return True
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                return False
            # Packets already read into our buffer raise no further socket event.
            if not sock.buffered_input():
                return True

    def take_pubacks(self) -> None:
        """Handle the complete PUBACKs at the front of the read buffer without going through paho.

        Only between packets (paho holds no partial one); anything else, or a PUBACK cut at the
        end of the buffer, is left to paho's `loop_read`. The receive time is recorded for
        paho's keep-alive, as its own read would.
        """
        client, sock = self.client, self.sock
        if sock is None or client._in_packet["command"] != 0:
            return
        data, position = sock.read_buffer, sock.read_position
        end = len(data) - 3
        if position >= end:
            return
        now = time.monotonic()
        on_ack = self.on_ack
        while position < end and data[position] == PUBACK_FIRST_BYTE and data[position + 1] == 2:
            on_ack((data[position + 2] << 8) | data[position + 3], now)
            position += 4
        if position != sock.read_position:
            sock.read_position = position
            client._last_bytes_received = now

    def write(self) -> bool | None:
        """Send what paho queued and the buffer; whether more remains, None when the connection broke."""
        client, sock = self.client, self.sock
        if sock is None:
            return None
        try:
            if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return None
            return not sock.flush()
        except OSError:
            return None

    def unsent(self) -> bool:
        return self.sock is not None and bool(self.sock.buffer)

    def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            if self.sock is not None:
                self.sock.flush()
            self.client.disconnect()  # paho sends DISCONNECT and closes the socket

    def close(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()  # type: ignore[union-attr]


# ---- the self-test ----------------------------------------------------------------------------


def fastpath_enabled(say: Callable[[str], None] | None = None) -> bool:
    """Run `self_test()`; when it finds a difference, say so in one line and return False."""
    problem = self_test()
    if problem is None:
        return True
    (say or _stderr)(
        f"warning: paho-mqtt {version('paho-mqtt')} is not what the fleet engine's fast path was"
        f" verified on ({problem}); publishing through plain paho instead (slower, same delivery)"
    )
    return False


def self_test() -> str | None:
    """None when paho's internals behave as `FastLink` expects, else what differs."""
    try:
        return _check_attributes() or _check_publish_framing() or _check_reading() or _check_writing()
    except Exception as error:  # any surprise inside paho is a reason to fall back, not to stop
        return f"{type(error).__name__}: {error}"


def _scratch_client() -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fastpath-self-test", protocol=mqtt.MQTTv311)


def _check_attributes() -> str | None:
    client = _scratch_client()
    in_packet = getattr(client, "_in_packet", None)
    if not isinstance(in_packet, dict) or in_packet.get("command") != 0 or "packet" not in in_packet:
        return "Client._in_packet is not a dict with 'command' 0 and 'packet'"
    if not callable(getattr(client, "_handle_pubackcomp", None)):
        return "Client._handle_pubackcomp is missing"
    if not isinstance(getattr(client, "_last_bytes_received", None), float):
        return "Client._last_bytes_received is not a float"
    if getattr(client, "_sock", False) is not None:
        return "Client._sock is not None before connect"
    # Our PUBACK times go into `_last_bytes_received`, which paho compares with its own clock.
    if getattr(mqtt, "time_func", None) is not time.monotonic:
        return "paho's keep-alive clock is not time.monotonic"
    return None


def _paho_publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    """The PUBLISH packet paho itself builds for this message (captured before its queue)."""
    client = _scratch_client()
    captured: list[bytes] = []

    def capture(command: int, packet: bytes | bytearray, *_: Any, **__: Any) -> MQTTErrorCode:
        captured.append(bytes(packet))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._sock = _ScriptedSocket([])  # type: ignore[assignment]
    client._packet_queue = capture  # type: ignore[method-assign]
    client._send_publish(mid, topic.encode(), payload, qos=qos)
    return captured[0]


def _check_publish_framing() -> str | None:
    topic = "factory/simulator/site-00/line-01/site-00-line-01-self-test"
    # Remaining lengths on both sides of the 1/2- and 2/3-byte boundaries (127, 16,383).
    for size in (0, 60, 200, 16_300, 16_400):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        for qos, mid in ((0, 0), (1, 1), (1, 65_535)):
            link = FastLink(_scratch_client(), _ignore_ack, qos, {})
            link.sock = CoalescingSocket(None)
            link.mid = mid - 1
            link.publish(topic, payload, qos)
            if bytes(link.sock.buffer) != _paho_publish_packet(topic, payload, qos, mid):
                return f"PUBLISH framing differs from paho's (QoS {qos}, {size}-byte payload)"
    return None


def _check_reading() -> str | None:
    """PUBACKs are taken from our read buffer, or by our handler when paho reads them itself."""

    def puback(mid: int) -> bytes:
        return bytes((PUBACK_FIRST_BYTE, 2)) + PACKET_ID.pack(mid)

    # The second PUBACK is cut after its fixed header, with nothing more to read for a moment.
    raw = _ScriptedSocket([puback(7) + puback(8)[:2], None, puback(8)[2:] + puback(9)])
    client = _scratch_client()
    acks: list[int] = []
    link = FastLink(client, lambda mid, now: acks.append(mid), 1, {})
    client._sock = raw  # type: ignore[assignment]
    if not link.attach() or client.socket() is not link.sock:
        return "socket() does not return the socket installed in Client._sock"
    if not link.read() or acks != [7]:
        return f"the PUBACK at the front of a read was not taken (acknowledged {acks})"
    if client._in_packet["command"] != PUBACK_FIRST_BYTE:
        return "Client._in_packet['command'] does not show the packet paho has begun to read"
    if not link.read() or acks != [7, 8, 9]:
        return f"paho's own PUBACK read did not reach the installed handler (acknowledged {acks})"
    if client._in_packet["command"] != 0:
        return "paho did not reset Client._in_packet['command'] after a packet"
    return None


def _check_writing() -> str | None:
    """paho writes its own packets whole through `_sock.send` and closes it after DISCONNECT."""
    raw = _ScriptedSocket([])
    client = _scratch_client()
    link = FastLink(client, _ignore_ack, 1, {})
    client._sock = raw  # type: ignore[assignment]
    link.attach()
    client.disconnect()
    if raw.sent != b"\xe0\x00" or not raw.closed:
        return f"DISCONNECT did not go through the installed socket (sent {bytes(raw.sent)!r})"
    return None


def _ignore_ack(mid: int, now: float) -> None:
    pass


class _ScriptedSocket:
    """A connected TLS socket as far as paho can tell: reads come from `chunks`, writes are kept."""

    def __init__(self, chunks: list[bytes | None]) -> None:
        self.chunks = list(chunks)  # None: nothing to read at that moment
        self.sent = bytearray()
        self.closed = False

    def recv(self, size: int) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else None
        if chunk is None:
            raise ssl.SSLWantReadError()
        return chunk

    def send(self, data: bytes | bytearray) -> int:
        self.sent += data
        return len(data)

    def pending(self) -> int:
        return 0

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- AWSIoTPythonSDK --------------------------------------------------------------------------

# `ClientStatus.STABLE` of AWSIoTPythonSDK.core.protocol.internal.clients: connected, resubscribed
# and its own offline queue drained. Publishing earlier lands in the SDK's offline queue, which
# keeps no ack callback.
_SDK_STABLE = 4


def sdk_client_stable(client: Any) -> bool | None:
    """Whether the SDK client's own status is STABLE; None when this SDK has no such status."""
    core = getattr(client, "_mqtt_core", None)
    status = getattr(core, "_client_status", None)
    if status is None:
        return None
    return bool(status.get_status() == _SDK_STABLE)


def sdk_send_backlog(client: Any) -> int:
    """QoS 0 packets the SDK's bundled paho has not written yet (it offers no public counter)."""
    try:
        return len(client._mqtt_core._internal_async_client._paho_client._out_packet)
    except AttributeError:
        return 0
