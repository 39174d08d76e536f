"""The report's charts as plotly figures, from the rows `report_data` returns."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analytics.tables import QueryTable
from factory_core.payload_contract import SIGNAL_UNITS

FAULT_COLORS = {"failure_mode": "rgba(214, 39, 40, 0.18)", "sensor": "rgba(255, 127, 14, 0.18)"}
OEE_PARTS = ("availability", "performance", "quality", "oee")
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 40, "b": 40}}


def _state_colors() -> Mapping[str, str]:
    """The dashboards' state colours (one owner: observability.dashboards.panels)."""
    from observability.dashboards.panels import STATE_COLORS

    return STATE_COLORS


def throughput(
    times: Sequence[dt.datetime], published: Sequence[float], archived: Sequence[float], title: str
) -> go.Figure:
    figure = go.Figure(layout={**_LAYOUT, "title": title, "yaxis": {"title": "messages per second"}})
    mode = "lines" if len(times) > 30 else "lines+markers"  # a short run is a few points: show them
    figure.add_scatter(x=list(times), y=list(published), name="published", mode=mode)
    figure.add_scatter(x=list(times), y=list(archived), name="archived", mode=mode)
    return figure


def latency(latencies: Sequence[float]) -> go.Figure:
    figure = go.Figure(
        layout={
            **_LAYOUT,
            "title": "Publish → archive latency (telemetry)",
            "xaxis": {"title": "seconds from the payload's ts to its object's write"},
            "yaxis": {"title": "messages"},
            "bargap": 0.02,
        }
    )
    figure.add_histogram(x=list(latencies), nbinsx=60, name="messages", showlegend=False)
    ordered = sorted(latencies)
    for share, dash in ((0.5, "dash"), (0.99, "dot")):
        value = ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]
        figure.add_vline(x=value, line_dash=dash, annotation_text=f"p{int(share * 100)} {value:.2f} s")
    return figure


def _percent(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(100 * value, 1)


def oee(lines: Sequence[Mapping[str, Any]]) -> go.Figure:
    names = [f"{row['site']} {row['line']}" for row in lines]
    figure = go.Figure(
        layout={
            **_LAYOUT,
            "title": "OEE per line and its parts",
            "barmode": "group",
            "yaxis": {"title": "%", "range": [0, 105]},
        }
    )
    for part in OEE_PARTS:
        values = [_percent(row[part]) for row in lines]
        figure.add_bar(
            x=names,
            y=values,
            name=part.upper() if part == "oee" else part,
            text=[f"{value:.0f} %" if value is not None else "-" for value in values],
        )
    return figure


def state_timeline(intervals: Sequence[Mapping[str, Any]]) -> go.Figure:
    """One row per machine, one coloured bar per state interval (a Gantt chart on a time axis)."""
    machines = sorted({row["machine"] for row in intervals})
    figure = go.Figure(
        layout={
            **_LAYOUT,
            "title": "Machine states",
            "barmode": "overlay",
            "height": max(300, 40 + 28 * len(machines)),
            "xaxis": {"type": "date"},
            "yaxis": {"categoryorder": "array", "categoryarray": machines[::-1]},
        }
    )
    colors = _state_colors()
    for state, color in colors.items():
        rows = [row for row in intervals if row["state"] == state]
        if not rows:
            continue
        figure.add_bar(
            orientation="h",
            name=state,
            y=[row["machine"] for row in rows],
            base=[row["start"] for row in rows],
            x=[(row["end"] - row["start"]).total_seconds() * 1000 for row in rows],
            marker_color=color,
            customdata=[[row["reason"], str(row["start"]), str(row["end"])] for row in rows],
            hovertemplate="%{y}<br>" + state + " (%{customdata[0]})<br>%{customdata[1]} → %{customdata[2]}"
            "<extra></extra>",
        )
    return figure


def signals(
    machine: str,
    table: QueryTable,
    faults: Sequence[Mapping[str, Any]],
    window_end: dt.datetime,
    detections: Sequence[Any] = (),
) -> go.Figure:
    """Every signal of one machine, fault windows shaded, `detectable_from` marked, detections above."""
    names = [column.name for column in table.columns if column.name != "ts"]
    rows = len(names) + (1 if detections else 0)
    titles = ([f"detections of {machine}"] if detections else []) + [
        f"{name} ({SIGNAL_UNITS[name]})" for name in names
    ]
    figure = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.03, subplot_titles=titles)
    first_signal_row = 2 if detections else 1
    times = table.column("ts")
    breaks = _gaps(times)
    for offset, name in enumerate(names):
        x, y = _broken(times, table.column(name), breaks)
        figure.add_scatter(
            x=x, y=y, name=name, mode="lines", showlegend=False, row=first_signal_row + offset, col=1
        )
    if detections:
        _detections(figure, detections)
    for index, fault in enumerate(faults):
        _fault_window(figure, fault, window_end, times[0] if times else None, index)
    figure.update_layout(
        **{**_LAYOUT, "margin": {**_LAYOUT["margin"], "t": 110}},
        title=f"{machine}: signals, ground-truth faults and detections",
        height=170 * rows + 130,
        showlegend=False,
    )
    return figure


def _gaps(times: Sequence[dt.datetime]) -> set[int]:
    """Indexes after which the samples stop for a while (the simulator was down): no line across."""
    steps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    if not steps:
        return set()
    usual = statistics.median(steps)
    return {index for index, step in enumerate(steps) if step > 10 * usual}


def _broken(times: Sequence[Any], values: Sequence[Any], breaks: set[int]) -> tuple[list[Any], list[Any]]:
    x: list[Any] = []
    y: list[Any] = []
    for index, (moment, value) in enumerate(zip(times, values, strict=True)):
        x.append(moment)
        y.append(value)
        if index in breaks:
            x.append(moment)
            y.append(None)
    return x, y


def _detections(figure: go.Figure, detections: Sequence[Any]) -> None:
    scores = [detection.score for detection in detections]
    figure.add_scatter(
        x=[dt.datetime.fromtimestamp(d.time, dt.UTC).replace(tzinfo=None) for d in detections],
        y=[score if score is not None else 1.0 for score in scores],
        mode="markers",
        marker={
            "color": [score or 0.0 for score in scores],
            "colorscale": "Reds",
            "showscale": True,
            "colorbar": {"title": "score", "len": 0.2, "y": 1.0, "yanchor": "top"},
            "size": 7,
        },
        text=[d.failure_mode or "" for d in detections],
        hovertemplate="%{x}<br>score %{y}<br>%{text}<extra>detection</extra>",
        row=1,
        col=1,
    )


def _fault_window(
    figure: go.Figure,
    fault: Mapping[str, Any],
    window_end: dt.datetime,
    first: dt.datetime | None,
    index: int,
) -> None:
    start = fault["onset"] if first is None else max(fault["onset"], first)
    end = fault["end"] or window_end
    label = f"{fault['fault']}" + (f" ({fault['signal']})" if fault.get("signal") else "")
    figure.add_vrect(
        x0=start,
        x1=end,
        fillcolor=FAULT_COLORS.get(fault["fault_class"], "rgba(0,0,0,0.1)"),
        line_width=0,
        row="all",
        col=1,
    )
    # One label per fault, above the charts, staggered so that overlapping windows stay readable.
    figure.add_annotation(
        x=start,
        xref="x",
        y=1.0,
        yref="paper",
        yshift=16 + 14 * (index % 3),
        text=label,
        showarrow=False,
        xanchor="left",
        yanchor="bottom",
        font={"size": 11},
    )
    if fault.get("detectable_from"):
        figure.add_vline(
            x=fault["detectable_from"], line_dash="dash", line_color="firebrick", row="all", col=1
        )


def latency_summary(latencies: Sequence[float]) -> str:
    return (
        f"{len(latencies):,} messages, median {statistics.median(latencies):.2f} s, "
        f"max {max(latencies):.2f} s"
    )
