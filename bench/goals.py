"""The benchmarks' goals, read from the one place they are written: README.md's performance table.

Each row's "goal" cell is a comma-separated list of conditions, `[metric] [op] number [unit]`:
`≥ 0.9x` (a ratio; README writes the multiplication sign), `≤ 5 s`, `p99 < 250 ms`, `RSS < 300 MB`.
Without a metric name a condition is about the row's ratio (no unit, or the sign) or the row's
measured value (a unit); without an operator it means at least. A bench script run with `--check`
measures, asks `check(row, measured)` for the verdicts and exits 1 if any goal is missed
(`finish`), so a scheduled workflow fails on a regression.
The table is parsed with markdown-it (a CommonMark parser), not by splitting lines.
"""

from __future__ import annotations

import json
import operator
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "Performance"
# Benchmark rows by the start of their "what" cell.
ROWS: Mapping[str, str] = {
    "simulator-qos1": "Simulator, QoS 1 delivered msg/s",
    "simulator-qos0": "Simulator, QoS 0 delivered msg/s",
    "fleet": "Fleet: 10,000 machines",
    "local-stack": "Local stack end to end",
    "first-archive": "`up --detach` to the first archived message",
}
_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "≥": operator.ge,
    ">=": operator.ge,
    "≤": operator.le,
    "<=": operator.le,
    "<": operator.lt,
    ">": operator.gt,
}
TIMES = "\N{MULTIPLICATION SIGN}"
_CONDITION = re.compile(
    r"^(?:(?P<metric>[A-Za-z][\w ]*?)\s+)?(?P<op>≥|>=|≤|<=|<|>)?\s*"
    rf"(?P<number>\d[\d,]*(?:\.\d+)?)\s*(?P<unit>{TIMES}|ms|s|MB)?$"
)
_SCALE = {"ms": 0.001}  # to the unit the bench scripts report: seconds


class GoalError(ValueError):
    """README's performance table does not say what a bench script needs."""


@dataclass(frozen=True)
class Goal:
    metric: str  # ratio, value, p99, rss
    op: str
    bound: float  # in seconds for times, MB for memory, a plain number otherwise
    text: str  # as written in README.md

    def met(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.bound)


@dataclass(frozen=True)
class Verdict:
    row: str
    metric: str
    value: float
    goal: str
    met: bool


def parse_goal(cell: str) -> tuple[Goal, ...]:
    goals = []
    for text in (part.strip() for part in cell.split(",") if part.strip()):
        match = _CONDITION.match(text)
        if match is None:
            raise GoalError(f"README.md performance goal {text!r} is not '[metric] op number [unit]'")
        unit = match["unit"]
        metric = (match["metric"] or ("ratio" if unit in (None, TIMES) else "value")).lower()
        bound = float(match["number"].replace(",", "")) * _SCALE.get(unit or "", 1.0)
        goals.append(Goal(metric, match["op"] or "≥", bound, text))
    return tuple(goals)


def performance_table(readme: Path = README) -> dict[str, str]:
    """The performance table's rows: the "what" cell as written -> the "goal" cell."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(readme.read_text(encoding="utf-8"))
    in_section, header, rows, row = False, [], {}, []
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            in_section = tokens[index + 1].content.strip() == SECTION
        elif in_section and token.type == "inline" and tokens[index - 1].type in ("th_open", "td_open"):
            (header if tokens[index - 1].type == "th_open" else row).append(token.content.strip())
        elif in_section and token.type == "tr_close" and row:
            cells = dict(zip(header, row, strict=False))
            rows[cells.get("what", "")] = cells.get("goal", "")
            row = []
    return rows


def goals(row: str, readme: Path = README) -> tuple[Goal, ...]:
    start = ROWS[row]
    table = performance_table(readme)
    cells = [goal for what, goal in table.items() if what.startswith(start)]
    if len(cells) != 1:
        raise GoalError(f"README.md's {SECTION} table has {len(cells)} rows starting {start!r}; it needs one")
    parsed = parse_goal(cells[0])
    if not parsed:
        raise GoalError(f"README.md's {SECTION} row {start!r} has no goal")
    return parsed


def check(row: str, measured: Mapping[str, float], readme: Path = README) -> list[Verdict]:
    """A verdict for every goal of the row whose metric was measured."""
    return [
        Verdict(row, goal.metric, measured[goal.metric], goal.text, goal.met(measured[goal.metric]))
        for goal in goals(row, readme)
        if goal.metric in measured
    ]


def finish(verdicts: Sequence[Verdict], json_path: Path | None, results: Mapping[str, object]) -> int:
    """Print the verdicts, write them (and the raw results) as JSON, and return the exit code."""
    for verdict in verdicts:
        mark = "ok  " if verdict.met else "MISS"
        print(f"{mark} {verdict.row}: {verdict.metric} = {verdict.value:.3f} (goal {verdict.goal})")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        document = {"verdicts": [asdict(verdict) for verdict in verdicts], "results": results}
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    missed = [verdict for verdict in verdicts if not verdict.met]
    if missed:
        print(f"{len(missed)} goal(s) missed (README.md, {SECTION})", file=sys.stderr)
    return 1 if missed else 0
