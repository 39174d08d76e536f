"""Policy-pack rules for the workloads and the managed services they hand data to.

Registered into `infra.policy`'s pack on import (that module imports this one, where these rules
sat in its order), and like every rule there they look at resource types.

- `ecr-repository`: immutable tags, scan on push, a lifecycle policy.
- `ecs-hardening`: non-root containers (except the listed init containers), read-only root
  filesystems, CloudWatch logs, circuit breaker with rollback.
- `service-discovery`: every task under one Cloud Map name fits in one DNS answer.
- `load-balancer`: invalid header fields dropped; HTTPS listeners TLS 1.2+; HTTP redirects.
- `firehose-encryption`: delivery streams encrypted at rest.
- `sns-topic`: topics encrypted with a KMS key; no topic policy allows every principal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from infra.components import monitoring, simulators
from infra.offline import ResourceRecord
from infra.policy import (
    DISCOVERY_SERVICE,
    ECR_LIFECYCLE,
    ECR_REPOSITORY,
    ECS_SERVICE,
    FIREHOSE,
    LISTENER,
    LOAD_BALANCER,
    SNS_TOPIC,
    SNS_TOPIC_POLICY,
    TASK_DEFINITION,
    PolicyContext,
    Violation,
    _as_list,
    _containers,
    _Index,
    _label,
    _statements,
    rule,
)

# Containers that may run as root, and why. Both are non-essential init containers that exit
# before the service containers start; neither listens on a port.
ROOT_INIT_CONTAINERS: Mapping[str, str] = {
    monitoring.INIT_CONTAINER: "syncs the config bundle, hands the fresh volumes to Prometheus and Grafana",
    simulators.TMP_INIT_CONTAINER: "makes the fresh /tmp volume writable for the simulator user",
}
# ALB policies that allow nothing older than TLS 1.2.
TLS12_PLUS_POLICY_MARKERS = ("TLS13-1-2", "TLS13-1-3", "TLS-1-2", "FS-1-2")
# Records Route 53 puts in one answer, by Cloud Map routing policy (multivalue: at most 8 healthy
# records; weighted: one record picked at random).
DNS_ANSWER_RECORDS = {"MULTIVALUE": 8, "WEIGHTED": 1}
# ECS's default deploymentMaximumPercent: a rolling deployment may run twice the desired tasks.
ECS_DEFAULT_MAXIMUM_PERCENT = 200


@rule("ecr-repository")
def _ecr(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    lifecycle_targets = {record.inputs.get("repository") for record in index.of(ECR_LIFECYCLE)}
    for record in index.of(ECR_REPOSITORY):
        label = _label(record)
        if record.inputs.get("imageTagMutability") != "IMMUTABLE":
            yield Violation("ecr-repository", label, "image tags are mutable")
        if not (record.inputs.get("imageScanningConfiguration") or {}).get("scanOnPush"):
            yield Violation("ecr-repository", label, "scan on push is off")
        name = record.inputs.get("name") or str(record.arn or "").split("repository/", 1)[-1]
        if name not in lifecycle_targets:
            yield Violation("ecr-repository", label, "no lifecycle policy")


def _is_root(user: Any) -> bool:
    return user is None or str(user).split(":")[0] in ("", "0", "root")


@rule("ecs-hardening")
def _ecs(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for record in index.of(TASK_DEFINITION):
        label = _label(record)
        for container in _containers(record):
            name = container.get("name")
            if container.get("privileged"):
                yield Violation("ecs-hardening", label, f"container {name} is privileged")
            if _is_root(container.get("user")):
                if name not in ROOT_INIT_CONTAINERS:
                    yield Violation("ecs-hardening", label, f"container {name} runs as root (set user)")
                elif container.get("essential", True):
                    yield Violation(
                        "ecs-hardening", label, f"root init container {name} must be non-essential"
                    )
            if container.get("readonlyRootFilesystem") is not True:
                yield Violation("ecs-hardening", label, f"container {name} has a writable root filesystem")
            if (container.get("logConfiguration") or {}).get("logDriver") != "awslogs":
                yield Violation("ecs-hardening", label, f"container {name} does not log to CloudWatch")
    for record in index.of(ECS_SERVICE):
        breaker = record.inputs.get("deploymentCircuitBreaker") or {}
        if not (breaker.get("enable") and breaker.get("rollback")):
            yield Violation(
                "ecs-hardening", _label(record), "deployment circuit breaker with rollback is off"
            )


@rule("service-discovery")
def _discovery(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    """Every task registered under one Cloud Map name must fit in one DNS answer, or Prometheus,
    resolving that name, scrapes a changing subset of them."""
    peak_tasks: dict[str, int] = {}
    registrants: dict[str, list[ResourceRecord]] = {}
    for service in index.of(ECS_SERVICE):
        desired = int(service.inputs.get("desiredCount") or 0)
        maximum_percent = int(service.inputs.get("deploymentMaximumPercent") or ECS_DEFAULT_MAXIMUM_PERCENT)
        for registry in _as_list(service.inputs.get("serviceRegistries")):
            arn = str(registry.get("registryArn"))
            peak_tasks[arn] = peak_tasks.get(arn, 0) + math.ceil(desired * maximum_percent / 100)
            registrants.setdefault(arn, []).append(service)
    discovery_by_arn = {record.arn: record for record in index.of(DISCOVERY_SERVICE)}
    for arn, peak in peak_tasks.items():
        discovery = discovery_by_arn.get(arn)
        dns_config = (discovery.inputs.get("dnsConfig") if discovery else None) or {}
        policy = str(dns_config.get("routingPolicy") or "MULTIVALUE")
        limit = DNS_ANSWER_RECORDS.get(policy, 1)
        if peak > limit:
            services = sorted(str(record.inputs.get("name") or record.name) for record in registrants[arn])
            yield Violation(
                "service-discovery",
                _label(discovery or registrants[arn][0]),
                f"up to {peak} tasks of {services} register under one name, but a {policy} DNS answer "
                f"holds at most {limit}: Prometheus would scrape a changing subset; give each its own "
                "Cloud Map service",
            )


@rule("load-balancer")
def _load_balancers(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    listeners = index.of(LISTENER)
    for balancer in index.of(LOAD_BALANCER):
        label = _label(balancer)
        if balancer.inputs.get("dropInvalidHeaderFields") is not True:
            yield Violation("load-balancer", label, "invalid header fields are not dropped")
        own = [listener for listener in listeners if listener.inputs.get("loadBalancerArn") == balancer.arn]
        has_https = any(listener.inputs.get("protocol") == "HTTPS" for listener in own)
        for listener in own:
            if listener.inputs.get("protocol") == "HTTPS":
                policy = str(listener.inputs.get("sslPolicy", ""))
                if not any(marker in policy for marker in TLS12_PLUS_POLICY_MARKERS):
                    yield Violation(
                        "load-balancer", _label(listener), f"TLS policy {policy!r} allows < TLS 1.2"
                    )
            elif has_https:
                actions = _as_list(listener.inputs.get("defaultActions"))
                if not any(
                    action.get("type") == "redirect" and action.get("redirect", {}).get("protocol") == "HTTPS"
                    for action in actions
                ):
                    yield Violation(
                        "load-balancer", _label(listener), "HTTP listener does not redirect to HTTPS"
                    )


@rule("firehose-encryption")
def _firehose(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for record in index.of(FIREHOSE):
        if not (record.inputs.get("serverSideEncryption") or {}).get("enabled"):
            yield Violation("firehose-encryption", _label(record), "delivery stream is not encrypted at rest")


@rule("sns-topic")
def _sns(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    """Topics are encrypted with a KMS key, and no topic policy allows anyone at all."""
    for topic in index.of(SNS_TOPIC):
        if not topic.inputs.get("kmsMasterKeyId"):
            yield Violation("sns-topic", _label(topic), "topic is not encrypted (kmsMasterKeyId)")
    policies = [(record, record.inputs.get("policy")) for record in index.of(SNS_TOPIC, SNS_TOPIC_POLICY)]
    for record, document in policies:
        for statement in _statements(document):
            principal = statement.get("Principal")
            aws_principals = principal.get("AWS") if isinstance(principal, dict) else principal
            if statement.get("Effect") == "Allow" and "*" in _as_list(aws_principals):
                message = "topic policy allows every principal ('*'); name the publisher"
                yield Violation("sns-topic", _label(record), message)
