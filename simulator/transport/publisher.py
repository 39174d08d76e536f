"""The publisher interface both engines implement, the connection plan and the transport counters.

The scheduler hands each message to `Publisher.submit(connection, message)`. A publisher keeps, per
connection, a bounded queue (the offline queue; oldest dropped past its bound) and an in-flight
window released on PUBACK, and sends at most `rate_limit_per_connection` messages per second so
that draining a backlog after an outage never exceeds AWS IoT's per-connection quota.
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from factory_core.connection_plan import ConnectionPlan
from factory_core.fleet import IOT_MAX_PAYLOAD_BYTES, IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION
from factory_core.metric_catalog import PUBACK_BUCKETS
from simulator.metrics.accumulators import BucketCounts

KINDS = ("telemetry", "ground_truth")
# QoS 0 has no PUBACK: the window then bounds messages handed to the client but not yet written
# to the socket, which is what keeps memory flat (the SDK alone queued 343 MB in a tight loop).
QOS0_SEND_BACKLOG = 1_000


# Failure reason of a message over AWS IoT's payload limit, dropped before it is ever sent.
OVERSIZE_REASON = "payload_too_large"


class Publishable(Protocol):
    """What the model's `Message` offers the transport."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...

    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class TransportOptions:
    """Everything an engine needs to open its connections."""

    endpoint: str
    port: int
    ca_path: Path
    cert_path: Path | None  # None: every connection has its own in `cert_dir`
    key_path: Path | None
    qos: int = 1
    queue_limit_per_connection: int = 1_000
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    # None: no governor (local benchmarks). Otherwise the AWS per-connection quota.
    rate_limit_per_connection: float | None = float(IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION)
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 32.0
    # How long a message may wait in a connection's write buffer for company (fleet engine).
    # 20 ms halves the TLS writes and PUBACK reads at 80 msg/s per connection; --max-rate uses 0
    # because there the window, not the clock, limits what is in flight.
    linger_s: float = 0.02
    cert_dir: Path | None = None  # `<client id>.pem`/`.key` per connection (the local broker)
    # Before every topic: "" or the archive rule's Basic Ingest prefix (factory_core.archive_modes).
    topic_prefix: str = ""

    def credentials(self, client_id: str) -> tuple[Path, Path]:
        """The certificate and key the connection `client_id` presents."""
        if self.cert_dir is not None:
            return self.cert_dir / f"{client_id}.pem", self.cert_dir / f"{client_id}.key"
        assert self.cert_path is not None and self.key_path is not None
        return self.cert_path, self.key_path


class TokenBucket:
    """Quota governor: at most `rate` sends per second, bursts of at most `burst`."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, now: float) -> bool:
        if self.tokens < 1.0:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1.0:
                return False
        self.tokens -= 1.0
        return True

    def ready_at(self, now: float) -> float:
        return now + max(0.0, (1.0 - self.tokens) / self.rate)


def governor(options: TransportOptions) -> TokenBucket | None:
    if options.rate_limit_per_connection is None:
        return None
    # A burst of a fifth of a second keeps every one-second window under the quota.
    rate = options.rate_limit_per_connection
    return TokenBucket(rate, max(1.0, rate / 5))


@dataclass
class ConnectionStats:
    """Counters of one connection. Each field has one writing thread (named per engine)."""

    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failures: dict[str, int] = field(default_factory=dict)
    dropped_queue_full: int = 0  # written by the scheduler thread only
    puback: BucketCounts = field(default_factory=lambda: BucketCounts(PUBACK_BUCKETS))
    reconnects: int = 0

    def fail(self, reason: str, count: int = 1) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + count


_oversize_reported = False


def drop_if_oversize(message: Publishable, stats: ConnectionStats) -> bool:
    """True (and counted, and said once per process) for a payload over AWS IoT's 128 KiB limit.

    The broker would refuse it (AWS IoT, and the local broker's `max_packet_size`, close the
    connection); since unacknowledged QoS 1 messages are sent again after every reconnect, one such
    message would keep a connection failing forever. The model's payloads are far smaller: this
    only guards against that loop.
    """
    if len(message.payload) <= IOT_MAX_PAYLOAD_BYTES:
        return False
    stats.fail(OVERSIZE_REASON)
    global _oversize_reported
    if not _oversize_reported:
        _oversize_reported = True
        print(
            f"dropped a {len(message.payload)}-byte message for {message.topic}: over AWS IoT's"
            f" {IOT_MAX_PAYLOAD_BYTES}-byte payload limit (counted in simulator_publish_failures_total"
            f'{{reason="{OVERSIZE_REASON}"}}; further ones are counted, not logged)',
            file=sys.stderr,
            flush=True,
        )
    return True


@dataclass(frozen=True)
class TransportSnapshot:
    """Totals over all connections at one instant, for the exporter and the final summary."""

    published: dict[str, int]
    failures: dict[str, int]
    puback: BucketCounts
    connections_planned: int
    connections_up: int
    reconnects: int
    inflight: int
    queued: int
    # The fleet engine frames PUBLISH packets and reads PUBACKs itself (see paho_fastpath).
    fastpath_enabled: bool = False

    @property
    def published_total(self) -> int:
        return sum(self.published.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failures.values())


def merge_stats(
    stats: list[ConnectionStats],
    *,
    planned: int,
    up: int,
    inflight: int,
    queued: int,
    fastpath: bool = False,
) -> TransportSnapshot:
    published = dict.fromkeys(KINDS, 0)
    failures: dict[str, int] = {}
    reconnects = 0
    for item in stats:
        for kind, count in list(item.published.items()):
            published[kind] = published.get(kind, 0) + count
        for reason, count in list(item.failures.items()):
            failures[reason] = failures.get(reason, 0) + count
        if item.dropped_queue_full:
            failures["queue_full"] = failures.get("queue_full", 0) + item.dropped_queue_full
        reconnects += item.reconnects
    return TransportSnapshot(
        published=published,
        failures=failures,
        puback=BucketCounts.merged((item.puback for item in stats), PUBACK_BUCKETS),
        connections_planned=planned,
        connections_up=up,
        reconnects=reconnects,
        inflight=inflight,
        queued=queued,
        fastpath_enabled=fastpath,
    )


class Publisher(ABC):
    """One engine's set of connections for one simulator process."""

    def __init__(self, plan: ConnectionPlan, options: TransportOptions) -> None:
        self.plan = plan
        self.options = options

    @abstractmethod
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect. Raises UsageError naming host:port if the first connection cannot be made."""

    @abstractmethod
    def submit(self, connection: int, message: Publishable) -> None:
        """Queue a message; never blocks. Past the queue bound the oldest queued message is dropped."""

    @abstractmethod
    def queued(self, connection: int) -> int:
        """Messages of that connection not yet handed to the client library."""

    def poll(self, timeout_s: float) -> None:
        """Let the engine do its I/O for up to timeout_s; the scheduler calls this instead of sleeping.

        The fleet engine does all socket work in the caller's thread (one thread for generation
        and I/O, so no GIL hand-offs between them); engines with their own threads just wait.
        """
        if timeout_s > 0:
            time.sleep(timeout_s)

    def wait_for_room(self, connection: int, high_water: int, timeout_s: float) -> bool:
        """Back-pressure for --max-rate: wait until the connection's queue is below high_water."""
        deadline = time.monotonic() + timeout_s
        while self.queued(connection) >= high_water:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.poll(min(remaining, 0.0005))
        return True

    @abstractmethod
    def unsent(self) -> int:
        """Messages queued or in flight over all connections."""

    def flush(self, timeout_s: float) -> int:
        """Wait until everything queued is acknowledged (or written, QoS 0); returns what is left."""
        deadline = time.monotonic() + timeout_s
        while (left := self.unsent()) and time.monotonic() < deadline:
            self.poll(0.01)
        return left

    @abstractmethod
    def close(self) -> None:
        """Disconnect cleanly; what is still unsent is counted as a `shutdown` failure."""

    @abstractmethod
    def snapshot(self) -> TransportSnapshot: ...
