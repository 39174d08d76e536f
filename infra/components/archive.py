"""Telemetry archive: the IoT topic rule and where it writes, in one of the archive modes.

- `direct`: the rule's S3 action writes one object per message at `${topic()}/${timestamp()}-...`.
  Simple and immediate; one PUT per message (fine for dev, costly at fleet scale).
- `batched`: rule -> Kinesis Data Firehose -> S3. Firehose buffers, GZIP-compresses and writes JSON
  lines (the rule appends a newline to every record) under
  `raw/year=YYYY/month=MM/day=DD/hour=HH/`, the layout the local stack writes too.
- `basic-ingest`: as `batched`; the devices publish to the rule's Basic Ingest topic instead
  (`factory_core.archive_modes`), which the rule receives without the topic prefix, so nothing here
  changes but the devices' IoT policies (`infra/components/iot.py`).

Either way a failed action goes to the rule's error action (a CloudWatch log group) with a role
that may write exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from factory_core.archive_modes import ARCHIVE_MODES, ArchiveMode
from infra import iam
from infra.components.storage import GlacierLifecycle, SecureBucket, SecureBucketArgs

DIRECT_KEY = "${topic()}/${timestamp()}-${newuuid()}.json"
BATCHED_PREFIX = "raw/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}/"
BATCHED_ERROR_PREFIX = (
    "errors/!{firehose:error-output-type}/year=!{timestamp:yyyy}/month=!{timestamp:MM}/"
    "day=!{timestamp:dd}/hour=!{timestamp:HH}/"
)
RECORD_SEPARATOR = "\n"
SQL_VERSION = "2016-03-23"
FIREHOSE_LOG_STREAM = "S3Delivery"


@dataclass(frozen=True)
class TelemetryArchiveArgs:
    account: iam.AccountContext
    mode: ArchiveMode
    rule_name: str  # [A-Za-z0-9_]+, unique in the account and region
    topic_root: str  # "factory/simulator"
    log_group_prefix: str  # "/iotfactory/<stack>"
    log_retention_days: int
    lifecycle: GlacierLifecycle
    force_destroy: bool
    buffer_size_mb: int = 64
    buffer_interval_s: int = 300

    @property
    def sql(self) -> str:
        return f"SELECT * FROM '{self.topic_root}/#'"


class TelemetryArchive(pulumi.ComponentResource):
    """Archive bucket + topic rule (+ Firehose in batched mode) + error log group and roles."""

    def __init__(
        self, name: str, args: TelemetryArchiveArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:archive:TelemetryArchive", name, None, opts)
        if args.mode not in ARCHIVE_MODES:
            raise ValueError(
                f"iotfactory:archiveMode must be one of {', '.join(ARCHIVE_MODES)} (got {args.mode!r})"
            )
        child = pulumi.ResourceOptions(parent=self)
        account = args.account

        self.bucket = SecureBucket(
            f"{name}-bucket",
            SecureBucketArgs(
                account=account,
                purpose="telemetry archive",
                force_destroy=args.force_destroy,
                lifecycle=args.lifecycle,
            ),
            opts=child,
        )
        self.error_log_group = aws.cloudwatch.LogGroup(
            f"{name}-rule-errors",
            name=f"{args.log_group_prefix}/iot-rule-errors",
            retention_in_days=args.log_retention_days,
            opts=child,
        )
        rule_arn = account.arn("iot", f"rule/{args.rule_name}")
        self.rule_role = aws.iam.Role(
            f"{name}-rule",
            description="Assumed by the IoT topic rule: write the archive and its error log, nothing else",
            assume_role_policy=iam.service_trust("iot.amazonaws.com", iam.same_account(account, rule_arn)),
            opts=child,
        )
        error_policy = aws.iam.RolePolicy(
            f"{name}-rule-errors",
            role=self.rule_role.id,
            policy=iam.document(
                iam.allow(
                    ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
                    [account.log_group_arn(self.error_log_group.name)],
                )
            ),
            opts=child,
        )

        self.delivery_stream: aws.kinesis.FirehoseDeliveryStream | None = None
        if args.mode == "direct":
            write_policy = aws.iam.RolePolicy(
                f"{name}-rule-write",
                role=self.rule_role.id,
                policy=iam.document(
                    iam.allow(
                        ["s3:PutObject"],
                        [account.s3_arn(self.bucket.bucket_name, f"{args.topic_root}/*")],
                    )
                ),
                opts=child,
            )
            actions: dict[str, object] = {
                "s3": [
                    {
                        "bucket_name": self.bucket.bucket_name,
                        "key": DIRECT_KEY,
                        "role_arn": self.rule_role.arn,
                    }
                ]
            }
        else:
            self.delivery_stream = self._firehose(name, args)
            write_policy = aws.iam.RolePolicy(
                f"{name}-rule-write",
                role=self.rule_role.id,
                policy=iam.document(
                    iam.allow(["firehose:PutRecord", "firehose:PutRecordBatch"], [self.delivery_stream.arn])
                ),
                opts=child,
            )
            actions = {
                "firehoses": [
                    {
                        "delivery_stream_name": self.delivery_stream.name,
                        "role_arn": self.rule_role.arn,
                        "separator": RECORD_SEPARATOR,
                        "batch_mode": False,
                    }
                ]
            }

        self.rule = aws.iot.TopicRule(
            name,
            name=args.rule_name,
            description=f"Archive every message under {args.topic_root}/ ({args.mode})",
            enabled=True,
            sql=args.sql,
            sql_version=SQL_VERSION,
            error_action={
                "cloudwatch_logs": {
                    "log_group_name": self.error_log_group.name,
                    "role_arn": self.rule_role.arn,
                }
            },
            # The role must hold its permissions before AWS IoT validates the rule's actions.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[write_policy, error_policy]),
            **actions,  # type: ignore[arg-type]
        )
        self.bucket_name: pulumi.Output[str] = self.bucket.bucket_name
        self.register_outputs(
            {
                "bucketName": self.bucket_name,
                "ruleName": self.rule.name,
                "mode": args.mode,
                "errorLogGroup": self.error_log_group.name,
            }
        )

    def _firehose(self, name: str, args: TelemetryArchiveArgs) -> aws.kinesis.FirehoseDeliveryStream:
        child = pulumi.ResourceOptions(parent=self)
        account = args.account
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-firehose",
            name=f"{args.log_group_prefix}/firehose",
            retention_in_days=args.log_retention_days,
            opts=child,
        )
        aws.cloudwatch.LogStream(
            f"{name}-firehose", name=FIREHOSE_LOG_STREAM, log_group_name=log_group.name, opts=child
        )
        role = aws.iam.Role(
            f"{name}-firehose",
            description="Assumed by Firehose: write batches to the archive bucket and its delivery log",
            assume_role_policy=iam.service_trust(
                "firehose.amazonaws.com", {"StringEquals": {"sts:ExternalId": account.account_id}}
            ),
            opts=child,
        )
        bucket_arn = self.bucket.bucket_arn
        role_policy = aws.iam.RolePolicy(
            f"{name}-firehose",
            role=role.id,
            policy=iam.document(
                iam.allow(
                    ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], [bucket_arn]
                ),
                iam.allow(
                    ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
                    [
                        account.s3_arn(self.bucket.bucket_name, "raw/*"),
                        account.s3_arn(self.bucket.bucket_name, "errors/*"),
                    ],
                ),
                iam.allow(
                    ["logs:PutLogEvents"], [account.log_stream_arn(log_group.name, FIREHOSE_LOG_STREAM)]
                ),
            ),
            opts=child,
        )
        return aws.kinesis.FirehoseDeliveryStream(
            name,
            destination="extended_s3",
            server_side_encryption={"enabled": True, "key_type": "AWS_OWNED_CMK"},
            extended_s3_configuration={
                "bucket_arn": bucket_arn,
                "role_arn": role.arn,
                "prefix": BATCHED_PREFIX,
                "error_output_prefix": BATCHED_ERROR_PREFIX,
                "compression_format": "GZIP",
                "buffering_size": args.buffer_size_mb,
                "buffering_interval": args.buffer_interval_s,
                "cloudwatch_logging_options": {
                    "enabled": True,
                    "log_group_name": log_group.name,
                    "log_stream_name": FIREHOSE_LOG_STREAM,
                },
            },
            # Firehose checks the role's access when the stream is created.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )
