"""The benchmarks' goals come from README.md's performance table, and `--check` turns a miss into exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from goals import ROWS, TIMES, GoalError, check, finish, goals, parse_goal

README_TABLE = f"""# Project

## Performance

| what | measured | reference (same run) | ratio | goal |
| --- | --- | --- | --- | --- |
| Simulator, QoS 1 delivered msg/s, zero loss | 26,000 msg/s | SDK | **1.92{TIMES}** | ≥ 0.9{TIMES} |
| Local stack end to end, 60 s (`bench_local_stack.py`) | 1.000 | published | 1.000 | ≥ 1.0, p99 ≤ 2 s |

## Other

| what | goal |
| --- | --- |
| Simulator, QoS 1 delivered msg/s | ≥ 99{TIMES} |
"""


def test_every_benchmark_row_has_parseable_goals_in_the_real_readme() -> None:
    for row in ROWS:
        assert goals(row), row
    assert [(g.metric, g.op, g.bound) for g in goals("simulator-qos1")] == [("ratio", "≥", 0.9)]
    assert [(g.metric, g.op, g.bound) for g in goals("local-stack")] == [
        ("ratio", "≥", 1.0),
        ("p99", "≤", 2.0),
    ]
    assert [(g.metric, g.bound) for g in goals("fleet")] == [("p99", 0.25), ("rss", 300.0)]
    assert [(g.metric, g.op, g.bound) for g in goals("first-archive")] == [("value", "≤", 5.0)]


def test_conditions_and_their_defaults() -> None:
    assert [(g.metric, g.op, g.bound) for g in parse_goal("p99 < 250 ms, RSS < 300 MB")] == [
        ("p99", "<", 0.25),
        ("rss", "<", 300.0),
    ]
    assert [(g.metric, g.op, g.bound) for g in parse_goal("1.0")] == [("ratio", "≥", 1.0)]
    assert [(g.metric, g.op, g.bound) for g in parse_goal("≤ 5 s")] == [("value", "≤", 5.0)]
    with pytest.raises(GoalError, match="is not"):
        parse_goal("fast enough")


def test_a_missed_goal_is_exit_1_and_the_verdicts_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README_TABLE, encoding="utf-8")
    verdicts = check("local-stack", {"ratio": 0.999, "p99": 0.5}, readme)
    assert [(v.metric, v.met) for v in verdicts] == [("ratio", False), ("p99", True)]
    out = tmp_path / "results" / "local.json"
    assert finish(verdicts, out, {"local-stack": {"ratio": 0.999}}) == 1
    document = json.loads(out.read_text())
    assert document["verdicts"][0] == {
        "row": "local-stack",
        "metric": "ratio",
        "value": 0.999,
        "goal": "≥ 1.0",
        "met": False,
    }
    printed = capsys.readouterr()
    assert "MISS local-stack: ratio = 0.999 (goal ≥ 1.0)" in printed.out and "1 goal(s) missed" in printed.err
    # Only the Performance section counts; a metric that was not measured is not judged.
    assert [v.met for v in check("simulator-qos1", {"ratio": 1.2}, readme)] == [True]
    assert finish(check("simulator-qos1", {"ratio": 1.2}, readme), None, {}) == 0
    assert check("simulator-qos1", {}, readme) == []


def test_a_row_missing_from_the_table_is_a_clear_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README_TABLE, encoding="utf-8")
    with pytest.raises(GoalError, match="has 0 rows starting 'Simulator, QoS 0"):
        goals("simulator-qos0", readme)
