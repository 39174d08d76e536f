"""SQL over the cloud archive through Athena: start the query, wait for it, page through its results.

The workgroup enforces its own configuration (results bucket, encryption, scan limit), so a query
names only the workgroup and the database. Credentials come from boto3's usual chain (a profile
that assumes the stack's query role, say) and are never printed. Failures arrive as one line:
Athena's own message for a bad query (exit 2), the reason and a fix for anything else.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.tables import QueryTable, export_format, write_rows
from factory_core import archive_views
from factory_core.errors import OperationFailed, UsageError
from factory_core.verb_results import QueryColumn, QueryResult

CATALOG = "AwsDataCatalog"
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
# Athena's AthenaError.ErrorCategory: 1 system, 2 user (the query), 3 other.
USER_ERROR = 2
POLL_FIRST_S = 0.2
POLL_MAX_S = 2.0
_INTEGER_TYPES = frozenset({"tinyint", "smallint", "integer", "int", "bigint"})
_FLOAT_TYPES = frozenset({"real", "float", "double", "decimal"})


@dataclass(frozen=True)
class AthenaTarget:
    """Where a stack's views live: its workgroup and Glue database, in its region."""

    workgroup: str
    database: str
    region: str

    @classmethod
    def from_outputs(cls, stack: str, outputs: Mapping[str, Any], region: str | None) -> AthenaTarget:
        workgroup = outputs.get(archive_views.WORKGROUP_OUTPUT)
        database = outputs.get(archive_views.DATABASE_OUTPUT)
        if not workgroup or not database or not region:
            raise UsageError(
                f"stack '{stack}' has no Athena workgroup yet (outputs {archive_views.WORKGROUP_OUTPUT}, "
                f"{archive_views.DATABASE_OUTPUT}); create it with `python cli.py up --stack {stack}`"
            )
        return cls(str(workgroup), str(database), region)

    @property
    def source(self) -> str:
        return f"workgroup {self.workgroup}, database {self.database} ({self.region})"


def athena_client(region: str) -> Any:
    """boto3's Athena client; tests replace this function to hand in a stubbed client."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "athena", region_name=region, config=Config(retries={"mode": "standard", "max_attempts": 5})
    )


def _value(text: str | None, athena_type: str) -> Any:
    """One result cell (Athena returns every value as text) in its type."""
    if text is None:
        return None
    base = athena_type.split("(")[0].strip().lower()
    if base in _INTEGER_TYPES:
        return int(text)
    if base in _FLOAT_TYPES:
        return float(text)
    if base == "boolean":
        return text.lower() == "true"
    if base == "timestamp":
        return dt.datetime.fromisoformat(text)
    return text


@dataclass
class AthenaQuery:
    """One query's life. `sleep` and `clock` are injectable so tests wait for nothing."""

    client: Any
    target: AthenaTarget
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self, sql: str, timeout_s: float) -> tuple[QueryTable, dict[str, Any]]:
        """The rows and Athena's QueryExecution description of the finished query."""
        query_id = self._start(sql)
        try:
            execution = self._wait(query_id, timeout_s)
        except KeyboardInterrupt:
            self._stop(query_id)
            raise
        return self._results(query_id, execution), execution

    def _stop(self, query_id: str) -> None:
        """Ctrl-C or a timeout: stop paying for a query nobody will read."""
        self._call(self.client.stop_query_execution, QueryExecutionId=query_id)

    def _call(self, method: Callable[..., Any], *arguments: Any, **parameters: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return method(*arguments, **parameters)
        except NoCredentialsError:
            raise UsageError(
                "athena: no AWS credentials; set AWS_PROFILE (e.g. one that assumes the stack's "
                f"{archive_views.QUERY_ROLE_OUTPUT}) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "?")
            message = error.response.get("Error", {}).get("Message", str(error))
            if code == "InvalidRequestException":
                raise UsageError(f"athena: {message}") from None
            if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
                raise UsageError(
                    f"athena: access denied ({message}); use credentials allowed by the stack's "
                    f"{archive_views.QUERY_ROLE_OUTPUT}"
                ) from None
            raise OperationFailed(f"athena: {code}: {message}") from None
        except BotoCoreError as error:
            raise OperationFailed(f"athena: {error}") from None

    def _start(self, sql: str) -> str:
        started = self._call(
            self.client.start_query_execution,
            QueryString=sql,
            WorkGroup=self.target.workgroup,
            QueryExecutionContext={"Catalog": CATALOG, "Database": self.target.database},
        )
        return str(started["QueryExecutionId"])

    def _wait(self, query_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = self.clock() + timeout_s
        pause = POLL_FIRST_S
        while True:
            answer = self._call(self.client.get_query_execution, QueryExecutionId=query_id)
            execution = answer["QueryExecution"]
            status = execution["Status"]
            if status["State"] in FINISHED:
                break
            if self.clock() + pause > deadline:
                self._stop(query_id)
                raise OperationFailed(
                    f"athena: query {query_id} still {status['State'].lower()} after {timeout_s:g} s; "
                    "cancelled it (narrow it with WHERE year/month/day/hour, or raise the timeout)"
                )
            self.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)
        if status["State"] == "SUCCEEDED":
            return dict(execution)
        error = status.get("AthenaError") or {}
        reason = " ".join(str(status.get("StateChangeReason") or error.get("ErrorMessage") or "").split())
        if status["State"] == "CANCELLED":
            raise OperationFailed(f"athena: query {query_id} was cancelled {reason}".rstrip())
        if error.get("ErrorCategory") == USER_ERROR:
            raise UsageError(f"athena: {reason}")
        raise OperationFailed(f"athena: query {query_id} failed: {reason}")

    def _pages(self, query_id: str) -> Iterator[dict[str, Any]]:
        """GetQueryResults page by page (each page is one request, so each may fail on its own)."""
        pages = iter(self.client.get_paginator("get_query_results").paginate(QueryExecutionId=query_id))
        while (page := self._call(next, pages, None)) is not None:
            yield page

    def _results(self, query_id: str, execution: Mapping[str, Any]) -> QueryTable:
        columns: tuple[QueryColumn, ...] = ()
        rows: list[tuple[Any, ...]] = []
        first = True
        for page in self._pages(query_id):
            result_set = page["ResultSet"]
            if first:
                info = result_set.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                columns = tuple(QueryColumn(str(item["Name"]), str(item["Type"])) for item in info)
            data = result_set.get("Rows", [])
            if first and execution.get("StatementType") == "DML" and data:
                data = data[1:]  # a SELECT's first row repeats the column names
            first = False
            for row in data:
                cells = [cell.get("VarCharValue") for cell in row.get("Data", [])]
                typed = (_value(text, column.type) for text, column in zip(cells, columns, strict=False))
                rows.append(tuple(typed))
        return QueryTable(columns, rows)


def query_athena(
    stack: str,
    target: AthenaTarget,
    sql: str,
    out: str | None = None,
    timeout_s: float = 600.0,
    client: Any = None,
) -> QueryResult:
    """`query --stack dev|prod`: Athena runs it; rows come back, or go to a .csv/.parquet file."""
    if not sql.strip():
        raise UsageError('query: the SQL is empty; e.g. python cli.py query "SELECT count(*) FROM telemetry"')
    target_file = None if out is None else Path(out).expanduser()
    if target_file is not None:
        export_format(target_file)
    began = time.perf_counter()
    runner = AthenaQuery(client if client is not None else athena_client(target.region), target)
    table, execution = runner.run(sql, timeout_s)
    if target_file is not None:
        write_rows(table, target_file)
    statistics = execution.get("Statistics", {})
    scanned = statistics.get("DataScannedInBytes")
    return QueryResult(
        stack=stack,
        engine="athena",
        source=target.source,
        columns=table.columns,
        rows=tuple(table.rows) if target_file is None else (),
        row_count=len(table.rows),
        out_file=None if target_file is None else str(target_file),
        elapsed_s=time.perf_counter() - began,
        query_id=str(execution.get("QueryExecutionId") or "") or None,
        scanned_bytes=None if scanned is None else int(scanned),
    )
