"""The `fleet` engine: every MQTT connection of the process driven by one selector loop.

paho-mqtt (the library AWSIoTPythonSDK is built on) offers external-loop calls: `loop_read` when
the socket is readable, `loop_write` while `want_write()`, `loop_misc` for keep-alive. The
scheduler's own thread runs that loop for all connections (`poll` instead of sleeping, `submit`
publishes at once while the window has room), which avoids both the two threads per client that
make the SDK stall at a few hundred clients and the GIL hand-offs a separate I/O thread would
cost on every message. A second thread only opens connections (TCP + TLS handshakes block),
with exponential backoff and jitter, and hands each connected client over through a queue.
paho keeps each connection (CONNECT, keep-alive, DISCONNECT, any packet but PUBACK); the
per-message work, framing PUBLISH packets and taking PUBACKs, is done here (see `_pump` and
`_take_pubacks`): paho's per-message objects and calls were a third of the CPU at QoS 0.

Threads: the scheduler thread owns every connected client, queue, in-flight map and counter;
the connector owns a client until it hands it over; the metrics thread only reads lengths.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import random
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from factory_core.connection_plan import ConnectionPlan
from factory_core.errors import UsageError
from simulator.transport.publisher import (
    ConnectionStats,
    Publishable,
    Publisher,
    TokenBucket,
    TransportOptions,
    TransportSnapshot,
    governor,
    merge_stats,
)
from simulator.transport.tls import ConnectRefused, client_ssl_context, describe_connect_error

MISC_INTERVAL_S = 1.0
POLL_EVERY_MESSAGES = 32
# QoS 0 has no acknowledgement to wait for: stop handing paho messages while this much is unsent.
MAX_BUFFERED_BYTES = 1 << 20
READ_CHUNK_BYTES = 1 << 16
# A lingering buffer is sent early once it holds this much.
FLUSH_BYTES = 16 << 10
_DOWN, _CONNECTING, _UP, _CLOSED = "down", "connecting", "up", "closed"


class _CoalescingSocket:
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


_MID = struct.Struct("!H")


_PUBLISH_QOS0 = 0x30  # PUBLISH fixed header: type 3, no DUP, QoS in bits 1-2, no RETAIN
_PUBLISH_QOS1 = 0x32
_MAX_MID = 65535


def _topic_field(topic: str) -> bytes:
    """A PUBLISH topic name as MQTT frames it (length-prefixed UTF-8), checked as paho checks it."""
    encoded = topic.encode()
    if not encoded or len(encoded) > 65535 or b"+" in encoded or b"#" in encoded:
        raise ValueError(f"invalid topic to publish to: {topic!r}")
    return _MID.pack(len(encoded)) + encoded


def _fixed_header(first_byte: int, remaining: int) -> bytes:
    """Packet type byte and the variable-length "remaining length" of MQTT 3.1.1."""
    header = bytearray((first_byte,))
    while True:
        digit, remaining = remaining & 0x7F, remaining >> 7
        header.append(digit | 0x80 if remaining else digit)
        if not remaining:
            return bytes(header)


def _install_puback_handler(client: mqtt.Client, conn: _Connection) -> bool:
    """Take over PUBACK handling for the PUBLISH packets `_pump` frames itself; True if installed.

    Those packets never pass through paho, so its PUBACK handler would find no message to release
    (and it builds a ReasonCode and a Properties object per PUBACK, even on MQTT 3.1.1, where a
    PUBACK is just a packet id). This handler releases the window slot in `conn.inflight` and
    counts the message. It relies on paho 2.x internals (verified on 2.2); when they are missing,
    it returns False and the connection publishes through paho's `publish` instead.
    """
    required = ("_in_packet", "_handle_pubackcomp", "_last_bytes_received")
    if not all(hasattr(client, name) for name in required):
        return False
    generic = client._handle_pubackcomp

    def handle(cmd: str) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return generic(cmd)  # type: ignore[arg-type]
        (mid,) = _MID.unpack(packet)
        _acknowledged(conn, mid, time.monotonic())
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = handle  # type: ignore[method-assign]
    return True


def _acknowledged(conn: _Connection, mid: int, now: float) -> None:
    entry = conn.inflight.pop(mid, None)
    if entry is not None:  # None: a late PUBACK for a message already requeued after a drop
        conn.stats.puback.observe(now - entry[1])
        conn.stats.published[entry[2].kind] += 1


def _take_pubacks(client: mqtt.Client, conn: _Connection, sock: _CoalescingSocket) -> None:
    """Handle the complete PUBACKs at the front of the read buffer without going through paho.

    paho reads a packet in three `recv` calls and dispatches it through several layers; PUBACKs
    (4 bytes each, MQTT 3.1.1) are most of what a publishing connection receives, and that was a
    seventh of the CPU at 16,000 msg/s. Only between packets (paho holds no partial one); anything
    else, or a PUBACK cut at the end of the buffer, is left to paho's `loop_read`. The receive
    time is recorded for paho's keep-alive, as its own read would.
    """
    if client._in_packet["command"] != 0:
        return
    data, position = sock.read_buffer, sock.read_position
    end = len(data) - 3
    if position >= end:
        return
    now = time.monotonic()
    while position < end and data[position] == 0x40 and data[position + 1] == 2:
        _acknowledged(conn, (data[position + 2] << 8) | data[position + 3], now)
        position += 4
    if position != sock.read_position:
        sock.read_position = position
        client._last_bytes_received = now


class _Connection:
    __slots__ = (
        "attempts",
        "backoff_s",
        "bucket",
        "client",
        "client_id",
        "direct",
        "ever_up",
        "fd",
        "index",
        "inflight",
        "last_error",
        "lost",
        "mid",
        "pending",
        "send_seq",
        "socket",
        "state",
        "stats",
        "writing",
    )

    def __init__(self, index: int, client_id: str, bucket: TokenBucket | None, backoff_s: float) -> None:
        self.index = index
        self.client_id = client_id
        self.client: mqtt.Client | None = None
        self.fd: int | None = None
        self.socket: _CoalescingSocket | None = None
        self.state = _DOWN
        self.pending: deque[Publishable] = deque()
        # QoS 1: mid -> (send order, sent at, message); requeued in send order after a drop.
        self.inflight: dict[int, tuple[int, float, Publishable]] = {}
        self.send_seq = 0
        # True: `_pump` frames PUBLISH packets itself (see there); False: through paho's publish.
        self.direct = False
        self.mid = 0  # last packet id framed by `_pump`
        self.stats = ConnectionStats()
        self.bucket = bucket
        self.backoff_s = backoff_s
        self.attempts = 0
        self.ever_up = False
        self.lost = False
        self.last_error: str | None = None
        self.writing = False  # registered for EVENT_WRITE


class FleetPublisher(Publisher):
    """paho-mqtt clients on one `selectors` loop."""

    def __init__(self, plan: ConnectionPlan, options: TransportOptions) -> None:
        super().__init__(plan, options)
        self._context = client_ssl_context(options)
        self._window = plan.window
        self._connections = [
            _Connection(index, client_id, governor(options), options.reconnect_base_s)
            for index, client_id in enumerate(plan.client_ids)
        ]
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._handoffs: deque[tuple[_Connection, mqtt.Client | None, str | None]] = deque()
        # (not before, connection); None stops the connector
        self._connect_requests: queue.Queue[tuple[float, _Connection | None] | None] = queue.Queue()
        self._throttled: dict[int, float] = {}
        self._to_pump: set[int] = set()
        # connection index -> when its write buffer got its first unsent message
        self._unflushed: dict[int, float] = {}
        self._topic_fields: dict[str, bytes] = {}  # one per machine and message kind
        self._closed = False
        self._first_result = False
        self._since_poll = 0
        self._next_misc = time.monotonic() + MISC_INTERVAL_S
        self._connector = threading.Thread(target=self._connect_loop, name="mqtt-connect", daemon=True)

    # ---- scheduler side -------------------------------------------------------------------

    def submit(self, connection: int, message: Publishable) -> None:
        conn = self._connections[connection]
        pending = conn.pending
        pending.append(message)
        if len(pending) > self.options.queue_limit_per_connection:
            pending.popleft()
            conn.stats.dropped_queue_full += 1
        self._pump(conn, time.monotonic())
        self._since_poll += 1
        if self._since_poll >= POLL_EVERY_MESSAGES:
            # Even a scheduler that is behind and never sleeps must read PUBACKs.
            self.poll(0.0)

    def queued(self, connection: int) -> int:
        return len(self._connections[connection].pending)

    def unsent(self) -> int:
        # A write buffer not yet taken by the kernel counts as one: flush() must wait for it too.
        return sum(
            len(c.pending) + len(c.inflight) + (1 if c.socket is not None and c.socket.buffer else 0)
            for c in self._connections
        )

    def snapshot(self) -> TransportSnapshot:
        conns = self._connections
        return merge_stats(
            [c.stats for c in conns],
            planned=len(conns),
            up=sum(1 for c in conns if c.state == _UP),
            inflight=sum(len(c.inflight) for c in conns),
            queued=sum(len(c.pending) for c in conns),
        )

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        self._connector.start()
        first = self._connections[0]
        # The first connection alone proves the endpoint, the CA and the client certificate; the
        # others are opened after it, so a wrong endpoint is one clear error, not N retries.
        self._connect_requests.put((0.0, first))
        deadline = time.monotonic() + timeout_s
        while not self._first_result and time.monotonic() < deadline:
            self.poll(0.05)
        if first.state != _UP:
            error = first.last_error or (
                f"cannot connect to {self.options.endpoint}:{self.options.port}: no CONNACK within"
                f" {timeout_s:g} s; check --endpoint/--port"
            )
            self.close()
            raise UsageError(error)
        for conn in self._connections[1:]:
            self._connect_requests.put((0.0, conn))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(c.state != _UP for c in self._connections):
            self.poll(0.05)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._connect_requests.put(None)
        if self._connector.is_alive():
            self._connector.join(timeout=15.0)
        while self._handoffs:
            conn, client, _ = self._handoffs.popleft()
            if client is not None and client.socket() is not None:
                client.socket().close()  # type: ignore[union-attr]
        self._disconnect_all()
        for conn in self._connections:
            left = len(conn.pending) + len(conn.inflight)
            if left:
                conn.stats.fail("shutdown", left)
                conn.pending.clear()
                conn.inflight.clear()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # ---- connector thread -------------------------------------------------------------------

    def _connect_loop(self) -> None:
        due: list[tuple[float, int, _Connection]] = []
        while not self._closed:
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
            try:
                request = self._connect_requests.get(timeout=timeout)
            except queue.Empty:  # the earliest retry is due
                request = (0.0, None)
            if request is None:
                return
            at, requested = request
            if requested is not None:
                heapq.heappush(due, (at, requested.index, requested))
            while due and due[0][0] <= time.monotonic() and not self._closed:
                _, _, conn = heapq.heappop(due)
                self._open(conn)

    def _open(self, conn: _Connection) -> None:
        conn.attempts += 1
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=conn.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            userdata=conn,
        )
        client.tls_set_context(self._context)
        client.connect_timeout = self.options.connect_timeout_s
        client.max_inflight_messages_set(max(self.plan.window, 1))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        if self.options.qos == 1:
            conn.direct = _install_puback_handler(client, conn)
            if not conn.direct:
                client.on_publish = self._on_publish
        else:
            # No callback (paho would build a ReasonCode and Properties per message): a message
            # counts as published once it is in the write buffer, whose size is the back-pressure.
            conn.direct = True
        try:
            client.connect(self.options.endpoint, self.options.port, keepalive=self.options.keepalive_s)
            if client._sock is None:  # the broker hung up while CONNECT was being written
                raise ConnectRefused("closed while connecting")
            # CONNECT went out unbuffered inside connect(); everything after goes through flush().
            client._sock = _CoalescingSocket(client._sock)
        except (OSError, ValueError) as error:
            self._handoffs.append(
                (conn, None, describe_connect_error(error, self.options.endpoint, self.options.port))
            )
        else:
            self._handoffs.append((conn, client, None))
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    # ---- I/O, in the scheduler's thread ----------------------------------------------------

    def poll(self, timeout_s: float) -> None:
        """One round of the selector loop: wait up to timeout_s for socket events and handle them."""
        if self._closed:
            if timeout_s > 0:
                time.sleep(timeout_s)
            return
        self._since_poll = 0
        now = time.monotonic()
        self._flush_due(now)
        if self._throttled:
            timeout_s = min(timeout_s, min(self._throttled.values()) - now)
        timeout_s = min(timeout_s, self._next_misc - now, self._next_flush_in(now))
        to_pump = self._to_pump
        for key, mask in self._selector.select(max(0.0, timeout_s)):
            conn = key.data
            if conn is None:
                self._drain_wake()
            else:
                self._service(conn, mask, to_pump)
        while self._handoffs:
            self._adopt(*self._handoffs.popleft(), to_pump)
        now = time.monotonic()
        if self._throttled:
            for index, ready_at in list(self._throttled.items()):
                if ready_at <= now:
                    del self._throttled[index]
                    to_pump.add(index)
        if to_pump:
            for index in to_pump:
                self._pump(self._connections[index], now)
            to_pump.clear()
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            self._misc()
        self._flush_due(now)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(4096):
                pass

    def _service(self, conn: _Connection, mask: int, to_pump: set[int]) -> None:
        client = conn.client
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            sock = conn.socket
            fast_pubacks = conn.direct and self.options.qos == 1
            while True:
                if fast_pubacks and sock is not None:
                    # PUBACKs are taken here; paho reads whatever else came (errors and end of
                    # stream included, which `fill` keeps for paho's next recv).
                    if not sock.fill():
                        break
                    _take_pubacks(client, conn, sock)
                    if not sock.has_news():
                        break
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or conn.lost:
                    self._lost(conn)
                    return
                # Packets already read into our buffer raise no further socket event.
                sock = conn.socket
                if sock is None or not sock.buffered_input():
                    break
        if not self._watch_writes(conn):
            return
        if conn.state == _UP and conn.pending:
            to_pump.add(conn.index)

    def _watch_writes(self, conn: _Connection) -> bool:
        """Send the coalesced buffer; watch for writability while the kernel cannot take it all.

        Returns False (after handling the loss) when the connection turned out to be broken.
        """
        client, sock = conn.client, conn.socket
        if client is None or sock is None or conn.fd is None:
            return False
        try:
            if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(conn)
                return False
            wants = not sock.flush()
        except OSError:
            self._lost(conn)
            return False
        if wants != conn.writing:
            conn.writing = wants
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            self._selector.modify(conn.fd, events, conn)
        return True

    def _adopt(
        self, conn: _Connection, client: mqtt.Client | None, error: str | None, to_pump: set[int]
    ) -> None:
        if client is None:
            conn.last_error = error
            self._retry_later(conn)
            return
        sock = client.socket()
        if sock is None:
            conn.last_error = f"{self.options.endpoint}:{self.options.port} closed the connection"
            self._retry_later(conn)
            return
        conn.client = client
        conn.socket = sock  # type: ignore[assignment]
        conn.fd = sock.fileno()
        conn.lost = False
        conn.state = _CONNECTING
        conn.writing = False
        self._selector.register(conn.fd, selectors.EVENT_READ, conn)
        self._watch_writes(conn)

    def _on_connect(
        self, client: mqtt.Client, conn: _Connection, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            conn.last_error = (
                f"{self.options.endpoint}:{self.options.port} refused the MQTT connection of"
                f" {conn.client_id}: {reason}; check the certificate's policy and the client id prefix"
            )
            conn.lost = True
            return
        conn.state = _UP
        conn.backoff_s = self.options.reconnect_base_s
        if conn.ever_up:
            conn.stats.reconnects += 1
        conn.ever_up = True
        conn.last_error = None
        if conn.index == 0:
            self._first_result = True
        self._to_pump.add(conn.index)

    def _on_publish(self, client: mqtt.Client, conn: _Connection, mid: int, reason: Any, props: Any) -> None:
        entry = conn.inflight.pop(mid, None)
        if entry is None:
            return
        conn.stats.puback.observe(time.monotonic() - entry[1])
        conn.stats.published[entry[2].kind] += 1

    def _on_disconnect(
        self, client: mqtt.Client, conn: _Connection, flags: Any, reason: Any, props: Any
    ) -> None:
        conn.lost = True

    def _pump(self, conn: _Connection, now: float) -> None:
        if conn.state != _UP or conn.client is None:
            return
        client = conn.client
        qos = self.options.qos
        window = self._window
        inflight = conn.inflight
        pending = conn.pending
        bucket = conn.bucket
        direct, sock = conn.direct, conn.socket
        if sock is None:
            direct = False  # cannot happen while up; paho's publish reports the lost connection
        buffer = sock.buffer if sock is not None else bytearray()
        topics = self._topic_fields
        published = conn.stats.published
        while pending and (qos == 0 or len(inflight) < window):
            if qos == 0 and self._buffer_full(conn):
                break
            if bucket is not None and not bucket.take(now):
                self._throttled[conn.index] = bucket.ready_at(now)
                break
            message = pending.popleft()
            if direct:
                assert sock is not None
                # Framed here rather than by `client.publish`, which per message builds an
                # MQTTMessageInfo with a threading.Condition, re-validates and re-encodes the
                # topic and queues the packet for `loop_write`: a third of the process's CPU at
                # QoS 0. paho still owns CONNECT, keep-alive, reading and DISCONNECT; its own
                # packets go into this same write buffer, whole, so the two never interleave.
                topic = topics.get(message.topic) or self._topic_field(message.topic)
                payload = message.payload
                if qos == 1:
                    conn.mid = mid = conn.mid + 1 if conn.mid < _MAX_MID else 1
                    buffer += _fixed_header(_PUBLISH_QOS1, len(topic) + 2 + len(payload))
                    buffer += topic
                    buffer += _MID.pack(mid)
                    buffer += payload
                    conn.send_seq += 1
                    inflight[mid] = (conn.send_seq, now, message)
                else:
                    buffer += _fixed_header(_PUBLISH_QOS0, len(topic) + len(payload))
                    buffer += topic
                    buffer += payload
                    published[message.kind] += 1
                continue
            info = client.publish(message.topic, message.payload, qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                pending.appendleft(message)
                if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
                    conn.lost = True
                break
            if qos == 1:
                conn.send_seq += 1
                inflight[info.mid] = (conn.send_seq, now, message)
            else:
                published[message.kind] += 1
        if conn.lost or conn.client is None or conn.client.socket() is None:
            self._lost(conn)
            return
        # Sent at the next poll once it has waited `linger_s` (or at once when that is 0), so
        # that messages for one connection share TLS records, syscalls and PUBACK reads.
        self._unflushed.setdefault(conn.index, now)

    def _flush_due(self, now: float) -> None:
        # Insertion order is time order (setdefault keeps the first time), so the walk stops at
        # the first connection that may still linger.
        unflushed = self._unflushed
        if not unflushed:
            return
        linger = self.options.linger_s
        connections = self._connections
        for index, since in list(unflushed.items()):
            sock = connections[index].socket
            if sock is None:  # lost meanwhile; its messages were put back in the queue
                del unflushed[index]
            elif linger <= 0 or now - since >= linger or len(sock.buffer) >= FLUSH_BYTES:
                del unflushed[index]
                self._watch_writes(connections[index])
            else:
                break

    def _next_flush_in(self, now: float) -> float:
        for since in self._unflushed.values():
            return since + self.options.linger_s - now
        return MISC_INTERVAL_S

    def _topic_field(self, topic: str) -> bytes:
        field = self._topic_fields[topic] = _topic_field(topic)
        return field

    def _buffer_full(self, conn: _Connection) -> bool:
        sock = conn.socket
        return sock is not None and len(sock.buffer) >= MAX_BUFFERED_BYTES

    def _misc(self) -> None:
        for conn in self._connections:
            if conn.client is not None and conn.fd is not None:
                conn.client.loop_misc()
                if conn.lost or conn.client.socket() is None:
                    self._lost(conn)
                else:
                    self._watch_writes(conn)

    def _lost(self, conn: _Connection) -> None:
        """Forget the client, put unacknowledged messages back in front, reconnect later."""
        if conn.fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.fd)
        client, conn.client, conn.fd, conn.socket = conn.client, None, None, None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()  # type: ignore[union-attr]
        if conn.inflight:
            # At least once: the broker may have got some of these; QoS 1 allows the duplicates.
            resend = [entry[2] for entry in sorted(conn.inflight.values(), key=lambda item: item[0])]
            conn.inflight.clear()
            conn.pending.extendleft(reversed(resend))
        was_up = conn.state == _UP
        conn.state = _DOWN
        conn.writing = False
        conn.lost = False
        if not conn.ever_up and conn.index == 0:
            if conn.last_error is None:
                conn.last_error = describe_connect_error(
                    ConnectRefused("closed before CONNACK"), self.options.endpoint, self.options.port
                )
            self._first_result = True
            return
        if was_up:
            conn.last_error = "connection lost"
        self._retry_later(conn)

    def _retry_later(self, conn: _Connection) -> None:
        if not conn.ever_up and conn.index == 0:
            self._first_result = True
            return
        if self._closed:
            return
        # Full jitter: a broker restart must not see every connection come back in the same instant
        # (AWS allows 1 connect/s per client id and 500 connects/s per account).
        delay = random.uniform(0.5, 1.0) * conn.backoff_s
        conn.backoff_s = min(self.options.reconnect_max_s, conn.backoff_s * 2)
        self._connect_requests.put((time.monotonic() + delay, conn))

    def _disconnect_all(self) -> None:
        for conn in self._connections:
            client = conn.client
            if client is None:
                continue
            if conn.state == _UP:
                with contextlib.suppress(Exception):
                    if conn.socket is not None:
                        conn.socket.flush()
                    client.disconnect()  # paho sends DISCONNECT and closes the socket
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()  # type: ignore[union-attr]
            if conn.fd is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(conn.fd)
            conn.client, conn.fd, conn.socket, conn.state = None, None, None, _CLOSED
