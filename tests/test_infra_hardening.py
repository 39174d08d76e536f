"""Issue 14's hardening under Pulumi mocks: the web ACL, monitoring history on EFS, secret rotation and
Basic Ingest, as the program declares them, and the policy-pack rules that hold them in place."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from infra_mocks import RUNS, containers, environment, offline_run, one, policy_document, prefetch

from infra import policy
from infra.components.waf import MANAGED_RULE_GROUPS
from infra.offline import OfflineRun, ResourceRecord
from infra.policy import PolicyContext, check
from infra.settings import load_settings

WEB_ACL = "aws:wafv2/webAcl:WebAcl"
FILE_SYSTEM = "aws:efs/fileSystem:FileSystem"
ACCESS_POINT = "aws:efs/accessPoint:AccessPoint"
MOUNT_TARGET = "aws:efs/mountTarget:MountTarget"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
ROTATION = "aws:secretsmanager/secretRotation:SecretRotation"
FUNCTION = "aws:lambda/function:Function"
PERMISSION = "aws:lambda/permission:Permission"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
BASIC_INGEST_RULE = "iotfactory_dev_archive"


@pytest.fixture(scope="module", autouse=True)
def _start_runs() -> None:
    prefetch("dev", "prod", "dev-hardened")


def context_of(name: str) -> PolicyContext:
    spec = RUNS[name]
    settings = load_settings(spec.stack, spec.config)
    return PolicyContext(allowed_ingress_cidrs=settings.allowed_cidrs, production=settings.production)


def rules_broken(run: OfflineRun, name: str, records: list[ResourceRecord]) -> set[tuple[str, str]]:
    return {(v.rule, v.message) for v in check(records, context_of(name))}


def swapped(run: OfflineRun, record: ResourceRecord, **inputs: Any) -> list[ResourceRecord]:
    """The run's records with one record's inputs changed."""
    changed = replace(record, inputs={**record.inputs, **inputs})
    return [changed if item is record else item for item in run.records]


def without(run: OfflineRun, *types: str) -> list[ResourceRecord]:
    return [record for record in run.records if record.type not in types]


def monitoring_task(run: OfflineRun) -> ResourceRecord:
    return one(run, TASK_DEFINITION, "monitoring")


# --- web ACL ---------------------------------------------------------------------------------------


def test_prod_alb_has_the_managed_groups_a_rate_limit_and_logs() -> None:
    run = offline_run("prod")
    acl = one(run, WEB_ACL)
    assert acl.inputs["scope"] == "REGIONAL" and acl.inputs["defaultAction"] == {"allow": {}}
    rules = sorted(acl.inputs["rules"], key=lambda item: item["priority"])
    managed = [item["statement"]["managedRuleGroupStatement"] for item in rules[:3]]
    assert [group["name"] for group in managed] == list(MANAGED_RULE_GROUPS)
    assert all(item["overrideAction"] == {"none": {}} for item in rules[:3])
    # Grafana's API bodies are larger than the common rule set's 8 KB: that one rule only counts.
    assert managed[2]["ruleActionOverrides"] == [
        {"name": "SizeRestrictions_BODY", "actionToUse": {"count": {}}}
    ]
    rate = rules[3]
    assert rate["action"] == {"block": {}}
    assert rate["statement"]["rateBasedStatement"] == {
        "limit": 3000,  # Pulumi.prod.yaml
        "aggregateKeyType": "IP",
        "evaluationWindowSec": 300,
    }
    association = one(run, "aws:wafv2/webAclAssociation:WebAclAssociation")
    assert association.inputs == {
        "resourceArn": one(run, "aws:lb/loadBalancer:LoadBalancer").arn,
        "webAclArn": acl.arn,
    }
    logging = one(run, "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    log_group = one(run, "aws:cloudwatch/logGroup:LogGroup", "waf-logs")
    assert log_group.inputs["name"] == "aws-waf-logs-iotfactory-prod"
    assert log_group.inputs["retentionInDays"] == 30
    assert logging.inputs["logDestinationConfigs"] == [log_group.arn]
    assert {field["singleHeader"]["name"] for field in logging.inputs["redactedFields"]} == {
        "authorization",
        "cookie",
    }
    delivery = policy_document(
        one(run, "aws:cloudwatch/logResourcePolicy:LogResourcePolicy"), "policyDocument"
    )
    (statement,) = delivery["Statement"]
    assert statement["Principal"] == {"Service": "delivery.logs.amazonaws.com"}
    assert statement["Resource"] == [f"{log_group.arn}:*"]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}
    assert run.outputs["webAclArn"] == acl.arn


def test_dev_has_a_web_acl_only_when_its_config_asks() -> None:
    assert not offline_run("dev").of_type(WEB_ACL) and offline_run("dev").outputs["webAclArn"] is None
    hardened = one(offline_run("dev-hardened"), WEB_ACL)
    rate = next(item for item in hardened.inputs["rules"] if "rateBasedStatement" in item["statement"])
    assert rate["statement"]["rateBasedStatement"]["limit"] == 500


def test_the_waf_rule_catches_a_missing_acl_a_counting_group_and_missing_logs() -> None:
    run = offline_run("prod")
    assert check(run.records, context_of("prod")) == []
    no_acl = without(run, "aws:wafv2/webAclAssociation:WebAclAssociation")
    assert ("web-application-firewall", "public ALB without a web ACL") in rules_broken(run, "prod", no_acl)
    acl = one(run, WEB_ACL)
    counting = [
        dict(item, overrideAction={"count": {}}) if item["priority"] == 0 else item
        for item in acl.inputs["rules"]
    ]
    found = rules_broken(run, "prod", swapped(run, acl, rules=counting))
    assert ("web-application-firewall", f"managed rule group {MANAGED_RULE_GROUPS[0]} only counts") in found
    no_rate = [item for item in acl.inputs["rules"] if "rateBasedStatement" not in item["statement"]]
    assert ("web-application-firewall", "no blocking rate-based rule") in rules_broken(
        run, "prod", swapped(run, acl, rules=no_rate)
    )
    unlogged = without(run, "aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    assert any("not logging" in message for _, message in rules_broken(run, "prod", unlogged))
    # dev may go without one: the rule asks for a web ACL in production only.
    assert check(offline_run("dev").records, context_of("dev")) == []


# --- monitoring history on EFS -----------------------------------------------------------------------


def test_history_file_system_is_encrypted_backed_up_in_prod_and_reachable_only_from_monitoring() -> None:
    prod, dev = offline_run("prod"), offline_run("dev")
    system = one(prod, FILE_SYSTEM)
    key = one(prod, "aws:kms/key:Key", "monitoring-history")
    assert system.inputs["encrypted"] is True and system.inputs["kmsKeyId"] == key.arn
    assert key.inputs["enableKeyRotation"] is True
    backups = {
        run.stack: one(run, "aws:efs/backupPolicy:BackupPolicy").inputs["backupPolicy"] for run in (prod, dev)
    }
    assert backups == {"prod": {"status": "ENABLED"}, "dev": {"status": "DISABLED"}}
    # One mount target per task subnet (prod: the private ones), behind the NFS group.
    nfs_group = one(prod, "aws:ec2/securityGroup:SecurityGroup", "nfs")
    targets = prod.of_type(MOUNT_TARGET)
    task_subnets = one(prod, SERVICE, "monitoring").inputs["networkConfiguration"]["subnets"]
    assert len(targets) == 2 and all(t.inputs["securityGroups"] == [nfs_group.id] for t in targets)
    assert sorted(t.inputs["subnetId"] for t in targets) == sorted(task_subnets)
    monitoring_group = one(prod, "aws:ec2/securityGroup:SecurityGroup", "firewall-monitoring").id
    ingress = [
        r.inputs
        for r in prod.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs["securityGroupId"] == nfs_group.id
    ]
    assert ingress == [
        {
            "securityGroupId": nfs_group.id,
            "referencedSecurityGroupId": monitoring_group,
            "ipProtocol": "tcp",
            "fromPort": 2049,
            "toPort": 2049,
            "description": "NFS 2049 from the monitoring task",
        }
    ]


def test_access_points_enforce_each_containers_user_and_directory() -> None:
    run = offline_run("prod")
    points = {p.name.rsplit("-", 2)[-2]: p.inputs for p in run.of_type(ACCESS_POINT)}
    assert points["prometheus"]["posixUser"] == {"uid": 65534, "gid": 65534}
    assert points["grafana"]["posixUser"] == {"uid": 472, "gid": 0}
    assert points["prometheus"]["rootDirectory"]["path"] == "/prometheus"
    assert points["grafana"]["rootDirectory"] == {
        "path": "/grafana",
        "creationInfo": {"ownerUid": 472, "ownerGid": 0, "permissions": "0750"},
    }
    task = containers(monitoring_task(run))
    # The containers run as the users the access points enforce.
    assert task["prometheus"]["user"] == "65534:65534" and task["grafana"]["user"] == "472:0"


def test_only_the_monitoring_task_role_mounts_it_through_the_access_points_over_tls() -> None:
    run = offline_run("prod")
    document = policy_document(one(run, "aws:efs/fileSystemPolicy:FileSystemPolicy"))
    deny, allow = document["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert allow["Principal"] == {"AWS": monitoring_task(run).inputs["taskRoleArn"]}
    assert allow["Action"] == ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    assert sorted(allow["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]) == sorted(
        p.arn for p in run.of_type(ACCESS_POINT)
    )
    volumes = {v["name"]: v for v in monitoring_task(run).inputs["volumes"]}
    access_points = {p.name.removeprefix("monitoring-history-"): p.id for p in run.of_type(ACCESS_POINT)}
    for name in ("prometheus-data", "grafana-data"):
        assert volumes[name]["efsVolumeConfiguration"] == {
            "fileSystemId": one(run, FILE_SYSTEM).id,
            "transitEncryption": "ENABLED",
            "authorizationConfig": {"accessPointId": access_points[name], "iam": "ENABLED"},
        }


def test_on_efs_one_task_at_a_time_prometheus_without_lock_file_and_no_chown() -> None:
    efs, plain = offline_run("prod"), offline_run("dev-hardened")
    for run, on_efs in ((efs, True), (plain, False)):
        service = one(run, SERVICE, "monitoring")
        expected = (0, 100) if on_efs else (100, 200)
        assert (
            service.inputs["deploymentMinimumHealthyPercent"],
            service.inputs["deploymentMaximumPercent"],
        ) == expected
        task = containers(monitoring_task(run))
        assert ("--storage.tsdb.no-lockfile" in task["prometheus"]["command"]) is on_efs
        init = task["config-init"]
        assert ("/mnt/prometheus-data" in init["command"][0]) is not on_efs  # no chown of EFS data
        init_mounts = {m["sourceVolume"] for m in init["mountPoints"]}
        assert ("prometheus-data" in init_mounts) is not on_efs
    assert not plain.of_type(FILE_SYSTEM) and plain.outputs["monitoringHistoryFileSystemId"] is None


def test_grafana_sets_its_admin_password_from_the_secret_at_every_start() -> None:
    grafana = containers(monitoring_task(offline_run("prod")))["grafana"]
    assert grafana["entryPoint"] == ["/bin/sh", "-c"]
    (script,) = grafana["command"]
    assert "reset-admin-password --password-from-stdin" in script and script.endswith("exec /run.sh")
    assert 'printf %s "$GF_SECURITY_ADMIN_PASSWORD" |' in script  # stdin, never an argument
    assert {
        "name": "GF_SECURITY_ADMIN_PASSWORD",
        "valueFrom": one(offline_run("prod"), "aws:secretsmanager/secret:Secret", "grafana-admin").arn,
    } in grafana["secrets"]


@pytest.mark.parametrize(
    ("type_", "change", "message"),
    [
        (FILE_SYSTEM, {"encrypted": False}, "file system not encrypted with a KMS key"),
        (ACCESS_POINT, {"posixUser": {"uid": 0, "gid": 0}}, "access point does not enforce a non-root user"),
        (ACCESS_POINT, {"rootDirectory": {"path": "/"}}, "access point is not confined to its own directory"),
        (
            "aws:efs/backupPolicy:BackupPolicy",
            {"backupPolicy": {"status": "DISABLED"}},
            "production file system without backups",
        ),
    ],
)
def test_the_efs_rule_catches_each_weakening(type_: str, change: dict[str, Any], message: str) -> None:
    run = offline_run("prod")
    record = run.of_type(type_)[0]
    assert ("efs-encryption-and-access", message) in rules_broken(run, "prod", swapped(run, record, **change))


def test_the_efs_rule_catches_open_policies_open_mounts_and_two_writers() -> None:
    run = offline_run("prod")
    broken = rules_broken(run, "prod", without(run, "aws:efs/fileSystemPolicy:FileSystemPolicy"))
    assert (
        "efs-encryption-and-access",
        "no file system policy (any client in the VPC may mount it)",
    ) in broken
    fs_policy = one(run, "aws:efs/fileSystemPolicy:FileSystemPolicy")
    document = policy_document(fs_policy)
    open_allow = {**document["Statement"][1], "Principal": {"AWS": "*"}, "Condition": {}}
    broken = rules_broken(
        run, "prod", swapped(run, fs_policy, policy=json.dumps({"Statement": [open_allow]}))
    )
    assert {m for r, m in broken if r == "efs-encryption-and-access"} >= {
        "policy does not deny access without TLS",
        "policy allows any principal",
        "policy allows access without an access point",
    }
    nfs_in = next(
        r
        for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs.get("fromPort") == 2049
    )
    wide = swapped(run, nfs_in, referencedSecurityGroupId=None, cidrIpv4="10.0.0.0/8")
    assert any("mount target admits more than NFS" in m for _, m in rules_broken(run, "prod", wide))
    task = monitoring_task(run)
    clear = [
        dict(v, efsVolumeConfiguration={**v["efsVolumeConfiguration"], "transitEncryption": "DISABLED"})
        if "efsVolumeConfiguration" in v
        else v
        for v in task.inputs["volumes"]
    ]
    assert ("efs-encryption-and-access", "EFS volume without TLS in transit") in rules_broken(
        run, "prod", swapped(run, task, volumes=clear)
    )
    overlapping = swapped(run, one(run, SERVICE, "monitoring"), deploymentMaximumPercent=200)
    assert any("two writers on one database" in m for _, m in rules_broken(run, "prod", overlapping))


# --- secret rotation ---------------------------------------------------------------------------------


def rotation_grants(run: OfflineRun, kind: str) -> dict[str, list[str]]:
    function = one(run, FUNCTION, f"rotation-{kind}")
    role_id = next(r.id for r in run.of_type("aws:iam/role:Role") if r.arn == function.inputs["role"])
    return {
        action: statement["Resource"]
        for policy_record in run.of_type(ROLE_POLICY)
        if policy_record.inputs["role"] == role_id
        for statement in policy_document(policy_record)["Statement"]
        for action in statement["Action"]
    }


def test_each_secret_has_its_own_function_scoped_to_it_on_the_configured_schedule() -> None:
    run = offline_run("prod")
    admin_secret = one(run, "aws:secretsmanager/secret:Secret", "grafana-admin").arn
    smtp_secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:iotfactory/prod/smtp-AbCdEf"
    service = "arn:aws:ecs:eu-west-1:123456789012:service/iotfactory-prod/monitoring"
    for kind, secret in (("grafana-admin", admin_secret), ("ses-smtp", smtp_secret)):
        rotation = one(run, ROTATION, f"rotation-{kind}")
        function = one(run, FUNCTION, f"rotation-{kind}")
        assert rotation.inputs["secretId"] == secret
        assert rotation.inputs["rotationLambdaArn"] == function.arn
        assert rotation.inputs["rotationRules"] == {"scheduleExpression": "rate(30 days)"}
        assert rotation.inputs["rotateImmediately"] is False
        assert (
            function.inputs["runtime"] == "python3.12"
            and function.inputs["handler"] == "handler.lambda_handler"
        )
        variables = function.inputs["environment"]["variables"]
        assert variables["ROTATION_KIND"] == kind
        assert (variables["MONITORING_CLUSTER"], variables["MONITORING_SERVICE"]) == (
            "iotfactory-prod",
            "monitoring",
        )
        grants = rotation_grants(run, kind)
        for action in ("DescribeSecret", "GetSecretValue", "PutSecretValue", "UpdateSecretVersionStage"):
            assert grants.pop(f"secretsmanager:{action}") == [secret]
        assert grants.pop("ecs:UpdateService") == [service]
        assert {grants.pop("logs:CreateLogStream")[0], grants.pop("logs:PutLogEvents")[0]} == {
            f"arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/iotfactory-prod-rotate-{kind}:*"
        }
        if kind == "ses-smtp":
            assert (
                variables["SES_IAM_USER"] == "iotfactory-prod-ses-smtp"
                and variables["SES_REGION"] == "eu-west-1"
            )
            user = "arn:aws:iam::123456789012:user/iotfactory-prod-ses-smtp"
            for action in ("CreateAccessKey", "DeleteAccessKey", "ListAccessKeys"):
                assert grants.pop(f"iam:{action}") == [user]
        assert grants == {}
        invoke = one(run, PERMISSION, f"rotation-{kind}")
        assert (
            invoke.inputs["principal"] == "secretsmanager.amazonaws.com"
            and invoke.inputs["sourceArn"] == secret
        )


def test_dev_rotates_grafana_only_and_rotation_can_be_turned_off() -> None:
    assert offline_run("dev").outputs["secretRotationFunctions"] == {
        "grafana-admin": "iotfactory-dev-rotate-grafana-admin"
    }
    assert not offline_run("dev-hardened").of_type(ROTATION)


def test_the_rotation_rule_catches_a_role_reaching_other_secrets_and_an_unscoped_invoke() -> None:
    run = offline_run("prod")
    function = one(run, FUNCTION, "rotation-grafana-admin")
    role_id = next(r.id for r in run.of_type("aws:iam/role:Role") if r.arn == function.inputs["role"])
    role_policy = next(p for p in run.of_type(ROLE_POLICY) if p.inputs["role"] == role_id)
    document = policy_document(role_policy)
    document["Statement"][0]["Resource"] = ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:other"]
    broken = rules_broken(run, "prod", swapped(run, role_policy, policy=json.dumps(document)))
    assert any(r == "secret-rotation" and "reaches secrets other than" in m for r, m in broken)
    invoke = one(run, PERMISSION, "rotation-grafana-admin")
    broken = rules_broken(run, "prod", swapped(run, invoke, sourceArn=None))
    assert ("secret-rotation", "Secrets Manager may invoke the function for other secrets") in broken


# --- Basic Ingest --------------------------------------------------------------------------------------


def test_basic_ingest_devices_may_publish_only_to_the_rules_topic() -> None:
    run = offline_run("dev-hardened")
    (iot_policy,) = run.of_type("aws:iot/policy:Policy")
    publish = next(s for s in policy_document(iot_policy)["Statement"] if s["Action"] == ["iot:Publish"])
    # Behind the rule's prefix, in the stack's own topic namespace (factory/simulator/<stack>).
    prefix = f"arn:aws:iot:eu-west-1:123456789012:topic/$aws/rules/{BASIC_INGEST_RULE}/factory/simulator/dev"
    assert publish["Resource"] == [f"{prefix}/site-00/*", f"{prefix}/ground-truth/site-00/*"]
    rule = one(run, "aws:iot/topicRule:TopicRule")
    assert (
        rule.inputs["name"] == BASIC_INGEST_RULE
        and rule.inputs["sql"] == "SELECT * FROM 'factory/simulator/dev/#'"
    )
    assert rule.inputs.get("firehoses"), "Basic Ingest archives through Firehose, like batched"
    simulator = containers(one(run, TASK_DEFINITION, "site-00"))["simulator"]
    assert environment(simulator)["FACTORY_TOPIC_PREFIX"] == f"$aws/rules/{BASIC_INGEST_RULE}/"
    assert check(run.records, context_of("dev-hardened")) == []
    # Any other mode keeps its task definitions as they were: no prefix variable at all.
    dev_simulator = containers(one(offline_run("dev"), TASK_DEFINITION, "site-00"))["simulator"]
    assert "FACTORY_TOPIC_PREFIX" not in environment(dev_simulator)


def test_the_iot_rule_still_refuses_topics_outside_the_root_behind_a_basic_ingest_prefix() -> None:
    run = offline_run("dev-hardened")
    (iot_policy,) = run.of_type("aws:iot/policy:Policy")
    document = policy_document(iot_policy)
    publish = next(s for s in document["Statement"] if s["Action"] == ["iot:Publish"])
    publish["Resource"] = [f"arn:aws:iot:eu-west-1:123456789012:topic/$aws/rules/{BASIC_INGEST_RULE}/other/*"]
    broken = rules_broken(run, "dev-hardened", swapped(run, iot_policy, policy=json.dumps(document)))
    assert any(r == "iot-device-policy" and "Publish outside factory/simulator/" in m for r, m in broken)


def test_the_policy_command_runs_the_hardening_rules_too() -> None:
    names = [name for name, _ in policy.RULES]
    assert {"web-application-firewall", "efs-encryption-and-access", "secret-rotation"} <= set(names)


def test_basic_ingest_archives_are_queried_where_firehose_writes() -> None:
    """Basic Ingest archives through Firehose like batched: Athena's table reads raw/, by the hour."""
    from factory_core import archive_views

    run = offline_run("dev-hardened")
    table = next(
        record
        for record in run.of_type("aws:glue/catalogTable:CatalogTable")
        if record.inputs.get("name") == archive_views.BASE_RELATION
    )
    assert table.inputs["storageDescriptor"]["location"].endswith("/raw/")
    assert [key["name"] for key in table.inputs["partitionKeys"]] == ["year", "month", "day", "hour"]
