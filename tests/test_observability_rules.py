"""Alert rules: generated from the catalog, valid for promtool, unit-tested with `promtool test rules`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from factory_core import metric_catalog as catalog
from factory_core.fleet import MachineType
from observability import alert_rules, promql
from observability.alert_rules import ALERT_RULES, grafana_rule_groups, render_rules, rules_for
from observability.generate import RULES_FILE
from observability.query_inventory import metric_names
from simulator.model.profiles import PROFILES

RULE_TESTS_DIR = RULES_FILE.parent / "tests"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


def test_committed_rule_file_is_generated_from_the_definitions() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == render_rules(), (
        "observability/rules/alerts.yml is out of date: run `python -m observability.generate`"
    )


def test_the_issue_s_alerts_exist() -> None:
    names = {rule.alert for rule in ALERT_RULES}
    assert {"MachineOverheating", "MachineVibrationRising", "MachineInFault", "SimulatorDown",
            "PublishFailures", "ArchiveLagging"} <= names


def test_every_rule_reads_only_catalog_metrics_or_prometheus_series() -> None:
    known = {metric.sample_name for metric in catalog.ALL_METRICS} | set(promql.SYNTHETIC_SERIES)
    for rule in ALERT_RULES:
        names = metric_names(rule.expr)
        assert names, rule.expr
        assert names <= known, f"{rule.alert}: {names - known} not in the catalog"
        assert {m.sample_name for m in rule.metrics} <= names


def test_rules_keep_quantity_and_threshold_apart() -> None:
    for rule in ALERT_RULES:
        assert rule.expr.startswith(rule.expr_metric_part)
        assert rule.expr_metric_part not in ("", rule.expr)
        assert promql.format_number(rule.threshold) in rule.expr.removeprefix(rule.expr_metric_part)


def test_overheating_thresholds_sit_below_each_machine_type_s_trip_temperature() -> None:
    overheating = {dict(rule.variant_labels)["type"]: rule for rule in ALERT_RULES
                   if rule.alert == "MachineOverheating"}
    assert set(overheating) == {t.value for t in MachineType}
    for machine_type, profile in PROFILES.items():
        rule = overheating[machine_type.value]
        assert rule.threshold == profile.alarm_temperature_c < profile.trip_temperature_c
        assert f'type="{machine_type.value}"' in rule.expr


def test_for_scale_shortens_every_for_and_nothing_else() -> None:
    normal = yaml.safe_load(render_rules())
    short = yaml.safe_load(render_rules(for_scale=0.01, eval_interval_s=1))
    for normal_group, short_group in zip(normal["groups"], short["groups"], strict=True):
        assert short_group["interval"] == "1s"
        for normal_rule, short_rule in zip(normal_group["rules"], short_group["rules"], strict=True):
            assert {k: v for k, v in short_rule.items() if k != "for"} == {
                k: v for k, v in normal_rule.items() if k != "for"}
    overheating = next(r for g in short["groups"] for r in g["rules"] if r["alert"] == "MachineOverheating")
    assert overheating["for"] == "600ms"


def test_cloud_rules_leave_out_the_local_archive() -> None:
    cloud = {rule.alert for rule in rules_for("cloud")}
    assert "ArchiveLagging" not in cloud
    assert "ArchiveLagging" in {rule.alert for rule in rules_for("local")}
    assert "archive_" not in render_rules(target="cloud")


@needs_promtool
def test_generated_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    for target in (None, "local", "cloud"):
        path = tmp_path / f"{target}.yml"
        path.write_text(render_rules(target=target))  # type: ignore[arg-type]
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    tests = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert tests, f"no promtool tests in {RULE_TESTS_DIR}"
    result = subprocess.run(["promtool", "test", "rules", *[t.name for t in tests]], cwd=RULE_TESTS_DIR,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_tests_fail_when_a_metric_is_renamed(tmp_path: Path) -> None:
    """A catalog rename changes the generated rules; the unit tests, written against the exported
    names, then fail: a renamed metric cannot silently leave an alert that never fires."""
    renamed = render_rules().replace(catalog.MACHINE_STATE.name, catalog.MACHINE_STATE.name + "_renamed")
    (tmp_path / "alerts.yml").write_text(renamed)
    tests = tmp_path / "tests"
    tests.mkdir()
    for test in RULE_TESTS_DIR.glob("*.yml"):
        (tests / test.name).write_text(test.read_text())
    result = subprocess.run(["promtool", "test", "rules", *[t.name for t in tests.glob("*.yml")]], cwd=tests,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "MachineInFault" in result.stdout + result.stderr


def test_grafana_rules_mirror_the_prometheus_rules() -> None:
    document = grafana_rule_groups(rules_for("cloud"), datasource_uid="prometheus", folder="IoT Factory")
    assert document["apiVersion"] == 1
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    definitions = rules_for("cloud")
    assert len(rules) == len(definitions)
    assert len({r["uid"] for r in rules}) == len(rules)
    assert len({r["title"] for r in rules}) == len(rules)
    assert all(len(r["uid"]) <= 40 for r in rules)
    for rule, definition in zip(rules, definitions, strict=True):
        refs = {item["refId"]: item for item in rule["data"]}
        assert rule["condition"] in refs
        queries = [item["model"]["expr"] for item in rule["data"] if item["datasourceUid"] == "prometheus"]
        assert queries == [c.expr_metric_part for c in definition.conditions]
        math = refs[rule["condition"]]["model"]
        assert math["type"] == "math"
        for condition in definition.conditions:
            assert f"{condition.comparison} {promql.format_number(condition.threshold)}" in math["expression"]
        for item in rule["data"]:
            expression = item["model"].get("expression", "")
            for ref in re.findall(r"\$?([A-Z]\d)", expression):
                assert ref in refs, f"{rule['title']}: {expression} refers to missing {ref}"
        assert rule["for"] == alert_rules.format_duration(definition.for_s)
        # Grafana interpolates env vars into labels: a `$` there would be eaten.
        assert "$" not in yaml.safe_dump(rule["labels"])
        assert "$value " not in rule["annotations"]["description"]
