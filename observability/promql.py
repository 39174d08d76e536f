"""PromQL building blocks that take catalog `MetricDef`s, so no query spells a metric name by hand."""

from __future__ import annotations

from factory_core.metric_catalog import MetricDef

# Prometheus's own per-target series (https://prometheus.io/docs/concepts/jobs_instances/).
UP = "up"
SCRAPE_DURATION = "scrape_duration_seconds"
SCRAPE_SAMPLES = "scrape_samples_scraped"
SYNTHETIC_SERIES = (UP, SCRAPE_DURATION, SCRAPE_SAMPLES)


def _matchers(matchers: dict[str, str]) -> str:
    """`{a="x", b=~"y"}` from {"a": "x", "b": "=~y"}: a value may start with its operator."""
    parts = []
    for label, value in matchers.items():
        operator = "="
        for candidate in ("=~", "!~", "!="):
            if value.startswith(candidate):
                operator, value = candidate, value[len(candidate):]
                break
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'{label}{operator}"{escaped}"')
    return "{" + ", ".join(parts) + "}" if parts else ""


def selector(metric: MetricDef | str, /, **matchers: str) -> str:
    """A vector selector; histograms select their `_bucket` series."""
    name = metric if isinstance(metric, str) else metric.sample_name
    label_names = () if isinstance(metric, str) else metric.labels
    for label in matchers:
        if label_names and label not in label_names and label not in ("job", "instance", "le"):
            raise ValueError(f"{name} has no label {label!r}; it has {label_names}")
    return name + _matchers(matchers)


def scaled(expr: str, metric: MetricDef) -> str:
    """Multiply by the catalog's display scale (base unit → the payload's engineering unit)."""
    if metric.display_scale == 1.0:
        return expr
    return f"{expr} * {format_number(metric.display_scale)}"


def rate(metric: MetricDef, window: str, **matchers: str) -> str:
    if metric.kind not in ("counter", "histogram"):
        raise ValueError(f"rate() needs a counter or histogram, {metric.name} is a {metric.kind}")
    return f"rate({selector(metric, **matchers)}[{window}])"


def increase(metric: MetricDef, window: str, **matchers: str) -> str:
    if metric.kind != "counter":
        raise ValueError(f"increase() needs a counter, {metric.name} is a {metric.kind}")
    return f"increase({selector(metric, **matchers)}[{window}])"


def quantile(q: float, metric: MetricDef, window: str, by: tuple[str, ...] = (), **matchers: str) -> str:
    if metric.kind != "histogram":
        raise ValueError(f"histogram_quantile() needs a histogram, {metric.name} is a {metric.kind}")
    grouping = ", ".join(("le", *by))
    return f"histogram_quantile({q}, sum by ({grouping}) ({rate(metric, window, **matchers)}))"


def aggregate(operator: str, by: tuple[str, ...], expr: str) -> str:
    return f"{operator} by ({', '.join(by)}) ({expr})" if by else f"{operator}({expr})"


def sum_by(by: tuple[str, ...], expr: str) -> str:
    return aggregate("sum", by, expr)


def or_zero(expr: str, like: str) -> str:
    """`expr`, or 0 with the labels of `like` where `expr` has no series yet (e.g. no failure so far)."""
    return f"({expr} or 0 * {like})"


def format_number(value: float) -> str:
    """Shortest exact text for a threshold or factor: 85.0 → 85, 0.001 → 0.001, 1e-05 → 0.00001."""
    if float(value).is_integer():
        return str(int(value))
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text
