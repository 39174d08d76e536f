"""The `cost` verb of the cloud stacks: the stack's monthly estimate, per line and per archive mode.

`cost_report(settings, prices, traffic)` builds the result; `run_cost(...)` is what the CLI calls
(it refreshes the price table first with `--refresh-prices`), and prints the result with rich or as
one JSON document. Nothing here talks to AWS except the optional refresh.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from automation import preflight
from automation.cost_lines import ASSUMPTIONS
from automation.cost_model import (
    NOT_COUNTED,
    CostEstimate,
    ModeCost,
    compare_archive_modes,
    estimate,
    with_simulators,
)
from automation.cost_prices import PriceTable, load_price_table, save_price_table, table_path
from automation.cost_traffic import TrafficProfile, measure_traffic
from automation.price_refresh import PricingClient, pricing_client, refresh_price_table
from automation.progress import JsonLinesRenderer
from factory_core.errors import UsageError
from infra.settings import StackSettings


@dataclass(frozen=True)
class PriceProvenance:
    region: str
    pinned_on: str
    how: str
    sources: dict[str, str]  # figure -> pricing page URL or Price List SKU


@dataclass(frozen=True)
class CostReport:
    estimate: CostEstimate
    archive_modes: tuple[ModeCost, ...]  # the same fleet under each archive mode
    traffic: TrafficProfile  # one simulator, measured from the model
    prices: PriceProvenance
    assumptions: tuple[str, ...] = ASSUMPTIONS
    not_counted: tuple[str, ...] = NOT_COUNTED
    refresh: str | None = None  # what --refresh-prices did


def cost_report(
    settings: StackSettings,
    prices: PriceTable,
    traffic: TrafficProfile,
    *,
    simulators: int | None = None,
    refresh: str | None = None,
) -> CostReport:
    if simulators is not None:
        try:
            settings = with_simulators(settings, simulators)
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"])
            raise UsageError(f"--simulators {simulators}: {message} (the program's limit)") from None
    provenance = PriceProvenance(
        region=prices.region,
        pinned_on=prices.pinned_on.isoformat(),
        how=prices.how,
        sources={key.value: figure.source for key, figure in prices.figures.items()},
    )
    return CostReport(
        estimate=estimate(settings, prices, traffic),
        archive_modes=compare_archive_modes(settings, prices, traffic),
        traffic=traffic,
        prices=provenance,
        refresh=refresh,
    )


def run_cost(
    settings: StackSettings,
    *,
    simulators: int | None,
    json_output: bool,
    refresh_prices: bool,
    console: Console,
    client_factory: Callable[[], PricingClient] | None = None,
    today: Callable[[], dt.date] | None = None,
) -> int:
    refresh = None
    if refresh_prices:
        preflight.require_aws_credentials("--refresh-prices")
        region = settings.region
        pinned = load_price_table(region) if table_path(region).is_file() else None
        client = (client_factory or pricing_client)()
        result = refresh_price_table(region, client, pinned, (today or dt.date.today)())
        path = save_price_table(result.table)
        refresh = f"{result.summary()}; wrote {path.name}"
    prices = load_price_table(settings.region)
    report = cost_report(
        settings, prices, measure_traffic(settings.fleet), simulators=simulators, refresh=refresh
    )
    if json_output:
        JsonLinesRenderer().emit(report_document(report))
    else:
        render_report(report, console)
    return 0


def report_document(report: CostReport) -> dict[str, Any]:
    """The JSON document of `cost --json`: the report's fields, plus the per-million figure per mode."""
    document = dataclasses.asdict(report)
    document["per_million_usd_by_archive_mode"] = {
        row.archive_mode: row.per_million_usd for row in report.archive_modes
    }
    return document


def render_report(report: CostReport, console: Console) -> None:
    result = report.estimate
    if report.refresh:
        console.print(f"[cyan]{report.refresh}[/cyan]")
    table = Table(
        title=(
            f"Stack '{result.stack}' ({result.region}): {result.simulators} simulators, archive "
            f"{result.archive_mode}, {_quantity(result.messages_per_month)} messages a month"
        ),
        title_justify="left",
    )
    table.add_column("line")
    table.add_column("quantity a month")
    table.add_column("USD", justify="right")
    table.add_column("grows with")
    for line in result.line_items:
        table.add_row(
            f"{line.service}: {line.item}",
            f"{_quantity(line.quantity)} {line.unit}",
            f"{line.monthly_usd:,.2f}",
            line.scales_with,
        )
    table.add_section()
    table.add_row("[bold]total[/bold]", "", f"[bold]{result.total_usd:,.2f}[/bold]", "")
    console.print(table)
    console.print(_per_million_line(result))
    console.print(f"Storage is the steady state, reached in month {result.storage_steady_from_month}.")
    modes = Table(title="The same fleet per archive mode", title_justify="left")
    modes.add_column("archive mode")
    for column in ("USD a month", "per million msgs", "variable per million"):
        modes.add_column(column, justify="right")
    for row in report.archive_modes:
        mark = " (configured)" if row.configured else ""
        modes.add_row(
            f"{row.archive_mode}{mark}",
            f"{row.total_usd:,.2f}",
            _usd(row.per_million_usd),
            _usd(row.per_million_variable_usd),
        )
    console.print(modes)
    console.print(
        f"[dim]Prices: {report.prices.region}, pinned {report.prices.pinned_on}, never checked against a "
        "bill. Not counted: data transfer out, free tier, taxes, support, KMS, ECR and more "
        "(--json lists them, with every line's arithmetic and assumption; docs/infra.md, Cost).[/dim]"
    )


def _quantity(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} M"
    if value >= 1_000 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.3f}"


def _per_million_line(result: CostEstimate) -> str:
    if result.per_million_usd is None:
        return "No messages: no cost per million messages."
    return (
        f"Per million messages: {_usd(result.per_million_usd)} in total, "
        f"{_usd(result.per_million_variable_usd)} of it variable (grows with messages)."
    )


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"
