"""The independent count local-stack tests hold `verify` against: a broker subscriber of its own (the
read-only observer identity), and the archive read line by line without the verify module."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from support_mqtt import tls_client

from factory_core.payload_contract import payload_kind
from local_stack.archive import RAW_PREFIX, LocalArchive, iter_records
from local_stack.certificate_authority import CA_CERT_FILE, CertificateAuthority
from local_stack.identities import OBSERVER_IDENTITY

Message = tuple[str, str, str, int]  # machine, kind, boot, seq
MessageHandler = Callable[[Any, Any, mqtt.MQTTMessage], None]


def subscribe_to_everything(client: mqtt.Client, broker_port: int, on_message: MessageHandler) -> None:
    """Connect `client`, subscribe it to every simulator topic, and return once the broker granted it."""
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe("factory/simulator/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    if not subscribed.wait(10):
        raise AssertionError("the auditor could not subscribe")


class Auditor:
    """A subscriber of its own (clean session, reconnecting): every (machine, kind, boot, seq) it receives."""

    def __init__(self, ca_dir: Path, broker_port: int, directory: Path, client_id: str) -> None:
        ca = CertificateAuthority.load(ca_dir)
        cert = ca.issue_client(OBSERVER_IDENTITY, directory / "auditor", file_stem="auditor")
        self.seen: set[Message] = set()
        self.lock = threading.Lock()
        self.client = tls_client(ca_dir / CA_CERT_FILE, cert, client_id)
        self.client.reconnect_delay_set(0.1, 1)
        subscribe_to_everything(self.client, broker_port, self._on_message)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        document = orjson.loads(message.payload)
        with self.lock:
            self.seen.add(message_identity(document))

    def stop(self) -> set[Message]:
        self.client.loop_stop()
        self.client.disconnect()
        with self.lock:
            return set(self.seen)


def message_identity(document: dict[str, Any]) -> Message:
    return (document["machine"], payload_kind(document), document["boot"], int(document["seq"]))


def archived_messages(root: Path) -> list[Message]:
    """Every archived record, read without the verify module."""
    archive = LocalArchive(root)
    return [
        message_identity(orjson.loads(line))
        for info in archive.list_objects(RAW_PREFIX)
        for line in iter_records(archive.get_object(info.key).body)
    ]
