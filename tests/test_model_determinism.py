"""Determinism of the factory model: seeds, per-machine streams, no hidden global state."""

from __future__ import annotations

import random
import re
import time

import pytest

from factory_core.fleet import FaultSettings, FleetSettings, MachineType, ScheduledFault
from factory_core.payload_contract import validate_payloads
from simulator.dry_run import collect, generate
from simulator.model import SiteModel, build_machine_specs
from simulator.model.site import machine_stream

# The demo timescale and high fault rates, so that faults, repairs and sensor glitches all happen
# inside short runs.
BUSY_FAULTS = FaultSettings(
    timescale="demo",
    failure_rate_scale=5.0,
    sensor_fault_per_hour=2.0,
    scheduled=[
        ScheduledFault(
            machine="site-00-line-01-cnc_mill-01", fault="coolant_failure", at_s=120.0, severity=0.9
        )
    ],
)


def fleet(**changes: object) -> FleetSettings:
    base: dict[str, object] = {"seed": 7, "speed": 10.0, "faults": BUSY_FAULTS}
    base.update(changes)
    return FleetSettings.model_validate(base)


def test_same_seed_gives_identical_bytes() -> None:
    first = list(generate(fleet(), 0, 1_800.0))
    second = list(generate(fleet(), 0, 1_800.0))
    assert validate_payloads(first) == len(first) > 1_800
    assert first == second


def test_different_seed_gives_different_data() -> None:
    streams_a = collect(fleet(seed=7), 0, 900.0)
    streams_b = collect(fleet(seed=8), 0, 900.0)
    assert streams_a.keys() == streams_b.keys()
    for machine in streams_a:
        assert streams_a[machine].payloads != streams_b[machine].payloads, machine


@pytest.mark.parametrize(
    "bigger",
    [
        {
            "machines_per_line": {
                MachineType.CNC_MILL: 3,
                MachineType.HYDRAULIC_PRESS: 1,
                MachineType.CONVEYOR: 1,
                MachineType.AIR_COMPRESSOR: 1,
            }
        },
        {"lines_per_site": 3},
        {
            "machines_per_line": {
                MachineType.CNC_MILL: 2,
                MachineType.HYDRAULIC_PRESS: 2,
                MachineType.CONVEYOR: 2,
                MachineType.AIR_COMPRESSOR: 1,
            },
            "lines_per_site": 3,
        },
    ],
    ids=["one-more-mill", "one-more-line", "more-of-everything"],
)
def test_adding_machines_changes_no_other_machine(bigger: dict[str, object]) -> None:
    # The larger run is validated; the smaller one must equal a subset of it byte for byte.
    small = collect(fleet(), 0, 1_200.0, validate=False)
    large = collect(fleet(**bigger), 0, 1_200.0)
    assert len(large) > len(small)
    for machine, stream in small.items():
        assert large[machine].payloads == stream.payloads, machine


def test_sampling_order_does_not_matter() -> None:
    """The publisher may sample machines in any interleaving; each machine's bytes stay the same."""
    settings = fleet()
    in_order = SiteModel(settings, 0, 0)
    reversed_order = SiteModel(settings, 0, 0)
    count = len(in_order.machines)
    forward: dict[int, list[bytes]] = {index: [] for index in range(count)}
    backward: dict[int, list[bytes]] = {index: [] for index in range(count)}
    for _ in range(200):
        for index in range(count):
            forward[index] += [message.payload for message in in_order.sample(index)]
    for index in reversed(range(count)):  # whole machine first, then the next one
        for _ in range(200):
            backward[index] += [message.payload for message in reversed_order.sample(index)]
    assert forward == backward
    validate_payloads(payload for payloads in forward.values() for payload in payloads)


def test_view_does_not_change_the_stream() -> None:
    """Metrics look at machines between samples; looking must not consume randomness."""
    settings = fleet()
    watched, unwatched = SiteModel(settings, 0, 0), SiteModel(settings, 0, 0)
    watched_bytes, unwatched_bytes = [], []
    for _ in range(300):
        for index in range(len(watched.machines)):
            watched.view(index)
            watched_bytes += [m.payload for m in watched.sample(index)]
            watched.view(index)
            unwatched_bytes += [m.payload for m in unwatched.sample(index)]
    assert watched_bytes == unwatched_bytes


def test_model_uses_no_global_random_and_no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def wall_clock_used() -> float:
        raise AssertionError("the model read the wall clock")

    for name in ("time", "time_ns", "monotonic", "perf_counter"):
        monkeypatch.setattr(time, name, wall_clock_used)
    random.seed(12345)
    before = random.getstate()
    payloads = list(generate(fleet(), 0, 600.0))
    assert random.getstate() == before
    monkeypatch.undo()
    validate_payloads(payloads)


def test_machine_ids_topics_and_phases() -> None:
    settings = FleetSettings(seed=7, lines_per_site=2)
    specs = build_machine_specs(settings, 3)
    assert [spec.index for spec in specs] == list(range(settings.machines_per_site))
    ids = [spec.machine_id for spec in specs]
    assert len(set(ids)) == len(ids)
    assert ids[:5] == [
        "site-03-line-01-cnc_mill-01",
        "site-03-line-01-cnc_mill-02",
        "site-03-line-01-hydraulic_press-01",
        "site-03-line-01-conveyor-01",
        "site-03-line-01-air_compressor-01",
    ]
    for spec in specs:
        assert re.fullmatch(rf"site-03-{spec.line}-{spec.type.value}-\d\d", spec.machine_id)
        assert spec.telemetry_topic == f"factory/simulator/site-03/{spec.line}/{spec.machine_id}"
        assert (
            spec.ground_truth_topic == f"factory/simulator/ground-truth/site-03/{spec.line}/{spec.machine_id}"
        )
        assert 0.0 <= spec.phase < 1.0
        # The phase comes from the machine's own id and the seed only.
        assert spec.phase == machine_stream(7, spec.machine_id).phase
    # Phases spread the publishes over the interval instead of bunching them.
    phases = sorted(spec.phase for spec in specs)
    assert phases[-1] - phases[0] > 0.5


def test_sample_times_follow_phase_and_speed() -> None:
    settings = FleetSettings(seed=1, publish_interval_s=2.0, speed=30.0)
    model = SiteModel(settings, 0, 0)
    assert model.step_s == 60.0
    for index, spec in enumerate(model.machines):
        for n in range(3):
            assert model.next_sample_time_s(index) == pytest.approx((n + spec.phase) * 60.0)
            model.sample(index)
            assert model.sim_time_s(index) == pytest.approx((n + spec.phase) * 60.0)


def test_pickled_model_continues_byte_identically() -> None:
    """A checkpointed model (the simulator pickles it on drain) resumes exactly where it stopped."""
    import pickle

    settings = fleet()
    straight, interrupted = SiteModel(settings, 0, 0), SiteModel(settings, 0, 0)
    count = len(straight.machines)
    straight_bytes = [m.payload for _ in range(400) for i in range(count) for m in straight.sample(i)]
    first_half = [m.payload for _ in range(200) for i in range(count) for m in interrupted.sample(i)]
    resumed = pickle.loads(pickle.dumps(interrupted, protocol=pickle.HIGHEST_PROTOCOL))
    second_half = [m.payload for _ in range(200) for i in range(count) for m in resumed.sample(i)]
    assert first_half + second_half == straight_bytes
    validate_payloads(straight_bytes)


def test_cached_encoder_writes_the_bytes_of_the_reference_encoder() -> None:
    """`TelemetryEncoder` reuses one dict per machine; it must write what `encode_telemetry` does."""
    from simulator.model.payload import TelemetryEncoder, encode_telemetry

    header = {
        "machine": "site-00-line-01-air_compressor-01",
        "site": "site-00",
        "line": "line-01",
        "type": "air_compressor",
    }
    encoder = TelemetryEncoder(header, ["temperature", "vibration_rms", "speed", "power", "pressure"])
    rng = random.Random(5)
    for seq in range(1, 200):
        readings: dict[str, float | None] = {
            "temperature": round(rng.uniform(-5, 120), 1),
            "vibration_rms": None if seq % 7 == 0 else round(rng.uniform(0, 30), 3),
            "speed": round(rng.uniform(0, 3000), 0),
            "power": round(rng.uniform(0, 90), 2),
            "pressure": None if seq % 11 == 0 else round(rng.uniform(0, 250), 2),
        }
        state = rng.choice(["running", "idle", "fault"])
        args = ("2026-01-01T00:00:00.000Z", seq, state, readings, seq * 3, seq // 10)
        assert encoder.encode(*args) == encode_telemetry(header, *args)
    with pytest.raises(ValueError, match="do not match"):
        encoder.encode("2026-01-01T00:00:00.000Z", 1, "idle", {"temperature": 1.0}, 0, 0)


def test_timestamps_across_day_and_year_boundaries() -> None:
    from datetime import UTC, datetime, timedelta

    from simulator.model.payload import iso_timestamp

    start = datetime(2025, 12, 31, 23, 59, 58, tzinfo=UTC)
    for step_ms in range(0, 5_000, 7):
        moment = start + timedelta(milliseconds=step_ms)
        expected = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        assert iso_timestamp(int(moment.timestamp() * 1000)) == expected
