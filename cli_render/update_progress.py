"""A Pulumi operation as a rich progress bar: resources done of announced, current step, failures."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from factory_core.progress_events import (
    Diagnostic,
    ProgressEvent,
    ResourceDone,
    ResourceFailed,
    ResourceStarted,
    UpdateSummary,
)

# "same" steps touch nothing; counting them would make a no-op update look busy.
_QUIET_OPS = {"same", "read", "refresh"}
UPDATE_EVENTS = (ResourceStarted, ResourceDone, ResourceFailed, Diagnostic, UpdateSummary)


def short_urn(urn: str) -> str:
    """`urn:pulumi:dev::iotfactory::iotfactory:iot:DeviceFleet$aws:iot/thing:Thing::sim-00` -> type + name."""
    parts = urn.split("::")
    if len(parts) < 4:
        return urn
    resource_type = parts[2].rsplit("$", 1)[-1]
    return f"{resource_type} {parts[3]}"


@dataclass
class _Tally:
    started: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    errors_by_urn: dict[str, str] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)


class UpdateProgress:
    """Rich progress bar over the resources an operation touches, failures printed as they happen.

    The total grows as the engine announces steps (it plans while it applies), so the bar reads
    "done of announced", the way Pulumi's own display counts.
    """

    def __init__(self, operation: str, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
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

    def __enter__(self) -> UpdateProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def handle(self, event: ProgressEvent) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: ProgressEvent) -> None:
        tally, print_line = self._tally, self._progress.console.print
        if isinstance(event, ResourceStarted) and event.op not in _QUIET_OPS:
            tally.started.add(event.urn)
            self._progress.update(
                self._task,
                total=len(tally.started),
                description=f"{_verb(event.op)} {short_urn(event.urn)}",
            )
        elif isinstance(event, ResourceDone) and event.urn in tally.started:
            tally.done.add(event.urn)
            self._progress.update(self._task, completed=len(tally.done | set(tally.failed)))
        elif isinstance(event, ResourceFailed):
            message = tally.errors_by_urn.get(event.urn, "failed")
            tally.failed[event.urn] = message
            print_line(Text(f"✗ {_verb(event.op)} {short_urn(event.urn)}: {message}", style="red"))
            self._progress.update(self._task, completed=len(tally.done | set(tally.failed)))
        elif isinstance(event, Diagnostic):
            self._diagnostic(event)
        elif isinstance(event, UpdateSummary):
            tally.changes = {op: n for op, n in event.resource_changes.items() if n}
            self._progress.update(self._task, description=_summary_text(tally.changes))

    def _diagnostic(self, event: Diagnostic) -> None:
        message, urn, print_line = event.message, event.urn, self._progress.console.print
        if event.severity == "error":
            if urn:
                # The failure event that follows names the resource; keep the cause for it.
                self._tally.errors_by_urn[urn] = _one_line(message)
                return
            print_line(Text(f"error: {_one_line(message)}", style="red"))
        elif event.severity == "warning":
            where = f"{short_urn(urn)}: " if urn else ""
            print_line(Text(f"warning: {where}{_one_line(message)}", style="yellow"))
        elif message.strip():
            print_line(Text(message.strip()))


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
