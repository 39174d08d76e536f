"""Bootstrap of what holds Pulumi's own state: an S3 state bucket and a KMS key for stack secrets.

Pulumi cannot create the bucket its state lives in, so this uses boto3, idempotently: every
setting is read first and written only when it differs, and the report lists what changed (an
empty list on a second run). Locking needs no table: Pulumi's S3 backend keeps its own lock objects.

One scheme for every stack sharing the bucket: the bucket encrypts with SSE-S3, and each stack's
own KMS key encrypts only that stack's Pulumi secrets (`secretsprovider: awskms://...`). Access to
a stack's state is then granted by S3 prefix, access to its secrets by its key, and bootstrapping
one stack never changes what another needs. A bucket from the earlier scheme (default SSE-KMS with
whichever stack's key was bootstrapped last) is migrated in place: its default encryption becomes
SSE-S3 and every state object still encrypted with a KMS key is copied onto itself with SSE-S3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from factory_core.errors import OperationFailed, UsageError

if TYPE_CHECKING:
    import boto3

PROJECT = "iotfactory"
TLS_ONLY_SID = "DenyInsecureTransport"
LIFECYCLE_RULE_ID = "expire-old-state-versions"
STATE_PREFIX = ".pulumi/"  # everything Pulumi's DIY backend writes
# Old state versions are the undo history of every update; keep three months of it.
NONCURRENT_VERSION_DAYS = 90


@dataclass(frozen=True)
class StateBackend:
    bucket: str
    region: str
    kms_key_arn: str
    kms_alias: str

    @property
    def backend_url(self) -> str:
        return f"s3://{self.bucket}?region={self.region}&awssdk=v2"

    @property
    def secrets_provider(self) -> str:
        return f"awskms://{self.kms_alias}?region={self.region}"


@dataclass
class BootstrapReport:
    backend: StateBackend
    changes: list[str] = field(default_factory=list)


def bucket_name(account_id: str, region: str) -> str:
    """One state bucket per account and region, shared by the project's stacks (globally unique)."""
    return f"{PROJECT}-pulumi-state-{account_id}-{region}"


def kms_alias(stack: str) -> str:
    """One key per stack, so access to prod's secrets can be granted separately from dev's."""
    return f"alias/{PROJECT}-pulumi-{stack}"


def expected_secrets_provider(stack: str, region: str) -> str:
    return f"awskms://{kms_alias(stack)}?region={region}"


def bootstrap_state_backend(session: boto3.session.Session, stack: str, region: str) -> BootstrapReport:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        account_id = session.client("sts", region_name=region).get_caller_identity()["Account"]
        changes: list[str] = []
        key_arn = _ensure_kms_key(session.client("kms", region_name=region), stack, changes)
        bucket = bucket_name(account_id, region)
        _ensure_bucket(session.client("s3", region_name=region), bucket, region, changes)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise OperationFailed(
            f"bootstrap failed: {exc.operation_name}: {error.get('Code')}: {error.get('Message')}"
        ) from None
    except BotoCoreError as exc:
        raise OperationFailed(f"bootstrap failed: {exc}") from None
    return BootstrapReport(StateBackend(bucket, region, key_arn, kms_alias(stack)), changes)


def _ensure_kms_key(kms: Any, stack: str, changes: list[str]) -> str:
    alias = kms_alias(stack)
    target = None
    for page in kms.get_paginator("list_aliases").paginate():
        for entry in page["Aliases"]:
            if entry["AliasName"] == alias:
                target = entry.get("TargetKeyId")
    if target is None:
        key = kms.create_key(
            Description=f"Pulumi secrets provider for the {PROJECT} stack '{stack}'",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=[
                {"TagKey": "Project", "TagValue": PROJECT},
                {"TagKey": "Environment", "TagValue": stack},
                {"TagKey": "ManagedBy", "TagValue": "iotfactory-bootstrap"},
            ],
        )["KeyMetadata"]
        kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        changes.append(f"created KMS key {key['KeyId']} with alias {alias}")
    else:
        key = kms.describe_key(KeyId=target)["KeyMetadata"]
        if key["KeyState"] == "PendingDeletion":
            raise UsageError(
                f"KMS key {alias} ({key['KeyId']}) is scheduled for deletion; cancel it with "
                f"`aws kms cancel-key-deletion --key-id {key['KeyId']}` and enable it, then re-run bootstrap"
            )
        if not key.get("Enabled", True):
            raise UsageError(f"KMS key {alias} ({key['KeyId']}) is disabled; enable it and re-run bootstrap")
    if not kms.get_key_rotation_status(KeyId=key["KeyId"]).get("KeyRotationEnabled"):
        kms.enable_key_rotation(KeyId=key["KeyId"])
        changes.append(f"enabled yearly rotation of {alias}")
    return str(key["Arn"])


def _ensure_bucket(s3: Any, bucket: str, region: str, changes: list[str]) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("403", "AccessDenied", "Forbidden"):
            raise UsageError(
                f"state bucket {bucket} exists but this account cannot read it; check the AWS profile"
            ) from None
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
        create: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "BucketOwnerEnforced"}
        if region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**create)
        changes.append(f"created bucket {bucket}")

    _ensure_public_access_block(s3, bucket, changes)
    _ensure_ownership(s3, bucket, changes)
    if s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        changes.append("enabled versioning")
    _ensure_encryption(s3, bucket, changes)
    _reencrypt_state_objects(s3, bucket, changes)
    _ensure_tls_only_policy(s3, bucket, changes)
    _ensure_lifecycle(s3, bucket, changes)


def _missing_config(exc: Exception, *codes: str) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in codes


def _ensure_public_access_block(s3: Any, bucket: str, changes: list[str]) -> None:
    wanted = {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    try:
        current = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except Exception as exc:
        if not _missing_config(exc, "NoSuchPublicAccessBlockConfiguration"):
            raise
        current = {}
    if any(current.get(name) is not True for name in wanted):
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=wanted)
        changes.append("blocked all public access")


def _ensure_ownership(s3: Any, bucket: str, changes: list[str]) -> None:
    try:
        rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    except Exception as exc:
        if not _missing_config(exc, "OwnershipControlsNotFoundError"):
            raise
        rules = []
    if [rule.get("ObjectOwnership") for rule in rules] != ["BucketOwnerEnforced"]:
        s3.put_bucket_ownership_controls(
            Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        )
        changes.append("set object ownership to BucketOwnerEnforced (ACLs disabled)")


def _ensure_encryption(s3: Any, bucket: str, changes: list[str]) -> None:
    """SSE-S3 for the whole bucket: no stack's state depends on another stack's key."""
    wanted = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except Exception as exc:
        if not _missing_config(exc, "ServerSideEncryptionConfigurationNotFoundError"):
            raise
        rules = []
    current = rules[0] if len(rules) == 1 else {}
    if current.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") != "AES256":
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [wanted]})
        changes.append("set default encryption to SSE-S3 (each stack's KMS key encrypts only its secrets)")


def _reencrypt_state_objects(s3: Any, bucket: str, changes: list[str]) -> None:
    """State objects a KMS key encrypted (the earlier scheme) become SSE-S3, readable by S3 grants alone."""
    moved = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=STATE_PREFIX):
        for item in page.get("Contents", []):
            head = s3.head_object(Bucket=bucket, Key=item["Key"])
            if head.get("ServerSideEncryption") != "aws:kms":
                continue
            # Copying an object onto itself with new encryption is how S3 re-encrypts it; the old
            # version stays as a non-current version until the lifecycle rule expires it.
            s3.copy_object(
                Bucket=bucket,
                Key=item["Key"],
                CopySource={"Bucket": bucket, "Key": item["Key"]},
                ServerSideEncryption="AES256",
                MetadataDirective="COPY",
            )
            moved += 1
    if moved:
        changes.append(f"re-encrypted {moved} state object(s) from SSE-KMS to SSE-S3")


def tls_only_statement(bucket: str) -> dict[str, Any]:
    return {
        "Sid": TLS_ONLY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def _ensure_tls_only_policy(s3: Any, bucket: str, changes: list[str]) -> None:
    try:
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except Exception as exc:
        if not _missing_config(exc, "NoSuchBucketPolicy"):
            raise
        policy = {"Version": "2012-10-17", "Statement": []}
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    wanted = tls_only_statement(bucket)
    if wanted in statements:
        return
    # Keep statements a team added; replace only ours.
    others = [s for s in statements if s.get("Sid") != TLS_ONLY_SID]
    policy = {"Version": "2012-10-17", "Statement": [*others, wanted]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    changes.append("set a bucket policy that denies non-TLS requests")


def _ensure_lifecycle(s3: Any, bucket: str, changes: list[str]) -> None:
    wanted = {
        "ID": LIFECYCLE_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_VERSION_DAYS},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except Exception as exc:
        if not _missing_config(exc, "NoSuchLifecycleConfiguration"):
            raise
        rules = []
    ours = next((rule for rule in rules if rule.get("ID") == LIFECYCLE_RULE_ID), None)
    if ours is not None and all(
        ours.get(name) == value for name, value in wanted.items() if name != "Filter"
    ):
        return
    others = [rule for rule in rules if rule.get("ID") != LIFECYCLE_RULE_ID]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [*others, wanted]})
    changes.append(f"expire state versions older than {NONCURRENT_VERSION_DAYS} days")
