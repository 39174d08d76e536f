"""`cost` drawn for people: the line items, the per-million figures and the archive modes side by side."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from factory_core.verb_results import CostEstimate, CostResult


def render_cost(result: CostResult, console: Console) -> None:
    estimate = result.estimate
    if result.refresh:
        console.print(Text(result.refresh, style="cyan"), soft_wrap=True)
    table = Table(
        title=(
            f"Stack '{estimate.stack}' ({estimate.region}): {estimate.simulators} simulators, archive "
            f"{estimate.archive_mode}, {_quantity(estimate.messages_per_month)} messages a month"
        ),
        title_justify="left",
    )
    table.add_column("line")
    table.add_column("quantity a month")
    table.add_column("USD", justify="right")
    table.add_column("grows with")
    for line in estimate.line_items:
        table.add_row(
            Text(f"{line.service}: {line.item}"),
            Text(f"{_quantity(line.quantity_per_month)} {line.unit}"),
            f"{line.monthly_usd:,.2f}",
            line.scales_with,
        )
    table.add_section()
    table.add_row("[bold]total[/bold]", "", f"[bold]{estimate.total_usd:,.2f}[/bold]", "")
    console.print(table)
    console.print(Text(_per_million_line(estimate)))
    console.print(f"Storage is the steady state, reached in month {estimate.storage_steady_from_month}.")
    modes = Table(title="The same fleet per archive mode", title_justify="left")
    modes.add_column("archive mode")
    for column in ("USD a month", "per million msgs", "variable per million"):
        modes.add_column(column, justify="right")
    for row in result.archive_modes:
        mark = " (configured)" if row.configured else ""
        modes.add_row(
            f"{row.archive_mode}{mark}",
            f"{row.total_usd:,.2f}",
            _usd(row.usd_per_million),
            _usd(row.variable_usd_per_million),
        )
    console.print(modes)
    console.print(
        Text(
            f"Prices: {result.prices.region}, pinned {result.prices.pinned_on}, never checked against a "
            "bill. Not counted: data transfer out, free tier, taxes, support, ECR and more "
            "(--json lists them, with every line's arithmetic and assumption; docs/infra.md, Cost).",
            style="dim",
        ),
        soft_wrap=True,
    )


def _quantity(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1_000 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.3f}"


def _per_million_line(estimate: CostEstimate) -> str:
    if estimate.usd_per_million is None:
        return "No messages: no cost per million messages."
    return (
        f"Per million messages: {_usd(estimate.usd_per_million)} in total, "
        f"{_usd(estimate.variable_usd_per_million)} of it variable (grows with messages)."
    )


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"
