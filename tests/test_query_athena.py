"""`query --stack dev`: Athena at the boto3 boundary (botocore's Stubber, responses checked against
the service model), and through cli.py with the stack's outputs from the recording stack stand-in."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from support_cloud import isolate_from_real_aws, use_plain_terminal
from typer.testing import CliRunner

import cli
from analytics import athena
from analytics.athena import AthenaQuery, AthenaTarget, query_athena
from automation import stack_context
from automation.recording_stack import RecordingStack
from automation.stack_context import CloudEnv
from factory_core import archive_views
from factory_core.errors import OperationFailed, UsageError

TARGET = AthenaTarget(workgroup="iotfactory-dev", database="iotfactory_dev", region="eu-west-1")
QUERY_ID = "3f2a9e51-0000-4000-8000-000000000001"
SQL = "SELECT machine, count(*) AS messages, max(ts) AS last FROM telemetry GROUP BY machine"
COLUMNS = [("machine", "varchar"), ("messages", "bigint"), ("last", "timestamp")]


def client() -> Any:
    return boto3.client("athena", region_name=TARGET.region)


def execution(state: str, **status: Any) -> dict[str, Any]:
    return {
        "QueryExecution": {
            "QueryExecutionId": QUERY_ID,
            "Query": SQL,
            "StatementType": "DML",
            "WorkGroup": TARGET.workgroup,
            "Status": {"State": state, **status},
            "Statistics": {"DataScannedInBytes": 123_456, "EngineExecutionTimeInMillis": 900},
        }
    }


def cell(value: str | None) -> dict[str, str]:
    return {} if value is None else {"VarCharValue": value}


def page(rows: list[list[str | None]], *, header: bool, token: str | None = None) -> dict[str, Any]:
    data = ([[name for name, _ in COLUMNS]] if header else []) + rows
    response: dict[str, Any] = {
        "UpdateCount": 0,
        "ResultSet": {
            "Rows": [{"Data": [cell(value) for value in row]} for row in data],
            "ResultSetMetadata": {
                "ColumnInfo": [
                    {
                        "CatalogName": "hive",
                        "SchemaName": "",
                        "TableName": "",
                        "Name": name,
                        "Label": name,
                        "Type": kind,
                        "Precision": 0,
                        "Scale": 0,
                        "Nullable": "UNKNOWN",
                        "CaseSensitive": True,
                    }
                    for name, kind in COLUMNS
                ]
            },
        },
    }
    if token:
        response["NextToken"] = token
    return response


def expect_start(stubber: Stubber) -> None:
    stubber.add_response(
        "start_query_execution",
        {"QueryExecutionId": QUERY_ID},
        {
            "QueryString": SQL,
            "WorkGroup": TARGET.workgroup,
            "QueryExecutionContext": {"Catalog": "AwsDataCatalog", "Database": TARGET.database},
        },
    )


def expect_success(stubber: Stubber) -> None:
    expect_start(stubber)
    for state in ("QUEUED", "RUNNING", "SUCCEEDED"):
        stubber.add_response("get_query_execution", execution(state), {"QueryExecutionId": QUERY_ID})
    stubber.add_response(
        "get_query_results",
        page([["site-00-line-01-cnc_mill-01", "600", "2026-01-01 00:09:59.475"]], header=True, token="t1"),
        {"QueryExecutionId": QUERY_ID},
    )
    stubber.add_response(
        "get_query_results",
        page([["site-00-line-01-conveyor-01", "598", None]], header=False),
        {"QueryExecutionId": QUERY_ID, "NextToken": "t1"},
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def runner(athena_client: Any, clock: FakeClock) -> AthenaQuery:
    return AthenaQuery(athena_client, TARGET, sleep=clock.sleep, clock=lambda: clock.now)


def test_a_query_is_started_in_the_workgroup_polled_and_its_pages_read() -> None:
    athena_client, clock = client(), FakeClock()
    with Stubber(athena_client) as stubber:
        expect_success(stubber)
        table, finished = runner(athena_client, clock).run(SQL, timeout_s=60)
        stubber.assert_no_pending_responses()
    assert [column.name for column in table.columns] == ["machine", "messages", "last"]
    # The header row of the first page is not data; values come back typed.
    assert table.rows == [
        ("site-00-line-01-cnc_mill-01", 600, dt.datetime(2026, 1, 1, 0, 9, 59, 475000)),
        ("site-00-line-01-conveyor-01", 598, None),
    ]
    assert finished["Statistics"]["DataScannedInBytes"] == 123_456
    assert clock.slept == [0.2, 0.4]  # backs off while queued and running


@pytest.mark.parametrize(
    ("category", "error"),
    [(2, UsageError), (1, OperationFailed)],
    ids=["user-error-exit-2", "system-error-exit-1"],
)
def test_a_failed_query_is_one_line_with_athenas_reason(category: int, error: type[Exception]) -> None:
    reason = "COLUMN_NOT_FOUND: line 1:8: Column 'humidity' cannot be resolved or requester is not authorized"
    athena_client = client()
    with Stubber(athena_client) as stubber:
        expect_start(stubber)
        stubber.add_response(
            "get_query_execution",
            execution(
                "FAILED",
                StateChangeReason=reason,
                AthenaError={"ErrorCategory": category, "ErrorType": 1006, "Retryable": False},
            ),
            {"QueryExecutionId": QUERY_ID},
        )
        with pytest.raises(error) as raised:
            runner(athena_client, FakeClock()).run(SQL, timeout_s=60)
    assert "Column 'humidity' cannot be resolved" in str(raised.value) and "\n" not in str(raised.value)


def test_a_query_athena_refuses_at_once_is_a_usage_error() -> None:
    athena_client = client()
    with Stubber(athena_client) as stubber:
        stubber.add_client_error(
            "start_query_execution",
            service_error_code="InvalidRequestException",
            service_message="line 1:1: mismatched input 'SELEC'. Expecting: 'ALTER', 'ANALYZE', ...",
            http_status_code=400,
        )
        with pytest.raises(UsageError, match="mismatched input 'SELEC'"):
            runner(athena_client, FakeClock()).run(SQL, timeout_s=60)


def test_a_query_past_its_timeout_is_cancelled() -> None:
    athena_client, clock = client(), FakeClock()
    with Stubber(athena_client) as stubber:
        expect_start(stubber)
        # Polled at 0, 0.2, 0.6, 1.4 and 3.0 s: the next wait would pass the deadline.
        for _ in range(5):
            stubber.add_response("get_query_execution", execution("RUNNING"), {"QueryExecutionId": QUERY_ID})
        stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": QUERY_ID})
        with pytest.raises(OperationFailed, match="still running after 3 s; cancelled"):
            runner(athena_client, clock).run(SQL, timeout_s=3)
        stubber.assert_no_pending_responses()


def test_ctrl_c_while_waiting_stops_the_query() -> None:
    athena_client = client()

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    with Stubber(athena_client) as stubber:
        expect_start(stubber)
        stubber.add_response("get_query_execution", execution("RUNNING"), {"QueryExecutionId": QUERY_ID})
        stubber.add_response("stop_query_execution", {}, {"QueryExecutionId": QUERY_ID})
        with pytest.raises(KeyboardInterrupt):
            AthenaQuery(athena_client, TARGET, sleep=interrupted, clock=lambda: 0.0).run(SQL, timeout_s=60)
        stubber.assert_no_pending_responses()


def test_rows_can_go_to_a_csv_or_parquet_file(tmp_path: Path) -> None:
    for name in ("answer.csv", "answer.parquet"):
        athena_client = client()
        with Stubber(athena_client) as stubber:
            expect_success(stubber)
            result = query_athena("dev", TARGET, SQL, out=str(tmp_path / name), client=athena_client)
        assert result.row_count == 2 and result.rows == () and result.scanned_bytes == 123_456
    with (tmp_path / "answer.csv").open() as handle:
        first = list(csv.reader(handle))[1]
    assert first == ["site-00-line-01-cnc_mill-01", "600", "2026-01-01T00:09:59.475Z"]
    import duckdb

    with duckdb.connect() as connection:
        back = connection.execute("SELECT messages FROM read_parquet(?)", [str(tmp_path / "answer.parquet")])
        assert back.fetchall() == [(600,), (598,)]


# -- through cli.py -----------------------------------------------------------------------------------

OUTPUTS = {
    "archiveBucket": "iotfactory-dev-archive",
    archive_views.WORKGROUP_OUTPUT: TARGET.workgroup,
    archive_views.DATABASE_OUTPUT: TARGET.database,
}


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A project with a dev stack file, a fake `pulumi` that must not be called, and a stubbed Athena."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\nmain: infra/\n")
    (project / "Pulumi.dev.yaml").write_text(
        yaml.safe_dump(
            {
                "config": {
                    "aws:region": TARGET.region,
                    "iotfactory:owner": "team",
                    "iotfactory:archiveMode": "batched",
                }
            }
        )
    )
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    isolate_from_real_aws(monkeypatch, tmp_path)
    stack = RecordingStack("dev", outputs=OUTPUTS)
    env = CloudEnv(project_dir=project, open_stack=stack.opener())
    monkeypatch.setattr(stack_context, "cloud_env", lambda: env)
    use_plain_terminal(monkeypatch)
    athena_client = client()
    monkeypatch.setattr(athena, "athena_client", lambda region: athena_client)
    monkeypatch.setattr(athena, "POLL_FIRST_S", 0.0)
    with Stubber(athena_client) as stubber:
        yield {"stubber": stubber, "stack": stack}


def test_cli_query_on_a_cloud_stack_runs_in_its_workgroup(cloud: dict[str, Any]) -> None:
    expect_success(cloud["stubber"])
    result = CliRunner().invoke(cli.app, ["query", "--stack", "dev", "--format", "json", SQL])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["engine"] == "athena" and document["query_id"] == QUERY_ID
    assert document["rows"][0] == ["site-00-line-01-cnc_mill-01", 600, "2026-01-01T00:09:59.475000Z"]
    assert document["scanned_bytes"] == 123_456 and "iotfactory-dev" in document["source"]


def test_cli_report_on_a_cloud_stack_names_the_alternative(cloud: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli.app, ["report", "--stack", "dev", "--out", "report.html"])
    assert result.exit_code == 2
    assert "report --archive s3://BUCKET" in result.stderr and "query --stack dev" in result.stderr


def test_cli_query_without_the_analytics_outputs_says_to_run_up(
    cloud: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud["stack"], "_outputs", {})  # a stack deployed before the analytics existed
    result = CliRunner().invoke(cli.app, ["query", "--stack", "dev", "SELECT 1"])
    assert result.exit_code == 2
    assert "no Athena workgroup yet" in result.stderr and "up --stack dev" in result.stderr
