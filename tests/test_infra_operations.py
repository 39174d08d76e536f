"""The program and policy pack for stacks that share one account (issue 12), under Pulumi mocks.

Isolation: with dev and prod both deployed, neither rule reads the other's topics and neither
stack's certificates may publish into the other's namespace. Tasks wait for what they need.
Production defaults: HTTPS, a pinned account, immutable tags that cannot collide, images through
the pull-through cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from infra_mocks import (
    MOCK_ACCOUNT as MOCK_ACCOUNT_ID,
)
from infra_mocks import (
    RUNS,
    containers,
    environment,
    offline_run,
    one,
    prefetch,
)

from infra.components.image import build_tag
from infra.image_refs import cached_reference, split_reference
from infra.offline import ResourceRecord
from infra.policy import ECS_SERVICE, IOT_POLICY, TASK_DEFINITION, check, policy_context
from infra.policy_operations import (
    TOPIC_RULE,
    filter_overlaps,
    isolation_violations,
    patterns_overlap,
    publish_patterns,
)
from infra.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _start_runs() -> None:
    prefetch("dev", "prod")


def context(name: str) -> Any:
    spec = RUNS[name]
    return policy_context(load_settings(spec.stack, spec.config))


def rules_of(violations: list[Any]) -> set[str]:
    return {violation.rule for violation in violations}


def with_policy(record: ResourceRecord, resources: list[str]) -> ResourceRecord:
    """The IoT policy with its Publish statement granting these topic patterns instead."""
    document = json.loads(record.inputs["policy"])
    for statement in document["Statement"]:
        if "iot:Publish" in statement["Action"]:
            prefix = statement["Resource"][0].split(":topic/")[0]
            statement["Resource"] = [f"{prefix}:topic/{resource}" for resource in resources]
    return replace(record, inputs={**record.inputs, "policy": json.dumps(document)})


def swapped(records: list[ResourceRecord], old: ResourceRecord, new: ResourceRecord) -> list[ResourceRecord]:
    return [new if record is old else record for record in records]


# --- isolation -------------------------------------------------------------------------------------


def test_dev_and_prod_deployed_together_are_isolated() -> None:
    dev, prod = offline_run("dev"), offline_run("prod")
    assert isolation_violations({"dev": dev.records, "prod": prod.records}) == []
    for run in (dev, prod):
        (rule,) = run.of_type(TOPIC_RULE)
        assert rule.inputs["sql"] == f"SELECT * FROM 'factory/simulator/{run.stack}/#'"
        for policy in run.of_type(IOT_POLICY):
            assert all(p.startswith(f"factory/simulator/{run.stack}/") for p in publish_patterns(policy))


def test_a_rule_reading_the_whole_root_is_caught() -> None:
    """What the program did before namespaces: dev's rule archived prod's messages."""
    dev, prod = offline_run("dev"), offline_run("prod")
    (rule,) = dev.of_type(TOPIC_RULE)
    wide = replace(rule, inputs={**rule.inputs, "sql": "SELECT * FROM 'factory/simulator/#'"})
    records = swapped(dev.records, rule, wide)
    (violation, *others) = isolation_violations({"dev": records, "prod": prod.records})
    assert violation.rule == "stack-isolation"
    assert violation.message.startswith(
        "dev's rule reads 'factory/simulator/#', which matches prod's topics 'factory/simulator/prod/"
    )
    assert not others
    assert "topic-isolation" in rules_of(check(records, context("dev")))


def test_a_certificate_that_may_publish_into_the_other_namespace_is_caught() -> None:
    dev, prod = offline_run("dev"), offline_run("prod")
    policy = dev.of_type(IOT_POLICY)[0]
    records = swapped(dev.records, policy, with_policy(policy, ["factory/simulator/*"]))
    violations = isolation_violations({"dev": records, "prod": prod.records})
    assert {v.rule for v in violations} == {"stack-isolation"}
    assert (
        "dev's certificates may publish to 'factory/simulator/*', "
        "into prod's topics 'factory/simulator/prod/'" in [v.message for v in violations]
    )
    (found,) = [v for v in check(records, context("dev")) if v.rule == "topic-isolation"]
    assert "outside this stack's namespace factory/simulator/dev/" in found.message


def test_two_stacks_without_namespaces_collide() -> None:
    """Both stacks on the un-namespaced layout (site topics straight under the root) share topics."""
    runs = {name: offline_run(name) for name in ("dev", "prod")}
    flat: dict[str, list[ResourceRecord]] = {}
    for name, run in runs.items():
        records = list(run.records)
        for policy in run.of_type(IOT_POLICY):
            site_id = re.search(r"site-\d\d", policy.inputs["name"])[0]
            flat_policy = with_policy(policy, [f"factory/simulator/{site_id}/*"])
            records = swapped(records, policy, flat_policy)
        (rule,) = run.of_type(TOPIC_RULE)
        records = swapped(
            records, rule, replace(rule, inputs={**rule.inputs, "sql": "SELECT * FROM 'factory/simulator/#'"})
        )
        flat[name] = records
    violations = isolation_violations(flat)
    assert {v.resource.split(":", 1)[0] for v in violations} == {"dev", "prod"}
    assert any("matches prod's topics" in v.message for v in violations)
    assert any("into dev's topics" in v.message for v in violations)


@pytest.mark.parametrize(
    ("topic_filter", "pattern", "overlaps"),
    [
        ("factory/simulator/#", "factory/simulator/prod/site-00/*", True),
        ("factory/simulator/dev/#", "factory/simulator/prod/site-00/*", False),
        ("factory/simulator/+/site-00/#", "factory/simulator/prod/site-00/*", True),
        # `+` is one level: factory/simulator/dev/site-00/... has at least five.
        ("factory/simulator/dev/+", "factory/simulator/dev/site-00/*", False),
        ("factory/simulator/dev/+/#", "factory/simulator/dev/site-00/*", True),
        ("factory/simulator/dev", "factory/simulator/dev/*", False),
        ("factory/simulator/d+", "factory/simulator/dev/site-00/*", False),
        ("factory/simulator/prod/site-00/line-01/m", "factory/simulator/prod/site-0*", True),
        ("factory/simulator/prod/x", "factory/simulator/prod/x", True),
    ],
)
def test_mqtt_filters_against_iot_policy_patterns(topic_filter: str, pattern: str, overlaps: bool) -> None:
    assert filter_overlaps(topic_filter, pattern) is overlaps


def test_policy_patterns_against_a_namespace() -> None:
    assert patterns_overlap("factory/simulator/*", "factory/simulator/prod/")
    assert patterns_overlap("factory/simulator/pro*", "factory/simulator/prod/")
    assert not patterns_overlap("factory/simulator/dev/site-00/*", "factory/simulator/prod/")
    assert not patterns_overlap("factory/simulator/prod-eu/*", "factory/simulator/prod/")


# --- tasks wait for what they need -----------------------------------------------------------------


def test_every_task_waits_for_its_secret_value_role_policies_and_certificate_attachments() -> None:
    for name in ("dev", "prod"):
        assert not [
            v for v in check(offline_run(name).records, context(name)) if v.rule == "task-dependencies"
        ]


def test_a_service_whose_task_would_not_wait_is_found() -> None:
    run = offline_run("dev")
    task = one(run, TASK_DEFINITION, "simulators-site-00")
    explicit = (
        "secretVersion:SecretVersion",
        "rolePolicy:RolePolicy",
        "policyAttachment",
        "thingPrincipalAttachment",
    )
    hasty = replace(
        task, dependencies=tuple(d for d in task.dependencies if not any(k in d for k in explicit))
    )
    violations = [
        v for v in check(swapped(run.records, task, hasty), context("dev")) if v.rule == "task-dependencies"
    ]
    assert {v.resource for v in violations} == {f"{ECS_SERVICE}::simulators-site-00-service"}
    missing = {v.message.split(" exists")[0].removeprefix("may start a task before ") for v in violations}
    assert missing == {
        "aws:secretsmanager/secretVersion:SecretVersion::devices-site-00-g1",
        "aws:iam/rolePolicy:RolePolicy::simulators-site-00-execution",
        "aws:iot/policyAttachment:PolicyAttachment::devices-site-00-g1",
        "aws:iot/thingPrincipalAttachment:ThingPrincipalAttachment::devices-site-00-g1",
    }
    monitoring = one(run, TASK_DEFINITION, "monitoring")
    bare = replace(monitoring, dependencies=())
    found = [
        v
        for v in check(swapped(run.records, monitoring, bare), context("dev"))
        if v.rule == "task-dependencies"
    ]
    assert {v.resource for v in found} == {f"{ECS_SERVICE}::monitoring-service"}
    assert any("secretVersion:SecretVersion::monitoring-grafana-admin" in v.message for v in found)


# --- production defaults ---------------------------------------------------------------------------

PROD = {
    "aws:region": "eu-west-1",
    "iotfactory:owner": "team",
    "iotfactory:simulatorCount": "1",
    "iotfactory:archiveMode": "batched",
    "iotfactory:allowedCidrs": json.dumps(["203.0.113.0/24"]),
    "iotfactory:certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
    "iotfactory:domainName": "factory.example.com",
    "iotfactory:accountId": "123456789012",
    "iotfactory:imageCache": json.dumps({"dockerHubSecretName": "ecr-pullthroughcache/docker-hub"}),
}


def prod_error(**changes: str | None) -> str:
    values = {**PROD, **{f"iotfactory:{key}": value for key, value in changes.items()}}
    with pytest.raises(ConfigError) as caught:
        load_settings("prod", {key: value for key, value in values.items() if value is not None})
    return str(caught.value)


def test_prod_refuses_http_unless_asked_for_explicitly() -> None:
    assert prod_error(certificateArn=None, domainName=None).startswith(
        "config iotfactory:certificateArn: required on a production stack (Grafana's login must not "
        "travel in "
        "clear text): set it and iotfactory:domainName to an ACM certificate in eu-west-1, or set "
        "iotfactory:allowInsecureHttp: true to serve HTTP on purpose; edit Pulumi.prod.yaml"
    )
    allowed = {**PROD, "iotfactory:allowInsecureHttp": "true"}
    del allowed["iotfactory:certificateArn"], allowed["iotfactory:domainName"]
    assert load_settings("prod", allowed).allow_insecure_http


def test_prod_is_pinned_to_its_account() -> None:
    assert prod_error(accountId=None).startswith(
        "config iotfactory:accountId: required on a production stack: the AWS provider is pinned to it"
    )
    provider = one(offline_run("prod"), "pulumi:providers:aws")
    assert json.loads(provider.inputs["allowedAccountIds"]) == [MOCK_ACCOUNT_ID]


def test_the_topic_namespace_is_the_programs_not_the_users() -> None:
    message = prod_error(fleet=json.dumps({"topic_namespace": "dev"}))
    assert "iotfactory:fleet.topic_namespace: set by the program to the stack's name ('prod')" in message


def test_the_image_cache_needs_docker_hub_credentials_and_an_account() -> None:
    assert (
        "iotfactory:imageCache.dockerHubSecretName: required because iotfactory:images.grafana "
        "is on Docker Hub" in (prod_error(imageCache=json.dumps({})))
    )
    dev = {**PROD, "iotfactory:imageCache": json.dumps({"enabled": True})}
    del dev["iotfactory:accountId"]
    with pytest.raises(ConfigError, match="the image cache needs iotfactory:accountId"):
        load_settings("dev", dev)


def test_grafanas_cookie_is_secure_behind_https() -> None:
    for name, secure in (("dev", "false"), ("prod", "true")):
        grafana = containers(one(offline_run(name), TASK_DEFINITION, "monitoring"))["grafana"]
        assert environment(grafana)["GF_SECURITY_COOKIE_SECURE"] == secure


def test_production_rule_catches_an_unpinned_provider_an_insecure_cookie_and_an_uncached_image() -> None:
    run = offline_run("prod")
    provider = one(run, "pulumi:providers:aws")
    records = swapped(
        run.records, provider, replace(provider, inputs={**provider.inputs, "allowedAccountIds": None})
    )
    task = one(run, TASK_DEFINITION, "monitoring")
    definitions = json.loads(task.inputs["containerDefinitions"])
    for container in definitions:
        if container["name"] == "grafana":
            container["image"] = "docker.io/grafana/grafana-oss:11.4.0"
            for variable in container["environment"]:
                if variable["name"] == "GF_SECURITY_COOKIE_SECURE":
                    variable["value"] = "false"
    records = swapped(
        records, task, replace(task, inputs={**task.inputs, "containerDefinitions": json.dumps(definitions)})
    )
    messages = sorted(v.message for v in check(records, context("prod")) if v.rule == "production-defaults")
    assert messages == [
        "Grafana's session cookie is not secure behind HTTPS",
        "container grafana pulls docker.io/grafana/grafana-oss:11.4.0 from outside ECR (image cache on)",
        "the provider is not pinned (allowedAccountIds)",
    ]


def test_prod_pulls_third_party_images_through_the_cache() -> None:
    prod, dev = offline_run("prod"), offline_run("dev")
    rules = {
        r.inputs["ecrRepositoryPrefix"]: r
        for r in prod.of_type("aws:ecr/pullThroughCacheRule:PullThroughCacheRule")
    }
    assert {prefix: rule.inputs["upstreamRegistryUrl"] for prefix, rule in rules.items()} == {
        "docker-hub": "registry-1.docker.io",
        "quay": "quay.io",
        "ecr-public": "public.ecr.aws",
    }
    assert (
        rules["docker-hub"].inputs["credentialArn"].endswith(":secret:ecr-pullthroughcache/docker-hub-AbCdEf")
    )
    assert "credentialArn" not in rules["quay"].inputs or not rules["quay"].inputs["credentialArn"]
    registry = f"{MOCK_ACCOUNT_ID}.dkr.ecr.eu-west-1.amazonaws.com"
    images = {c["name"]: c["image"] for c in containers(one(prod, TASK_DEFINITION, "monitoring")).values()}
    assert images["alertmanager"].startswith(f"{registry}/docker-hub/prom/alertmanager:v0.28.1@sha256:")
    del images["alertmanager"]
    assert images == {
        "config-init": f"{registry}/ecr-public/aws-cli/aws-cli:2.22.35",
        "prometheus": f"{registry}/quay/prometheus/prometheus:v2.55.1",
        "grafana": f"{registry}/docker-hub/grafana/grafana-oss:11.4.0",
    }
    execution = one(prod, "aws:iam/rolePolicy:RolePolicy", "monitoring-execution")
    (cache,) = [
        s for s in json.loads(execution.inputs["policy"])["Statement"] if s.get("Sid") == "PullThroughCache"
    ]
    assert "ecr:BatchImportUpstreamImage" in cache["Action"] and "ecr:CreateRepository" in cache["Action"]
    assert sorted(cache["Resource"]) == [
        f"arn:aws:ecr:eu-west-1:{MOCK_ACCOUNT_ID}:repository/{prefix}/*"
        for prefix in ("docker-hub", "ecr-public", "quay")
    ]
    task = one(prod, TASK_DEFINITION, "monitoring")
    assert {rule.urn for rule in rules.values()} <= set(task.dependencies)
    assert not dev.of_type("aws:ecr/pullThroughCacheRule:PullThroughCacheRule")
    dev_images = {c["image"] for c in containers(one(dev, TASK_DEFINITION, "monitoring")).values()}
    assert "docker.io/grafana/grafana-oss:11.4.0" in dev_images


def test_image_references_map_onto_the_cache() -> None:
    assert split_reference("python:3.11") == ("docker.io", "library/python:3.11")
    assert split_reference("grafana/grafana-oss:11.4.0") == ("docker.io", "grafana/grafana-oss:11.4.0")
    assert split_reference("localhost:5000/x:1") == ("localhost:5000", "x:1")
    assert (
        cached_reference("quay.io/prometheus/prometheus:v2.55.1", "r")
        == "r/quay/prometheus/prometheus:v2.55.1"
    )
    assert cached_reference("ghcr.io/o/i:1", "r") == "ghcr.io/o/i:1"  # not cached: used as written


# --- image tags and the ECS proof rotate-certs needs ------------------------------------------------


def test_the_image_tag_covers_every_build_setting() -> None:
    image = one(offline_run("dev"), "docker:index/image:Image")
    build = image.inputs["build"]
    dockerfile = REPO / "simulator" / "Dockerfile"
    assert image.inputs["imageName"].endswith(":" + build_tag(REPO, dockerfile, build))
    # pulumi-docker rebuilds when any build setting changes: so must the tag, or the push of the new
    # image would hit the immutable old tag.
    for setting, value in (
        ("platform", "linux/arm64"),
        ("dockerfile", "other/Dockerfile"),
        ("context", ".."),
    ):
        assert build_tag(REPO, dockerfile, {**build, setting: value}) != build_tag(REPO, dockerfile, build)


def test_outputs_name_each_sites_task_definition_and_generation() -> None:
    for name, generation in (("dev", "g1"), ("prod", "g2")):
        run = offline_run(name)
        tasks = {t.inputs["family"]: t.arn for t in run.of_type(TASK_DEFINITION)}
        sites = run.outputs["simulatorSites"]
        assert sorted(sites) == [f"site-{i:02d}" for i in range(len(sites))] and sites
        for site, exported in sites.items():
            assert exported == {
                "serviceName": f"simulator-{site}",
                "taskDefinitionArn": tasks[f"iotfactory-{name}-simulator-{site}"],
                "certGeneration": generation,
            }


def test_the_simulator_publishes_exactly_where_its_certificate_may() -> None:
    """The task's fleet (with the program's namespace) and the site's IoT policy agree on every topic."""
    from factory_core.fleet import FleetSettings
    from simulator.model.site import build_machine_specs

    run = offline_run("dev")
    task = one(run, TASK_DEFINITION, "simulators-site-01")
    fleet = FleetSettings.model_validate_json(
        environment(containers(task)["simulator"])["FACTORY_CONFIG_JSON"]
    )
    (policy,) = [p for p in run.of_type(IOT_POLICY) if p.inputs["name"].endswith("site-01-publish")]
    allowed = [pattern.removesuffix("*") for pattern in publish_patterns(policy)]
    specs = build_machine_specs(fleet, 1)
    topics = [topic for spec in specs for topic in (spec.telemetry_topic, spec.ground_truth_topic)]
    assert topics and all(any(topic.startswith(prefix) for prefix in allowed) for topic in topics)
    assert all(topic.startswith("factory/simulator/dev/") for topic in topics)
    assert all(topic.count("/") <= 7 for topic in topics)  # AWS IoT's topic depth limit


def test_the_policy_command_checks_both_stacks_and_their_isolation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m infra.policy --stack dev --stack prod`: every rule on each, then stack-isolation."""
    from infra.policy import main

    assert main(["--stack", "dev", "--stack", "prod", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
