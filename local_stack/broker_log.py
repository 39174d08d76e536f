"""What the broker refused, counted from its log: the only place an MQTT 3.1.1 client's refusal shows.

Mosquitto 2.0.11 at the stack's log level (information) logs a client cut for an oversize packet,
a connection refused during TLS (revoked, foreign or missing certificate), a client closed by the
dynamic-security administrator (a revoked identity's session), and a client id taken over by a
second connection of the same identity. Publishes denied by the ACL or dropped by
`message_size_limit` are logged only at debug level, which also logs every packet: the stack does
not run at that level, so they cannot be counted here (an MQTT 5 publisher sees them as PUBACK
reason codes; docs/local-stack.md).
"""

from __future__ import annotations

import threading
from pathlib import Path

from factory_core.local_results import BrokerRefusals

# `BrokerRefusals` field -> the text of its log lines (2.0.11's own wording)
PATTERNS: dict[str, tuple[bytes, ...]] = {
    "oversize_disconnects": (b"disconnected due to oversize packet", b"disconnected due to oversize payload"),
    "tls_refusals": (b"certificate verify failed", b"peer did not return a certificate"),
    "sessions_cut": (b"been disconnected by administrative action",),
    "takeovers": (b"already connected, closing old connection",),
}


class BrokerLogCounter:
    """Counts the lines of `PATTERNS` in the broker's log since this supervisor started."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # What earlier runs wrote is theirs: counting starts at the end of it.
        self._offset = path.stat().st_size if path.exists() else 0
        self._partial = b""
        self._counts = dict.fromkeys(PATTERNS, 0)

    def counts(self) -> BrokerRefusals:
        """Read what was written since the last call and return the totals."""
        with self._lock:
            self._read_new()
            return BrokerRefusals(**self._counts)

    def _read_new(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:  # replaced or truncated
            self._offset = 0
            self._partial = b""
        if size == self._offset:
            return
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(size - self._offset)
        self._offset += len(chunk)
        complete, _newline, self._partial = (self._partial + chunk).rpartition(b"\n")
        for line in complete.split(b"\n"):
            for name, needles in PATTERNS.items():
                if any(needle in line for needle in needles):
                    self._counts[name] += 1
