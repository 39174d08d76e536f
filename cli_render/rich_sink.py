"""The progress sink for people: steps as lines, Pulumi updates as a progress bar, the live status view."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.live import Live
from rich.text import Text

from cli_render.local_views import pipeline_line, status_renderable, where_table
from cli_render.status_samples import run_with_status_samples
from cli_render.tail_view import message_line
from cli_render.terminal import Terminal
from cli_render.update_progress import UPDATE_EVENTS, UpdateProgress
from factory_core.local_results import LocalStatus
from factory_core.progress_events import (
    CostChanged,
    LocalStarted,
    LogLine,
    LogSources,
    ProgressEvent,
    ScalePlanned,
    StatusSample,
    TailMessage,
)

STATUS_LINE_EVERY_S = 10.0  # foreground `up` without a terminal: one status line this often


class _LogLayout:
    """How `logs` lines look: plain (one service), `==> name <==` blocks, or `name | line` (following)."""

    def __init__(self) -> None:
        self.services: tuple[str, ...] = ()
        self.follow = False
        self.last: str | None = None

    def line(self, event: LogLine) -> list[Text]:
        if len(self.services) <= 1:
            return [Text(event.line)]
        if self.follow:
            width = max(len(name) for name in self.services)
            return [Text.assemble((f"{event.service:<{width}} | ", "dim"), event.line)]
        header = [] if event.service == self.last else [Text(f"==> {event.service} <==", style="bold")]
        self.last = event.service
        return [*header, Text(event.line)]


class RichSink:
    """`ProgressSink` drawing on a rich console; safe to call from Pulumi's event thread."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.console = terminal.console
        self._lock = threading.RLock()
        self._update: UpdateProgress | None = None
        self._logs = _LogLayout()

    def step(self, message: str, *, warning: bool = False) -> None:
        # Messages carry paths and log tails: never let rich read them as markup.
        self.console.print(Text(message, style="yellow" if warning else ""), soft_wrap=True)

    def event(self, event: ProgressEvent) -> None:
        with self._lock:
            if isinstance(event, UPDATE_EVENTS):
                if self._update is not None:
                    self._update.handle(event)
            elif isinstance(event, LogSources):
                self._logs.services, self._logs.follow = event.services, event.follow
            elif isinstance(event, LogLine):
                for text in self._logs.line(event):
                    self.console.print(text, soft_wrap=True)
            elif isinstance(event, TailMessage):
                self.console.print(message_line(event), soft_wrap=True)
            elif isinstance(event, ScalePlanned):
                colour = "yellow" if event.verdict == "near-quota" else "green"
                for note in event.notes:
                    self.console.print(Text(note, style=colour))
            elif isinstance(event, CostChanged):
                self.console.print(Text(event.change.describe(), style="cyan"), soft_wrap=True)
            elif isinstance(event, LocalStarted):
                self.console.print(where_table(event.outputs))
                self.step(
                    f"up in {event.startup_s:.1f} s; Ctrl-C stops everything cleanly "
                    "(simulators drain, the archive catches up, the broker saves)"
                )
            elif isinstance(event, StatusSample):
                self.console.print(pipeline_line(event.pipeline, event.simulators))

    @contextmanager
    def _updating(self, name: str) -> Iterator[None]:
        with UpdateProgress(name, self.console) as progress:
            self._update = progress
            try:
                yield
            finally:
                self._update = None

    def operation(self, name: str) -> AbstractContextManager[None]:
        return self._updating(name)

    def watch(self, run: Callable[[], None], sample: Callable[[], LocalStatus]) -> None:
        if self.console.is_terminal:
            with Live(
                get_renderable=lambda: status_renderable(sample()),
                console=self.console,
                refresh_per_second=2,
                transient=True,
            ):
                run()
            return
        run_with_status_samples(
            run, sample, self.event, every_s=STATUS_LINE_EVERY_S, thread_name="status-lines"
        )

    def can_ask(self) -> bool:
        return self.terminal.stdin_is_tty()

    def confirm(self, question: str) -> bool:
        return self.terminal.ask(question)
