"""The boto3 parts against a real moto server on an ephemeral port: `bootstrap` (S3, KMS, STS)
and the live ECS service state `status` shows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from support_cloud import isolate_from_real_aws, use_plain_terminal
from typer.testing import CliRunner

import cli
from automation import stack_context
from automation.recording_stack import RecordingStack
from automation.stack_context import CloudEnv
from automation.stack_port import BackendSettings
from local_stack.ports import free_port, wait_for_port

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account
BUCKET = f"iotfactory-pulumi-state-{ACCOUNT}-{REGION}"
BACKEND_URL = f"s3://{BUCKET}?region={REGION}&awssdk=v2"
PROVIDER = f"awskms://alias/iotfactory-pulumi-dev?region={REGION}"
STACK_FILE = f"""# dev: the team's development stack.
config:
  aws:region: {REGION}
  iotfactory:owner: platform-team   # who gets paged
  iotfactory:simulatorCount: 2
  iotfactory:archiveMode: direct
  iotfactory:allowedCidrs:
    - 203.0.113.0/24
"""


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto_server = Path(sys.executable).with_name("moto_server")
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        assert wait_for_port(port, timeout_s=30), log.read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def project(tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    (folder / "Pulumi.dev.yaml").write_text(STACK_FILE, encoding="utf-8")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # bootstrap must not need the Pulumi CLI
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    isolate_from_real_aws(monkeypatch, tmp_path)
    monkeypatch.setattr(stack_context, "cloud_env", lambda: CloudEnv(project_dir=folder))
    use_plain_terminal(monkeypatch)
    yield folder
    # moto keeps state for the module; start every test from an empty account.
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10
    )


def inventory() -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION)
    kms = boto3.client("kms", region_name=REGION)
    return {
        "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
        "keys": sorted(k["KeyId"] for k in kms.list_keys()["Keys"]),
        "aliases": sorted(
            (a["AliasName"], a.get("TargetKeyId"))
            for a in kms.list_aliases()["Aliases"]
            if "TargetKeyId" in a
        ),
    }


def bootstrap(*extra: str) -> Any:
    return CliRunner().invoke(cli.app, ["bootstrap", "--stack", "dev", *extra])


def test_bootstrap_creates_a_locked_down_state_bucket_and_kms_key(project: Path) -> None:
    result = bootstrap()
    assert result.exit_code == 0, result.output
    assert f"pulumi login '{BACKEND_URL}'" in result.output
    assert PROVIDER in result.output

    s3 = boto3.client("s3", region_name=REGION)
    kms = boto3.client("kms", region_name=REGION)
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    ownership = s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    (alias,) = [a for a in kms.list_aliases()["Aliases"] if a["AliasName"] == "alias/iotfactory-pulumi-dev"]
    key = kms.describe_key(KeyId=alias["TargetKeyId"])["KeyMetadata"]
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    # SSE-S3 for the shared bucket; the stack's key encrypts only its Pulumi secrets.
    (rule,) = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    policy = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(deny["Resource"]) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert lifecycle[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90


def test_bootstrap_records_backend_and_secrets_provider_where_the_verbs_read_them(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bootstrap().exit_code == 0
    stack_text = (project / "Pulumi.dev.yaml").read_text(encoding="utf-8")
    assert stack_text.startswith(f"secretsprovider: {PROVIDER}\n")
    assert "# who gets paged" in stack_text  # the file's comments survive
    backends = yaml.safe_load((project / "automation" / "backends.yaml").read_text(encoding="utf-8"))
    assert backends["stacks"]["dev"] == {"backend_url": BACKEND_URL, "secrets_provider": PROVIDER}

    # The cloud verbs open the stack with exactly that backend.
    stand_in = RecordingStack("dev")
    fake_bin = project.parent / "bin"
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setattr(
        stack_context, "cloud_env", lambda: CloudEnv(project_dir=project, open_stack=stand_in.opener())
    )
    result = CliRunner().invoke(cli.app, ["outputs", "--stack", "dev", "--json"])
    assert result.exit_code == 0, result.output
    assert stand_in.opened_with[-1][1] == BackendSettings(BACKEND_URL, PROVIDER)


def test_second_bootstrap_changes_nothing(project: Path) -> None:
    first = bootstrap("--json")
    assert first.exit_code == 0, first.output
    created = inventory()
    files = {
        path: path.read_bytes()
        for path in (project / "Pulumi.dev.yaml", project / "automation" / "backends.yaml")
    }

    second = bootstrap("--json")
    assert second.exit_code == 0, second.output
    first_report, second_report = json.loads(first.output), json.loads(second.output)
    assert first_report["changes"] and second_report["changes"] == []
    for key in ("backend_url", "secrets_provider", "bucket", "kms_key_arn", "kms_alias"):
        assert second_report[key] == first_report[key]
    assert inventory() == created
    assert len(created["buckets"]) == 1 and len(created["keys"]) == 1
    assert {path: path.read_bytes() for path in files} == files


def test_bootstrap_repairs_a_drifted_bucket(project: Path) -> None:
    assert bootstrap().exit_code == 0
    s3 = boto3.client("s3", region_name=REGION)
    s3.delete_public_access_block(Bucket=BUCKET)
    s3.delete_bucket_policy(Bucket=BUCKET)
    result = bootstrap("--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.output)["changes"]) == [
        "blocked all public access",
        "set a bucket policy that denies non-TLS requests",
    ]


def test_bootstrap_refuses_a_stack_that_uses_a_passphrase_before_creating_anything(project: Path) -> None:
    stack = project / "Pulumi.dev.yaml"
    stack.write_text("encryptionsalt: v1:abc:def\n" + STACK_FILE, encoding="utf-8")
    result = bootstrap()
    assert result.exit_code == 2
    assert "already uses secrets provider passphrase" in result.stderr
    assert "pulumi stack change-secrets-provider" in result.stderr
    assert inventory()["buckets"] == []


def test_bootstrap_without_credentials_is_one_line(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = bootstrap()
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no AWS credentials found" in result.stderr


def test_bootstrap_needs_a_region(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    (project / "Pulumi.dev.yaml").write_text("config:\n  iotfactory:owner: x\n", encoding="utf-8")
    result = bootstrap()
    assert result.exit_code == 2 and "set aws:region in Pulumi.dev.yaml" in result.stderr


def test_bootstrap_of_an_unknown_stack_lists_the_known_ones(project: Path) -> None:
    result = CliRunner().invoke(cli.app, ["bootstrap", "--stack", "prod"])
    assert result.exit_code == 2
    assert "unknown stack 'prod'" in result.stderr and "dev, local" in result.stderr


def with_ecs_service(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    outputs: dict[str, Any],
) -> RecordingStack:
    """ECS service sim-site-00 in moto (which never starts its task: 1 pending, IN_PROGRESS), a
    recording stack with these outputs behind the verbs, and a `pulumi` on PATH that fails if called."""
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName="iotfactory-dev")
    ecs.register_task_definition(
        family="sim", containerDefinitions=[{"name": "sim", "image": "x", "memory": 512}]
    )
    ecs.create_service(
        cluster="iotfactory-dev", serviceName="sim-site-00", taskDefinition="sim", desiredCount=1
    )
    stand_in = RecordingStack("dev", outputs=outputs)
    fake_bin = project.parent / "bin"
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)

    monkeypatch.setattr(
        stack_context, "cloud_env", lambda: CloudEnv(project_dir=project, open_stack=stand_in.opener())
    )
    return stand_in


def test_status_shows_live_ecs_service_state(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_ecs_service(
        project,
        monkeypatch,
        {
            "grafanaUrl": "http://alb.example/",
            "clusterName": "iotfactory-dev",
            "simulatorServiceNames": ["sim-site-00", "sim-site-01"],
            "region": REGION,
        },
    )
    result = CliRunner().invoke(cli.app, ["status", "--stack", "dev", "--json"])
    assert result.exit_code == 0, result.output
    services = {service["name"]: service for service in json.loads(result.output)["services"]}
    assert services["sim-site-00"]["desired"] == 1
    assert services["sim-site-00"]["running"] + services["sim-site-00"]["pending"] == 1
    assert services["sim-site-01"]["rollout"] == "MISSING" and services["sim-site-01"]["steady"] is False

    human = CliRunner().invoke(cli.app, ["status", "--stack", "dev"])
    assert human.exit_code == 0, human.output
    assert "service sim-site-00" in human.output and "grafanaUrl" in human.output


def test_rotation_pauses_when_ecs_does_not_confirm_the_simulators_are_steady(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto never starts tasks, so this service stays "1 pending, IN_PROGRESS": not steady.
    stand_in = with_ecs_service(
        project,
        monkeypatch,
        {
            "clusterName": "iotfactory-dev",
            "simulatorServiceNames": ["sim-site-00"],
            "simulatorSites": {
                "site-00": {
                    "serviceName": "sim-site-00",
                    "taskDefinitionArn": f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/sim:1",
                    "certGeneration": "g2",
                }
            },
            "region": REGION,
        },
    )

    result = CliRunner().invoke(cli.app, ["rotate-certs", "--stack", "dev"])
    assert result.exit_code == 1, result.output
    assert "paused before deactivating g1" in result.stderr
    assert "site-00 not confirmed on g2 (sim-site-00 0/1 running, 1 pending, in_progress" in result.stderr
    assert stand_in.operations().count("up") == 1
    assert json.loads(stand_in.config["iotfactory:rotation"]) == {"from": "g1", "to": "g2", "step": "started"}
    assert json.loads(stand_in.config["iotfactory:certGenerations"]) == [
        {"name": "g1", "status": "ACTIVE"},
        {"name": "g2", "status": "ACTIVE"},
    ]
