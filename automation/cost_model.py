"""The monthly cost of a cloud stack, known before it runs: priced line items from the stack's settings.

`estimate(settings, prices, traffic)` reads the same typed `StackSettings` the Pulumi program builds
from (no Pulumi import), the measured traffic of one simulator (`automation/cost_traffic.py`) and a
pinned price table (`automation/cost_prices.py`), and returns a `CostEstimate`: the line items of
`automation/cost_lines.py`, their total, and the cost per million messages (total, and the variable
part that grows with messages). Storage is the steady-state month (`storage_steady_from_month`).
`compare_archive_modes` prices the same fleet in every archive mode; `cost_change` is what `scale`
and `up` would change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from automation.cost_archive import ARCHIVE_MODES, SECONDS_PER_MONTH, ArchiveMode
from automation.cost_lines import LineItem, PlannedFeatures, Usage, line_items
from automation.cost_prices import PriceTable, load_price_table
from automation.cost_traffic import TrafficProfile, measure_traffic
from factory_core.connection_plan import plan_connections
from infra.settings import StackSettings

NOT_COUNTED: tuple[str, ...] = (
    "data transfer out to the internet (dashboard users, SMTP) and between availability zones",
    "the AWS Free Tier, taxes, support plans, Savings Plans and other discounts",
    "KMS requests: every key the stack uses is AWS-owned or SSE-S3, which AWS does not bill per request",
    "ECR storage of the simulator image (~$0.10/GB-month per image kept) and image pulls through NAT "
    "when tasks start",
    "Route 53 queries to the private discovery zone; Secrets Manager, IoT registry and ECS API calls",
    "the config bucket (kilobytes) and error logs of the IoT rule and Firehose (empty when healthy)",
    "Container Insights' performance log group storage (AWS creates it without a retention)",
    "other workloads in the account: IoT Core messaging tiers are account-wide",
)


def planned_features(settings: StackSettings) -> PlannedFeatures:
    """The planned parts this stack's settings enable.

    TODO(issue 14): `StackSettings` has no setting for EFS, WAF or an Alertmanager SNS topic yet. When
    infra grows them (e.g. `monitoring.efs`, `waf`, `alerting.snsTopic`), build the plans from those
    fields here; the line items already exist (`_planned_items`).
    """
    return PlannedFeatures()


@dataclass(frozen=True)
class CostEstimate:
    stack: str
    region: str
    archive_mode: ArchiveMode
    simulators: int
    messages_per_month: float  # telemetry + ground truth
    ground_truth_per_month: float
    line_items: tuple[LineItem, ...]
    total_usd: float
    variable_usd: float  # the line items that scale with messages
    per_million_usd: float | None  # total / millions of messages (None without messages)
    per_million_variable_usd: float | None
    storage_steady_from_month: int
    prices_pinned_on: str


def estimate(
    settings: StackSettings,
    prices: PriceTable,
    traffic: TrafficProfile,
    *,
    simulators: int | None = None,
    archive_mode: ArchiveMode | None = None,
    features: PlannedFeatures | None = None,
) -> CostEstimate:
    """Monthly USD for the stack as configured (or with `simulators` / `archive_mode` overridden)."""
    count = settings.simulator_count if simulators is None else simulators
    if count < 0:
        raise ValueError(f"simulators must be 0 or more (got {count})")
    plan = plan_connections(settings.fleet, 0, settings.client_id_prefix)
    usage = Usage(settings, prices, traffic, archive_mode or settings.archive_mode, count, plan.connections)
    items, steady_month = line_items(usage, features if features is not None else planned_features(settings))
    total = sum(line.monthly_usd for line in items)
    variable = sum(line.monthly_usd for line in items if line.scales_with == "messages")
    millions = usage.messages / 1e6
    return CostEstimate(
        stack=settings.stack,
        region=settings.region,
        archive_mode=usage.mode,
        simulators=count,
        messages_per_month=usage.messages,
        ground_truth_per_month=count * traffic.ground_truth_per_s * SECONDS_PER_MONTH,
        line_items=items,
        total_usd=total,
        variable_usd=variable,
        per_million_usd=total / millions if millions else None,
        per_million_variable_usd=variable / millions if millions else None,
        storage_steady_from_month=steady_month,
        prices_pinned_on=prices.pinned_on.isoformat(),
    )


@dataclass(frozen=True)
class ModeCost:
    """One archive mode's figures for the same fleet."""

    archive_mode: ArchiveMode
    total_usd: float
    variable_usd: float
    per_million_usd: float | None
    per_million_variable_usd: float | None
    configured: bool  # the mode the stack's settings select


def compare_archive_modes(
    settings: StackSettings, prices: PriceTable, traffic: TrafficProfile, *, simulators: int | None = None
) -> tuple[ModeCost, ...]:
    """The same fleet under each archive mode."""
    rows = []
    for mode in ARCHIVE_MODES:
        result = estimate(settings, prices, traffic, simulators=simulators, archive_mode=mode)
        rows.append(
            ModeCost(
                mode,
                result.total_usd,
                result.variable_usd,
                result.per_million_usd,
                result.per_million_variable_usd,
                mode == settings.archive_mode,
            )
        )
    return tuple(rows)


@dataclass(frozen=True)
class CostChange:
    """The monthly estimate before and after a change of settings (what `scale` and `up` would do)."""

    before: CostEstimate
    after: CostEstimate

    @property
    def delta_usd(self) -> float:
        return self.after.total_usd - self.before.total_usd

    def describe(self) -> str:
        sign = "+" if self.delta_usd >= 0 else "-"
        return (
            f"monthly estimate ${self.before.total_usd:,.2f} -> ${self.after.total_usd:,.2f} "
            f"({sign}${abs(self.delta_usd):,.2f}; prices pinned {self.after.prices_pinned_on})"
        )


def cost_change(
    settings_before: StackSettings,
    settings_after: StackSettings,
    *,
    prices: PriceTable | None = None,
    measure: Callable[..., TrafficProfile] = measure_traffic,
) -> CostChange:
    """Estimate both settings with the same price table (the after region's pinned one by default)."""
    table = prices or load_price_table(settings_after.region)
    before_table = (
        table if settings_before.region == table.region else load_price_table(settings_before.region)
    )
    return CostChange(
        before=estimate(settings_before, before_table, measure(settings_before.fleet)),
        after=estimate(settings_after, table, measure(settings_after.fleet)),
    )


def with_simulators(settings: StackSettings, simulators: int) -> StackSettings:
    """The same settings with another simulator count (what `scale N` would apply), validated again."""
    document = settings.model_dump(by_alias=True)
    document["simulatorCount"] = simulators
    return StackSettings.model_validate(document)
