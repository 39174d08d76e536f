"""A private, encrypted S3 bucket with the settings every bucket of the platform must have."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam

ABORT_INCOMPLETE_UPLOADS_DAYS = 7


@dataclass(frozen=True)
class GlacierLifecycle:
    """Objects move to Glacier Flexible Retrieval, then expire (both counted from creation)."""

    glacier_after_days: int
    expire_after_days: int


@dataclass(frozen=True)
class SecureBucketArgs:
    account: iam.AccountContext
    purpose: str  # what the bucket holds, e.g. "telemetry archive"; goes into the tags
    force_destroy: bool = False
    versioned: bool = False
    lifecycle: GlacierLifecycle | None = None
    noncurrent_expire_days: int = 30  # versioned buckets: how long replaced objects are kept
    expire_after_days: int | None = None  # disposable content (query results): deleted this long after


class SecureBucket(pulumi.ComponentResource):
    """S3 bucket: SSE-S3, all four public-access blocks, BucketOwnerEnforced, TLS-only bucket policy."""

    def __init__(self, name: str, args: SecureBucketArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:storage:SecureBucket", name, None, opts)
        if args.lifecycle and args.lifecycle.expire_after_days <= args.lifecycle.glacier_after_days:
            raise ValueError(f"{name}: expiry must come after the Glacier transition")
        if args.lifecycle and args.expire_after_days is not None:
            raise ValueError(f"{name}: give either a Glacier lifecycle or a plain expiry, not both")
        child = pulumi.ResourceOptions(parent=self)

        self.bucket = aws.s3.Bucket(
            name, force_destroy=args.force_destroy, tags={"Purpose": args.purpose}, opts=child
        )
        ownership = aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=self.bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"},  # ACLs off: the bucket policy is the only gate
            opts=child,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=self.bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"},
                    "bucket_key_enabled": True,
                }
            ],
            opts=child,
        )
        if args.versioned:
            aws.s3.BucketVersioning(
                f"{name}-versioning",
                bucket=self.bucket.id,
                versioning_configuration={"status": "Enabled"},
                opts=child,
            )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=self.bucket.id, rules=self._lifecycle_rules(args), opts=child
        )
        bucket_arn = self.bucket.arn
        objects_arn = pulumi.Output.concat(self.bucket.arn, "/*")
        # Deny-only statements: s3:* here denies, it grants nothing.
        self.policy = aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=self.bucket.id,
            policy=iam.document(
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, objects_arn],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                {
                    "Sid": "DenyTlsOlderThan12",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, objects_arn],
                    "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
                },
            ),
            # S3 rejects concurrent configuration changes of one bucket; apply the policy last.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access, ownership]),
        )
        self.bucket_name: pulumi.Output[str] = self.bucket.bucket
        self.bucket_arn: pulumi.Output[str] = self.bucket.arn
        self.register_outputs({"bucketName": self.bucket_name, "bucketArn": self.bucket_arn})

    @staticmethod
    def _lifecycle_rules(args: SecureBucketArgs) -> list[dict[str, object]]:
        rules: list[dict[str, object]] = [
            {
                "id": "abort-incomplete-multipart-uploads",
                "status": "Enabled",
                "filter": {},
                "abort_incomplete_multipart_upload": {"days_after_initiation": ABORT_INCOMPLETE_UPLOADS_DAYS},
            }
        ]
        if args.lifecycle:
            rules.append(
                {
                    "id": "glacier-then-expire",
                    "status": "Enabled",
                    "filter": {},
                    "transitions": [{"days": args.lifecycle.glacier_after_days, "storage_class": "GLACIER"}],
                    "expiration": {"days": args.lifecycle.expire_after_days},
                }
            )
        if args.expire_after_days is not None:
            rules.append(
                {
                    "id": "expire",
                    "status": "Enabled",
                    "filter": {},
                    "expiration": {"days": args.expire_after_days},
                }
            )
        if args.versioned:
            rules.append(
                {
                    "id": "expire-replaced-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_expire_days},
                }
            )
        return rules
