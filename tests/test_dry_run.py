"""Dry run: JSON lines of a simulated period, reproducible, ordered, complete, nothing sleeps."""

from __future__ import annotations

import io
import itertools
import math
import time

import orjson
import pytest

from factory_core.fleet import FaultSettings, FleetSettings, ScheduledFault
from factory_core.payload_contract import validate_payloads
from simulator.dry_run import DEFAULT_START_EPOCH_MS, generate, generate_merged, write
from simulator.model import build_machine_specs
from simulator.model.payload import iso_timestamp

FLEET = FleetSettings(
    seed=7,
    faults=FaultSettings(
        sensor_fault_per_hour=1.0,
        scheduled=[
            ScheduledFault(machine="site-00-line-02-air_compressor-01", fault="cooler_fouling", at_s=30.0)
        ],
    ),
)


def test_default_start_is_a_fixed_instant() -> None:
    assert iso_timestamp(DEFAULT_START_EPOCH_MS) == "2026-01-01T00:00:00.000Z"


def test_write_emits_json_lines_identical_across_runs() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    lines = write(first, FLEET, 0, 300.0)
    assert write(second, FLEET, 0, 300.0) == lines
    assert first.getvalue() == second.getvalue()
    data = first.getvalue()
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")
    payloads = data.split(b"\n")[:-1]
    assert len(payloads) == lines
    assert payloads == list(generate(FLEET, 0, 300.0))
    assert validate_payloads(payloads) == lines
    assert all(b"\n" not in payload for payload in payloads)


def test_every_sample_of_the_period_is_there_in_time_order() -> None:
    duration = 300.0
    payloads = list(generate(FLEET, 0, duration))
    validate_payloads(payloads)
    messages = [orjson.loads(payload) for payload in payloads]
    telemetry = [m for m in messages if m["kind"] == "telemetry"]
    specs = build_machine_specs(FLEET, 0)
    expected = {
        spec.machine_id: math.ceil(duration / FLEET.publish_interval_s - spec.phase) for spec in specs
    }
    counts: dict[str, int] = {}
    for message in telemetry:
        counts[message["machine"]] = counts.get(message["machine"], 0) + 1
    assert counts == expected
    stamps = [m["ts"] for m in messages]
    assert stamps == sorted(stamps)
    assert stamps[0] >= "2026-01-01T00:00:00.000Z"
    assert stamps[-1] < iso_timestamp(DEFAULT_START_EPOCH_MS + int(duration * 1000))
    # Within one timestamp, ground truth of a machine comes right before that machine's telemetry.
    for previous, current in itertools.pairwise(messages):
        if previous["kind"] == "ground_truth":
            assert current["machine"] == previous["machine"]
            assert current["ts"] == previous["ts"]


def test_rotation_order_equals_a_heap_merge() -> None:
    settings = FLEET.model_copy(update={"speed": 7.0, "publish_interval_s": 0.5})
    fast = list(generate(settings, 0, 600.0))
    assert fast == list(generate_merged(settings, 0, 600.0, DEFAULT_START_EPOCH_MS))
    validate_payloads(fast)


def test_start_time_moves_timestamps_and_the_season() -> None:
    """The start only moves timestamps, and the hall temperature with the date (the model's season)."""
    healthy = FleetSettings(seed=7, faults=FaultSettings(sensor_fault_per_hour=1.0))
    july_ms = DEFAULT_START_EPOCH_MS + 86_400_000 * 181 + 123
    january = [orjson.loads(p) for p in generate(healthy, 0, 120.0)]
    july_payloads = list(generate(healthy, 0, 120.0, july_ms))
    validate_payloads(july_payloads)
    july = [orjson.loads(p) for p in july_payloads]
    assert len(january) == len(july)
    times = {key: None for key in ("ts", "at", "onset", "end", "detectable_from")}
    warmer = []
    for a, b in zip(january, july, strict=True):
        assert a["ts"] != b["ts"]
        if a["kind"] == "telemetry":
            warmer.append(b["signals"]["temperature"] - a["signals"]["temperature"])
            a["signals"]["temperature"] = b["signals"]["temperature"] = None
        assert {**a, **times} == {**b, **times}
    assert july[0]["ts"].startswith("2026-07-01T")
    assert sum(warmer) / len(warmer) > 4.0  # the hall is ~7.5 °C warmer in July than on New Year's Day


def test_speed_compresses_simulated_time() -> None:
    """--speed 60: one sample per machine per publish interval, each one simulated minute apart."""
    settings = FleetSettings(seed=7, lines_per_site=1, speed=60.0)
    payloads = list(generate(settings, 0, 3_600.0))
    validate_payloads(payloads)
    telemetry = [orjson.loads(p) for p in payloads if b'"signals"' in p]
    per_machine = len(telemetry) / settings.machines_per_site
    assert 59 <= per_machine <= 60
    first_mill = [m["ts"] for m in telemetry if m["machine"] == "site-00-line-01-cnc_mill-01"][:2]
    assert first_mill[1][11:16] == f"00:{int(first_mill[0][14:16]) + 1:02d}"


def test_dry_run_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(_seconds: float) -> None:
        raise AssertionError("dry run slept")

    monkeypatch.setattr(time, "sleep", no_sleep)
    out = io.BytesIO()
    lines = write(out, FleetSettings(seed=1, lines_per_site=1, speed=3600.0), 0, 24 * 3_600.0)
    assert lines >= 24 * 5
    validate_payloads(out.getvalue().split(b"\n")[:-1])


def test_zero_duration_writes_nothing() -> None:
    out = io.BytesIO()
    assert write(out, FLEET, 0, 0.0) == 0
    assert out.getvalue() == b""
