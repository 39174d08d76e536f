"""Machine detail dashboard: one machine's state timeline, health, every signal in its unit, faults."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import timeseries

from factory_core import metric_catalog as catalog
from observability import promql
from observability.dashboards import panels
from observability.dashboards.panels import DATASOURCE, RANGE_WINDOW, RATE_WINDOW, query
from simulator.model.profiles import PROFILES

UID = "iotfactory-machine-detail"
TITLE = "Machine detail"
MACHINE = {"site": "=~$site", "machine": "$machine"}
NOT_MEASURED = "Not measured on this machine type"
FAULT_ANNOTATION = "Injected faults (ground truth)"
# Prometheus annotation fields the SDK's AnnotationQuery does not model; added to the JSON.
FAULT_ANNOTATION_FORMAT = {
    "titleFormat": "{{fault}}",
    "tagKeys": "fault",
    "textFormat": "Injected fault (ground truth, not in the telemetry)",
    "useValueForTime": False,
}
HEALTH_THRESHOLDS: list[tuple[float | None, str]] = [(None, "red"), (0.3, "orange"), (0.6, "green")]
# Numeric code of each state in the state timeline (0 would read as "no data").
STATE_CODES = {state: index + 1 for index, state in enumerate(catalog.MACHINE_STATES)}
# The one machine gauge that is not a payload signal: simulated ground-truth health.
(HEALTH,) = (metric for metric in catalog.MACHINE_SIGNALS if metric.signal is None)


def signal_title(metric: catalog.MetricDef) -> str:
    name = (metric.signal or metric.name).replace("_rms", " RMS").replace("_", " ")
    return f"{name[0].upper()}{name[1:]} ({metric.payload_unit})"


def machine_types_measuring(metric: catalog.MetricDef) -> tuple[str, ...]:
    """Machine types whose profile has this signal (every type for the common ones)."""
    return tuple(t.value for t, profile in PROFILES.items() if metric.signal in profile.signals)


def state_code_expr() -> str:
    """One series whose value is the code of the machine's state (for the state timeline)."""
    terms = [
        f"max({promql.selector(catalog.MACHINE_STATE, state=state, **MACHINE)}) * {code}"
        for state, code in STATE_CODES.items()
    ]
    return " + ".join(terms)


def fault_annotation_condition() -> tuple[str, str]:
    """(quantity, comparison) of the ground-truth annotation: a region while a fault is active."""
    return promql.sum_by(("fault",), promql.selector(catalog.ACTIVE_FAULTS, **MACHINE)), "> 0"


def _signal_panel(metric: catalog.MetricDef) -> timeseries.Panel:
    queries = [query(promql.scaled(promql.selector(metric, **MACHINE), metric), metric.signal or "")]
    if metric.signal == "cycle_time":
        ideal = catalog.IDEAL_CYCLE_TIME
        queries.append(query(promql.selector(ideal, **MACHINE), "ideal"))
    panel = panels.graph(signal_title(metric), queries, unit=panels.display_unit(metric),
                         description=metric.help, span=8, height=7)
    if len(machine_types_measuring(metric)) < len(PROFILES):
        panel = panel.no_value(NOT_MEASURED)
    return panel


def build() -> builders.Dashboard:
    health = promql.selector(HEALTH, **MACHINE)
    signals = [metric for metric in catalog.MACHINE_SIGNALS if metric.signal is not None]
    time_in_state = promql.sum_by(("state",), promql.increase(catalog.STATE_SECONDS, RANGE_WINDOW, **MACHINE))
    good = promql.sum_by((), promql.rate(catalog.PARTS_GOOD, RATE_WINDOW, **MACHINE))
    rejected = promql.sum_by((), promql.rate(catalog.PARTS_REJECTED, RATE_WINDOW, **MACHINE))
    faults = promql.sum_by(("fault",), promql.selector(catalog.ACTIVE_FAULTS, **MACHINE))
    annotation_quantity, annotation_comparison = fault_annotation_condition()

    dashboard = (
        panels.dashboard(
            TITLE,
            UID,
            "One machine: state, health, every signal in its engineering unit, injected faults.",
        )
        .with_variable(panels.label_variable("site", catalog.MACHINE_STATE, label="Site", multi=True))
        .with_variable(panels.label_variable("machine", catalog.MACHINE_STATE, label="Machine",
                                             filter_by={"site": "$site"}))
        .annotation(
            builders.AnnotationQuery()
            .name(FAULT_ANNOTATION)
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("red")
            .expr(f"{annotation_quantity} {annotation_comparison}")
        )
        .with_row(panels.row("State and health"))
        .with_panel(panels.state_timeline(
            "State", query(state_code_expr(), "state"),
            value_texts={code: (state, panels.STATE_COLORS[state]) for state, code in STATE_CODES.items()},
            description=catalog.MACHINE_STATE.help, span=24))
        .with_panel(panels.single_stat(
            "Health now", query(health), unit="percentunit", span=4, thresholds=HEALTH_THRESHOLDS,
            description=HEALTH.help))
        .with_panel(panels.graph(
            "Health", [query(health, "health")], unit="percentunit", min_value=0, max_value=1, span=10,
            description=HEALTH.help))
        .with_panel(panels.bars(
            "Time in each state (time range)", [query(time_in_state, "{{state}}", instant=True)], unit="s",
            span=10, description=catalog.STATE_SECONDS.help + " Simulated time, so it grows with --speed."))
        .with_row(panels.row("Signals"))
    )
    for metric in signals:
        dashboard = dashboard.with_panel(_signal_panel(metric))
    return (
        dashboard
        .with_row(panels.row("Production and faults"))
        .with_panel(panels.graph(
            "Parts per minute", [query(f"{good} * 60", "good"), query(f"{rejected} * 60", "rejected")],
            unit="short", span=12, description="Good and rejected parts made by this machine per minute."))
        .with_panel(panels.graph(
            "Active faults (ground truth)", [query(faults, "{{fault}}")], unit="short", span=12,
            description=catalog.ACTIVE_FAULTS.help + " Also shown as red annotations on every panel."))
    )
