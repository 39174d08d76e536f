"""`python cli.py query` with DuckDB: the output formats, exports, one-line errors, and an S3-API archive.

Archives are the archive writer's output of the real model's dry-run payloads (tests/support_archive.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support_archive import BuiltArchive, build_archive
from test_rule_runner_support import MOTO_ENV, moto_s3_server

from local_stack.archive import S3Archive
from local_stack.paths import PROJECT_DIR

CLI = str(PROJECT_DIR / "cli.py")
PER_MACHINE = "SELECT machine, count(*) AS messages FROM telemetry GROUP BY machine ORDER BY machine"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltArchive:
    return build_archive(tmp_path_factory.mktemp("archive"))


def query(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLI, "query", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_DIR,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_table_csv_and_json_show_the_same_answer(built: BuiltArchive) -> None:
    expected = built.telemetry_per_machine()
    as_json = query("--archive", str(built.root), "--format", "json", PER_MACHINE)
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["event"] == "result" and document["engine"] == "duckdb"
    assert dict(document["rows"]) == expected and document["row_count"] == len(expected)
    as_csv = query("--archive", str(built.root), "--format", "csv", PER_MACHINE)
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0] == ["machine", "messages"] and {m: int(n) for m, n in rows[1:]} == expected
    as_table = query("--archive", str(built.root), PER_MACHINE)
    assert as_table.returncode == 0 and f"{len(expected)} rows in" in as_table.stdout
    assert all(machine in as_table.stdout for machine in expected)


def test_rows_export_to_csv_and_parquet(built: BuiltArchive, tmp_path: Path) -> None:
    for name in ("rows.csv", "rows.parquet"):
        exported = query(
            "--archive",
            str(built.root),
            "--out",
            str(tmp_path / name),
            "SELECT machine, ts, temperature FROM telemetry ORDER BY machine, ts",
        )
        assert exported.returncode == 0 and f"to {tmp_path / name}" in exported.stdout, exported.stderr
    first = (tmp_path / "rows.csv").read_text().splitlines()[1].split(",")
    assert first[1].endswith("Z") and "T" in first[1]  # ISO 8601 UTC, as the JSON style writes times
    import duckdb

    with duckdb.connect() as connection:
        parquet = str(tmp_path / "rows.parquet")
        (count,) = connection.execute("SELECT count(*) FROM read_parquet(?)", [parquet]).fetchone()
    assert count == sum(built.telemetry_per_machine().values())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["SELEC machine FROM telemetry"], 'duckdb: Parser Error: syntax error at or near "SELEC"'),
        (["SELECT humidity FROM telemetry"], 'Referenced column "humidity" not found'),
        (["SELECT * FROM no_such_view"], "Table with name no_such_view does not exist"),
        (["--out", "rows.txt", "SELECT 1"], "name a .csv or .parquet file"),
        (["   "], "the SQL is empty"),
    ],
)
def test_bad_sql_is_one_line_and_exit_2(built: BuiltArchive, args: list[str], fragment: str) -> None:
    failed = query("--archive", str(built.root), *args)
    assert failed.returncode == 2 and failed.stdout == ""
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], failed.stderr
    assert "LINE 1" not in lines[0] and "Traceback" not in failed.stderr


def test_a_missing_or_empty_archive_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = query("--archive", str(tmp_path / "nowhere"), "SELECT 1")
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: no archive at {tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    empty = query("--archive", str(tmp_path / "empty"), "SELECT 1")
    assert empty.returncode == 2 and "holds no messages yet" in empty.stderr


@pytest.mark.integration
def test_an_s3_api_archive_is_read_through_boto3(built: BuiltArchive) -> None:
    with moto_s3_server() as endpoint:
        os.environ.update(MOTO_ENV)
        try:
            archive = S3Archive("archive", "local", endpoint_url=endpoint)
            archive.create_bucket()
            for path in built.root.rglob("*.gz"):
                archive.put_object(path.relative_to(built.root).as_posix(), path.read_bytes())
        finally:
            for name in MOTO_ENV:
                os.environ.pop(name, None)
        answer = query(
            "--archive",
            "s3://archive/local",
            "--s3-endpoint-url",
            endpoint,
            "--format",
            "json",
            PER_MACHINE,
            env=MOTO_ENV,
        )
        assert answer.returncode == 0, answer.stderr
        document = json.loads(answer.stdout)
        assert dict(document["rows"]) == built.telemetry_per_machine()
        assert document["source"] == f"s3://archive/local/ at {endpoint}"
        missing = query(
            "--archive", "s3://not-there", "--s3-endpoint-url", endpoint, "SELECT 1", env=MOTO_ENV
        )
        assert missing.returncode == 2 and "does not exist" in missing.stderr
        assert "testing" not in answer.stdout + answer.stderr + missing.stderr  # credentials never printed
