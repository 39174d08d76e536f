"""The numbers people see, on the real local stack: Prometheus series, alerts and `status` totals.

Every test runs a stack with ephemeral ports (real Mosquitto, simulators, rule runner, Prometheus),
changes it the way people do (stop and up again, scale, break the archive) and reads the numbers
where people read them: Prometheus's API and `status --json`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from support_local_stack import run_cli
from test_local_stack_pipeline import MACHINES_PER_SITE, RunningStack, start_stack  # noqa: F401

from local_stack import prometheus as prometheus_api

pytestmark = pytest.mark.integration

MACHINES = "sum(factory_line_machines)"
SIMULATOR_DOWN = 'ALERTS{alertname="SimulatorDown"}'


def prometheus_port(stack: RunningStack) -> int:
    return int(stack.outputs()["prometheus_url"].rsplit(":", 1)[1])


def scalar(port: int, promql: str) -> float | None:
    result = prometheus_api.query(port, promql)
    return float(result[0]["value"][1]) if result else None


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout_s} s")


def hold(condition: Callable[[], Any], seconds: float, what: str) -> None:
    """`condition` stays truthy for `seconds` (Prometheus evaluates its rules every scrape, 1 s here)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        time.sleep(0.25)


def quiet(port: int, machines: int) -> bool:
    """The fleet counts `machines` and no SimulatorDown is pending or firing."""
    return scalar(port, MACHINES) == machines and not prometheus_api.query(port, SIMULATOR_DOWN)


def status() -> dict[str, Any]:
    result = run_cli("status", "--stack", "local", "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_series_survive_stop_and_up_and_leaving_is_no_outage(start_stack) -> None:  # noqa: F811
    stack = start_stack(simulators=2)
    fleet = 2 * MACHINES_PER_SITE
    port = prometheus_port(stack)
    wait_for(lambda: scalar(port, MACHINES) == fleet, 30, f"{MACHINES} == {fleet}")
    first_ports = stack.outputs()["metrics_ports"]

    # Stop and up again: every port is new (0 = pick a free one), the series are the same ones.
    stack.stop()
    assert run_cli("up", "--stack", "local", "--detach", "--yes", "--json").exit_code == 0
    port = prometheus_port(stack)
    assert stack.outputs()["metrics_ports"] != first_ports
    wait_for(lambda: prometheus_api.scrapes_exactly(port, {"site-00", "site-01"}), 30, "both sites scraped")
    wait_for(lambda: scalar(port, "count(up{job='simulator'} == 1)") == 2, 30, "both sites up")
    hold(
        lambda: quiet(port, fleet),
        8,
        f"{MACHINES} stays {fleet} and SimulatorDown stays quiet after stop + up",
    )
    up = prometheus_api.query(port, "up{job='simulator'}")
    sites = {series["metric"]["instance"]: series["metric"]["site"] for series in up}
    assert sites == {"site-00": "site-00", "site-01": "site-01"}

    # Scale down: the leaving site is out of Prometheus before it drains; nothing reads as down.
    assert run_cli("scale", "--stack", "local", "--simulators", "1", "--json").exit_code == 0
    # The staleness markers land at what would have been the next scrape of the leaving target.
    wait_for(lambda: scalar(port, MACHINES) == MACHINES_PER_SITE, 10, "the leaving site's series end")
    hold(
        lambda: quiet(port, MACHINES_PER_SITE),
        8,
        "after scale-down the fleet counts one site and SimulatorDown stays quiet",
    )
    rules = prometheus_api.api_get(port, "/api/v1/rules")["data"]["groups"]
    down = [r for g in rules for r in g["rules"] if r.get("name") == "SimulatorDown"]
    assert down and all(rule["state"] == "inactive" and not rule["alerts"] for rule in down)


def test_totals_are_final_counters_after_a_scale_down(start_stack) -> None:  # noqa: F811
    stack = start_stack(simulators=3)
    stack.wait_archived_beyond(stack.archived() + 60)
    assert run_cli("scale", "--stack", "local", "--simulators", "2", "--json").exit_code == 0
    stack.wait_archived_beyond(stack.archived() + 40)
    stack.stop()
    # The state the stack left: every process's final counts, the drained one's last second included.
    pipeline = status()["pipeline"]
    report = stack.verify()
    assert report.duplicates == 0 and report.missing == 0
    assert pipeline["published_total"] == pipeline["archived_total"] == report.unique > 0
    assert pipeline["errors_total"] == 0


Pipeline = dict[str, Any]


def wait_pipeline(condition: Callable[[Pipeline], bool], timeout_s: float, what: str) -> Pipeline:
    def check() -> Pipeline | None:
        pipeline: Pipeline = status()["pipeline"]
        return pipeline if condition(pipeline) else None

    return dict(wait_for(check, timeout_s, what))


def lag(pipeline: Pipeline) -> float:
    return float(pipeline["lag_s"] or 0.0)


def fault_lasts(began: float, seconds: float) -> None:
    """The fault's duration (what is tested is what status shows meanwhile, not a wait for it)."""
    time.sleep(max(0.0, began + seconds - time.monotonic()))


def test_errors_and_a_growing_lag_show_while_the_archive_cannot_keep_up(start_stack) -> None:  # noqa: F811
    stack = start_stack(simulators=1)
    stack.wait_archived_beyond(stack.archived() + 20)
    baseline = status()["pipeline"]
    assert baseline["errors_total"] == 0

    # The archive folder replaced by a file: not even root can write into it.
    folder = stack.paths.default_archive_dir
    away = folder.with_name("archive-away")
    folder.rename(away)
    folder.write_text("not a folder\n")
    began = time.monotonic()
    try:
        early = wait_pipeline(
            lambda p: p["archive_write_errors_total"] > 0 and lag(p) > 5, 20, "write errors and lag"
        )
        fault_lasts(began, 20)
        late = status()["pipeline"]
        assert late["errors_total"] >= late["archive_write_errors_total"] > 0
        assert late["lag_s"] > early["lag_s"] + 5, (early, late)
    finally:
        folder.unlink()
        away.rename(folder)
    wait_pipeline(lambda p: lag(p) < 5, 30, "the archive caught up after the folder came back")

    # The rule runner stopped (SIGSTOP) for 30 s: its exporter is silent and the lag grows.
    runner = int(stack.service("rule-runner")["pid"])
    os.kill(runner, signal.SIGSTOP)
    began = time.monotonic()
    try:
        early = wait_pipeline(
            lambda p: "rule-runner" in p["unanswered"] and lag(p) > 5, 20, "a silent runner and lag"
        )
        fault_lasts(began, 30)
        late = status()["pipeline"]
        assert late["errors_total"] > early["errors_total"] > baseline["errors_total"]
        assert late["lag_s"] > early["lag_s"] + 10, (early, late)
    finally:
        os.kill(runner, signal.SIGCONT)
    wait_pipeline(lambda p: lag(p) < 5 and not p["unanswered"], 60, "caught up after SIGCONT")
    stack.stop()
    report = stack.verify()
    assert report.missing == 0 and report.unreadable == 0 and report.duplicates == 0


def test_hints_never_lose_data_and_destroy_says_what_it_deletes(start_stack) -> None:  # noqa: F811
    stack = start_stack(simulators=1)
    stack.stop()
    started = run_cli("up", "--stack", "local", "--detach", "--yes")
    assert started.exit_code == 0, started.output
    assert "stop --stack local" in started.output and "destroy" not in started.output

    again = run_cli("up", "--stack", "local", "--detach")
    assert again.exit_code == 2 and "already running" in again.output
    assert "stop --stack local" in again.output and "destroy" not in again.output

    archive = stack.paths.default_archive_dir
    files = [path for path in archive.rglob("*") if path.is_file()]
    refused = run_cli("destroy", "--stack", "local")  # nobody to answer: refused, naming what would go
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert all(words in refused.output for words in ("the archive (", "objects", "certificates"))
    assert archive.is_dir()

    destroyed = run_cli("destroy", "--stack", "local", "--yes", "--json")
    assert destroyed.exit_code == 0, destroyed.output
    result = json.loads(destroyed.stdout.strip().splitlines()[-1])
    assert result["archive_deleted"] is True and result["archive"] == str(archive)
    assert result["archive_objects"] >= len(files) > 0 and result["archive_bytes"] > 0
    assert {"certificates and keys", "logs"} <= set(result["deleted"])
    assert not stack.paths.root.exists()
