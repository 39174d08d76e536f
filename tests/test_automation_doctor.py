"""`doctor`: every prerequisite of a stack checked together, each missing one listed with its fix.

AWS is moto (in process) for STS, S3, KMS, Secrets Manager and ACM. moto's Service Quotas knows
no AWS IoT Core quotas, so that one is answered by botocore's Stubber with a ListServiceQuotas
response of the real shape (the check finds the quota by its name, as the account lists it).
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws
from support_cloud import isolate_from_real_aws, use_plain_terminal
from typer.testing import CliRunner

import cli
from automation import doctor, stack_context
from automation.doctor import DoctorTools, cloud_doctor, covers
from automation.recording_stack import RecordingStack
from automation.stack_context import CloudEnv
from automation.stack_files import write_backend
from automation.stack_port import BackendSettings

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's
DOMAIN = "factory.example.com"
BUCKET = f"iotfactory-pulumi-state-{ACCOUNT}-{REGION}"
ALIAS = "alias/iotfactory-pulumi-prod"
SMTP_SECRET = "iotfactory/prod/smtp"
CACHE_SECRET = "ecr-pullthroughcache/docker-hub"


def self_signed(domain: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def publish_quota(value: float) -> dict[str, Any]:
    """ListServiceQuotas for AWS IoT Core, as an account with the publish quota applied lists it."""
    return {
        "Quotas": [
            {
                "ServiceCode": "iotcore",
                "ServiceName": "AWS IoT Core",
                "QuotaArn": f"arn:aws:servicequotas:{REGION}:{ACCOUNT}:iotcore/L-EXAMPLE01",
                "QuotaCode": "L-EXAMPLE01",
                "QuotaName": "Inbound publish requests per second per account",
                "Value": value,
                "Unit": "None",
                "Adjustable": True,
                "GlobalQuota": False,
            }
        ]
    }


@dataclass
class Account:
    """A moto account plus the stubbed Service Quotas client, handed out as one session."""

    quotas: Any
    stubber: Stubber
    session: Any = field(default_factory=lambda: boto3.session.Session(region_name=REGION))

    def client(self, name: str, **kwargs: Any) -> Any:
        return self.quotas if name == "service-quotas" else self.session.client(name, **kwargs)


@dataclass
class Setup:
    project: Path
    account: Account
    docker: str | None = "27.3.1"

    def tools(self) -> DoctorTools:
        return DoctorTools(docker_version=lambda: self.docker, aws_session=lambda region: self.account)

    def doctor(self, stack: str = "prod") -> Any:
        return cloud_doctor(stack, self.project, self.tools())

    def quota(self, value: float | None) -> None:
        if value is None:
            empty = {"Quotas": []}
            self.account.stubber.add_response("list_service_quotas", empty, {"ServiceCode": "iotcore"})
            self.account.stubber.add_response(
                "list_aws_default_service_quotas", empty, {"ServiceCode": "iotcore"}
            )
        else:
            self.account.stubber.add_response(
                "list_service_quotas", publish_quota(value), {"ServiceCode": "iotcore"}
            )

    def write_stack(self, **changes: Any) -> None:
        config: dict[str, Any] = {
            "aws:region": REGION,
            "iotfactory:owner": "team",
            "iotfactory:production": True,
            "iotfactory:accountId": ACCOUNT,
            "iotfactory:simulatorCount": 4,
            "iotfactory:archiveMode": "batched",
            "iotfactory:allowedCidrs": ["203.0.113.0/24"],
            "iotfactory:certificateArn": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0000",
            "iotfactory:domainName": DOMAIN,
            "iotfactory:imageCache": {"dockerHubSecretName": CACHE_SECRET},
            "iotfactory:smtp": {
                "secretName": SMTP_SECRET,
                "host": "email-smtp.eu-west-1.amazonaws.com:587",
                "fromAddress": "alerts@example.com",
                "toAddresses": "ops@example.com",
            },
        }
        config.update({key if ":" in key else f"iotfactory:{key}": value for key, value in changes.items()})
        text = yaml.safe_dump({"config": {k: v for k, v in config.items() if v is not None}})
        (self.project / "Pulumi.prod.yaml").write_text(text, encoding="utf-8")

    def everything_in_place(self) -> None:
        s3 = self.account.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        kms = self.account.client("kms")
        key = kms.create_key()["KeyMetadata"]
        kms.create_alias(AliasName=ALIAS, TargetKeyId=key["KeyId"])
        write_backend(
            self.project,
            "prod",
            BackendSettings(f"s3://{BUCKET}?region={REGION}&awssdk=v2", f"awskms://{ALIAS}?region={REGION}"),
        )
        secrets = self.account.client("secretsmanager")
        secrets.create_secret(Name=SMTP_SECRET, SecretString=json.dumps({"username": "u", "password": "p"}))
        secrets.create_secret(
            Name=CACHE_SECRET, SecretString=json.dumps({"username": "u", "accessToken": "t"})
        )
        certificate, key_pem = self_signed(DOMAIN)
        arn = self.account.client("acm").import_certificate(Certificate=certificate, PrivateKey=key_pem)[
            "CertificateArn"
        ]
        self.write_stack(certificateArn=arn)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pulumi").write_text(f"#!/bin/sh\necho v{doctor.MINIMUM_PULUMI_CLI}\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    isolate_from_real_aws(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))  # no `pulumi login` here
    with mock_aws():
        quotas = boto3.client("service-quotas", region_name=REGION)
        stubber = Stubber(quotas)
        stubber.activate()
        state = Setup(project, Account(quotas, stubber))
        state.write_stack()
        yield state


def failing(report: Any) -> dict[str, str]:
    return {check.name: f"{check.detail} | {check.fix}" for check in report.checks if not check.ok}


def test_everything_in_place_is_all_ticks_and_exit_0(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.everything_in_place()
    setup.quota(50_000)
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(project_dir=setup.project, doctor=lambda s, p: setup.doctor(s)),
    )
    use_plain_terminal(monkeypatch)
    result = CliRunner().invoke(cli.app, ["doctor", "--stack", "prod"])
    assert result.exit_code == 0, result.output
    names = [line.split(":")[0] for line in result.output.splitlines() if line.startswith("✓ ")]
    assert names == [
        "✓ stack config",
        "✓ Pulumi CLI",
        "✓ Docker",
        "✓ AWS credentials",
        "✓ AWS account",
        "✓ state backend",
        "✓ secrets key",
        "✓ SMTP secret",
        "✓ image cache secret",
        "✓ HTTPS certificate",
        "✓ IoT publish quota",
    ]
    assert "stack 'prod': every prerequisite is in place" in result.output
    setup.account.stubber.assert_no_pending_responses()


def test_a_fresh_account_gets_every_missing_prerequisite_at_once(setup: Setup) -> None:
    setup.docker = None
    # 4 simulators of 2,000 msg/s each: 8,000 msg/s against an account quota of 5,000.
    setup.write_stack(fleet={"lines_per_site": 2, "machines_per_line": {"cnc_mill": 1000}})
    setup.quota(5_000)
    report = setup.doctor()
    assert report.failed and report.failed_as_usage
    missing = failing(report)
    assert set(missing) == {
        "Docker",
        "state backend",
        "secrets key",
        "SMTP secret",
        "image cache secret",
        "HTTPS certificate",
        "IoT publish quota",
    }
    assert "python cli.py bootstrap --stack prod" in missing["state backend"]
    assert "python cli.py bootstrap --stack prod" in missing["secrets key"]
    assert f"{SMTP_SECRET} does not exist" in missing["SMTP secret"]
    assert "aws secretsmanager create-secret --name iotfactory/prod/smtp" in missing["SMTP secret"]
    assert f"{CACHE_SECRET} does not exist" in missing["image cache secret"]
    assert (
        "does not exist" in missing["HTTPS certificate"]
        and "aws acm request-certificate" in missing["HTTPS certificate"]
    )
    assert (
        "8,000 msg/s" in missing["IoT publish quota"] and "5,000 publishes/s" in missing["IoT publish quota"]
    )
    assert "raise 'Inbound publish requests'" in missing["IoT publish quota"]
    assert "iotfactory:simulatorImage" in missing["Docker"]


def test_doctor_exits_2_with_the_whole_list(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.quota(20_000)
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(project_dir=setup.project, doctor=lambda s, p: setup.doctor(s)),
    )
    result = CliRunner().invoke(cli.app, ["doctor", "--stack", "prod", "--json"])
    assert result.exit_code == 2
    (report,) = [json.loads(line) for line in result.output.splitlines()]
    assert report["missing"] == len([check for check in report["checks"] if not check["ok"]]) == 5
    assert all(check["fix"] for check in report["checks"] if not check["ok"])


def test_up_and_preview_list_every_missing_prerequisite_before_any_work(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in = RecordingStack("prod")
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(
            project_dir=setup.project, open_stack=stand_in.opener(), doctor=lambda s, p: setup.doctor(s)
        ),
    )
    use_plain_terminal(monkeypatch)
    for verb, *flags in (("up", "--yes"), ("preview",)):
        setup.quota(20_000)
        result = CliRunner().invoke(cli.app, [verb, "--stack", "prod", *flags])
        assert result.exit_code == 2, result.output
        listed = [line for line in result.output.splitlines() if line.startswith("✗ ")]
        assert [line.split(":")[0] for line in listed] == [
            "✗ state backend",
            "✗ secrets key",
            "✗ SMTP secret",
            "✗ image cache secret",
            "✗ HTTPS certificate",
        ]
        assert result.stderr == (
            f"error: {verb} of stack 'prod' needs 5 missing prerequisites (listed above): state backend, "
            "secrets key, SMTP secret, image cache secret, HTTPS certificate; fix them, then "
            "`python cli.py doctor --stack prod` checks again\n"
        )
    assert stand_in.operations() == []


def test_credentials_for_another_account_are_refused(setup: Setup) -> None:
    setup.write_stack(accountId="210987654321")
    setup.quota(20_000)
    missing = failing(setup.doctor())
    assert missing["AWS account"].startswith(
        "the credentials are for 123456789012, the stack is pinned to 210987654321 (iotfactory:accountId)"
    )


def test_without_credentials_the_aws_checks_wait_for_them(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    setup.account.session = boto3.session.Session(region_name=REGION)
    report = setup.doctor()
    missing = failing(report)
    assert missing["AWS credentials"].startswith("none found | run `aws sso login`")
    assert [check.name for check in report.checks][-1] == "AWS credentials"


@pytest.mark.parametrize(
    ("version", "ok"),
    [(doctor.MINIMUM_PULUMI_CLI, True), ("3.100.0", False), ("4.0.0", True), ("garbage", False)],
)
def test_pulumi_cli_version(version: str, ok: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "pulumi"
    fake.write_text(f"#!/bin/sh\necho v{version}\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    check = doctor.check_pulumi(DoctorTools())
    assert check.ok is ok, check
    if not ok:
        assert f"needs {doctor.MINIMUM_PULUMI_CLI} or newer" in check.detail


def test_the_minimum_pulumi_cli_is_the_locked_sdk_version() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    (locked,) = [package["version"] for package in lock["package"] if package["name"] == "pulumi"]
    assert locked == doctor.MINIMUM_PULUMI_CLI


def test_a_prebuilt_image_needs_no_docker(setup: Setup) -> None:
    setup.docker = None
    setup.write_stack(simulatorImage="123456789012.dkr.ecr.eu-west-1.amazonaws.com/sim@sha256:" + "a" * 64)
    setup.quota(20_000)
    (docker,) = [check for check in setup.doctor().checks if check.name == "Docker"]
    assert docker.ok and docker.detail.startswith("not needed: prebuilt image")


def test_certificate_pending_validation_or_for_another_name(setup: Setup) -> None:
    acm = setup.account.client("acm")
    pending = acm.request_certificate(DomainName=DOMAIN, ValidationMethod="DNS")["CertificateArn"]
    setup.write_stack(certificateArn=pending)
    setup.quota(20_000)
    assert (
        "is PENDING_VALIDATION | complete its DNS validation" in failing(setup.doctor())["HTTPS certificate"]
    )
    certificate, key = self_signed("other.example.com")
    other = acm.import_certificate(Certificate=certificate, PrivateKey=key)["CertificateArn"]
    setup.write_stack(certificateArn=other)
    setup.quota(20_000)
    assert f"does not cover {DOMAIN}" in failing(setup.doctor())["HTTPS certificate"]
    setup.write_stack(certificateArn=other.replace(REGION, "us-east-1"))
    setup.quota(20_000)
    assert "in another region than the ALB" in failing(setup.doctor())["HTTPS certificate"]


def test_a_quota_missing_from_service_quotas_falls_back_to_the_documented_default(setup: Setup) -> None:
    setup.quota(None)
    (quota,) = [check for check in setup.doctor().checks if check.name == "IoT publish quota"]
    assert quota.ok and "the documented default" in quota.detail and "of 20,000 publishes/s" in quota.detail


def test_a_configured_quota_above_the_accounts_is_refused(setup: Setup) -> None:
    setup.write_stack(iotPublishQuotaPerSecond=50_000)
    setup.quota(20_000)
    missing = failing(setup.doctor())
    assert missing["IoT publish quota"].startswith(
        "iotfactory:iotPublishQuotaPerSecond says 50,000 but the account's quota is 20,000/s"
    )


def test_a_pulumi_login_stands_for_an_unrecorded_backend(setup: Setup, tmp_path: Path) -> None:
    home = tmp_path / "pulumi-home"
    home.mkdir()
    login = json.dumps({"current": "https://api.pulumi.com"})
    (home / "credentials.json").write_text(login, encoding="utf-8")
    setup.quota(20_000)
    checks = {check.name: check for check in setup.doctor().checks}
    assert checks["state backend"].ok and checks["state backend"].detail.startswith("https://api.pulumi.com")
    assert (
        checks["secrets key"].ok and checks["secrets key"].detail == "the default of https://api.pulumi.com"
    )


def test_certificate_names_cover_one_wildcard_level() -> None:
    assert covers(["factory.example.com"], "factory.example.com")
    assert covers(["*.example.com"], "factory.example.com")
    assert not covers(["*.example.com"], "a.factory.example.com")
    assert not covers(["example.com"], "factory.example.com")


# --- the local stack's doctor ---------------------------------------------------------------------


def test_local_doctor_lists_missing_tools_with_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOTFACTORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("IOTFACTORY_LOCAL_CONFIG", str(tmp_path / "Pulumi.local.yaml"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    use_plain_terminal(monkeypatch)
    result = CliRunner().invoke(cli.app, ["doctor", "--stack", "local"])
    assert result.exit_code == 2, result.output
    assert "✗ mosquitto: not found on PATH" in result.output
    assert "fix: apt-get install mosquitto mosquitto-clients" in result.output
    assert "✗ prometheus: not found on PATH" in result.output


def test_local_doctor_passes_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTFACTORY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("IOTFACTORY_LOCAL_CONFIG", str(tmp_path / "Pulumi.local.yaml"))
    result = CliRunner().invoke(cli.app, ["doctor", "--stack", "local", "--json"])
    report = json.loads(result.output)
    by_name = {check["name"]: check for check in report["checks"]}
    assert by_name["mosquitto"]["ok"] and by_name["prometheus"]["ok"], report
    assert result.exit_code == (0 if all(check["ok"] for check in report["checks"]) else 2)


def test_a_stack_file_that_does_not_validate_is_listed_with_its_key(setup: Setup) -> None:
    setup.write_stack(fleet={"qos": 2})
    setup.quota(20_000)
    missing = failing(setup.doctor())
    assert missing["stack config"].startswith("does not validate | config iotfactory:fleet.qos")


def test_without_a_region_the_aws_checks_cannot_run(setup: Setup) -> None:
    setup.write_stack(**{"aws:region": None})
    report = setup.doctor()
    missing = failing(report)
    assert "AWS region" in missing and "set aws:region in Pulumi.prod.yaml" in missing["AWS region"]
    assert "AWS credentials" not in {check.name for check in report.checks}


def test_a_disabled_key_and_a_secret_being_deleted_are_found(setup: Setup) -> None:
    setup.everything_in_place()
    kms = setup.account.client("kms")
    key_id = kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=key_id)
    setup.account.client("secretsmanager").delete_secret(SecretId=SMTP_SECRET, RecoveryWindowInDays=7)
    setup.quota(20_000)
    missing = failing(setup.doctor())
    assert missing["secrets key"].startswith(f"{ALIAS} is Disabled | enable {key_id}")
    assert missing["SMTP secret"] == (
        f"{SMTP_SECRET} is scheduled for deletion | "
        f"`aws secretsmanager restore-secret --secret-id {SMTP_SECRET}`"
    )
