"""`query`, `report` and `outputs` on a real local stack, as a user runs them (`python cli.py ...`).

The stack (Mosquitto with mTLS, a simulator, the rule runner, Prometheus) runs at speed 1 with a
scheduled bearing fault, until it has archived a few hundred messages. Then: the report is written
while Prometheus runs and opened in headless Chromium; `outputs` links the main panels into
Prometheus (no Grafana here); after `stop`, `query`'s per-machine count equals `verify`'s unique
count, machine by machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_browser import browser, open_page
from support_local_stack import cli_process as cli
from support_local_stack import write_local_stack_file

from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV

pytestmark = pytest.mark.integration
FAULTY = "site-00-line-01-cnc_mill-01"
FLEET = {
    "seed": 13,
    "lines_per_site": 1,
    "publish_interval_s": 0.5,
    "faults": {
        "timescale": "demo",
        "scheduled": [{"machine": FAULTY, "fault": "spindle_bearing_wear", "at_s": 3, "severity": 0.9}],
    },
}
ARCHIVED_AT_LEAST = 300
CHARTS_DRAWN = """
(() => [...document.querySelectorAll('[data-report-chart] .js-plotly-plot')].map(chart =>
  (chart.data || []).reduce((sum, trace) => sum + ((trace.x || trace.y || []).length || 0), 0)))()
"""


def result_of(completed: subprocess.CompletedProcess[str]) -> dict:
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env[CONFIG_ENV] = str(write_local_stack_file(tmp_path, 1, FLEET))
    env[STATE_DIR_ENV] = str(tmp_path / "state")
    try:
        result_of(cli("up", "--stack", "local", "--detach", "--json", env=env))
        deadline = time.monotonic() + 120
        archived = 0
        while archived < ARCHIVED_AT_LEAST and time.monotonic() < deadline:
            time.sleep(1.0)
            status = result_of(cli("status", "--stack", "local", "--json", env=env))
            archived = status["pipeline"]["archived_total"]
        assert archived >= ARCHIVED_AT_LEAST
        yield env
    finally:
        cli("destroy", "--stack", "local", "--yes", env=env)


@pytest.mark.skipif(browser() is None, reason="apt-get install chromium")
def test_query_report_and_outputs_on_a_running_stack(stack: dict[str, str], tmp_path: Path) -> None:
    env = stack
    out = tmp_path / "report.html"
    report = result_of(cli("report", "--stack", "local", "--out", str(out), "--json", env=env))
    sections = {section["title"]: section for section in report["sections"]}
    assert all(section["available"] for section in report["sections"]), report["sections"]
    assert sections["Pipeline throughput"]["note"].startswith("from Prometheus at http://127.0.0.1:")
    visit = open_page(out, CHARTS_DRAWN)
    (tmp_path / "report.png").write_bytes(visit.screenshot)
    print(f"report screenshot: {tmp_path / 'report.png'}")
    assert visit.console_errors == [] and visit.exceptions == [] and visit.requests == []
    # Throughput, latency, OEE, states, and each chosen machine's signals: all with data.
    assert len(visit.value) == 4 + len(report["machines"]) and all(points > 0 for points in visit.value)

    outputs = result_of(cli("outputs", "--stack", "local", "--json", env=env))
    assert outputs["outputs"]["grafana_url"] is None  # no grafana-server on this machine
    links = {link["title"]: link["url"] for link in outputs["prometheus_links"]}
    assert links["Archived vs published"].startswith(outputs["outputs"]["prometheus_url"] + "/graph?g0.expr=")
    with urllib.request.urlopen(links["Archived vs published"], timeout=5) as page:
        assert page.status == 200
    human = cli("outputs", "--stack", "local", env=env)
    assert "the main panels in Prometheus" in human.stdout and "Machines by state: http://" in human.stdout

    failure_modes = "SELECT machine, fault, onset FROM ground_truth WHERE fault_class = 'failure_mode'"
    faults = result_of(cli("query", "--stack", "local", "--format", "json", failure_modes, env=env))
    assert [FAULTY, "spindle_bearing_wear"] in [row[:2] for row in faults["rows"]]

    assert cli("stop", "--stack", "local", env=env).returncode == 0
    verified = result_of(cli("verify", "--stack", "local", "--json", env=env))
    unique = {s["machine"]: s["unique"] for s in verified["streams"] if s["kind"] == "telemetry"}
    counted = result_of(
        cli(
            "query",
            "--stack",
            "local",
            "--format",
            "json",
            "SELECT machine, count(*) AS messages FROM telemetry GROUP BY machine ORDER BY machine",
            env=env,
        )
    )
    assert [column["name"] for column in counted["columns"]] == ["machine", "messages"]
    assert {machine: messages for machine, messages in counted["rows"]} == unique
    assert sum(unique.values()) >= ARCHIVED_AT_LEAST * 0.8
    csv_out = cli(
        "query", "--stack", "local", "--format", "csv", "SELECT count(*) AS messages FROM telemetry", env=env
    )
    assert csv_out.stdout.splitlines() == ["messages", str(sum(unique.values()))]
