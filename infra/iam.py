"""IAM and IoT policy documents built from exact actions and ARNs, and the one list of `*`-resource actions.

Every component writes its permissions through `allow(...)`; the policy check (`infra/policy.py`)
then rejects any Allow statement with a wildcard action, and any `"Resource": "*"` whose actions
are not all listed in `WILDCARD_RESOURCE_ACTIONS` below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

# Actions AWS does not let a policy scope to a resource ARN, with the reason. Nothing else may use "*".
WILDCARD_RESOURCE_ACTIONS: Mapping[str, str] = {
    "ecr:GetAuthorizationToken": (
        "returns a registry login token for the whole account; ECR defines no resource type for it, "
        "so the execution role that pulls the simulator image needs it on '*'"
    ),
}

PolicyStatement = dict[str, Any]


@dataclass(frozen=True)
class AccountContext:
    """Where ARNs point: the partition, region and account the program deploys into."""

    partition: pulumi.Input[str]
    region: str
    account_id: pulumi.Input[str]

    def arn(self, service: str, resource: str, *, regional: bool = True) -> pulumi.Output[str]:
        region = self.region if regional else ""
        return pulumi.Output.concat(
            "arn:", self.partition, ":", service, ":", region, ":", self.account_id, ":", resource
        )

    def s3_arn(self, bucket_name: pulumi.Input[str], key_pattern: str | None = None) -> pulumi.Output[str]:
        suffix = "" if key_pattern is None else f"/{key_pattern}"
        return pulumi.Output.concat("arn:", self.partition, ":s3:::", bucket_name, suffix)

    def log_group_arn(self, log_group_name: pulumi.Input[str]) -> pulumi.Output[str]:
        """The ARN form IAM matches for log-group actions (CreateLogStream, DescribeLogStreams)."""
        return pulumi.Output.concat(self.arn("logs", "log-group:"), log_group_name, ":*")

    def log_stream_arn(self, log_group_name: pulumi.Input[str], stream_pattern: str) -> pulumi.Output[str]:
        return pulumi.Output.concat(
            self.arn("logs", "log-group:"), log_group_name, ":log-stream:", stream_pattern
        )


def allow(
    actions: Sequence[str],
    resources: Sequence[pulumi.Input[str]],
    condition: Mapping[str, Any] | None = None,
    sid: str | None = None,
) -> PolicyStatement:
    if not actions or not resources:
        raise ValueError("an Allow statement needs at least one action and one resource")
    statement: PolicyStatement = {"Effect": "Allow", "Action": sorted(actions), "Resource": list(resources)}
    if sid:
        statement["Sid"] = sid
    if condition:
        statement["Condition"] = dict(condition)
    return statement


def wildcard_resource(actions: Sequence[str], sid: str | None = None) -> PolicyStatement:
    """An Allow on "*" for actions AWS cannot scope; refuses anything not in WILDCARD_RESOURCE_ACTIONS."""
    unlisted = sorted(set(actions) - set(WILDCARD_RESOURCE_ACTIONS))
    if unlisted:
        raise ValueError(f"{unlisted} may not be granted on '*'; scope them to ARNs")
    return allow(actions, ["*"], sid=sid)


def document(*statements: PolicyStatement) -> pulumi.Output[str]:
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def service_trust(service: str, condition: Mapping[str, Any] | None = None) -> pulumi.Output[str]:
    """Trust policy letting one AWS service principal assume the role, optionally under a condition."""
    statement: PolicyStatement = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if condition:
        statement["Condition"] = dict(condition)
    return document(statement)


def same_account(account: AccountContext, source_arn: pulumi.Input[str] | None = None) -> dict[str, Any]:
    """Confused-deputy guard: the service acts for this account (and this resource, if given)."""
    condition: dict[str, Any] = {"StringEquals": {"aws:SourceAccount": account.account_id}}
    if source_arn is not None:
        condition["ArnLike"] = {"aws:SourceArn": source_arn}
    return condition


ECS_TASKS = "ecs-tasks.amazonaws.com"
