"""Panel, query and variable helpers shared by the generated dashboards (grafana-foundation-sdk)."""

from __future__ import annotations

from typing import TypeVar

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    prometheus,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from factory_core.metric_catalog import MACHINE_STATES, MetricDef

DATASOURCE_VARIABLE = "datasource"
# Panels point at the dashboard's `datasource` variable, so the same JSON works when imported into
# any Grafana, whatever its Prometheus datasource is called.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
RATE_WINDOW = "$__rate_interval"
RANGE_WINDOW = "$__range"

STATE_COLORS = {
    "running": "green",
    "idle": "blue",
    "setup": "yellow",
    "fault": "red",
    "maintenance": "purple",
}
assert set(STATE_COLORS) == set(MACHINE_STATES), "a machine state has no colour"

PanelT = TypeVar("PanelT", timeseries.Panel, stat.Panel, bargauge.Panel, statetimeline.Panel, table.Panel)
BoundedPanelT = TypeVar("BoundedPanelT", timeseries.Panel, bargauge.Panel)


def display_unit(metric: MetricDef) -> str:
    """Grafana unit for a metric after `display_scale`; payload units Grafana lacks become suffixes."""
    if metric.grafana_unit == "none" and metric.payload_unit:
        return f"suffix: {metric.payload_unit}"
    return metric.grafana_unit


def query(expr: str, legend: str = "", *, instant: bool = False) -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend:
        built = built.legend_format(legend)
    if instant:
        built = built.instant()
    return built


def _with_queries(panel: PanelT, queries: list[prometheus.Dataquery]) -> PanelT:
    for index, item in enumerate(queries):
        panel = panel.with_target(item.ref_id(chr(ord("A") + index)))
    return panel


def _titled(panel: PanelT, title: str, description: str) -> PanelT:
    """What every panel starts with: its title, its description, and the dashboard's datasource."""
    return panel.title(title).description(description).datasource(DATASOURCE)


def _bounded(
    panel: BoundedPanelT, min_value: float | None, max_value: float | None
) -> BoundedPanelT:
    """A fixed axis minimum and maximum where given; Grafana picks them from the data otherwise."""
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def dashboard(title: str, uid: str, description: str) -> builders.Dashboard:
    """A generated dashboard with the house settings and its datasource variable first."""
    return (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["iotfactory", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(datasource_variable())
    )


def graph(
    title: str,
    queries: list[prometheus.Dataquery],
    *,
    unit: str,
    description: str = "",
    span: int = 12,
    height: int = 8,
    stacked: bool = False,
    min_value: float | None = None,
    max_value: float | None = None,
) -> timeseries.Panel:
    panel = (
        _titled(timeseries.Panel(), title, description)
        .unit(unit)
        .span(span)
        .height(height)
        .fill_opacity(30 if stacked else 10)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(common.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI)
                 .sort(common_models.SortOrder.DESCENDING))
    )
    if stacked:
        panel = panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    return _with_queries(_bounded(panel, min_value, max_value), queries)


def single_stat(
    title: str,
    item: prometheus.Dataquery,
    *,
    unit: str,
    description: str = "",
    span: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> stat.Panel:
    steps = thresholds or [(None, "green")]
    panel = (
        _titled(stat.Panel(), title, description)
        .unit(unit)
        .span(span)
        .height(4)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .color_mode(common_models.BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(steps))
    )
    return _with_queries(panel, [item])


def bars(
    title: str,
    queries: list[prometheus.Dataquery],
    *,
    unit: str,
    description: str = "",
    span: int = 12,
    height: int = 8,
    min_value: float | None = None,
    max_value: float | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> bargauge.Panel:
    panel = (
        _titled(bargauge.Panel(), title, description)
        .unit(unit)
        .span(span)
        .height(height)
        .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(thresholds or [(None, "green")]))
    )
    return _with_queries(_bounded(panel, min_value, max_value), queries)


def state_timeline(
    title: str,
    item: prometheus.Dataquery,
    *,
    value_texts: dict[int, tuple[str, str]],
    description: str = "",
    span: int = 24,
    height: int = 5,
) -> statetimeline.Panel:
    """One band per series; `value_texts` maps each numeric value to (text, colour)."""
    mapping = models.ValueMap(
        options={str(value): models.ValueMappingResult(text=text, color=color, index=index)
                 for index, (value, (text, color)) in enumerate(sorted(value_texts.items()))}
    )
    panel = (
        _titled(statetimeline.Panel(), title, description)
        .span(span)
        .height(height)
        .mappings([mapping])
        .show_value(common_models.VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.9)
        .fill_opacity(80)
        .line_width(0)
        .legend(common.VizLegendOptions().show_legend(True)
                .display_mode(common_models.LegendDisplayMode.LIST)
                .placement(common_models.LegendPlacement.BOTTOM))
        .tooltip(common.VizTooltipOptions().mode(common_models.TooltipDisplayMode.SINGLE)
                 .sort(common_models.SortOrder.NONE))
    )
    return _with_queries(panel, [item])


def instant_table(
    title: str,
    item: prometheus.Dataquery,
    *,
    description: str = "",
    no_value: str = "",
    span: int = 12,
    height: int = 8,
) -> table.Panel:
    panel = (
        _titled(table.Panel(), title, description)
        .span(span)
        .height(height)
        .show_header(True)
        .cell_height(common_models.TableCellHeight.SM)
        .footer(common.TableFooterOptions().show(False).reducer(["sum"]))
        # Instant table results carry a Time column; hide it, keep every label and the value.
        .with_transformation(models.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {"Value": "active"}}
        ))
    )
    if no_value:
        panel = panel.no_value(no_value)
    return _with_queries(panel, [item.format(prometheus_models.PromQueryFormat.TABLE)])


def state_color_overrides(panel: timeseries.Panel, legend_of: dict[str, str]) -> timeseries.Panel:
    """Colour each state's series the same way on every dashboard."""
    for state, display_name in legend_of.items():
        colour = models.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": STATE_COLORS[state]}
        )
        panel = panel.override_by_name(display_name, [colour])
    return panel


def _thresholds(steps: list[tuple[float | None, str]]) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(
        [models.Threshold(value=value, color=color) for value, color in steps]
    )


def row(title: str) -> builders.Row:
    return builders.Row(title)


def datasource_variable() -> builders.DatasourceVariable:
    return builders.DatasourceVariable(DATASOURCE_VARIABLE).label("Data source").type("prometheus")


def label_variable(
    name: str, metric: MetricDef, *, label: str, filter_by: dict[str, str] | None = None, multi: bool = False
) -> builders.QueryVariable:
    """A variable listing the values of one of a metric's labels (`label_values`)."""
    if name not in metric.labels:
        raise ValueError(f"{metric.name} has no label {name!r}")
    matchers = ", ".join(f'{key}=~"{value}"' for key, value in (filter_by or {}).items())
    selector = f"{metric.name}{{{matchers}}}" if matchers else metric.name
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({selector}, {name})")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable
