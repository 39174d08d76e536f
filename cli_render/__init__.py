"""How cli.py shows what the verbs do: rich output for people, or the one JSON style for `--json`.

Imported by cli.py only. `Renderer.sink` is the `ProgressSink` a verb reports through;
`Renderer.result` draws the result it returns; `Renderer.error` prints a failure as one line.
"""

from __future__ import annotations

import sys

from cli_render import human, terminal
from cli_render.json_style import JsonSink
from cli_render.query_view import write_csv
from cli_render.rich_sink import RichSink
from factory_core.verb_results import QueryResult, VerbResult
from factory_core.verbs import ProgressSink


class Renderer:
    def __init__(self, *, json_output: bool, csv_output: bool = False) -> None:
        self._json: JsonSink | None = None
        self._rich: RichSink | None = None
        self._csv = csv_output  # `query --format csv`: rows as CSV on stdout, progress as with rich
        self.sink: ProgressSink
        if json_output:
            self.sink = self._json = JsonSink()
        else:
            self.sink = self._rich = RichSink(terminal.terminal())

    def result(self, result: VerbResult) -> None:
        if self._json is not None:
            self._json.result(result)
        elif self._csv and isinstance(result, QueryResult):
            write_csv(result)
        elif self._rich is not None:
            human.render(result, self._rich.console)

    def error(self, error: BaseException) -> None:
        """One line on stderr, whatever the output mode (stdout stays valid JSON lines)."""
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else " ".join(str(error).split())
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
