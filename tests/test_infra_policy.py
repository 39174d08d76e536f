"""The policy pack: clean on the real program (dev, prod), and it catches deliberately insecure resources."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
from infra_mocks import INSECURE_PREFIX, RUNS, containers, offline_run, one, prefetch

from infra import iam
from infra.components.monitoring import bundle_sha256
from infra.offline import ResourceRecord
from infra.policy import DISCOVERY_SERVICE, ECS_SERVICE, PolicyContext, check, is_taggable
from infra.settings import load_settings


def _bundle_available() -> bool:
    if importlib.util.find_spec("observability.config_bundle") is None:
        return False
    from observability import config_bundle

    return hasattr(config_bundle, "cloud_bundle")


needs_real_bundle = pytest.mark.skipif(
    not _bundle_available(), reason="observability.config_bundle.cloud_bundle is not in the tree yet"
)


@pytest.fixture(scope="module", autouse=True)
def _start_runs() -> None:
    prefetch("dev", "prod", "insecure", *(["real-bundle"] if _bundle_available() else []))


def context_of(name: str) -> PolicyContext:
    spec = RUNS[name]
    return PolicyContext(allowed_ingress_cidrs=load_settings(spec.stack, spec.config).allowed_cidrs)


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_real_program_passes(name: str) -> None:
    run = offline_run(name)
    assert len(run.records) > 100
    assert check(run.records, context_of(name)) == []


def test_insecure_resources_fail_each_rule_and_nothing_else_does() -> None:
    run = offline_run("insecure")
    violations = check(run.records, context_of("insecure"))
    found = {(v.rule, v.resource.split("::")[1]) for v in violations}
    expected = {
        ("s3-bucket-hardening", f"{INSECURE_PREFIX}bucket"),
        ("network-ingress", f"{INSECURE_PREFIX}ssh"),
        ("iam-least-privilege", f"{INSECURE_PREFIX}admin"),
        ("iam-least-privilege", f"{INSECURE_PREFIX}star-resource"),
        ("iam-least-privilege", f"{INSECURE_PREFIX}managed"),
        ("log-retention", f"{INSECURE_PREFIX}logs"),
        ("ecr-repository", f"{INSECURE_PREFIX}repo"),
        ("iot-device-policy", f"{INSECURE_PREFIX}iot"),
        ("ecs-hardening", f"{INSECURE_PREFIX}task"),
        ("ecs-hardening", f"{INSECURE_PREFIX}service"),
        ("load-balancer", f"{INSECURE_PREFIX}alb"),
        ("no-secrets-in-plain-config", f"{INSECURE_PREFIX}key-object"),
        ("no-secrets-in-plain-config", f"{INSECURE_PREFIX}task"),
        ("athena-workgroup", f"{INSECURE_PREFIX}workgroup"),
        # Registered without the stack's provider: no default tags.
        ("tags", f"{INSECURE_PREFIX}bucket"),
        ("tags", f"{INSECURE_PREFIX}ssh"),
    }
    assert expected <= found
    assert all(name.startswith(INSECURE_PREFIX) for _, name in found), sorted(found)
    messages = {str(v) for v in violations}
    assert any("port 22" in message for message in messages)
    assert any("wildcard action '*'" in message for message in messages)
    assert any("s3:GetObject" in message and "Resource '*'" in message for message in messages)
    assert any("runs as root" in message for message in messages)
    assert any("writable root filesystem" in message for message in messages)
    assert any("circuit breaker" in message for message in messages)
    assert any("public access block" in message for message in messages)
    assert any("image tags are mutable" in message for message in messages)
    assert any("workgroup configuration is not enforced" in message for message in messages)
    assert any("query results are not encrypted" in message for message in messages)
    assert any("someone-elses-bucket" in message for message in messages)


def test_ingress_rule_checks_sources_and_ports() -> None:
    run = offline_run("dev")
    alb_rule = next(
        r
        for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs.get("cidrIpv4")
    )
    wider = [*run.records]
    wider[wider.index(alb_rule)] = type(alb_rule)(
        **{
            **alb_rule.__dict__,
            "inputs": {**alb_rule.inputs, "cidrIpv4": "0.0.0.0/0", "fromPort": 0, "toPort": 65535},
        }
    )
    messages = [str(v) for v in check(wider, context_of("dev"))]
    assert any("not in iotfactory:allowedCidrs" in m for m in messages)
    assert any("only listener ports [80]" in m for m in messages)
    assert any("port 22" in m for m in messages)


def test_discovery_rule_catches_more_tasks_under_one_name_than_a_dns_answer_holds() -> None:
    run = offline_run("dev")
    discovery = run.of_type(DISCOVERY_SERVICE)
    services = {r.urn for r in run.of_type(ECS_SERVICE) if "serviceRegistries" in r.inputs}
    assert len(discovery) == len(services) == 2 and check(run.records, context_of("dev")) == []
    shared = discovery[0].arn

    def registered(record: ResourceRecord, desired: int, maximum_percent: int) -> ResourceRecord:
        inputs = {**record.inputs, "serviceRegistries": {"registryArn": shared}, "desiredCount": desired,
                  "deploymentMaximumPercent": maximum_percent}
        return replace(record, inputs=inputs)

    # Two services of 4 tasks that may double during a deployment: up to 16 addresses, 8 per answer.
    wider = [registered(r, 4, 200) if r.urn in services else r for r in run.records]
    (violation,) = [v for v in check(wider, context_of("dev")) if v.rule == "service-discovery"]
    assert violation.resource.endswith(discovery[0].name)
    assert "up to 16 tasks" in violation.message and "at most 8" in violation.message
    # The same tasks with deployments that never overlap (stop before start): 8 fit in one answer.
    fits = [registered(r, 4, 100) if r.urn in services else r for r in run.records]
    assert not [v for v in check(fits, context_of("dev")) if v.rule == "service-discovery"]


def test_wildcard_resource_actions_are_listed_with_reasons() -> None:
    assert dict(iam.WILDCARD_RESOURCE_ACTIONS).keys() == {"ecr:GetAuthorizationToken"}
    assert all(len(reason) > 30 for reason in iam.WILDCARD_RESOURCE_ACTIONS.values())
    with pytest.raises(ValueError, match="may not be granted on"):
        iam.wildcard_resource(["s3:GetObject"])
    assert iam.wildcard_resource(["ecr:GetAuthorizationToken"])["Resource"] == ["*"]
    with pytest.raises(ValueError):
        iam.allow([], ["arn:aws:s3:::b"])


def test_taggable_types_come_from_the_provider_schema() -> None:
    assert is_taggable("aws:s3/bucket:Bucket") and is_taggable("aws:ecs/service:Service")
    assert not is_taggable("aws:iam/rolePolicy:RolePolicy")
    assert not is_taggable("aws:s3/bucketPolicy:BucketPolicy")
    assert not is_taggable("random:index/randomPassword:RandomPassword")


@needs_real_bundle
def test_real_config_bundle_is_uploaded_whole_and_hashed() -> None:
    from observability.config_bundle import cloud_bundle

    run = offline_run("real-bundle")
    assert check(run.records, context_of("real-bundle")) == []
    settings = load_settings("dev", RUNS["real-bundle"].config)
    names = [f"{site}.dev.iotfactory.internal" for site in settings.sites]
    expected = cloud_bundle(
        discovery_dns_names=names, metrics_port=9100, scrape_interval_s=settings.scrape_interval_s
    )
    objects = run.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
    uploaded = {o.inputs["key"].removeprefix("monitoring/"): o.inputs["content"] for o in objects}
    assert uploaded == expected
    assert names == ["site-00.dev.iotfactory.internal", "site-01.dev.iotfactory.internal"]
    assert all(name in uploaded["prometheus/prometheus.yml"] for name in names)
    init = containers(one(run, "aws:ecs/taskDefinition:TaskDefinition", "monitoring"))["config-init"]
    assert {"name": "CONFIG_SHA256", "value": bundle_sha256(expected)} in init["environment"]


def test_policy_command_needs_a_stack_file(capsys: pytest.CaptureFixture[str]) -> None:
    from infra.policy import main

    assert main(["--stack", "nosuchstack"]) == 2
    assert "no Pulumi.nosuchstack.yaml" in capsys.readouterr().err


def test_sns_rule_wants_encrypted_topics_and_no_public_topic_policy() -> None:
    run = offline_run("prod")
    topic = one(run, "aws:sns/topic:Topic", "alerts")
    policy = one(run, "aws:sns/topicPolicy:TopicPolicy", "alerts")
    public = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sns:Publish", "Resource": topic.arn}],
    }

    def changed(record: ResourceRecord) -> ResourceRecord:
        if record.urn == topic.urn:
            return replace(record, inputs={k: v for k, v in record.inputs.items() if k != "kmsMasterKeyId"})
        if record.urn == policy.urn:
            return replace(record, inputs={**record.inputs, "policy": public})
        return record

    violations = check([changed(r) for r in run.records], context_of("prod"))
    assert {(v.resource, v.message) for v in violations if v.rule == "sns-topic"} == {
        (f"aws:sns/topic:Topic::{topic.name}", "topic is not encrypted (kmsMasterKeyId)"),
        (
            f"aws:sns/topicPolicy:TopicPolicy::{policy.name}",
            "topic policy allows every principal ('*'); name the publisher",
        ),
    }
