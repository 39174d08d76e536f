"""The local stand-in for the AWS IoT topic rule: subscribe to the fleet's topics and archive every message.

`SELECT * FROM 'factory/simulator/#'` in the cloud feeds Kinesis Data Firehose, which writes GZIP'd
JSON-lines batches to S3. Here one process does both: a persistent-session QoS 1 subscriber that
batches messages, writes each batch atomically to the archive, and only then acknowledges the
messages, so a crash of this process or of the broker redelivers instead of losing.

Run it with `python -m local_stack.rule_runner --help`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import random
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory_core.errors import OperationFailed, UsageError, describe_validation_error
from factory_core.fleet import GROUND_TRUTH_SEGMENT, TOPIC_ROOT, ground_truth_topic, telemetry_topic
from factory_core.metric_catalog import ARCHIVE_BATCHES, ARCHIVE_LAG, ARCHIVED, QUARANTINED, MetricDef
from factory_core.payload_contract import PayloadKind, load_schema, payload_errors, payload_kind, validator
from local_stack.archive import (
    DEFAULT_STREAM_NAME,
    Archive,
    S3Archive,
    as_line,
    batch_key,
    direct_key,
    encode_batch,
    open_archive,
    quarantine_key,
    utc_now,
    validate_stream_name,
)
from local_stack.mosquitto import RULE_RUNNER_IDENTITY, BrokerConfig
from local_stack.ports import port_in_use
from simulator.transport.publisher import TransportOptions
from simulator.transport.tls import client_ssl_context, describe_connect_error

log = logging.getLogger("iotfactory.rule_runner")

ArchiveMode = Literal["batched", "direct"]
QuarantineReason = Literal["invalid_json", "schema_violation", "topic_mismatch", "payload_too_large"]
QUARANTINE_REASONS: tuple[QuarantineReason, ...] = (
    "invalid_json",
    "schema_violation",
    "topic_mismatch",
    "payload_too_large",
)
PAYLOAD_KINDS: tuple[PayloadKind, ...] = ("telemetry", "ground_truth")
# AWS IoT Core refuses larger publishes; Mosquitto does not, so the rule runner enforces it.
MAX_PAYLOAD_BYTES = 128 * 1024
DEFAULT_METRICS_HOST = "127.0.0.1"


class RuleRunnerSettings(BaseModel):
    """Everything the rule runner needs; the CLI flags map 1:1 onto these fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    ca: Path
    cert: Path
    key: Path
    client_id: str = Field(default=RULE_RUNNER_IDENTITY, min_length=1, max_length=128)
    topic_filter: str = f"{TOPIC_ROOT}/#"
    archive: str = ".factory/local/archive"
    s3_endpoint_url: str | None = None
    create_bucket: bool = False
    stream_name: str = DEFAULT_STREAM_NAME
    mode: ArchiveMode = "batched"
    flush_interval_s: float = Field(default=1.0, gt=0, le=900)
    max_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    # The broker stops sending once this many QoS 1 messages await our PUBACK (Mosquitto's
    # `max_inflight_messages`); since we acknowledge only after writing, a batch must be written
    # when it holds that many, or the flow stalls until the flush interval. 0 = no broker limit.
    receive_window: int = Field(default=BrokerConfig.max_inflight_messages, ge=0)
    keepalive_s: int = Field(default=30, ge=5, le=1200)
    reconnect_min_s: float = Field(default=0.1, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no exporter
    ready_file: Path | None = None

    @property
    def batch_limit(self) -> int:
        if self.receive_window > 0:
            return min(self.max_batch, self.receive_window)
        return self.max_batch


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rule runner decided about one message."""

    kind: PayloadKind | None  # None when the topic says nothing and the payload is unreadable
    reason: QuarantineReason | None = None  # None: archive it
    detail: str = ""
    timestamp_s: float | None = None  # the payload's `ts`, for the lag gauge


@lru_cache(maxsize=65_536)  # one entry per machine topic; a hot path at 10k+ msg/s
def topic_kind(topic: str) -> PayloadKind | None:
    """telemetry: factory/simulator/<site>/<line>/<machine>; ground truth: .../ground-truth/<site>/...."""
    parts = topic.split("/")
    root = TOPIC_ROOT.split("/")
    if parts[: len(root)] != root:
        return None
    rest = parts[len(root) :]
    if len(rest) == 4 and rest[0] == GROUND_TRUTH_SEGMENT:
        return "ground_truth"
    if len(rest) == 3 and rest[0] != GROUND_TRUTH_SEGMENT:
        return "telemetry"
    return None


SchemaCheck = Callable[[dict[str, Any]], bool]


@cache
def schema_check(kind: PayloadKind) -> SchemaCheck:
    """A yes/no check of one decoded payload against the contract's JSON Schema for `kind`.

    `jsonschema` is the reference and explains every failure, but takes ~300 µs per message here,
    which caps the archive at ~3k msg/s. When `jsonschema-rs` is installed it runs the same schema
    files in ~5 µs (tests check both agree); `jsonschema` then only words the rejections.
    """
    try:
        import jsonschema_rs
    except ImportError:
        return validator(kind).is_valid
    compiled = jsonschema_rs.validator_for(load_schema(kind), validate_formats=True)
    return compiled.is_valid  # type: ignore[no-any-return]


def check_message(topic: str, payload: bytes) -> Verdict:
    """The payload contract, applied where the cloud has no check: JSON, schema, and the topic it came on.

    The topic must be the one the payload's own machine publishes on: the broker's ACL already keeps
    a device under its site's prefix, and this keeps it from speaking for another machine's stream.
    """
    kind = topic_kind(topic)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Verdict(kind, "payload_too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        return Verdict(kind, "invalid_json", str(error))
    if not isinstance(document, dict):
        return Verdict(kind, "schema_violation", f"$: expected a JSON object, got {type(document).__name__}")
    chosen = kind or payload_kind(document)
    if not schema_check(chosen)(document):
        return Verdict(chosen, "schema_violation", "; ".join(payload_errors(document, chosen)[:3]))
    expected = (telemetry_topic if chosen == "telemetry" else ground_truth_topic)(
        document["site"], document["line"], document["machine"]
    )
    if topic != expected:
        return Verdict(chosen, "topic_mismatch", f"payload of {document['machine']} belongs on {expected}")
    return Verdict(chosen, None, "", _epoch_seconds(document["ts"]))


def _epoch_seconds(timestamp: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None


def _iso_ms(epoch_s: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(slots=True)
class Received:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_at: float  # epoch seconds
    verdict: Verdict

    def quarantine_line(self) -> bytes:
        """The quarantine record: the exact bytes (base64) and why they were set aside."""
        return orjson.dumps(
            {
                "reason": self.verdict.reason,
                "detail": self.verdict.detail,
                "topic": self.topic,
                "received_at": _iso_ms(self.received_at),
                "qos": self.qos,
                "payload_base64": base64.b64encode(self.payload).decode("ascii"),
            }
        )


@dataclass(frozen=True)
class BatchResult:
    keys: tuple[str, ...]
    written_at: dt.datetime
    archived: dict[PayloadKind, int]
    quarantined: dict[QuarantineReason, int]
    newest_timestamp_s: float | None


class ArchiveWriter:
    """Turns one batch of received messages into archive objects (the Firehose half of the rule)."""

    def __init__(self, archive: Archive, stream_name: str, mode: ArchiveMode) -> None:
        self.archive = archive
        self.stream_name = validate_stream_name(stream_name)
        self.mode = mode

    def write(self, batch: Sequence[Received]) -> BatchResult:
        """Write every message of `batch`; returns only once all of them are durable."""
        now = utc_now()
        keys: list[str] = []
        archived: dict[PayloadKind, int] = {}
        quarantined: dict[QuarantineReason, list[bytes]] = {}
        raw_lines: list[bytes] = []
        newest: float | None = None
        written_at = now
        for item in batch:
            verdict = item.verdict
            if verdict.reason is not None:
                quarantined.setdefault(verdict.reason, []).append(item.quarantine_line())
                continue
            assert verdict.kind is not None
            archived[verdict.kind] = archived.get(verdict.kind, 0) + 1
            if verdict.timestamp_s is not None and (newest is None or verdict.timestamp_s > newest):
                newest = verdict.timestamp_s
            if self.mode == "direct":
                key = direct_key(item.topic, now)
                written_at = self.archive.put_object(key, item.payload)
                keys.append(key)
            else:
                raw_lines.append(as_line(item.payload))
        if raw_lines:
            key = batch_key(self.stream_name, now)
            written_at = self.archive.put_object(key, encode_batch(raw_lines))
            keys.append(key)
        for reason, lines in quarantined.items():
            key = quarantine_key(reason, self.stream_name, now)
            self.archive.put_object(key, encode_batch(lines))
            keys.append(key)
        return BatchResult(
            tuple(keys), written_at, archived, {r: len(v) for r, v in quarantined.items()}, newest
        )


def _metric_name(metric: MetricDef) -> str:
    # prometheus-client appends `_total` to counters itself.
    return metric.name.removesuffix("_total") if metric.kind == "counter" else metric.name


class ArchiveMetrics:
    """The cold-path metrics of the catalog, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.archived = Counter(
            _metric_name(ARCHIVED), ARCHIVED.help, ARCHIVED.labels, registry=self.registry
        )
        self.quarantined = Counter(
            _metric_name(QUARANTINED), QUARANTINED.help, QUARANTINED.labels, registry=self.registry
        )
        self.lag = Gauge(_metric_name(ARCHIVE_LAG), ARCHIVE_LAG.help, registry=self.registry)
        self.batches = Counter(_metric_name(ARCHIVE_BATCHES), ARCHIVE_BATCHES.help, registry=self.registry)
        # Series exist from the start at 0, so rate() and alerts see them before the first event.
        for kind in PAYLOAD_KINDS:
            self.archived.labels(kind=kind)
        for reason in QUARANTINE_REASONS:
            self.quarantined.labels(reason=reason)

    def record(self, result: BatchResult) -> None:
        for kind, count in result.archived.items():
            self.archived.labels(kind=kind).inc(count)
        for reason, count in result.quarantined.items():
            self.quarantined.labels(reason=reason).inc(count)
        self.batches.inc(len(result.keys))
        if result.newest_timestamp_s is not None:
            self.lag.set(result.written_at.timestamp() - result.newest_timestamp_s)


class ConnectionLost(Exception):
    """The broker connection ended (closed, reset, or silent past the keep-alive)."""


class BrokerRefused(Exception):
    """The broker answered CONNECT or SUBSCRIBE with a refusal; the message says which."""


# MQTT 3.1.1 control packet first bytes (type << 4 | flags) and CONNACK return codes (§3.2.2.3).
_CONNACK, _PUBLISH, _SUBACK, _PINGRESP = 2, 3, 9, 13
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
# A PUBACK is 4 bytes: 0x40, remaining length 2, the packet id; as one big-endian word that is
# 0x40020000 | mid, so a whole batch of them is framed by one `struct.pack`.
_PUBACK_WORD = 0x40020000
READ_CHUNK_BYTES = 1 << 18
# Parse at most this much per `read()`: bounds the time between flush checks when a backlog floods in.
MAX_READ_BYTES = 4 << 20
_TOPIC_CACHE_LIMIT = 65_536

Publish = tuple[int, str, int, bytes]  # (first byte: dup/qos/retain flags, topic, packet id, payload)


def puback_bytes(mids: Sequence[int]) -> bytes:
    """PUBACK packets for `mids`, concatenated: what the broker reads as that many acknowledgements."""
    return struct.pack(f"!{len(mids)}I", *(_PUBACK_WORD | mid for mid in mids))


class SubscriberSession:
    """One MQTT 3.1.1 subscriber connection over TLS, cut down to what the rule runner needs.

    paho handles every packet through several Python calls, a `MQTTMessage`, topic matching and
    one TLS write per acknowledgement; at QoS 1 that alone capped the runner below the publishers
    (measured: a bare paho subscriber that only counts drains ~25k msg/s here). This session reads
    up to 256 KiB per TLS read, frames every PUBLISH in that chunk in one tight loop, and sends a
    batch's PUBACKs as one write. It speaks only what a persistent-session subscriber needs:
    CONNECT (clean session off), SUBSCRIBE, PUBLISH in, PUBACK/PINGREQ/DISCONNECT out.
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
        self._control: list[tuple[int, bytes]] = []
        self._topics: dict[bytes, str] = {}
        self._last_sent = 0.0
        self._ping_sent_at = 0.0  # 0: no PINGREQ outstanding
        self._next_mid = 0

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
        client_id = self.client_id.encode()
        variable = b"\x00\x04MQTT\x04\x00" + struct.pack("!H", self.keepalive_s)  # level 4, clean session off
        self._queue_packet(0x10, variable + struct.pack("!H", len(client_id)) + client_id)
        try:
            _first, body = self._await_control(_CONNACK, time.monotonic() + timeout_s)
        except BaseException:
            self.close()
            raise
        if len(body) != 2 or body[1] != 0:
            self.close()
            code = body[1] if len(body) == 2 else -1
            raise BrokerRefused(_CONNACK_REFUSALS.get(code, f"CONNACK return code {code}"))
        return bool(body[0] & 1)

    def subscribe(self, topic_filter: str, timeout_s: float = 10.0) -> None:
        """SUBSCRIBE at QoS 1 and wait for SUBACK; `BrokerRefused` when the broker refuses it."""
        self._next_mid = self._next_mid % 0xFFFF + 1
        encoded = topic_filter.encode()
        body = struct.pack("!HH", self._next_mid, len(encoded)) + encoded + b"\x01"
        self._queue_packet(0x82, body)
        _header, suback = self._await_control(_SUBACK, time.monotonic() + timeout_s)
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
        self._out += _DISCONNECT
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(ConnectionLost, OSError):
            while self._out and time.monotonic() < deadline:
                self._wait(deadline - time.monotonic(), write_only=True)
                self.send_pending()
        self.close()

    # -- packets --------------------------------------------------------------------------------

    def _queue_packet(self, first_byte: int, body: bytes) -> None:
        length = len(body)
        encoded = bytearray()
        while True:
            digit, length = length & 0x7F, length >> 7
            encoded.append(digit | 0x80 if length else digit)
            if not length:
                break
        self._out += bytes([first_byte]) + encoded + body

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
            self._out += _PINGREQ
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
        buffer = self._in
        size = len(buffer)
        position = 0
        publishes = self._publishes
        topics = self._topics
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
                    self.close()
                    raise ConnectionLost("malformed packet from the broker (remaining length > 4 bytes)")
            if not complete or size - index < length:
                break  # incomplete: wait for more bytes
            end = index + length
            kind = first >> 4
            if kind == _PUBLISH:
                topic_end = index + 2 + ((buffer[index] << 8) | buffer[index + 1])
                raw_topic = bytes(buffer[index + 2 : topic_end])
                topic = topics.get(raw_topic)
                if topic is None:
                    try:
                        topic = raw_topic.decode()
                    except UnicodeDecodeError:  # MQTT requires UTF-8 topics and Mosquitto enforces it
                        topic = "<topic not UTF-8>"
                    if len(topics) >= _TOPIC_CACHE_LIMIT:
                        topics.clear()
                    topics[raw_topic] = topic
                if first & 0x06:
                    mid = (buffer[topic_end] << 8) | buffer[topic_end + 1]
                    topic_end += 2
                else:
                    mid = 0
                publishes.append((first, topic, mid, bytes(buffer[topic_end:end])))
            elif kind == _PINGRESP:
                self._ping_sent_at = 0.0
            else:
                self._control.append((first, bytes(buffer[index:end])))
            position = end
        if position:
            del buffer[:position]

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


class RuleRunner:
    """One MQTT session (fixed client id, clean session off, QoS 1) feeding an `ArchiveWriter`.

    Everything runs on the calling thread: `read()` frames the messages that arrived, they are
    classified and buffered, and the flush happens between reads, so there are no locks and an
    acknowledgement can never overtake the write it depends on.
    """

    def __init__(
        self, settings: RuleRunnerSettings, archive: Archive, metrics: ArchiveMetrics | None = None
    ) -> None:
        self.settings = settings
        self.writer = ArchiveWriter(archive, settings.stream_name, settings.mode)
        self.metrics = metrics or ArchiveMetrics()
        self._stop = threading.Event()
        self._pending: list[Received] = []
        self._pending_since = 0.0
        # mid -> hash of (topic, payload) for messages already written whose PUBACK may not have
        # reached the broker (connection lost). Their redelivery (DUP set, same mid) is acknowledged
        # without writing again. mids are 16-bit, so this never holds more than 65,535 entries.
        self._written: dict[int, int] = {}
        self._ever_connected = False
        self._retry_flush_at = 0.0
        self._flush_failures = 0
        self.messages_received = 0
        self.redeliveries_skipped = 0
        options = TransportOptions(settings.endpoint, settings.port, settings.ca, settings.cert, settings.key)
        self._session = SubscriberSession(
            settings.endpoint,
            settings.port,
            client_ssl_context(options),
            settings.client_id,
            settings.keepalive_s,
        )

    @property
    def _connected(self) -> bool:
        return self._session.connected

    # -- MQTT ---------------------------------------------------------------------------------

    def _mark_subscribed(self, how: str) -> None:
        log.info(
            "%s to %s at %s:%s", how, self.settings.topic_filter, self.settings.endpoint, self.settings.port
        )
        if self.settings.ready_file is not None:
            _write_ready_file(self.settings)

    def _receive(self, timeout_s: float) -> None:
        publishes = self._session.read(timeout_s)
        if not publishes:
            return
        self.messages_received += len(publishes)
        received_at = time.time()
        pending = self._pending
        if not pending:
            self._pending_since = time.monotonic()
        written = self._written
        instant_acks: list[int] = []
        for first, topic, mid, payload in publishes:
            qos = (first >> 1) & 0x03
            if first & 0x01:
                # Retained: sent because we subscribed, not because a device published now. The
                # cloud rule sees each publish once, so does the archive.
                if qos:
                    instant_acks.append(mid)
                continue
            if first & 0x08 and qos and mid in written and written[mid] == hash((topic, payload)):
                del written[mid]
                self.redeliveries_skipped += 1
                instant_acks.append(mid)
                continue
            try:
                verdict = check_message(topic, payload)
            except Exception as error:  # a checker bug must cost one message's quarantine, not the runner
                log.exception("checking a message on %s failed", topic)
                verdict = Verdict(topic_kind(topic), "schema_violation", f"could not be checked: {error!r}")
            pending.append(Received(mid, qos, topic, payload, received_at, verdict))
        self._session.ack(instant_acks)

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to flush, acknowledge, disconnect and return (signal-handler safe)."""
        self._stop.set()

    def run(self) -> None:
        """Archive until `stop()`; survives broker restarts and archive outages; raises only on bad config."""
        while not self._stop.is_set():
            if not self._connected:
                if self._pending and not self._flush(ack=False):
                    # Keep what we hold when we can: if the broker lost it (killed before its
                    # autosave) this copy is the only one, and if not, its redelivery is recognised.
                    # When the archive is down too, the broker's unacknowledged copy must do.
                    log.warning("%d unwritten messages left to the broker's redelivery", len(self._pending))
                    self._pending = []
                if not self._connect_with_backoff():
                    break
                continue
            try:
                if (
                    len(self._pending) >= self.settings.batch_limit
                    and time.monotonic() < self._retry_flush_at
                ):
                    # The archive is failing and the batch is full: stop reading, so memory stays
                    # bounded even with an unlimited receive window; the broker holds the rest.
                    self._session.send_pending()
                    self._stop.wait(min(0.1, self._retry_flush_at - time.monotonic()))
                else:
                    self._receive(self._loop_timeout())
                if self._flush_due():
                    self._flush(ack=True)
                self._session.keepalive()
                if self._session.want_write:
                    self._session.send_pending()
            except ConnectionLost as error:
                if not self._stop.is_set():
                    log.warning("connection to the broker lost (%s); reconnecting", error)
        self._shutdown()

    def _loop_timeout(self) -> float:
        if not self._pending:
            return 0.1
        remaining = self._pending_since + self.settings.flush_interval_s - time.monotonic()
        return min(0.1, max(0.0, remaining))

    def _flush_due(self) -> bool:
        if not self._pending or time.monotonic() < self._retry_flush_at:
            return False
        return (
            len(self._pending) >= self.settings.batch_limit
            or time.monotonic() - self._pending_since >= self.settings.flush_interval_s
        )

    def _flush(self, *, ack: bool) -> bool:
        """Write what is pending, one object per `batch_limit` messages; acknowledge each once written."""
        limit = self.settings.batch_limit
        while self._pending:
            batch = self._pending[:limit]
            try:
                result = self.writer.write(batch)
            except Exception as error:  # any archive failure: keep the batch, never acknowledge it
                self._flush_failures += 1
                delay = min(self.settings.reconnect_max_s, 0.2 * 2 ** min(self._flush_failures, 6))
                self._retry_flush_at = time.monotonic() + delay
                log.error(
                    "archive write to %s failed (%s: %s); retrying in %.1f s",
                    self.writer.archive.location,
                    type(error).__name__,
                    error,
                    delay,
                )
                return False
            del self._pending[:limit]
            self._flush_failures = 0
            self._retry_flush_at = 0.0
            self.metrics.record(result)
            mids = [item.mid for item in batch if item.qos]
            written = self._written
            for item in batch:
                if item.qos:
                    written[item.mid] = hash((item.topic, item.payload))
            if ack and self._connected:
                self._session.ack(mids)
            if result.quarantined:
                log.warning("quarantined %s", ", ".join(f"{n} {r}" for r, n in result.quarantined.items()))
        self._pending_since = time.monotonic()
        return True

    def _connect_with_backoff(self) -> bool:
        """Connect (or reconnect) and subscribe; False when asked to stop first."""
        delay = self.settings.reconnect_min_s
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            error = self._try_connect()
            if error is None:
                if attempt > 1 or self._ever_connected:
                    log.info("connected to %s:%s", self.settings.endpoint, self.settings.port)
                self._ever_connected = True
                return True
            if attempt == 1 or attempt % 10 == 0:
                log.warning("%s (attempt %d; retrying)", error, attempt)
            # Full jitter keeps many restarting clients from reconnecting in lock-step.
            self._stop.wait(random.uniform(delay / 2, delay))
            delay = min(self.settings.reconnect_max_s, delay * 2)
        return False

    def _try_connect(self) -> str | None:
        """One attempt; returns None when connected, else why not. Raises UsageError if retrying is futile."""
        settings = self.settings
        try:
            session_present = self._session.connect()
            if session_present:
                # The broker kept our subscription: subscribing again would re-send retained messages.
                self._mark_subscribed("session resumed")
            else:
                self._session.subscribe(settings.topic_filter)
                self._mark_subscribed("subscribed")
        except ssl.SSLCertVerificationError as error:
            raise UsageError(describe_connect_error(error, settings.endpoint, settings.port)) from None
        except BrokerRefused as refusal:
            self._session.close()
            text = str(refusal)
            if "authori" in text.lower() or "password" in text.lower():
                raise UsageError(
                    f"the broker refused the rule runner: {text}; its certificate's CN"
                    f" must be {RULE_RUNNER_IDENTITY!r} (the ACL's reader)"
                ) from None
            return f"broker refused the connection: {text}"
        except ConnectionLost:
            self._session.close()
            return (
                f"{settings.endpoint}:{settings.port} closed the connection before accepting it"
                " (broker restarting, or it rejected the client certificate)"
            )
        except (OSError, ssl.SSLError) as error:
            self._session.close()
            return describe_connect_error(error, settings.endpoint, settings.port)
        return None

    def _shutdown(self) -> None:
        flushed = True
        if self._pending:
            flushed = self._flush(ack=self._connected)
            for _ in range(3):
                if flushed:
                    break
                time.sleep(0.5)
                flushed = self._flush(ack=self._connected)
        # The last PUBACKs go out before DISCONNECT; reading now would only take in messages we
        # could not write any more (they stay queued in our session instead).
        self._session.disconnect()
        if not flushed:
            raise OperationFailed(
                f"could not write {len(self._pending)} messages to {self.writer.archive.location};"
                " they stay unacknowledged in the broker session and will be archived on the next start"
            )


def _write_ready_file(settings: RuleRunnerSettings) -> None:
    assert settings.ready_file is not None
    info = {"pid": os.getpid(), "metrics_port": settings.metrics_port or None, "archive": settings.archive}
    temp = settings.ready_file.with_name(settings.ready_file.name + ".tmp")
    temp.write_text(json.dumps(info) + "\n")
    temp.replace(settings.ready_file)


# -- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    defaults = RuleRunnerSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m local_stack.rule_runner",
        description="Archive every message under factory/simulator/# (the local IoT topic rule).",
    )
    parser.add_argument("--endpoint", default=defaults["endpoint"].default, help="broker host")
    parser.add_argument("--port", type=int, default=defaults["port"].default, help="broker TLS port")
    parser.add_argument("--ca", type=Path, required=True, help="CA certificate that signed the broker (PEM)")
    parser.add_argument(
        "--cert", type=Path, required=True, help="the rule runner's certificate (PEM, CN rule-runner)"
    )
    parser.add_argument("--key", type=Path, required=True, help="the rule runner's private key (PEM)")
    parser.add_argument(
        "--client-id",
        default=defaults["client_id"].default,
        help="fixed MQTT client id: the persistent session is keyed on it",
    )
    parser.add_argument("--topic", dest="topic_filter", default=defaults["topic_filter"].default)
    parser.add_argument(
        "--archive",
        default=defaults["archive"].default,
        help="folder path, file:///path or s3://BUCKET[/PREFIX]",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("IOTFACTORY_S3_ENDPOINT_URL"),
        help="S3-compatible endpoint (moto, MinIO); credentials from the AWS_* environment",
    )
    parser.add_argument("--create-bucket", action="store_true", help="create the s3:// bucket if missing")
    parser.add_argument(
        "--stream-name",
        default=defaults["stream_name"].default,
        help="name in every object key, like the Firehose delivery stream's",
    )
    parser.add_argument(
        "--mode",
        choices=["batched", "direct"],
        default="batched",
        help="batched: Firehose-style GZIP JSON lines; direct: one object per message",
    )
    parser.add_argument(
        "--flush-interval",
        dest="flush_interval_s",
        type=float,
        default=defaults["flush_interval_s"].default,
        help="seconds a batch may wait",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults["max_batch"].default,
        help="messages per batch object at most",
    )
    parser.add_argument(
        "--receive-window",
        type=int,
        default=defaults["receive_window"].default,
        help="the broker's max_inflight_messages (0 = unlimited): a batch is written"
        " when it holds this many unacknowledged messages",
    )
    parser.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST)
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus exporter port (0 = off)")
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="written (JSON) once the subscription is in place"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> tuple[RuleRunnerSettings, str]:
    parser = _parser()

    def usage_error(message: str) -> None:
        raise UsageError(f"rule runner: {message}; see --help")

    parser.error = usage_error  # type: ignore[method-assign,assignment]
    args = vars(parser.parse_args(argv))
    log_level = args.pop("log_level")
    for flag in ("ca", "cert", "key"):
        path: Path = args[flag]
        if not path.is_file():
            raise UsageError(f"rule runner --{flag} {path}: file not found; pass the path of a PEM file")
    try:
        settings = RuleRunnerSettings(**args)
    except ValidationError as error:
        flag = "--" + str(error.errors()[0]["loc"][0]).removesuffix("_s").replace("_", "-")
        fix = f"fix {flag}; see --help"
        message = describe_validation_error(error, "", fix, model=RuleRunnerSettings, most=1)
        raise UsageError(f"rule runner {message}") from None
    validate_stream_name(settings.stream_name)
    return settings, log_level


def _start_metrics(settings: RuleRunnerSettings, metrics: ArchiveMetrics) -> Any:
    if not settings.metrics_port:
        return None
    if port_in_use(settings.metrics_port, settings.metrics_host):
        raise UsageError(
            f"rule runner --metrics-port {settings.metrics_port}: already in use on"
            f" {settings.metrics_host}; pick another port"
        )
    server, _thread = start_http_server(
        settings.metrics_port, settings.metrics_host, registry=metrics.registry
    )
    return server


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, log_level = settings_from_args(argv)
        logging.basicConfig(
            level=log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s rule-runner: %(message)s"
        )
        archive = open_archive(settings.archive, endpoint_url=settings.s3_endpoint_url)
        if isinstance(archive, S3Archive):
            if settings.create_bucket:
                archive.create_bucket()
            archive.check_bucket()
        metrics = ArchiveMetrics()
        runner = RuleRunner(settings, archive, metrics)
        server = _start_metrics(settings, metrics)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    log.info(
        "archiving %s to %s (%s, batches of <= %d or every %.1f s)",
        settings.topic_filter,
        archive.location,
        settings.mode,
        settings.batch_limit,
        settings.flush_interval_s,
    )
    try:
        runner.run()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OperationFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
        if settings.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                settings.ready_file.unlink()
    log.info(
        "stopped: %d messages received, %d redeliveries recognised",
        runner.messages_received,
        runner.redeliveries_skipped,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
