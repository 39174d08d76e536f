"""The `fleet` engine: every MQTT connection of the process driven by one selector loop.

paho-mqtt (the library AWSIoTPythonSDK is built on) offers external-loop calls: `loop_read` when
the socket is readable, `loop_write` while `want_write()`, `loop_misc` for keep-alive. The
scheduler's own thread runs that loop for all connections (`poll` instead of sleeping, `submit`
publishes at once while the window has room), which avoids both the two threads per client that
make the SDK stall at a few hundred clients and the GIL hand-offs a separate I/O thread would
cost on every message. A second thread only opens connections (TCP + TLS handshakes block),
with exponential backoff and jitter, and hands each connected client over through a queue.
paho keeps each connection (CONNECT, keep-alive, DISCONNECT, any packet but PUBACK); the
per-message work, framing PUBLISH packets and taking PUBACKs, is done by a `paho_fastpath.FastLink`
per connection, or by a `paho_link.PlainLink` (paho's public API) when the fast path's self-test
fails at start.

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
import threading
import time
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from factory_core.connection_plan import ConnectionPlan
from factory_core.errors import UsageError
from simulator.transport import paho_fastpath
from simulator.transport.paho_fastpath import FastLink
from simulator.transport.paho_link import CONNECTION_LOST, PUBLISHED, Link, PlainLink
from simulator.transport.publisher import (
    QOS0_SEND_BACKLOG,
    ConnectionStats,
    Publishable,
    Publisher,
    TokenBucket,
    TransportOptions,
    TransportSnapshot,
    drop_if_oversize,
    governor,
    merge_stats,
)
from simulator.transport.tls import ConnectRefused, client_ssl_context, describe_connect_error

MISC_INTERVAL_S = 1.0
POLL_EVERY_MESSAGES = 32
# A lingering buffer is sent early once it holds this much.
FLUSH_BYTES = 16 << 10
_DOWN, _CONNECTING, _UP, _CLOSED = "down", "connecting", "up", "closed"


class _Connection:
    __slots__ = (
        "attempts",
        "backoff_s",
        "bucket",
        "client_id",
        "ever_up",
        "fd",
        "index",
        "inflight",
        "last_error",
        "link",
        "lost",
        "pending",
        "qos",
        "send_seq",
        "state",
        "stats",
        "writing",
    )

    def __init__(
        self, index: int, client_id: str, bucket: TokenBucket | None, backoff_s: float, qos: int = 1
    ) -> None:
        self.index = index
        self.client_id = client_id
        self.link: Link | None = None  # while connecting or up
        self.fd: int | None = None
        self.state = _DOWN
        self.pending: deque[Publishable] = deque()
        # QoS 1: mid -> (send order, sent at, message); requeued in send order after a drop.
        # QoS 0 through plain paho: the messages paho has not written yet.
        self.inflight: dict[int, tuple[int, float, Publishable]] = {}
        self.send_seq = 0
        self.qos = qos
        self.stats = ConnectionStats()
        self.bucket = bucket
        self.backoff_s = backoff_s
        self.attempts = 0
        self.ever_up = False
        self.lost = False
        self.last_error: str | None = None
        self.writing = False  # registered for EVENT_WRITE

    def acknowledged(self, mid: int, now: float) -> None:
        """A PUBACK (QoS 1), or paho's write of a QoS 0 message, released `mid`."""
        entry = self.inflight.pop(mid, None)
        if entry is not None:  # None: a late PUBACK for a message already requeued after a drop
            if self.qos:
                self.stats.puback.observe(now - entry[1])
            self.stats.published[entry[2].kind] += 1


class FleetPublisher(Publisher):
    """paho-mqtt clients on one `selectors` loop."""

    def __init__(self, plan: ConnectionPlan, options: TransportOptions) -> None:
        super().__init__(plan, options)
        # One context for all connections, or one per connection when each has its own certificate.
        if options.cert_dir is None:
            self._contexts = [client_ssl_context(options)] * plan.connections
        else:
            self._contexts = [client_ssl_context(options, client_id) for client_id in plan.client_ids]
        # Checked once per process, before any connection: see paho_fastpath.
        self.fastpath = paho_fastpath.fastpath_enabled()
        self._link_type: type[FastLink] | type[PlainLink] = FastLink if self.fastpath else PlainLink
        # QoS 0 has no window; through plain paho it bounds the messages paho has not written.
        self._window = plan.window if options.qos else QOS0_SEND_BACKLOG
        self._connections = [
            _Connection(index, client_id, governor(options), options.reconnect_base_s, options.qos)
            for index, client_id in enumerate(plan.client_ids)
        ]
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._handoffs: deque[tuple[_Connection, Link | None, str | None]] = deque()
        # (not before, connection); None stops the connector
        self._connect_requests: queue.Queue[tuple[float, _Connection | None] | None] = queue.Queue()
        self._throttled: dict[int, float] = {}
        self._to_pump: set[int] = set()
        # connection index -> when its write buffer got its first unsent message
        self._unflushed: dict[int, float] = {}
        self._topic_fields: dict[str, bytes] = {}  # one per machine and message kind
        # Basic Ingest: each topic with its prefix, made once, so the fast path's cache sees one
        # string per topic; None (the usual case) costs the publish loop one test.
        self._prefixed: dict[str, str] | None = {} if options.topic_prefix else None
        self._closed = False
        self._first_result = False
        self._since_poll = 0
        self._next_misc = time.monotonic() + MISC_INTERVAL_S
        self._connector = threading.Thread(target=self._connect_loop, name="mqtt-connect", daemon=True)

    # ---- scheduler side -------------------------------------------------------------------

    def submit(self, connection: int, message: Publishable) -> None:
        conn = self._connections[connection]
        if drop_if_oversize(message, conn.stats):
            return
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
            len(c.pending) + len(c.inflight) + (1 if c.link is not None and c.link.unsent() else 0)
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
            fastpath=self.fastpath,
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
            _, link, _ = self._handoffs.popleft()
            if link is not None:
                link.close()
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
        client.tls_set_context(self._contexts[conn.index])
        client.connect_timeout = self.options.connect_timeout_s
        client.max_inflight_messages_set(max(self.plan.window, 1))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        link = self._link_type(client, conn.acknowledged, self.options.qos, self._topic_fields)
        try:
            client.connect(self.options.endpoint, self.options.port, keepalive=self.options.keepalive_s)
            if not link.attach():  # the broker hung up while CONNECT was being written
                raise ConnectRefused("closed while connecting")
        except (OSError, ValueError) as error:
            self._handoffs.append(
                (conn, None, describe_connect_error(error, self.options.endpoint, self.options.port))
            )
        else:
            self._handoffs.append((conn, link, None))
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
            self._adopt(*self._handoffs.popleft())
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
        link = conn.link
        if link is None:
            return
        if mask & selectors.EVENT_READ and (not link.read() or conn.lost):
            self._lost(conn)
            return
        if not self._watch_writes(conn):
            return
        if conn.state == _UP and conn.pending:
            to_pump.add(conn.index)

    def _watch_writes(self, conn: _Connection) -> bool:
        """Send what is queued; watch for writability while the kernel cannot take it all.

        Returns False (after handling the loss) when the connection turned out to be broken.
        """
        link = conn.link
        if link is None or conn.fd is None:
            return False
        wants = link.write()
        if wants is None:
            self._lost(conn)
            return False
        if wants != conn.writing:
            conn.writing = wants
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            self._selector.modify(conn.fd, events, conn)
        return True

    def _adopt(self, conn: _Connection, link: Link | None, error: str | None) -> None:
        if link is None:
            conn.last_error = error
            self._retry_later(conn)
            return
        sock = link.client.socket()
        if sock is None:
            conn.last_error = f"{self.options.endpoint}:{self.options.port} closed the connection"
            self._retry_later(conn)
            return
        conn.link = link
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

    def _on_disconnect(
        self, client: mqtt.Client, conn: _Connection, flags: Any, reason: Any, props: Any
    ) -> None:
        conn.lost = True

    def _pump(self, conn: _Connection, now: float) -> None:
        link = conn.link
        if conn.state != _UP or link is None:
            return
        qos = self.options.qos
        window = self._window
        inflight = conn.inflight
        pending = conn.pending
        bucket = conn.bucket
        published = conn.stats.published
        prefixed = self._prefixed
        while pending and len(inflight) < window:
            if qos == 0 and link.backlogged():
                break
            if bucket is not None and not bucket.take(now):
                self._throttled[conn.index] = bucket.ready_at(now)
                break
            message = pending.popleft()
            topic = message.topic
            if prefixed is not None:
                topic = prefixed.get(topic) or prefixed.setdefault(topic, self.options.topic_prefix + topic)
            mid = link.publish(topic, message.payload, qos)
            if mid > 0:
                conn.send_seq += 1
                inflight[mid] = (conn.send_seq, now, message)
            elif mid == PUBLISHED:
                published[message.kind] += 1
            else:
                pending.appendleft(message)
                if mid == CONNECTION_LOST:
                    conn.lost = True
                break
        if conn.lost or link.client.socket() is None:
            self._lost(conn)
        elif link.lingers:
            # Sent at the next poll once it has waited `linger_s` (or at once when that is 0), so
            # that messages for one connection share TLS records, syscalls and PUBACK reads.
            self._unflushed.setdefault(conn.index, now)
        else:
            self._watch_writes(conn)

    def _flush_due(self, now: float) -> None:
        # Insertion order is time order (setdefault keeps the first time), so the walk stops at
        # the first connection that may still linger.
        unflushed = self._unflushed
        if not unflushed:
            return
        linger = self.options.linger_s
        connections = self._connections
        for index, since in list(unflushed.items()):
            link = connections[index].link
            if link is None:  # lost meanwhile; its messages were put back in the queue
                del unflushed[index]
            elif linger <= 0 or now - since >= linger or link.buffered_bytes() >= FLUSH_BYTES:
                del unflushed[index]
                self._watch_writes(connections[index])
            else:
                break

    def _next_flush_in(self, now: float) -> float:
        for since in self._unflushed.values():
            return since + self.options.linger_s - now
        return MISC_INTERVAL_S

    def _misc(self) -> None:
        for conn in self._connections:
            if conn.link is not None and conn.fd is not None:
                client = conn.link.client
                client.loop_misc()
                if conn.lost or client.socket() is None:
                    self._lost(conn)
                else:
                    self._watch_writes(conn)

    def _lost(self, conn: _Connection) -> None:
        """Forget the client, put unacknowledged messages back in front, reconnect later."""
        if conn.fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.fd)
        link, conn.link, conn.fd = conn.link, None, None
        if link is not None:
            link.close()
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
            link = conn.link
            if link is None:
                continue
            if conn.state == _UP:
                link.disconnect()
            link.close()
            if conn.fd is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(conn.fd)
            conn.link, conn.fd, conn.state = None, None, _CLOSED
