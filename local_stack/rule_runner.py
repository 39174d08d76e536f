"""The local stand-in for the AWS IoT topic rule: subscribe to the fleet's topics and archive every message.

`SELECT * FROM 'factory/simulator/#'` in the cloud feeds Kinesis Data Firehose, which writes GZIP'd
JSON-lines batches to S3. Here one process does both: a persistent-session QoS 1 subscriber
(`mqtt_session`) whose messages are checked (`message_check`) and batched, each batch written
atomically to the archive and only then acknowledged (`archive_writer`), so a crash of this
process or of the broker redelivers instead of losing. This module is the loop that wires them,
and its command line.

Run it with `python -m local_stack.rule_runner --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import start_http_server, write_to_textfile
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory_core.archive_modes import TOPIC_PREFIX_PATTERN
from factory_core.errors import OperationFailed, UsageError, describe_validation_error
from factory_core.fleet import TOPIC_ROOT
from factory_core.mqtt_wire import PUBLISH_DUP, PUBLISH_RETAIN
from local_stack.archive import DEFAULT_STREAM_NAME, Archive, S3Archive, open_archive, validate_stream_name
from local_stack.archive_writer import ArchiveMetrics, ArchiveMode, ArchiveWriter, Batcher
from local_stack.identities import RULE_RUNNER_IDENTITY
from local_stack.message_check import Received, verdict_for
from local_stack.mosquitto import BrokerConfig
from local_stack.mqtt_session import ConnectionLost, SubscriberSession, connect_with_backoff
from local_stack.ports import port_in_use
from simulator.transport.publisher import TransportOptions
from simulator.transport.tls import client_ssl_context

log = logging.getLogger("iotfactory.rule_runner")

DEFAULT_METRICS_HOST = "127.0.0.1"


class RuleRunnerOptions(BaseModel):
    """Everything the rule runner process needs; its command-line flags map 1:1 onto these fields.

    (Not the stack file's `rule_runner` section, which holds the few of these a user tunes.)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    ca: Path
    cert: Path
    key: Path
    client_id: str = Field(default=RULE_RUNNER_IDENTITY, min_length=1, max_length=128)
    topic_filter: str = f"{TOPIC_ROOT}/#"
    # Basic Ingest: the devices publish to `$aws/rules/<rule>/` + their topic. Mosquitto has no rules
    # engine and `#` never matches a `$` topic, so the runner subscribes to the prefixed filter and,
    # like AWS IoT before the rule sees a message, takes the prefix off.
    basic_ingest_prefix: str = Field(default="", pattern=TOPIC_PREFIX_PATTERN)
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
    final_metrics: Path | None = None  # the exporter's last exposition, written on exit

    @property
    def subscription(self) -> str:
        return f"{self.basic_ingest_prefix}{self.topic_filter}"

    @property
    def batch_limit(self) -> int:
        if self.receive_window > 0:
            return min(self.max_batch, self.receive_window)
        return self.max_batch


class RuleRunner:
    """One MQTT session (fixed client id, clean session off, QoS 1) feeding a `Batcher`.

    Everything runs on the calling thread: `read()` frames the messages that arrived, they are
    checked and buffered, and the flush happens between reads, so there are no locks and an
    acknowledgement can never overtake the write it depends on.
    """

    def __init__(
        self, settings: RuleRunnerOptions, archive: Archive, metrics: ArchiveMetrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ArchiveMetrics()
        self.batcher = Batcher(
            ArchiveWriter(archive, settings.stream_name, settings.mode),
            self.metrics,
            batch_limit=settings.batch_limit,
            flush_interval_s=settings.flush_interval_s,
            retry_max_s=settings.reconnect_max_s,
        )
        self._stop = threading.Event()
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

    def stop(self) -> None:
        """Ask `run()` to flush, acknowledge, disconnect and return (signal-handler safe)."""
        self._stop.set()

    def run(self) -> None:
        """Archive until `stop()`; survives broker restarts and archive outages; raises only on bad config."""
        session, batcher = self._session, self.batcher
        while not self._stop.is_set():
            if not session.connected:
                if batcher.pending and not self._flush():
                    # Keep what we hold when we can: if the broker lost it (killed before its
                    # autosave) this copy is the only one, and if not, its redelivery is recognised.
                    # When the archive is down too, the broker's unacknowledged copy must do.
                    log.warning("%d unwritten messages left to the broker's redelivery", len(batcher.pending))
                    batcher.pending.clear()
                if not self._connect():
                    break
                continue
            try:
                if batcher.stalled():
                    # The archive is failing and the batch is full: stop reading, so memory stays
                    # bounded even with an unlimited receive window; the broker holds the rest.
                    session.send_pending()
                    self._stop.wait(min(0.1, batcher.retry_in_s()))
                else:
                    self._receive(batcher.wait_s())
                if batcher.due():
                    self._flush()
                session.keepalive()
                if session.want_write:
                    session.send_pending()
            except ConnectionLost as error:
                if not self._stop.is_set():
                    log.warning("connection to the broker lost (%s); reconnecting", error)
        self._shutdown()

    def _connect(self) -> bool:
        settings = self.settings
        return connect_with_backoff(
            self._session,
            settings.subscription,
            self._stop,
            (settings.reconnect_min_s, settings.reconnect_max_s),
            self._mark_subscribed,
        )

    def _mark_subscribed(self, how: str) -> None:
        log.info(
            "%s to %s at %s:%s", how, self.settings.subscription, self.settings.endpoint, self.settings.port
        )
        if self.settings.ready_file is not None:
            _write_ready_file(self.settings)

    def _receive(self, timeout_s: float) -> None:
        publishes = self._session.read(timeout_s)
        if not publishes:
            return
        self.messages_received += len(publishes)
        received_at = time.time()
        batcher = self.batcher
        pending = batcher.receiving()
        instant_acks: list[int] = []
        prefix = self.settings.basic_ingest_prefix
        for first, topic, mid, payload in publishes:
            if prefix and topic.startswith(prefix):
                topic = topic[len(prefix) :]  # what the cloud rule's topic() returns
            qos = (first >> 1) & 0x03
            if first & PUBLISH_RETAIN:
                # Retained: sent because we subscribed, not because a device published now. The
                # cloud rule sees each publish once, so does the archive.
                if qos:
                    instant_acks.append(mid)
                continue
            if first & PUBLISH_DUP and qos and batcher.already_written(mid, topic, payload):
                self.redeliveries_skipped += 1
                instant_acks.append(mid)
                continue
            pending.append(Received(mid, qos, topic, payload, received_at, verdict_for(topic, payload)))
        self._session.ack(instant_acks)

    def _flush(self) -> bool:
        return self.batcher.flush(self._acknowledge)

    def _acknowledge(self, mids: list[int]) -> None:
        if self._session.connected:
            self._session.ack(mids)

    def _shutdown(self) -> None:
        flushed = True
        if self.batcher.pending:
            flushed = self._flush()
            for _ in range(3):
                if flushed:
                    break
                time.sleep(0.5)
                flushed = self._flush()
        # The last PUBACKs go out before DISCONNECT; reading now would only take in messages we
        # could not write any more (they stay queued in our session instead).
        self._session.disconnect()
        if not flushed:
            raise OperationFailed(
                f"could not write {len(self.batcher.pending)} messages to"
                f" {self.batcher.writer.archive.location}; they stay unacknowledged in the broker"
                " session and will be archived on the next start"
            )


def _write_ready_file(settings: RuleRunnerOptions) -> None:
    assert settings.ready_file is not None
    info = {"pid": os.getpid(), "metrics_port": settings.metrics_port or None, "archive": settings.archive}
    temp = settings.ready_file.with_name(settings.ready_file.name + ".tmp")
    temp.write_text(json.dumps(info) + "\n")
    temp.replace(settings.ready_file)


# -- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_stack.rule_runner",
        description="Archive every message under factory/simulator/# (the local IoT topic rule).",
    )
    _broker_flags(parser)
    _archive_flags(parser)
    parser.add_argument("--metrics-host", default=DEFAULT_METRICS_HOST)
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus exporter port (0 = off)")
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="written (JSON) once the subscription is in place"
    )
    parser.add_argument(
        "--final-metrics",
        type=Path,
        default=None,
        help="written on exit: the exporter's last exposition (counts after the last scrape)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _broker_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RuleRunnerOptions.model_fields
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
        help="fixed MQTT client id: the persistent session is keyed on it (the local broker uses the"
        " certificate's CN instead, whatever this says)",
    )
    parser.add_argument("--topic", dest="topic_filter", default=defaults["topic_filter"].default)
    parser.add_argument(
        "--basic-ingest-prefix",
        default="",
        help="read the topics behind this rule's Basic Ingest prefix ($aws/rules/<rule>/) and archive"
        " them without it",
    )


def _archive_flags(parser: argparse.ArgumentParser) -> None:
    defaults = RuleRunnerOptions.model_fields
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


def settings_from_args(argv: Sequence[str] | None = None) -> tuple[RuleRunnerOptions, str]:
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
        settings = RuleRunnerOptions(**args)
    except ValidationError as error:
        flag = "--" + str(error.errors()[0]["loc"][0]).removesuffix("_s").replace("_", "-")
        fix = f"fix {flag}; see --help"
        message = describe_validation_error(error, "", fix, model=RuleRunnerOptions, most=1)
        raise UsageError(f"rule runner {message}") from None
    validate_stream_name(settings.stream_name)
    return settings, log_level


def _start_metrics(settings: RuleRunnerOptions, metrics: ArchiveMetrics) -> Any:
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
        settings.subscription,
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
        if settings.final_metrics is not None:
            write_to_textfile(str(settings.final_metrics), metrics.registry)
    log.info(
        "stopped: %d messages received, %d redeliveries recognised",
        runner.messages_received,
        runner.redeliveries_skipped,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
