"""`tail` drawn for people: one readable line per message."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from factory_core.progress_events import TailMessage

# Ground-truth fields worth a word, in this order, when they are set.
_EVENT_FIELDS = ("fault", "fault_class", "signal", "severity", "from_state", "to_state", "reason")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "-" if value is None else str(value)


def _telemetry(payload: dict[str, Any]) -> str:
    words = [str(payload.get("state", ""))]
    signals = payload.get("signals")
    if isinstance(signals, dict):
        for name, reading in signals.items():
            if isinstance(reading, list) and len(reading) == 2:
                words.append(f"{name} {_number(reading[0])} {reading[1]}")
    parts = payload.get("parts")
    if isinstance(parts, dict):
        words.append(f"parts {parts.get('good', '-')} good {parts.get('rejected', '-')} rejected")
    return "  ".join(word for word in words if word)


def _ground_truth(payload: dict[str, Any]) -> str:
    words = [f"ground truth {payload.get('event', '?')}"]
    words += [f"{name} {_number(payload[name])}" for name in _EVENT_FIELDS if payload.get(name) is not None]
    return "  ".join(words)


def message_line(message: TailMessage) -> Text:
    """`09:05:04.321 site-00/line-01/site-00-line-01-cnc_mill-01 #42 running  temperature 41.2 °C …`"""
    payload = message.payload
    moment = payload.get("ts") if payload else None
    # The payload's own time (model time); the arrival time when it has none.
    if isinstance(moment, str) and len(moment) >= 23:
        clock = moment[11:23]
    else:
        clock = f"{message.received_at:%H:%M:%S.%f}"[:12]
    where = "/".join(part for part in (message.site, message.line, message.machine) if part) or message.topic
    text = Text(f"{clock} ", style="dim")
    text.append(where, style="cyan" if message.payload_kind == "telemetry" else "magenta")
    if payload is None:
        return text.append(f"  not a JSON object: {message.excerpt!r}", style="red")
    text.append(f" #{payload.get('seq', '?')} ")
    if message.payload_kind == "ground_truth":
        return text.append(_ground_truth(payload), style="magenta")
    return text.append(_telemetry(payload))
