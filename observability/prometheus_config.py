"""Prometheus configuration for both targets, rendered from one template: file discovery locally
(one JSON file per job that the local stack rewrites as simulators come and go), Cloud Map DNS
discovery (`dns_sd_configs`, type A, one name per site) in the cloud.

Either way a target's identity is its site (or role), never its address: `instance` is the site,
so a simulator restarted on another port (ports set to 0) continues the same series instead of
adding a second one, and alerts name the site.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

SIMULATOR_JOB = "simulator"
ARCHIVE_JOB = "archive"
# The label every simulator series carries (factory_core/metric_catalog.py SIMULATOR_LABELS).
SITE_LABEL = "site"
# Local file discovery: one file per job, beside prometheus.yml (paths are relative to it).
FILE_SD_DIR = "targets"
DNS_REFRESH_INTERVAL = "30s"
# Cloud discovery names are `<site>.<namespace>`: the first DNS label is the site.
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})+")
_MAX_DNS_NAME_LENGTH = 253


def format_duration(seconds: float) -> str:
    """Prometheus duration text: 15 → "15s", 0.5 → "500ms", 600 → "10m"."""
    if seconds <= 0:
        return "0s"
    milliseconds = round(seconds * 1000)
    if milliseconds % 1000:
        return f"{milliseconds}ms"
    whole = milliseconds // 1000
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def file_sd_path(job: str) -> str:
    """The discovery file of `job`, relative to prometheus.yml."""
    return f"{FILE_SD_DIR}/{job}.json"


def file_sd_targets(targets: Mapping[str, str], *, sites: bool) -> str:
    """A file-discovery document: each target's address under its stable name (`instance`), and
    with `sites` the same name as its `site` label (what `up == 0` then names)."""
    groups = []
    for name, address in sorted(targets.items()):
        labels = {"instance": name, **({SITE_LABEL: name} if sites else {})}
        groups.append({"targets": [address], "labels": labels})
    return json.dumps(groups, indent=1) + "\n"


def _file_sd_job(name: str, scrape_interval: str) -> dict[str, Any]:
    return {
        "job_name": name,
        "scrape_interval": scrape_interval,
        # As in the cloud: the exporter's own `site` is the target's, kept as `site`.
        "honor_labels": True,
        "file_sd_configs": [{"files": [file_sd_path(name)]}],
    }


def _static_job(name: str, targets: list[str], scrape_interval: str) -> dict[str, Any]:
    return {
        "job_name": name,
        "scrape_interval": scrape_interval,
        "static_configs": [{"targets": list(targets)}],
    }


def _static_simulator_job(targets: list[str], sites: Sequence[str], interval: str) -> dict[str, Any]:
    """One target per site, labelled with it, as the cloud's relabelling does: `up == 0` (the
    simulator is down) then names its site, and Alertmanager holds back that site's machine alerts."""
    if len(sites) != len(targets) or len(set(sites)) != len(sites):
        raise ValueError("static_target_sites must name one distinct site per static target")
    return {
        "job_name": SIMULATOR_JOB,
        "scrape_interval": interval,
        "honor_labels": True,  # the exporter's own `site` is the same value (see _dns_job)
        "static_configs": [
            {"targets": [target], "labels": {SITE_LABEL: site}}
            for target, site in zip(targets, sites, strict=True)
        ],
    }


def check_dns_names(names: Sequence[str]) -> list[str]:
    """The cloud's discovery names, validated: one `<site>.<namespace>` name per site, no repeats."""
    if isinstance(names, str):
        raise ValueError(
            f"discovery names must be a list with one DNS name per site, not the string {names!r}"
        )
    checked = list(names)
    for name in checked:
        if not isinstance(name, str) or len(name) > _MAX_DNS_NAME_LENGTH or not _DNS_NAME.fullmatch(name):
            raise ValueError(
                f"discovery name {name!r} is not a DNS name of the form <site>.<namespace> "
                "(lower-case letters, digits, hyphens; e.g. site-00.dev.iotfactory.internal)"
            )
    sites = [name.split(".", 1)[0] for name in checked]
    repeated = sorted({site for site in sites if sites.count(site) > 1})
    if repeated:
        raise ValueError(
            f"discovery names repeat the site {repeated[0]!r}: give one <site>.<namespace> name per site"
        )
    return checked


def _dns_job(names: list[str], metrics_port: int, interval: str) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_name": SIMULATOR_JOB,
        "scrape_interval": interval,
        # Every series the simulator exports already carries `site`; with the default
        # (honor_labels: false) Prometheus would move it to `exported_site` because the target
        # sets `site` too. The two are the same value, so the exporter's label is kept and the
        # target's fills in Prometheus's own series (`up`, `scrape_*`).
        "honor_labels": True,
    }
    if not names:  # no simulator (simulatorCount 0): a job without targets; Prometheus rejects `names: []`
        return job
    # One Cloud Map service per site, each holding the A record of the site's one task: Route 53
    # answers a multivalue query with at most 8 records, so one name for the whole fleet would let
    # Prometheus see only a changing subset of the simulators once there are more than 8.
    job["dns_sd_configs"] = [
        {"names": names, "type": "A", "port": metrics_port, "refresh_interval": DNS_REFRESH_INTERVAL}
    ]
    job["relabel_configs"] = [
        # `site` from the name, so `up == 0` (the target is unreachable) names the site.
        {
            "source_labels": ["__meta_dns_name"],
            "regex": r"([^.]+)\..+",
            "target_label": SITE_LABEL,
            "replacement": "$1",
        },
        # The stable name instead of the task's IP: a replaced task continues the same series, and
        # alerts that quote `instance` name the site.
        {
            "source_labels": ["__meta_dns_name"],
            "regex": "(.+)",
            "target_label": "instance",
            "replacement": f"$1:{metrics_port}",
        },
    ]
    return job


def render_prometheus_config(
    *,
    static_targets: list[str] | None = None,
    static_target_sites: Sequence[str] | None = None,
    dns_sd_names: Sequence[str] | None = None,
    file_sd_jobs: Sequence[str] | None = None,
    metrics_port: int = 9100,
    scrape_interval_s: float = 15,
    rule_files: list[str],
    extra_static_jobs: dict[str, list[str]] | None = None,
    alertmanager_targets: Sequence[str] = (),
) -> str:
    """prometheus.yml for the simulators, by exactly one of: static `host:port` targets (labelled
    with `static_target_sites` when given), one DNS name per site (cloud), or file discovery for each
    of `file_sd_jobs` (the local stack: the simulator job and any other, each reading
    `file_sd_path(job)`); plus static jobs. Firing alerts go to the Alertmanagers at
    `alertmanager_targets` (`host:port`), if any."""
    if sum(mode is not None for mode in (static_targets, dns_sd_names, file_sd_jobs)) != 1:
        raise ValueError(
            "give exactly one of static_targets, file_sd_jobs (local stack) or dns_sd_names (cloud)"
        )
    if static_targets is not None and not static_targets:
        raise ValueError("static_targets is empty; list one host:port per simulator metrics port")
    if scrape_interval_s <= 0:
        raise ValueError("scrape_interval_s must be > 0")
    if not 0 < metrics_port < 65536:
        raise ValueError(f"metrics_port {metrics_port} is not a TCP port")

    interval = format_duration(scrape_interval_s)
    # A scrape must finish before the next one starts; Prometheus rejects timeout > interval.
    timeout = format_duration(min(10.0, scrape_interval_s))
    if dns_sd_names is not None:
        jobs = [_dns_job(check_dns_names(dns_sd_names), metrics_port, interval)]
    elif file_sd_jobs is not None:
        if SIMULATOR_JOB not in file_sd_jobs:
            raise ValueError(f"file_sd_jobs must include the {SIMULATOR_JOB!r} job")
        simulator_first = sorted(file_sd_jobs, key=lambda name: name != SIMULATOR_JOB)
        jobs = [_file_sd_job(name, interval) for name in simulator_first]
    elif static_target_sites is not None:
        jobs = [_static_simulator_job(static_targets or [], static_target_sites, interval)]
    else:
        jobs = [_static_job(SIMULATOR_JOB, static_targets or [], interval)]
    for name, targets in sorted((extra_static_jobs or {}).items()):
        if name == SIMULATOR_JOB or name in (file_sd_jobs or ()):
            raise ValueError(f"extra_static_jobs may not redefine the {SIMULATOR_JOB!r} job")
        jobs.append(_static_job(name, targets, interval))

    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": timeout,
            "evaluation_interval": interval,
            "external_labels": {"monitor": "iotfactory"},
        },
        "rule_files": list(rule_files),
        "scrape_configs": jobs,
    }
    if isinstance(alertmanager_targets, str):
        raise ValueError("alertmanager_targets must be a list of host:port, not a string")
    if alertmanager_targets:
        targets = list(alertmanager_targets)
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": targets}]}]}
    header = "# Generated by observability/prometheus_config.py; do not edit by hand.\n"
    return header + yaml.safe_dump(config, sort_keys=False)
