"""Factory overview dashboard: machines by state, OEE per line, throughput, active faults."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders

from factory_core import metric_catalog as catalog
from observability import promql
from observability.dashboards import panels
from observability.dashboards.panels import RANGE_WINDOW, RATE_WINDOW, query

UID = "iotfactory-factory-overview"
TITLE = "Factory overview"
LINE = ("site", "line")
SITE = {"site": '=~$site'}
OEE_THRESHOLDS: list[tuple[float | None, str]] = [(None, "red"), (0.6, "orange"), (0.85, "green")]
# Planned production time is every state but planned maintenance; idle, set-up and fault time are
# availability losses (the simulator has no "no orders" state that OEE would exclude).
PLANNED_STATES = '!=maintenance'
# The line gauges carry no payload unit of their own; they are the machines' vibration, in mm/s.
(VIBRATION,) = (metric for metric in catalog.MACHINE_SIGNALS if metric.signal == "vibration_rms")


def _producing(expr: str) -> str:
    """Only machines that make parts (ideal cycle time > 0: not the compressors) count for OEE."""
    producing = f"{promql.selector(catalog.IDEAL_CYCLE_TIME, **SITE)} > 0"
    return f"({expr} and on (site, line, machine) {producing})"


def _state_seconds(window: str, state: str, by: tuple[str, ...]) -> str:
    seconds = promql.increase(catalog.STATE_SECONDS, window, state=state, **SITE)
    return promql.sum_by(by, _producing(seconds))


def _parts(window: str) -> str:
    good = promql.increase(catalog.PARTS_GOOD, window, **SITE)
    rejected = promql.increase(catalog.PARTS_REJECTED, window, **SITE)
    return f"({good} + {rejected})"


def availability(window: str, by: tuple[str, ...] = LINE) -> str:
    """Run time / planned production time (simulated seconds, so any --speed gives the same OEE)."""
    return f"({_state_seconds(window, 'running', by)} / {_state_seconds(window, PLANNED_STATES, by)})"


def performance(window: str, by: tuple[str, ...] = LINE) -> str:
    """Ideal time of the parts made / run time."""
    ideal_cycle_time = promql.selector(catalog.IDEAL_CYCLE_TIME, **SITE)
    ideal_seconds = promql.sum_by(by, f"{_parts(window)} * {ideal_cycle_time}")
    return f"({ideal_seconds} / {_state_seconds(window, 'running', by)})"


def quality(window: str, by: tuple[str, ...] = LINE) -> str:
    """Good parts / all parts."""
    good = promql.sum_by(by, promql.increase(catalog.PARTS_GOOD, window, **SITE))
    return f"({good} / {promql.sum_by(by, _parts(window))})"


def oee(window: str, by: tuple[str, ...] = LINE) -> str:
    """Availability × performance × quality, each summed over the machines of `by`."""  # noqa: RUF002
    return f"{availability(window, by)} * {performance(window, by)} * {quality(window, by)}"


def build() -> builders.Dashboard:
    line_legend = "{{site}} {{line}}"
    machines_by_state = promql.sum_by(("state",), promql.selector(catalog.LINE_MACHINES, **SITE))
    good_per_minute = promql.sum_by(LINE, promql.rate(catalog.LINE_PARTS_GOOD, RATE_WINDOW, **SITE))
    rejected_per_minute = promql.sum_by(LINE, promql.rate(catalog.LINE_PARTS_REJECTED, RATE_WINDOW, **SITE))
    active_faults = promql.selector(catalog.ACTIVE_FAULTS, **SITE)
    machines = promql.sum_by((), promql.selector(catalog.MACHINES_SIMULATED, **SITE))
    faults_by_kind = promql.sum_by(("fault",), active_faults)
    faulty_machines = promql.sum_by(("site", "line", "machine", "type", "fault"), active_faults)

    def machines_in(state: str) -> str:
        return promql.sum_by((), promql.selector(catalog.LINE_MACHINES, state=state, **SITE))

    # Per line and machine type in the exposition; the line's maximum over its types here.
    hottest = promql.aggregate("max", LINE, promql.selector(catalog.LINE_TEMPERATURE_MAX, **SITE))
    shakiest = promql.aggregate("max", LINE, promql.selector(catalog.LINE_VIBRATION_MAX, **SITE))
    state_legend = {state: state for state in catalog.MACHINE_STATES}
    return (
        panels.dashboard(
            TITLE,
            UID,
            "Is the factory producing? Machine states, OEE per line, throughput and faults.",
        )
        .with_variable(panels.label_variable("site", catalog.MACHINES_SIMULATED, label="Site", multi=True))
        .with_row(panels.row("Now"))
        .with_panel(panels.single_stat(
            "Machines simulated", query(machines), unit="short", span=4,
            description=catalog.MACHINES_SIMULATED.help))
        .with_panel(panels.single_stat(
            "Running", query(machines_in("running")), unit="short", span=4,
            description="Machines in the running state."))
        .with_panel(panels.single_stat(
            "In fault", query(machines_in("fault")), unit="short", span=4,
            thresholds=[(None, "green"), (1, "red")], description="Machines in the fault state."))
        .with_panel(panels.single_stat(
            "Active faults (ground truth)", query(promql.sum_by((), active_faults)), unit="short", span=4,
            thresholds=[(None, "green"), (1, "orange")], description=catalog.ACTIVE_FAULTS.help))
        .with_panel(panels.single_stat(
            "Good parts per minute", query(f"{promql.sum_by((), good_per_minute)} * 60"), unit="short",
            span=4, description="All lines, from " + catalog.LINE_PARTS_GOOD.name))
        .with_panel(panels.single_stat(
            "OEE (time range)",
            query(oee(RANGE_WINDOW, by=()), instant=True),
            unit="percentunit", span=4, thresholds=OEE_THRESHOLDS,
            description="OEE of all part-making machines together over the dashboard's time range."))
        .with_row(panels.row("Lines"))
        .with_panel(panels.state_color_overrides(panels.graph(
            "Machines by state", [query(machines_by_state, "{{state}}")], unit="short", stacked=True,
            description=catalog.LINE_MACHINES.help), state_legend))
        .with_panel(panels.bars(
            "OEE per line (time range)", [query(oee(RANGE_WINDOW), line_legend, instant=True)],
            unit="percentunit", min_value=0, max_value=1, thresholds=OEE_THRESHOLDS,
            description="OEE = availability × performance × quality over the dashboard's time range, "  # noqa: RUF001
                        "from the state seconds, ideal cycle time and part counters of the machines "
                        "that make parts."))
        .with_panel(panels.graph(
            "OEE per line (rolling 15 min)", [query(oee("15m"), line_legend)], unit="percentunit",
            min_value=0, max_value=1, description="OEE over the 15 minutes before each point."))
        .with_panel(panels.graph(
            "Availability, performance, quality (rolling 15 min)",
            [query(availability("15m"), "availability {{site}} {{line}}"),
             query(performance("15m"), "performance {{site}} {{line}}"),
             query(quality("15m"), "quality {{site}} {{line}}")],
            unit="percentunit", min_value=0,
            description="Availability = run / planned time; performance = ideal time of the parts "
                        "made / run time; quality = good / all parts."))
        .with_panel(panels.graph(
            "Throughput per line (parts per minute)",
            [query(f"{good_per_minute} * 60", "good {{site}} {{line}}"),
             query(f"{rejected_per_minute} * 60", "rejected {{site}} {{line}}")],
            unit="short", description="Parts leaving each line per minute."))
        .with_panel(panels.graph(
            "Hottest machine per line", [query(hottest, line_legend)],
            unit=panels.display_unit(catalog.LINE_TEMPERATURE_MAX), span=12,
            description=catalog.LINE_TEMPERATURE_MAX.help))
        .with_panel(panels.graph(
            "Highest vibration per line",
            [query(promql.scaled(shakiest, catalog.LINE_VIBRATION_MAX), line_legend)],
            unit=panels.display_unit(VIBRATION), span=12,
            description=catalog.LINE_VIBRATION_MAX.help + " ISO 10816: above 4.5 mm/s is unsatisfactory."))
        .with_row(panels.row("Faults"))
        .with_panel(panels.graph(
            "Active faults by kind (ground truth)", [query(faults_by_kind, "{{fault}}")], unit="short",
            stacked=True, description=catalog.ACTIVE_FAULTS.help))
        .with_panel(panels.instant_table(
            "Machines with active faults",
            query(f"{faulty_machines} > 0", instant=True),
            no_value="No active faults",
            description="Injected faults active now (ground truth, not visible in the telemetry)."))
    )
