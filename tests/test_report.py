"""`report`: one self-contained HTML file, opened in a real browser (headless Chromium) offline.

The archive is the archive writer's output of the real model's payloads (tests/support_archive.py);
the detections come from a detector that knows the answers for some faults and errs elsewhere.
The browser must load the page with the network off, raise no console error, and draw every
chart with data; the screenshot is kept in the test's temporary folder (its path is printed).
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
from support_archive import FLEET, BuiltArchive, build_archive
from support_browser import browser, open_page

from analytics.report import ReportInputs, write_report
from factory_core.errors import UsageError
from factory_core.verbs import ReportRequest
from scoring import Detection, write_detections

CHARTS_DRAWN = """
(() => [...document.querySelectorAll('[data-report-chart] .js-plotly-plot')].map(chart => ({
  id: chart.id,
  traces: (chart.data || []).length,
  points: (chart.data || []).reduce((sum, trace) => sum + ((trace.x || trace.y || []).length || 0), 0),
  svg: chart.querySelectorAll('.main-svg').length,
})))()
"""
needs_chromium = pytest.mark.skipif(browser() is None, reason="apt-get install chromium")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltArchive:
    return build_archive(tmp_path_factory.mktemp("archive"))


def detections_for(built: BuiltArchive, path: Path) -> Path:
    """Hits shortly after each failure mode became visible, and a false alarm on a healthy machine."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    found = []
    for event in built.messages("ground_truth"):
        visible = event["event"] == "fault_start" and event["detectable_from"]
        if visible and event["fault_class"] == "failure_mode":
            seen = dt.datetime.fromisoformat(event["detectable_from"].replace("Z", "+00:00")).timestamp()
            found.append(Detection(event["machine"], max(seen, start) + 30.0, event["fault"], 0.9))
    found.append(Detection("site-00-line-01-conveyor-01", start + 300.0, None, 0.4))
    write_detections(found, path)
    return path


def report(built: BuiltArchive, out: Path, **request: Any) -> Any:
    fields = {"out": str(out), **request}
    inputs = ReportInputs.from_request(
        ReportRequest(**fields), built.archive, prometheus_url=fields.get("prometheus_url"), fleet=FLEET
    )
    return write_report("local", inputs, lambda _message: None)


@needs_chromium
def test_the_report_opens_offline_in_chromium_with_every_chart_drawn(
    built: BuiltArchive, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    # A Prometheus that does not answer: the throughput comes from the archive, and the report says so.
    result = report(
        built,
        out,
        detections=str(detections_for(built, tmp_path / "detections.csv")),
        prometheus_url="http://127.0.0.1:9",
    )
    sections = {section.title: section for section in result.sections}
    assert "did not answer" in sections["Pipeline throughput"].note
    assert sections["OEE per line"].available and sections["Detections"].available
    assert not sections["Publish → archive latency"].available  # a dry run written afterwards
    assert "filled afterwards" in sections["Publish → archive latency"].note
    assert len(result.machines) == 4  # one of each type

    visit = open_page(out, CHARTS_DRAWN)
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(visit.screenshot)
    print(f"report screenshot: {screenshot}")
    assert visit.console_errors == [] and visit.exceptions == []
    assert visit.requests == []  # nothing fetched from the network: plotly.js is inside the file
    charts = visit.value
    # Throughput, OEE, states, and one signals chart per machine drawn.
    assert len(charts) == 3 + len(result.machines), charts
    assert all(chart["traces"] > 0 and chart["points"] > 0 and chart["svg"] > 0 for chart in charts), charts
    assert visit.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(visit.screenshot) > 50_000
    text = out.read_text()
    assert "spindle_bearing_wear" in text and "NAB score" in text and "Unavailable:" in text


def test_a_time_window_and_chosen_machines_narrow_the_report(built: BuiltArchive, tmp_path: Path) -> None:
    machine = "site-00-line-01-hydraulic_press-01"
    result = report(
        built,
        tmp_path / "narrow.html",
        time_from="2026-01-01T00:02:00Z",
        time_to="2026-01-01T00:06:00",
        machines=(machine,),
    )
    assert result.machines == (machine,)
    assert result.time_from >= dt.datetime(2026, 1, 1, 0, 2, tzinfo=dt.UTC)
    assert result.time_to <= dt.datetime(2026, 1, 1, 0, 6, tzinfo=dt.UTC)
    drawn = {section.title for section in result.sections if section.available}
    assert {"OEE per line", "Machine states", "Signals and faults"} <= drawn


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"out": "report.txt"}, "name an .html file"),
        ({"time_from": "yesterday"}, "--from 'yesterday': use ISO 8601"),
        ({"time_from": "2026-01-02", "time_to": "2026-01-01"}, "is not before --to"),
        ({"detections": "missing.csv"}, "no such file"),
        ({"machines": ("site-09-line-01-cnc_mill-01",)}, "not in the archive's window"),
        ({"time_from": "2030-01-01"}, "has no telemetry between"),
    ],
)
def test_bad_requests_are_one_line_usage_errors(
    built: BuiltArchive, tmp_path: Path, request_fields: dict[str, Any], message: str
) -> None:
    fields = {"out": str(tmp_path / "report.html"), **request_fields}
    if fields["out"] == "report.txt":
        fields["out"] = str(tmp_path / "report.txt")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        report(built, Path(fields.pop("out")), **fields)
    assert not (tmp_path / "report.html").exists()


def test_oee_parts_are_ratios_of_the_archives_times_and_parts(built: BuiltArchive) -> None:
    from analytics.archive_db import ArchiveDatabase
    from analytics.report_data import ReportData, ideal_cycle_times

    with ArchiveDatabase(built.archive, materialize=True) as database:
        data = ReportData(database)
        window = data.window(None, None)
        assert window is not None
        machines = [row["machine"] for row in data.machines(window)]
        ideal = ideal_cycle_times(FLEET, machines)
        (line,) = data.oee(window, ideal)
    producing = [machine for machine in machines if ideal[machine] > 0]
    assert line["machines"] == len(producing) == 4  # the compressor makes no parts
    good = 0
    for machine in producing:
        counters = [
            m["parts"]["good"]
            for m in sorted(built.messages("telemetry"), key=lambda m: m["ts"])
            if m["machine"] == machine
        ]
        # Parts made between samples; a counter that drops is a restarted simulator counting from 0.
        good += sum(now - before if now >= before else now for before, now in itertools.pairwise(counters))
    assert line["good"] == good > 0
    assert 0 < line["running_s"] <= line["planned_s"] <= len(producing) * window.seconds
    assert 0 < line["availability"] <= 1 and 0 < line["performance"] <= 1 and line["quality"] == 1.0
    assert line["oee"] == pytest.approx(line["availability"] * line["performance"] * line["quality"])
