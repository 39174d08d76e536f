"""The pieces every Fargate task of the platform is built from: task definition, roles, logs, containers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import iam

# Every capability dropped; tini as PID 1 so SIGTERM reaches the service and zombies are reaped.
HARDENED_LINUX: Mapping[str, Any] = {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}}


def awslogs(log_group: str, region: str, stream_prefix: str) -> dict[str, object]:
    """A container's log configuration: non-blocking, so a CloudWatch hiccup never stalls the service."""
    return {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": log_group,
            "awslogs-region": region,
            "awslogs-stream-prefix": stream_prefix,
            "mode": "non-blocking",
            "max-buffer-size": "4m",
        },
    }


def environment(values: Mapping[str, str]) -> list[dict[str, str]]:
    """A container's environment in name order, so the task definition does not change with dict order."""
    return [{"name": key, "value": value} for key, value in sorted(values.items())]


def mount(volume: str, path: str, *, read_only: bool = False) -> dict[str, object]:
    return {"sourceVolume": volume, "containerPath": path, "readOnly": read_only}


def log_writer_statements(
    account: iam.AccountContext, log_group_name: pulumi.Input[str], stream_pattern: str
) -> list[iam.PolicyStatement]:
    """What an execution role needs to ship a task's logs into its own streams of one log group."""
    return [
        iam.allow(["logs:CreateLogStream"], [account.log_group_arn(log_group_name)]),
        iam.allow(["logs:PutLogEvents"], [account.log_stream_arn(log_group_name, stream_pattern)]),
    ]


def execution_role(name: str, description: str, opts: pulumi.ResourceOptions) -> aws.iam.Role:
    """The role the ECS agent uses for the task (pull, logs, secrets); its policy is the caller's."""
    return aws.iam.Role(
        f"{name}-execution",
        description=description,
        assume_role_policy=iam.service_trust(iam.ECS_TASKS),
        opts=opts,
    )


def task_role(
    name: str, description: str, account: iam.AccountContext, opts: pulumi.ResourceOptions
) -> aws.iam.Role:
    """The role the task's own code runs as; only ECS tasks of this account may assume it."""
    return aws.iam.Role(
        f"{name}-task",
        description=description,
        assume_role_policy=iam.service_trust(
            iam.ECS_TASKS, iam.same_account(account, account.arn("ecs", "*"))
        ),
        opts=opts,
    )


def task_definition(
    name: str,
    *,
    family: pulumi.Input[str],
    cpu: int,
    memory: int,
    execution_role: aws.iam.Role,
    task_role: aws.iam.Role,
    volumes: Sequence[str | Mapping[str, object]],
    containers: pulumi.Output[list[dict[str, object]]],
    opts: pulumi.ResourceOptions,
) -> aws.ecs.TaskDefinition:
    """An x86-64 Linux Fargate task definition (awsvpc); a volume named by a string is an empty
    task-scoped one, a mapping is a whole volume (an EFS volume)."""
    return aws.ecs.TaskDefinition(
        f"{name}-task",
        family=family,
        cpu=str(cpu),
        memory=str(memory),
        network_mode="awsvpc",
        requires_compatibilities=["FARGATE"],
        runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
        execution_role_arn=execution_role.arn,
        task_role_arn=task_role.arn,
        volumes=[{"name": volume} if isinstance(volume, str) else dict(volume) for volume in volumes],
        container_definitions=pulumi.Output.json_dumps(containers),
        opts=opts,
    )


def awsvpc_network(
    subnet_ids: list[pulumi.Input[str]], security_group_id: pulumi.Input[str], assign_public_ip: bool
) -> dict[str, object]:
    """A service's network configuration: its tasks in these subnets behind one security group."""
    return {
        "subnets": subnet_ids,
        "security_groups": [security_group_id],
        "assign_public_ip": assign_public_ip,
    }


def health_check(command: list[str], *, interval: int, start_period: int) -> dict[str, object]:
    """A container health check (ECS ignores an image's HEALTHCHECK): 5 s timeout, 3 retries."""
    return {
        "command": ["CMD", *command],
        "interval": interval,
        "timeout": 5,
        "retries": 3,
        "startPeriod": start_period,
    }
