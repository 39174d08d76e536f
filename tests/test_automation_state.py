"""State and secrets that stay consistent: one bucket scheme for every stack, a generated CI policy,
and the lock an interrupted update may leave, read from the backend (moto, in process)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from support_cloud import isolate_from_real_aws, use_plain_terminal
from typer.testing import CliRunner

import cli
from automation import stack_context
from automation.ci_policy import ci_role_policy, render
from automation.stack_context import CloudEnv
from automation.state_backend import kms_alias
from automation.state_lock import read_locks

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"
ACCOUNT = "123456789012"
BUCKET = f"iotfactory-pulumi-state-{ACCOUNT}-{REGION}"
STACK_FILE = f"""config:
  aws:region: {REGION}
  iotfactory:owner: team
  iotfactory:simulatorCount: 1
  iotfactory:archiveMode: direct
  iotfactory:allowedCidrs:
    - 203.0.113.0/24
"""
# The example values docs/cloud.md shows the generated policy for.
EXAMPLE_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def requests_over_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto evaluates bucket policies without their conditions, so the bucket's "deny unless TLS"
    statement would deny every request; these requests stand for HTTPS ones, which it never denies."""
    from moto.s3.models import FakeBucket

    original = FakeBucket.get_permission
    tls_only = {"Bool": {"aws:SecureTransport": "false"}}

    def permission(bucket: Any, action: str, resource: str) -> Any:
        if bucket.policy is None:
            return original(bucket, action, resource)
        policy = json.loads(bucket.policy)
        kept = [s for s in policy["Statement"] if s.get("Condition") != tls_only]
        saved = bucket.policy
        bucket.policy = json.dumps({**policy, "Statement": kept}).encode() if kept else None
        try:
            return original(bucket, action, resource)
        finally:
            bucket.policy = saved

    monkeypatch.setattr(FakeBucket, "get_permission", permission)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    for stack in ("dev", "prod"):
        (folder / f"Pulumi.{stack}.yaml").write_text(STACK_FILE, encoding="utf-8")
    isolate_from_real_aws(monkeypatch, tmp_path)
    requests_over_tls(monkeypatch)
    monkeypatch.setattr(stack_context, "cloud_env", lambda: CloudEnv(project_dir=folder))
    use_plain_terminal(monkeypatch)
    with mock_aws():
        yield folder


def bootstrap(stack: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli.app, ["bootstrap", "--stack", stack, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def s3() -> Any:
    return boto3.client("s3", region_name=REGION)


def write_state(stack: str) -> str:
    """What Pulumi's S3 backend does on every update: PUT the checkpoint, no encryption headers."""
    key = f".pulumi/stacks/iotfactory/{stack}.json"
    s3().put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"version": 3, "stack": stack}).encode())
    return key


def encryption_of(key: str) -> tuple[str | None, str | None]:
    head = s3().head_object(Bucket=BUCKET, Key=key)
    return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")


def secrets_round_trip(stack: str) -> bool:
    """A stack's secrets provider key still encrypts and decrypts (its alias points where it did)."""
    kms = boto3.client("kms", region_name=REGION)
    blob = kms.encrypt(KeyId=kms_alias(stack), Plaintext=b"data key")["CiphertextBlob"]
    return kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"data key"


def test_bootstrapping_another_stack_never_changes_what_the_first_one_needs(project: Path) -> None:
    """dev, then prod, then dev again: every stack's state stays readable without another stack's key."""
    dev = bootstrap("dev")
    dev_state = write_state("dev")
    prod = bootstrap("prod")
    # An update of dev after prod's bootstrap: before, the bucket then encrypted it with prod's key.
    dev_state = write_state("dev")
    prod_state = write_state("prod")
    again = bootstrap("dev")
    assert again["changes"] == []
    for key in (dev_state, prod_state):
        assert encryption_of(key) == ("AES256", None)
        assert json.loads(s3().get_object(Bucket=BUCKET, Key=key)["Body"].read())["version"] == 3
    assert dev["kms_key_arn"] == again["kms_key_arn"] != prod["kms_key_arn"]
    assert secrets_round_trip("dev") and secrets_round_trip("prod")
    (rule,) = s3().get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}


def test_a_bucket_from_the_per_stack_kms_scheme_is_migrated_once(project: Path) -> None:
    kms = boto3.client("kms", region_name=REGION)
    keys = {}
    for stack in ("dev", "prod"):
        keys[stack] = kms.create_key()["KeyMetadata"]
        kms.create_alias(AliasName=kms_alias(stack), TargetKeyId=keys[stack]["KeyId"])
    s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    rule = {
        "ApplyServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": keys["prod"]["Arn"],
        }
    }
    s3().put_bucket_encryption(Bucket=BUCKET, ServerSideEncryptionConfiguration={"Rules": [rule]})
    dev_state, prod_state = write_state("dev"), write_state("prod")
    assert encryption_of(dev_state) == ("aws:kms", keys["prod"]["Arn"])  # dev's state under prod's key

    first = bootstrap("dev")
    assert (
        "set default encryption to SSE-S3 (each stack's KMS key encrypts only its secrets)"
        in first["changes"]
    )
    assert "re-encrypted 2 state object(s) from SSE-KMS to SSE-S3" in first["changes"]
    assert encryption_of(dev_state) == encryption_of(prod_state) == ("AES256", None)
    assert first["kms_key_arn"] == keys["dev"]["Arn"]  # the existing key is kept
    assert not [change for change in bootstrap("prod")["changes"] if "encrypt" in change]
    assert bootstrap("prod")["changes"] == [] and bootstrap("dev")["changes"] == []


def parliament_findings(policy: dict[str, Any]) -> list[tuple[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parliament imports pkg_resources, deprecated upstream
        from parliament import analyze_policy_string

        analyzed = analyze_policy_string(json.dumps(policy))
    return [(finding.issue, finding.detail) for finding in analyzed.findings]


def test_the_generated_ci_policy_passes_parliament_and_the_hand_written_one_did_not() -> None:
    policy = ci_role_policy(BUCKET, EXAMPLE_KEY)
    assert parliament_findings(policy) == []
    kms = [s for s in policy["Statement"] if any(a.startswith("kms:") for a in s["Action"])]
    assert kms == [
        {
            "Sid": "StackSecrets",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [EXAMPLE_KEY],
        }
    ]
    # What docs/cloud.md used to say: kms:Decrypt "on alias/iotfactory-pulumi-dev", which grants nothing.
    by_alias = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/iotfactory-pulumi-dev"],
            }
        ],
    }
    assert [issue for issue, _ in parliament_findings(by_alias)] == ["RESOURCE_MISMATCH"]


def test_bootstrap_writes_the_ci_policy_for_its_real_bucket_and_key(project: Path) -> None:
    report = bootstrap("dev")
    path = project / report["ci_policy_file"]
    assert report["ci_policy_file"] == "automation/ci-policies/dev.json"
    assert json.loads(path.read_text(encoding="utf-8")) == ci_role_policy(BUCKET, report["kms_key_arn"])


def test_docs_show_exactly_the_generated_policy() -> None:
    text = (REPO / "docs" / "cloud.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- generated: ci_role_policy -->\n```json\n(?P<policy>.*?)```", text, re.DOTALL)
    assert match, "docs/cloud.md lost its generated CI policy block"
    assert match["policy"] == render(ci_role_policy(BUCKET, EXAMPLE_KEY))


# --- the lock an interrupted update may leave ------------------------------------------------------


def test_locks_are_read_from_an_s3_backend(project: Path) -> None:
    bootstrap("dev")
    url = f"s3://{BUCKET}?region={REGION}&awssdk=v2"
    assert read_locks(url, "iotfactory", "dev") == []
    content = {"pid": 4242, "username": "ci", "hostname": "runner-7", "timestamp": "2026-12-04T10:00:00Z"}
    key = ".pulumi/locks/organization/iotfactory/dev/6f1e.json"
    s3().put_object(Bucket=BUCKET, Key=key, Body=json.dumps(content).encode())
    (lock,) = read_locks(url, "iotfactory", "dev")
    assert lock.where == f"s3://{BUCKET}/{key}"
    assert lock.holder == "taken by ci@runner-7 (pid 4242) at 2026-12-04T10:00:00Z"
    assert read_locks(url, "iotfactory", "prod") == []


def test_locks_in_a_folder_backend_and_backends_that_cannot_tell(tmp_path: Path) -> None:
    folder = tmp_path / "state" / ".pulumi" / "locks" / "dev"  # a backend from before projects
    folder.mkdir(parents=True)
    (folder / "a.json").write_text('{"username": "me", "hostname": "laptop", "pid": 1}', encoding="utf-8")
    (lock,) = read_locks(f"file://{tmp_path / 'state'}", "iotfactory", "dev")
    assert lock.holder.startswith("taken by me@laptop (pid 1)")
    assert read_locks(None, "iotfactory", "dev") is None
    assert read_locks("https://api.pulumi.com", "iotfactory", "dev") is None
    assert read_locks("s3://no-such-bucket-anywhere?region=eu-west-1", "iotfactory", "dev") is None
