"""The one Prometheus template, rendered for the local stack and the cloud, checked by promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server

from local_stack import prometheus as prom
from local_stack.ports import free_port
from local_stack.processes import ManagedProcess
from observability.alert_rules import render_rules
from observability.prometheus_config import (
    ARCHIVE_JOB,
    SIMULATOR_JOB,
    format_duration,
    render_prometheus_config,
)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus")
# infra/settings.py accepts simulatorCount up to 100 (the CLI's default maxSimulators is 50).
MAX_SITES = 100


def _promtool_check_config(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / "alerts.yml").write_text(render_rules())
    config = directory / "prometheus.yml"
    config.write_text(text)
    return subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False)


@needs_promtool
def test_local_config_with_static_targets_and_archive_job_passes_promtool(tmp_path: Path) -> None:
    text = render_prometheus_config(
        static_targets=["127.0.0.1:9101", "127.0.0.1:9102"],
        scrape_interval_s=15,
        rule_files=["rules/alerts.yml"],
        extra_static_jobs={ARCHIVE_JOB: ["127.0.0.1:9200"]},
    )
    result = _promtool_check_config(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[SIMULATOR_JOB]["static_configs"] == [{"targets": ["127.0.0.1:9101", "127.0.0.1:9102"]}]
    assert jobs[ARCHIVE_JOB]["static_configs"] == [{"targets": ["127.0.0.1:9200"]}]
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["rules/alerts.yml"]


def _site_names(count: int, namespace: str = "dev.iotfactory.internal") -> list[str]:
    return [f"site-{index:02d}.{namespace}" for index in range(count)]


@needs_promtool
def test_cloud_config_discovers_every_site_by_its_own_cloud_map_name(tmp_path: Path) -> None:
    names = _site_names(3)
    text = render_prometheus_config(
        dns_sd_names=names, metrics_port=9100, scrape_interval_s=30, rule_files=["rules/alerts.yml"],
    )
    result = _promtool_check_config(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["job_name"] == SIMULATOR_JOB
    assert job["dns_sd_configs"] == [{"names": names, "type": "A", "port": 9100, "refresh_interval": "30s"}]
    assert "static_configs" not in job
    assert job["honor_labels"] is True  # the exporter's `site` stays `site`, not `exported_site`
    relabel = {rule["target_label"]: rule for rule in job["relabel_configs"]}
    assert relabel["site"]["source_labels"] == relabel["instance"]["source_labels"] == ["__meta_dns_name"]
    # Prometheus anchors relabel regexes; Python's fullmatch does the same.
    site_rule = relabel["site"]
    assert [re.fullmatch(site_rule["regex"], name).expand(site_rule["replacement"].replace("$", "\\"))
            for name in names] == ["site-00", "site-01", "site-02"]
    assert relabel["instance"]["replacement"] == "$1:9100"


@needs_promtool
@pytest.mark.parametrize("sites", [0, 1, 9, MAX_SITES])
def test_cloud_config_for_any_fleet_size_passes_promtool(tmp_path: Path, sites: int) -> None:
    names = _site_names(sites)
    text = render_prometheus_config(dns_sd_names=names, rule_files=["rules/alerts.yml"])
    result = _promtool_check_config(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(text)["scrape_configs"]
    if sites:
        assert job["dns_sd_configs"][0]["names"] == names
    else:  # Prometheus refuses `names: []`; no simulator means a job without targets
        assert "dns_sd_configs" not in job and "static_configs" not in job


def _wait_for(probe: Callable[[], list[dict]], timeout_s: float, what: str) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


@needs_prometheus
def test_cloud_relabelling_names_the_site_of_a_target_that_is_down(tmp_path: Path) -> None:
    """The rendered cloud job in a real Prometheus: site-00 is up, site-01's task does not answer.

    DNS discovery cannot be pointed at a test resolver, so only the discovery mechanism is swapped:
    a file_sd of the same targets carrying the `__meta_dns_name` label DNS discovery sets. The
    job's `honor_labels` and relabelling run exactly as rendered, with the cloud alert rules.
    """
    names = _site_names(2)
    registry = CollectorRegistry()
    published = Counter("factory_test_published", "Test counter", ["site"], registry=registry)
    published.labels(site="site-00").inc(3)
    exporter_port, silent_port, prometheus_port = free_port(), free_port(), free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)

    config = yaml.safe_load(render_prometheus_config(
        dns_sd_names=names, metrics_port=9100, scrape_interval_s=1, rule_files=["rules/alerts.yml"],
    ))
    (job,) = config["scrape_configs"]
    job.pop("dns_sd_configs")
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([
        {"targets": [f"127.0.0.1:{exporter_port}"], "labels": {"__meta_dns_name": names[0]}},
        {"targets": [f"127.0.0.1:{silent_port}"], "labels": {"__meta_dns_name": names[1]}},
    ]))
    job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "rules").mkdir()
    # `for: 1m` of SimulatorDown becomes 1.2 s.
    (tmp_path / "rules" / "alerts.yml").write_text(render_rules(target="cloud", for_scale=0.02))
    prometheus = ManagedProcess("prometheus", [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ], tmp_path / "prometheus.log", stop_timeout_s=20)
    try:
        prometheus.start()
        assert prom.wait_ready(prometheus_port, 30), prometheus.log_tail(5)

        def both_scraped() -> list[dict]:
            ups = prom.query(prometheus_port, "up")
            return ups if len(ups) == 2 else []

        by_site = {sample["metric"]["site"]: sample for sample in _wait_for(both_scraped, 30, "2 targets")}
        assert {site: sample["value"][1] for site, sample in by_site.items()} == {
            "site-00": "1", "site-01": "0"}
        assert {site: sample["metric"]["instance"] for site, sample in by_site.items()} == {
            "site-00": f"{names[0]}:9100", "site-01": f"{names[1]}:9100"}
        (sample,) = prom.query(prometheus_port, "factory_test_published_total")
        labels = sample["metric"]
        assert labels == {"__name__": "factory_test_published_total", "job": SIMULATOR_JOB,
                          "instance": f"{names[0]}:9100", "site": "site-00"}  # no exported_site
        (alert,) = _wait_for(lambda: prom.query(
            prometheus_port, 'ALERTS{alertname="SimulatorDown", alertstate="firing"}'), 30, "SimulatorDown")
        assert (alert["metric"]["site"], alert["metric"]["instance"]) == ("site-01", f"{names[1]}:9100")
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@needs_promtool
def test_one_second_scrapes_are_valid(tmp_path: Path) -> None:
    text = render_prometheus_config(static_targets=["127.0.0.1:1"], scrape_interval_s=1, rule_files=[])
    result = _promtool_check_config(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(text)["global"]["scrape_timeout"] == "1s"


@needs_promtool
def test_promtool_rejects_a_rule_file_that_does_not_exist(tmp_path: Path) -> None:
    # Proves the check above really loads the rule files it names.
    text = render_prometheus_config(static_targets=["127.0.0.1:1"], rule_files=["rules/missing.yml"])
    assert _promtool_check_config(tmp_path, text).returncode != 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"static_targets": ["a:1"], "dns_sd_names": ["site-00.x.local"]}, "exactly one"),
        ({"static_targets": []}, "static_targets is empty"),
        ({"static_targets": ["a:1"], "scrape_interval_s": 0}, "scrape_interval_s"),
        ({"dns_sd_names": ["site-00.x.local"], "metrics_port": 70000}, "not a TCP port"),
        # A bare string would otherwise be read as one name per character.
        ({"dns_sd_names": "site-00.x.local"}, "not the string"),
        ({"dns_sd_names": ["site-00"]}, "not a DNS name"),
        ({"dns_sd_names": ["site 00.x.local"]}, "not a DNS name"),
        ({"dns_sd_names": ["Site-00.x.local"]}, "not a DNS name"),
        ({"dns_sd_names": ["site-00.x.local\n"]}, "not a DNS name"),
        ({"dns_sd_names": ["site-00.x.local", "site-00.y.local"]}, "repeat the site 'site-00'"),
        ({"static_targets": ["a:1"], "extra_static_jobs": {SIMULATOR_JOB: ["b:2"]}}, "may not redefine"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_prometheus_config(rule_files=[], **kwargs)


@pytest.mark.parametrize(
    ("seconds", "text"), [(15, "15s"), (1, "1s"), (0.5, "500ms"), (60, "1m"), (600, "10m"), (3600, "1h"),
                          (90, "90s"), (1.2, "1200ms"), (0, "0s")],
)
def test_durations_use_prometheus_syntax(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_local_targets_carry_their_site_so_simulator_down_names_it() -> None:
    config = yaml.safe_load(render_prometheus_config(
        static_targets=["127.0.0.1:9801", "127.0.0.1:9802"], static_target_sites=["site-00", "site-01"],
        rule_files=[],
    ))
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True  # the exporter's `site` is kept, not renamed exported_site
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:9801"], "labels": {"site": "site-00"}},
        {"targets": ["127.0.0.1:9802"], "labels": {"site": "site-01"}},
    ]
    with pytest.raises(ValueError, match="one distinct site per static target"):
        render_prometheus_config(
            static_targets=["127.0.0.1:9801"], static_target_sites=["a", "b"], rule_files=[]
        )
