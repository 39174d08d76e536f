"""The `cost` verb of the cloud stacks: the stack's monthly estimate, per line and per archive mode.

`cost_result(settings, prices, traffic)` builds the result (`factory_core.verb_results.CostResult`);
`estimate_stack_cost(...)` is what `CloudStack.cost` calls: it refreshes the price table first when
asked (the only part that talks to AWS), then prices the stack file's settings.
`stack_cost_change(...)` is the change `up` and `scale` report before they apply. Nothing here prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from automation import preflight
from automation.cost_lines import ASSUMPTIONS
from automation.cost_model import NOT_COUNTED, compare_archive_modes, cost_change, estimate, with_simulators
from automation.cost_prices import PriceTable, load_price_table, save_price_table, table_path
from automation.cost_traffic import measure_traffic
from automation.price_refresh import PricingClient, pricing_client, refresh_price_table
from automation.stack_port import OutputValue
from factory_core.errors import UsageError
from factory_core.verb_results import CostChange, CostResult, PriceProvenance, TrafficProfile
from infra.settings import SETTINGS_OUTPUT, StackSettings


def cost_result(
    settings: StackSettings,
    prices: PriceTable,
    traffic: TrafficProfile,
    *,
    simulators: int | None = None,
    refresh: str | None = None,
) -> CostResult:
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
    return CostResult(
        stack=settings.stack,
        estimate=estimate(settings, prices, traffic),
        archive_modes=compare_archive_modes(settings, prices, traffic),
        traffic=traffic,
        prices=provenance,
        assumptions=ASSUMPTIONS,
        not_counted=NOT_COUNTED,
        refresh=refresh,
    )


def estimate_stack_cost(
    settings: StackSettings,
    *,
    simulators: int | None,
    refresh_prices: bool,
    client_factory: Callable[[], PricingClient] | None = None,
    today: Callable[[], dt.date] | None = None,
) -> CostResult:
    """The stack's estimate from its settings; with `refresh_prices`, the region's table is re-read first."""
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
    return cost_result(
        settings, prices, measure_traffic(settings.fleet), simulators=simulators, refresh=refresh
    )


def deployed_settings(outputs: Mapping[str, OutputValue]) -> StackSettings | None:
    """The settings the stack's last update ran with (its `stackSettings` output), if it has them."""
    item = outputs.get(SETTINGS_OUTPUT)
    if item is None or not isinstance(item.value, dict):
        return None
    try:
        return StackSettings.model_validate(item.value)
    except ValidationError:
        return None  # written by an older program: no "before" rather than a wrong one


def stack_cost_change(before: StackSettings | None, after: StackSettings) -> CostChange | None:
    """The change in monthly estimate an update makes; None when the region has no pinned prices.

    Only an estimate: it never stops the update it is reported for.
    """
    try:
        return cost_change(before, after)
    except UsageError:
        return None
