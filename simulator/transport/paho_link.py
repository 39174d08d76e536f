"""What the fleet engine needs from one paho connection (`Link`), and `PlainLink`, paho's public API.

The engine keeps the queue, the window, the governor and reconnects; a link only moves messages.
`paho_fastpath.FastLink` is the fast implementation (its own framing and PUBACK reading);
`PlainLink` is the fallback when its self-test fails: `publish`, `on_publish`, `loop_read` and
`loop_write`, nothing private. paho then writes each message as it is published (one TLS write
each), which is slower, but delivery is the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# `Link.publish` results besides a packet id (> 0, waiting for its PUBACK or, QoS 0, its write):
PUBLISHED = 0  # QoS 0, handed over: count it
SEND_LATER = -1  # not taken now (the client's own queue is full): keep it queued
CONNECTION_LOST = -2

AckCallback = Callable[[int, float], None]  # (packet id, monotonic time) when a message is done


class Link(Protocol):
    """One connected paho client as the fleet engine drives it, from its selector loop."""

    client: mqtt.Client
    lingers: bool  # True: the engine sends the write buffer after linger_s; False: paho writes

    def attach(self) -> bool:
        """Called once `connect` returned; False when the broker hung up meanwhile."""

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """Hand over one message: a packet id, PUBLISHED, SEND_LATER or CONNECTION_LOST."""

    def backlogged(self) -> bool:
        """QoS 0: too much written and not yet sent to take more now."""

    def buffered_bytes(self) -> int: ...

    def read(self) -> bool:
        """Handle what the socket has; False when the connection is lost."""

    def write(self) -> bool | None:
        """Send what is queued; whether more remains, None when the connection broke."""

    def unsent(self) -> bool:
        """Bytes the client holds that the kernel has not taken yet."""

    def disconnect(self) -> None: ...

    def close(self) -> None: ...


class PlainLink:
    """paho's public API only: the fallback when the fast path's self-test fails."""

    __slots__ = ("client", "on_ack")
    lingers = False

    def __init__(self, client: mqtt.Client, on_ack: AckCallback, qos: int, topics: dict[str, bytes]) -> None:
        self.client = client
        self.on_ack = on_ack
        # QoS 1: on the PUBACK. QoS 0: once paho wrote it (it calls on_publish then, too).
        client.on_publish = self._on_publish

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.on_ack(mid, time.monotonic())

    def attach(self) -> bool:
        return self.client.socket() is not None

    def publish(self, topic: str, payload: bytes, qos: int) -> int:
        info = self.client.publish(topic, payload, qos)
        if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            return CONNECTION_LOST
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return SEND_LATER
        # paho writes at once when it can, and then calls on_publish before `publish` returns,
        # when the engine does not know the packet id yet: such a message is counted here.
        if qos == 0 and info.is_published():
            return PUBLISHED
        return info.mid

    def backlogged(self) -> bool:
        return False  # the engine's window holds QoS 0 messages until paho has written them

    def buffered_bytes(self) -> int:
        return 0

    def read(self) -> bool:
        client = self.client
        while True:
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            sock = client.socket()
            if sock is None:
                return False
            # TLS may hold decrypted bytes that select() does not see.
            pending = getattr(sock, "pending", None)
            if pending is None or not pending():
                return True

    def write(self) -> bool | None:
        client = self.client
        try:
            if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return None
        except OSError:
            return None
        return client.want_write()

    def unsent(self) -> bool:
        return self.client.want_write()

    def disconnect(self) -> None:
        with contextlib.suppress(Exception):  # best effort on the way out
            self.client.disconnect()  # paho sends DISCONNECT and closes the socket

    def close(self) -> None:
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()  # type: ignore[union-attr]
