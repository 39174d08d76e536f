"""The SQL views over the archive, written once and rendered for DuckDB (local) and Athena (Trino).

Every engine first exposes the archive as one relation, `archive_records`: one row per archived
line, one column per payload field (the union of both payload kinds, typed from the contract's
JSON Schemas) plus the arrival partition `year`, `month`, `day`, `hour` (text, as in the object
keys). On top of it the same views exist everywhere:

- `telemetry`: one row per telemetry message (QoS 1 redeliveries archived twice appear once), one
  column per signal in the contract's unit;
- `ground_truth_events`: one row per ground-truth event, deduplicated the same way;
- `ground_truth`: one row per fault: onset, detectable_from, end, end reason, severity;
- `states`: one row per state interval of a machine, from its `state_change` events.

The views are written in Trino's dialect (Athena's engine, the stricter of the two) and transpiled
by sqlglot; signal columns come from `payload_contract.SIGNALS`, so a new signal is a new column in
both engines at once. `view_columns` gives each view's column types (sqlglot's type inference),
which Athena needs to store a view in the Glue catalog.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from factory_core.payload_contract import (
    ALL_SIGNALS,
    PAYLOAD_KINDS,
    SCHEMA_VERSION,
    SIGNAL_UNITS,
    load_schema,
)

Engine = Literal["duckdb", "trino"]
SOURCE_DIALECT: Engine = "trino"
BASE_RELATION = "archive_records"
PARTITION_COLUMNS = ("year", "month", "day", "hour")
# What each relation is, for people (docs, Glue table descriptions, `query` help).
# Stack outputs naming where the views live in the cloud: infra/ exports them, `query --stack` reads them.
DATABASE_OUTPUT = "analyticsDatabase"
WORKGROUP_OUTPUT = "analyticsWorkgroup"
RESULTS_BUCKET_OUTPUT = "analyticsResultsBucket"
QUERY_ROLE_OUTPUT = "analyticsQueryRoleArn"
DESCRIPTIONS = {
    BASE_RELATION: "Every archived line as it arrived (redeliveries included; a line that is not JSON "
    "is a row of NULLs), one column per payload field.",
    "telemetry": "One row per telemetry message, one column per signal in the contract's unit.",
    "ground_truth_events": "One row per ground-truth event (state changes, fault start/update/end).",
    "ground_truth": "One row per fault: onset, detectable_from, end, end reason, severity.",
    "states": "One row per state interval of a machine, from its state_change events.",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: exp.DataType
    comment: str = ""

    def type_sql(self, engine: Engine) -> str:
        return self.type.sql(engine)


# -- the base relation, from the JSON Schemas ----------------------------------------------------------


def _json_schema_type(name: str, schema: Mapping[str, Any]) -> exp.DataType:
    """SQL type of one JSON Schema property (as the contract writes them: no `$ref`, no arrays)."""
    if "const" in schema:
        return exp.DataType.build("INTEGER" if isinstance(schema["const"], int) else "VARCHAR")
    if "enum" in schema or "oneOf" in schema:
        return exp.DataType.build("VARCHAR")  # enumerations of text, or a timestamp or null
    declared = schema.get("type")
    kinds = [declared] if isinstance(declared, str) else [kind for kind in declared or () if kind != "null"]
    if kinds == ["object"]:
        fields = ", ".join(
            f"{field} {_json_schema_type(field, inner).sql(SOURCE_DIALECT)}"
            for field, inner in schema["properties"].items()
        )
        return exp.DataType.build(f"ROW({fields})", dialect=SOURCE_DIALECT)
    simple = {"integer": "BIGINT", "number": "DOUBLE", "string": "VARCHAR", "boolean": "BOOLEAN"}
    if len(kinds) != 1 or kinds[0] not in simple:
        raise ValueError(f"payload field {name!r}: no SQL type for JSON Schema type {declared!r}")
    return exp.DataType.build(simple[kinds[0]])


@cache
def archive_columns() -> tuple[Column, ...]:
    """`archive_records`' columns: every payload field of either kind, then the arrival partition."""
    columns: dict[str, Column] = {}
    for kind in PAYLOAD_KINDS:
        for name, schema in load_schema(kind)["properties"].items():
            column = Column(name, _json_schema_type(name, schema), str(schema.get("description", "")))
            known = columns.setdefault(name, column)
            if known.type != column.type:
                raise ValueError(f"payload field {name!r} has different types in the two payload kinds")
    partition = "archive arrival time (UTC) from the object key, as text: {}".format
    for name in PARTITION_COLUMNS:
        columns[name] = Column(name, exp.DataType.build("VARCHAR"), partition(name))
    return tuple(columns.values())


# -- the views, in Trino's dialect ---------------------------------------------------------------------


def _timestamp(column: str) -> str:
    return f"CAST(from_iso8601_timestamp(r.{column}) AS TIMESTAMP(3))"


def _partition_columns(prefix: str = "") -> str:
    return ", ".join(f"CAST({prefix}{name} AS INTEGER) AS {name}" for name in PARTITION_COLUMNS)


def _deduplicated(kind: str, columns: str) -> str:
    """One row per message of `kind`: a redelivered message has the same machine, seq and ts.

    The arrival partition is part of the window's key so that a filter on `year`/`month`/`day`/
    `hour` still reaches the table (Athena then lists only those prefixes): an engine may push a
    filter below a window function only when it is on the window's partition columns. The price: a
    redelivery archived in another hour than its first copy counts twice; redeliveries arrive
    within seconds (the broker resends on reconnect), so that needs an hour boundary in between.
    """
    partition = ", ".join(f"r.{name}" for name in PARTITION_COLUMNS)
    return f"""
        SELECT * FROM (
          SELECT {columns}, {_partition_columns("r.")},
                 row_number() OVER (PARTITION BY r.machine, r.seq, r.ts, {partition}) AS archived_copy
          FROM {BASE_RELATION} AS r
          WHERE r.kind = '{kind}' AND r.schema = {SCHEMA_VERSION}
        ) AS messages
        WHERE archived_copy = 1"""


def _select_except_copy(columns: list[str], source: str) -> str:
    return f"SELECT {', '.join(columns)} FROM ({source}) AS deduplicated"


IDENTITY = ["site", "line", "machine", "type"]


def _telemetry_sql() -> str:
    signals = [f"r.signals.{name} AS {name}" for name in ALL_SIGNALS]
    inner = ", ".join(
        [f"r.{name}" for name in IDENTITY]
        + ["r.state", f"{_timestamp('ts')} AS ts", "r.seq", *signals]
        + ["r.parts.good AS parts_good", "r.parts.rejected AS parts_rejected"]
    )
    outer = [*IDENTITY, "state", "ts", "seq", *ALL_SIGNALS, "parts_good", "parts_rejected"]
    outer += PARTITION_COLUMNS
    return _select_except_copy(outer, _deduplicated("telemetry", inner))


GROUND_TRUTH_TIMES = ("at", "onset", "end", "detectable_from")
GROUND_TRUTH_FIELDS = ("event", "fault", "fault_class", "fault_id", "signal", "severity", "scheduled")
STATE_FIELDS = ("from_state", "to_state", "reason")


def _quoted(name: str) -> str:
    return f'"{name}"'


def _ground_truth_events_sql() -> str:
    inner = ", ".join(
        [f"r.{name}" for name in IDENTITY]
        + [f"{_timestamp('ts')} AS ts", "r.seq"]
        + [f"r.{name}" for name in GROUND_TRUTH_FIELDS if name == "event"]
        + [f"{_timestamp(_quoted(name))} AS {_quoted(name)}" for name in GROUND_TRUTH_TIMES]
        + [f"r.{name}" for name in (*GROUND_TRUTH_FIELDS[1:], *STATE_FIELDS)]
    )
    outer = [
        *IDENTITY,
        "ts",
        "seq",
        "event",
        *(_quoted(name) for name in GROUND_TRUTH_TIMES),
        *GROUND_TRUTH_FIELDS[1:],
        *STATE_FIELDS,
        *PARTITION_COLUMNS,
    ]
    return _select_except_copy(outer, _deduplicated("ground_truth", inner))


def _ground_truth_sql() -> str:
    """One row per fault instance: its events share machine, fault_id and onset."""
    keys = [*IDENTITY, "fault_id", "fault", "fault_class", "signal", "scheduled", "onset"]
    return f"""
        SELECT {", ".join(keys)},
               min(detectable_from) AS detectable_from,
               max("end") AS "end",
               max(CASE WHEN event = 'fault_end' THEN reason END) AS end_reason,
               max(severity) AS severity,
               min(ts) AS first_reported_at,
               max(ts) AS last_reported_at
        FROM ground_truth_events
        WHERE event IN ('fault_start', 'fault_update', 'fault_end')
        GROUP BY {", ".join(keys)}"""


def _states_sql() -> str:
    """State intervals from the exact `at` of each state change, with its reason.

    An interval ends at the machine's next state change. Its last interval, and the last one before
    a simulator restart (the next change has no `from_state`), end where the machine was last
    observed in that run: its last telemetry sample, not the restart or the end of time.
    """
    order = "PARTITION BY machine ORDER BY at, seq"
    return f"""
        WITH changes AS (
          SELECT {", ".join(IDENTITY)}, at, seq, to_state AS state, reason,
                 lead(at) OVER ({order}) AS next_at,
                 lead(CASE WHEN from_state IS NULL THEN 1 ELSE 0 END) OVER ({order}) AS next_is_restart
          FROM ground_truth_events
          WHERE event = 'state_change'
        ),
        last_seen AS (
          SELECT c.machine, c.at, max(t.ts) AS seen_until
          FROM changes AS c
          JOIN telemetry AS t
            ON t.machine = c.machine AND t.ts >= c.at AND (c.next_at IS NULL OR t.ts < c.next_at)
          WHERE c.next_at IS NULL OR c.next_is_restart = 1
          GROUP BY c.machine, c.at
        ),
        intervals AS (
          SELECT {", ".join(f"c.{name}" for name in IDENTITY)}, c.state, c.reason, c.at AS start,
                 CASE
                   WHEN c.next_at IS NOT NULL AND c.next_is_restart = 0 THEN c.next_at
                   ELSE greatest(c.at, coalesce(s.seen_until, c.at))
                 END AS "end",
                 c.next_at IS NULL AS open
          FROM changes AS c
          LEFT JOIN last_seen AS s ON s.machine = c.machine AND s.at = c.at
        )
        SELECT {", ".join(IDENTITY)}, state, reason, start, "end",
               CAST(date_diff('millisecond', start, "end") AS DOUBLE) / 1000 AS duration_s,
               open
        FROM intervals"""


# Views in dependency order: each may use the ones before it.
_VIEW_SOURCES = {
    "telemetry": _telemetry_sql,
    "ground_truth_events": _ground_truth_events_sql,
    "ground_truth": _ground_truth_sql,
    "states": _states_sql,
}
VIEW_NAMES: tuple[str, ...] = tuple(_VIEW_SOURCES)


@cache
def view_expression(name: str) -> exp.Query:
    """The parsed view (Trino dialect); callers render it, never change it."""
    parsed = sqlglot.parse_one(_VIEW_SOURCES[name](), read=SOURCE_DIALECT)
    if not isinstance(parsed, exp.Query):
        raise TypeError(f"view {name} is not a query")
    return parsed


def render_view(name: str, engine: Engine) -> str:
    """The view's SELECT in one engine's SQL, identifiers quoted (`end`, `type`, `line` are keywords)."""
    return view_expression(name).sql(dialect=engine, identify=True, pretty=True)


def transpile(sql: str, engine: Engine) -> str:
    """SQL written in the views' dialect (Trino), for `engine`: how reports and docs write once too."""
    return sqlglot.transpile(sql, read=SOURCE_DIALECT, write=engine, identify=True)[0]


def create_view_statements(engine: Engine) -> Iterator[str]:
    """`CREATE OR REPLACE VIEW` for every view, in dependency order."""
    for name in VIEW_NAMES:
        yield f'CREATE OR REPLACE VIEW "{name}" AS\n{render_view(name, engine)}'


# -- column types of the views -------------------------------------------------------------------------


def _schema() -> dict[str, dict[str, str]]:
    """What sqlglot's type inference knows: the base relation and every view before the current one."""
    return {BASE_RELATION: {column.name: column.type_sql(SOURCE_DIALECT) for column in archive_columns()}}


@cache
def view_columns(name: str) -> tuple[Column, ...]:
    """Each output column of a view with its inferred type (and the unit of signal columns)."""
    schema = _schema()
    for view in VIEW_NAMES:
        qualified = qualify(view_expression(view).copy(), schema=schema, dialect=SOURCE_DIALECT)
        annotated = annotate_types(qualified, schema=schema, dialect=SOURCE_DIALECT)
        columns = tuple(
            Column(select.alias_or_name, select.type, _comment(view, select.alias_or_name))
            for select in annotated.selects
        )
        unknown = [column.name for column in columns if column.type.this == exp.DataType.Type.UNKNOWN]
        if unknown:
            raise ValueError(f"view {view}: cannot infer the type of {unknown}")
        if view == name:
            return columns
        schema[view] = {column.name: column.type_sql(SOURCE_DIALECT) for column in columns}
    raise KeyError(f"no view {name!r}; views: {', '.join(VIEW_NAMES)}")


def _comment(view: str, column: str) -> str:
    if view == "telemetry" and column in SIGNAL_UNITS:
        return f"{column} in {SIGNAL_UNITS[column]}"
    if column in PARTITION_COLUMNS:
        return f"archive arrival {column} (UTC), from the object key"
    return ""


def presto_type(data_type: exp.DataType) -> str:
    """A type as Athena writes it into a stored view's column list (lower case Trino names)."""
    return data_type.sql("trino").lower()


def glue_type(data_type: exp.DataType) -> str:
    """A column type as the Glue catalog (Hive DDL) spells it: `struct<good:bigint,rejected:bigint>`."""
    if data_type.this == exp.DataType.Type.STRUCT:
        fields = []
        for field in data_type.expressions:
            inner = field.args["kind"] if isinstance(field, exp.ColumnDef) else field
            fields.append(f"{field.name}:{glue_type(inner)}")
        return f"struct<{','.join(fields)}>"
    return data_type.sql("hive").lower()
