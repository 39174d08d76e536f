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

from automation.cost_archive import HOURS_PER_MONTH, SECONDS_PER_MONTH
from automation.cost_features import (
    ALERT_PUBLISHES_PER_MONTH,
    DASHBOARD_REQUESTS_PER_HOUR,
    WAF_RULES,
    AlertTopicPlan,
    EfsPlan,
    PlannedFeatures,
    WafPlan,
    monitoring_history_gb,
)
from automation.cost_lines import Usage, line_items
from automation.cost_prices import PriceTable, load_price_table
from automation.cost_traffic import measure_traffic
from factory_core.archive_modes import ARCHIVE_MODES, ArchiveMode
from factory_core.connection_plan import plan_connections
from factory_core.stack_file import SIMULATOR_COUNT_KEY
from factory_core.verb_results import ArchiveModeCost, CostChange, CostEstimate, TrafficProfile
from infra.settings import StackSettings

NOT_COUNTED: tuple[str, ...] = (
    "data transfer out to the internet (dashboard users, SMTP) and between availability zones",
    "the AWS Free Tier, taxes, support plans, Savings Plans and other discounts",
    "KMS requests: every key the stack uses is AWS-owned or SSE-S3, which AWS does not bill per request",
    "ECR storage (~$0.10/GB-month) of the simulator image and of the monitoring images the pull-through "
    "cache keeps (imageCache, on in production), and image pulls through NAT when tasks start",
    "Route 53 queries to the private discovery zone; Secrets Manager, IoT registry and ECS API calls",
    "the config bucket (kilobytes) and error logs of the IoT rule and Firehose (empty when healthy)",
    "Container Insights' performance log group storage (AWS creates it without a retention)",
    "other workloads in the account: IoT Core messaging tiers are account-wide",
    "WAF logs in CloudWatch Logs (vended logs; only blocked or sampled requests are large)",
    "EFS backups (AWS Backup, prod) and EFS requests (bursting throughput: no per-GB charge)",
    "the secret rotation Lambdas: a few invocations a month, inside Lambda's free tier",
)


def planned_features(settings: StackSettings) -> PlannedFeatures:
    """The optional parts this stack's settings turn on (`iotfactory:waf`, `iotfactory:monitoringHistory`,
    `iotfactory:alerting.snsSubscriptions`)."""
    efs = None
    if settings.monitoring_history.efs:
        efs = EfsPlan(stored_gb=monitoring_history_gb(settings.simulator_count, settings.scrape_interval_s))
    waf = None
    if settings.waf_enabled:
        waf = WafPlan(rules=WAF_RULES, requests_per_month=DASHBOARD_REQUESTS_PER_HOUR * HOURS_PER_MONTH)
    alert_topic = None
    if settings.alerting.sns_subscriptions:
        alert_topic = AlertTopicPlan(publishes_per_month=ALERT_PUBLISHES_PER_MONTH)
    return PlannedFeatures(efs=efs, waf=waf, alert_topic=alert_topic)


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
        usd_per_million=total / millions if millions else None,
        variable_usd_per_million=variable / millions if millions else None,
        storage_steady_from_month=steady_month,
        prices_pinned_on=prices.pinned_on.isoformat(),
    )


def compare_archive_modes(
    settings: StackSettings, prices: PriceTable, traffic: TrafficProfile, *, simulators: int | None = None
) -> tuple[ArchiveModeCost, ...]:
    """The same fleet under each archive mode."""
    rows = []
    for mode in ARCHIVE_MODES:
        result = estimate(settings, prices, traffic, simulators=simulators, archive_mode=mode)
        rows.append(
            ArchiveModeCost(
                mode,
                result.total_usd,
                result.variable_usd,
                result.usd_per_million,
                result.variable_usd_per_million,
                mode == settings.archive_mode,
            )
        )
    return tuple(rows)


def cost_change(
    settings_before: StackSettings | None,
    settings_after: StackSettings,
    *,
    prices: PriceTable | None = None,
    measure: Callable[..., TrafficProfile] = measure_traffic,
) -> CostChange:
    """What a change of settings (`scale N`, an edited stack file) does to the monthly estimate.

    Both sides are priced with the same table (the after region's pinned one by default); a stack that
    has no settings yet (never deployed) has no "before".
    """
    table = prices or load_price_table(settings_after.region)
    after = estimate(settings_after, table, measure(settings_after.fleet))
    before = None
    if settings_before is not None:
        before_table = (
            table if settings_before.region == table.region else load_price_table(settings_before.region)
        )
        before = estimate(settings_before, before_table, measure(settings_before.fleet))
    before_usd = None if before is None else before.total_usd
    return CostChange(
        stack=settings_after.stack,
        before_usd=before_usd,
        after_usd=after.total_usd,
        delta_usd=after.total_usd - (before_usd or 0.0),
        prices_pinned_on=after.prices_pinned_on,
        simulators_before=None if settings_before is None else settings_before.simulator_count,
        simulators_after=settings_after.simulator_count,
    )


def with_simulators(settings: StackSettings, simulators: int) -> StackSettings:
    """The same settings with another simulator count (what `scale N` would apply), validated again."""
    document = settings.model_dump(by_alias=True)
    document[SIMULATOR_COUNT_KEY] = simulators
    return StackSettings.model_validate(document)
