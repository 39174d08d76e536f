"""Live state of a deployed stack's ECS services (desired/running tasks, rollout), read with boto3."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# describe_services takes at most 10 services per call.
_DESCRIBE_BATCH = 10


@dataclass(frozen=True)
class ServiceState:
    name: str
    desired: int
    running: int
    pending: int
    rollout: str  # COMPLETED, IN_PROGRESS, FAILED, or MISSING when ECS does not know the service

    @property
    def steady(self) -> bool:
        return self.rollout == "COMPLETED" and self.running == self.desired and self.pending == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steady": self.steady}


SIMULATOR_SERVICES_OUTPUT = "simulatorServiceNames"
MONITORING_SERVICE_OUTPUT = "monitoringServiceName"


def service_names(
    outputs: Mapping[str, Any], keys: tuple[str, ...] = (MONITORING_SERVICE_OUTPUT, SIMULATOR_SERVICES_OUTPUT)
) -> list[str]:
    """The services a stack exports under these output keys (a name or a list of names each)."""
    names: list[str] = []
    for key in keys:
        value = outputs.get(key)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, Iterable):
            names.extend(str(item) for item in value)
    return names


def read_services(cluster: str, names: list[str], region: str) -> list[ServiceState]:
    import boto3

    ecs = boto3.session.Session(region_name=region).client("ecs")
    states: list[ServiceState] = []
    for start in range(0, len(names), _DESCRIBE_BATCH):
        batch = names[start : start + _DESCRIBE_BATCH]
        response = ecs.describe_services(cluster=cluster, services=batch)
        found = {service["serviceName"]: service for service in response.get("services", [])}
        for name in batch:
            service = found.get(name)
            if service is None:
                states.append(ServiceState(name, 0, 0, 0, "MISSING"))
                continue
            primary = next(
                (d for d in service.get("deployments", []) if d.get("status") == "PRIMARY"),
                {},
            )
            states.append(
                ServiceState(
                    name=name,
                    desired=int(service.get("desiredCount", 0)),
                    running=int(service.get("runningCount", 0)),
                    pending=int(service.get("pendingCount", 0)),
                    rollout=str(primary.get("rolloutState", "COMPLETED")),
                )
            )
    return states
