"""DuckDB over an archive (a local folder, or an S3-compatible bucket read through boto3) with the views.

`archive_records` is DuckDB's `read_json` over the archive's data objects: the batched layout
(`raw/year=/month=/day=/hour=/*.gz`, the partition from the path) and the cloud's direct layout
(`factory/simulator/...`, one message per object, no partition). The views of
`factory_core.archive_views` sit on top, rendered for DuckDB, so a query here and the same query
in Athena read the same columns.

An S3 archive is copied object by object into a temporary folder first (boto3, with its usual
credential chain; eight downloads in flight) and read from there: DuckDB's own S3 support is an
extension it downloads at run time, which a machine without internet cannot, and it would need the
credentials handed to it. Archives big enough for that copy to hurt belong to Athena.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from analytics.tables import QueryTable, export_format, plain_rows
from factory_core import archive_views
from factory_core.errors import OperationFailed, UsageError
from factory_core.fleet import TOPIC_ROOT
from factory_core.payload_contract import SCHEMA_VERSION
from factory_core.verb_results import QueryColumn, QueryResult
from local_stack.archive import RAW_PREFIX, Archive, LocalArchive, ObjectInfo
from local_stack.verify import DATA_PREFIXES

DIRECT_PREFIX = TOPIC_ROOT + "/"
_DOWNLOADS_IN_FLIGHT = 8
# Timestamps in CSV exports as the JSON style writes them (ISO 8601, UTC, milliseconds).
CSV_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%gZ"


def one_line_message(error: Exception) -> str:
    """DuckDB's message without its source excerpt (`LINE 1: ...` and the caret line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept) or type(error).__name__


class ArchiveDatabase:
    """A DuckDB connection holding `archive_records` and the views; use it in a `with` block.

    `materialize` reads the archive once into tables (the report runs many queries); otherwise the
    views read the files at each query (a single `query` reads them once).
    """

    def __init__(self, archive: Archive, *, materialize: bool = False) -> None:
        self.archive = archive
        self.materialize = materialize
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        self._connection: Any = None
        self._layouts: list[str] = []  # the data layouts present: raw/ and/or factory/simulator/
        self.folder: Path | None = None

    @property
    def source(self) -> str:
        return self.archive.location

    def __enter__(self) -> ArchiveDatabase:
        import duckdb

        try:
            self.folder = self._local_folder()
            layouts = _layouts(LocalArchive(self.folder))
            if not layouts:
                raise UsageError(
                    f"the archive at {self.source} holds no messages yet (nothing under "
                    f"{' or '.join(DATA_PREFIXES)}); start the stack or wait for its first batch"
                )
            self._connection = duckdb.connect()
            self._connection.execute("SET TimeZone = 'UTC'")
            self._define(layouts)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    # -- what DuckDB reads -------------------------------------------------------------------------

    def _local_folder(self) -> Path:
        if isinstance(self.archive, LocalArchive):
            if not self.archive.root.is_dir():
                raise UsageError(f"no archive at {self.archive.root}; check the path (or run `up` first)")
            return self.archive.root
        self._temporary = tempfile.TemporaryDirectory(prefix="iotfactory-archive-")
        folder = Path(self._temporary.name)
        mirror(self.archive, folder)
        return folder

    def _read_json(self, layout: str, *, filename: bool = False) -> str:
        assert self.folder is not None
        columns = {
            column.name: column.type_sql("duckdb")
            for column in archive_views.archive_columns()
            if column.name not in archive_views.PARTITION_COLUMNS
        }
        options = [
            f"columns = {_struct_literal(columns)}",
            "format = 'newline_delimited'",
            # A line that is not JSON becomes a row of NULLs and a field that does not convert (schema
            # 1's [value, unit] pairs) NULL, as with Athena's JSON SerDe and ignore.malformed.json;
            # the views read schema-2 rows only, and `verify` counts what could not be read.
            "ignore_errors = true",
            f"filename = {str(filename).lower()}",
        ]
        if layout == RAW_PREFIX:
            hive_types = {name: "VARCHAR" for name in archive_views.PARTITION_COLUMNS}
            options += ["hive_partitioning = true", f"hive_types = {_struct_literal(hive_types)}"]
            pattern = self.folder / RAW_PREFIX / "**" / "*.gz"
        else:
            pattern = self.folder / DIRECT_PREFIX / "**"
        return f"read_json({_string_literal(str(pattern))}, {', '.join(options)})"

    def _records_sql(self, layouts: list[str], *, filename: bool = False) -> str:
        names = [column.name for column in archive_views.archive_columns()]
        if filename:
            names.append("filename")
        selects = []
        for layout in layouts:
            partition = layout == RAW_PREFIX
            columns = [
                f'"{name}"'
                if partition or name not in archive_views.PARTITION_COLUMNS
                else f'CAST(NULL AS VARCHAR) AS "{name}"'
                for name in names
            ]
            selects.append(f"SELECT {', '.join(columns)} FROM {self._read_json(layout, filename=filename)}")
        return "\nUNION ALL\n".join(selects)

    def _define(self, layouts: list[str]) -> None:
        kind = "TABLE" if self.materialize else "VIEW"
        self._run(f"CREATE {kind} {archive_views.BASE_RELATION} AS {self._records_sql(layouts)}")
        for name in archive_views.VIEW_NAMES:
            body = archive_views.render_view(name, "duckdb")
            self._run(f'CREATE {kind} "{name}" AS {body}')
        self._layouts = layouts

    # -- running SQL ---------------------------------------------------------------------------------

    def _run(self, sql: str, parameters: list[Any] | None = None) -> Any:
        import duckdb

        try:
            return self._connection.execute(sql, parameters)
        except (duckdb.OutOfMemoryException, duckdb.InternalException) as error:
            raise OperationFailed(f"duckdb: {one_line_message(error)}") from None
        except duckdb.Error as error:
            raise UsageError(f"duckdb: {one_line_message(error)}") from None

    def query(self, sql: str) -> QueryTable:
        cursor = self._run(sql)
        if cursor.description is None:
            return QueryTable((), [])
        columns = tuple(QueryColumn(str(item[0]), str(item[1])) for item in cursor.description)
        return QueryTable(columns, plain_rows(cursor.fetchall()))

    def export(self, sql: str, path: Path) -> int:
        """The rows of `sql` straight to a CSV or Parquet file (no round trip through Python)."""
        chosen = export_format(path)
        statement = sql.strip().rstrip(";")
        if chosen == "parquet":
            options = "FORMAT PARQUET"
        else:
            options = f"FORMAT CSV, HEADER, TIMESTAMPFORMAT '{CSV_TIMESTAMP_FORMAT}'"
            statement = self._with_plain_timestamps(statement)
        written = self._run(f"COPY ({statement}) TO {_string_literal(str(path))} ({options})").fetchone()
        return int(written[0]) if written else 0

    def _with_plain_timestamps(self, statement: str) -> str:
        """The views' TIMESTAMP(3) columns cast to TIMESTAMP: CSV's TIMESTAMPFORMAT skips the former."""
        described = self._run(f"DESCRIBE ({statement})").fetchall()
        precise = ("TIMESTAMP_MS", "TIMESTAMP_S", "TIMESTAMP_NS")
        columns = [
            f'CAST("{name}" AS TIMESTAMP) AS "{name}"' if kind in precise else f'"{name}"'
            for name, kind, *_ in described
        ]
        return f"SELECT {', '.join(columns)} FROM ({statement})"

    def create_arrivals(self) -> None:
        """TEMP TABLE `archive_arrivals`: per archived line its kind, machine, payload ts and when its
        object was written (publish -> archive latency). DuckDB only: Athena has no write time."""
        assert self.folder is not None
        objects = [
            (str(self.folder / info.key), info.written_at.replace(tzinfo=None))
            for prefix in self._layouts
            for info in LocalArchive(self.folder).list_objects(prefix)
        ]
        self._run("CREATE OR REPLACE TEMP TABLE archive_objects (filename VARCHAR, written_at TIMESTAMP)")
        if objects:
            self._connection.executemany("INSERT INTO archive_objects VALUES (?, ?)", objects)
        records = self._records_sql(self._layouts, filename=True)
        self._run(
            f"""CREATE OR REPLACE TEMP TABLE archive_arrivals AS
                SELECT r.kind, r.machine, CAST(CAST(r.ts AS TIMESTAMPTZ) AS TIMESTAMP) AS ts, o.written_at
                FROM ({records}) AS r JOIN archive_objects AS o USING (filename)
                WHERE r.schema = {SCHEMA_VERSION}"""
        )


def _layouts(archive: LocalArchive) -> list[str]:
    """The data layouts present: batched (`raw/`) and/or direct (`factory/simulator/`)."""
    return [prefix for prefix in DATA_PREFIXES if next(iter(archive.list_objects(prefix)), None) is not None]


def _string_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _struct_literal(values: dict[str, str]) -> str:
    fields = (f"{_string_literal(key)}: {_string_literal(value)}" for key, value in values.items())
    return "{" + ", ".join(fields) + "}"


def mirror(archive: Archive, folder: Path) -> int:
    """Copy every data object of `archive` into `folder` under its key, its write time as mtime."""

    def fetch(info: ObjectInfo) -> None:
        stored = archive.get_object(info.key)
        target = folder.joinpath(*info.key.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(stored.body)
        written_ns = int(stored.written_at.timestamp() * 1e9)
        os.utime(target, ns=(written_ns, written_ns))

    count = 0
    with ThreadPoolExecutor(max_workers=_DOWNLOADS_IN_FLIGHT) as pool:
        for prefix in DATA_PREFIXES:
            for _ in pool.map(fetch, archive.list_objects(prefix)):
                count += 1
    return count


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as elapsed:` ... `elapsed[0]` holds the seconds taken."""
    elapsed = [0.0]
    began = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - began


def utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def query_archive(stack: str, archive: Archive, sql: str, out: str | None = None) -> QueryResult:
    """`query` on DuckDB: the rows, or with `out` the rows written to a .csv/.parquet file."""
    if not sql.strip():
        raise UsageError('query: the SQL is empty; e.g. python cli.py query "SELECT count(*) FROM telemetry"')
    target = None if out is None else Path(out).expanduser()
    if target is not None:
        export_format(target)  # refuse a bad file name before reading the archive
    with timed() as elapsed, ArchiveDatabase(archive) as database:
        if target is None:
            table = database.query(sql)
            written = None
        else:
            written = database.export(sql, target)
            table = QueryTable((), [])
    return QueryResult(
        stack=stack,
        engine="duckdb",
        source=archive.location,
        columns=table.columns,
        rows=tuple(table.rows),
        row_count=len(table.rows) if written is None else written,
        out_file=None if target is None else str(target),
        elapsed_s=elapsed[0],
    )
