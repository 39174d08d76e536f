"""Alert rules defined once in Python: rendered as Prometheus rules and as Grafana-managed rules.

Each rule keeps the measured quantity (`expr_metric_part`), the comparison and the threshold apart,
so tests can query the quantity on its own (it must return series while everything is healthy) and
the Grafana-managed rules can compare it with the threshold in a Grafana math expression.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from factory_core import metric_catalog as catalog
from factory_core.fleet import MachineType
from observability import promql
from observability.prometheus_config import ARCHIVE_JOB, SIMULATOR_JOB, SITE_LABEL, format_duration
from simulator.model.profiles import PROFILES

Comparison = Literal[">", "<", "=="]
Severity = Literal["warning", "critical"]
# What an alert is about. Alertmanager's inhibition works on it (observability/alertmanager_config.py):
# a site-level alert silences the machine alerts of that site, a fleet-level one everything below it.
# Machine and site alerts carry the `site` label, which inhibition matches on.
Scope = Literal["machine", "site", "fleet", "archive"]
SCOPE_LABEL = "scope"
Target = Literal["local", "cloud"]
ALL_TARGETS: frozenset[Target] = frozenset(("local", "cloud"))


@dataclass(frozen=True)
class Condition:
    """`expr_metric_part comparison threshold`; the quantity must return series while healthy."""

    expr_metric_part: str
    comparison: Comparison
    threshold: float

    @property
    def expr(self) -> str:
        return f"{self.expr_metric_part} {self.comparison} {promql.format_number(self.threshold)}"


@dataclass(frozen=True)
class AlertRule:
    alert: str  # alertname; several rules may share one (e.g. one threshold per machine type)
    group: str
    condition: Condition  # its quantity is the alert's $value, in `unit`
    for_s: float
    severity: Severity
    summary: str  # Prometheus template text; `{{ $labels.x }}` and `{{ $value }}` are available
    description: str
    unit: str  # unit of the quantity and threshold, for people
    metrics: tuple[catalog.MetricDef, ...]  # catalog metrics the rule reads (for docs and tests)
    scope: Scope
    guard: Condition | None = None  # must also hold (`and`), e.g. a level on top of a trend
    # Rules sharing one alertname differ by these (equal to the series' own labels, so they
    # change nothing in the alert; Prometheus and Grafana need rules to be distinct).
    variant_labels: tuple[tuple[str, str], ...] = ()
    targets: frozenset[Target] = ALL_TARGETS

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return (self.condition,) if self.guard is None else (self.condition, self.guard)

    @property
    def expr_metric_part(self) -> str:
        return self.condition.expr_metric_part

    @property
    def comparison(self) -> Comparison:
        return self.condition.comparison

    @property
    def threshold(self) -> float:
        return self.condition.threshold

    @property
    def expr(self) -> str:
        return " and ".join(condition.expr for condition in self.conditions)

    @property
    def uid(self) -> str:
        """Stable id for Grafana (≤ 40 characters, unique per rule)."""
        parts = ["iotf", self.alert, *(value for _, value in self.variant_labels)]
        return "-".join(parts).lower().replace("_", "-")[:40]

    @property
    def labels(self) -> dict[str, str]:
        return {"severity": self.severity, SCOPE_LABEL: self.scope, **dict(self.variant_labels)}

    @property
    def threshold_text(self) -> str:
        text = f"{self.comparison} {promql.format_number(self.threshold)} {self.unit}"
        if self.guard is not None:
            text += f", while {self.guard.comparison} {promql.format_number(self.guard.threshold)}"
        return text


# Warn at each machine type's alarm temperature (the model's, simulator/model/profiles.py, where
# condition-based maintenance is planned), some 10 °C below its protective trip: an overheating
# machine crosses it well before it trips into the fault state.
OVERHEAT_CELSIUS: dict[MachineType, float] = {
    machine_type: profile.alarm_temperature_c for machine_type, profile in PROFILES.items()
}
OVERHEAT_FOR_S = 60.0
# ISO 10816-3 (group 2, rigid foundation): 7.1 mm/s is the zone C/D boundary ("damage may occur"),
# 2.8 mm/s the B/C boundary. The trend alone would fire for a few minutes after a machine starts
# running (a step looks like a slope), so the level must also have left zone B.
VIBRATION_LIMIT_MM_S = 7.1
VIBRATION_LEVEL_MM_S = 2.8
VIBRATION_TREND_WINDOW = "1h"
VIBRATION_LEVEL_WINDOW = "10m"
VIBRATION_HORIZON_S = 3600
VIBRATION_FOR_S = 600.0
FAULT_FOR_S = 600.0
SIMULATOR_DOWN_FOR_S = 60.0
PUBLISH_FAILURE_PERCENT = 1.0
PUBLISH_FAILURE_WINDOW = "5m"
PUBLISH_FAILURE_FOR_S = 300.0
ARCHIVE_LAG_LIMIT_S = 60.0
ARCHIVE_LAG_FOR_S = 300.0


def _signal_metric(signal: str) -> catalog.MetricDef:
    return next(metric for metric in catalog.MACHINE_SIGNALS if metric.signal == signal)


def _overheating(machine_type: MachineType) -> AlertRule:
    temperature = _signal_metric("temperature")
    limit = OVERHEAT_CELSIUS[machine_type]
    trip = PROFILES[machine_type].trip_temperature_c
    return AlertRule(
        alert="MachineOverheating",
        group="machines",
        condition=Condition(
            promql.scaled(promql.selector(temperature, type=machine_type.value), temperature), ">", limit
        ),
        for_s=OVERHEAT_FOR_S,
        severity="critical",
        summary="{{ $labels.machine }} is overheating",
        description=(
            f"Temperature of {{{{ $labels.machine }}}} ({machine_type.value}, {{{{ $labels.line }}}}) is "
            f"{{{{ $value | printf \"%.1f\" }}}} °C, above {limit:g} °C for "
            f"{format_duration(OVERHEAT_FOR_S)}; it trips at {trip:g} °C."
        ),
        unit="°C",
        metrics=(temperature,),
        scope="machine",
        variant_labels=(("type", machine_type.value),),
    )


def _vibration_rising() -> AlertRule:
    vibration = _signal_metric("vibration_rms")
    series = promql.selector(vibration)
    projected = f"predict_linear({series}[{VIBRATION_TREND_WINDOW}], {VIBRATION_HORIZON_S})"
    level = f"avg_over_time({series}[{VIBRATION_LEVEL_WINDOW}])"
    return AlertRule(
        alert="MachineVibrationRising",
        group="machines",
        condition=Condition(promql.scaled(projected, vibration), ">", VIBRATION_LIMIT_MM_S),
        guard=Condition(promql.scaled(level, vibration), ">", VIBRATION_LEVEL_MM_S),
        for_s=VIBRATION_FOR_S,
        severity="warning",
        summary="Vibration of {{ $labels.machine }} is rising towards the damage zone",
        description=(
            f"The {VIBRATION_TREND_WINDOW} trend of vibration RMS on {{{{ $labels.machine }}}} projects "
            f"{{{{ $value | printf \"%.1f\" }}}} mm/s within {format_duration(VIBRATION_HORIZON_S)} "
            f"(limit {VIBRATION_LIMIT_MM_S:g} mm/s, ISO 10816 zone D) and its {VIBRATION_LEVEL_WINDOW} "
            f"average is above {VIBRATION_LEVEL_MM_S:g} mm/s. Typical of bearing wear."
        ),
        unit="mm/s",
        metrics=(vibration,),
        scope="machine",
    )


def _in_fault() -> AlertRule:
    return AlertRule(
        alert="MachineInFault",
        group="machines",
        condition=Condition(promql.selector(catalog.MACHINE_STATE, state="fault"), "==", 1),
        for_s=FAULT_FOR_S,
        severity="warning",
        summary="{{ $labels.machine }} has been in fault for more than " + format_duration(FAULT_FOR_S),
        description=(
            "{{ $labels.machine }} ({{ $labels.type }}, {{ $labels.line }}, {{ $labels.site }}) has been "
            f"in the fault state for more than {format_duration(FAULT_FOR_S)}."
        ),
        unit="1 = in fault",
        metrics=(catalog.MACHINE_STATE,),
        scope="machine",
    )


def _simulator_down() -> AlertRule:
    # By the target's stable names (site, and `instance`, which discovery sets from the site): a
    # simulator restarted on another port is the same target, and one that left on purpose
    # (scale-down, stop) is no target any more, so it never reads as down. Only targets discovery
    # gave a site are expected; anything else (series from before targets were named) is not.
    up = promql.selector(promql.UP, job=SIMULATOR_JOB, **{SITE_LABEL: "!="})
    return AlertRule(
        alert="SimulatorDown",
        group="simulator",
        condition=Condition(promql.aggregate("max", ("job", SITE_LABEL, "instance"), up), "==", 0),
        for_s=SIMULATOR_DOWN_FOR_S,
        severity="critical",
        summary="Simulator {{ $labels.site }} is down",
        description=(
            "Prometheus could not scrape the simulator of {{ $labels.site }} for "
            f"{format_duration(SIMULATOR_DOWN_FOR_S)}: the process or task is gone or its metrics port "
            "is blocked."
        ),
        unit="1 = up",
        metrics=(),
        scope="site",
    )


def _simulators_missing() -> AlertRule:
    # `up == 0` cannot fire when discovery finds no target at all (every task stopped in the cloud).
    return AlertRule(
        alert="SimulatorTargetsMissing",
        group="simulator",
        condition=Condition(f"(count({promql.selector(promql.UP, job=SIMULATOR_JOB)}) or vector(0))", "<", 1),
        for_s=SIMULATOR_DOWN_FOR_S,
        severity="critical",
        summary="No simulator is being scraped",
        description=(
            f"Prometheus has had no target in job {SIMULATOR_JOB!r} for "
            f"{format_duration(SIMULATOR_DOWN_FOR_S)}: nothing is running or service discovery is broken."
        ),
        unit="targets",
        metrics=(),
        scope="fleet",
    )


def _publish_failures() -> AlertRule:
    window = PUBLISH_FAILURE_WINDOW
    published = promql.sum_by(("site",), promql.rate(catalog.MESSAGES_PUBLISHED, window))
    failed = promql.sum_by(("site",), promql.rate(catalog.PUBLISH_FAILURES, window))
    # Either counter may not exist yet for a site (no failure so far, or nothing ever got through).
    failed_or_zero = promql.or_zero(failed, published)
    published_or_zero = promql.or_zero(published, failed)
    return AlertRule(
        alert="PublishFailures",
        group="simulator",
        condition=Condition(
            f"(100 * {failed_or_zero} / ({failed_or_zero} + {published_or_zero}))",
            ">",
            PUBLISH_FAILURE_PERCENT,
        ),
        for_s=PUBLISH_FAILURE_FOR_S,
        severity="warning",
        summary="Publishes of {{ $labels.site }} are failing",
        description=(
            f"{{{{ $value | printf \"%.1f\" }}}} % of the publishes of {{{{ $labels.site }}}} failed or were "
            f"dropped over {window} (limit {PUBLISH_FAILURE_PERCENT:g} %). See the pipeline-health "
            "dashboard for the reason."
        ),
        unit="%",
        metrics=(catalog.PUBLISH_FAILURES, catalog.MESSAGES_PUBLISHED),
        scope="site",
    )


def _archive_lag() -> AlertRule:
    return AlertRule(
        alert="ArchiveLagging",
        group="archive",
        condition=Condition(promql.selector(catalog.ARCHIVE_LAG, job=ARCHIVE_JOB), ">", ARCHIVE_LAG_LIMIT_S),
        for_s=ARCHIVE_LAG_FOR_S,
        severity="warning",
        summary="The archive is {{ $value | humanizeDuration }} behind",
        description=(
            f"The rule runner writes messages more than {ARCHIVE_LAG_LIMIT_S:g} s after they were "
            f"produced, for {format_duration(ARCHIVE_LAG_FOR_S)}: it is falling behind or the broker "
            "queues messages for it."
        ),
        unit="s",
        metrics=(catalog.ARCHIVE_LAG,),
        scope="archive",
        # The cloud archive is the IoT topic rule; its health is in CloudWatch, not Prometheus.
        targets=frozenset(("local",)),
    )


ALERT_RULES: tuple[AlertRule, ...] = (
    *(_overheating(machine_type) for machine_type in MachineType),
    _vibration_rising(),
    _in_fault(),
    _simulator_down(),
    _simulators_missing(),
    _publish_failures(),
    _archive_lag(),
)


def rules_for(target: Target | None = None) -> tuple[AlertRule, ...]:
    return tuple(rule for rule in ALERT_RULES if target is None or target in rule.targets)


def _prometheus_rule(rule: AlertRule, for_scale: float) -> dict[str, Any]:
    return {
        "alert": rule.alert,
        "expr": rule.expr,
        "for": format_duration(rule.for_s * for_scale),
        "labels": rule.labels,
        "annotations": {"summary": rule.summary, "description": rule.description},
    }


def render_rules(
    *, for_scale: float = 1.0, target: Target | None = None, eval_interval_s: float | None = None
) -> str:
    """Prometheus rule file. `for_scale` < 1 shortens every `for:`; tests use it, nothing else."""
    if for_scale < 0:
        raise ValueError("for_scale must be >= 0")
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules_for(target):
        groups.setdefault(rule.group, []).append(_prometheus_rule(rule, for_scale))
    document: dict[str, Any] = {"groups": []}
    for name, rules in groups.items():
        group: dict[str, Any] = {"name": f"iotfactory-{name}", "rules": rules}
        if eval_interval_s is not None:
            group["interval"] = format_duration(eval_interval_s)
        document["groups"].append(group)
    header = "# Generated by observability/alert_rules.py from factory_core/metric_catalog.py; do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)


def grafana_rule_groups(
    rules: Iterable[AlertRule], *, datasource_uid: str, folder: str, interval_s: int = 60
) -> dict[str, Any]:
    """Grafana-managed alert rules (file provisioning, apiVersion 1) from the same definitions.

    Grafana evaluates the same quantities and thresholds with its server-side expressions, so a
    rule fires in Grafana exactly when its Prometheus twin's expression returns the series.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        groups.setdefault(rule.group, []).append(_grafana_rule(rule, datasource_uid))
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": 1, "name": f"iotfactory-{name}", "folder": folder,
             "interval": format_duration(interval_s), "rules": group_rules}
            for name, group_rules in groups.items()
        ],
    }


def _grafana_template(text: str) -> str:
    return text.replace("$value ", "$values.B0.Value ")


def _grafana_rule(rule: AlertRule, datasource_uid: str) -> dict[str, Any]:
    """Per condition i: query Ai (the quantity), Bi = last value of Ai; then C = all comparisons."""
    data: list[dict[str, Any]] = []
    comparisons = []
    for index, condition in enumerate(rule.conditions):
        query_ref, reduce_ref = f"A{index}", f"B{index}"
        data.append({
            "refId": query_ref,
            "relativeTimeRange": {"from": 600, "to": 0},
            "datasourceUid": datasource_uid,
            "model": {"refId": query_ref, "expr": condition.expr_metric_part, "instant": True,
                      "range": False},
        })
        data.append({
            "refId": reduce_ref,
            "datasourceUid": "__expr__",
            "model": {"refId": reduce_ref, "type": "reduce", "expression": query_ref, "reducer": "last"},
        })
        comparisons.append(
            f"${reduce_ref} {condition.comparison} {promql.format_number(condition.threshold)}"
        )
    data.append({
        "refId": "C",
        "datasourceUid": "__expr__",
        "model": {"refId": "C", "type": "math", "expression": " && ".join(comparisons)},
    })
    return {
        "uid": rule.uid,
        "title": " ".join([rule.alert, *(value for _, value in rule.variant_labels)]),
        "condition": "C",
        "data": data,
        # A quantity with no series means the target is gone: SimulatorDown/TargetsMissing say so.
        "noDataState": "OK",
        "execErrState": "Error",
        "for": format_duration(rule.for_s),
        # Grafana's provisioning interpolates env vars into labels but not annotations: keep `$` out
        # of labels. In Grafana templates $value is a text of all query values; $values.B0.Value is
        # the number the threshold was compared with.
        "annotations": {
            "summary": _grafana_template(rule.summary),
            "description": _grafana_template(rule.description),
        },
        "labels": rule.labels,
    }
