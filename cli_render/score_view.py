"""`score`'s report for people: one row per fault kind, then the totals (`--json` has every field)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from factory_core.score_report import FAILURE_MODES_ROW, KindScore, ScoreReport

_COMPACT: dict[str, Any] = {"box": box.SIMPLE_HEAD, "padding": 0, "pad_edge": False, "show_edge": False}


def duration(seconds: float | None) -> str:
    """3600 -> '1.0h', 90 -> '1.5m', None -> '-' (compact: the table fits 80 columns)."""
    if seconds is None:
        return "-"
    sign, value = ("-" if seconds < 0 else ""), abs(seconds)
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("m", 60.0)):
        if value >= size:
            return f"{sign}{value / size:.1f}{unit}"
    return f"{sign}{value:.0f}s"


def _cells(row: KindScore) -> list[str]:
    return [
        row.kind,
        str(row.labels),
        str(row.invisible),
        str(row.detected),
        f"{row.precision_ratio:.2f}",
        f"{row.recall_ratio:.2f}",
        f"{row.f1_score:.2f}",
        f"{duration(row.lead_before_trip_median_s)}/{duration(row.lead_before_trip_p10_s)}",
        f"{duration(row.delay_after_visible_median_s)}/{duration(row.delay_after_visible_p90_s)}",
    ]


def render_score(report: ScoreReport, console: Console) -> None:
    console.print(Text(f"labels: {report.ground_truth}"), soft_wrap=True)
    table = Table(**_COMPACT)
    titles = ("labels", "unseen", "found", "P", "R", "F1", "lead\nmed/p10", "delay\nmed/p90")
    table.add_column("kind", no_wrap=True, max_width=21)
    for title in titles:  # widths that fit the cells: rich would otherwise squeeze the narrow titles
        width = 10 if "\n" in title else max(4, len(title))
        table.add_column(title, justify="right", no_wrap=True, min_width=width, max_width=width)
    for position, row in enumerate(report.rows):
        # The per-kind rows, then the groups (failure modes, sensor faults, overall) set apart.
        last_kind = position + 1 < len(report.rows) and report.rows[position + 1].kind == FAILURE_MODES_ROW
        table.add_row(*_cells(row), end_section=last_kind)
    console.print(table)
    console.print(
        Text(
            "labels: windows that became visible before the machine stopped; unseen: windows that never did; "
            "found: visible windows detected; lead: first detection to the trip; delay: first detection "
            "after the symptom became visible (negative: before)"
        ),
        soft_wrap=True,
        style="dim",
    )
    days = report.observed_s / 86_400.0
    diagnosis = "-" if report.diagnosis_ratio is None else f"{report.diagnosis_ratio:.2f}"
    console.print(
        Text(
            f"{report.detections} detections, {report.false_alarms} false alarms "
            f"({report.false_alarms_per_machine_day:.2f} per machine-day over {days:.1f} machine-days), "
            f"{report.ignored} ignored (machine stopped, or outside the labelled time); "
            f"NAB score {report.nab_score:.1f} "
            f"(standard profile: 0 = no detections, 100 = perfect); right fault named: {diagnosis}"
        ),
        soft_wrap=True,
    )
    if report.unknown_machines:
        unknown = ", ".join(report.unknown_machines[:5])
        console.print(Text(f"detections for machines not in the labels: {unknown}", style="yellow"))
