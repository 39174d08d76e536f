"""Policy rules for operating stacks safely in one account (issue 12), registered into `infra.policy`.

- `topic-isolation`: a stack's devices publish, and its topic rule reads, only inside the stack's
  own namespace `factory/simulator/<stack>/`;
- `stack-isolation` (across stacks, `isolation_violations`): with several stacks deployed in one
  account, no stack's rule matches another's topics and no stack's certificates may publish into
  another's namespace;
- `task-dependencies`: no ECS service can start a task before what the task needs exists: the
  value of every secret it reads, its roles' policies, and its certificate's attachments;
- `production-defaults`: a production stack pins its provider to one account, serves HTTPS (unless
  `allowInsecureHttp`), Grafana's cookie is secure wherever HTTPS is served, and with the image
  cache on every container image comes from ECR.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from infra.offline import ResourceRecord
from infra.policy import (
    AWS_PROVIDER,
    ECS_SERVICE,
    IAM_ROLE,
    IOT_POLICY,
    LISTENER,
    TASK_DEFINITION,
    PolicyContext,
    Violation,
    _actions,
    _as_list,
    _containers,
    _Index,
    _label,
    _statements,
    rule,
)

TOPIC_RULE = "aws:iot/topicRule:TopicRule"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
IOT_CERTIFICATE = "aws:iot/certificate:Certificate"
IOT_POLICY_ATTACHMENT = "aws:iot/policyAttachment:PolicyAttachment"
THING_PRINCIPAL_ATTACHMENT = "aws:iot/thingPrincipalAttachment:ThingPrincipalAttachment"
_FROM = re.compile(r"\bFROM\s+'(?P<filter>[^']*)'", re.IGNORECASE)
_ECR_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/")


# -- topics: IoT policy patterns (`*` = any characters) against MQTT filters (`+`, `#`) -------------


def rule_filters(record: ResourceRecord) -> list[str]:
    """The topic filters a topic rule's SQL reads (`SELECT * FROM 'factory/simulator/dev/#'`)."""
    return [match["filter"] for match in _FROM.finditer(str(record.inputs.get("sql", "")))]


def publish_patterns(record: ResourceRecord) -> list[str]:
    """Topic patterns an IoT policy lets its certificates publish to (`factory/simulator/dev/site-00/*`)."""
    patterns = []
    for statement in _statements(record.inputs.get("policy")):
        if statement.get("Effect") == "Allow" and "iot:Publish" in _actions(statement):
            for resource in (str(item) for item in _as_list(statement.get("Resource"))):
                patterns.append("*" if resource == "*" else resource.split(":topic/", 1)[-1])
    return patterns


def _literal_prefix(pattern: str) -> tuple[str, bool]:
    """The part of an IoT policy pattern before its first wildcard, and whether there is one."""
    index = pattern.find("*")
    return (pattern, False) if index < 0 else (pattern[:index], True)


def filter_overlaps(topic_filter: str, pattern: str) -> bool:
    """Whether an MQTT filter matches a topic an IoT policy pattern (a literal, or prefix + `*`) allows."""
    prefix, open_ended = _literal_prefix(pattern)
    segments = topic_filter.split("/")
    topic = prefix.split("/")
    for index, wanted in enumerate(segments):
        if wanted == "#":
            return True
        if index >= len(topic):
            return open_ended  # the pattern's `*` may supply the remaining levels
        known = topic[index]
        last = index == len(topic) - 1
        if wanted == "+":
            continue
        if last and open_ended:
            return wanted.startswith(known)  # the `*` completes this level and may add more
        if wanted != known:
            return False
    return len(segments) == len(topic) or (open_ended and len(segments) >= len(topic))


def patterns_overlap(pattern: str, prefix: str) -> bool:
    """Whether a policy pattern allows a topic under `prefix` (a namespace: factory/simulator/prod/)."""
    literal, open_ended = _literal_prefix(pattern)
    if open_ended:
        return literal.startswith(prefix) or prefix.startswith(literal)
    return literal.startswith(prefix)


@rule("topic-isolation")
def _topic_isolation(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    if context.topic_prefix is None:
        return
    namespace = f"{context.topic_prefix}/"
    for record in index.of(IOT_POLICY):
        for pattern in publish_patterns(record):
            if not _literal_prefix(pattern)[0].startswith(namespace):
                yield Violation(
                    "topic-isolation",
                    _label(record),
                    f"certificates may publish to {pattern!r}, outside this stack's namespace {namespace}",
                )
    for record in index.of(TOPIC_RULE):
        for topic_filter in rule_filters(record):
            if not topic_filter.startswith(namespace):
                yield Violation(
                    "topic-isolation",
                    _label(record),
                    f"the rule reads {topic_filter!r}, outside this stack's namespace {namespace}",
                )


def isolation_violations(stacks: Mapping[str, Sequence[ResourceRecord]]) -> list[Violation]:
    """With all these stacks deployed in one account: no rule reads another stack's topics (what
    its certificates may publish), and no certificate may publish into another stack's topics or
    namespace (`factory/simulator/<stack>/`)."""
    from factory_core.fleet import topic_prefix

    policies = {name: _Index(records).of(IOT_POLICY) for name, records in stacks.items()}
    rules = {name: _Index(records).of(TOPIC_RULE) for name, records in stacks.items()}
    violations: list[Violation] = []
    for name in stacks:
        for other in stacks:
            if other == name:
                continue
            theirs = [pattern for record in policies[other] for pattern in publish_patterns(record)]
            for record in rules[name]:
                for topic_filter in rule_filters(record):
                    matched = [pattern for pattern in theirs if filter_overlaps(topic_filter, pattern)]
                    if matched:
                        violations.append(
                            Violation(
                                "stack-isolation",
                                f"{name}:{_label(record)}",
                                f"{name}'s rule reads {topic_filter!r}, which matches {other}'s topics "
                                f"{matched[0]!r}",
                            )
                        )
            prefixes = {f"{topic_prefix(other)}/", *(_literal_prefix(pattern)[0] for pattern in theirs)}
            for record in policies[name]:
                for pattern in publish_patterns(record):
                    into = sorted(prefix for prefix in prefixes if patterns_overlap(pattern, prefix))
                    if into:
                        violations.append(
                            Violation(
                                "stack-isolation",
                                f"{name}:{_label(record)}",
                                f"{name}'s certificates may publish to {pattern!r}, into {other}'s topics "
                                f"{into[0]!r}",
                            )
                        )
    return violations


# -- what a task needs before it starts --------------------------------------------------------------


def _closure(start: ResourceRecord, by_urn: Mapping[str, ResourceRecord]) -> set[str]:
    """Every URN `start` waits for, directly or through what it depends on."""
    seen: set[str] = set()
    pending = list(start.dependencies)
    while pending:
        urn = pending.pop()
        if urn in seen:
            continue
        seen.add(urn)
        if urn in by_urn:
            pending.extend(by_urn[urn].dependencies)
    return seen


def _task_needs(index: _Index, task: ResourceRecord) -> list[ResourceRecord]:
    """What must exist before `task` starts: secret values, role policies, certificate attachments."""
    secrets = index.of(SECRET)
    versions = index.of(SECRET_VERSION)
    references = [
        str(item.get("valueFrom", ""))
        for container in _containers(task)
        for item in _as_list(container.get("secrets"))
    ]
    needed: list[ResourceRecord] = []
    for secret in secrets:
        if secret.arn and any(reference.startswith(secret.arn) for reference in references):
            needed += [v for v in versions if v.inputs.get("secretId") == secret.id]
    role_ids = {
        role.id
        for role in index.of(IAM_ROLE)
        if role.arn in (task.inputs.get("executionRoleArn"), task.inputs.get("taskRoleArn"))
    }
    needed += [policy for policy in index.of(ROLE_POLICY) if policy.inputs.get("role") in role_ids]
    certificates = {record.urn: record for record in index.of(IOT_CERTIFICATE)}
    used = [certificates[urn] for version in needed for urn in version.dependencies if urn in certificates]
    for certificate in used:
        needed += [
            attachment
            for attachment in index.of(IOT_POLICY_ATTACHMENT, THING_PRINCIPAL_ATTACHMENT)
            if certificate.arn in (attachment.inputs.get("target"), attachment.inputs.get("principal"))
        ]
    return needed


@rule("task-dependencies")
def _task_dependencies(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    by_urn = {record.urn: record for record in index.records}
    tasks = {record.arn: record for record in index.of(TASK_DEFINITION)}
    for service in index.of(ECS_SERVICE):
        task = tasks.get(service.inputs.get("taskDefinition"))
        if task is None:
            continue
        waits_for = _closure(service, by_urn)
        missing = [needed for needed in _task_needs(index, task) if needed.urn not in waits_for]
        for needed in missing:
            yield Violation(
                "task-dependencies",
                _label(service),
                f"may start a task before {_label(needed)} exists; add it to depends_on of {_label(task)}",
            )


# -- production defaults -----------------------------------------------------------------------------


def _provider_accounts(index: _Index) -> list[tuple[ResourceRecord, list[Any]]]:
    result = []
    for provider in index.of(AWS_PROVIDER):
        raw = provider.inputs.get("allowedAccountIds")
        # Provider inputs arrive JSON-encoded (that is how Pulumi passes provider config).
        accounts = json.loads(raw) if isinstance(raw, str) and raw.startswith("[") else _as_list(raw)
        result.append((provider, accounts))
    return result


def _container_environment(container: Mapping[str, Any]) -> dict[str, str]:
    return {str(item.get("name")): str(item.get("value")) for item in _as_list(container.get("environment"))}


@rule("production-defaults")
def _production_defaults(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    https = any(listener.inputs.get("protocol") == "HTTPS" for listener in index.of(LISTENER))
    for task in index.of(TASK_DEFINITION):
        for container in _containers(task):
            environment = _container_environment(container)
            if https and environment.get("GF_SECURITY_COOKIE_SECURE", "true") != "true":
                yield Violation(
                    "production-defaults", _label(task), "Grafana's session cookie is not secure behind HTTPS"
                )
            image = str(container.get("image", ""))
            if context.image_cache and not _ECR_IMAGE.match(image):
                yield Violation(
                    "production-defaults",
                    _label(task),
                    f"container {container.get('name')} pulls {image} from outside ECR (image cache on)",
                )
    if not context.production:
        return
    for provider, accounts in _provider_accounts(index):
        if not accounts:
            yield Violation(
                "production-defaults", _label(provider), "the provider is not pinned (allowedAccountIds)"
            )
    if not https and not context.allow_insecure_http:
        yield Violation(
            "production-defaults",
            "stack",
            "no HTTPS listener on a production stack (set iotfactory:certificateArn, or allowInsecureHttp)",
        )

