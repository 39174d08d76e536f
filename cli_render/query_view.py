"""`query` and `report` drawn for people: the rows as a table (or CSV), the report's sections."""

from __future__ import annotations

import csv
import sys
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from analytics.tables import csv_cell
from cli_render.json_style import to_document
from factory_core.verb_results import QueryResult, ReportResult

# A terminal table of more rows than this says how many it left out (CSV and JSON write every row).
TABLE_ROWS_SHOWN = 1_000


def _cell(value: Any) -> Text:
    """A value as the JSON style writes it (times ISO 8601 UTC), NULL dimmed."""
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bool):
        return Text("true" if value else "false")
    shown = to_document(value)
    return Text(shown if isinstance(shown, str) else str(shown))


def _footer(result: QueryResult) -> str:
    where = f"{result.engine} over {result.source}"
    scanned = f", {result.scanned_bytes / 1e6:.1f} MB scanned" if result.scanned_bytes is not None else ""
    return f"{result.row_count:,} rows in {result.elapsed_s:.2f} s ({where}{scanned})"


def render_query(result: QueryResult, console: Console) -> None:
    if result.out_file is not None:
        console.print(Text(f"wrote {_footer(result)} to {result.out_file}"), soft_wrap=True)
        return
    table = Table(show_header=True, header_style="bold", show_edge=False)
    for column in result.columns:
        numeric = column.type.split("(")[0].upper() in {
            "BIGINT",
            "INTEGER",
            "HUGEINT",
            "DOUBLE",
            "FLOAT",
            "REAL",
            "DECIMAL",
            "SMALLINT",
            "TINYINT",
        }
        table.add_column(column.name, justify="right" if numeric else "left", overflow="fold")
    for row in result.rows[:TABLE_ROWS_SHOWN]:
        table.add_row(*(_cell(value) for value in row))
    console.print(table)
    hidden = len(result.rows) - TABLE_ROWS_SHOWN
    more = f"; {hidden:,} more not shown: use --format csv or --out FILE" if hidden > 0 else ""
    console.print(Text(_footer(result) + more, style="dim"), soft_wrap=True)


def write_csv(result: QueryResult, stream: IO[str] | None = None) -> None:
    """`--format csv`: a header row, then every row (timestamps ISO 8601 UTC, like the JSON style)."""
    target = stream or sys.stdout
    if result.out_file is not None:
        target.write(f"# wrote {_footer(result)} to {result.out_file}\n")
        return
    writer = csv.writer(target, lineterminator="\n")
    writer.writerow([column.name for column in result.columns])
    writer.writerows([csv_cell(value) for value in row] for row in result.rows)
    target.flush()


def render_report(result: ReportResult, console: Console) -> None:
    console.print(
        Text(f"wrote {result.out_file} ({result.size_bytes / 1e6:.1f} MB) from {result.source}"),
        soft_wrap=True,
    )
    for section in result.sections:
        mark = "✓" if section.available else "-"
        note = f": {section.note}" if section.note else ""
        console.print(
            Text(f"  {mark} {section.title}{note}", style=None if section.available else "yellow"),
            soft_wrap=True,
        )
