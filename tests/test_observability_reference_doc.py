"""The README's Dashboards, Alert rules and Metrics sections are generated and up to date."""

from __future__ import annotations

from factory_core import metric_catalog as catalog
from observability import reference_doc
from observability.alert_rules import ALERT_RULES
from observability.dashboards import dashboards_for
from observability.generate import REFERENCE_DOC


def test_committed_reference_doc_is_up_to_date() -> None:
    assert REFERENCE_DOC.read_text(encoding="utf-8") == reference_doc.render(), (
        "docs/observability-reference.md is out of date: run `python -m observability.generate`"
    )


def test_reference_lists_every_metric_panel_and_alert() -> None:
    text = reference_doc.render()
    metrics = text[text.index("## Metrics"):]
    for metric in catalog.ALL_METRICS:
        row = next(line for line in metrics.splitlines() if line.startswith(f"| `{metric.name}` "))
        assert f"| {metric.kind} |" in row
        assert metric.help.replace("|", "\\|") in row
        for label in metric.labels:
            assert label in row
    for document in dashboards_for().values():
        assert f"### {document['title']}" in text
        for panel in document["panels"]:
            assert panel["title"] in text
    for rule in ALERT_RULES:
        assert rule.alert in text
    assert "mm/s" in metrics and "kW" in metrics and "bar" in metrics and "rpm" in metrics
