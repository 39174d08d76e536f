"""The archive's views: written once, run on DuckDB over real archives, parsed as Athena's Trino.

The archive is what the rule runner writes (the archive writer, GZIP JSON lines in the Firehose key
layout) from the real model's dry-run payloads, with redeliveries, a simulator restart, junk lines
and the cloud's direct layout. Every view is checked against the same payloads read in Python.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlglot
from sqlglot import exp
from support_archive import FIRST_RUN_S, BuiltArchive, build_archive, run_payloads

from analytics.archive_db import ArchiveDatabase
from factory_core import archive_views
from factory_core.archive_views import VIEW_NAMES, archive_columns, render_view, view_columns
from factory_core.payload_contract import ALL_SIGNALS, SIGNAL_UNITS


def stamp(text: str | None) -> dt.datetime | None:
    """Payload time as the views return it: naive UTC with millisecond precision."""
    if text is None:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltArchive:
    return build_archive(tmp_path_factory.mktemp("archive"), direct_share=11)


@pytest.fixture(scope="module")
def database(built: BuiltArchive) -> Any:
    with ArchiveDatabase(built.archive) as opened:
        yield opened


def rows(database: ArchiveDatabase, sql: str) -> list[dict[str, Any]]:
    return database.query(sql).records()


def test_telemetry_has_one_row_per_message_and_one_typed_column_per_signal(
    built: BuiltArchive, database: ArchiveDatabase
) -> None:
    assert built.duplicates > 0  # redeliveries were archived twice
    counted = rows(database, "SELECT machine, count(*) AS n FROM telemetry GROUP BY machine")
    assert {row["machine"]: row["n"] for row in counted} == built.telemetry_per_machine()
    described = {row["column_name"]: row["column_type"] for row in rows(database, "DESCRIBE telemetry")}
    for signal in ALL_SIGNALS:
        assert described[signal] == "DOUBLE"
    assert described["ts"] == "TIMESTAMP_MS" and described["seq"] == "BIGINT"
    expected = {(m["machine"], m["seq"], stamp(m["ts"])): m for m in built.messages("telemetry")}
    signal_list = ", ".join(ALL_SIGNALS)
    for row in rows(database, f"SELECT machine, seq, ts, state, parts_good, {signal_list} FROM telemetry"):
        message = expected[(row["machine"], row["seq"], row["ts"])]
        assert row["state"] == message["state"] and row["parts_good"] == message["parts"]["good"]
        for signal in ALL_SIGNALS:
            assert row[signal] == message["signals"].get(signal), (signal, message)


def test_the_base_relation_keeps_every_archived_line_and_the_arrival_partition(
    built: BuiltArchive, database: ArchiveDatabase
) -> None:
    (total,) = database.query("SELECT count(*) FROM archive_records").rows[0]
    # Every payload once, redeliveries again, and the two junk lines: not JSON (a row of NULLs, as
    # Athena's JSON SerDe gives with ignore.malformed.json) and schema 1 (its signals do not convert).
    assert total == len(built.payloads) + built.duplicates + 2
    junk = database.query("SELECT schema, kind FROM archive_records WHERE kind IS NULL ORDER BY schema").rows
    assert junk == [(1, None), (None, None)]
    hours = rows(database, "SELECT DISTINCT year, month, day, hour FROM telemetry WHERE hour IS NOT NULL")
    partitions = {(r["year"], r["month"], r["day"], r["hour"]) for r in hours}
    assert partitions == {(2026, 3, 7, 9), (2026, 3, 7, 10)}
    (direct,) = database.query("SELECT count(*) FROM archive_records WHERE year IS NULL").rows[0]
    assert direct == len(built.payloads[::11])  # the direct layout has no partition


def fault_windows(built: BuiltArchive) -> dict[tuple[str, int, dt.datetime | None], dict[str, Any]]:
    faults: dict[tuple[str, int, dt.datetime | None], dict[str, Any]] = {}
    for event in built.messages("ground_truth"):
        if event["event"] == "state_change":
            continue
        key = (event["machine"], event["fault_id"], stamp(event["onset"]))
        fault = faults.setdefault(key, {"fault": event["fault"], "end": None, "visible": None})
        fault.setdefault("reason", None)
        if event["detectable_from"] and fault["visible"] is None:
            fault["visible"] = stamp(event["detectable_from"])
        if event["event"] == "fault_end":
            fault["end"], fault["reason"] = stamp(event["end"]), event["reason"]
    return faults


def test_ground_truth_has_one_row_per_fault(built: BuiltArchive, database: ArchiveDatabase) -> None:
    expected = fault_windows(built)
    found = rows(database, "SELECT * FROM ground_truth")
    assert len(found) == len(expected) >= 5
    for row in found:
        fault = expected[(row["machine"], row["fault_id"], row["onset"])]
        assert row["fault"] == fault["fault"]
        assert (row["end"], row["end_reason"], row["detectable_from"]) == (
            fault["end"],
            fault["reason"],
            fault["visible"],
        )
    assert any(row["end"] is None for row in found) and any(row["detectable_from"] for row in found)


def test_states_are_contiguous_intervals_that_stop_where_a_run_stopped(
    built: BuiltArchive, database: ArchiveDatabase
) -> None:
    intervals = rows(database, "SELECT * FROM states ORDER BY machine, start")
    last_seen: dict[tuple[str, int], dt.datetime] = {}
    for message in built.messages("telemetry"):
        moment = stamp(message["ts"])
        run = 0 if moment < stamp("2026-01-01T00:00:00Z") + dt.timedelta(seconds=FIRST_RUN_S) else 1
        key = (message["machine"], run)
        last_seen[key] = max(last_seen.get(key, moment), moment)
    by_machine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for interval in intervals:
        by_machine[interval["machine"]].append(interval)
        assert interval["duration_s"] >= 0
    changes = [e for e in built.messages("ground_truth") if e["event"] == "state_change"]
    assert len(intervals) == len(changes)
    for machine, own in by_machine.items():
        restart = next(i for i, interval in enumerate(own) if i and interval["reason"] == "start")
        before = own[restart - 1]
        # The run's last interval ends at its last sample, not when the simulator came back.
        assert before["end"] == last_seen[(machine, 0)] and not before["open"]
        assert own[-1]["end"] == last_seen[(machine, 1)] and own[-1]["open"]
        for earlier, later in itertools.pairwise(own):
            if later is not own[restart]:
                assert earlier["end"] == later["start"]


def test_declared_view_types_match_what_duckdb_computes(database: ArchiveDatabase) -> None:
    """The types Glue stores with each Athena view are the types the SQL really produces."""
    duckdb_to_trino = {
        "VARCHAR": "varchar",
        "BIGINT": "bigint",
        "INTEGER": "integer",
        "DOUBLE": "double",
        "BOOLEAN": "boolean",
        "TIMESTAMP_MS": "timestamp(3)",
    }
    for name in VIEW_NAMES:
        described = rows(database, f"DESCRIBE {name}")
        actual = [(r["column_name"], duckdb_to_trino[r["column_type"]]) for r in described]
        declared = [(column.name, archive_views.presto_type(column.type)) for column in view_columns(name)]
        assert declared == actual, name


def test_every_signal_of_the_contract_is_a_column_with_its_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    columns = {column.name: column for column in view_columns("telemetry")}
    for signal, unit in SIGNAL_UNITS.items():
        assert columns[signal].comment == f"{signal} in {unit}"
    base = {column.name for column in archive_columns()}
    assert {"signals", "parts", "event", "detectable_from", "year", "hour"} <= base


# Trino's functions the views may use (https://trino.io/docs/current/functions/list.html); DuckDB-only
# spellings (STRPTIME, EPOCH, struct_pack, `::`) would fail in Athena at query time, so they fail here.
TRINO_FUNCTIONS = {
    "CAST",
    "FROM_ISO8601_TIMESTAMP",
    "ROW_NUMBER",
    "LEAD",
    "MAX",
    "MIN",
    "COALESCE",
    "GREATEST",
    "DATE_DIFF",
    "CASE",
    "COUNT",
}
TRINO_TYPES = {"VARCHAR", "BIGINT", "INTEGER", "DOUBLE", "BOOLEAN", "TIMESTAMP"}


def functions_of(tree: exp.Expression) -> set[str]:
    """Every function as the Trino rendering spells it (`DATE_DIFF(`, not sqlglot's class name)."""
    names = set()
    for node in tree.find_all(exp.Func):
        called = re.match(r"([A-Z_0-9]+)\s*\(", node.sql(dialect="trino").upper())
        if called:
            names.add(called[1])
    return names


@pytest.mark.parametrize("name", VIEW_NAMES)
def test_the_athena_rendering_is_trino_sql(name: str) -> None:
    rendered = render_view(name, "trino")
    tree = sqlglot.parse_one(rendered, read="trino")
    unknown = functions_of(tree) - TRINO_FUNCTIONS - {"IF", "SUM", "AND", "OR"}
    assert not unknown, f"{name} uses functions Trino may not have: {unknown}"
    types = {node.sql(dialect="trino").split("(")[0] for node in tree.find_all(exp.DataType)}
    assert types <= TRINO_TYPES, types
    assert "::" not in rendered and "STRUCT" not in rendered.upper()
    # Rendering what was parsed gives the same text: nothing the Trino dialect would reinterpret.
    assert tree.sql(dialect="trino", identify=True, pretty=True) == rendered


def test_a_view_reading_a_missing_signal_fails_in_both_engines_alike(tmp_path: Path) -> None:
    """The signal columns are the contract's: a name it does not have is no column in either engine."""
    with pytest.raises(KeyError):
        view_columns("no_such_view")
    assert "humidity" not in {column.name for column in view_columns("telemetry")}


@pytest.mark.parametrize("name", ["telemetry", "ground_truth_events"])
def test_a_filter_on_the_arrival_partition_reaches_the_table(name: str, database: ArchiveDatabase) -> None:
    """Athena lists only the prefixes a query's partition filter names; a window function lets a filter
    through only on its partition columns, so the deduplication window must carry them."""
    tree = sqlglot.parse_one(render_view(name, "trino"), read="trino")
    window = next(tree.find_all(exp.Window))
    keys = {column.name for column in window.args["partition_by"]}
    assert {"year", "month", "day", "hour"} <= keys
    plan = database.query(f"EXPLAIN SELECT count(*) FROM {name} WHERE year = 2026 AND hour = 9").rows[0][1]
    # The plan prints top-down: the filter below the window is applied before it, next to the scan.
    assert plan.index("row_number()") < plan.index("CAST(year AS INTEGER) = 2026")


def test_payload_fields_the_views_do_not_name_are_read_past(tmp_path: Path) -> None:
    """A field the schema gains later (a process's `boot`, say) never hides a message from the views,
    on archives written before the views know it and after."""

    def with_boot(payload: bytes) -> bytes:
        return orjson.dumps({**orjson.loads(payload), "boot": "0190a5f0-0000-7000-8000-000000000001"})

    built = build_archive(tmp_path, [with_boot(payload) for payload in run_payloads()], junk=False)
    with ArchiveDatabase(built.archive) as opened:
        counted = rows(opened, "SELECT machine, count(*) AS n FROM telemetry GROUP BY machine")
        assert {row["machine"]: row["n"] for row in counted} == built.telemetry_per_machine()
        faults = rows(opened, "SELECT count(*) AS n FROM ground_truth_events")
        assert faults[0]["n"] == len(built.messages("ground_truth"))
