"""The `sdk` engine: one AWSIoTPythonSDK `AWSIoTMQTTClient` per connection, `publishAsync` + window.

The SDK has no back-pressure of its own: a tight loop queues without bound and QoS 1 without a
window collapses. So each connection keeps the same bounded queue and PUBACK-released window as the
fleet engine; messages are handed to the SDK only while its client is STABLE (connected and done
draining). The SDK's own offline queue is configured small (DROP_OLDEST) and drained fast, since it
only catches the rare publish racing a disconnect. The SDK reconnects by itself with backoff, and
its bundled paho re-sends unacknowledged QoS 1 messages after a reconnect.

Threads: the scheduler (`submit`), each client's SDK callback threads (acks, online/offline) and
one pacing thread (resumes connections after an outage, a quota pause or a full QoS 0 backlog)
all go through the connection's lock.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from factory_core.connection_plan import ConnectionPlan
from factory_core.errors import UsageError
from simulator.transport.paho_fastpath import sdk_client_stable, sdk_send_backlog
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
from simulator.transport.tls import ConnectRefused, describe_connect_error

PACER_INTERVAL_S = 0.005


class _SdkConnection:
    def __init__(self, index: int, client_id: str, bucket: TokenBucket | None) -> None:
        self.index = index
        self.client_id = client_id
        self.client: Any = None
        self.lock = threading.Lock()  # counters; never held across an SDK call
        self.pump_lock = threading.Lock()
        self.pending: deque[Publishable] = deque()
        self.inflight = 0
        self.stats = ConnectionStats()
        self.bucket = bucket
        self.paused_until = 0.0
        self.online = False
        self.ever_online = False
        self.offline_seen = threading.Event()
        self.connack = threading.Event()
        # Set when the first connect failed: the pacer retries it (the SDK only reconnects
        # clients that connected once).
        self.retry_at: float | None = None
        self.backoff_s = 1.0

    def stable(self) -> bool:
        """Connected and done draining: a publish made earlier lands in the SDK's offline queue."""
        if self.client is None:
            return False
        stable = sdk_client_stable(self.client)
        if stable is None:  # a future SDK without the attribute: trust the callbacks
            return self.online
        return stable

    def out_packet_backlog(self) -> int:
        return 0 if self.client is None else sdk_send_backlog(self.client)


class SdkPublisher(Publisher):
    """AWSIoTPythonSDK clients, one per planned connection."""

    def __init__(self, plan: ConnectionPlan, options: TransportOptions) -> None:
        super().__init__(plan, options)
        # The SDK logs every publish at INFO, and its connect failures at ERROR through Python's
        # last-resort handler, which would add a second line to our one-line error. Its failures
        # reach us as exceptions and are reported once, so its own log is dropped.
        sdk_logger = logging.getLogger("AWSIoTPythonSDK")
        sdk_logger.setLevel(logging.CRITICAL)
        if not any(isinstance(h, logging.NullHandler) for h in sdk_logger.handlers):
            sdk_logger.addHandler(logging.NullHandler())
        sdk_logger.propagate = False
        self._connections = [
            _SdkConnection(index, client_id, governor(options))
            for index, client_id in enumerate(plan.client_ids)
        ]
        self._closing = threading.Event()
        self._pacer = threading.Thread(target=self._pace, name="sdk-pacer", daemon=True)

    def _make_client(self, conn: _SdkConnection) -> Any:
        from AWSIoTPythonSDK.MQTTLib import DROP_OLDEST, AWSIoTMQTTClient

        options = self.options
        client = AWSIoTMQTTClient(conn.client_id, cleanSession=True)
        client.configureEndpoint(options.endpoint, options.port)
        cert_path, key_path = options.credentials(conn.client_id)
        client.configureCredentials(str(options.ca_path), str(key_path), str(cert_path))
        # stable (20 s) must exceed base: a connection that stays up that long resets the backoff.
        client.configureAutoReconnectBackoffTime(
            int(options.reconnect_base_s), int(options.reconnect_max_s), 20
        )
        client.configureOfflinePublishQueueing(max(1, self.plan.window), DROP_OLDEST)
        # The default is 2 msg/s; drain at the quota instead.
        client.configureDrainingFrequency(options.rate_limit_per_connection or 1_000)
        client.configureConnectDisconnectTimeout(int(options.connect_timeout_s))
        client.configureMQTTOperationTimeout(5)
        client.onOnline = lambda: self._on_online(conn)
        client.onOffline = lambda: self._on_offline(conn)
        return client

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        first = self._connections[0]
        self._connect(first, timeout_s)
        rest = self._connections[1:]
        if rest:
            # Each SDK connect blocks for its handshake and CONNACK; a few at a time.
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda c: self._try_connect(c, timeout_s), rest))
        self._pacer.start()

    def _try_connect(self, conn: _SdkConnection, timeout_s: float) -> str | None:
        try:
            self._connect(conn, timeout_s)
        except UsageError as error:
            conn.stats.fail("connect_error")
            conn.client = None
            conn.retry_at = time.monotonic() + conn.backoff_s * random.uniform(0.5, 1.0)
            conn.backoff_s = min(self.options.reconnect_max_s, conn.backoff_s * 2)
            return str(error)
        conn.retry_at = None
        return None

    def _connect(self, conn: _SdkConnection, timeout_s: float) -> None:
        conn.client = self._make_client(conn)
        where = (self.options.endpoint, self.options.port)
        try:
            conn.client.connectAsync(self.options.keepalive_s, ackCallback=lambda mid, data=None:
                                     conn.connack.set())
        except Exception as error:  # the SDK re-raises socket and SSL errors as they come
            if type(error).__module__.startswith("AWSIoTPythonSDK"):
                # Its own connectError carries only paho's return code: the TLS handshake was
                # rejected before MQTT began, which is what ConnectRefused explains.
                error = ConnectRefused(str(error))
            raise UsageError(describe_connect_error(error, *where)) from None
        deadline = time.monotonic() + timeout_s
        while not conn.connack.is_set():
            if conn.offline_seen.is_set() or time.monotonic() >= deadline:
                self._abandon(conn)
                if conn.offline_seen.is_set():
                    raise UsageError(describe_connect_error(ConnectRefused("closed"), *where))
                raise UsageError(
                    f"cannot connect to {where[0]}:{where[1]}: no CONNACK within {timeout_s:g} s;"
                    " check --endpoint/--port and the client certificate"
                )
            conn.connack.wait(0.01)

    def _abandon(self, conn: _SdkConnection) -> None:
        with contextlib.suppress(Exception):
            conn.client.disconnectAsync()

    def close(self, drain: bool = True) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        if self._pacer.is_alive():
            self._pacer.join(timeout=5.0)

        def disconnect(conn: _SdkConnection) -> None:
            if conn.client is not None and conn.ever_online:
                with contextlib.suppress(Exception):
                    conn.client.disconnect()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(disconnect, self._connections))
        for conn in self._connections:
            with conn.lock:
                left = len(conn.pending) + conn.inflight
                if left:
                    conn.stats.fail("shutdown", left)
                conn.pending.clear()
                conn.inflight = 0

    # ---- callbacks --------------------------------------------------------------------------

    def _on_online(self, conn: _SdkConnection) -> None:
        with conn.lock:
            if conn.ever_online:
                conn.stats.reconnects += 1
            conn.ever_online = True
            conn.online = True

    def _on_offline(self, conn: _SdkConnection) -> None:
        conn.online = False
        conn.offline_seen.set()

    def _acked(self, conn: _SdkConnection, sent_at: float, kind: str) -> None:
        now = time.monotonic()
        with conn.lock:
            conn.inflight -= 1
            conn.stats.published[kind] += 1
            conn.stats.puback.observe(now - sent_at)
        self._pump(conn, now)

    # ---- publishing -------------------------------------------------------------------------

    def submit(self, connection: int, message: Publishable) -> None:
        conn = self._connections[connection]
        if drop_if_oversize(message, conn.stats):
            return
        conn.pending.append(message)
        if len(conn.pending) > self.options.queue_limit_per_connection:
            with contextlib.suppress(IndexError):
                conn.pending.popleft()
                conn.stats.dropped_queue_full += 1
        self._pump(conn, time.monotonic())

    def _can_send(self, conn: _SdkConnection, now: float) -> bool:
        if self._closing.is_set() or now < conn.paused_until or not conn.pending:
            return False
        if self.options.qos == 1:
            return conn.inflight < self.plan.window and conn.stable()
        return conn.out_packet_backlog() < QOS0_SEND_BACKLOG and conn.stable()

    def _pump(self, conn: _SdkConnection, now: float) -> None:
        """Hand queued messages to the SDK while the window has room.

        Only one thread pumps a connection at a time, and nobody holds `conn.lock` across
        `publishAsync`: the SDK calls our ack callback from a thread that its network thread may
        be waiting on, so a callback must never wait for a thread that is inside the SDK. The
        re-check after releasing the pump lock catches a slot freed while we were finishing.
        """
        while self._can_send(conn, now):
            if not conn.pump_lock.acquire(blocking=False):
                return
            try:
                self._send_locked(conn, now)
            finally:
                conn.pump_lock.release()
            now = time.monotonic()

    def _send_locked(self, conn: _SdkConnection, now: float) -> None:
        qos = self.options.qos
        client = conn.client
        while self._can_send(conn, now):
            if conn.bucket is not None and not conn.bucket.take(now):
                conn.paused_until = conn.bucket.ready_at(now)
                return
            try:
                message = conn.pending.popleft()
            except IndexError:
                return
            kind = message.kind
            try:
                if qos == 1:
                    with conn.lock:
                        conn.inflight += 1
                    mid = client.publishAsync(
                        self.options.topic_prefix + message.topic, message.payload, 1,
                        ackCallback=lambda mid, data=None, sent=now, kind=kind: self._acked(conn, sent, kind),
                    )
                    if not isinstance(mid, int) or mid <= 0:
                        # Went into the SDK's offline queue, which keeps no ack callback: the SDK
                        # delivers it after the reconnect; count it as handed over.
                        with conn.lock:
                            conn.inflight -= 1
                            conn.stats.published[kind] += 1
                else:
                    client.publishAsync(self.options.topic_prefix + message.topic, message.payload, 0)
                    with conn.lock:
                        conn.stats.published[kind] += 1
            except Exception:  # publishError / publishQueueFull*: keep the message, retry soon
                with conn.lock:
                    if qos == 1:
                        conn.inflight -= 1
                    conn.stats.fail("publish_error")
                conn.pending.appendleft(message)
                conn.paused_until = now + 0.1
                return

    def _pace(self) -> None:
        while not self._closing.wait(PACER_INTERVAL_S):
            now = time.monotonic()
            for conn in self._connections:
                if conn.retry_at is not None and now >= conn.retry_at:
                    conn.connack.clear()
                    conn.offline_seen.clear()
                    self._try_connect(conn, self.options.connect_timeout_s)
                elif conn.pending and now >= conn.paused_until:
                    self._pump(conn, now)

    # ---- introspection ----------------------------------------------------------------------

    def queued(self, connection: int) -> int:
        return len(self._connections[connection].pending)

    def unsent(self) -> int:
        total = 0
        for conn in self._connections:
            total += len(conn.pending) + conn.inflight
            if self.options.qos == 0 and conn.client is not None:
                total += conn.out_packet_backlog()
        return total

    def snapshot(self) -> TransportSnapshot:
        conns = self._connections
        return merge_stats(
            [c.stats for c in conns],
            planned=len(conns),
            up=sum(1 for c in conns if c.online),
            inflight=sum(c.inflight for c in conns),
            queued=sum(len(c.pending) for c in conns),
        )
