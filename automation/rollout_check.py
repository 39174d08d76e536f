"""Proof from ECS that no simulator still uses a certificate generation, before it is deactivated.

`up` returning is not that proof: after an ECS circuit-breaker rollback the rollback deployment
(old task definition, old certificate) completes too, and the provider's `wait_for_steady_state`
then reports success. So for every site the stack exports (`simulatorSites`: service, task
definition, generation) this reads ECS itself:

- the service's deployments: a FAILED deployment, or a PRIMARY one on another task definition,
  is a circuit-breaker rollback; anything but one COMPLETED PRIMARY deployment with every desired
  task running is a rollout still under way;
- every task of the service that has not stopped yet (running, starting, or still draining) must
  run the exported task definition: a draining old task still holds an old-certificate connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from factory_core.errors import OperationFailed

SITES_OUTPUT = "simulatorSites"
_EVENT_SUBJECTS = re.compile(r"^(\([^)]*\)\s*)+")
# describe_services takes at most 10 services per call, describe_tasks at most 100 tasks.
_SERVICES_PER_CALL = 10
_TASKS_PER_CALL = 100


def _default_client(region: str) -> Any:
    import boto3

    return boto3.session.Session(region_name=region).client("ecs")


# Tests swap this for a client with recorded responses (botocore's Stubber).
ecs_client: Callable[[str], Any] = _default_client


@dataclass(frozen=True)
class SiteRollout:
    """What one site must run: its service, the task definition, and that definition's generation."""

    site: str
    service: str
    task_definition: str
    generation: str


@dataclass(frozen=True)
class Blocker:
    site: str
    service: str
    rolled_back: bool  # a circuit-breaker rollback (a failed step), not merely a rollout under way
    detail: str


def sites_of(outputs: Mapping[str, Any], generation: str, stack: str) -> list[SiteRollout]:
    """Every site from the stack's outputs; refuses sites exported for another generation."""
    exported = outputs.get(SITES_OUTPUT)
    if not isinstance(exported, Mapping):
        raise OperationFailed(
            f"stack '{stack}' exports no {SITES_OUTPUT}, so ECS cannot be checked before the old "
            f"certificates are deactivated; run `python cli.py up --stack {stack}` with this version first"
        )
    sites = [
        SiteRollout(
            site, str(item["serviceName"]), str(item["taskDefinitionArn"]), str(item["certGeneration"])
        )
        for site, item in sorted(exported.items())
    ]
    stale = [site.site for site in sites if site.generation != generation]
    if stale:
        raise OperationFailed(
            f"the deployed simulators of {', '.join(stale)} are defined for another generation than "
            f"{generation}; run `python cli.py rotate-certs --stack {stack}` again"
        )
    return sites


def short(task_definition: str) -> str:
    """`arn:...:task-definition/family:7` -> `family:7`."""
    return task_definition.rsplit("/", 1)[-1]


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _failure_reason(service: Mapping[str, Any]) -> str:
    """Why ECS gave up on a deployment: the failed deployment's reason, else the service's newest event
    about it (once the rollback completed, the failed deployment is no longer listed)."""
    for deployment in service.get("deployments", []):
        if deployment.get("rolloutState") == "FAILED" and deployment.get("rolloutStateReason"):
            return str(deployment["rolloutStateReason"]).strip()
    for event in service.get("events", []):  # newest first
        message = str(event.get("message", ""))
        if "deployment failed" in message or "circuit breaker" in message:
            return _EVENT_SUBJECTS.sub("", message).strip()  # without "(service x) (deployment y)"
    return "circuit breaker"


def _service_blocker(site: SiteRollout, service: Mapping[str, Any] | None) -> Blocker | None:
    if service is None:
        return Blocker(site.site, site.service, False, "ECS does not know the service")
    deployments = list(service.get("deployments", []))
    primary = next((d for d in deployments if d.get("status") == "PRIMARY"), {})
    if primary.get("taskDefinition") not in (None, site.task_definition):
        detail = f"ECS rolled {site.service} back to {short(primary['taskDefinition'])}"
        return Blocker(site.site, site.service, True, f"{detail} ({_failure_reason(service)})")
    failed = [d for d in deployments if d.get("rolloutState") == "FAILED"]
    if failed:
        detail = f"a deployment of {site.service} failed"
        return Blocker(site.site, site.service, True, f"{detail} ({_failure_reason(service)})")
    running, desired = int(service.get("runningCount", 0)), int(service.get("desiredCount", 0))
    pending = int(service.get("pendingCount", 0))
    rollout = str(primary.get("rolloutState", "COMPLETED"))
    if rollout != "COMPLETED" or len(deployments) > 1 or running != desired or pending:
        return Blocker(
            site.site,
            site.service,
            False,
            f"{site.service} {running}/{desired} running, {pending} pending, {rollout.lower()}, "
            f"{len(deployments)} deployment(s)",
        )
    return None


def _live_tasks(ecs: Any, cluster: str, service: str) -> list[Mapping[str, Any]]:
    """Every task of the service that has not stopped yet, whatever ECS wants of it."""
    arns: list[str] = []
    for desired in ("RUNNING", "STOPPED"):  # STOPPED: draining tasks ECS is stopping
        for page in ecs.get_paginator("list_tasks").paginate(
            cluster=cluster, serviceName=service, desiredStatus=desired
        ):
            arns += page.get("taskArns", [])
    tasks: list[Mapping[str, Any]] = []
    for batch in _batches(arns, _TASKS_PER_CALL):
        tasks += ecs.describe_tasks(cluster=cluster, tasks=batch).get("tasks", [])
    return [task for task in tasks if task.get("lastStatus") != "STOPPED"]


def check_rollout(ecs: Any, cluster: str, sites: list[SiteRollout]) -> list[Blocker]:
    """Everything that stops the old generation's deactivation, one blocker per site at most."""
    found: dict[str, Mapping[str, Any]] = {}
    for batch in _batches([site.service for site in sites], _SERVICES_PER_CALL):
        for service in ecs.describe_services(cluster=cluster, services=batch).get("services", []):
            found[service["serviceName"]] = service
    blockers: list[Blocker] = []
    for site in sites:
        blocker = _service_blocker(site, found.get(site.service))
        if blocker is None:
            old = [
                t
                for t in _live_tasks(ecs, cluster, site.service)
                if t.get("taskDefinitionArn") != site.task_definition
            ]
            if old:
                task = old[0]
                task_id = str(task.get("taskArn", "?")).rsplit("/", 1)[-1]
                state = str(task.get("lastStatus", "?")).lower()
                running = short(str(task.get("taskDefinitionArn")))
                detail = f"task {task_id} of {site.service} ({state}) still runs {running}"
                blocker = Blocker(site.site, site.service, False, detail)
        if blocker is not None:
            blockers.append(blocker)
    return blockers
