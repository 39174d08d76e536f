"""The rotation function's four steps against moto's Secrets Manager, IAM and ECS (in process).

moto runs `RotateSecret` the way AWS does: it stages a new version id AWSPENDING and invokes the
function with createSecret, setSecret, testSecret and finishSecret in turn. Lambda itself cannot run
here (no Docker), so moto's invoke is pointed at `handler.rotate` in this process, with moto's boto3
clients: everything the function does goes through the real AWS APIs as moto models them.
"""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto import mock_aws
from moto.awslambda.models import LambdaBackend
from support_cloud import isolate_from_real_aws

from infra.components.secret_rotation import HANDLER_FILE
from infra.rotation_lambda import handler
from infra.rotation_lambda.handler import RotationError, rotate, ses_smtp_password

REGION = "eu-west-1"
CLUSTER, SERVICE = "iotfactory-dev", "monitoring"
SES_USER = "iotfactory-dev-ses-smtp"


@dataclass
class Aws:
    clients: dict[str, Any]
    function_arn: str
    environ: dict[str, str] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    service_updates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def secretsmanager(self) -> Any:
        return self.clients["secretsmanager"]

    def rotate_now(self, secret_arn: str) -> None:
        """What Secrets Manager does on the schedule (and `aws secretsmanager rotate-secret` does now)."""
        self.secretsmanager.rotate_secret(
            SecretId=secret_arn,
            RotationLambdaARN=self.function_arn,
            RotationRules={"AutomaticallyAfterDays": 30},
        )

    def stages(self, secret_arn: str) -> dict[str, list[str]]:
        return self.secretsmanager.describe_secret(SecretId=secret_arn)["VersionIdsToStages"]

    def value(self, secret_arn: str, stage: str = "AWSCURRENT") -> str:
        return self.secretsmanager.get_secret_value(SecretId=secret_arn, VersionStage=stage)["SecretString"]


def _package() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(HANDLER_FILE, "handler.py")
    return buffer.getvalue()


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    isolate_from_real_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        clients = {name: boto3.client(name, region_name=REGION) for name in ("secretsmanager", "iam", "ecs")}
        role = clients["iam"].create_role(RoleName="rotation", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        function = boto3.client("lambda", region_name=REGION).create_function(
            FunctionName="rotate",
            Runtime="python3.12",
            Role=role,
            Handler="handler.lambda_handler",
            Code={"ZipFile": _package()},
        )
        clients["ecs"].create_cluster(clusterName=CLUSTER)
        clients["ecs"].register_task_definition(
            family="monitoring", containerDefinitions=[{"name": "grafana", "image": "grafana", "memory": 512}]
        )
        clients["ecs"].create_service(
            cluster=CLUSTER, serviceName=SERVICE, taskDefinition="monitoring", desiredCount=1
        )
        state = Aws(clients, function["FunctionArn"])
        state.environ = {"MONITORING_CLUSTER": CLUSTER, "MONITORING_SERVICE": SERVICE}
        clients["ecs"].meta.events.register(
            "provide-client-params.ecs.UpdateService",
            lambda params, **_: state.service_updates.append(dict(params)),
        )

        def invoke(
            backend: LambdaBackend, function_name: str, qualifier: Any, body: Any, **_: Any
        ) -> bytes:
            event = json.loads(body)
            state.steps.append(event["Step"])
            rotate(event, clients, state.environ)
            return b""

        monkeypatch.setattr(LambdaBackend, "invoke", invoke)
        yield state


def grafana_secret(aws: Aws, value: str = "the-first-password-from-pulumi-0") -> str:
    aws.environ["ROTATION_KIND"] = "grafana-admin"
    return aws.secretsmanager.create_secret(Name="grafana-admin", SecretString=value)["ARN"]


def test_grafana_rotation_runs_the_four_steps_and_rolls_monitoring(aws: Aws) -> None:
    arn = grafana_secret(aws)
    before = aws.value(arn)
    aws.rotate_now(arn)
    assert aws.steps == ["createSecret", "setSecret", "testSecret", "finishSecret"]
    new = aws.value(arn)
    assert new != before and re.fullmatch(r"[A-Za-z0-9]{32}", new)
    assert aws.value(arn, "AWSPREVIOUS") == before
    current = [version for version, stages in aws.stages(arn).items() if "AWSCURRENT" in stages]
    assert len(current) == 1
    assert not any("AWSPENDING" in stages for stages in aws.stages(arn).values())  # nothing in progress
    assert aws.service_updates == [{"cluster": CLUSTER, "service": SERVICE, "forceNewDeployment": True}]
    # The next scheduled rotation starts from the new value.
    aws.rotate_now(arn)
    assert aws.value(arn, "AWSPREVIOUS") == new and aws.value(arn) not in (new, before)


def test_create_is_idempotent_per_client_request_token(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets Manager retries a step that timed out: the same token must not make a second value."""
    arn = grafana_secret(aws)
    pending: list[str] = []
    original = handler.create_secret

    def create_twice(secretsmanager: Any, secret: str, token: str, make: Any) -> None:
        for _ in range(2):
            original(secretsmanager, secret, token, make)
            pending.append(secretsmanager.get_secret_value(SecretId=secret, VersionId=token)["SecretString"])

    monkeypatch.setattr(handler, "create_secret", create_twice)
    aws.rotate_now(arn)
    assert len(pending) == 2 and pending[0] == pending[1] == aws.value(arn)


def test_steps_repeated_after_the_finish_change_nothing(aws: Aws) -> None:
    arn = grafana_secret(aws)
    aws.rotate_now(arn)
    token = next(version for version, stages in aws.stages(arn).items() if "AWSCURRENT" in stages)
    stages, value = aws.stages(arn), aws.value(arn)
    for step in ("createSecret", "finishSecret"):
        rotate({"SecretId": arn, "ClientRequestToken": token, "Step": step}, aws.clients, aws.environ)
    assert (aws.stages(arn), aws.value(arn)) == (stages, value)


def test_a_failed_test_leaves_the_current_value_in_place(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = grafana_secret(aws)
    monkeypatch.setitem(
        handler.KINDS, "grafana-admin", (lambda *_: "too-short", handler.test_grafana_password)
    )
    with pytest.raises(RotationError, match="not 32 letters and digits"):
        aws.rotate_now(arn)
    assert aws.steps == ["createSecret", "setSecret", "testSecret"]
    assert aws.value(arn) == "the-first-password-from-pulumi-0"
    assert aws.value(arn, "AWSPENDING") == "too-short" and aws.service_updates == []


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"ClientRequestToken": str(uuid.uuid4()), "Step": "createSecret"}, "has no stage for rotation"),
        ({"Step": "launchSecret"}, "unknown step"),
    ],
)
def test_events_that_do_not_belong_to_a_rotation_are_refused(
    aws: Aws, event: dict[str, str], message: str
) -> None:
    arn = grafana_secret(aws)
    aws.environ["MONITORING_SERVICE"] = ""
    aws.rotate_now(arn)  # rotation enabled, one version AWSCURRENT and AWSPENDING
    token = next(version for version, stages in aws.stages(arn).items() if "AWSPREVIOUS" in stages)
    aws.secretsmanager.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", MoveToVersionId=token
    )
    with pytest.raises(RotationError, match=message):
        rotate({"SecretId": arn, "ClientRequestToken": token, **event}, aws.clients, aws.environ)


def test_a_secret_without_rotation_is_refused(aws: Aws) -> None:
    arn = grafana_secret(aws)
    token = next(iter(aws.stages(arn)))
    with pytest.raises(RotationError, match="does not have rotation enabled"):
        rotate(
            {"SecretId": arn, "ClientRequestToken": token, "Step": "createSecret"}, aws.clients, aws.environ
        )


def test_an_undeployed_monitoring_service_does_not_fail_the_rotation(aws: Aws) -> None:
    arn = grafana_secret(aws)
    aws.environ["MONITORING_CLUSTER"] = "not-created-yet"
    aws.rotate_now(arn)
    assert aws.steps[-1] == "finishSecret" and aws.value(arn, "AWSPREVIOUS")


# --- SES SMTP credentials ----------------------------------------------------------------------------


def ses_secret(aws: Aws) -> tuple[str, str]:
    iam = aws.clients["iam"]
    iam.create_user(UserName=SES_USER)
    first = iam.create_access_key(UserName=SES_USER)["AccessKey"]
    aws.environ |= {"ROTATION_KIND": "ses-smtp", "SES_IAM_USER": SES_USER, "SES_REGION": REGION}
    document = {
        "username": first["AccessKeyId"],
        "password": ses_smtp_password(first["SecretAccessKey"], REGION),
    }
    arn = aws.secretsmanager.create_secret(Name="smtp", SecretString=json.dumps(document))["ARN"]
    return arn, first["AccessKeyId"]


def active_keys(aws: Aws) -> list[str]:
    keys = aws.clients["iam"].list_access_keys(UserName=SES_USER)["AccessKeyMetadata"]
    return sorted(key["AccessKeyId"] for key in keys if key["Status"] == "Active")


def test_ses_rotation_issues_a_new_key_and_keeps_at_most_two(aws: Aws) -> None:
    arn, first = ses_secret(aws)
    aws.rotate_now(arn)
    second = json.loads(aws.value(arn))
    assert second["username"] != first and sorted([first, second["username"]]) == active_keys(aws)
    assert json.loads(aws.value(arn, "AWSPREVIOUS"))["username"] == first  # still valid for a running task
    aws.rotate_now(arn)
    third = json.loads(aws.value(arn))
    # IAM allows two keys: the one from two rotations ago is gone, the previous one stays.
    assert active_keys(aws) == sorted([second["username"], third["username"]])
    assert len(aws.service_updates) == 2


def test_ses_test_step_refuses_a_key_iam_does_not_have(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    arn, first = ses_secret(aws)

    def forged(current: str, clients: Any, environ: Any) -> str:
        return json.dumps({"username": "AKIA" + "Z" * 16, "password": ses_smtp_password("x", REGION)})

    monkeypatch.setitem(handler.KINDS, "ses-smtp", (forged, handler.test_ses_credentials))
    with pytest.raises(RotationError, match="is not an active key of"):
        aws.rotate_now(arn)
    assert json.loads(aws.value(arn))["username"] == first


def test_the_smtp_password_is_sigv4s_signing_key_over_sendrawemail() -> None:
    """AWS's derivation is SigV4 key derivation on the date 11111111, then HMAC of "SendRawEmail",
    prefixed with version 4: checked against botocore's own SigV4 implementation."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    auth = SigV4Auth(Credentials("AKIAIOSFODNN7EXAMPLE", secret), "ses", REGION)
    request = AWSRequest(method="POST", url="https://email.eu-west-1.amazonaws.com/")
    request.context["timestamp"] = "11111111T000000Z"
    expected = bytes([4]) + bytes.fromhex(auth.signature("SendRawEmail", request))
    password = ses_smtp_password(secret, REGION)
    assert base64.b64decode(password) == expected and len(password) == 44
    assert ses_smtp_password(secret, "us-east-1") != password  # the region is part of it
