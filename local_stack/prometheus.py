"""Debian's Prometheus on the local stack: config from the cloud's template, reload, and HTTP queries."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from local_stack.paths import RULE_RUNNER
from local_stack.ports import HOST
from local_stack.processes import ManagedProcess, require_binary
from local_stack.readiness import wait_until
from observability.prometheus_config import ARCHIVE_JOB, SIMULATOR_JOB

# Prometheus's discovery hands changes on every 5 s at most; this leaves room for a busy machine.
TARGETS_TIMEOUT_S = 15.0

if TYPE_CHECKING:  # the bundle's modules are imported when it is written (they are slow to import)
    from observability.alertmanager_config import Channels


@dataclass(frozen=True)
class ScrapeTargets:
    """What Prometheus should scrape, each under its stable name (`instance`), never its port."""

    simulators: Mapping[str, str] = field(default_factory=dict)  # site -> host:port of its exporter
    archive: str | None = None  # host:port of the rule runner's exporter

    def archive_targets(self) -> dict[str, str]:
        return {RULE_RUNNER: self.archive} if self.archive else {}


def write_config(
    state_root: Path,
    targets: ScrapeTargets,
    scrape_interval_s: float,
    prometheus_url: str,
    *,
    alertmanager_url: str | None = None,
    alert_channels: Channels | None = None,
) -> Path:
    """The cloud's config bundle, local flavour, under the state folder; returns prometheus.yml.

    Rewritten on every start and every scale; each file is replaced atomically, so a reload never
    reads half a file. The Grafana half is written too: it costs nothing and is ready if Grafana is.
    With `alertmanager_url`, Prometheus sends its alerts there and Alertmanager's config (routing
    to `alert_channels`) is written too.
    """
    # Imported here: the dashboards behind it take a while to import, and `cli.py` does not need them.
    from observability import config_bundle

    bundle = config_bundle.local_bundle(
        simulator_targets=targets.simulators,
        archive_targets=targets.archive_targets(),
        prometheus_url=prometheus_url,
        scrape_interval_s=scrape_interval_s,
        grafana_dir=state_root / "grafana",
        alertmanager_url=alertmanager_url,
        alert_channels=alert_channels,
    )
    config_bundle.write_bundle(bundle, state_root)
    return state_root.joinpath(*PurePosixPath(config_bundle.PROMETHEUS_CONFIG_KEY).parts)


def write_targets(state_root: Path, targets: ScrapeTargets) -> None:
    """Only the discovery files: Prometheus sees the change by itself (no reload) within seconds,
    and a target that left gets staleness markers, so its series end instead of reading as down."""
    from observability import config_bundle

    files = config_bundle.local_targets(targets.simulators, targets.archive_targets())
    config_bundle.write_bundle(files, state_root)


def process(config_file: Path, data_dir: Path, port: int, retention: str, log_path: Path) -> ManagedProcess:
    binary = require_binary("prometheus")
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={HOST}:{port}",
        # The lifecycle API (/-/quit, /-/reload) stays off: any local user could stop Prometheus
        # with it. The supervisor reloads with SIGHUP instead.
        "--log.level=info",
    ]
    return ManagedProcess("prometheus", argv, log_path, stop_timeout_s=20.0)


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def api_get(port: int, path: str, params: dict[str, str] | None = None, timeout_s: float = 5.0) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url(port)}{path}{query}", timeout=timeout_s) as response:
        return json.loads(response.read())


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """Instant query; the result vector (empty when nothing matches)."""
    document = api_get(port, "/api/v1/query", {"query": promql})
    if document.get("status") != "success":
        raise RuntimeError(f"prometheus query {promql!r} failed: {document.get('error')}")
    return list(document["data"]["result"])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"{url(port)}/-/ready", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(port: int, timeout_s: float) -> bool:
    return wait_until(lambda: ready(port), timeout_s, poll_s=0.1)


def active_targets(port: int, job: str = SIMULATOR_JOB) -> set[str]:
    """The `instance` of every target of `job` Prometheus scrapes now (for simulators: their sites)."""
    document = api_get(port, "/api/v1/targets", {"state": "active"})
    return {
        target["labels"].get("instance", target.get("scrapeUrl", ""))
        for target in document["data"]["activeTargets"]
        if target["labels"].get("job") == job
    }


def scrapes_exactly(port: int, expected: Collection[str], job: str = SIMULATOR_JOB) -> bool:
    try:
        return active_targets(port, job) == set(expected)
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def wait_for_targets(
    port: int, expected: Collection[str], timeout_s: float, job: str = SIMULATOR_JOB
) -> bool:
    """After the targets changed: true once Prometheus scrapes exactly the `expected` instances of `job`
    (its discovery passes changes on every 5 s at most)."""
    return wait_until(lambda: scrapes_exactly(port, expected, job), timeout_s, poll_s=0.1)


def apply_targets(
    state_root: Path, targets: ScrapeTargets, port: int | None, timeout_s: float = TARGETS_TIMEOUT_S
) -> bool:
    """Write the discovery files and, with `port` (Prometheus runs), wait until it scrapes exactly
    those targets; false if it did not within `timeout_s`."""
    write_targets(state_root, targets)
    if port is None:
        return True

    def applied() -> bool:
        return scrapes_exactly(port, targets.simulators, SIMULATOR_JOB) and scrapes_exactly(
            port, targets.archive_targets(), ARCHIVE_JOB
        )

    return wait_until(applied, timeout_s, poll_s=0.1)
