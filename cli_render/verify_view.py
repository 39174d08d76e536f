"""`verify`'s report for people: verdict, totals, latency, quarantine, then the streams with problems."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich import box
from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from factory_core.archive_report import SeqRange, VerifyReport


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.0015 else "≤1 ms"
    return f"{value:.2f} s"


def _ranges(gaps: Iterable[SeqRange], limit: int = 4) -> str:
    items = list(gaps)
    shown = [
        (f"{gap.first}" if gap.first == gap.last else f"{gap.first}-{gap.last}")
        + (f" (run {gap.run + 1})" if gap.run else "")
        for gap in items[:limit]
    ]
    more = f" +{len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more


# One space between columns and none at the edges: the tables then fit 80 columns.
_COMPACT: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "padding": (0, 1, 0, 0),
    "pad_edge": False,
    "show_edge": False,
}


def render_report(report: VerifyReport, console: Console | None = None, *, max_streams: int = 50) -> None:
    """Print the report for people: verdict, totals, latency, quarantine, then the streams with problems.

    Laid out to fit 80 columns: `--json` carries every field for machines and wide terminals.
    """
    console = console or Console()
    console.print(Rule("verify: archive reconciliation", align="left"))
    _verdict(report, console)
    _totals(report, console)
    _latency(report, console)
    _quarantine(report, console)
    _reconciliation(report, console)
    _troubled_streams(report, console, max_streams)
    if report.unreadable:
        console.print(Text(f"{report.unreadable:,} unreadable records in data objects:", style="red"))
        for sample in report.unreadable_samples:
            console.print(Text(f"  {sample}", style="dim"), highlight=False)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"), highlight=False)


def _table(title: str, columns: Iterable[str], left: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", **_COMPACT)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    return table


def _show(console: Console, table: Table) -> None:
    console.print()
    console.print(table)


def _verdict(report: VerifyReport, console: Console) -> None:
    lost = report.missing + report.unreadable
    console.print(
        Text("OK: nothing missing", style="bold green")
        if report.ok
        else Text(f"LOSS: {lost:,} messages missing or unreadable", style="bold red")
    )
    console.print(
        f"{report.unique:,} unique of {report.messages:,} archived · {report.duplicates:,} duplicates"
        f" · {report.quarantined_total:,} quarantined\n{report.objects:,} objects"
        f" ({report.bytes / 1e6:.1f} MB) in {report.archive}",
        highlight=False,
    )
    if report.restarts:
        unsized = sum(1 for s in report.streams for r in s.restarts if r.possibly_lost is None)
        console.print(
            Text(
                f"{report.restarts:,} stream restarts (a simulator stopped without draining):"
                f" {report.possibly_lost:,} messages possibly lost before reaching the broker"
                + (f"; {unsized:,} restarts cannot be sized" if unsized else ""),
                style="yellow",
            ),
            highlight=False,
        )


def _totals(report: VerifyReport, console: Console) -> None:
    if not report.totals:
        return
    columns = ("kind", "machines", "messages", "unique", "dups", "missing", "gaps", "reord.", "restarts")
    table = _table("Messages per kind", columns, ("kind",))
    for total in report.totals:
        table.add_row(
            total.kind,
            f"{total.machines:,}",
            f"{total.messages:,}",
            f"{total.unique:,}",
            f"{total.duplicates:,}",
            _styled_count(total.missing),
            f"{total.gaps:,}",
            f"{total.out_of_order:,}",
            f"{total.restarts:,}",
        )
    _show(console, table)


def _latency(report: VerifyReport, console: Console) -> None:
    if report.latency is None:
        return
    columns = ("kind", "messages", "p50", "p90", "p99", "max")
    table = _table("Publish → archive latency", columns, ("kind",))
    rows = [(total.kind, total.latency) for total in report.totals] + [("all", report.latency)]
    for kind, summary in rows:
        if summary is not None:
            table.add_row(
                kind,
                f"{summary.count:,}",
                *(_seconds(value) for value in (summary.p50_s, summary.p90_s, summary.p99_s, summary.max_s)),
            )
    _show(console, table)
    if not report.latency_meaningful:
        console.print(Text("latency is not meaningful for this archive: see the note below", style="yellow"))


def _quarantine(report: VerifyReport, console: Console) -> None:
    if not report.quarantined:
        return
    table = _table("Quarantined", ("reason", "messages"), ("reason",))
    for reason, count in report.quarantined.items():
        table.add_row(reason, f"{count:,}")
    _show(console, table)
    for sample in report.quarantine_samples:
        console.print(
            Text(f"  {sample.reason} on {sample.topic or '?'}: {sample.detail}", style="dim"),
            highlight=False,
        )


def _reconciliation(report: VerifyReport, console: Console) -> None:
    if not report.reconciliation:
        return
    columns = ("site", "kind", "published", "archived", "unaccounted")
    table = _table("Published vs archived", columns, ("site", "kind"))
    for item in report.reconciliation:
        table.add_row(
            item.site,
            item.kind,
            f"{item.published:,}",
            f"{item.archived_unique:,}",
            _styled_count(max(0, item.unaccounted)),
        )
    _show(console, table)


def _troubled_streams(report: VerifyReport, console: Console, max_streams: int) -> None:
    troubled = [s for s in report.streams if s.missing or s.duplicates or s.out_of_order or s.runs > 1]
    if not troubled:
        return
    title = f"Streams with gaps, duplicates or reordering ({len(troubled):,})"
    columns = ("machine", "kind", "seq", "missing", "gaps", "dups", "reord.", "lost?")
    table = _table(title, columns, ())
    for column in table.columns:
        # Names and ranges read left to right; the gap list may wrap.
        if str(column.header) in ("machine", "kind", "gaps"):
            column.justify = "left"
        column.no_wrap = str(column.header) in ("machine", "kind", "seq")
    for stream in troubled[:max_streams]:
        table.add_row(
            stream.machine,
            "gt" if stream.kind == "ground_truth" else "tel",
            f"{stream.first_seq}-{stream.last_seq}",
            _styled_count(stream.missing),
            _ranges(stream.gaps) or "-",
            f"{stream.duplicates:,}",
            f"{stream.out_of_order:,}",
            f"{stream.possibly_lost:,}" if stream.restarts else "-",
        )
    _show(console, table)
    if len(troubled) > max_streams:
        console.print(f"… and {len(troubled) - max_streams:,} more streams; --json lists every one")


def _styled_count(value: int) -> Text:
    return Text(f"{value:,}", style="red" if value else "green")
