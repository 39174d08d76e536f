"""The supervisor's status and outputs documents (its control protocol and state file) as typed results.

The supervisor speaks plain JSON dicts over its control socket and into `state.json`; the verbs
return `factory_core.verb_results` objects. This is the one place that reads those dicts' keys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from factory_core.verb_results import (
    BrokerRefusals,
    LocalOutputs,
    LocalService,
    LocalStatus,
    PipelineStatus,
    RotationOutcome,
    SimulatorCounts,
)

STACK = "local"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _count(value: Any) -> int:
    # Exporter samples arrive as floats (Prometheus' text format); a count is a whole number.
    return round(float(value or 0))


def _time(epoch_s: Any) -> dt.datetime | None:
    if not epoch_s:
        return None
    return dt.datetime.fromtimestamp(float(epoch_s), dt.UTC)


def local_outputs(document: Mapping[str, Any]) -> LocalOutputs:
    return LocalOutputs(
        broker_url=document.get("brokerUrl"),
        broker_endpoint=str(document.get("brokerEndpoint") or ""),
        broker_port=_int(document.get("brokerPort")),
        ca_certificate=str(document.get("caCertificate") or ""),
        prometheus_url=document.get("prometheusUrl"),
        grafana_url=document.get("grafanaUrl"),
        grafana_password_file=document.get("grafanaPasswordFile"),
        grafana_skipped=document.get("grafanaSkipped"),
        archive=document.get("archive"),
        logs_dir=str(document.get("logsDir") or ""),
        state_dir=str(document.get("stateDir") or ""),
        config_file=str(document.get("configFile") or ""),
        simulator_count=_count(document.get("simulatorCount")),
        certificate_generation=document.get("certificateGeneration"),
        metrics_ports={str(name): int(port) for name, port in (document.get("metricsPorts") or {}).items()},
        alertmanager_url=document.get("alertmanagerUrl"),
        silence_command=document.get("silenceCommand"),
        grafana_container=document.get("grafanaContainer"),
    )


def pipeline_status(document: Mapping[str, Any]) -> PipelineStatus:
    lag = document.get("lag_s")
    return PipelineStatus(
        published_total=_count(document.get("published_total")),
        archived_total=_count(document.get("archived_total")),
        quarantined_total=_count(document.get("quarantined_total")),
        publish_failures_total=_count(document.get("publish_failures_total")),
        published_per_s=float(document.get("published_per_s") or 0.0),
        archived_per_s=float(document.get("archived_per_s") or 0.0),
        lag_s=None if lag is None else float(lag),
        connections_up=_count(document.get("connections_up")),
        connections_planned=_count(document.get("connections_planned")),
        queued=_count(document.get("queued")),
        inflight=_count(document.get("inflight")),
        exporters_up=_count(document.get("exporters_up")),
        exporters_expected=_count(document.get("exporters_expected")),
        sampled_at=_time(document.get("sampled_at")),
    )


def simulator_counts(document: Mapping[str, Any]) -> SimulatorCounts:
    return SimulatorCounts(desired=_count(document.get("desired")), up=_count(document.get("up")))


def _service(document: Mapping[str, Any]) -> LocalService:
    return LocalService(
        name=str(document["name"]),
        kind=str(document.get("kind", "")),
        state=str(document.get("state", "?")),
        pid=_int(document.get("pid")),
        port=_int(document.get("port")),
        restarts=_count(document.get("restarts")),
        generation=document.get("generation"),
        log=str(document.get("log") or ""),
    )


def local_status(document: Mapping[str, Any], *, running: bool, state_dir: str) -> LocalStatus:
    """From the supervisor's `status` answer, or from the state file a stopped stack left."""
    simulators = document.get("simulators")
    pipeline = document.get("pipeline")
    rotation = document.get("rotation")
    uptime = document.get("uptimeS")
    first = document.get("firstArchivedAfterS")
    return LocalStatus(
        stack=STACK,
        running=running,
        phase=str(document.get("phase") or "unknown"),
        state_dir=state_dir,
        supervisor_pid=_int(document.get("supervisorPid")),
        started_at=_time(document.get("startedAt")),
        uptime_s=None if uptime is None else float(uptime),
        first_archived_after_s=None if first is None else float(first),
        simulators=None if simulators is None else simulator_counts(simulators),
        generation=document.get("generation"),
        rotation=None if rotation is None else {str(k): str(v) for k, v in rotation.items()},
        pipeline=None if pipeline is None else pipeline_status(pipeline),
        services=tuple(_service(service) for service in document.get("services") or ()),
        events=tuple(str(event) for event in document.get("events") or ()),
        error=document.get("error"),
        broker_refusals=broker_refusals(document.get("brokerRefusals")),
    )


def broker_refusals(document: Mapping[str, Any] | None) -> BrokerRefusals | None:
    if not document:
        return None
    return BrokerRefusals(
        oversize_disconnects=_count(document.get("oversizeDisconnects")),
        tls_refusals=_count(document.get("tlsRefusals")),
        sessions_cut=_count(document.get("sessionsCut")),
        takeovers=_count(document.get("takeovers")),
    )


def rotation_outcome(document: Mapping[str, Any]) -> RotationOutcome:
    """From a rotation's answer (`RotationResult.as_dict()`, also what the supervisor sends)."""
    rolled_back = bool(document["rolledBack"])
    return RotationOutcome(
        stack=STACK,
        generation=str(document["from"] if rolled_back else document["to"]),
        from_generation=str(document["from"]),
        to_generation=str(document["to"]),
        rolled_back=rolled_back,
        finished=bool(document["finished"]),
        steps=tuple(str(step) for step in document.get("steps") or ()),
    )
