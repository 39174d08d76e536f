"""`tail` for the local stack: live messages from the broker, watched with a read-only identity.

The supervisor lends each `tail` an identity of its own (`observer-<hex>`, read-only, may subscribe
under `factory/simulator/#` only) and takes it back when `tail` ends, so two people watching never
close each other's connection (a certificate's CN is its one client id). The broker filters by
site, machine and kind; this only decodes what arrives and hands it to the sink.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import ssl
from typing import Any

import orjson

from factory_core.archive_modes import strip_basic_ingest
from factory_core.errors import OperationFailed, UsageError
from factory_core.fleet import ground_truth_topic, telemetry_topic
from factory_core.local_results import TailResult
from factory_core.progress_events import TailMessage
from factory_core.verbs import ProgressSink, TailRequest
from local_stack.control import ControlClient, ObserverGrant
from local_stack.message_check import topic_kind
from local_stack.paths import StatePaths
from local_stack.state_file import is_running
from local_stack.status_document import STACK

_SITE = re.compile(r"^site-[0-9]{2,}$")
_MACHINE = re.compile(r"^(?P<site>site-[0-9]{2,})-(?P<line>line-[0-9]{2,})-[a-z_]+-[0-9]{2,}$")
KINDS = ("telemetry", "ground_truth")
EXCERPT_CHARACTERS = 200
CONNECT_TIMEOUT_S = 10.0


def topic_filters(request: TailRequest) -> tuple[str, ...]:
    """The subscriptions that give exactly the asked-for messages (one per kind)."""
    site, line, machine = request.site or "+", "+", request.machine or "+"
    if request.site is not None and not _SITE.match(request.site):
        raise UsageError(f"--site {request.site!r} is not a site id; use e.g. site-00")
    if request.machine is not None:
        parsed = _MACHINE.match(request.machine)
        if parsed is None:
            raise UsageError(
                f"--machine {request.machine!r} is not a machine id; use e.g. site-00-line-01-cnc_mill-01"
            )
        if request.site is not None and parsed["site"] != request.site:
            raise UsageError(f"machine {request.machine} is not one of {request.site}'s; leave out --site")
        site, line = parsed["site"], parsed["line"]
    if request.kind is not None and request.kind not in KINDS:
        raise UsageError(f"--kind {request.kind!r}: use telemetry or ground_truth")
    if request.count is not None and request.count < 1:
        raise UsageError(f"--count {request.count}: use a whole number of messages, at least 1")
    kinds = (request.kind,) if request.kind else KINDS
    topics = {"telemetry": telemetry_topic, "ground_truth": ground_truth_topic}
    return tuple(topics[kind](site, line, machine) for kind in kinds)


def tail(paths: StatePaths, request: TailRequest, sink: ProgressSink) -> TailResult:
    """Stream messages to the sink until Ctrl-C (or `count` of them); exit clean either way."""
    filters = topic_filters(request)
    if not is_running(paths):
        raise UsageError("the local stack is not running; start it with `python cli.py up --stack local`")
    control = ControlClient(paths, timeout_s=30.0)
    grant = control.lend_observer()
    # In archive mode basic-ingest the devices publish behind the rule's prefix: watch there.
    filters = tuple(f"{grant.topic_prefix}{topic_filter}" for topic_filter in filters)
    watcher = _Watcher(grant, filters, sink, request.count)
    try:
        watcher.run()
    finally:
        watcher.close()
        # If the stack stopped meanwhile, its next `up` forgets the identity anyway.
        with contextlib.suppress(OperationFailed, UsageError):
            control.return_observer(grant.identity)
    return TailResult(stack=STACK, identity=grant.identity, topic_filters=filters, messages=watcher.seen)


class _Watcher:
    """One paho client on the caller's thread: messages are handed to the sink as they are read."""

    def __init__(
        self, grant: ObserverGrant, filters: tuple[str, ...], sink: ProgressSink, count: int | None
    ) -> None:
        # Imported here: only `tail` needs paho among the verbs.
        import paho.mqtt.client as mqtt

        self.grant, self.filters, self.sink, self.count = grant, filters, sink, count
        self.seen = 0
        self.refused: str | None = None
        self.lost = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=grant.identity, protocol=mqtt.MQTTv311
        )
        context = ssl.create_default_context(cafile=grant.ca)
        context.load_cert_chain(grant.cert, grant.key)
        self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def run(self) -> None:
        try:
            self.client.connect(self.grant.host, self.grant.port, keepalive=30)
        except (OSError, ssl.SSLError) as error:
            where = f"{self.grant.host}:{self.grant.port}"
            raise OperationFailed(f"could not reach the broker on {where}: {error}") from None
        try:
            while not self._done():
                self.client.loop(timeout=0.25)
                if self.refused:
                    raise OperationFailed(self.refused)
                if self.lost:
                    raise OperationFailed(
                        "the broker closed the connection (restarted or stopped); run `tail` again"
                    )
        except KeyboardInterrupt:
            return  # Ctrl-C is how `tail` is meant to end

    def _done(self) -> bool:
        return self.count is not None and self.seen >= self.count

    def close(self) -> None:
        self.client.disconnect()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.refused = f"the broker refused the observer identity: {reason}"
            return
        for topic_filter in self.filters:
            client.subscribe(topic_filter, qos=0)

    def _on_subscribe(self, _client: Any, _userdata: Any, _mid: int, codes: Any, _props: Any) -> None:
        if any(code.is_failure for code in codes):
            self.refused = f"the broker refused the subscription to {', '.join(self.filters)}"

    def _on_disconnect(self, *_args: Any) -> None:
        self.lost = True

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        if self._done():
            return
        self.seen += 1
        self.sink.event(describe(message.topic, message.payload))


def describe(topic: str, payload: bytes) -> TailMessage:
    """One message as `tail` shows it: where it came from (its topic) and its decoded payload."""
    kind = topic_kind(strip_basic_ingest(topic)[1])
    parts = topic.split("/")
    site, line, machine = (parts[-3], parts[-2], parts[-1]) if kind else (None, None, None)
    document: dict[str, Any] | None = None
    excerpt = None
    try:
        decoded = orjson.loads(payload)
        document = decoded if isinstance(decoded, dict) else None
    except orjson.JSONDecodeError:
        pass
    if document is None:
        excerpt = payload[:EXCERPT_CHARACTERS].decode("utf-8", errors="replace")
    return TailMessage(
        topic=topic,
        payload_kind=kind,
        site=site,
        line=line,
        machine=machine,
        received_at=dt.datetime.now(dt.UTC),
        payload=document,
        excerpt=excerpt,
    )
