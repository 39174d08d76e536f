"""The project's Grafana dashboards, generated as code from the metric catalog.

`write_dashboards` writes them for import into any Grafana (`python cli.py dashboards --out DIR`);
the committed copies under `generated/` are what the config bundles provision, and a test proves
they are up to date (`python -m observability.generate` rewrites them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from factory_core.errors import UsageError
from observability.alert_rules import Target
from observability.dashboards import factory_overview, machine_detail, pipeline_health

GENERATED_DIR = Path(__file__).resolve().parent / "generated"


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    build: Callable[[], builders.Dashboard]
    targets: frozenset[Target]


DASHBOARDS: tuple[DashboardSpec, ...] = (
    DashboardSpec(factory_overview.UID, factory_overview.build, frozenset(("local", "cloud"))),
    DashboardSpec(machine_detail.UID, machine_detail.build, frozenset(("local", "cloud"))),
    # The cloud archive is the IoT topic rule (CloudWatch metrics): no archive row there.
    DashboardSpec(pipeline_health.UID, lambda: pipeline_health.build(include_archive=False),
                  frozenset(("cloud",))),
    DashboardSpec(pipeline_health.LOCAL_UID, lambda: pipeline_health.build(include_archive=True),
                  frozenset(("local",))),
)


def _number_panels(panel_list: list[dict[str, Any]], next_id: int = 1) -> int:
    """Grafana needs a unique id per panel (the SDK leaves 0); number them in layout order."""
    for panel in panel_list:
        panel["id"] = next_id
        next_id += 1
        next_id = _number_panels(panel.get("panels", []), next_id)
    return next_id


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    _number_panels(document["panels"])
    for annotation in document.get("annotations", {}).get("list", []):
        if annotation.get("name") == machine_detail.FAULT_ANNOTATION:
            annotation.update(machine_detail.FAULT_ANNOTATION_FORMAT)
    return document


def dashboard_document(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard's JSON model as a dict."""
    encoded = JSONEncoder(sort_keys=True).encode(spec.build().build())
    return _finish(json.loads(encoded))


def render_dashboard(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def dashboards_for(target: Target | None = None) -> dict[str, dict[str, Any]]:
    """uid → JSON model of every dashboard for a target (None: all of them)."""
    return {
        spec.uid: dashboard_document(spec)
        for spec in DASHBOARDS
        if target is None or target in spec.targets
    }


def write_dashboards(out_dir: Path) -> list[Path]:
    """Write every dashboard as `<uid>.json` into `out_dir` (created if missing)."""
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for uid, document in dashboards_for().items():
            path = out_dir / f"{uid}.json"
            path.write_text(render_dashboard(document), encoding="utf-8")
            written.append(path)
    except OSError as exc:
        where = exc.filename or out_dir
        raise UsageError(f"cannot write {where}: {exc.strerror}; choose a writable --out folder") from None
    return written
