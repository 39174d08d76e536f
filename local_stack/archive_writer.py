"""The rule runner's archive side (the Firehose half of the rule): batch, write durably, then acknowledge.

`Batcher` holds what the broker delivered until a batch is due (`batch_limit` messages or
`flush_interval_s`), has `ArchiveWriter` turn it into archive objects, and only once those are
durable hands the packet ids back to be PUBACKed. A failed write keeps the batch and retries with
backoff; nothing is acknowledged that is not written.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from factory_core.metric_catalog import (
    ARCHIVE_BATCHES,
    ARCHIVE_LAG,
    ARCHIVE_WRITE_ERRORS,
    ARCHIVED,
    QUARANTINED,
    MetricDef,
)
from factory_core.payload_contract import PayloadKind
from local_stack.archive import (
    Archive,
    as_line,
    batch_key,
    direct_key,
    encode_batch,
    quarantine_key,
    utc_now,
    validate_stream_name,
)
from local_stack.message_check import PAYLOAD_KINDS, QUARANTINE_REASONS, QuarantineReason, Received

log = logging.getLogger("iotfactory.rule_runner")

ArchiveMode = Literal["batched", "direct"]  # GZIP JSON-lines batches, or one object per message


@dataclass(frozen=True)
class BatchResult:
    keys: tuple[str, ...]
    written_at: dt.datetime
    archived: dict[PayloadKind, int]
    quarantined: dict[QuarantineReason, int]
    newest_timestamp_s: float | None


# Bytes of a quarantined payload kept in its record: enough to see what it was, never so much that
# a flood of large garbage fills the archive (the size and hash identify the whole).
QUARANTINE_EXCERPT_BYTES = 1024


def quarantine_line(item: Received) -> bytes:
    """The quarantine record: why the message was set aside, its size, SHA-256 and first KiB (base64)."""
    payload = item.payload
    return orjson.dumps(
        {
            "reason": item.verdict.reason,
            "detail": item.verdict.detail,
            "topic": item.topic,
            "received_at": _iso_ms(item.received_at),
            "qos": item.qos,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_excerpt_base64": base64.b64encode(payload[:QUARANTINE_EXCERPT_BYTES]).decode("ascii"),
        }
    )


def _iso_ms(epoch_s: float) -> str:
    return (
        dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class ArchiveWriter:
    """Turns one batch of received messages into archive objects."""

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
                quarantined.setdefault(verdict.reason, []).append(quarantine_line(item))
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
        self.write_errors = Counter(
            _metric_name(ARCHIVE_WRITE_ERRORS), ARCHIVE_WRITE_ERRORS.help, registry=self.registry
        )
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


class Batcher:
    """Received messages waiting for their batch; PUBACKs are released only once it is durable."""

    def __init__(
        self,
        writer: ArchiveWriter,
        metrics: ArchiveMetrics,
        *,
        batch_limit: int,
        flush_interval_s: float,
        retry_max_s: float,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.batch_limit = batch_limit
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self.pending: list[Received] = []
        self._pending_since = 0.0
        # mid -> hash of (topic, payload) for messages already written whose PUBACK may not have
        # reached the broker (connection lost). Their redelivery (DUP set, same mid) is acknowledged
        # without writing again. mids are 16-bit, so this never holds more than 65,535 entries.
        self._written: dict[int, int] = {}
        self._retry_at = 0.0
        self._failures = 0

    def receiving(self) -> list[Received]:
        """The list to append arriving messages to; a batch's clock starts with its first message."""
        if not self.pending:
            self._pending_since = time.monotonic()
        return self.pending

    def already_written(self, mid: int, topic: str, payload: bytes) -> bool:
        """True (once) for the redelivery of a message that was written but maybe not acknowledged."""
        written = self._written
        if mid in written and written[mid] == hash((topic, payload)):
            del written[mid]
            return True
        return False

    def stalled(self) -> bool:
        """The archive is failing and the batch is full: stop reading until the retry is due."""
        return len(self.pending) >= self.batch_limit and time.monotonic() < self._retry_at

    def retry_in_s(self) -> float:
        return self._retry_at - time.monotonic()

    def wait_s(self) -> float:
        """How long the caller may wait for messages before a flush could be due."""
        if not self.pending:
            return 0.1
        remaining = self._pending_since + self.flush_interval_s - time.monotonic()
        return min(0.1, max(0.0, remaining))

    def due(self) -> bool:
        if not self.pending or time.monotonic() < self._retry_at:
            return False
        return (
            len(self.pending) >= self.batch_limit
            or time.monotonic() - self._pending_since >= self.flush_interval_s
        )

    def flush(self, acknowledge: Callable[[list[int]], None]) -> bool:
        """Write what is pending, one object per `batch_limit` messages; acknowledge each once written."""
        limit = self.batch_limit
        while self.pending:
            batch = self.pending[:limit]
            try:
                result = self.writer.write(batch)
            except Exception as error:  # any archive failure: keep the batch, never acknowledge it
                self._failed(error)
                return False
            del self.pending[:limit]
            self._failures = 0
            self._retry_at = 0.0
            self.metrics.record(result)
            mids = [item.mid for item in batch if item.qos]
            written = self._written
            for item in batch:
                if item.qos:
                    written[item.mid] = hash((item.topic, item.payload))
            acknowledge(mids)
            if result.quarantined:
                log.warning("quarantined %s", ", ".join(f"{n} {r}" for r, n in result.quarantined.items()))
        self._pending_since = time.monotonic()
        return True

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        self.metrics.write_errors.inc()
        # Nothing is written, so the lag is how long the oldest waiting message has waited: it grows.
        oldest = min((item.verdict.timestamp_s or item.received_at for item in self.pending), default=None)
        if oldest is not None:
            self.metrics.lag.set(time.time() - oldest)
        delay = min(self.retry_max_s, 0.2 * 2 ** min(self._failures, 6))
        self._retry_at = time.monotonic() + delay
        log.error(
            "archive write to %s failed (%s: %s); retrying in %.1f s",
            self.writer.archive.location,
            type(error).__name__,
            error,
            delay,
        )
