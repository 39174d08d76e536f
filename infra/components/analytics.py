"""Athena over the telemetry archive: a Glue database, the archive table, the shared views, a workgroup.

- The table `archive_records` reads the archive bucket in place (JSON lines, GZIP in batched mode).
  Batched mode partitions by the archive's `year=/month=/day=/hour=` keys with partition
  projection: Athena computes the partitions from the table's properties, so there is no crawler
  and no `MSCK REPAIR`, and a new hour is queryable the moment Firehose writes it.
- The views (`telemetry`, `ground_truth`, ...) are the ones DuckDB runs locally, rendered for Trino
  by `factory_core.archive_views` and stored the way Athena stores a `CREATE VIEW`: a Glue table of
  type VIRTUAL_VIEW whose `viewOriginalText` is `/* Presto View: <base64 JSON> */` (SQL, catalog,
  schema, column types). Declaring them here, rather than running `CREATE VIEW` through Athena
  after `up`, keeps them in `preview`, diffs and `destroy` like every other resource and needs no
  query (and no Athena permissions) at deploy time.
- The workgroup enforces its settings: results in their own encrypted bucket that forgets them
  after a week, Athena engine version 3, and a cap on the bytes one query may scan.
- A query role (assumable by the account's principals that are allowed to) grants exactly that:
  the workgroup, reading this database, reading the archive's data prefix, and the results prefix.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from factory_core import archive_views
from factory_core.archive_modes import ArchiveMode, uses_firehose
from factory_core.archive_views import PARTITION_COLUMNS, Column
from factory_core.fleet import TOPIC_ROOT
from infra import iam
from infra.components.storage import SecureBucket, SecureBucketArgs

RAW_PREFIX = "raw/"  # where Firehose writes (infra.components.archive.BATCHED_PREFIX)
RESULTS_PREFIX = "athena/"
ENGINE_VERSION = "Athena engine version 3"
DATA_CATALOG = "awsdatacatalog"
# Hive's text input with the OpenX JSON SerDe: a line that is not JSON reads as NULLs instead of
# failing the query (the cloud rule archives whatever arrives), GZIP is recognised by extension.
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
QUERY_ACTIONS = (
    "athena:GetQueryExecution",
    "athena:GetQueryResults",
    "athena:GetWorkGroup",
    "athena:StartQueryExecution",
    "athena:StopQueryExecution",
)
RESULTS_OBJECT_ACTIONS = (
    "s3:AbortMultipartUpload",
    "s3:GetObject",
    "s3:ListMultipartUploadParts",
    "s3:PutObject",
)
CATALOG_READ_ACTIONS = (
    "glue:GetDatabase",
    "glue:GetPartition",
    "glue:GetPartitions",
    "glue:GetTable",
    "glue:GetTables",
)


@dataclass(frozen=True)
class ArchiveAnalyticsArgs:
    account: iam.AccountContext
    archive_bucket_name: pulumi.Input[str]
    archive_bucket_arn: pulumi.Input[str]
    mode: ArchiveMode
    database_name: str  # lower case letters, digits and underscores (Athena's rule)
    workgroup_name: str
    force_destroy: bool
    results_expire_days: int = 7
    scan_limit_bytes: int = 100 * 1024**3  # per query; the workgroup cancels a query past it
    first_year: int = 2025  # partition projection starts here (the archive has nothing older)

    @property
    def data_prefix(self) -> str:
        # Firehose (batched, basic-ingest) writes under raw/; the direct rule under the topic's own path.
        return RAW_PREFIX if uses_firehose(self.mode) else TOPIC_ROOT + "/"


def presto_view_text(name: str, database: str) -> str:
    """A view as Athena stores it in Glue: the Trino SQL and its typed columns, base64 JSON."""
    document = {
        "originalSql": archive_views.render_view(name, "trino"),
        "catalog": DATA_CATALOG,
        "schema": database,
        "columns": [
            {"name": column.name, "type": archive_views.presto_type(column.type)}
            for column in archive_views.view_columns(name)
        ],
    }
    encoded = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()
    return f"/* Presto View: {encoded} */"


def partition_projection(bucket: str, first_year: int) -> dict[str, str]:
    """Table properties that let Athena compute the hour partitions of `raw/` instead of listing them.

    The year is a date projection up to NOW, so an unfiltered query does not enumerate empty future
    years; month, day and hour are zero-padded integers, as in the keys Firehose writes.
    """
    properties = {
        "projection.enabled": "true",
        "projection.year.type": "date",
        "projection.year.format": "yyyy",
        "projection.year.range": f"{first_year},NOW",
        "projection.year.interval": "1",
        "projection.year.interval.unit": "YEARS",
    }
    for column, low, high in (("month", 1, 12), ("day", 1, 31), ("hour", 0, 23)):
        properties |= {
            f"projection.{column}.type": "integer",
            f"projection.{column}.range": f"{low},{high}",
            f"projection.{column}.digits": "2",
        }
    template = "/".join(f"{column}=${{{column}}}" for column in PARTITION_COLUMNS)
    properties["storage.location.template"] = f"s3://{bucket}/{RAW_PREFIX}{template}/"
    return properties


def _glue_columns(columns: Sequence[Column]) -> list[dict[str, str]]:
    return [
        {"name": column.name, "type": archive_views.glue_type(column.type), "comment": column.comment[:255]}
        for column in columns
    ]


class ArchiveAnalytics(pulumi.ComponentResource):
    """Glue database + archive table + views, Athena workgroup + results bucket, the query role."""

    def __init__(
        self, name: str, args: ArchiveAnalyticsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:analytics:ArchiveAnalytics", name, None, opts)
        if not re.fullmatch(r"[a-z0-9_]{1,255}", args.database_name):
            raise ValueError(f"Glue database name {args.database_name!r}: use lower case letters, digits, _")
        child = pulumi.ResourceOptions(parent=self)
        account = args.account

        self.results = SecureBucket(
            f"{name}-results",
            SecureBucketArgs(
                account=account,
                purpose="athena query results",
                force_destroy=args.force_destroy,
                expire_after_days=args.results_expire_days,
            ),
            opts=child,
        )
        self.database = aws.glue.CatalogDatabase(
            name,
            name=args.database_name,
            description="The telemetry archive as SQL: archive_records and its views (docs/cold-path.md)",
            opts=child,
        )
        self.table = self._archive_table(name, args)
        self.views = self._views(name, args, self.table)
        self.workgroup = aws.athena.Workgroup(
            name,
            name=args.workgroup_name,
            description="Queries over the telemetry archive; settings enforced for every query",
            state="ENABLED",
            force_destroy=args.force_destroy,
            configuration={
                "enforce_workgroup_configuration": True,
                "publish_cloudwatch_metrics_enabled": True,
                "bytes_scanned_cutoff_per_query": args.scan_limit_bytes,
                "engine_version": {"selected_engine_version": ENGINE_VERSION},
                "result_configuration": {
                    "output_location": pulumi.Output.concat(
                        "s3://", self.results.bucket_name, "/", RESULTS_PREFIX
                    ),
                    "encryption_configuration": {"encryption_option": "SSE_S3"},
                    "expected_bucket_owner": account.account_id,
                },
            },
            opts=child,
        )
        self.query_role = self._query_role(name, args)
        self.register_outputs(
            {
                "databaseName": self.database.name,
                "workgroupName": self.workgroup.name,
                "resultsBucket": self.results.bucket_name,
                "queryRoleArn": self.query_role.arn,
            }
        )

    def _archive_table(self, name: str, args: ArchiveAnalyticsArgs) -> aws.glue.CatalogTable:
        columns = archive_views.archive_columns()
        data = [column for column in columns if column.name not in PARTITION_COLUMNS]
        partitions = [column for column in columns if column.name in PARTITION_COLUMNS]
        parameters: pulumi.Input[dict[str, str]] = {"classification": "json", "EXTERNAL": "TRUE"}
        if uses_firehose(args.mode):
            partition_keys = _glue_columns(partitions)
            parameters = pulumi.Output.from_input(args.archive_bucket_name).apply(
                lambda bucket: {
                    "classification": "json",
                    "EXTERNAL": "TRUE",
                    "compressionType": "gzip",
                    **partition_projection(bucket, args.first_year),
                }
            )
        else:
            # Direct mode has no date in its keys: the same columns, always NULL, keep the views whole.
            partition_keys = []
            data = list(columns)
        return aws.glue.CatalogTable(
            f"{name}-{archive_views.BASE_RELATION}",
            name=archive_views.BASE_RELATION,
            database_name=self.database.name,
            description=archive_views.DESCRIPTIONS[archive_views.BASE_RELATION],
            table_type="EXTERNAL_TABLE",
            parameters=parameters,
            partition_keys=partition_keys,
            storage_descriptor={
                "location": pulumi.Output.concat("s3://", args.archive_bucket_name, "/", args.data_prefix),
                "input_format": TEXT_INPUT,
                "output_format": TEXT_OUTPUT,
                "ser_de_info": {
                    "serialization_library": JSON_SERDE,
                    "parameters": {"ignore.malformed.json": "true", "dots.in.keys": "false"},
                },
                "columns": _glue_columns(data),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _views(
        self, name: str, args: ArchiveAnalyticsArgs, table: aws.glue.CatalogTable
    ) -> dict[str, aws.glue.CatalogTable]:
        views: dict[str, aws.glue.CatalogTable] = {}
        for view in archive_views.VIEW_NAMES:
            # A view is checked against what it reads when queried, not when stored; the order
            # only keeps `destroy` from leaving a view whose table is gone.
            depends_on: list[pulumi.Resource] = [table, *views.values()]
            views[view] = aws.glue.CatalogTable(
                f"{name}-{view}",
                name=view,
                database_name=self.database.name,
                description=archive_views.DESCRIPTIONS[view],
                table_type="VIRTUAL_VIEW",
                view_original_text=presto_view_text(view, args.database_name),
                view_expanded_text="/* Presto View */",
                parameters={"presto_view": "true", "comment": "Presto View"},
                storage_descriptor={"columns": _glue_columns(archive_views.view_columns(view))},
                opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on),
            )
        return views

    def _query_role(self, name: str, args: ArchiveAnalyticsArgs) -> aws.iam.Role:
        account = args.account
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-query",
            description="Query the telemetry archive with Athena: its workgroup, database and data only",
            assume_role_policy=iam.document(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": account.arn("iam", "root", regional=False)},
                    "Action": "sts:AssumeRole",
                }
            ),
            opts=child,
        )
        archive_bucket = args.archive_bucket_arn
        results_bucket = self.results.bucket_arn
        database = args.database_name
        data = f"{args.data_prefix}*"
        results_writes = RESULTS_OBJECT_ACTIONS
        # Both buckets use SSE-S3 (infra.components.storage): reading them needs no KMS permission.
        aws.iam.RolePolicy(
            f"{name}-query",
            role=role.id,
            policy=iam.document(
                iam.allow(QUERY_ACTIONS, [account.arn("athena", f"workgroup/{args.workgroup_name}")]),
                iam.allow(
                    CATALOG_READ_ACTIONS,
                    [
                        account.arn("glue", "catalog"),
                        account.arn("glue", f"database/{database}"),
                        account.arn("glue", f"table/{database}/*"),
                    ],
                ),
                iam.allow(["s3:GetBucketLocation"], [archive_bucket, results_bucket]),
                iam.allow(["s3:ListBucket"], [archive_bucket], {"StringLike": {"s3:prefix": [data]}}),
                iam.allow(["s3:GetObject"], [account.s3_arn(args.archive_bucket_name, data)]),
                iam.allow(["s3:ListBucket", "s3:ListBucketMultipartUploads"], [results_bucket]),
                iam.allow(results_writes, [account.s3_arn(self.results.bucket_name, f"{RESULTS_PREFIX}*")]),
            ),
            opts=child,
        )
        return role
