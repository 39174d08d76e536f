"""`report`: one self-contained HTML file of what the factory did, from the archive and Prometheus.

Sections: pipeline throughput (Prometheus, or the archive when Prometheus does not answer) and
publish -> archive latency; OEE per line with its parts; a state timeline per machine; the signals
of chosen machines with ground-truth fault windows, `detectable_from` and a detector's detections.
A section without data says why instead of failing the report. plotly.js is embedded once, so the
file opens anywhere without a network.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytics import report_figures as figures
from analytics.archive_db import ArchiveDatabase
from analytics.report_data import (
    PrometheusUnavailable,
    ReportData,
    Window,
    ideal_cycle_times,
    prometheus_range,
    throughput_queries,
)
from factory_core.errors import UsageError
from factory_core.fleet import FleetSettings, MachineType
from factory_core.verb_results import ReportResult, ReportSection
from factory_core.verbs import ReportRequest

AHEAD_SHARE = 0.01  # more messages than this ahead of their write time: latency means nothing
BACKFILL_S = 3_600.0  # every message archived this long after its timestamp: a backfill, not a pipeline
PIPELINE_POINTS = 300


def parse_time(text: str | None, flag: str) -> dt.datetime | None:
    """ISO 8601; without a zone it is UTC. Returned naive UTC, as the views return times."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use ISO 8601, e.g. 2026-01-01T08:00:00Z") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


@dataclass(frozen=True)
class ReportInputs:
    archive: Any  # local_stack.archive.Archive
    out: Path
    time_from: dt.datetime | None
    time_to: dt.datetime | None
    machines: tuple[str, ...]
    detections: Path | None
    prometheus_url: str | None
    fleet: FleetSettings | None  # for ideal cycle times (performance, hence OEE)

    @classmethod
    def from_request(
        cls, request: ReportRequest, archive: Any, *, prometheus_url: str | None, fleet: FleetSettings | None
    ) -> ReportInputs:
        out = Path(request.out).expanduser()
        if out.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--out {out}: name an .html file")
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: folder {out.parent} does not exist")
        start, end = parse_time(request.time_from, "--from"), parse_time(request.time_to, "--to")
        if start and end and start >= end:
            raise UsageError(f"--from {request.time_from} is not before --to {request.time_to}")
        detections = None if request.detections is None else Path(request.detections).expanduser()
        if detections is not None and not detections.is_file():
            raise UsageError(f"--detections {detections}: no such file")
        return cls(archive, out, start, end, request.machines, detections, prometheus_url, fleet)


@dataclass
class _Page:
    """The report being assembled: HTML fragments and what each section had."""

    sections: list[ReportSection] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    charts: int = 0

    def heading(self, title: str) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")

    def chart(self, figure: Any) -> None:
        import plotly.io as pio

        self.charts += 1
        self.parts.append(
            '<div class="chart" data-report-chart="1">'
            + pio.to_html(
                figure,
                full_html=False,
                include_plotlyjs=False,
                div_id=f"chart-{self.charts}",
                config={"displaylogo": False, "responsive": True},
            )
            + "</div>"
        )

    def note(self, text: str, *, missing: bool = False) -> None:
        css = "unavailable" if missing else "note"
        self.parts.append(f'<p class="{css}">{html.escape(text)}</p>')

    def section(self, title: str, available: bool, note: str | None) -> None:
        self.sections.append(ReportSection(title, available, note))
        if not available:
            self.note(f"Unavailable: {note}", missing=True)
        elif note:
            self.note(note)

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_shown(row.get(name)))}</td>" for name in columns) + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def _pipeline(page: _Page, data: ReportData, window: Window, inputs: ReportInputs) -> None:
    page.heading("Pipeline")
    reason = "the stack is not running (no Prometheus to ask)"
    if inputs.prometheus_url:
        try:
            step = max(1.0, round(window.seconds / PIPELINE_POINTS))
            series = {
                name: prometheus_range(inputs.prometheus_url, expr, window, step)
                for name, expr in throughput_queries(2 * step).items()
            }
            if series["published"] or series["archived"]:
                times = [moment for moment, _ in series["published"] or series["archived"]]
                archived = dict(series["archived"])
                page.chart(
                    figures.throughput(
                        times,
                        [value for _, value in series["published"]],
                        [archived.get(t, 0.0) for t in times],
                        "Throughput (Prometheus)",
                    )
                )
                page.section("Pipeline throughput", True, f"from Prometheus at {inputs.prometheus_url}")
                _latency(page, data, window)
                return
            reason = f"Prometheus at {inputs.prometheus_url} has no samples for this time range"
        except PrometheusUnavailable as error:
            reason = str(error)
    seconds, published, archived = data.archived_per_second()
    if seconds:
        page.chart(figures.throughput(seconds, published, archived, "Throughput (from the archive)"))
        page.section(
            "Pipeline throughput",
            True,
            f"{reason}: from the archive instead (archived per second "
            "of object write time, published per second of payload time, one clock at speed 1)",
        )
    else:
        page.section("Pipeline throughput", False, reason)
    _latency(page, data, window)


def _latency(page: _Page, data: ReportData, window: Window) -> None:
    latencies, ahead = data.latencies(window)
    if ahead > AHEAD_SHARE * (len(latencies) + ahead):
        why = (
            f"{ahead:,} messages carry timestamps ahead of their write time: the simulated clock ran "
            "faster than real time (speed > 1)"
        )
        page.section("Publish → archive latency", False, why)
    elif not latencies:
        page.section("Publish → archive latency", False, "no telemetry with a write time in this window")
    elif min(latencies) > BACKFILL_S:
        why = (
            f"every message reached the archive at least {min(latencies) / 3600:,.0f} h after its "
            "timestamp: the archive was filled afterwards (a dry run or backfill), not by a live pipeline"
        )
        page.section("Publish → archive latency", False, why)
    else:
        page.chart(figures.latency(latencies))
        page.section("Publish → archive latency", True, figures.latency_summary(latencies))


def _oee(
    page: _Page, data: ReportData, window: Window, inputs: ReportInputs, machines: list[dict[str, Any]]
) -> None:
    page.heading("OEE per line")
    if inputs.fleet is None:
        page.section(
            "OEE per line",
            False,
            "performance needs each machine's ideal cycle time, which the "
            "model draws from the stack's fleet settings; run report on the stack (not --archive)",
        )
        return
    lines = data.oee(window, ideal_cycle_times(inputs.fleet, [row["machine"] for row in machines]))
    if not lines:
        page.section("OEE per line", False, "no machine that makes parts in this window")
        return
    page.chart(figures.oee(lines))
    page.table(
        lines,
        [
            "site",
            "line",
            "machines",
            "running_s",
            "planned_s",
            "ideal_s",
            "good",
            "rejected",
            "availability",
            "performance",
            "quality",
            "oee",
        ],
    )
    page.section(
        "OEE per line",
        True,
        "availability = running / planned (all but maintenance) time; "
        "performance = parts made * ideal cycle time / running time; quality = good / all parts; "
        "over the machines that make parts, as on the Factory overview dashboard",
    )


def _chosen(
    machines: list[dict[str, Any]], wanted: Sequence[str], faults: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    known = {row["machine"]: row for row in machines}
    if wanted:
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise UsageError(
                f"--machine {unknown[0]}: not in the archive's window; machines: "
                f"{', '.join(sorted(known)[:8])}{', ...' if len(known) > 8 else ''}"
            )
        return [known[name] for name in wanted]
    faulty = {fault["machine"] for fault in faults if fault["fault_class"] == "failure_mode"}
    chosen = []
    for machine_type in MachineType:
        of_type = [row for row in machines if row["type"] == machine_type.value]
        of_type.sort(key=lambda row: (row["machine"] not in faulty, row["machine"]))
        chosen += of_type[:1]
    return chosen


def _signals(
    page: _Page,
    data: ReportData,
    window: Window,
    machines: list[dict[str, Any]],
    inputs: ReportInputs,
    faults: list[dict[str, Any]],
) -> list[str]:
    page.heading("Signals, faults and detections")
    detections = _detections(inputs, window)
    chosen = _chosen(machines, inputs.machines, faults)
    for row in chosen:
        machine = row["machine"]
        table = data.signals(machine, row["type"], window, row["samples"])
        own = [fault for fault in faults if fault["machine"] == machine]
        page.chart(
            figures.signals(machine, table, own, window.end, [d for d in detections if d.machine == machine])
        )
    note = (
        "shaded: ground-truth fault windows (red: failure modes, orange: sensor faults); dashed: "
        "detectable_from"
    )
    page.section("Signals and faults", bool(chosen), note if chosen else "no machine in this window")
    page.heading("Faults in this window (ground truth)")
    page.table(
        faults,
        [
            "machine",
            "fault",
            "fault_class",
            "signal",
            "onset",
            "detectable_from",
            "end",
            "end_reason",
            "severity",
        ],
    )
    if inputs.detections is not None:
        _score(page, inputs, detections)
    return [row["machine"] for row in chosen]


def _detections(inputs: ReportInputs, window: Window) -> list[Any]:
    if inputs.detections is None:
        return []
    from scoring import read_detections

    start = window.start.replace(tzinfo=dt.UTC).timestamp()
    end = window.end.replace(tzinfo=dt.UTC).timestamp()
    return [d for d in read_detections(inputs.detections) if start <= d.time <= end]


def _score(page: _Page, inputs: ReportInputs, detections: list[Any]) -> None:
    """The scoring package's verdict on the detections, against the archive's labels."""
    from scoring import from_archive, read_detections, score

    assert inputs.detections is not None
    report = score(from_archive(inputs.archive), read_detections(inputs.detections))
    page.heading("Detections scored against the ground truth")
    rows = [vars(row) for row in report.rows]
    page.table(rows, ["kind", "labels", "detected", "false_alarms", "precision", "recall", "f1"])
    page.section(
        "Detections",
        True,
        f"{len(detections):,} detections in this window; NAB score "
        f"{report.nab_score:.1f} (0 = none, 100 = perfect) over the whole archive",
    )


def write_report(stack: str, inputs: ReportInputs, progress: Callable[[str], None]) -> ReportResult:
    progress(f"reading the archive at {inputs.archive.location}")
    page = _Page()
    with ArchiveDatabase(inputs.archive, materialize=True) as database:
        data = ReportData(database)
        window = data.window(inputs.time_from, inputs.time_to)
        if window is None:
            raise UsageError(
                f"the archive at {inputs.archive.location} has no telemetry between "
                f"{inputs.time_from or 'its start'} and {inputs.time_to or 'its end'}"
            )
        machines = data.machines(window)
        faults = data.faults(window)
        progress("drawing the pipeline, OEE, states and signals")
        _pipeline(page, data, window, inputs)
        _oee(page, data, window, inputs, machines)
        page.heading("Machine states")
        page.chart(figures.state_timeline(data.states(window)))
        page.section("Machine states", True, "from the state_change events (ground truth)")
        drawn = _signals(page, data, window, machines, inputs, faults)
    document = _document(stack, inputs, window, page)
    temporary = inputs.out.with_name(f".{inputs.out.name}.{os.getpid()}.tmp")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(inputs.out)
    return ReportResult(
        stack=stack,
        out_file=str(inputs.out),
        size_bytes=inputs.out.stat().st_size,
        source=inputs.archive.location,
        machines=tuple(drawn),
        sections=tuple(page.sections),
        time_from=window.start.replace(tzinfo=dt.UTC),
        time_to=window.end.replace(tzinfo=dt.UTC),
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .note { color: #555; font-size: 0.9rem; }
.unavailable { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5rem 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: left; }
ul.sections li.missing { color: #a05a00; }
"""


def _document(stack: str, inputs: ReportInputs, window: Window, page: _Page) -> str:
    from plotly.offline import get_plotlyjs

    summary = "".join(
        f'<li class="{"" if s.available else "missing"}">{html.escape(s.title)}: '
        f"{'drawn' if s.available else 'unavailable'}{' — ' + html.escape(s.note) if s.note else ''}</li>"
        for s in page.sections
    )
    generated = dt.datetime.now(dt.UTC)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>iotfactory report: {html.escape(stack)}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f'<h1>What the factory did</h1><p class="meta">Stack <b>{html.escape(stack)}</b>, archive '
        f"{html.escape(inputs.archive.location)}; {window.start:%Y-%m-%d %H:%M:%S} to "
        f"{window.end:%Y-%m-%d %H:%M:%S} UTC (payload time); generated {generated:%Y-%m-%d %H:%M:%S} UTC."
        f'</p><ul class="sections">{summary}</ul>' + "".join(page.parts) + "</body></html>\n"
    )
