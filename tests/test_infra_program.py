"""The Pulumi program under mocks: the properties that matter, asserted on the resolved inputs.

Each stack runs once in its own process (tests/infra_mocks.py); dev is the stack file with 2
simulators, prod the stack file with 3 simulators, HTTPS, and certificate generation g1 retired
for g2 (a rotation in progress).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from infra_mocks import (
    ALLOWED_CIDR_DEV,
    LARGE_FLEET,
    RUNS,
    TEST_CERTIFICATE_ARN,
    TEST_DOMAIN,
    containers,
    environment,
    offline_run,
    one,
    policy_document,
    prefetch,
)

from factory_core.fleet import FleetSettings
from infra.components.monitoring import bundle_sha256
from infra.iam import WILDCARD_RESOURCE_ACTIONS
from infra.offline import OfflineRun, ResourceRecord
from infra.policy import PolicyContext, check, is_taggable
from infra.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS = ("dev", "prod")
SIMULATORS = {"dev": 2, "prod": 3}

BUCKET = "aws:s3/bucket:Bucket"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LISTENER = "aws:lb/listener:Listener"
LISTENER_RULE = "aws:lb/listenerRule:ListenerRule"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
CERTIFICATE = "aws:iot/certificate:Certificate"
SECRET = "aws:secretsmanager/secret:Secret"
DISCOVERY = "aws:servicediscovery/service:Service"
NAMESPACE = "aws:servicediscovery/privateDnsNamespace:PrivateDnsNamespace"
BUCKET_OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"


@pytest.fixture(scope="module", autouse=True)
def _start_runs() -> None:
    prefetch(*STACKS, "dev-large", "real-bundle")


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def run(stack: str) -> OfflineRun:
    return offline_run(stack)


@pytest.fixture(scope="module")
def dev() -> OfflineRun:
    return offline_run("dev")


@pytest.fixture(scope="module")
def prod() -> OfflineRun:
    return offline_run("prod")


def by_arn(run: OfflineRun) -> dict[str, ResourceRecord]:
    return {record.arn: record for record in run.records if record.arn}


def by_id(run: OfflineRun, type_token: str) -> dict[str, ResourceRecord]:
    return {record.id: record for record in run.of_type(type_token)}


def settings_of(stack: str):  # the settings the run was made with
    return load_settings(RUNS[stack].stack, RUNS[stack].config)


def statements(record: ResourceRecord, key: str = "policy") -> list[dict]:
    statement = policy_document(record, key)["Statement"]
    return statement if isinstance(statement, list) else [statement]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# --- shape ------------------------------------------------------------------------------------


def test_components_carry_project_type_tokens_and_parent_every_resource(run: OfflineRun) -> None:
    components = [record for record in run.records if not record.custom]
    modules = {path.stem for path in (REPO_ROOT / "infra" / "components").glob("*.py")}
    for component in components:
        project, module, name = component.type.split(":")
        assert project == "iotfactory" and module in modules and name[0].isupper(), component.type
    for record in run.records:
        if record.type == "pulumi:providers:aws" or not record.custom:
            assert record.parent_type in ("pulumi:pulumi:Stack", *(c.type for c in components)), record.name
            continue
        assert record.parent_type and record.parent_type.startswith("iotfactory:"), (
            f"{record.type} {record.name} is not parented to a component (parent {record.parent})"
        )


def test_every_aws_resource_uses_the_stack_provider_with_default_tags(run: OfflineRun, stack: str) -> None:
    provider = one(run, "pulumi:providers:aws")
    tags = json.loads(provider.inputs["defaultTags"])["tags"]
    settings = settings_of(stack)
    assert tags == {"Project": "iotfactory", "Environment": stack, "Owner": settings.owner}
    assert provider.inputs["region"] == settings.region
    reference = f"{provider.urn}::{provider.id}"
    aws_resources = [record for record in run.records if record.custom and record.type.startswith("aws:")]
    assert aws_resources and all(record.provider == reference for record in aws_resources)
    taggable = [record for record in aws_resources if is_taggable(record.type)]
    assert len(taggable) > 40  # buckets, roles, groups, services, log groups, ...
    for record in taggable:  # explicit tags may add to the defaults, never replace them
        assert not set(record.inputs.get("tags") or {}) & set(tags), record.name


# --- network ------------------------------------------------------------------------------------


def test_vpc_has_dns_and_public_subnets_in_two_zones(run: OfflineRun) -> None:
    vpc = one(run, "aws:ec2/vpc:Vpc")
    assert vpc.inputs["enableDnsHostnames"] is True and vpc.inputs["enableDnsSupport"] is True
    public = [s for s in run.of_type("aws:ec2/subnet:Subnet") if s.inputs["tags"]["Tier"] == "public"]
    assert len(public) >= 2
    assert len({subnet.inputs["availabilityZone"] for subnet in public}) == len(public)
    assert all(subnet.inputs["mapPublicIpOnLaunch"] is False for subnet in public)
    default_group = one(run, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert not default_group.inputs.get("ingress") and not default_group.inputs.get("egress")


def test_dev_tasks_run_in_public_subnets_prod_in_private_subnets_behind_nat(
    dev: OfflineRun, prod: OfflineRun
) -> None:
    assert not dev.of_type("aws:ec2/natGateway:NatGateway")
    nats = prod.of_type("aws:ec2/natGateway:NatGateway")
    private = [s for s in prod.of_type("aws:ec2/subnet:Subnet") if s.inputs["tags"]["Tier"] == "private"]
    assert len(nats) == len(private) >= 2
    subnets = {
        s.id: s.inputs["tags"]["Tier"]
        for s in [*dev.of_type("aws:ec2/subnet:Subnet"), *prod.of_type("aws:ec2/subnet:Subnet")]
    }
    for run, tier, public_ip in ((dev, "public", True), (prod, "private", False)):
        for service in run.of_type(SERVICE):
            network = service.inputs["networkConfiguration"]
            assert network["assignPublicIp"] is public_ip, service.name
            assert {subnets[subnet] for subnet in network["subnets"]} == {tier}, service.name


# --- storage ------------------------------------------------------------------------------------


def test_every_bucket_is_encrypted_private_owner_enforced_and_tls_only(run: OfflineRun) -> None:
    buckets = run.of_type(BUCKET)
    assert len(buckets) == 3  # config, archive, Athena's query results
    for bucket in buckets:

        def for_bucket(type_token: str, bucket: ResourceRecord = bucket) -> ResourceRecord:
            matches = [r for r in run.of_type(type_token) if r.inputs["bucket"] == bucket.id]
            assert len(matches) == 1, (type_token, bucket.name)
            return matches[0]

        encryption = for_bucket(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
        )
        assert encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
        block = for_bucket("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock").inputs
        assert all(
            block[flag] is True
            for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        )
        ownership = for_bucket("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
        assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
        deny = [
            s
            for s in statements(for_bucket("aws:s3/bucketPolicy:BucketPolicy"))
            if s["Condition"].get("Bool")
        ]
        assert deny and deny[0]["Effect"] == "Deny" and deny[0]["Principal"] == "*"
        assert deny[0]["Condition"]["Bool"]["aws:SecureTransport"] == "false"
        arn = f"arn:aws:s3:::{bucket.id}"
        assert set(deny[0]["Resource"]) == {arn, f"{arn}/*"}


def test_config_bucket_is_versioned_archive_has_glacier_then_expiry(run: OfflineRun, stack: str) -> None:
    versioning = run.of_type("aws:s3/bucketVersioning:BucketVersioning")
    config_bucket = one(run, BUCKET, "config")
    archive_bucket = one(run, BUCKET, "archive")
    assert [v.inputs["bucket"] for v in versioning] == [config_bucket.id]
    assert versioning[0].inputs["versioningConfiguration"]["status"] == "Enabled"
    lifecycle = {
        r.inputs["bucket"]: r.inputs["rules"]
        for r in run.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    }
    expected = settings_of(stack).archive_lifecycle
    glacier = [rule for rule in lifecycle[archive_bucket.id] if rule.get("transitions")]
    assert glacier == [
        {
            "id": "glacier-then-expire",
            "status": "Enabled",
            "filter": {},
            "transitions": [{"days": expected.glacier_after_days, "storageClass": "GLACIER"}],
            "expiration": {"days": expected.expire_after_days},
        }
    ]
    assert not any(rule.get("transitions") for rule in lifecycle[config_bucket.id])


def test_force_destroy_only_outside_prod(dev: OfflineRun, prod: OfflineRun) -> None:
    assert all(b.inputs["forceDestroy"] is True for b in dev.of_type(BUCKET))
    assert all(b.inputs["forceDestroy"] is False for b in prod.of_type(BUCKET))
    assert one(dev, "aws:ecr/repository:Repository").inputs["forceDelete"] is True
    assert one(prod, "aws:ecr/repository:Repository").inputs["forceDelete"] is False
    assert one(prod, "aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is True
    assert one(dev, "aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is False


# --- IoT identities -------------------------------------------------------------------------------


def test_one_thing_policy_and_certificate_per_shard(run: OfflineRun, stack: str) -> None:
    settings = settings_of(stack)
    sites = [f"site-{index:02d}" for index in range(SIMULATORS[stack])]
    things = {r.inputs["name"]: r for r in run.of_type("aws:iot/thing:Thing")}
    assert sorted(things) == [f"iotfactory-{stack}-{site}" for site in sites]
    generations = [g.name for g in settings.cert_generations]
    certificates = run.of_type(CERTIFICATE)
    assert len(certificates) == len(sites) * len(generations)
    attachments = run.of_type("aws:iot/thingPrincipalAttachment:ThingPrincipalAttachment")
    certificate_arns = {c.arn for c in certificates}
    # Every certificate belongs to exactly one thing, exclusively: no two shards share one.
    assert sorted(a.inputs["principal"] for a in attachments) == sorted(certificate_arns)
    assert all(a.inputs["thingPrincipalType"] == "EXCLUSIVE_THING" for a in attachments)
    policy_of = {
        a.inputs["target"]: a.inputs["policy"]
        for a in run.of_type("aws:iot/policyAttachment:PolicyAttachment")
    }
    thing_of = {a.inputs["principal"]: a.inputs["thing"] for a in attachments}
    for arn in certificate_arns:
        assert policy_of[arn] == f"{thing_of[arn]}-publish"  # the shard's own policy


def test_shard_policies_allow_only_own_client_ids_and_own_site_topics(run: OfflineRun, stack: str) -> None:
    prefix = f"arn:aws:iot:{settings_of(stack).region}:123456789012:"
    policies = run.of_type("aws:iot/policy:Policy")
    assert len(policies) == SIMULATORS[stack]
    for policy in policies:
        site = re.search(r"(site-\d\d)-publish$", policy.inputs["name"])[1]
        granted = {}
        for statement in statements(policy):
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                granted.setdefault(action, set()).update(as_list(statement["Resource"]))
        assert granted == {
            "iot:Connect": {f"{prefix}client/iotfactory-{stack}-{site}-c*"},
            # Only inside the stack's own namespace: dev's certificates never publish into prod's.
            "iot:Publish": {
                f"{prefix}topic/factory/simulator/{stack}/{site}/*",
                f"{prefix}topic/factory/simulator/{stack}/ground-truth/{site}/*",
            },
        }


def test_client_id_prefixes_are_disjoint_across_shards(run: OfflineRun) -> None:
    shards = run.outputs["shards"]
    prefixes = [shard["clientIdPrefix"] for shard in shards.values()]
    assert len(set(prefixes)) == len(prefixes)
    # "<prefix>site-01-c" is never a prefix of another shard's client ids.
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)


def test_private_keys_only_in_secret_values(run: OfflineRun) -> None:
    for record in run.records:
        if record.type == "aws:secretsmanager/secretVersion:SecretVersion":
            assert "secretString" in record.secret_paths
            continue
        assert "PRIVATE KEY" not in json.dumps(record.inputs), (
            f"{record.type} {record.name} holds a private key"
        )
    key_secrets = [
        json.loads(v.inputs["secretString"])
        for v in run.of_type("aws:secretsmanager/secretVersion:SecretVersion")
        if v.inputs["secretString"].startswith("{")
    ]
    assert key_secrets and all(set(s) == {"certificate_pem", "private_key_pem"} for s in key_secrets)
    assert all("PRIVATE KEY" in s["private_key_pem"] for s in key_secrets)


def test_rotation_keeps_retired_generation_inactive_and_serves_the_newest_active(prod: OfflineRun) -> None:
    active = {c.name.rsplit("-", 1)[1]: c.inputs["active"] for c in prod.of_type(CERTIFICATE)}
    assert active == {"g1": False, "g2": True}
    by_certificate_secret = {s.arn: s.name for s in prod.of_type(SECRET)}
    for task in prod.of_type(TASK_DEFINITION):
        if "monitoring" in task.name:
            continue
        simulator = containers(task)["simulator"]
        assert environment(simulator)["FACTORY_CERT_GENERATION"] == "g2"
        secret_arn = simulator["secrets"][0]["valueFrom"].split(":certificate_pem::")[0]
        assert by_certificate_secret[secret_arn].endswith("-g2")
    assert prod.outputs["servingCertGeneration"] == "g2"


# --- archive ------------------------------------------------------------------------------------


def test_topic_rule_selects_the_stacks_own_topics_with_an_error_action(run: OfflineRun, stack: str) -> None:
    rule = one(run, "aws:iot/topicRule:TopicRule")
    assert rule.inputs["sql"] == f"SELECT * FROM 'factory/simulator/{stack}/#'"
    assert run.outputs["topicPrefix"] == f"factory/simulator/{stack}"
    assert rule.inputs["enabled"] is True and rule.inputs["sqlVersion"] == "2016-03-23"
    error = rule.inputs["errorAction"]["cloudwatchLogs"]
    errors_group = one(run, "aws:cloudwatch/logGroup:LogGroup", "rule-errors")
    assert error["logGroupName"] == errors_group.inputs["name"] == f"/iotfactory/{stack}/iot-rule-errors"
    role = by_arn(run)[error["roleArn"]]
    trust = statements(role, "assumeRolePolicy")[0]
    assert trust["Principal"] == {"Service": "iot.amazonaws.com"}
    assert trust["Condition"]["ArnLike"]["aws:SourceArn"].endswith(f":rule/{rule.inputs['name']}")
    granted = {
        action: as_list(s["Resource"])
        for policy in run.of_type(ROLE_POLICY)
        if policy.inputs["role"] == role.id
        for s in statements(policy)
        for action in as_list(s["Action"])
    }
    log_group_arn = (
        f"arn:aws:logs:{settings_of(stack).region}:123456789012:log-group:{errors_group.inputs['name']}:*"
    )
    for action in ("logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"):
        assert granted[action] == [log_group_arn]
    archive = one(run, BUCKET, "archive")
    if stack == "dev":
        assert not rule.inputs.get("firehoses")
        (action,) = rule.inputs["s3"]
        assert action["bucketName"] == archive.id and action["roleArn"] == role.arn
        assert action["key"].startswith("${topic()}/${timestamp()}")
        assert set(granted) - {"logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"} == {
            "s3:PutObject"
        }
        assert granted["s3:PutObject"] == [f"arn:aws:s3:::{archive.id}/factory/simulator/dev/*"]
    else:
        assert not rule.inputs.get("s3")
        (action,) = rule.inputs["firehoses"]
        stream = one(run, "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream")
        assert stream.arn.endswith(f":deliverystream/{action['deliveryStreamName']}")
        assert action["separator"] == "\n" and action["batchMode"] is False
        assert granted["firehose:PutRecord"] == granted["firehose:PutRecordBatch"] == [stream.arn]
        assert "s3:PutObject" not in granted


def test_batched_archive_is_gzip_json_lines_partitioned_by_hour(prod: OfflineRun, dev: OfflineRun) -> None:
    assert not dev.of_type("aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream")
    stream = one(prod, "aws:kinesis/firehoseDeliveryStream:FirehoseDeliveryStream")
    s3 = stream.inputs["extendedS3Configuration"]
    assert stream.inputs["destination"] == "extended_s3"
    assert stream.inputs["serverSideEncryption"]["enabled"] is True
    assert s3["bucketArn"] == f"arn:aws:s3:::{one(prod, BUCKET, 'archive').id}"
    assert s3["compressionFormat"] == "GZIP"
    assert (
        s3["prefix"]
        == "raw/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}/"
    )
    assert s3["errorOutputPrefix"].startswith("errors/!{firehose:error-output-type}/")
    settings = settings_of("prod")
    assert (s3["bufferingSize"], s3["bufferingInterval"]) == (
        settings.firehose.size_mb,
        settings.firehose.interval_s,
    )
    role = by_arn(prod)[s3["roleArn"]]
    resources = {
        r
        for policy in prod.of_type(ROLE_POLICY)
        if policy.inputs["role"] == role.id
        for s in statements(policy)
        for r in as_list(s["Resource"])
    }
    archive = one(prod, BUCKET, "archive").id
    assert {f"arn:aws:s3:::{archive}/raw/*", f"arn:aws:s3:::{archive}/errors/*"} <= resources
    assert "*" not in resources


# --- image --------------------------------------------------------------------------------------


def test_ecr_is_immutable_scanned_with_lifecycle(run: OfflineRun) -> None:
    repository = one(run, "aws:ecr/repository:Repository")
    assert repository.inputs["imageTagMutability"] == "IMMUTABLE"
    assert repository.inputs["imageScanningConfiguration"]["scanOnPush"] is True
    lifecycle = one(run, "aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle.inputs["repository"] == repository.inputs["name"]
    rules = json.loads(lifecycle.inputs["policy"])["rules"]
    assert [rule["selection"]["tagStatus"] for rule in rules] == ["untagged", "any"]


def test_simulator_image_is_built_from_the_repo_and_used_by_digest(run: OfflineRun) -> None:
    image = one(run, "docker:index/image:Image")
    build = image.inputs["build"]
    assert (Path.cwd() / build["context"]).resolve() == REPO_ROOT
    assert (Path.cwd() / build["dockerfile"]).resolve() == REPO_ROOT / "simulator" / "Dockerfile"
    assert build["platform"] == "linux/amd64"
    repository_url = one(run, "aws:ecr/repository:Repository").inputs["name"]
    assert re.fullmatch(rf".*/{re.escape(repository_url)}:sim-[0-9a-f]{{24}}", image.inputs["imageName"])
    assert any(path.startswith("registry") for path in image.secret_paths)  # the ECR password
    digest = run.outputs["simulatorImage"]
    assert "@sha256:" in digest
    for task in run.of_type(TASK_DEFINITION):
        if "monitoring" not in task.name:
            assert {c["image"] for c in containers(task).values()} == {digest}


# --- compute ------------------------------------------------------------------------------------


def test_one_single_task_service_per_shard_that_never_overlaps(run: OfflineRun, stack: str) -> None:
    services = {s.inputs["name"]: s for s in run.of_type(SERVICE)}
    sites = [f"site-{index:02d}" for index in range(SIMULATORS[stack])]
    assert sorted(services) == sorted(["monitoring", *(f"simulator-{site}" for site in sites)])
    for site in sites:
        service = services[f"simulator-{site}"].inputs
        assert service["desiredCount"] == 1 and service["launchType"] == "FARGATE"
        # A shard's old task stops before the new one connects with the same client IDs.
        assert (service["deploymentMinimumHealthyPercent"], service["deploymentMaximumPercent"]) == (0, 100)
        assert service["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
        assert service["waitForSteadyState"] is True
    assert run.outputs["simulatorServiceNames"] == [f"simulator-{site}" for site in sites]
    assert_one_discovery_name_per_site(run, sites)


def assert_one_discovery_name_per_site(run: OfflineRun, sites: list[str]) -> list[str]:
    """Each site's service registers its one task in its own Cloud Map service; returns the names."""
    namespace = one(run, NAMESPACE)
    assert namespace.inputs["name"] == f"{run.stack}.iotfactory.internal"
    discovery = {record.inputs["name"]: record for record in run.of_type(DISCOVERY)}
    assert sorted(discovery) == sites
    services = {s.inputs["name"]: s.inputs for s in run.of_type(SERVICE)}
    arns = [inputs["serviceRegistries"]["registryArn"] for inputs in services.values()
            if "serviceRegistries" in inputs]
    assert len(arns) == len(set(arns)) == len(sites)  # no two services share a name
    for site in sites:
        record = discovery[site]
        assert record.inputs["namespaceId"] == namespace.id
        assert record.inputs["dnsConfig"]["dnsRecords"] == [{"type": "A", "ttl": 10}]
        assert record.inputs["healthCheckCustomConfig"] == {"failureThreshold": 1}
        assert services[f"simulator-{site}"]["serviceRegistries"] == {"registryArn": record.arn}
    names = [f"{site}.{namespace.inputs['name']}" for site in sites]
    assert run.outputs["discoveryDnsNames"] == dict(zip(sites, names, strict=True))
    return names


def uploaded_bundle(run: OfflineRun) -> dict[str, str]:
    objects = run.of_type(BUCKET_OBJECT)
    return {o.inputs["key"].removeprefix("monitoring/"): o.inputs["content"] for o in objects}


def test_more_sites_than_one_dns_answer_holds_are_all_scraped_by_name() -> None:
    """Route 53 answers a multivalue query with at most 8 records: past 8 sites every site needs
    its own name, and Prometheus must list them all."""
    run = offline_run("dev-large")
    sites = [f"site-{index:02d}" for index in range(LARGE_FLEET)]
    assert LARGE_FLEET > 8
    names = assert_one_discovery_name_per_site(run, sites)
    config = yaml.safe_load(uploaded_bundle(run)["prometheus/prometheus.yml"])
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery == {"names": names, "type": "A", "port": 9100, "refresh_interval": "30s"}
    site_rule = next(rule for rule in job["relabel_configs"] if rule["target_label"] == "site")
    assert site_rule["source_labels"] == ["__meta_dns_name"]
    context = PolicyContext(allowed_ingress_cidrs=settings_of("dev-large").allowed_cidrs)
    assert check(run.records, context) == []
    # The bundle is a function of the names: another site is another hash, so the monitoring
    # service rolls onto the new scrape config.
    smaller = offline_run("real-bundle")
    assert run.outputs["configSha256"] != smaller.outputs["configSha256"]
    assert run.outputs["configSha256"] == bundle_sha256(uploaded_bundle(run))
    for each in (run, smaller):
        init = containers(one(each, TASK_DEFINITION, "monitoring"))["config-init"]
        assert environment(init)["CONFIG_SHA256"] == each.outputs["configSha256"]


def test_simulator_task_gets_its_identity_config_and_secrets(run: OfflineRun, stack: str) -> None:
    settings = settings_of(stack)
    tasks = {t.inputs["family"]: t for t in run.of_type(TASK_DEFINITION)}
    secrets = {s.arn: s for s in run.of_type(SECRET)}
    for index in range(SIMULATORS[stack]):
        site = f"site-{index:02d}"
        task = tasks[f"iotfactory-{stack}-simulator-{site}"]
        simulator = containers(task)["simulator"]
        env = environment(simulator)
        assert env["FACTORY_ENDPOINT"] == run.outputs["iotDataEndpoint"]
        assert env["FACTORY_PORT"] == "8883" and env["FACTORY_METRICS_PORT"] == "9100"
        assert env["FACTORY_SITE_INDEX"] == str(index)
        assert env["FACTORY_CLIENT_ID_PREFIX"] == f"iotfactory-{stack}-"
        fleet = FleetSettings.model_validate_json(env["FACTORY_CONFIG_JSON"])
        # The user's fleet, plus the stack's topic namespace the IoT policy allows.
        assert fleet == settings.fleet.model_copy(update={"topic_namespace": stack})
        by_name = {item["name"]: item["valueFrom"] for item in simulator["secrets"]}
        certificate_secret, key = by_name["FACTORY_CERT_PEM"].split(":certificate_pem::")
        assert key == "" and by_name["FACTORY_KEY_PEM"] == f"{certificate_secret}:private_key_pem::"
        assert f"-{site}-{settings.serving_generation.name}" in secrets[certificate_secret].name


def test_containers_are_hardened_and_drain_before_kill(run: OfflineRun) -> None:
    for task in run.of_type(TASK_DEFINITION):
        assert (
            task.inputs["requiresCompatibilities"] == ["FARGATE"] and task.inputs["networkMode"] == "awsvpc"
        )
        for name, container in containers(task).items():
            assert container["readonlyRootFilesystem"] is True, name
            assert container["logConfiguration"]["logDriver"] == "awslogs", name
            if container["essential"]:
                assert container["user"].split(":")[0] not in ("0", "root"), name
                assert container["healthCheck"]["command"][0] == "CMD", name
            else:  # init containers: root only to prepare volumes; the service containers wait for them
                assert any(
                    dependency == {"containerName": name, "condition": "SUCCESS"}
                    for other in containers(task).values()
                    for dependency in other.get("dependsOn", [])
                ), name
        if "simulator" in containers(task):
            simulator = containers(task)["simulator"]
            assert simulator["stopTimeout"] >= 45 > 30  # the simulator drains within 30 s of SIGTERM
            assert simulator["user"] == "10001:10001"
            assert simulator["linuxParameters"]["capabilities"]["drop"] == ["ALL"]


def test_monitoring_is_one_task_with_init_prometheus_grafana_and_alertmanager(run: OfflineRun) -> None:
    service = one(run, SERVICE, "monitoring").inputs
    assert service["desiredCount"] == 1
    assert service["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    target_groups = {tg.arn: tg for tg in run.of_type(TARGET_GROUP)}
    routes = {
        (lb["containerName"], lb["containerPort"], target_groups[lb["targetGroupArn"]].inputs["port"])
        for lb in service["loadBalancers"]
    }
    assert routes == {("prometheus", 9090, 9090), ("grafana", 3000, 3000)}
    task = one(run, TASK_DEFINITION, "monitoring")
    parts = containers(task)
    assert list(parts) == ["config-init", "prometheus", "grafana", "alertmanager"]
    assert parts["config-init"]["essential"] is False
    for name in ("prometheus", "grafana", "alertmanager"):
        assert {"containerName": "config-init", "condition": "SUCCESS"} in parts[name]["dependsOn"]
    command = parts["prometheus"]["command"]
    assert "--web.route-prefix=/prometheus/" in command
    external = [flag for flag in command if flag.startswith("--web.external-url=")]
    assert external == [f"--web.external-url={run.outputs['prometheusUrl']}"]
    assert len({flag.split("=")[0] for flag in command}) == len(command)  # Prometheus rejects repeats
    grafana_env = environment(parts["grafana"])
    assert grafana_env["GF_PATHS_PROVISIONING"] == "/etc/grafana-config/provisioning"
    assert grafana_env["GF_SERVER_ROOT_URL"] == run.outputs["grafanaUrl"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    grafana_mounts = {m["containerPath"]: m for m in parts["grafana"]["mountPoints"]}
    assert grafana_mounts["/etc/grafana-config"]["readOnly"] is True
    prometheus_mounts = {m["containerPath"]: m for m in parts["prometheus"]["mountPoints"]}
    assert prometheus_mounts["/etc/prometheus-config"]["readOnly"] is True


def test_config_bundle_is_uploaded_and_its_hash_is_in_the_task_definition(run: OfflineRun) -> None:
    config_bucket = one(run, BUCKET, "config").id
    objects = run.of_type(BUCKET_OBJECT)
    assert objects and all(o.inputs["bucket"] == config_bucket for o in objects)
    assert all(o.inputs["serverSideEncryption"] == "AES256" for o in objects)
    uploaded = uploaded_bundle(run)
    assert all(o.inputs["key"].startswith("monitoring/") for o in objects)
    assert "prometheus/prometheus.yml" in uploaded
    for name in run.outputs["discoveryDnsNames"].values():  # the fake bundle lists what it was given
        assert f"# {name}:9100 every 15s\n" in uploaded["prometheus/prometheus.yml"]
    init = containers(one(run, TASK_DEFINITION, "monitoring"))["config-init"]
    assert environment(init)["CONFIG_SHA256"] == bundle_sha256(uploaded) == run.outputs["configSha256"]
    script = init["command"][0]
    assert 's3://$CONFIG_BUCKET/monitoring/prometheus/" /mnt/prometheus-config/' in script
    assert environment(init)["CONFIG_BUCKET"] == config_bucket


def test_dashboard_change_changes_the_task_definition_hash() -> None:
    bundle = {"prometheus/prometheus.yml": "a", "grafana/dashboards/x.json": "{}"}
    changed = {**bundle, "grafana/dashboards/x.json": '{"title": "x"}'}
    assert bundle_sha256(bundle) != bundle_sha256(changed)
    assert bundle_sha256(bundle) == bundle_sha256(dict(reversed(list(bundle.items()))))


def test_grafana_admin_password_is_generated_and_smtp_comes_from_the_named_secret(
    dev: OfflineRun, prod: OfflineRun
) -> None:
    for run in (dev, prod):
        password = one(run, "random:index/randomPassword:RandomPassword")
        assert password.inputs["length"] >= 32
        grafana = containers(one(run, TASK_DEFINITION, "monitoring"))["grafana"]
        secrets = {s["name"]: s["valueFrom"] for s in grafana["secrets"]}
        admin_secret = one(run, SECRET, "grafana-admin")
        assert (
            secrets["GF_SECURITY_ADMIN_PASSWORD"] == admin_secret.arn == run.outputs["grafanaAdminSecretArn"]
        )
        assert "GF_SECURITY_ADMIN_PASSWORD" not in environment(grafana)
    dev_grafana = containers(one(dev, TASK_DEFINITION, "monitoring"))["grafana"]
    assert environment(dev_grafana)["GF_SMTP_ENABLED"] == "false"
    assert {s["name"] for s in dev_grafana["secrets"]} == {"GF_SECURITY_ADMIN_PASSWORD"}
    prod_grafana = containers(one(prod, TASK_DEFINITION, "monitoring"))["grafana"]
    smtp = settings_of("prod").smtp
    secrets = {s["name"]: s["valueFrom"] for s in prod_grafana["secrets"]}
    smtp_arn = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{smtp.secret_name}-AbCdEf"
    assert secrets["GF_SMTP_USER"] == f"{smtp_arn}:username::"
    assert secrets["GF_SMTP_PASSWORD"] == f"{smtp_arn}:password::"
    env = environment(prod_grafana)
    assert (env["GF_SMTP_ENABLED"], env["GF_SMTP_HOST"], env["ALERT_EMAIL_TO"]) == (
        "true",
        smtp.host,
        smtp.to_addresses,
    )


# --- load balancer and firewall -------------------------------------------------------------------


def test_listeners_and_path_rules(run: OfflineRun, stack: str) -> None:
    balancer = one(run, "aws:lb/loadBalancer:LoadBalancer")
    assert balancer.inputs["dropInvalidHeaderFields"] is True and balancer.inputs["internal"] is False
    listeners = {listener.inputs["port"]: listener for listener in run.of_type(LISTENER)}
    if stack == "dev":
        assert set(listeners) == {80}
        serving = listeners[80]
        assert run.outputs["grafanaUrl"] == f"http://{run.outputs['loadBalancerDnsName']}/"
    else:
        assert set(listeners) == {80, 443}
        redirect = listeners[80].inputs["defaultActions"][0]
        assert redirect["type"] == "redirect"
        assert redirect["redirect"] == {"port": "443", "protocol": "HTTPS", "statusCode": "HTTP_301"}
        serving = listeners[443]
        assert serving.inputs["protocol"] == "HTTPS"
        assert serving.inputs["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
        assert serving.inputs["certificateArn"] == TEST_CERTIFICATE_ARN
        assert run.outputs["grafanaUrl"] == f"https://{TEST_DOMAIN}/"
        assert run.outputs["prometheusUrl"] == f"https://{TEST_DOMAIN}/prometheus/"
    assert serving.inputs["defaultActions"][0]["fixedResponse"]["statusCode"] == "404"
    target_groups = {tg.arn: tg.inputs for tg in run.of_type(TARGET_GROUP)}
    rules = {}
    for listener_rule in run.of_type(LISTENER_RULE):
        assert listener_rule.inputs["listenerArn"] == serving.arn
        target = target_groups[listener_rule.inputs["actions"][0]["targetGroupArn"]]
        paths = listener_rule.inputs["conditions"][0]["pathPattern"]["values"]
        rules[listener_rule.inputs["priority"]] = (
            paths,
            target["port"],
            target["healthCheck"]["path"],
            target["targetType"],
        )
    assert rules == {
        90: (["/prometheus", "/prometheus/*"], 9090, "/prometheus/-/healthy", "ip"),
        100: (["/*"], 3000, "/api/health", "ip"),
    }


def test_security_groups_only_admit_what_each_tier_needs(run: OfflineRun, stack: str) -> None:
    groups = {g.id: g.name.rsplit("-", 1)[-1] for g in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    # "nfs": the monitoring history's file system (EFS), on both stacks by default.
    assert sorted(groups.values()) == ["alb", "monitoring", "nfs", "simulators"]
    assert not any(g.inputs.get("ingress") for g in run.of_type("aws:ec2/securityGroup:SecurityGroup"))
    admitted = set()
    for rule in run.of_type(INGRESS):
        inputs = rule.inputs
        assert inputs["fromPort"] == inputs["toPort"] != 22 and inputs["ipProtocol"] == "tcp"
        source = (
            inputs.get("cidrIpv4") or inputs.get("cidrIpv6") or groups[inputs["referencedSecurityGroupId"]]
        )
        admitted.add((groups[inputs["securityGroupId"]], inputs["fromPort"], source))
    allowed = settings_of(stack).allowed_cidrs
    ports = (80,) if stack == "dev" else (80, 443)
    assert admitted == {
        *(("alb", port, cidr) for port in ports for cidr in allowed),
        ("monitoring", 3000, "alb"),
        ("monitoring", 9090, "alb"),
        ("simulators", 9100, "monitoring"),
        ("nfs", 2049, "monitoring"),
    }
    if stack == "dev":
        assert allowed == (ALLOWED_CIDR_DEV,)


# --- IAM and logs -----------------------------------------------------------------------------------


def _grants(run: OfflineRun, role: ResourceRecord) -> list[dict]:
    return [s for p in run.of_type(ROLE_POLICY) if p.inputs["role"] == role.id for s in statements(p)]


def test_no_wildcard_actions_and_star_resources_only_from_the_listed_actions(run: OfflineRun) -> None:
    assert set(WILDCARD_RESOURCE_ACTIONS) == {"ecr:GetAuthorizationToken"}
    star_actions = set()
    for policy in run.of_type(ROLE_POLICY):
        for statement in statements(policy):
            assert statement["Effect"] == "Allow"
            actions = as_list(statement["Action"])
            assert not any("*" in action for action in actions), policy.name
            if "*" in as_list(statement["Resource"]):
                assert as_list(statement["Resource"]) == ["*"]
                star_actions.update(actions)
    assert star_actions == {"ecr:GetAuthorizationToken"}
    assert not run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    assert not any(role.inputs.get("managedPolicyArns") for role in run.of_type(ROLE))


def test_each_service_has_its_own_execution_and_task_role(run: OfflineRun) -> None:
    roles = by_arn(run)
    seen = set()
    for task in run.of_type(TASK_DEFINITION):
        execution, task_role = task.inputs["executionRoleArn"], task.inputs["taskRoleArn"]
        assert execution != task_role and not {execution, task_role} & seen
        seen |= {execution, task_role}
        for arn in (execution, task_role):
            trust = statements(roles[arn], "assumeRolePolicy")[0]
            assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    simulator_task_roles = [
        roles[t.inputs["taskRoleArn"]] for t in run.of_type(TASK_DEFINITION) if "monitoring" not in t.name
    ]
    assert all(_grants(run, role) == [] for role in simulator_task_roles)  # MQTT by certificate, no AWS API


def test_simulator_execution_role_reads_only_its_own_shard_secrets_and_log_streams(
    run: OfflineRun, stack: str
) -> None:
    roles = by_arn(run)
    secret_names = {s.arn: s.name for s in run.of_type(SECRET)}
    log_group = f"/iotfactory/{stack}/simulators"
    repository = one(run, "aws:ecr/repository:Repository")
    for task in run.of_type(TASK_DEFINITION):
        if "monitoring" in task.name:
            continue
        site = re.search(r"site-\d\d", task.inputs["family"])[0]
        grants = {
            a: as_list(s["Resource"])
            for s in _grants(run, roles[task.inputs["executionRoleArn"]])
            for a in as_list(s["Action"])
        }
        secrets = grants.pop("secretsmanager:GetSecretValue")
        assert secrets and all(f"-{site}-g" in secret_names[arn] for arn in secrets)
        assert len(secrets) == len(settings_of(stack).cert_generations)
        assert grants.pop("logs:PutLogEvents") == [
            f"arn:aws:logs:{settings_of(stack).region}:123456789012:log-group:{log_group}:log-stream:{site}/*"
        ]
        assert grants.pop("logs:CreateLogStream") == [
            f"arn:aws:logs:{settings_of(stack).region}:123456789012:log-group:{log_group}:*"
        ]
        assert grants.pop("ecr:GetAuthorizationToken") == ["*"]
        for action in ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"):
            assert grants.pop(action) == [repository.arn]
        assert grants == {}


def test_monitoring_task_role_reads_only_the_config_prefix(run: OfflineRun) -> None:
    task = one(run, TASK_DEFINITION, "monitoring")
    bucket = one(run, BUCKET, "config").id
    grants = {
        a: s for s in _grants(run, by_arn(run)[task.inputs["taskRoleArn"]]) for a in as_list(s["Action"])
    }
    publishing = {"sns:Publish", "kms:Decrypt", "kms:GenerateDataKey"} if run.of_type(TOPIC) else set()
    # ... and mount its history through the two access points (EFS; infra/components/monitoring_history.py).
    history = {"elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"}
    assert set(grants) == {"s3:ListBucket", "s3:GetObject", *publishing, *history}  # publishing: alerting
    efs = grants["elasticfilesystem:ClientMount"]
    assert efs["Resource"] == [one(run, "aws:efs/fileSystem:FileSystem").arn]
    assert sorted(efs["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]) == sorted(
        point.arn for point in run.of_type("aws:efs/accessPoint:AccessPoint")
    )
    assert grants["s3:GetObject"]["Resource"] == [f"arn:aws:s3:::{bucket}/monitoring/*"]
    assert grants["s3:ListBucket"]["Resource"] == [f"arn:aws:s3:::{bucket}"]
    assert grants["s3:ListBucket"]["Condition"] == {
        "StringLike": {"s3:prefix": ["monitoring/", "monitoring/*"]}
    }


def test_log_retention_per_stack(dev: OfflineRun, prod: OfflineRun) -> None:
    for run, days in ((dev, 3), (prod, 30)):
        groups = run.of_type("aws:cloudwatch/logGroup:LogGroup")
        assert {g.inputs["name"].rsplit("/", 1)[-1] for g in groups} >= {
            "simulators",
            "monitoring",
            "iot-rule-errors",
        }
        assert {g.inputs["retentionInDays"] for g in groups} == {days}


def test_per_stack_differences(dev: OfflineRun, prod: OfflineRun) -> None:
    assert (dev.outputs["archiveMode"], prod.outputs["archiveMode"]) == ("direct", "batched")
    cluster_insights = {
        run.stack: one(run, "aws:ecs/cluster:Cluster").inputs["settings"][0]["value"] for run in (dev, prod)
    }
    assert cluster_insights == {"dev": "disabled", "prod": "enabled"}
    monitoring_cpu = {run.stack: one(run, TASK_DEFINITION, "monitoring").inputs["cpu"] for run in (dev, prod)}
    assert monitoring_cpu == {"dev": "512", "prod": "1024"}
    recovery = {
        run.stack: {s.inputs["recoveryWindowInDays"] for s in run.of_type(SECRET)} for run in (dev, prod)
    }
    assert recovery == {"dev": {0}, "prod": {7}}


def test_outputs_name_everything_the_cli_needs(run: OfflineRun, stack: str) -> None:
    outputs = run.outputs
    assert outputs["iotDataEndpoint"].endswith(".amazonaws.com") and "-ats.iot." in outputs["iotDataEndpoint"]
    assert outputs["archiveBucket"] == one(run, BUCKET, "archive").id
    assert outputs["clusterName"] == f"iotfactory-{stack}"
    assert outputs["monitoringServiceName"] == "monitoring"
    assert outputs["prometheusUrl"] == outputs["grafanaUrl"] + "prometheus/"
    assert outputs["logGroups"]["simulators"] == f"/iotfactory/{stack}/simulators"
    assert outputs["region"] == settings_of(stack).region


# --- alert routing --------------------------------------------------------------------------------

TOPIC = "aws:sns/topic:Topic"
TOPIC_POLICY = "aws:sns/topicPolicy:TopicPolicy"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
KMS_KEY = "aws:kms/key:Key"


def test_alertmanager_reads_its_bundle_folder_and_gets_smtp_only_from_the_secret(
    dev: OfflineRun, prod: OfflineRun
) -> None:
    for run in (dev, prod):
        parts = containers(one(run, TASK_DEFINITION, "monitoring"))
        alertmanager = parts["alertmanager"]
        image = alertmanager["image"]
        # prod pulls it through the account's ECR pull-through cache (tests/test_infra_operations.py).
        cached = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/docker-hub/"
        upstream = "docker.io/" if run.stack == "dev" else cached
        assert image.startswith(f"{upstream}prom/alertmanager:") and "@sha256:" in image
        assert alertmanager["user"] == "65534:65534" and alertmanager["readonlyRootFilesystem"] is True
        mounts = {m["containerPath"]: m for m in alertmanager["mountPoints"]}
        assert mounts["/etc/alertmanager-config"]["readOnly"] is True
        assert {"/alertmanager", "/run/alertmanager"} <= set(mounts)
        script = alertmanager["command"][0]
        assert "exec /bin/alertmanager --config.file=/run/alertmanager/alertmanager.yml" in script
        assert "--cluster.listen-address=" in script
        # The init container syncs the alertmanager/ prefix like the others and hands over the volumes.
        init_script = parts["config-init"]["command"][0]
        assert 's3://$CONFIG_BUCKET/monitoring/alertmanager/" /mnt/alertmanager-config/' in init_script
        assert "chown -R 65534:65534 /mnt/alertmanager-data" in init_script
        # Not behind the load balancer: Prometheus and Grafana reach it on localhost.
        routed = {lb["containerName"] for lb in one(run, SERVICE, "monitoring").inputs["loadBalancers"]}
        assert "alertmanager" not in routed
    dev_secrets = containers(one(dev, TASK_DEFINITION, "monitoring"))["alertmanager"]["secrets"]
    assert dev_secrets == []
    prod_alertmanager = containers(one(prod, TASK_DEFINITION, "monitoring"))["alertmanager"]
    secret_name = settings_of("prod").smtp.secret_name
    smtp_arn = f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{secret_name}-AbCdEf"
    assert {s["name"]: s["valueFrom"] for s in prod_alertmanager["secrets"]} == {
        "SMTP_USERNAME": f"{smtp_arn}:username::", "SMTP_PASSWORD": f"{smtp_arn}:password::"
    }
    assert not any("PASSWORD" in name for name in environment(prod_alertmanager))


def test_alert_topic_is_encrypted_and_only_the_monitoring_task_publishes(
    dev: OfflineRun, prod: OfflineRun
) -> None:
    assert not dev.of_type(TOPIC) and dev.outputs["alertTopicArn"] is None  # no subscriber, no topic
    topic, key = one(prod, TOPIC, "alerts"), one(prod, KMS_KEY, "alerts")
    assert topic.inputs["kmsMasterKeyId"] == key.arn and key.inputs["enableKeyRotation"] is True
    assert prod.outputs["alertTopicArn"] == topic.arn
    subscriptions = {(s.inputs["protocol"], s.inputs["endpoint"]) for s in prod.of_type(SUBSCRIPTION)}
    assert subscriptions == {("email", "oncall@example.com"), ("https", "https://pager.example.com/sns")}
    assert all(s.inputs["topic"] == topic.arn for s in prod.of_type(SUBSCRIPTION))

    task = one(prod, TASK_DEFINITION, "monitoring")
    role_arn = task.inputs["taskRoleArn"]
    policy = one(prod, TOPIC_POLICY, "alerts")
    assert policy.inputs["arn"] == topic.arn
    allow, deny_others, deny_plain = statements(policy)
    assert allow["Effect"] == "Allow" and allow["Action"] == "sns:Publish"
    assert allow["Principal"] == {"AWS": role_arn}
    assert deny_others["Effect"] == "Deny" and deny_others["Principal"] == {"AWS": "*"}
    assert deny_others["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": role_arn}}
    assert deny_plain["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    grants = {a: s for s in _grants(prod, by_arn(prod)[role_arn]) for a in as_list(s["Action"])}
    assert grants["sns:Publish"]["Resource"] == [topic.arn]
    assert grants["kms:GenerateDataKey"]["Resource"] == [key.arn]
    via_sns = {"StringEquals": {"kms:ViaService": "sns.eu-west-1.amazonaws.com"}}
    assert grants["kms:Decrypt"]["Condition"] == via_sns
    assert environment(containers(task)["alertmanager"])["SNS_TOPIC_ARN"] == topic.arn
