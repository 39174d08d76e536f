"""Pipeline health dashboard: publishing, PUBACK latency, connections, scheduler lag, scrapes, archive."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus

from factory_core import metric_catalog as catalog
from observability import promql
from observability.alert_rules import ARCHIVE_LAG_LIMIT_S
from observability.dashboards import panels
from observability.dashboards.panels import RATE_WINDOW, query
from observability.prometheus_config import ARCHIVE_JOB, SIMULATOR_JOB

UID = "iotfactory-pipeline-health"
LOCAL_UID = "iotfactory-pipeline-health-local"
TITLE = "Pipeline health"
SITE = {"site": "=~$site"}
BY_SITE = ("site",)
MESSAGES_PER_SECOND = "suffix: msg/s"
QUANTILES = (0.5, 0.9, 0.99)


def _quantiles(metric: catalog.MetricDef) -> list[prometheus.Dataquery]:
    return [
        query(promql.quantile(q, metric, RATE_WINDOW, by=BY_SITE, **SITE), f"p{round(q * 100)} {{{{site}}}}")
        for q in QUANTILES
    ]


def _or_zero_per_site(expr: str) -> str:
    """`expr`, or 0 for each site that has no such series yet (a counter appears on its first event)."""
    published = promql.sum_by(BY_SITE, promql.rate(catalog.MESSAGES_PUBLISHED, RATE_WINDOW, **SITE))
    return f"{expr} or on (site) 0 * {published}"


def build(*, include_archive: bool) -> builders.Dashboard:
    jobs = [SIMULATOR_JOB, ARCHIVE_JOB] if include_archive else [SIMULATOR_JOB]
    job_matcher = {"job": "=~" + "|".join(jobs)}
    published = promql.sum_by(
        (*BY_SITE, "kind"), promql.rate(catalog.MESSAGES_PUBLISHED, RATE_WINDOW, **SITE)
    )
    failures = promql.sum_by((*BY_SITE, "reason"), promql.rate(catalog.PUBLISH_FAILURES, RATE_WINDOW, **SITE))
    reconnects = promql.sum_by(BY_SITE, promql.increase(catalog.RECONNECTS, RATE_WINDOW, **SITE))
    simulated_speed = promql.sum_by(
        BY_SITE, f"deriv({promql.selector(catalog.SIMULATED_TIME, **SITE)}[{RATE_WINDOW}])"
    )

    def per_site(metric: catalog.MetricDef) -> str:
        return promql.sum_by(BY_SITE, promql.selector(metric, **SITE))

    dashboard = (
        panels.dashboard(
            TITLE + (" (local stack)" if include_archive else ""),
            LOCAL_UID if include_archive else UID,
            "Is the telemetry getting through? Publishing, acknowledgements, connections, "
            "scheduling and scrapes" + (", and the local archive." if include_archive else "."),
        )
        .with_variable(panels.label_variable("site", catalog.MACHINES_SIMULATED, label="Site", multi=True))
        .with_row(panels.row("Publishing"))
        .with_panel(panels.graph(
            "Publish rate", [query(published, "{{site}} {{kind}}")], unit=MESSAGES_PER_SECOND, span=8,
            description=catalog.MESSAGES_PUBLISHED.help))
        .with_panel(panels.graph(
            "Publish failures", [query(_or_zero_per_site(failures), "{{site}} {{reason}}")],
            unit=MESSAGES_PER_SECOND, span=8, description=catalog.PUBLISH_FAILURES.help))
        .with_panel(panels.graph(
            "PUBACK latency", _quantiles(catalog.PUBACK_LATENCY), unit=catalog.PUBACK_LATENCY.grafana_unit,
            span=8, description=catalog.PUBACK_LATENCY.help + " Empty at QoS 0."))
        .with_panel(panels.graph(
            "Connections", [query(per_site(catalog.CONNECTIONS_UP), "up {{site}}"),
                            query(per_site(catalog.CONNECTIONS_PLANNED), "planned {{site}}")],
            unit="short", span=8, min_value=0,
            description=f"{catalog.CONNECTIONS_UP.help} / {catalog.CONNECTIONS_PLANNED.help}"))
        .with_panel(panels.graph(
            "Reconnects", [query(reconnects, "{{site}}")], unit="short", span=8, min_value=0,
            description=catalog.RECONNECTS.help))
        .with_panel(panels.graph(
            "In flight and queued", [query(per_site(catalog.INFLIGHT), "in flight {{site}}"),
                                     query(per_site(catalog.QUEUED), "queued {{site}}")],
            unit="short", span=8, min_value=0,
            description=f"{catalog.INFLIGHT.help} {catalog.QUEUED.help}"))
        .with_panel(panels.graph(
            "Scheduler lag", _quantiles(catalog.SCHEDULER_LAG), unit=catalog.SCHEDULER_LAG.grafana_unit,
            span=8, description=catalog.SCHEDULER_LAG.help))
        .with_panel(panels.graph(
            "Simulated seconds per second", [query(simulated_speed, "{{site}}")], unit="short", span=8,
            description="How fast the simulated clock runs (--speed), from " + catalog.SIMULATED_TIME.name))
        .with_panel(panels.graph(
            "Machines per process", [query(per_site(catalog.MACHINES_SIMULATED), "{{site}}")], unit="short",
            span=8, min_value=0, description=catalog.MACHINES_SIMULATED.help))
        .with_panel(panels.state_timeline(
            "Publishing fast path", query(per_site(catalog.FASTPATH_ENABLED), "{{site}}"),
            value_texts={0: ("plain paho", "orange"), 1: ("fast path", "green")}, span=24, height=4,
            description=catalog.FASTPATH_ENABLED.help
            + " Plain paho delivers the same messages with more CPU per message."))
        .with_row(panels.row("Scrape health"))
        .with_panel(panels.state_timeline(
            "Targets up", query(promql.selector(promql.UP, **job_matcher), "{{job}} {{instance}}"),
            value_texts={0: ("down", "red"), 1: ("up", "green")}, span=8, height=8,
            description="Whether Prometheus's last scrape of each target succeeded (`up`)."))
        .with_panel(panels.graph(
            "Scrape duration", [query(promql.selector(promql.SCRAPE_DURATION, **job_matcher),
                                      "{{job}} {{instance}}")],
            unit="s", span=8, description="How long each scrape took; a scrape fails past the timeout."))
        .with_panel(panels.graph(
            "Samples per scrape", [query(promql.selector(promql.SCRAPE_SAMPLES, **job_matcher),
                                         "{{job}} {{instance}}")],
            unit="short", span=8,
            description="Series exposed by each target; it drops when the per-machine cap is exceeded."))
    )
    if not include_archive:
        return dashboard

    archived = promql.sum_by(("kind",), promql.rate(catalog.ARCHIVED, RATE_WINDOW))
    all_published = promql.sum_by((), promql.rate(catalog.MESSAGES_PUBLISHED, RATE_WINDOW))
    quarantined = promql.sum_by(("reason",), promql.rate(catalog.QUARANTINED, RATE_WINDOW))
    return (
        dashboard
        .with_row(panels.row("Archive (local stack)"))
        .with_panel(panels.graph(
            "Archived vs published", [query(archived, "archived {{kind}}"),
                                      query(all_published, "published (all sites)")],
            unit=MESSAGES_PER_SECOND, span=12,
            description=f"{catalog.ARCHIVED.help} Compare with what the simulators published."))
        .with_panel(panels.graph(
            "Archive lag", [query(promql.selector(catalog.ARCHIVE_LAG), "lag")],
            unit=catalog.ARCHIVE_LAG.grafana_unit, span=12,
            description=f"{catalog.ARCHIVE_LAG.help} The ArchiveLagging alert fires above "
                        f"{ARCHIVE_LAG_LIMIT_S:g} s."))
        .with_panel(panels.graph(
            "Quarantined", [query(f"{quarantined} or on () vector(0)", "{{reason}}")],
            unit=MESSAGES_PER_SECOND, span=12, description=catalog.QUARANTINED.help))
        .with_panel(panels.graph(
            "Batches written and refused",
            [query(promql.sum_by((), promql.rate(catalog.ARCHIVE_BATCHES, RATE_WINDOW)), "written"),
             query(promql.sum_by((), promql.rate(catalog.ARCHIVE_WRITE_ERRORS, RATE_WINDOW)), "refused")],
            unit="suffix: /s", span=12,
            description=f"{catalog.ARCHIVE_BATCHES.help} {catalog.ARCHIVE_WRITE_ERRORS.help}"))
    )
