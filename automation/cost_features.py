"""The optional parts of a stack's bill: monitoring history on EFS, the web ACL, the alert topic, and
the KMS keys they bring; priced only when the stack's settings turn them on.

`automation/cost_model.py` plans them from the settings (`planned_features`), and
`automation/cost_lines.py` adds `planned_items` to the stack's other line items. Every assumption is
a named constant here, listed in `cost_lines.ASSUMPTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from automation.cost_archive import GIB
from automation.cost_prices import PriceKey
from factory_core.verb_results import CostLine
from infra.settings import PROMETHEUS_RETENTION_DAYS

if TYPE_CHECKING:
    from automation.cost_lines import Usage

# Monitoring history on EFS: Prometheus keeps ~400 series per simulator (its machines' signals and
# states, the transport's counters and histograms) at ~1.5 bytes per sample on disk (Prometheus'
# own sizing rule: 1-2 bytes), for its retention; Grafana's database is tens of megabytes.
PROMETHEUS_SERIES_PER_SIMULATOR = 400
PROMETHEUS_BYTES_PER_SAMPLE = 1.5
GRAFANA_DATABASE_GB = 0.05
# WAF: the web ACL's rules (three AWS managed rule groups and the rate-based rule), and the requests
# a few people with auto-refreshing dashboards send through it.
WAF_RULES = 4
DASHBOARD_REQUESTS_PER_HOUR = 2_000
# Alertmanager publishes critical alerts to SNS (with repeats): a few hundred a month is a bad month.
ALERT_PUBLISHES_PER_MONTH = 300


def monitoring_history_gb(simulators: int, scrape_interval_s: int) -> float:
    """GB the monitoring history keeps on EFS at steady state (Prometheus TSDB + Grafana database)."""
    samples = (
        simulators * PROMETHEUS_SERIES_PER_SIMULATOR / scrape_interval_s * PROMETHEUS_RETENTION_DAYS * 86_400
    )
    return samples * PROMETHEUS_BYTES_PER_SAMPLE / GIB + GRAFANA_DATABASE_GB


@dataclass(frozen=True)
class EfsPlan:
    stored_gb: float  # Prometheus TSDB + Grafana database


@dataclass(frozen=True)
class WafPlan:
    rules: int  # rules and managed rule groups in the web ACL
    requests_per_month: float


@dataclass(frozen=True)
class AlertTopicPlan:
    publishes_per_month: float


@dataclass(frozen=True)
class PlannedFeatures:
    """Optional parts, priced only when the stack's settings turn them on (`cost_model.planned_features`)."""

    efs: EfsPlan | None = None
    waf: WafPlan | None = None
    alert_topic: AlertTopicPlan | None = None


def planned_items(usage: Usage, features: PlannedFeatures) -> list[CostLine]:
    items: list[CostLine] = []
    keys: list[str] = []  # what each customer managed KMS key encrypts
    if features.efs:
        items.append(
            usage.item(
                "Amazon EFS",
                "Standard storage",
                PriceKey.EFS_STANDARD_STORAGE,
                features.efs.stored_gb,
                "stack",
                f"Prometheus TSDB ({PROMETHEUS_RETENTION_DAYS} d) and Grafana database, steady state",
            )
        )
        keys.append("the monitoring history's file system")
    if features.waf:
        waf = features.waf
        items += [
            usage.item("AWS WAF", "web ACL", PriceKey.WAF_WEB_ACL, 1, "stack", "on the ALB"),
            usage.item(
                "AWS WAF",
                "rules",
                PriceKey.WAF_RULES,
                waf.rules,
                "stack",
                f"{waf.rules} rules (3 AWS managed rule groups, 1 rate-based rule)",
            ),
            usage.item(
                "AWS WAF",
                "requests",
                PriceKey.WAF_REQUESTS,
                waf.requests_per_month,
                "stack",
                f"{DASHBOARD_REQUESTS_PER_HOUR:,} dashboard requests an hour",
            ),
        ]
    if features.alert_topic:
        items.append(
            usage.item(
                "Amazon SNS",
                "alert publishes",
                PriceKey.SNS_REQUESTS,
                features.alert_topic.publishes_per_month,
                "stack",
                f"Alertmanager -> SNS, {ALERT_PUBLISHES_PER_MONTH} critical alerts a month",
            )
        )
        keys.append("the alert topic")
    if keys:
        items.append(
            usage.item(
                "AWS KMS",
                "customer managed keys",
                PriceKey.KMS_KEYS,
                len(keys),
                "stack",
                "one each for " + " and ".join(keys),
            )
        )
    return items
