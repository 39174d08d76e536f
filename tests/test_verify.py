"""`verify` on archives built with known gaps, duplicates, restarts and quarantine: it finds exactly those."""

from __future__ import annotations

import datetime as dt
import io
import random
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from cli_render.json_style import dumps, result_document
from cli_render.verify_view import render_report
from factory_core.archive_report import Restart
from local_stack.archive import LocalArchive, batch_key, encode_batch, quarantine_key
from local_stack.verify import SeqRange, verify_archive
from local_stack.verify_tallies import LatencyHistogram, SeqSet
from simulator.model.payload import iso_timestamp

MACHINE = "site-00-line-01-conveyor-01"
OTHER = "site-01-line-02-cnc_mill-01"


def _message(machine: str, seq: int, ts_ms: int, **body: object) -> bytes:
    """The envelope telemetry and ground truth share, identified by machine and seq."""
    site, line = machine[:7], machine[8:15]
    envelope = {
        "schema": 1,
        "machine": machine,
        "site": site,
        "line": line,
        "type": "conveyor",
        "ts": iso_timestamp(ts_ms),
        "seq": seq,
    }
    return orjson.dumps(envelope | body)


def telemetry(machine: str, seq: int, ts_ms: int) -> bytes:
    return _message(machine, seq, ts_ms, state="running", signals={}, parts={"good": 0, "rejected": 0})


def ground_truth(machine: str, seq: int, ts_ms: int) -> bytes:
    return _message(machine, seq, ts_ms, event="state_change")


def write_batches(archive: LocalArchive, batches: list[list[bytes]]) -> None:
    for batch in batches:
        archive.put_object(batch_key("test", dt.datetime.now(dt.UTC)), encode_batch(batch))


def test_seqset_matches_a_plain_set() -> None:
    rng = random.Random(5)
    for _ in range(200):
        values = [rng.randrange(1, 60) for _ in range(rng.randrange(1, 80))]
        seqs, plain = SeqSet(), set()
        for value in values:
            assert seqs.add(value) == (value not in plain)
            plain.add(value)
        assert len(seqs) == len(plain)
        assert all((v in seqs) == (v in plain) for v in range(0, 62))
        expected_missing = [v for v in range(1, max(plain) + 1) if v not in plain]
        got = [v for start, end in seqs.missing(1) for v in range(start, end + 1)]
        assert got == expected_missing
        assert len(seqs.starts) == len(seqs.ends) and seqs.starts == sorted(seqs.starts)


def test_latency_percentiles_are_within_one_percent() -> None:
    rng = random.Random(9)
    values = [rng.lognormvariate(-1.5, 1.0) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        approximate = histogram.quantile(q)
        assert approximate is not None and abs(approximate - exact) <= 0.0101 * exact + 0.001
    assert histogram.max_s == max(values)


def test_verify_finds_known_gaps_duplicates_and_reordering(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 10_000
    sent = {seq: telemetry(MACHINE, seq, now_ms + seq) for seq in range(1, 101)}
    lost = {7, 8, 9, 50, 100 - 1}
    delivered = [seq for seq in range(1, 101) if seq not in lost]
    # Out of order: 30 arrives after 31; duplicates: 10 and 11 again in a later batch, 60 twice.
    delivered.remove(30)
    delivered.insert(delivered.index(31) + 1, 30)
    batches = [
        [sent[s] for s in delivered[:40]],
        [sent[s] for s in delivered[40:]] + [sent[10], sent[11], sent[60]],
    ]
    batches[1].insert(batches[1].index(sent[60]) + 1, sent[60])
    other = [telemetry(OTHER, seq, now_ms + seq) for seq in range(3, 21)]  # archive starts at seq 3
    labels = [ground_truth(MACHINE, seq, now_ms + seq) for seq in (1, 2, 3, 5)]
    write_batches(archive, [*batches, other, labels])

    report = verify_archive(archive)
    streams = {(s.machine, s.kind): s for s in report.streams}
    main = streams[(MACHINE, "telemetry")]
    assert main.gaps == (SeqRange(7, 9), SeqRange(50, 50), SeqRange(99, 99))
    assert (main.first_seq, main.last_seq, main.missing) == (1, 100, 5)
    assert main.unique == 95 and main.duplicates == 4 and main.messages == 99
    assert main.out_of_order == 1 and main.runs == 1
    assert streams[(OTHER, "telemetry")].gaps == (SeqRange(1, 2),)
    assert streams[(MACHINE, "ground_truth")].gaps == (SeqRange(4, 4),)
    assert report.missing == 5 + 2 + 1 and not report.ok

    # An independent count over the same objects agrees.
    records = [orjson.loads(r) for batch in [*batches, other, labels] for r in batch]
    keys = [(r["machine"], "ground_truth" if "event" in r else "telemetry", r["seq"]) for r in records]
    assert report.messages == len(keys)
    assert report.unique == len(set(keys))
    assert report.duplicates == len(keys) - len(set(keys))

    # For a window of a longer archive, a late start is not a gap.
    assert verify_archive(archive, expect_seq_from=None).missing == 5 + 1


def test_a_simulator_restart_is_a_new_run_not_duplicates(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    first_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 60_000
    second_ms = first_ms + 30_000
    run_one = [telemetry(MACHINE, seq, first_ms + seq * 1000) for seq in range(1, 21)]
    run_two = [telemetry(MACHINE, seq, second_ms + seq * 1000) for seq in range(1, 11) if seq != 4]
    write_batches(archive, [run_one, run_two, [run_one[0]]])  # and a late duplicate of run one's seq 1
    report = verify_archive(archive)
    (stream,) = report.streams
    assert stream.runs == 2 and stream.unique == 29
    assert stream.gaps == (SeqRange(4, 4, run=1),)
    assert stream.duplicates == 1  # run one's seq 1 again, recognised by its timestamp
    assert any("restarted" in note for note in report.notes)


def test_quarantine_unreadable_and_reconciliation(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    now = dt.datetime.now(dt.UTC)
    base_ms = int(now.timestamp() * 1000) - 5_000
    write_batches(
        archive, [[telemetry(MACHINE, seq, base_ms) for seq in range(1, 11)] + [b"{broken", b'{"x": 1}']]
    )
    envelope = orjson.dumps(
        {
            "reason": "invalid_json",
            "detail": "bad",
            "topic": "factory/simulator/site-00/a/b",
            "received_at": "2026-01-01T00:00:00.000Z",
            "qos": 1,
            "payload_base64": "eyJ4",
        }
    )
    archive.put_object(quarantine_key("invalid_json", "test", now), encode_batch([envelope, envelope]))
    archive.put_object(quarantine_key("schema_violation", "test", now), encode_batch([b"not an envelope"]))
    report = verify_archive(archive, published={("site-00", "telemetry"): 12, ("site-01", "telemetry"): 0})
    assert report.quarantined == {"invalid_json": 2, "schema_violation": 1}
    assert report.quarantine_samples[0].payload_preview == '{"x'
    assert report.unreadable == 2 and len(report.unreadable_samples) == 2
    site = {item.site: item for item in report.reconciliation}
    assert site["site-00"].unaccounted == 2 and site["site-01"].unaccounted == 0
    assert report.missing == 0 and not report.ok  # tail loss is visible only against the published count


def test_latency_and_the_speed_note(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    write_batches(archive, [[telemetry(MACHINE, seq, now_ms - 2_000 + seq) for seq in range(1, 101)]])
    report = verify_archive(archive)
    assert report.latency_meaningful and report.latency is not None
    assert report.latency.p50_s is not None and 1.8 < report.latency.p50_s < 30
    assert not report.notes

    ahead = LocalArchive(tmp_path / "fast")
    write_batches(ahead, [[telemetry(MACHINE, seq, now_ms + 3_600_000 + seq) for seq in range(1, 11)]])
    fast = verify_archive(ahead)
    assert not fast.latency_meaningful and fast.latency is not None and fast.latency.ahead == 10
    assert any("speed > 1" in note for note in fast.notes)


def test_json_and_rich_output(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 1000
    write_batches(archive, [[telemetry(MACHINE, seq, now_ms) for seq in (1, 2, 4, 4)]])
    report = verify_archive(archive)
    document = orjson.loads(dumps(result_document(report)))
    assert document["ok"] is False and document["missing"] == 1 and document["duplicates"] == 1
    assert document["streams"][0]["gaps"] == [{"first": 3, "last": 3, "run": 0}]
    assert document["totals"][0]["kind"] == "telemetry"

    output = io.StringIO()
    render_report(report, Console(file=output, width=200, color_system=None))
    text = output.getvalue()
    assert "LOSS: 1 messages missing" in text and MACHINE in text and "3" in text

    empty = io.StringIO()
    render_report(verify_archive(LocalArchive(tmp_path / "nothing")), Console(file=empty, width=200))
    assert "holds no messages yet" in empty.getvalue()


@pytest.mark.parametrize("machines,per_machine", [(200, 1_000)])
def test_large_archive_streams_through(tmp_path: Path, machines: int, per_machine: int) -> None:
    """200k messages in 100 objects: counts are exact, and nothing here holds all payloads at once."""
    archive = LocalArchive(tmp_path / "archive")
    base_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000) - 3_600_000
    names = [f"site-{n // 100:02d}-line-01-conveyor-{n % 100:02d}" for n in range(machines)]
    batch: list[bytes] = []
    for seq in range(1, per_machine + 1):
        for name in names:
            if (name, seq) != (names[3], 500):
                batch.append(telemetry(name, seq, base_ms + seq * 1000))
            if len(batch) == 2_000:
                write_batches(archive, [batch])
                batch = []
    write_batches(archive, [batch])
    report = verify_archive(archive)
    assert report.unique == machines * per_machine - 1
    assert report.missing == 1 and report.duplicates == 0
    assert [s.gaps for s in report.streams if s.gaps] == [(SeqRange(500, 500),)]


def test_streams_are_keyed_by_site_and_machine(tmp_path: Path) -> None:
    """A message claiming another site for a machine id is its own stream, never a duplicate or a
    gap of the real one (the rule runner quarantines such messages; an archive from elsewhere may
    still hold them)."""
    archive = LocalArchive(tmp_path / "archive")
    real = [telemetry(MACHINE, seq, 1_000 * seq) for seq in range(1, 6)]
    claimed = orjson.loads(telemetry(MACHINE, 3, 3_000)) | {"site": "site-09"}
    write_batches(archive, [real, [orjson.dumps(claimed)]])
    report = verify_archive(archive)
    streams = {(stream.site, stream.machine): stream for stream in report.streams}
    assert set(streams) == {("site-00", MACHINE), ("site-09", MACHINE)}
    assert streams[("site-00", MACHINE)].unique == 5 and streams[("site-00", MACHINE)].duplicates == 0
    assert report.duplicates == 0


def test_quarantine_samples_read_the_excerpt(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path / "archive")
    entry = {
        "reason": "machine_mismatch",
        "detail": "machine site-00-line-01-conveyor-01 is not a conveyor of site-01/line-01",
        "topic": "factory/simulator/site-01/line-01/site-00-line-01-conveyor-01",
        "received_at": "2026-01-01T00:00:00.000Z",
        "qos": 1,
        "payload_bytes": 5000,
        "payload_sha256": "0" * 64,
        "payload_excerpt_base64": "eyJzaXRlIjogInNpdGUtMDEifQ==",
    }
    key = quarantine_key("machine_mismatch", "test", dt.datetime.now(dt.UTC))
    archive.put_object(key, encode_batch([orjson.dumps(entry)]))
    report = verify_archive(archive)
    assert report.quarantined == {"machine_mismatch": 1}
    assert report.quarantine_samples[0].payload_preview == '{"site": "site-01"}'


BOOT_1 = "0190b5a2-0000-7000-8000-000000000001"  # UUIDv7s: boot 2 is the later process
BOOT_2 = "0190b5a2-0001-7000-8000-000000000002"
BOOT_3 = "0190b5a2-0002-7000-8000-000000000003"


def booted(machine: str, seq: int, boot: str, kind: str = "telemetry") -> bytes:
    message = telemetry(machine, seq, 1_000 * seq) if kind == "telemetry" else ground_truth(machine, seq, 0)
    document = orjson.loads(message)
    document["boot"] = boot
    return orjson.dumps(document)


def test_a_crash_is_a_restart_with_its_possible_loss_never_duplicates(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    # Boot 1 published 1..20 and crashed having reserved up to 30; boot 2 resumed at 31 and
    # drained cleanly; boot 3 continued at 46 from its checkpoint (a clean handover, not a restart).
    # A second machine's boot 2 redelivers a message: one duplicate, no restart of its own.
    first = [booted(MACHINE, seq, BOOT_1) for seq in range(1, 21)]
    second = [booted(MACHINE, seq, BOOT_2) for seq in range(31, 46)]
    third = [booted(MACHINE, seq, BOOT_3) for seq in range(46, 50)]
    other = [booted(OTHER, seq, BOOT_2) for seq in (1, 2, 2, 3)]
    write_batches(archive, [third, second[5:], first, second[:5], other])
    report = verify_archive(archive)
    stream = next(s for s in report.streams if s.machine == MACHINE)
    assert (stream.duplicates, stream.missing, stream.boots, stream.runs) == (0, 0, 3, 2)
    assert stream.restarts == (Restart(BOOT_2, 20, 31, 10),)
    assert stream.possibly_lost == 10 and stream.unique == 20 + 15 + 4
    assert (report.restarts, report.possibly_lost, report.duplicates, report.missing) == (1, 10, 1, 0)
    assert report.ok
    assert any("possibly lost" in note for note in report.notes)


def test_a_gap_within_a_boot_is_missing_and_a_restart_from_below_is_unsized(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    # Boot 2 had no ledger: it counted again from 1, which is neither a duplicate nor a loss estimate.
    batch = [booted(MACHINE, seq, BOOT_1) for seq in (1, 2, 4)]
    batch += [booted(MACHINE, seq, BOOT_2) for seq in (1, 2, 3)]
    write_batches(archive, [batch])
    stream = verify_archive(archive).streams[0]
    assert stream.missing == 1 and stream.gaps == (SeqRange(3, 3, 0),)
    assert stream.restarts == (Restart(BOOT_2, 4, 1, None),)
    assert stream.duplicates == 0 and stream.possibly_lost == 0


def test_a_stream_first_seen_after_its_machine_restarted_is_not_missing_its_start(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    # The machine's telemetry shows boot 1; its first archived label event is from boot 2, above
    # what boot 1 reserved: not "events 1..4 missing" but a restart that may have lost them.
    batch = [booted(MACHINE, seq, BOOT_1) for seq in (1, 2)]
    batch += [booted(MACHINE, seq, BOOT_2) for seq in (9, 10)]
    batch += [booted(MACHINE, 5, BOOT_2, kind="ground_truth")]
    write_batches(archive, [batch])
    report = verify_archive(archive)
    labels = next(s for s in report.streams if s.kind == "ground_truth")
    assert labels.missing == 0 and labels.restarts == (Restart(BOOT_2, 0, 5, 4),)
    assert report.missing == 0 and report.possibly_lost == 6 + 4


def test_records_the_rule_runner_would_refuse_are_unreadable_here_too(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    good = telemetry(MACHINE, 1, 1_000)
    duplicate_key = good[:-1] + b',"seq":2}'
    write_batches(archive, [[good, duplicate_key, telemetry(MACHINE, 2, 2_000)]])
    report = verify_archive(archive)
    assert report.unreadable == 1 and "duplicate key 'seq'" in report.unreadable_samples[0]
