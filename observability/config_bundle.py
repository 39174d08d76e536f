"""Everything Prometheus and Grafana read, as {relative key: file content}, for the cloud and locally.

Cloud: the Pulumi program uploads the bundle to the config bucket; the monitoring task's init
container copies `prometheus/` to PROMETHEUS_CONFIG_DIR, `grafana/` to GRAFANA_CONFIG_DIR and
`alertmanager/` to ALERTMANAGER_CONFIG_DIR on shared volumes. Local: the local stack writes the
same keys under its state folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from observability import grafana_provisioning
from observability.alert_rules import Target, render_rules
from observability.alertmanager_config import (
    SMTP_USERNAME_PLACEHOLDER,
    Channels,
    SmtpChannel,
    SnsChannel,
    render_alertmanager_config,
)
from observability.dashboards import dashboards_for, render_dashboard
from observability.prometheus_config import (
    ARCHIVE_JOB,
    SIMULATOR_JOB,
    file_sd_path,
    file_sd_targets,
    render_prometheus_config,
)

PROMETHEUS_CONFIG_DIR = "/etc/prometheus-config"
GRAFANA_CONFIG_DIR = "/etc/grafana-config"
ALERTMANAGER_CONFIG_DIR = "/etc/alertmanager-config"
PROMETHEUS_PREFIX = "prometheus/"
GRAFANA_PREFIX = "grafana/"
ALERTMANAGER_PREFIX = "alertmanager/"
ALERTMANAGER_CONFIG_KEY = "alertmanager/alertmanager.yml"
PROMETHEUS_CONFIG_KEY = "prometheus/prometheus.yml"
RULES_KEY = "prometheus/rules/alerts.yml"
# Relative to prometheus.yml: Prometheus resolves rule_files against the config file's folder, so
# the same file works wherever the bundle is copied.
RULES_PATH_FROM_CONFIG = "rules/alerts.yml"
DATASOURCE_KEY = "grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDER_KEY = "grafana/provisioning/dashboards/dashboards.yml"
CONTACT_POINTS_KEY = "grafana/provisioning/alerting/contact-points.yml"
POLICIES_KEY = "grafana/provisioning/alerting/policies.yml"
GRAFANA_RULES_KEY = "grafana/provisioning/alerting/rules.yml"
DASHBOARDS_PREFIX = "grafana/dashboards/"

# The cloud's Prometheus sits behind the load balancer under /prometheus/; Grafana shares its task
# (same network namespace), so it reaches Prometheus on localhost with that prefix.
CLOUD_PROMETHEUS_PORT = 9090
CLOUD_ROUTE_PREFIX = "/prometheus/"
CLOUD_DATASOURCE_URL = f"http://localhost:{CLOUD_PROMETHEUS_PORT}{CLOUD_ROUTE_PREFIX.rstrip('/')}"
# Container settings the monitoring task needs to read the bundle (the program sets them).
CLOUD_PROMETHEUS_ARGS = (
    f"--config.file={PROMETHEUS_CONFIG_DIR}/prometheus.yml",
    f"--web.route-prefix={CLOUD_ROUTE_PREFIX}",
    f"--web.listen-address=0.0.0.0:{CLOUD_PROMETHEUS_PORT}",
)
# Alertmanager runs in the same task: Prometheus and Grafana reach it on localhost.
CLOUD_ALERTMANAGER_PORT = 9093
CLOUD_ALERTMANAGER_TARGET = f"localhost:{CLOUD_ALERTMANAGER_PORT}"
# What the Alertmanager container fills in at start, from its environment (ECS `secrets` and the
# topic the program creates), before it starts Alertmanager on the result in CLOUD_ALERTMANAGER_RUN_DIR.
SNS_TOPIC_PLACEHOLDER = "@SNS_TOPIC_ARN@"
CLOUD_ALERTMANAGER_PLACEHOLDERS = {
    SMTP_USERNAME_PLACEHOLDER: "SMTP_USERNAME",
    SNS_TOPIC_PLACEHOLDER: "SNS_TOPIC_ARN",
}
CLOUD_ALERTMANAGER_RUN_DIR = "/run/alertmanager"
CLOUD_SMTP_PASSWORD_FILE = f"{CLOUD_ALERTMANAGER_RUN_DIR}/smtp-password"  # written from SMTP_PASSWORD
CLOUD_GRAFANA_ENVIRONMENT = {"GF_PATHS_PROVISIONING": f"{GRAFANA_CONFIG_DIR}/provisioning"}
# Secrets the task injects (ECS `secrets`): SMTP for Grafana's e-mail contact point, and recipient.
CLOUD_GRAFANA_SECRET_ENV = (
    "GF_SMTP_ENABLED", "GF_SMTP_HOST", "GF_SMTP_USER", "GF_SMTP_PASSWORD", "GF_SMTP_FROM_ADDRESS",
    grafana_provisioning.ALERT_EMAIL_ENV,
)


def container_path(key: str) -> str:
    """Where the init container puts a bundle key: prometheus/x → /etc/prometheus-config/x."""
    destinations = (
        (PROMETHEUS_PREFIX, PROMETHEUS_CONFIG_DIR),
        (GRAFANA_PREFIX, GRAFANA_CONFIG_DIR),
        (ALERTMANAGER_PREFIX, ALERTMANAGER_CONFIG_DIR),
    )
    for prefix, directory in destinations:
        if key.startswith(prefix):
            return str(PurePosixPath(directory) / key[len(prefix):])
    raise ValueError(f"{key!r} is not a bundle key (prometheus/..., grafana/... or alertmanager/...)")


def _dashboards(target: Target) -> dict[str, str]:
    return {
        f"{DASHBOARDS_PREFIX}{uid}.json": render_dashboard(document)
        for uid, document in dashboards_for(target).items()
    }


def cloud_alert_channels(
    *,
    smtp_host: str | None = None,
    smtp_from: str | None = None,
    smtp_to: Sequence[str] = (),
    webhook_url: str | None = None,
    sns_region: str | None = None,
) -> Channels:
    """The cloud's channels: e-mail through the SMTP secret (user name and password filled in by the
    container), the webhook, and the program's SNS topic when `sns_region` is given."""
    email = None
    if smtp_host and smtp_from and smtp_to:
        email = SmtpChannel(
            smarthost=smtp_host,
            from_address=smtp_from,
            to_addresses=tuple(smtp_to),
            username=SMTP_USERNAME_PLACEHOLDER,
            password_file=CLOUD_SMTP_PASSWORD_FILE,
        )
    sns = SnsChannel(SNS_TOPIC_PLACEHOLDER, sns_region) if sns_region else None
    return Channels(email=email, webhook_url=webhook_url, sns=sns)


def cloud_bundle(
    discovery_dns_names: Sequence[str],
    metrics_port: int,
    scrape_interval_s: int,
    alert_channels: Channels | None = None,
) -> dict[str, str]:
    """The monitoring task's config: Cloud Map discovery of the simulators, alert routing.

    `discovery_dns_names` holds one `<site>.<namespace>` name per simulator site (each its own
    Cloud Map service); Prometheus takes the `site` label from the name's first DNS label. The
    bundle depends on the names, so adding or removing a site changes its hash and rolls the
    monitoring service that reads it; so do changed `alert_channels` (Alertmanager's receivers).

    The project's alert rules notify through Alertmanager only: Grafana gets no managed twins of
    them here (they would e-mail every alert a second time). Its e-mail contact point and policy
    stay, for alert rules people create in Grafana themselves.
    """
    return {
        PROMETHEUS_CONFIG_KEY: render_prometheus_config(
            dns_sd_names=discovery_dns_names,
            metrics_port=metrics_port,
            scrape_interval_s=scrape_interval_s,
            rule_files=[RULES_PATH_FROM_CONFIG],
            alertmanager_targets=[CLOUD_ALERTMANAGER_TARGET],
        ),
        RULES_KEY: render_rules(target="cloud"),
        ALERTMANAGER_CONFIG_KEY: render_alertmanager_config(alert_channels or Channels()),
        DATASOURCE_KEY: grafana_provisioning.datasource(
            CLOUD_DATASOURCE_URL, scrape_interval_s, f"http://{CLOUD_ALERTMANAGER_TARGET}"
        ),
        DASHBOARD_PROVIDER_KEY: grafana_provisioning.dashboard_provider(
            container_path(DASHBOARDS_PREFIX.rstrip("/"))
        ),
        CONTACT_POINTS_KEY: grafana_provisioning.contact_points(f"${grafana_provisioning.ALERT_EMAIL_ENV}"),
        POLICIES_KEY: grafana_provisioning.notification_policies(),
        **_dashboards("cloud"),
    }


def local_targets(simulator_targets: Mapping[str, str], archive_targets: Mapping[str, str]) -> dict[str, str]:
    """The local stack's discovery files: site -> address of each simulator, role -> address of the
    archive's exporter. Rewritten alone when simulators come or go; Prometheus notices by itself."""
    return {
        PROMETHEUS_PREFIX + file_sd_path(SIMULATOR_JOB): file_sd_targets(simulator_targets, sites=True),
        PROMETHEUS_PREFIX + file_sd_path(ARCHIVE_JOB): file_sd_targets(archive_targets, sites=False),
    }


def local_bundle(
    *,
    simulator_targets: Mapping[str, str],
    archive_targets: Mapping[str, str],
    prometheus_url: str,
    scrape_interval_s: float,
    grafana_dir: Path,
    alert_email: str | None = None,
    alertmanager_url: str | None = None,
    alert_channels: Channels | None = None,
) -> dict[str, str]:
    """The local stack's config: discovered targets named by site and role, Grafana on `prometheus_url`.

    With `alertmanager_url` (`http://host:port`), Prometheus sends its alerts there, Grafana gets
    it as a datasource, and `alertmanager/alertmanager.yml` routes them to `alert_channels`.

    Without `alert_email` no Grafana alerting is provisioned: no e-mail is attempted, and the
    Prometheus alerts still show in Prometheus and in Grafana's alert list. With it, Grafana needs
    the GF_SMTP_* settings in its environment to send.
    """
    alertmanager_target = urlsplit(alertmanager_url).netloc if alertmanager_url else None
    bundle = {
        PROMETHEUS_CONFIG_KEY: render_prometheus_config(
            file_sd_jobs=[SIMULATOR_JOB, ARCHIVE_JOB],
            scrape_interval_s=scrape_interval_s,
            rule_files=[RULES_PATH_FROM_CONFIG],
            alertmanager_targets=[alertmanager_target] if alertmanager_target else (),
        ),
        **local_targets(simulator_targets, archive_targets),
        RULES_KEY: render_rules(target="local"),
        DATASOURCE_KEY: grafana_provisioning.datasource(prometheus_url, scrape_interval_s, alertmanager_url),
        DASHBOARD_PROVIDER_KEY: grafana_provisioning.dashboard_provider(str(grafana_dir / "dashboards")),
        **_dashboards("local"),
    }
    if alertmanager_url:
        bundle[ALERTMANAGER_CONFIG_KEY] = render_alertmanager_config(alert_channels or Channels())
    if alert_email:
        bundle[CONTACT_POINTS_KEY] = grafana_provisioning.contact_points(alert_email)
        bundle[POLICIES_KEY] = grafana_provisioning.notification_policies()
        bundle[GRAFANA_RULES_KEY] = grafana_provisioning.alert_rules("local")
    return bundle


def write_bundle(bundle: dict[str, str], root: Path) -> list[Path]:
    """Write every key under `root` (prometheus/…, grafana/…); each file replaced atomically."""
    written = []
    for key, content in sorted(bundle.items()):
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"bundle key {key!r} escapes the bundle folder")
        path = root.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(content, encoding="utf-8")
        os.replace(temporary, path)
        written.append(path)
    return written
