"""Test helpers for alert routing: a real webhook receiver (an HTTP server in the test process) and
Alertmanager's v2 API (alerts, silences) over plain HTTP."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from local_stack.readiness import wait_until


@dataclass
class Notification:
    """One webhook delivery from Alertmanager: its status and each alert's labels."""

    status: str
    receiver: str
    group_labels: dict[str, str]
    alerts: list[dict[str, str]]  # labels of every alert in the notification
    alert_statuses: list[str] = field(default_factory=list)


class WebhookReceiver:
    """Records every notification POSTed to it; the URL is `http://127.0.0.1:<ephemeral>/alerts`."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                notification = Notification(
                    status=body["status"],
                    receiver=body["receiver"],
                    group_labels=dict(body["groupLabels"]),
                    alerts=[dict(alert["labels"]) for alert in body["alerts"]],
                    alert_statuses=[alert["status"] for alert in body["alerts"]],
                )
                with receiver._lock:
                    receiver.notifications.append(notification)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def matching(self, **labels: str) -> list[Notification]:
        """Notifications carrying a firing alert with all these labels."""
        return [
            notification
            for notification in self.received()
            if any(
                status == "firing" and all(alert.get(k) == v for k, v in labels.items())
                for alert, status in zip(notification.alerts, notification.alert_statuses, strict=True)
            )
        ]

    def wait_for(self, timeout_s: float, what: str, **labels: str) -> Notification:
        if not wait_until(lambda: bool(self.matching(**labels)), timeout_s, poll_s=0.1):
            raise AssertionError(
                f"no notification for {what} {labels} within {timeout_s:g} s; got {self.received()}"
            )
        return self.matching(**labels)[0]

    def wait_for_count(self, count: int, timeout_s: float, **labels: str) -> None:
        if not wait_until(lambda: len(self.matching(**labels)) >= count, timeout_s, poll_s=0.05):
            got = len(self.matching(**labels))
            raise AssertionError(f"{got} notifications for {labels} within {timeout_s:g} s, not {count}")


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver._thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()
        receiver._thread.join(5)


def _request(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read()
    return json.loads(text) if text else None


def _time(offset_s: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)).isoformat()


def post_alert(base_url: str, labels: Mapping[str, str], lasts_s: float = 600) -> None:
    """What Prometheus does: POST a firing alert (ends in `lasts_s` unless posted again)."""
    _request(f"{base_url}/api/v2/alerts", "POST", [{"labels": dict(labels), "endsAt": _time(lasts_s)}])


def add_silence(base_url: str, matchers: Mapping[str, str], minutes: float = 60) -> str:
    """A silence through Alertmanager's API (what `amtool silence add` does); returns its id."""
    silence = {
        "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
        "startsAt": _time(-1),
        "endsAt": _time(minutes * 60),
        "createdBy": "tests",
        "comment": "silenced by the test",
    }
    return str(_request(f"{base_url}/api/v2/silences", "POST", silence)["silenceID"])


def alert_states(base_url: str, **labels: str) -> list[dict[str, Any]]:
    """Alertmanager's view of the alerts with these labels: state, silencedBy, inhibitedBy."""
    alerts = _request(f"{base_url}/api/v2/alerts")
    return [
        alert["status"] for alert in alerts if all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def wait_state(
    base_url: str, check: Callable[[list[dict[str, Any]]], bool], what: str, **labels: str
) -> None:
    if not wait_until(lambda: check(alert_states(base_url, **labels)), 20, poll_s=0.1):
        states = alert_states(base_url, **labels)
        raise AssertionError(f"Alertmanager never showed {what} for {labels}: {states}")
