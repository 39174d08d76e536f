"""Policy-pack rules for the production hardening: the web ACL, monitoring history on EFS, secret rotation.

Registered into `infra.policy`'s pack on import (that module imports this one), and like every rule
there they look at resource types, so a web ACL, file system or rotation added later is checked too.

- `web-application-firewall`: in production every public ALB has a web ACL; every web ACL runs the
  three AWS managed groups (not merely counting) and a blocking rate-based rule, and logs to an
  `aws-waf-logs-*` log group with a retention.
- `efs-encryption-and-access`: file systems encrypted with a KMS key, under a policy that denies
  non-TLS access and admits named principals only through access points; access points enforce a
  non-root user and their own directory; mount targets admit only NFS from security groups; tasks
  mount with TLS and IAM; a service that mounts EFS runs one task at a time; production: backups on.
- `secret-rotation`: every rotation has a schedule and a function of the program whose role may touch
  the rotated secret only, and which Secrets Manager may invoke for that secret only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from infra.components.monitoring_history import NFS_PORT
from infra.components.waf import MANAGED_RULE_GROUPS, WAF_LOG_GROUP_PREFIX
from infra.offline import ResourceRecord
from infra.policy import (
    ECS_SERVICE,
    INGRESS_RULE,
    LOAD_BALANCER,
    LOG_GROUP,
    SECURITY_GROUP,
    TASK_DEFINITION,
    PolicyContext,
    Violation,
    _as_list,
    _Index,
    _label,
    _statements,
    rule,
)

WEB_ACL = "aws:wafv2/webAcl:WebAcl"
WEB_ACL_ASSOCIATION = "aws:wafv2/webAclAssociation:WebAclAssociation"
WEB_ACL_LOGGING = "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration"
FILE_SYSTEM = "aws:efs/fileSystem:FileSystem"
FILE_SYSTEM_POLICY = "aws:efs/fileSystemPolicy:FileSystemPolicy"
ACCESS_POINT = "aws:efs/accessPoint:AccessPoint"
MOUNT_TARGET = "aws:efs/mountTarget:MountTarget"
BACKUP_POLICY = "aws:efs/backupPolicy:BackupPolicy"
SECRET_ROTATION = "aws:secretsmanager/secretRotation:SecretRotation"
LAMBDA_FUNCTION = "aws:lambda/function:Function"
LAMBDA_PERMISSION = "aws:lambda/permission:Permission"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
IAM_ROLE = "aws:iam/role:Role"
SECRETS_MANAGER = "secretsmanager.amazonaws.com"


# --- web ACL ----------------------------------------------------------------------------------------


def _managed_groups(acl: ResourceRecord) -> dict[str, dict[str, Any]]:
    groups = {}
    for item in _as_list(acl.inputs.get("rules")):
        statement = (item.get("statement") or {}).get("managedRuleGroupStatement")
        if statement and statement.get("vendorName") == "AWS":
            groups[str(statement.get("name"))] = item
    return groups


def _blocking_rate_rule(acl: ResourceRecord) -> bool:
    return any(
        (item.get("statement") or {}).get("rateBasedStatement") and "block" in (item.get("action") or {})
        for item in _as_list(acl.inputs.get("rules"))
    )


@rule("web-application-firewall")
def _waf(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    associated = {record.inputs.get("resourceArn") for record in index.of(WEB_ACL_ASSOCIATION)}
    if context.production:
        for balancer in index.of(LOAD_BALANCER):
            if not balancer.inputs.get("internal") and balancer.arn not in associated:
                yield Violation("web-application-firewall", _label(balancer), "public ALB without a web ACL")
    log_groups = {record.arn: record for record in index.of(LOG_GROUP)}
    logging = {record.inputs.get("resourceArn"): record for record in index.of(WEB_ACL_LOGGING)}
    for acl in index.of(WEB_ACL):
        label = _label(acl)
        groups = _managed_groups(acl)
        for group in MANAGED_RULE_GROUPS:
            if group not in groups:
                yield Violation("web-application-firewall", label, f"managed rule group {group} missing")
            elif "count" in (groups[group].get("overrideAction") or {}):
                yield Violation("web-application-firewall", label, f"managed rule group {group} only counts")
        if not _blocking_rate_rule(acl):
            yield Violation("web-application-firewall", label, "no blocking rate-based rule")
        configuration = logging.get(acl.arn)
        destinations = _as_list(configuration.inputs.get("logDestinationConfigs")) if configuration else []
        targets = [log_groups.get(arn) for arn in destinations]
        if not targets or not all(
            target is not None
            and str(target.inputs.get("name", "")).startswith(WAF_LOG_GROUP_PREFIX)
            and target.inputs.get("retentionInDays")
            for target in targets
        ):
            yield Violation(
                "web-application-firewall",
                label,
                f"not logging to a {WAF_LOG_GROUP_PREFIX}* log group with a retention",
            )


# --- monitoring history (EFS) -----------------------------------------------------------------------


def _efs_volumes(task_definition: ResourceRecord) -> list[dict[str, Any]]:
    return [
        volume["efsVolumeConfiguration"]
        for volume in _as_list(task_definition.inputs.get("volumes"))
        if isinstance(volume, dict) and volume.get("efsVolumeConfiguration")
    ]


def _file_system_policy_problems(document: Any) -> list[str]:
    statements = _statements(document)
    problems = []
    if not any(
        s.get("Effect") == "Deny"
        and str((s.get("Condition") or {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
        for s in statements
    ):
        problems.append("policy does not deny access without TLS")
    for statement in (s for s in statements if s.get("Effect") == "Allow"):
        principal = statement.get("Principal")
        if principal == "*" or (isinstance(principal, dict) and "*" in _as_list(principal.get("AWS"))):
            problems.append("policy allows any principal")
        if "elasticfilesystem:AccessPointArn" not in str(statement.get("Condition") or {}):
            problems.append("policy allows access without an access point")
    return problems


def _nfs_only_from_groups(index: _Index, group_id: Any) -> bool:
    """The group's ingress: separate rules only, each NFS from another security group."""
    group = next((record for record in index.of(SECURITY_GROUP) if record.id == group_id), None)
    if group is not None and _as_list(group.inputs.get("ingress")):
        return False
    rules = [record for record in index.of(INGRESS_RULE) if record.inputs.get("securityGroupId") == group_id]
    return all(
        record.inputs.get("referencedSecurityGroupId")
        and not (record.inputs.get("cidrIpv4") or record.inputs.get("cidrIpv6"))
        and int(record.inputs.get("fromPort", -1)) == int(record.inputs.get("toPort", -2)) == NFS_PORT
        for record in rules
    )


@rule("efs-encryption-and-access")
def _efs(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    name = "efs-encryption-and-access"
    policies = {record.inputs.get("fileSystemId"): record for record in index.of(FILE_SYSTEM_POLICY)}
    backups = {record.inputs.get("fileSystemId"): record for record in index.of(BACKUP_POLICY)}
    for system in index.of(FILE_SYSTEM):
        label = _label(system)
        if system.inputs.get("encrypted") is not True or not system.inputs.get("kmsKeyId"):
            yield Violation(name, label, "file system not encrypted with a KMS key")
        policy = policies.get(system.id)
        if policy is None:
            yield Violation(name, label, "no file system policy (any client in the VPC may mount it)")
        else:
            for problem in _file_system_policy_problems(policy.inputs.get("policy")):
                yield Violation(name, label, problem)
        backup = (backups.get(system.id).inputs.get("backupPolicy") or {}) if backups.get(system.id) else {}
        if context.production and backup.get("status") != "ENABLED":
            yield Violation(name, label, "production file system without backups")
    for point in index.of(ACCESS_POINT):
        user = point.inputs.get("posixUser") or {}
        root = point.inputs.get("rootDirectory") or {}
        if not user or int(user.get("uid", 0)) == 0:
            yield Violation(name, _label(point), "access point does not enforce a non-root user")
        if root.get("path") in (None, "", "/") or not root.get("creationInfo"):
            yield Violation(name, _label(point), "access point is not confined to its own directory")
    for target in index.of(MOUNT_TARGET):
        groups = _as_list(target.inputs.get("securityGroups"))
        if not groups or not all(_nfs_only_from_groups(index, group) for group in groups):
            yield Violation(name, _label(target), f"mount target admits more than NFS {NFS_PORT} from groups")
    yield from _efs_tasks(index)


def _efs_tasks(index: _Index) -> Iterator[Violation]:
    name = "efs-encryption-and-access"
    on_efs = set()
    for task_definition in index.of(TASK_DEFINITION):
        volumes = _efs_volumes(task_definition)
        if volumes:
            on_efs.add(task_definition.arn)
        for volume in volumes:
            authorization = volume.get("authorizationConfig") or {}
            if volume.get("transitEncryption") != "ENABLED":
                yield Violation(name, _label(task_definition), "EFS volume without TLS in transit")
            if authorization.get("iam") != "ENABLED" or not authorization.get("accessPointId"):
                yield Violation(
                    name, _label(task_definition), "EFS volume not through an access point with IAM"
                )
    for service in index.of(ECS_SERVICE):
        if service.inputs.get("taskDefinition") not in on_efs:
            continue
        desired = int(service.inputs.get("desiredCount") or 0)
        maximum = int(service.inputs.get("deploymentMaximumPercent") or 200)
        if desired > 1 or desired * maximum > 100:
            yield Violation(
                name,
                _label(service),
                "a service on EFS may run two tasks at once (two writers on one database): "
                "desired count 1 and deploymentMaximumPercent 100",
            )


# --- secret rotation --------------------------------------------------------------------------------


def _role_statements(index: _Index, role_arn: Any) -> list[dict[str, Any]]:
    roles = [record for record in index.of(IAM_ROLE) if record.arn == role_arn]
    ids = {record.id for record in roles} | {record.inputs.get("name") for record in roles}
    return [
        statement
        for record in index.of(ROLE_POLICY)
        if record.inputs.get("role") in ids
        for statement in _statements(record.inputs.get("policy"))
    ]


@rule("secret-rotation")
def _rotation(index: _Index, context: PolicyContext) -> Iterator[Violation]:
    name = "secret-rotation"
    functions = {record.arn: record for record in index.of(LAMBDA_FUNCTION)}
    for rotation in index.of(SECRET_ROTATION):
        label = _label(rotation)
        secret = rotation.inputs.get("secretId")
        schedule = rotation.inputs.get("rotationRules") or {}
        if not (schedule.get("scheduleExpression") or schedule.get("automaticallyAfterDays")):
            yield Violation(name, label, "rotation without a schedule")
        function = functions.get(rotation.inputs.get("rotationLambdaArn"))
        if function is None:
            yield Violation(name, label, "rotation function is not part of the program")
            continue
        for statement in _role_statements(index, function.inputs.get("role")):
            touches_secrets = any(
                action.startswith("secretsmanager:") for action in _as_list(statement.get("Action"))
            )
            if touches_secrets and _as_list(statement.get("Resource")) != [secret]:
                yield Violation(name, label, f"function role reaches secrets other than {secret}")
        invokers = [
            permission
            for permission in index.of(LAMBDA_PERMISSION)
            if permission.inputs.get("principal") == SECRETS_MANAGER
            and permission.inputs.get("function") in (function.inputs.get("name"), function.arn)
        ]
        if not invokers or any(permission.inputs.get("sourceArn") != secret for permission in invokers):
            yield Violation(name, label, "Secrets Manager may invoke the function for other secrets")
