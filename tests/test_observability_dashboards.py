"""Generated dashboards: up to date, built from catalog metrics only, units from the catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from factory_core import metric_catalog as catalog
from observability import promql
from observability.dashboards import (
    DASHBOARDS,
    GENERATED_DIR,
    dashboard_document,
    dashboards_for,
    factory_overview,
    machine_detail,
    pipeline_health,
    render_dashboard,
    write_dashboards,
)
from observability.dashboards.panels import DATASOURCE_VARIABLE, display_unit
from observability.generate import PROJECT_DIR, stale_files
from observability.query_inventory import dashboard_query_templates, metric_names, substitute


def _panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def test_committed_dashboards_are_up_to_date() -> None:
    for uid, document in dashboards_for().items():
        path = GENERATED_DIR / f"{uid}.json"
        assert path.exists(), f"{path} missing: run `python -m observability.generate`"
        assert path.read_text(encoding="utf-8") == render_dashboard(document), (
            f"{path.name} is out of date: run `python -m observability.generate`"
        )
    assert {p.stem for p in GENERATED_DIR.glob("*.json")} == {spec.uid for spec in DASHBOARDS}


def test_generate_check_finds_nothing_stale() -> None:
    assert stale_files() == []
    result = subprocess.run([sys.executable, "-m", "observability.generate", "--check"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_a_renamed_metric_makes_the_committed_dashboards_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = catalog.MetricDef(**{**catalog.PARTS_GOOD.__dict__, "name": "factory_machine_good_parts_total"})
    monkeypatch.setattr(catalog, "PARTS_GOOD", renamed)
    overview = next(spec for spec in DASHBOARDS if spec.uid == factory_overview.UID)
    text = render_dashboard(dashboard_document(overview))
    assert "factory_machine_good_parts_total" in text
    assert text != (GENERATED_DIR / f"{overview.uid}.json").read_text(encoding="utf-8")


def test_every_query_uses_catalog_metrics_and_every_metric_is_shown() -> None:
    known = {metric.sample_name for metric in catalog.ALL_METRICS} | set(promql.SYNTHETIC_SERIES)
    used: set[str] = set()
    for source, template in dashboard_query_templates():
        names = metric_names(substitute(template, {"site": "site-00", "machine": "m"}))
        assert names, source
        assert names <= known, f"{source}: {names - known} is not a catalog metric"
        used |= names
    unused = {metric.sample_name for metric in catalog.ALL_METRICS} - used
    assert not unused, f"exported but on no dashboard: {unused}"


def test_dashboards_have_unique_panel_ids_ref_ids_and_use_the_datasource_variable() -> None:
    for uid, document in dashboards_for().items():
        panels = _panels(document)
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)) and 0 not in ids, uid
        variables = {variable["name"]: variable for variable in document["templating"]["list"]}
        assert variables[DATASOURCE_VARIABLE]["type"] == "datasource"
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{DATASOURCE_VARIABLE}}}"}
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert ref_ids and len(set(ref_ids)) == len(ref_ids) and "" not in ref_ids, panel["title"]
            assert panel["gridPos"]["w"] > 0 and panel["gridPos"]["h"] > 0


def test_machine_detail_shows_every_signal_in_its_catalog_unit() -> None:
    document = dashboard_document(next(s for s in DASHBOARDS if s.uid == machine_detail.UID))
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["machine"]["query"].startswith(f"label_values({catalog.MACHINE_STATE.name}")
    assert not variables["machine"]["multi"]
    by_title = {panel["title"]: panel for panel in _panels(document)}
    for metric in catalog.MACHINE_SIGNALS:
        if metric.signal is None:
            continue
        panel = by_title[machine_detail.signal_title(metric)]
        assert metric.payload_unit in panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] == display_unit(metric)
        expr = panel["targets"][0]["expr"]
        assert metric.name in expr and 'machine="$machine"' in expr
        if metric.display_scale != 1.0:
            assert expr.endswith(f"* {promql.format_number(metric.display_scale)}")
    assert by_title["State"]["type"] == "state-timeline"
    mapping = by_title["State"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {entry["text"] for entry in mapping.values()} == set(catalog.MACHINE_STATES)
    (annotation,) = document["annotations"]["list"]
    assert catalog.ACTIVE_FAULTS.name in annotation["expr"] and annotation["titleFormat"] == "{{fault}}"
    assert by_title["Pressure (bar)"]["fieldConfig"]["defaults"]["noValue"] == machine_detail.NOT_MEASURED


def test_oee_is_availability_times_performance_times_quality() -> None:
    window = "1h"
    oee = factory_overview.oee(window)
    assert oee == " * ".join([factory_overview.availability(window), factory_overview.performance(window),
                              factory_overview.quality(window)])
    assert catalog.IDEAL_CYCLE_TIME.name in factory_overview.performance(window)
    assert catalog.STATE_SECONDS.name in factory_overview.availability(window)
    assert catalog.PARTS_REJECTED.name in factory_overview.quality(window)


def test_archive_panels_only_on_the_local_pipeline_dashboard() -> None:
    cloud = json.dumps(dashboards_for("cloud"))
    local = json.dumps(dashboards_for("local")[pipeline_health.LOCAL_UID])
    for metric in catalog.ARCHIVE_METRICS:
        assert metric.name not in cloud
        assert metric.name in local
    assert pipeline_health.UID in dashboards_for("cloud")
    assert pipeline_health.UID not in dashboards_for("local")


def test_write_dashboards_writes_importable_json(tmp_path: Path) -> None:
    written = write_dashboards(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(f"{spec.uid}.json" for spec in DASHBOARDS)
    for path in written:
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["uid"] == path.stem and document["title"] and document["panels"]


def test_cli_dashboards_command_writes_the_files(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "cli.py", "dashboards", "--out", str(tmp_path / "d")],
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == len(DASHBOARDS)
    assert {p.stem for p in (tmp_path / "d").glob("*.json")} == {spec.uid for spec in DASHBOARDS}


def test_cli_dashboards_into_an_unwritable_place_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "cli.py", "dashboards", "--out", str(blocker / "sub")],
                            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--out" in result.stderr and "Traceback" not in result.stderr
