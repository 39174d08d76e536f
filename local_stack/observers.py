"""The stack's observers — Prometheus, Alertmanager and Grafana: the config bundle they share, and
which of them run (Grafana installed, in Docker, or skipped)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factory_core.fleet import site_id
from local_stack import alertmanager, grafana, prometheus
from local_stack.paths import ALERTMANAGER, PROMETHEUS, RULE_RUNNER, StatePaths, simulator_service
from local_stack.ports import HOST
from local_stack.services import Service, ServiceBuilder
from local_stack.stack_config import StackConfig


def scrape_targets(ports: dict[str, int], simulators: int) -> prometheus.ScrapeTargets:
    """Each of the first `simulators` under its site, the rule runner under its role; never their ports."""
    return prometheus.ScrapeTargets(
        simulators={site_id(i): f"{HOST}:{ports[simulator_service(i)]}" for i in range(simulators)},
        archive=f"{HOST}:{ports[RULE_RUNNER]}",
    )


def write_config(stack: StackConfig, paths: StatePaths, ports: dict[str, int], simulators: int) -> Path:
    """Prometheus's, Alertmanager's and Grafana's files for the current fleet; returns prometheus.yml."""
    return prometheus.write_config(
        paths.root,
        scrape_targets(ports, simulators),
        stack.local.scrape_interval_s,
        prometheus.url(ports[PROMETHEUS]),
        alertmanager_url=alertmanager.url(ports[ALERTMANAGER]),
        alert_channels=alertmanager.channels(stack.local.alerting, paths.alertmanager_dir),
    )


@dataclass(frozen=True)
class Observers:
    services: list[Service]
    grafana_skipped: str | None  # why Grafana does not run
    grafana_container: str | None  # the container it runs in, when it runs in Docker


def build(
    builder: ServiceBuilder,
    prometheus_config: Path,
    runtime: grafana.GrafanaRuntime | None,
    say: Callable[[str], None],
) -> Observers:
    """Prometheus and Alertmanager always; Grafana when installed or Docker answers (`runtime`)."""
    services = [
        builder.prometheus(prometheus_config),
        builder.alertmanager(alertmanager.config_file(builder.paths.alertmanager_dir)),
    ]
    if runtime is None:
        say(grafana.SKIPPED_HINT)
        return Observers(services, grafana.SKIPPED_SHORT, None)
    services.append(builder.grafana(runtime))
    container = None
    if isinstance(runtime, grafana.GrafanaInDocker):
        container = grafana.container_name(builder.paths.grafana_dir)
        say(f"grafana-server is not on PATH: running Grafana in Docker as container {container}")
    return Observers(services, None, container)
