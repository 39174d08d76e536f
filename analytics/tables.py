"""A query's answer as both engines return it, with values in the JSON style, and its export to a file."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory_core.errors import UsageError
from factory_core.verb_results import QueryColumn

EXPORT_FORMATS = {".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class QueryTable:
    columns: tuple[QueryColumn, ...]
    rows: list[tuple[Any, ...]]

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def records(self) -> list[dict[str, Any]]:
        """Rows as {column: value} (for the report's figures, where names are unique)."""
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        index = self.names.index(name)
        return [row[index] for row in self.rows]


def plain(value: Any) -> Any:
    """A value in the types the JSON style writes: numbers, text, UTC datetimes, lists, maps, null."""
    if value is None or isinstance(value, bool | int | str | dt.datetime):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


def plain_rows(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(plain(value) for value in row) for row in rows]


def export_format(path: Path) -> str:
    """`csv` or `parquet`, from the file's extension; anything else is a usage error."""
    chosen = EXPORT_FORMATS.get(path.suffix.lower())
    if chosen is None:
        raise UsageError(f"--out {path}: name a .csv or .parquet file")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: folder {path.parent} does not exist")
    return chosen


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell, written as DuckDB's own CSV export writes it (`archive_db.export`)."""
    if isinstance(value, dt.datetime):
        moment = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        import orjson

        return orjson.dumps(value).decode()
    return value


def write_rows(table: QueryTable, path: Path) -> None:
    """Rows already in Python (Athena's answer) to CSV, or to Parquet through DuckDB."""
    if export_format(path) == "csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.names)
            writer.writerows([csv_cell(value) for value in row] for row in table.rows)
        return
    import duckdb

    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        names = _unique(table.names)
        columns = ", ".join(
            f'"{name}" {_duckdb_type(column.type)}' for name, column in zip(names, table.columns, strict=True)
        )
        connection.execute(f"CREATE TABLE answer ({columns})")
        if table.rows:
            marks = ", ".join("?" for _ in table.columns)
            connection.executemany(f"INSERT INTO answer VALUES ({marks})", [list(row) for row in table.rows])
        connection.execute("COPY answer TO ? (FORMAT PARQUET)", [str(path)])


# Athena's result types as DuckDB holds them for a Parquet export; anything else goes as text.
_ATHENA_TO_DUCKDB = {
    "boolean": "BOOLEAN",
    "tinyint": "BIGINT",
    "smallint": "BIGINT",
    "integer": "BIGINT",
    "bigint": "BIGINT",
    "real": "DOUBLE",
    "float": "DOUBLE",
    "double": "DOUBLE",
    "decimal": "DOUBLE",
    "timestamp": "TIMESTAMP",
    "date": "VARCHAR",
    "varchar": "VARCHAR",
}


def _duckdb_type(athena_type: str) -> str:
    return _ATHENA_TO_DUCKDB.get(athena_type.split("(")[0].strip().lower(), "VARCHAR")


def _unique(names: list[str]) -> list[str]:
    """Column names made unique for a table (`a`, `a` -> `a`, `a_2`)."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique
