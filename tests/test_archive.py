"""Archive backends and the cloud key layout: local folder and S3 (moto's server) behave the same."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path

import orjson
import pytest
from test_rule_runner_support import MOTO_ENV, moto_s3_server

from factory_core.errors import UsageError
from local_stack.archive import (
    LocalArchive,
    S3Archive,
    as_line,
    batch_key,
    direct_key,
    encode_batch,
    iter_records,
    open_archive,
    quarantine_key,
)

WHEN = dt.datetime(2026, 3, 7, 9, 5, 4, 321000, tzinfo=dt.UTC)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def test_batch_key_is_firehose_layout_in_utc() -> None:
    key = batch_key("iotfactory-local-archive", WHEN)
    assert re.fullmatch(
        rf"raw/year=2026/month=03/day=07/hour=09/iotfactory-local-archive-1-2026-03-07-09-05-04-{UUID}\.gz",
        key,
    ), key
    # Another zone, same instant: same partition and name time.
    local = WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert batch_key("s", local).split("/")[:5] == batch_key("s", WHEN).split("/")[:5]


def test_quarantine_and_direct_keys() -> None:
    key = quarantine_key("schema_violation", "stream", WHEN)
    assert re.fullmatch(
        rf"quarantine/schema_violation/year=2026/month=03/day=07/hour=09/stream-1-2026-03-07-09-05-04-{UUID}\.gz",
        key,
    )
    with pytest.raises(ValueError):
        quarantine_key("../escape", "stream", WHEN)
    topic = "factory/simulator/site-00/line-01/site-00-line-01-conveyor-01"
    assert re.fullmatch(rf"{topic}/{int(WHEN.timestamp() * 1000)}-{UUID}", direct_key(topic, WHEN))


def test_keys_written_in_one_second_sort_in_write_order() -> None:
    keys = [batch_key("s", WHEN) for _ in range(5000)]  # more than 4096 in one millisecond
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_records_round_trip_through_gzip_json_lines() -> None:
    payloads = [orjson.dumps({"seq": n, "text": "a\\nb"}) for n in range(3)]
    pretty = b'{\n  "seq": 9,\r\n  "s": "x"\n}'
    body = encode_batch([*payloads, as_line(pretty)])
    assert body[:2] == b"\x1f\x8b"
    assert gzip.decompress(body).count(b"\n") == 4
    records = list(iter_records(body))
    assert records[:3] == payloads
    assert orjson.loads(records[3]) == orjson.loads(pretty)  # only insignificant whitespace changed
    assert list(iter_records(b'{"a": 1}')) == [b'{"a": 1}']  # direct mode: one plain object
    assert list(iter_records(b"\n\n{}\n\n")) == [b"{}"]


def test_local_archive_writes_atomically_and_lists_in_key_order(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    keys = ["raw/b/2.gz", "raw/a.gz", "raw/a/1.gz", "raw/a-1.gz", "quarantine/x/1.gz", "raw/b/1.gz"]
    for number, key in enumerate(keys):
        written = archive.put_object(key, f"body {number}".encode())
        assert abs((written - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert [info.key for info in archive.list_objects()] == sorted(keys)
    assert [info.key for info in archive.list_objects("raw/a")] == ["raw/a-1.gz", "raw/a.gz", "raw/a/1.gz"]
    assert [info.key for info in archive.list_objects("raw/b/")] == ["raw/b/1.gz", "raw/b/2.gz"]
    assert list(archive.list_objects("nothing/")) == []
    stored = archive.get_object("raw/a/1.gz")
    assert stored.body == b"body 2"
    assert not [p for p in (tmp_path / "archive").rglob("*") if p.name.startswith(".")]
    # A crashed writer's temp file is never listed as an object.
    (tmp_path / "archive" / "raw" / ".half.gz.123.tmp").write_bytes(b"partial")
    assert len(list(archive.list_objects())) == len(keys)
    for bad in ("../outside", "/abs", "raw//x", "raw/./x", "raw/"):
        with pytest.raises(ValueError):
            archive.put_object(bad, b"x")


def test_open_archive_parses_locations(tmp_path: Path) -> None:
    assert isinstance(open_archive(str(tmp_path)), LocalArchive)
    assert open_archive(f"file://{tmp_path}").location == str(tmp_path)  # type: ignore[union-attr]
    s3 = open_archive("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Archive) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    for bad in ("s3://", "ftp://host/x"):
        with pytest.raises(UsageError):
            open_archive(bad)
    with pytest.raises(UsageError):
        open_archive(str(tmp_path), endpoint_url="http://127.0.0.1:1")


@pytest.mark.integration
def test_s3_archive_against_moto_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    with moto_s3_server() as endpoint:
        missing = S3Archive("not-there", endpoint_url=endpoint)
        with pytest.raises(UsageError, match="does not exist"):
            missing.check_bucket()
        archive = S3Archive("archive", "stack-a", endpoint_url=endpoint)
        archive.create_bucket()
        archive.check_bucket()
        neighbour = S3Archive("archive", "stack-b", endpoint_url=endpoint)
        neighbour.put_object("raw/x.gz", b"other stack")
        keys = [batch_key("s", WHEN) for _ in range(3)] + ["quarantine/r/1.gz"]
        before = dt.datetime.now(dt.UTC)
        for key in keys:
            written = archive.put_object(key, encode_batch([b'{"n": 1}']))
        after = dt.datetime.now(dt.UTC)
        listed = list(archive.list_objects())
        assert [info.key for info in listed] == sorted(keys)
        assert [info.key for info in archive.list_objects("raw/")] == sorted(keys[:3])
        stored = archive.get_object(keys[-1])
        assert list(iter_records(stored.body)) == [b'{"n": 1}']
        # The write time keeps its milliseconds through S3 metadata (LastModified has whole seconds).
        assert before - dt.timedelta(milliseconds=1) <= stored.written_at <= after
        assert stored.written_at == written.replace(microsecond=written.microsecond // 1000 * 1000)
        assert [info.key for info in neighbour.list_objects()] == ["raw/x.gz"]
