"""The rule runner's MQTT session: a persistent-session QoS 1 subscriber over mutual TLS.

paho handles every packet through several Python calls, an `MQTTMessage`, topic matching and one
TLS write per acknowledgement; profiled at QoS 1 that was ~60 % of the runner's CPU (a bare paho
subscriber that only counts drains ~25k msg/s here). So the runner speaks the small part of MQTT
3.1.1 it needs itself (framing: `factory_core.mqtt_wire`): CONNECT with clean session off and a
fixed client id, SUBSCRIBE at QoS 1, PUBLISH in, PUBACK/PINGREQ/DISCONNECT out. It reads up to
256 KiB per TLS read and sends a written batch's PUBACKs as one buffer.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence

from factory_core.errors import UsageError
from factory_core.mqtt_wire import (
    CONNACK,
    CONNACK_REFUSALS,
    DISCONNECT,
    MAX_PACKET_ID,
    PINGREQ,
    SUBACK,
    Control,
    MalformedPacket,
    Publish,
    connect_packet,
    parse_packets,
    puback_bytes,
    subscribe_packet,
)
from local_stack.identities import RULE_RUNNER_IDENTITY
from simulator.transport.tls import describe_connect_error

log = logging.getLogger("iotfactory.rule_runner")

READ_CHUNK_BYTES = 1 << 18
# Parse at most this much per `read()`: bounds the time between flush checks when a backlog floods in.
MAX_READ_BYTES = 4 << 20


class ConnectionLost(Exception):
    """The broker connection ended (closed, reset, or silent past the keep-alive)."""


class BrokerRefused(Exception):
    """The broker answered CONNECT or SUBSCRIBE with a refusal; the message says which."""


class SubscriberSession:
    """One MQTT 3.1.1 subscriber connection over TLS, cut down to what the rule runner needs.

    Everything runs on the caller's thread and never blocks longer than asked: `read()` returns
    the PUBLISHes that arrived, `ack()` queues PUBACKs, `send_pending()` writes what the socket
    takes, `keepalive()` pings when idle and notices a missing PINGRESP.
    """

    def __init__(
        self, endpoint: str, port: int, context: ssl.SSLContext, client_id: str, keepalive_s: int
    ) -> None:
        self.endpoint = endpoint
        self.port = port
        self.context = context
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self._sock: ssl.SSLSocket | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._publishes: list[Publish] = []
        self._control: list[Control] = []
        self._topics: dict[bytes, str] = {}
        self._last_sent = 0.0
        self._ping_sent_at = 0.0  # 0: no PINGREQ outstanding
        self._next_mid = 0
        self.ever_connected = False  # for the log: a reconnect is worth a line, the first connect not

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def want_write(self) -> bool:
        return bool(self._out)

    # -- connection -----------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> bool:
        """TLS, CONNECT, CONNACK; returns the broker's session-present flag.

        Raises `ssl.SSLError`/`OSError` for transport failures, `ConnectionLost` when the broker
        hangs up before CONNACK (how Mosquitto rejects a client certificate under TLS 1.3), and
        `BrokerRefused` for a CONNACK refusal.
        """
        self.close()
        raw = socket.create_connection((self.endpoint, self.port), timeout=timeout_s)
        try:
            sock = self.context.wrap_socket(raw, server_hostname=self.endpoint)
        except BaseException:
            raw.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._in.clear()
        self._out.clear()
        self._publishes.clear()
        self._control.clear()
        self._ping_sent_at = 0.0
        self._out += connect_packet(self.client_id, self.keepalive_s, clean_session=False)
        try:
            _first, body = self._await_control(CONNACK, time.monotonic() + timeout_s)
        except BaseException:
            self.close()
            raise
        if len(body) != 2 or body[1] != 0:
            self.close()
            code = body[1] if len(body) == 2 else -1
            raise BrokerRefused(CONNACK_REFUSALS.get(code, f"CONNACK return code {code}"))
        return bool(body[0] & 1)

    def subscribe(self, topic_filter: str, timeout_s: float = 10.0) -> None:
        """SUBSCRIBE at QoS 1 and wait for SUBACK; `BrokerRefused` when the broker refuses it."""
        self._next_mid = self._next_mid % MAX_PACKET_ID + 1
        self._out += subscribe_packet(self._next_mid, topic_filter, 1)
        _header, suback = self._await_control(SUBACK, time.monotonic() + timeout_s)
        if len(suback) < 3 or suback[2] == 0x80:
            raise BrokerRefused(f"subscription to {topic_filter} refused (SUBACK 0x80)")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None

    def disconnect(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (the last PUBACKs), then DISCONNECT, then close."""
        if self._sock is None:
            return
        self._out += DISCONNECT
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(ConnectionLost, OSError):
            while self._out and time.monotonic() < deadline:
                self._wait(deadline - time.monotonic(), write_only=True)
                self.send_pending()
        self.close()

    # -- packets --------------------------------------------------------------------------------

    def ack(self, mids: Sequence[int]) -> None:
        """Queue PUBACKs; `send_pending()` (or the next `read()`) writes them."""
        if mids:
            self._out += puback_bytes(mids)

    def send_pending(self) -> None:
        """Write what the socket takes now, without blocking."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        while self._out:
            try:
                sent = sock.send(self._out)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            except OSError as error:
                self.close()
                raise ConnectionLost(f"write failed: {error}") from None
            del self._out[:sent]
            self._last_sent = time.monotonic()

    def keepalive(self) -> None:
        """PINGREQ when nothing was sent for 3/4 of the keep-alive; lost when no PINGRESP in time."""
        now = time.monotonic()
        if self._ping_sent_at and now - self._ping_sent_at > self.keepalive_s:
            self.close()
            raise ConnectionLost(f"no PINGRESP within {self.keepalive_s} s")
        if not self._ping_sent_at and now - self._last_sent >= 0.75 * self.keepalive_s:
            self._out += PINGREQ
            self._ping_sent_at = now

    def read(self, timeout_s: float) -> list[Publish]:
        """Every PUBLISH that arrives within `timeout_s` (returns as soon as there is one)."""
        if self._publishes:
            publishes, self._publishes = self._publishes, []
            return publishes
        if self._out:
            self.send_pending()
        self._wait(timeout_s, write_only=False)
        self._fill()
        self._parse()
        publishes, self._publishes = self._publishes, []
        return publishes

    def _wait(self, timeout_s: float, *, write_only: bool) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        if not write_only and sock.pending():
            return  # TLS already holds decrypted bytes: select() would not see them
        readers = [] if write_only else [sock]
        writers = [sock] if self._out else []
        if readers or writers:
            select.select(readers, writers, [], max(0.0, timeout_s))
        if self._out:
            self.send_pending()

    def _fill(self) -> None:
        sock = self._sock
        assert sock is not None
        received = 0
        while received < MAX_READ_BYTES:
            try:
                chunk = sock.recv(READ_CHUNK_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except (OSError, ssl.SSLError) as error:
                self.close()
                raise ConnectionLost(f"read failed: {error}") from None
            if not chunk:
                self.close()
                raise ConnectionLost("the broker closed the connection")
            self._in += chunk
            received += len(chunk)

    def _parse(self) -> None:
        """Frame every complete packet in the input buffer; PUBLISHes go to `_publishes`."""
        try:
            if parse_packets(self._in, self._publishes, self._control, self._topics):
                self._ping_sent_at = 0.0
        except MalformedPacket as error:
            self.close()
            raise ConnectionLost(f"malformed packet from the broker ({error})") from None

    def _await_control(self, kind: int, deadline: float) -> tuple[int, bytes]:
        while True:
            for number, (first, body) in enumerate(self._control):
                if first >> 4 == kind:
                    del self._control[number]
                    return first, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no answer from the broker within the connect timeout (packet type {kind})"
                )
            self._wait(min(remaining, 0.1), write_only=False)
            self._fill()
            self._parse()


def connect_with_backoff(
    session: SubscriberSession,
    topic_filter: str,
    stop: threading.Event,
    delays_s: tuple[float, float],
    on_subscribed: Callable[[str], None],
) -> bool:
    """Connect (or reconnect) and subscribe; False when asked to stop first.

    Retries with jittered exponential backoff from `delays_s[0]` to `delays_s[1]`; raises
    UsageError when retrying is futile (a certificate the broker or we do not accept).
    """
    delay, longest = delays_s
    attempt = 0
    while not stop.is_set():
        attempt += 1
        error = try_connect(session, topic_filter, on_subscribed)
        if error is None:
            if attempt > 1 or session.ever_connected:
                log.info("connected to %s:%s", session.endpoint, session.port)
            session.ever_connected = True
            return True
        if attempt == 1 or attempt % 10 == 0:
            log.warning("%s (attempt %d; retrying)", error, attempt)
        # Full jitter keeps many restarting clients from reconnecting in lock-step.
        stop.wait(random.uniform(delay / 2, delay))
        delay = min(longest, delay * 2)
    return False


def try_connect(
    session: SubscriberSession, topic_filter: str, on_subscribed: Callable[[str], None]
) -> str | None:
    """One attempt; returns None when connected, else why not. Raises UsageError if retrying is futile."""
    where = (session.endpoint, session.port)
    try:
        if session.connect():
            # The broker kept our subscription: subscribing again would re-send retained messages.
            on_subscribed("session resumed")
        else:
            session.subscribe(topic_filter)
            on_subscribed("subscribed")
    except ssl.SSLCertVerificationError as error:
        raise UsageError(describe_connect_error(error, *where)) from None
    except BrokerRefused as refusal:
        session.close()
        text = str(refusal)
        if "authori" in text.lower() or "password" in text.lower():
            raise UsageError(
                f"the broker refused the rule runner: {text}; its certificate's CN"
                f" must be {RULE_RUNNER_IDENTITY!r} (the ACL's reader)"
            ) from None
        return f"broker refused the connection: {text}"
    except ConnectionLost:
        session.close()
        return (
            f"{where[0]}:{where[1]} closed the connection before accepting it"
            " (broker restarting, or it rejected the client certificate)"
        )
    except (OSError, ssl.SSLError) as error:
        session.close()
        return describe_connect_error(error, *where)
    return None
