"""The one Prometheus template, rendered for the local stack and the cloud, checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from observability.alert_rules import render_rules
from observability.prometheus_config import (
    ARCHIVE_JOB,
    SIMULATOR_JOB,
    format_duration,
    render_prometheus_config,
)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


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


@needs_promtool
def test_cloud_config_discovers_simulators_through_cloud_map_dns(tmp_path: Path) -> None:
    text = render_prometheus_config(
        dns_sd_name="simulator.iotfactory-dev.local", metrics_port=9100, scrape_interval_s=30,
        rule_files=["rules/alerts.yml"],
    )
    result = _promtool_check_config(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(text)["scrape_configs"]
    assert job["job_name"] == SIMULATOR_JOB
    assert job["dns_sd_configs"] == [
        {"names": ["simulator.iotfactory-dev.local"], "type": "A", "port": 9100, "refresh_interval": "30s"}
    ]
    assert "static_configs" not in job


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
        ({"static_targets": ["a:1"], "dns_sd_name": "x.local"}, "exactly one"),
        ({"static_targets": []}, "static_targets is empty"),
        ({"static_targets": ["a:1"], "scrape_interval_s": 0}, "scrape_interval_s"),
        ({"dns_sd_name": "x.local", "metrics_port": 70000}, "not a TCP port"),
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
