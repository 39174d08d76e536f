"""Security policy pack for the program: rules over every registered resource, like a CrossGuard pack.

The rules look at resource types, not at which component made a resource, so a resource added
later is checked too. Input: the `ResourceRecord`s of an offline run (`infra/offline.py`); output:
the violations. Run it on a stack file with:

    python -m infra.policy --stack dev                  # exit 0 clean, 1 violations, 2 config error
    python -m infra.policy --stack dev --stack prod     # both, and isolation between them
"""

from __future__ import annotations

import argparse
import importlib
import json
import keyword
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory_core.archive_modes import strip_basic_ingest
from infra.iam import WILDCARD_RESOURCE_ACTIONS
from infra.offline import ResourceRecord

if TYPE_CHECKING:
    from infra.settings import StackSettings

REQUIRED_TAGS = ("Project", "Environment", "Owner")
# IoT device policies may grant these actions only.
IOT_DEVICE_ACTIONS = frozenset({"iot:Connect", "iot:Publish"})
REMOTE_ADMIN_PORTS = (22, 3389)

# Types the rules read.
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
BUCKET_PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
BUCKET_OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
BUCKET_ACLS = ("aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2")
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
IAM_POLICY_TYPES = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy", "aws:iam/userPolicy:UserPolicy")
IAM_ROLE = "aws:iam/role:Role"
MANAGED_POLICY_ATTACHMENTS = (
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
)
IOT_POLICY = "aws:iot/policy:Policy"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
ECR_REPOSITORY = "aws:ecr/repository:Repository"
ECR_LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
ECS_SERVICE = "aws:ecs/service:Service"
FIREHOSE = "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream"
DISCOVERY_SERVICE = "aws:servicediscovery/service:Service"
SNS_TOPIC = "aws:sns/topic:Topic"
SNS_TOPIC_POLICY = "aws:sns/topicPolicy:TopicPolicy"
ATHENA_WORKGROUP = "aws:athena/workgroup:Workgroup"
GLUE_CRAWLER = "aws:glue/crawler:Crawler"
AWS_PROVIDER = "pulumi:providers:aws"


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str  # type::name
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource}: {self.message}"


@dataclass(frozen=True)
class PolicyContext:
    allowed_ingress_cidrs: tuple[str, ...]
    topic_root: str = "factory/simulator"
    required_tags: tuple[str, ...] = REQUIRED_TAGS
    # Operating safely in one account (infra/policy_operations.py).
    topic_prefix: str | None = None  # the stack's own namespace, e.g. factory/simulator/dev
    production: bool = False  # iotfactory:production: stricter rules (web ACL, backups, HTTPS)
    allow_insecure_http: bool = False
    image_cache: bool = False


def policy_context(settings: StackSettings) -> PolicyContext:
    """What the rules need to know about the stack that was run."""
    from factory_core.fleet import topic_prefix

    return PolicyContext(
        allowed_ingress_cidrs=settings.allowed_cidrs,
        topic_prefix=topic_prefix(settings.topic_namespace),
        production=settings.production,
        allow_insecure_http=settings.allow_insecure_http,
        image_cache=settings.image_cache.enabled,
    )


def _label(record: ResourceRecord) -> str:
    return f"{record.type}::{record.name}"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _document(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _statements(document: Any) -> list[dict[str, Any]]:
    return [s for s in _as_list(_document(document).get("Statement")) if isinstance(s, dict)]


class _Index:
    def __init__(self, records: Sequence[ResourceRecord]) -> None:
        self.records = records
        self.by_type: dict[str, list[ResourceRecord]] = {}
        for record in records:
            self.by_type.setdefault(record.type, []).append(record)

    def of(self, *types: str) -> list[ResourceRecord]:
        return [record for type_ in types for record in self.by_type.get(type_, [])]

    def for_bucket(self, type_: str, bucket_id: str) -> list[ResourceRecord]:
        return [record for record in self.of(type_) if record.inputs.get("bucket") == bucket_id]


Rule = Callable[[_Index, PolicyContext], Iterator[Violation]]
RULES: list[tuple[str, Rule]] = []


def rule(name: str) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        RULES.append((name, function))
        return function

    return register


@rule("s3-bucket-hardening")
def _buckets(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for bucket in index.of(BUCKET):
        label = _label(bucket)
        if bucket.inputs.get("acl") not in (None, "private"):
            yield Violation("s3-bucket-hardening", label, f"bucket ACL {bucket.inputs['acl']!r}")
        encryption = index.for_bucket(BUCKET_ENCRYPTION, bucket.id)
        algorithms = {
            rule_.get("applyServerSideEncryptionByDefault", {}).get("sseAlgorithm")
            for config in encryption
            for rule_ in _as_list(config.inputs.get("rules"))
        }
        if not algorithms & {"AES256", "aws:kms", "aws:kms:dsse"}:
            yield Violation("s3-bucket-hardening", label, "no default server-side encryption")
        blocks = index.for_bucket(BUCKET_PUBLIC_ACCESS, bucket.id)
        flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        if not any(all(block.inputs.get(flag) is True for flag in flags) for block in blocks):
            yield Violation("s3-bucket-hardening", label, "public access block missing or not all four set")
        ownership = index.for_bucket(BUCKET_OWNERSHIP, bucket.id)
        if not any(
            control.inputs.get("rule", {}).get("objectOwnership") == "BucketOwnerEnforced"
            for control in ownership
        ):
            yield Violation(
                "s3-bucket-hardening", label, "object ownership is not BucketOwnerEnforced (ACLs on)"
            )
        if not any(
            _denies_insecure_transport(policy.inputs.get("policy"))
            for policy in index.for_bucket(BUCKET_POLICY, bucket.id)
        ):
            yield Violation("s3-bucket-hardening", label, "no bucket policy denying non-TLS requests")
        for acl in index.of(*BUCKET_ACLS):
            if acl.inputs.get("bucket") == bucket.id:
                yield Violation("s3-bucket-hardening", label, "bucket ACL resource present")


def _denies_insecure_transport(document: Any) -> bool:
    return any(
        statement.get("Effect") == "Deny"
        and str(statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
        for statement in _statements(document)
    )


@rule("no-secrets-in-plain-config")
def _plain_secrets(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for record in index.of(BUCKET_OBJECT):
        if "PRIVATE KEY" in str(record.inputs.get("content", "")):
            yield Violation("no-secrets-in-plain-config", _label(record), "an S3 object holds a private key")
    for record in index.of(TASK_DEFINITION):
        for container in _containers(record):
            for variable in _as_list(container.get("environment")):
                if "PRIVATE KEY" in str(variable.get("value", "")):
                    yield Violation(
                        "no-secrets-in-plain-config",
                        _label(record),
                        f"container {container.get('name')}: {variable.get('name')} holds a private key",
                    )


def _ports(rule_inputs: Mapping[str, Any]) -> tuple[int, int, str]:
    protocol = str(rule_inputs.get("ipProtocol") or rule_inputs.get("protocol") or "tcp")
    if protocol in ("-1", "all"):
        return 0, 65535, protocol
    low = int(rule_inputs.get("fromPort", 0) or 0)
    high = int(rule_inputs.get("toPort", low) or low)
    return low, high, protocol


@rule("network-ingress")
def _ingress(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    public_groups: dict[str, set[int]] = {}
    for balancer in index.of(LOAD_BALANCER):
        if balancer.inputs.get("internal"):
            continue
        ports = {
            int(listener.inputs.get("port", 0))
            for listener in index.of(LISTENER)
            if listener.inputs.get("loadBalancerArn") == balancer.arn
        }
        for group in _as_list(balancer.inputs.get("securityGroups")):
            public_groups.setdefault(group, set()).update(ports)

    def check(
        label: str, group_id: Any, rule_inputs: Mapping[str, Any], cidrs: list[str]
    ) -> Iterator[Violation]:
        low, high, protocol = _ports(rule_inputs)
        for port in REMOTE_ADMIN_PORTS:
            if low <= port <= high:
                yield Violation(
                    "network-ingress", label, f"ingress opens port {port} (remote administration)"
                )
        if not cidrs:
            return
        allowed_ports = public_groups.get(str(group_id))
        if allowed_ports is None:
            yield Violation(
                "network-ingress", label, f"CIDR ingress {cidrs} on a group that is not a public ALB's"
            )
            return
        if protocol in ("-1", "all") or low != high or low not in allowed_ports:
            yield Violation(
                "network-ingress",
                label,
                f"CIDR ingress on ports {low}-{high}; only listener ports {sorted(allowed_ports)}",
            )
        for cidr in cidrs:
            if cidr not in context.allowed_ingress_cidrs:
                yield Violation(
                    "network-ingress", label, f"ingress from {cidr}, not in iotfactory:allowedCidrs"
                )

    for record in index.of(INGRESS_RULE):
        cidrs = [c for c in (record.inputs.get("cidrIpv4"), record.inputs.get("cidrIpv6")) if c]
        yield from check(_label(record), record.inputs.get("securityGroupId"), record.inputs, cidrs)
    for record in index.of(SECURITY_GROUP_RULE):
        if record.inputs.get("type") == "ingress":
            cidrs = _as_list(record.inputs.get("cidrBlocks")) + _as_list(record.inputs.get("ipv6CidrBlocks"))
            yield from check(_label(record), record.inputs.get("securityGroupId"), record.inputs, cidrs)
    for record in index.of(SECURITY_GROUP):
        for inline in _as_list(record.inputs.get("ingress")):
            cidrs = _as_list(inline.get("cidrBlocks")) + _as_list(inline.get("ipv6CidrBlocks"))
            yield from check(_label(record), record.id, inline, cidrs)


def _actions(statement: Mapping[str, Any]) -> list[str]:
    return [str(action) for action in _as_list(statement.get("Action"))]


@rule("iam-least-privilege")
def _iam(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    documents: list[tuple[ResourceRecord, Any]] = [
        (record, record.inputs.get("policy")) for record in index.of(*IAM_POLICY_TYPES, BUCKET_POLICY)
    ]
    for role in index.of(IAM_ROLE):
        documents += [(role, inline.get("policy")) for inline in _as_list(role.inputs.get("inlinePolicies"))]
        if role.inputs.get("managedPolicyArns"):
            yield Violation(
                "iam-least-privilege", _label(role), "managed policies attached; grant exact actions inline"
            )
    for attachment in index.of(*MANAGED_POLICY_ATTACHMENTS):
        yield Violation(
            "iam-least-privilege", _label(attachment), "managed policy attachment; grant exact actions inline"
        )
    for record, document in documents:
        for statement in _statements(document):
            if statement.get("Effect") != "Allow":
                continue  # Deny statements may be as broad as they like
            label = _label(record)
            if "NotAction" in statement or "NotResource" in statement:
                yield Violation("iam-least-privilege", label, "Allow with NotAction/NotResource")
            actions = _actions(statement)
            for action in actions:
                if "*" in action:
                    yield Violation("iam-least-privilege", label, f"wildcard action {action!r}")
            resources = [str(resource) for resource in _as_list(statement.get("Resource"))]
            if "*" in resources:
                unlisted = sorted(set(actions) - set(WILDCARD_RESOURCE_ACTIONS))
                if unlisted:
                    yield Violation(
                        "iam-least-privilege",
                        label,
                        f"Resource '*' for {unlisted} (not in WILDCARD_RESOURCE_ACTIONS)",
                    )
            principal = statement.get("Principal")
            if principal == "*" or (isinstance(principal, dict) and "*" in _as_list(principal.get("AWS"))):
                yield Violation("iam-least-privilege", label, "Allow to any principal ('*')")


@rule("iot-device-policy")
def _iot(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for record in index.of(IOT_POLICY):
        label = _label(record)
        for statement in _statements(record.inputs.get("policy")):
            if statement.get("Effect") != "Allow":
                continue
            actions = set(_actions(statement))
            if actions - IOT_DEVICE_ACTIONS:
                yield Violation(
                    "iot-device-policy", label, f"actions {sorted(actions - IOT_DEVICE_ACTIONS)} not allowed"
                )
            for resource in (str(item) for item in _as_list(statement.get("Resource"))):
                if resource == "*" or resource.endswith(":*"):
                    yield Violation("iot-device-policy", label, f"resource {resource!r} is a wildcard")
                if "iot:Connect" in actions and ":client/" not in resource:
                    yield Violation("iot-device-policy", label, f"Connect on {resource!r}, not a client ID")
                if "iot:Connect" in actions and resource.endswith(":client/*"):
                    yield Violation("iot-device-policy", label, "Connect with any client ID")
                if "iot:Publish" in actions and not _publishes_under(resource, context.topic_root):
                    yield Violation(
                        "iot-device-policy", label, f"Publish outside {context.topic_root}/: {resource!r}"
                    )


def _publishes_under(resource: str, topic_root: str) -> bool:
    """A topic ARN under the root, directly or through a rule's Basic Ingest topic ($aws/rules/<rule>/)."""
    topic = resource.split(":topic/", 1)[1] if ":topic/" in resource else ""
    return strip_basic_ingest(topic)[1].startswith(f"{topic_root}/")


@rule("log-retention")
def _logs(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    for record in index.of(LOG_GROUP):
        if not record.inputs.get("retentionInDays"):
            yield Violation(
                "log-retention", _label(record), "log group keeps logs forever (no retentionInDays)"
            )


@cache
def is_taggable(type_token: str) -> bool:
    """Whether an AWS resource type takes tags (its pulumi_aws class has `tags_all`)."""
    package, location, class_name = type_token.split(":")
    if package != "aws":
        return False
    module_name = location.split("/")[0]
    if keyword.iskeyword(module_name):
        module_name += "_"  # `aws:lambda/...` lives in pulumi_aws.lambda_
    module = importlib.import_module("pulumi_aws" if module_name == "index" else f"pulumi_aws.{module_name}")
    return hasattr(getattr(module, class_name, None), "tags_all")


@rule("tags")
def _tags(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    providers = {f"{record.urn}::{record.id}": record for record in index.of(AWS_PROVIDER)}
    for record in index.records:
        if not record.custom or not record.type.startswith("aws:"):
            continue
        provider = providers.get(record.provider or "")
        if provider is None:
            yield Violation(
                "tags",
                _label(record),
                "uses the default AWS provider (no default tags); pass the stack's provider",
            )
            continue
        if not is_taggable(record.type):
            continue
        # Provider inputs arrive JSON-encoded (that is how Pulumi passes provider config).
        default_tags = _document(provider.inputs.get("defaultTags") or {}).get("tags") or {}
        tags = {**default_tags, **(record.inputs.get("tags") or {})}
        missing = [key for key in context.required_tags if not tags.get(key)]
        if missing:
            yield Violation("tags", _label(record), f"missing tags {missing}")


def _containers(record: ResourceRecord) -> list[dict[str, Any]]:
    definitions = record.inputs.get("containerDefinitions")
    parsed = json.loads(definitions) if isinstance(definitions, str) else definitions
    return [container for container in _as_list(parsed) if isinstance(container, dict)]


# The rules for the workloads (images, tasks, discovery, load balancer, Firehose, SNS), for operating
# stacks side by side in one account, and the analytics rule (the Athena workgroup) register
# themselves on import, in this order. Run as `python -m infra.policy`, this file is `__main__`:
# importing `infra.policy` first makes them register there, in the same order (see the end).
import infra.policy  # noqa: E402,F401,I001 (registration order is rule order)
from infra import policy_workloads  # noqa: E402,F401
from infra import policy_analytics, policy_operations  # noqa: E402,F401


def check(records: Iterable[ResourceRecord], context: PolicyContext) -> list[Violation]:
    """Every violation of every rule, in rule order."""
    index = _Index(list(records))
    return [violation for _, function in RULES for violation in function(index, context)]


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m infra.policy", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stack",
        required=True,
        action="append",
        help="dev, prod, ... (reads Pulumi.<stack>.yaml); give it twice to also check isolation between them",
    )
    parser.add_argument("--json", action="store_true", help="print the violations as JSON")
    args = parser.parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width
    stacks = list(dict.fromkeys(args.stack))
    runs: dict[str, list[ResourceRecord]] = {}
    violations: list[Violation] = []
    for stack in stacks:
        checked = _check_stack(stack, console, in_process=len(stacks) == 1)
        if isinstance(checked, int):
            return checked
        runs[stack], found = checked
        violations += found
    if len(stacks) > 1:
        violations += policy_operations.isolation_violations(runs)
    if args.json:
        print(json.dumps([violation.__dict__ for violation in violations], indent=2))
    else:
        for violation in violations:
            console.print(str(violation), markup=False)
        checked_count = sum(len(records) for records in runs.values())
        console.print(f"{checked_count} resources checked, {len(violations)} violations", markup=False)
    return 1 if violations else 0


def _check_stack(
    stack: str, console: Any, *, in_process: bool
) -> tuple[list[ResourceRecord], list[Violation]] | int:
    """One stack's records and violations, or the exit code of a config error (already printed)."""
    import pulumi

    from factory_core.errors import UsageError
    from infra.offline import config_from_stack_file, run_offline, run_offline_in_subprocess
    from infra.settings import load_settings

    path = Path(__file__).resolve().parent.parent / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        console.print(
            f"error: no {path.name}; stacks are defined by Pulumi.<stack>.yaml at the repository root"
        )
        return 2
    try:
        config = config_from_stack_file(path)
        settings = load_settings(stack, config)
        # Pulumi's runtime is process-global: one program per process, so several stacks need several.
        run = run_offline(stack, config) if in_process else run_offline_in_subprocess(stack, config)
    except UsageError as exc:  # ConfigError, or a stack file that cannot be read
        console.print(f"error: {exc}", markup=False)
        return 2
    except pulumi.RunError as exc:  # e.g. a missing config bundle
        console.print(f"error: {str(exc).splitlines()[0]}", markup=False)
        return 2
    return run.records, check(run.records, policy_context(settings))


# The hardening rules (web ACL, EFS, secret rotation) live in their own module; importing it registers them.
from infra import policy_hardening  # noqa: E402,F401

if __name__ == "__main__":
    # Run as `python -m infra.policy`, this file is `__main__`, and the import above registered the
    # hardening rules with `infra.policy` (a second copy): run that module's main, whose pack has them.
    from infra.policy import main as _main

    sys.exit(_main())
