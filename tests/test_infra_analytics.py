"""Athena over the archive, under Pulumi mocks: the Glue table and views, the workgroup, the query role.

dev archives in `direct` mode, prod in `batched` mode (Firehose, hour partitions): both are checked.
"""

from __future__ import annotations

import base64
import json

import pytest
import sqlglot
from infra_mocks import offline_run, one, policy_document, prefetch

from factory_core import archive_views
from factory_core.archive_views import VIEW_NAMES, archive_columns, glue_type, render_view, view_columns
from infra.components.analytics import JSON_SERDE, partition_projection
from infra.offline import OfflineRun, ResourceRecord

DATABASE = "aws:glue/catalogDatabase:CatalogDatabase"
TABLE = "aws:glue/catalogTable:CatalogTable"
WORKGROUP = "aws:athena/workgroup:Workgroup"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"


@pytest.fixture(scope="module", autouse=True)
def _start_runs() -> None:
    prefetch("dev", "prod")


@pytest.fixture(scope="module", params=("dev", "prod"))
def run(request: pytest.FixtureRequest) -> OfflineRun:
    return offline_run(request.param)


def tables(run: OfflineRun) -> dict[str, ResourceRecord]:
    return {record.inputs["name"]: record for record in run.of_type(TABLE)}


def archive_bucket(run: OfflineRun) -> str:
    return run.outputs["archiveBucket"]


def test_one_database_with_the_archive_table_and_every_view(run: OfflineRun) -> None:
    database = one(run, DATABASE)
    assert database.inputs["name"] == run.outputs[archive_views.DATABASE_OUTPUT] == f"iotfactory_{run.stack}"
    assert set(tables(run)) == {archive_views.BASE_RELATION, *VIEW_NAMES}
    assert all(table.inputs["databaseName"] == database.inputs["name"] for table in tables(run).values())
    assert not run.of_type("aws:glue/crawler:Crawler")


def test_the_archive_table_has_the_contracts_columns_and_reads_json_lines(run: OfflineRun) -> None:
    table = tables(run)[archive_views.BASE_RELATION]
    descriptor = table.inputs["storageDescriptor"]
    assert descriptor["serDeInfo"]["serializationLibrary"] == JSON_SERDE
    assert descriptor["serDeInfo"]["parameters"]["ignore.malformed.json"] == "true"
    columns = [(c["name"], c["type"]) for c in descriptor["columns"] + table.inputs.get("partitionKeys", [])]
    assert sorted(columns) == sorted((c.name, glue_type(c.type)) for c in archive_columns())
    signals = next(c["type"] for c in descriptor["columns"] if c["name"] == "signals")
    assert signals.startswith("struct<temperature:double,vibration_rms:double,")


def test_batched_archive_partitions_are_projected_from_the_firehose_layout(run: OfflineRun) -> None:
    table = tables(run)[archive_views.BASE_RELATION]
    location = table.inputs["storageDescriptor"]["location"]
    bucket = archive_bucket(run)
    if run.stack == "dev":  # direct mode: one object per message under the topic, no date in the key
        assert location == f"s3://{bucket}/factory/simulator/" and not table.inputs.get("partitionKeys")
        assert "projection.enabled" not in table.inputs["parameters"]
        return
    assert location == f"s3://{bucket}/raw/"
    assert [key["name"] for key in table.inputs["partitionKeys"]] == ["year", "month", "day", "hour"]
    parameters = table.inputs["parameters"]
    assert parameters == {
        "classification": "json",
        "EXTERNAL": "TRUE",
        "compressionType": "gzip",
        **partition_projection(bucket, 2025),
    }
    template = parameters["storage.location.template"]
    assert template == f"s3://{bucket}/raw/year=${{year}}/month=${{month}}/day=${{day}}/hour=${{hour}}/"
    assert parameters["projection.year.range"] == "2025,NOW" and parameters["projection.hour.digits"] == "2"


def test_views_are_stored_as_athena_stores_them_with_the_shared_sql(run: OfflineRun) -> None:
    for name in VIEW_NAMES:
        view = tables(run)[name]
        assert view.inputs["tableType"] == "VIRTUAL_VIEW"
        assert view.inputs["parameters"] == {"presto_view": "true", "comment": "Presto View"}
        text = view.inputs["viewOriginalText"]
        assert text.startswith("/* Presto View: ") and text.endswith(" */")
        document = json.loads(base64.b64decode(text.removeprefix("/* Presto View: ").removesuffix(" */")))
        assert document["originalSql"] == render_view(name, "trino")
        sqlglot.parse_one(document["originalSql"], read="trino")
        assert (document["catalog"], document["schema"]) == ("awsdatacatalog", f"iotfactory_{run.stack}")
        declared = [(c.name, archive_views.presto_type(c.type)) for c in view_columns(name)]
        assert [(c["name"], c["type"]) for c in document["columns"]] == declared
        glue_columns = [c["name"] for c in view.inputs["storageDescriptor"]["columns"]]
        assert glue_columns == [name for name, _ in declared]


def test_workgroup_enforces_encrypted_results_engine_3_and_a_scan_limit(run: OfflineRun) -> None:
    workgroup = one(run, WORKGROUP)
    assert workgroup.inputs["name"] == run.outputs[archive_views.WORKGROUP_OUTPUT]
    configuration = workgroup.inputs["configuration"]
    assert configuration["enforceWorkgroupConfiguration"] is True
    assert configuration["engineVersion"]["selectedEngineVersion"] == "Athena engine version 3"
    assert configuration["bytesScannedCutoffPerQuery"] > 0
    results = configuration["resultConfiguration"]
    bucket = run.outputs[archive_views.RESULTS_BUCKET_OUTPUT]
    assert results["outputLocation"] == f"s3://{bucket}/athena/"
    assert results["encryptionConfiguration"]["encryptionOption"] == "SSE_S3"
    lifecycle = next(r for r in run.of_type(LIFECYCLE) if r.inputs["bucket"] == bucket)
    expiry = {"id": "expire", "status": "Enabled", "filter": {}, "expiration": {"days": 7}}
    assert expiry in lifecycle.inputs["rules"]
    encryption = next(r for r in run.of_type(ENCRYPTION) if r.inputs["bucket"] == bucket)
    assert encryption.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"


def test_the_query_role_may_use_only_its_workgroup_database_data_prefix_and_results(run: OfflineRun) -> None:
    policy = next(r for r in run.of_type(ROLE_POLICY) if r.name == "analytics-query")
    statements = policy_document(policy)["Statement"]
    by_action = {action: statement for statement in statements for action in statement["Action"]}
    account, region = "123456789012", "eu-west-1"
    workgroup = run.outputs[archive_views.WORKGROUP_OUTPUT]
    database = run.outputs[archive_views.DATABASE_OUTPUT]
    assert by_action["athena:StartQueryExecution"]["Resource"] == [
        f"arn:aws:athena:{region}:{account}:workgroup/{workgroup}"
    ]
    assert by_action["glue:GetTable"]["Resource"] == [
        f"arn:aws:glue:{region}:{account}:catalog",
        f"arn:aws:glue:{region}:{account}:database/{database}",
        f"arn:aws:glue:{region}:{account}:table/{database}/*",
    ]
    prefix = "raw/" if run.stack == "prod" else "factory/simulator/"
    bucket = archive_bucket(run)
    assert by_action["s3:GetObject"] == by_action["s3:PutObject"]  # results: read and write
    reads = [s for s in statements if s["Action"] == ["s3:GetObject"]]
    only_the_data = f"arn:aws:s3:::{bucket}/{prefix}*"
    assert reads == [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [only_the_data]}]
    listing = next(s for s in statements if s["Action"] == ["s3:ListBucket"])
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    results = run.outputs[archive_views.RESULTS_BUCKET_OUTPUT]
    assert by_action["s3:PutObject"]["Resource"] == [f"arn:aws:s3:::{results}/athena/*"]
    everything = {action for statement in statements for action in statement["Action"]}
    assert not {a for a in everything if a.startswith(("kms:", "iam:")) or "*" in a}
    assert all(resource != "*" for s in statements for resource in s["Resource"])
    assert run.outputs[archive_views.QUERY_ROLE_OUTPUT].startswith(f"arn:aws:iam::{account}:role/")
