"""Stack config → settings: per-stack defaults, and config errors that name the key to fix."""

from __future__ import annotations

import json

import pytest
from infra_mocks import run_once, stack_config

from infra.settings import ConfigError, load_settings

BASE = {
    "aws:region": "eu-west-1",
    "iotfactory:owner": "team",
    "iotfactory:simulatorCount": "2",
    "iotfactory:archiveMode": "direct",
    "iotfactory:allowedCidrs": json.dumps(["198.51.100.0/24"]),
}


def config(**changes: object) -> dict[str, str]:
    values = dict(BASE)
    for key, value in changes.items():
        full = key if ":" in key else f"iotfactory:{key}"
        if value is None:
            values.pop(full, None)
        else:
            values[full] = value if isinstance(value, str) else json.dumps(value)
    return values


def error_of(stack: str, values: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(stack, values)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"owner": None}, "iotfactory:owner is required"),
        ({"simulatorCount": None}, "iotfactory:simulatorCount is required"),
        ({"aws:region": None}, "aws:region is required"),
        ({"allowedCidrs": None}, "iotfactory:allowedCidrs is required"),
        ({"simulatorCount": "-1"}, "iotfactory:simulatorCount: Input should be greater than or equal to 0"),
        ({"simulatorCount": "two"}, "iotfactory:simulatorCount: Input should be a valid integer"),
        (
            {"archiveMode": "weekly"},
            "iotfactory:archiveMode: Input should be 'direct', 'batched' or 'basic-ingest'",
        ),
        ({"fleet": {"qos": 2}}, "iotfactory:fleet.qos: Input should be 0 or 1"),
        (
            {"fleet": {"machines_per_line": {"cnc_mill": 0}}},
            "iotfactory:fleet: machines_per_line: at least one machine",
        ),
        ({"fleet": "{not json"}, "iotfactory:fleet: not valid JSON"),
        ({"simulatorcount": "3"}, "iotfactory:simulatorcount is not a known setting"),
        ({"allowedCidrs": ["10.0.0.1/8"]}, "iotfactory:allowedCidrs[0]: not a CIDR block"),
        ({"logRetentionDays": "4"}, "iotfactory:logRetentionDays: CloudWatch accepts one of"),
        (
            {"simulatorTask": {"cpu": 256, "memory": 4096}},
            "iotfactory:simulatorTask: Fargate cpu 256 takes memory",
        ),
        (
            {"archiveLifecycle": {"glacierAfterDays": 90, "expireAfterDays": 30}},
            "iotfactory:archiveLifecycle: expireAfterDays (30)",
        ),
        (
            {"certGenerations": [{"name": "g1", "status": "INACTIVE"}]},
            "iotfactory:certGenerations: at least one generation must be ACTIVE",
        ),
        (
            {"certGenerations": [{"name": "g1"}, {"name": "g1"}]},
            "iotfactory:certGenerations: generation names must be unique",
        ),
        ({"certGenerations": [{"name": "g1", "status": "REVOKED"}]}, "iotfactory:certGenerations[0].status"),
        (
            {"certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc"},
            "iotfactory:domainName: required when certificateArn",
        ),
        ({"network": {"availabilityZones": 1}}, "iotfactory:network.availabilityZones"),
        ({"simulatorImage": "repo:latest"}, "iotfactory:simulatorImage"),
    ],
)
def test_config_errors_name_the_key(changes: dict[str, object], expected: str) -> None:
    message = error_of("dev", config(**changes))
    assert expected in message
    assert "Pulumi.dev.yaml" in message


def test_production_refuses_prometheus_open_to_the_internet() -> None:
    message = error_of("prod", config(allowedCidrs=["0.0.0.0/0"]))
    assert "allowedCidrs" in message and "0.0.0.0/0" in message
    assert load_settings("dev", config(allowedCidrs=["0.0.0.0/0"])).allowed_cidrs == ("0.0.0.0/0",)


def test_local_is_not_a_pulumi_stack() -> None:
    message = error_of("local", config())
    assert message == (
        "stack 'local' is not a Pulumi stack; run the local pipeline with: python cli.py up --stack local"
    )


PROD_HTTPS = {
    "certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
    "domainName": "factory.example.com",
    "accountId": "123456789012",
    "imageCache": {"dockerHubSecretName": "ecr-pullthroughcache/docker-hub"},
}


def test_per_stack_defaults() -> None:
    dev = load_settings("dev", config())
    prod = load_settings("prod", config(archiveMode="batched", **PROD_HTTPS))
    assert (dev.image_cache.enabled, prod.image_cache.enabled) == (False, True)
    assert (dev.topic_namespace, prod.topic_namespace) == ("dev", "prod")
    assert prod.task_fleet.topic_namespace == "prod" and prod.fleet.topic_namespace is None
    assert (dev.production, prod.production) == (False, True)
    assert (dev.log_retention_days, prod.log_retention_days) == (3, 30)
    assert (dev.force_destroy, prod.force_destroy) == (True, False)
    assert (dev.container_insights, prod.container_insights) == (False, True)
    assert dev.archive_lifecycle.expire_after_days < prod.archive_lifecycle.expire_after_days
    assert (dev.client_id_prefix, prod.client_id_prefix) == ("iotfactory-dev-", "iotfactory-prod-")
    assert dev.tags == {"Project": "iotfactory", "Environment": "dev", "Owner": "team"}
    assert dev.sites == ("site-00", "site-01")
    assert [g.name for g in dev.cert_generations] == ["g1"]  # no key: the first generation


def test_serving_generation_is_the_newest_active_one() -> None:
    def serving(generations: list[dict[str, str]]) -> str:
        return load_settings("dev", config(certGenerations=generations)).serving_generation.name

    assert serving([{"name": "g1", "status": "ACTIVE"}, {"name": "g2", "status": "ACTIVE"}]) == "g2"
    assert serving([{"name": "g1", "status": "active"}, {"name": "g2", "status": "INACTIVE"}]) == "g1"
    assert serving([{"name": "g1", "status": "INACTIVE"}, {"name": "g2", "status": "ACTIVE"}]) == "g2"


def test_keys_the_cli_keeps_in_the_stack_file_are_accepted() -> None:
    values = config(
        rotation={"from": "g1", "to": "g2", "step": "added"},
        minSimulators="1",
        maxSimulators="20",
        iotPublishQuotaPerSecond="20000",
        confirmUpdates="true",
    )
    assert load_settings("dev", {**values, "otherproject:key": "x"}).simulator_count == 2


def test_stack_files_are_valid() -> None:
    dev = load_settings("dev", stack_config("dev"))
    prod = load_settings("prod", stack_config("prod"))
    assert (dev.archive_mode, prod.archive_mode) == ("direct", "batched")
    assert (dev.network.private_subnets, prod.network.private_subnets) == (False, True)
    assert prod.smtp is not None and dev.smtp is None


@pytest.mark.parametrize(
    ("stack", "changes", "expected"),
    [
        (
            "dev",
            {"archiveMode": "weekly"},
            "iotfactory:archiveMode: Input should be 'direct', 'batched' or 'basic-ingest'",
        ),
        (
            "local",
            {},
            "stack 'local' is not a Pulumi stack; run the local pipeline with: "
            "python cli.py up --stack local",
        ),
    ],
)
def test_program_fails_with_one_line_naming_the_key(
    stack: str, changes: dict[str, str], expected: str
) -> None:
    finished = run_once(stack, stack_config("dev", **changes))
    assert finished.returncode != 0
    assert expected in finished.stderr
    # The program raises pulumi.RunError: the Pulumi CLI prints its message alone, without a trace.
    assert "RunError" in finished.stderr
