"""Recorded ECS answers for tests: botocore's Stubber fed with responses of the real API's shape.

moto keeps one PRIMARY deployment per service, never rolls back and ignores `serviceName` in
ListTasks, so the ECS side of `rotate-certs` is answered from tests/fixtures/ecs/*.json instead;
the Stubber checks every request and response against the ECS service model.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import boto3
from botocore.stub import Stubber

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ecs"
REGION = "eu-west-1"
CLUSTER = "iotfactory-dev"
SITES = ("site-00", "site-01")


def task_definition(site: str, revision: int) -> str:
    return f"arn:aws:ecs:{REGION}:123456789012:task-definition/iotfactory-dev-simulator-{site}:{revision}"


def _timestamps(value: Any, key: str = "") -> Any:
    """Recorded JSON carries ISO times; botocore hands them to callers as datetimes."""
    if isinstance(value, dict):
        return {k: _timestamps(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_timestamps(item, key) for item in value]
    if isinstance(value, str) and key.endswith("At"):
        return dt.datetime.fromisoformat(value)
    return value


def fixture(name: str) -> Any:
    return _timestamps(json.loads((FIXTURES / name).read_text(encoding="utf-8")))


def deployed_sites(revision: int = 4, generation: str = "g2") -> dict[str, dict[str, str]]:
    """The stack's `simulatorSites` output after step 1 of g1 -> g2 (task definitions :4)."""
    return {
        site: {
            "serviceName": f"simulator-{site}",
            "taskDefinitionArn": task_definition(site, revision),
            "certGeneration": generation,
        }
        for site in SITES
    }


class RecordedEcs:
    """An ECS client answering from recordings, in the order rollout_check asks."""

    def __init__(self) -> None:
        self.client = boto3.client("ecs", region_name=REGION)
        self.stubber = Stubber(self.client)

    def services(self, name: str) -> RecordedEcs:
        services = [f"simulator-{site}" for site in SITES]
        self.stubber.add_response(
            "describe_services", fixture(name), {"cluster": CLUSTER, "services": services}
        )
        return self

    def tasks(self, name: str, sites: tuple[str, ...] = SITES) -> RecordedEcs:
        recorded = fixture(name)
        for site in sites:
            service = f"simulator-{site}"
            for desired in ("RUNNING", "STOPPED"):
                self.stubber.add_response(
                    "list_tasks",
                    recorded[site][desired],
                    {"cluster": CLUSTER, "serviceName": service, "desiredStatus": desired},
                )
            arns = recorded[site]["RUNNING"]["taskArns"] + recorded[site]["STOPPED"]["taskArns"]
            self.stubber.add_response(
                "describe_tasks", recorded[site]["describe"], {"cluster": CLUSTER, "tasks": arns}
            )
        return self
