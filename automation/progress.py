"""Pulumi engine events as a progress display (resources done/total, current step, failures) or JSON lines.

`on_event` callbacks arrive on the Automation API's log-watcher thread; both renderers are safe to
call from there. Events are read by attribute only, so this module needs no Pulumi import.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent

# "same" steps touch nothing; counting them would make a no-op update look busy.
_QUIET_OPS = {"same", "read", "refresh"}


def short_urn(urn: str) -> str:
    """`urn:pulumi:dev::iotfactory::iotfactory:iot:DeviceFleet$aws:iot/thing:Thing::sim-00` -> type + name."""
    parts = urn.split("::")
    if len(parts) < 4:
        return urn
    resource_type = parts[2].rsplit("$", 1)[-1]
    return f"{resource_type} {parts[3]}"


def event_record(event: EngineEvent) -> dict[str, Any] | None:
    """One engine event as a flat JSON-able dict, or None for events not worth showing."""
    if (pre := event.resource_pre_event) is not None:
        meta = pre.metadata
        return {"event": "resource-start", "op": _op(meta.op), "urn": meta.urn, "type": meta.type}
    if (done := event.res_outputs_event) is not None:
        meta = done.metadata
        return {"event": "resource-done", "op": _op(meta.op), "urn": meta.urn, "type": meta.type}
    if (failed := event.res_op_failed_event) is not None:
        meta = failed.metadata
        return {"event": "resource-failed", "op": _op(meta.op), "urn": meta.urn, "type": meta.type}
    if (diag := event.diagnostic_event) is not None:
        if diag.ephemeral or diag.severity == "debug":
            return None
        return {
            "event": "diagnostic",
            "severity": diag.severity,
            "urn": diag.urn,
            "message": (diag.prefix or "") + diag.message.rstrip(),
        }
    if (summary := event.summary_event) is not None:
        return {
            "event": "summary",
            "resource_changes": {_op(op): count for op, count in summary.resource_changes.items()},
            "duration_s": summary.duration_seconds,
            "maybe_corrupt": summary.maybe_corrupt,
        }
    # CancelEvent marks the end of every update, successful or not: nothing to show.
    return None


def _op(op: Any) -> str:
    return str(getattr(op, "value", op))


class JsonLinesRenderer:
    """`--json`: one JSON object per line on stdout, flushed, for pipes and CI logs."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, event: EngineEvent) -> None:
        record = event_record(event)
        if record is not None:
            self.emit(record)

    def emit(self, record: Mapping[str, Any]) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(json.dumps(record, default=str) + "\n")
            stream.flush()

    def note(self, message: str) -> None:
        self.emit({"event": "note", "message": message})

    def __enter__(self) -> JsonLinesRenderer:
        return self

    def __exit__(self, *_: object) -> None:
        return None


@dataclass
class _Tally:
    started: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    errors_by_urn: dict[str, str] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)


class ProgressRenderer:
    """Rich progress bar over the resources an operation touches, failures printed as they happen.

    The total grows as the engine announces steps (it plans while it applies), so the bar reads
    "done of announced", the way Pulumi's own display counts.
    """

    def __init__(self, operation: str, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False, highlight=False)
        self._operation = operation
        self._tally = _Tally()
        self._lock = threading.Lock()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[operation]}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("starting", total=None, operation=operation)

    @property
    def failures(self) -> dict[str, str]:
        return dict(self._tally.failed)

    @property
    def changes(self) -> dict[str, int]:
        return dict(self._tally.changes)

    def __enter__(self) -> ProgressRenderer:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def note(self, message: str) -> None:
        self._progress.console.print(message)

    def __call__(self, event: EngineEvent) -> None:
        record = event_record(event)
        if record is None:
            return
        with self._lock:
            self._apply(record)

    def _apply(self, record: Mapping[str, Any]) -> None:
        kind, tally, print_line = record["event"], self._tally, self._progress.console.print
        if kind == "resource-start" and record["op"] not in _QUIET_OPS:
            tally.started.add(record["urn"])
            self._progress.update(
                self._task,
                total=len(tally.started),
                description=f"{_verb(record['op'])} {short_urn(record['urn'])}",
            )
        elif kind == "resource-done" and record["urn"] in tally.started:
            tally.done.add(record["urn"])
            self._progress.update(self._task, completed=len(tally.done | set(tally.failed)))
        elif kind == "resource-failed":
            urn = record["urn"]
            message = tally.errors_by_urn.get(urn, "failed")
            tally.failed[urn] = message
            print_line(f"[red]✗ {_verb(record['op'])} {short_urn(urn)}: {message}[/red]", markup=True)
            self._progress.update(self._task, completed=len(tally.done | set(tally.failed)))
        elif kind == "diagnostic":
            self._diagnostic(record)
        elif kind == "summary":
            tally.changes = {op: n for op, n in record["resource_changes"].items() if n}
            self._progress.update(self._task, description=_summary_text(tally.changes))

    def _diagnostic(self, record: Mapping[str, Any]) -> None:
        message, urn, severity = record["message"], record.get("urn"), record["severity"]
        if severity == "error":
            if urn:
                # The failure event that follows names the resource; keep the cause for it.
                self._tally.errors_by_urn[urn] = _one_line(message)
                return
            self._progress.console.print(f"[red]error: {_one_line(message)}[/red]", markup=True)
        elif severity == "warning":
            where = f"{short_urn(urn)}: " if urn else ""
            self._progress.console.print(
                f"[yellow]warning: {where}{_one_line(message)}[/yellow]", markup=True
            )
        elif message.strip():
            self._progress.console.print(message.strip(), markup=False, highlight=False)


def _verb(op: str) -> str:
    return {
        "create": "creating",
        "update": "updating",
        "delete": "deleting",
        "replace": "replacing",
        "create-replacement": "creating replacement",
        "delete-replaced": "deleting replaced",
        "import": "importing",
    }.get(op, op)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) if len(lines) <= 3 else f"{lines[0]} … {lines[-1]}"


def _summary_text(changes: Mapping[str, int]) -> str:
    if not changes:
        return "no changes"
    return ", ".join(f"{count} {op}" for op, count in sorted(changes.items()))


Renderer = ProgressRenderer | JsonLinesRenderer


def renderer_for(operation: str, *, json_output: bool, console: Console | None = None) -> Renderer:
    return JsonLinesRenderer() if json_output else ProgressRenderer(operation, console)
