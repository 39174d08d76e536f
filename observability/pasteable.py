"""The dashboards' queries for people without Grafana: variables filled in, and links to Prometheus.

Each panel's PromQL is taken from the generated dashboards (the same source Grafana gets) and its
Grafana variables replaced by the values Grafana would start with: `$site` = All (`.*`), the time
range `$__range` = the dashboards' default hour, `$__rate_interval` = 1m (four 15 s scrapes), and
`$machine` = the first machine of the default fleet that has the panel's signal. The result pastes
into Prometheus's own graph page; `graph_url` makes the link (`/graph?g0.expr=...`, which
Prometheus 2.42 serves, and which Debian's build redirects to its classic page with the query kept).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from observability.alert_rules import Target
from observability.query_inventory import machine_types_for, substitute

RANGE_INPUT = "1h"  # the dashboards' default time range (now-1h .. now)
DEFAULTS = {"site": ".*", "__range": RANGE_INPUT, "__rate_interval": "1m", "__interval": "15s"}
DEFAULT_MACHINE = "site-00-line-01-{type}-01"  # the first machine of a type in the default fleet
LOCAL_PROMETHEUS_URL = "http://127.0.0.1:9490"  # the local stack's default prometheusPort
INSTANT_PANELS = frozenset({"stat", "bargauge", "table"})
# What `outputs --stack local` links when Grafana does not run: (dashboard uid, panel title).
MAIN_PANELS = (
    ("iotfactory-factory-overview", "Machines by state"),
    ("iotfactory-factory-overview", "OEE per line (rolling 15 min)"),
    ("iotfactory-factory-overview", "Throughput per line (parts per minute)"),
    ("iotfactory-factory-overview", "Active faults by kind (ground truth)"),
    ("iotfactory-pipeline-health-local", "Publish rate"),
    ("iotfactory-pipeline-health-local", "Archived vs published"),
    ("iotfactory-machine-detail", "Temperature (°C)"),
)


@dataclass(frozen=True)
class PasteableQuery:
    dashboard_uid: str
    panel: str
    legend: str
    template: str  # as in the dashboard, with Grafana's variables
    expr: str  # variables substituted by their defaults
    instant: bool  # the panel shows one value per series (stat, bar gauge, table)

    def graph_url(self, prometheus_url: str = LOCAL_PROMETHEUS_URL) -> str:
        return graph_url(prometheus_url, [self.expr], instant=self.instant)


def graph_url(prometheus_url: str, exprs: list[str], *, instant: bool = False) -> str:
    """A link opening `exprs` in Prometheus's graph page, one graph each (`g0`, `g1`, ...); the
    table tab for instant values, else the graph tab over the dashboards' default hour."""
    parameters: dict[str, str] = {}
    for index, expr in enumerate(exprs):
        parameters |= {
            f"g{index}.expr": expr,
            f"g{index}.tab": "1" if instant else "0",
            f"g{index}.range_input": RANGE_INPUT,
        }
    query = urllib.parse.urlencode(parameters, quote_via=urllib.parse.quote)
    return f"{prometheus_url.rstrip('/')}/graph?{query}"


def default_variables(template: str) -> dict[str, str]:
    """Grafana's starting values for a query's variables ($machine: a machine that has its signal)."""
    types = machine_types_for(template)
    machine = DEFAULT_MACHINE.format(type=types[0]) if types else DEFAULT_MACHINE.format(type="cnc_mill")
    return {**DEFAULTS, "machine": machine}


def _panels(panel_list: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panel_list:
        yield panel
        yield from _panels(panel.get("panels") or [])


def panel_queries(target: Target | None = "local") -> Iterator[PasteableQuery]:
    """Every panel query of the dashboards for `target`, ready to paste into Prometheus."""
    from observability.dashboards import dashboards_for

    for uid, document in dashboards_for(target).items():
        for panel in _panels(document["panels"]):
            for item in panel.get("targets") or []:
                if "expr" not in item:
                    continue
                template = item["expr"]
                yield PasteableQuery(
                    dashboard_uid=uid,
                    panel=panel.get("title", ""),
                    legend=item.get("legendFormat", ""),
                    template=template,
                    expr=substitute(template, default_variables(template)),
                    instant=panel.get("type") in INSTANT_PANELS or bool(item.get("instant")),
                )


def main_panel_links(prometheus_url: str) -> list[tuple[str, str]]:
    """(panel title, link showing all its queries) of the main panels, for `outputs` without Grafana."""
    found: dict[tuple[str, str], list[PasteableQuery]] = {}
    for query in panel_queries("local"):
        found.setdefault((query.dashboard_uid, query.panel), []).append(query)
    missing = [f"{uid} / {title}" for uid, title in MAIN_PANELS if (uid, title) not in found]
    if missing:
        raise KeyError(f"observability.pasteable.MAIN_PANELS names panels that do not exist: {missing}")
    links = []
    for uid, title in MAIN_PANELS:
        queries = found[(uid, title)]
        exprs = [query.expr for query in queries]
        links.append((title, graph_url(prometheus_url, exprs, instant=queries[0].instant)))
    return links
