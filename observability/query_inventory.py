"""Every PromQL query the project ships: dashboard panels, annotations, variables and alert rules.

Tests run each one against a real Prometheus (with dashboard variables replaced by real values)
and fail when one errors or returns no series: the "No data" panel cannot ship.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from factory_core import metric_catalog as catalog
from observability.alert_rules import Target, rules_for
from observability.dashboards import dashboards_for
from simulator.model.profiles import PROFILES

# Grafana's built-in interval variables, with values that suit a short test run.
DEFAULT_BUILTINS = {"__rate_interval": "1m", "__range": "5m", "__interval": "15s"}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
# A filter on a quantity, e.g. `sum by (fault) (x) > 0`: the quantity alone must have series.
_CONDITION = re.compile(r"^(?P<quantity>.+?)\s+(?P<comparison>>|<|==|!=|>=|<=)\s+(?P<threshold>-?[\d.]+)$")
_MACHINE_VARIABLE = "machine"


@dataclass(frozen=True)
class CheckedQuery:
    source: str  # where it comes from, for failure messages
    expr: str  # variables substituted
    must_have_series: bool  # False for complete alert conditions (empty while healthy)
    machine_types: tuple[str, ...] | None  # uses $machine: types whose machines must return data


_SET_OPERATORS = frozenset(("and", "or", "unless", "bool", "offset"))


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
    return {name for name in names if name not in _SET_OPERATORS}


def split_condition(expr: str) -> tuple[str, str | None]:
    """(quantity, "op threshold") for `quantity op number`, else (expr, None)."""
    match = _CONDITION.match(expr.strip())
    if match is None or match["quantity"].count("(") != match["quantity"].count(")"):
        return expr, None
    return match["quantity"], f"{match['comparison']} {match['threshold']}"


def substitute(template: str, variables: Mapping[str, str]) -> str:
    """Replace `$name` / `${name}` as Grafana does; an unknown variable is an error."""
    values = {**DEFAULT_BUILTINS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(f"no value for dashboard variable ${name} in {template!r}")
        return values[name]

    return _VARIABLE.sub(replace, template)


def machine_types_for(expr: str) -> tuple[str, ...] | None:
    """Types whose machines must answer a query about one machine (type-specific signals narrow it)."""
    if f"${_MACHINE_VARIABLE}" not in expr and f"${{{_MACHINE_VARIABLE}}}" not in expr:
        return None
    types = {machine_type.value for machine_type in PROFILES}
    for metric in catalog.MACHINE_SIGNALS:
        if metric.signal is not None and _mentions(expr, metric):
            types &= {t.value for t, profile in PROFILES.items() if metric.signal in profile.signals}
    if _mentions(expr, catalog.IDEAL_CYCLE_TIME):
        # Exported only for machines that make parts (an ideal cycle time of 0 means none).
        types &= {t.value for t, profile in PROFILES.items() if profile.ideal_cycle_time_s > 0}
    return tuple(sorted(types))


def _mentions(expr: str, metric: catalog.MetricDef) -> bool:
    return re.search(rf"\b{metric.sample_name}\b", expr) is not None


def _panel_queries(uid: str, panel_list: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panel_list:
        for target in panel.get("targets") or []:
            if "expr" in target:
                source = f"dashboard {uid} / panel {panel.get('title')!r} / query {target.get('refId')}"
                yield source, target["expr"]
        yield from _panel_queries(uid, panel.get("panels") or [])


def dashboard_query_templates(target: Target | None = None) -> Iterator[tuple[str, str]]:
    """(source, PromQL with $variables) of every panel, annotation and variable query."""
    for uid, document in dashboards_for(target).items():
        yield from _panel_queries(uid, document["panels"])
        for annotation in document.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                yield f"dashboard {uid} / annotation {annotation['name']!r}", annotation["expr"]
        for variable in document.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            match = _LABEL_VALUES.match(str(variable["query"]))
            if match is None:
                raise ValueError(f"dashboard {uid} variable {variable['name']}: not a label_values() query")
            # What Grafana asks Prometheus for label_values(selector, label).
            yield (f"dashboard {uid} / variable ${variable['name']}",
                   f"group by ({match['label']}) ({match['selector']})")


def iter_queries(
    variables: Mapping[str, str], *, target: Target | None = "local"
) -> Iterator[CheckedQuery]:
    """Every dashboard query and alert expression, with `variables` (e.g. site, machine) filled in.

    Filters (`x > 0`) yield their quantity, which must return series; complete alert expressions
    are also yielded, to prove they evaluate (they may be empty while all is well).
    """
    for source, template in dashboard_query_templates(target):
        quantity, comparison = split_condition(template)
        if comparison is not None:
            source += f" (quantity of `{comparison}`)"
        yield CheckedQuery(source, substitute(quantity, variables), True, machine_types_for(template))
    for rule in rules_for(target):
        name = " ".join([rule.alert, *(value for _, value in rule.variant_labels)])
        for index, condition in enumerate(rule.conditions):
            part = "quantity" if index == 0 else "guard quantity"
            yield CheckedQuery(f"alert {name} / {part}", condition.expr_metric_part, True, None)
        yield CheckedQuery(f"alert {name} / expression", rule.expr, False, None)
