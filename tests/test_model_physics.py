"""Physics of the four machine types: plausible ranges, thermal inertia, wear and failure modes."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from factory_core.fleet import FaultSettings, FleetSettings, MachineType, ScheduledFault
from factory_core.payload_contract import validate_payloads
from simulator.model import MachineView, SiteModel
from simulator.model.profiles import PROFILES

NO_RANDOM_FAULTS = {
    "bearing_wear_per_hour": 0.0,
    "overheating_per_hour": 0.0,
    "tool_wear_per_hour": 0.0,
    "sensor_fault_per_hour": 0.0,
}
ONE_OF_EACH = {machine_type: 1 for machine_type in MachineType}
# Long runs take big steps: every payload is schema-validated, and that is what costs time.
LONG_STEP_S = 120.0
LONG_RUN_HOURS = 48


@dataclass
class Sample:
    time_s: float  # simulated
    telemetry: dict[str, Any]
    events: list[dict[str, Any]]  # ground truth emitted with this sample
    view: MachineView

    @property
    def state(self) -> str:
        return self.telemetry["state"]

    def signal(self, name: str) -> float | None:
        return self.telemetry["signals"][name][0]


def run(settings: FleetSettings, duration_s: float) -> list[list[Sample]]:
    """Sample every machine until `duration_s`; every payload is schema-validated."""
    model = SiteModel(settings, 0, 0)
    samples: list[list[Sample]] = [[] for _ in model.machines]
    payloads: list[bytes] = []
    for index in range(len(model.machines)):
        while model.next_sample_time_s(index) < duration_s:
            messages = model.sample(index)
            payloads += [message.payload for message in messages]
            decoded = [orjson.loads(message.payload) for message in messages]
            samples[index].append(
                Sample(model.sim_time_s(index), decoded[-1], decoded[:-1], model.view(index))
            )
    validate_payloads(payloads)
    return samples


def faults(**settings: Any) -> FaultSettings:
    return FaultSettings.model_validate({**NO_RANDOM_FAULTS, **settings})


def single_machine(machine_type: MachineType, fault_settings: FaultSettings, **fleet: Any) -> FleetSettings:
    return FleetSettings.model_validate(
        {
            "seed": 11,
            "lines_per_site": 1,
            "machines_per_line": {machine_type: 1},
            "faults": fault_settings,
            **fleet,
        }
    )


def machine_id(machine_type: MachineType) -> str:
    return f"site-00-line-01-{machine_type.value}-01"


def sensor_faulted(samples: list[Sample]) -> list[set[str]]:
    """Per sample, the signals a sensor fault was active on (from ground truth)."""
    active: dict[int, str] = {}
    result = []
    for sample in samples:
        for event in sample.events:
            if event["fault_class"] == "sensor" and event["event"] == "fault_start":
                active[event["fault_id"]] = event["signal"]
        result.append(set(active.values()))
        for event in sample.events:
            if event["fault_class"] == "sensor" and event["event"] == "fault_end":
                active.pop(event["fault_id"], None)
        # A fault that ends with the next step was still active during this one.
        result[-1] |= set(active.values())
    return result


@pytest.fixture(scope="module")
def long_run() -> list[list[Sample]]:
    """Two simulated days of one machine of each type with failure modes on and no sensor faults."""
    settings = FleetSettings(
        seed=5,
        lines_per_site=1,
        machines_per_line=ONE_OF_EACH,
        speed=LONG_STEP_S,
        faults=faults(
            bearing_wear_per_hour=0.05,
            overheating_per_hour=0.05,
            tool_wear_per_hour=0.05,
            mean_repair_s=1_800.0,
        ),
    )
    return run(settings, LONG_RUN_HOURS * 3_600.0)


def test_every_type_stays_in_physical_bounds(long_run: list[list[Sample]]) -> None:
    for samples in long_run:
        spec = samples[0].view.spec
        profile = PROFILES[spec.type]
        assert len(samples) == LONG_RUN_HOURS * 3_600 / LONG_STEP_S
        assert {sample.state for sample in samples} >= {"running", "idle"}, spec.machine_id
        for position, sample in enumerate(samples):
            temperature = sample.signal("temperature")
            vibration = sample.signal("vibration_rms")
            speed = sample.signal("speed")
            power = sample.signal("power")
            assert temperature is not None and vibration is not None
            assert speed is not None and power is not None
            assert 19.0 <= temperature <= 135.0
            assert vibration >= 0.0
            assert power >= 0.0
            bearing = "bearing_wear" in sample.view.active_faults
            if sample.state == "running":
                nominal = profile.nominal_speed_rpm
                assert (
                    nominal * (1 - profile.speed_spread) * 0.98
                    <= speed
                    <= nominal * (1 + profile.speed_spread) * 1.02
                )
                # ISO 10816: a healthy machine runs in zones A/B; only a bearing fault reaches D.
                assert vibration <= (4.5 if not bearing else 15.0), (spec.machine_id, sample.telemetry)
                assert power >= profile.idle_power_kw
            else:
                assert speed == 0.0, sample.telemetry
                assert vibration <= 0.6
                assert power <= max(profile.setup_power_kw, profile.idle_power_kw) * 1.5
            if spec.type is MachineType.AIR_COMPRESSOR:
                pressure = sample.signal("pressure")
                assert pressure is not None and 0.0 <= pressure <= 8.1
                settled = all(s.state == "running" for s in samples[max(0, position - 3) : position + 1])
                if settled:  # after a restart the receiver needs a few minutes to fill
                    assert pressure >= 6.2  # cut-in is at 6.3-7.0 bar
            if spec.type is MachineType.HYDRAULIC_PRESS:
                pressure = sample.signal("pressure")
                assert pressure is not None
                assert (15.0 <= pressure <= 250.0) if sample.state == "running" else (pressure <= 3.0)
            if "cycle_time" in profile.signals:
                cycle_time = sample.signal("cycle_time")
                assert cycle_time is not None
                assert sample.view.ideal_cycle_time_s <= cycle_time <= sample.view.ideal_cycle_time_s * 1.5


def test_counters_are_monotonic_and_grow_only_while_running(long_run: list[list[Sample]]) -> None:
    for samples in long_run:
        spec = samples[0].view.spec
        profile = PROFILES[spec.type]
        previous = samples[0]
        for sample in samples[1:]:
            good, rejected = sample.telemetry["parts"]["good"], sample.telemetry["parts"]["rejected"]
            old_good, old_rejected = (
                previous.telemetry["parts"]["good"],
                previous.telemetry["parts"]["rejected"],
            )
            assert good >= old_good and rejected >= old_rejected
            made = good + rejected - old_good - old_rejected
            ran = (
                previous.state == "running"
                or sample.state == "running"
                or any(
                    event["event"] == "state_change" and event["to_state"] == "running"
                    for event in sample.events
                )
            )
            if not ran:
                assert made == 0, (spec.machine_id, sample.telemetry)
            # One step can finish at most a step's worth of ideal cycles (plus one begun earlier).
            if profile.produces_parts:
                assert made <= LONG_STEP_S / sample.view.ideal_cycle_time_s + 1
            else:
                assert good == rejected == 0
            previous = sample
        last = samples[-1].view
        assert sum(last.state_seconds.values()) == pytest.approx(samples[-1].time_s)
        assert samples[-1].time_s == pytest.approx((len(samples) - 1 + last.spec.phase) * LONG_STEP_S)
        if profile.produces_parts:
            assert last.parts_good > 100


def test_oee_components_are_plausible(long_run: list[list[Sample]]) -> None:
    for samples in long_run:
        view = samples[-1].view
        if not PROFILES[view.spec.type].produces_parts:
            assert view.ideal_cycle_time_s == 0.0
            continue
        total = sum(view.state_seconds.values())
        availability = view.state_seconds["running"] / total
        parts = view.parts_good + view.parts_rejected
        performance = parts * view.ideal_cycle_time_s / view.state_seconds["running"]
        quality = view.parts_good / parts
        assert 0.4 <= availability <= 0.98, view.state_seconds
        assert 0.8 <= performance <= 1.0
        assert 0.6 <= quality <= 1.0


def test_temperature_has_thermal_inertia(long_run: list[list[Sample]]) -> None:
    """After a machine stops, temperature decays over several samples instead of jumping."""
    checked = 0
    for samples in long_run:
        tau = PROFILES[samples[0].view.spec.type].thermal_time_constant_s
        for before, after in itertools.pairwise(samples):
            if (
                before.state == "running"
                and after.state in ("idle", "setup")
                and not after.view.active_faults
            ):
                drop = before.signal("temperature") - after.signal("temperature")  # type: ignore[operator]
                rise = PROFILES[before.view.spec.type].temperature_rise_running_c
                # At most what a first-order lag allows in one step (plus noise), never the full step.
                assert drop <= rise * (1 - math.exp(-LONG_STEP_S / tau)) + 3.0
                assert drop < rise
                checked += 1
    assert checked >= 5


def test_compressor_cycles_between_load_and_unload() -> None:
    settings = single_machine(MachineType.AIR_COMPRESSOR, faults(), speed=5.0)  # a load cycle is ~1 min
    everything = run(settings, 4 * 3_600.0)[0]
    # Settled: running for the last 5 minutes (after a restart the receiver first has to fill up).
    samples = [
        s for i, s in enumerate(everything) if all(x.state == "running" for x in everything[i - 60 : i + 1])
    ]
    assert len(samples) > 500
    pressures = [s.signal("pressure") for s in samples]
    powers = [s.signal("power") for s in samples]
    assert max(pressures) - min(pressures) >= 0.8  # fills to cut-out, drains to cut-in
    assert max(pressures) - min(pressures) <= 1.2
    loaded = [p for p in powers if p > 20.0]
    unloaded = [p for p in powers if p <= 20.0]
    assert len(loaded) > 100 and len(unloaded) > 100
    assert statistics.median(unloaded) < 0.45 * statistics.median(loaded)
    # Discharge temperature runs high but below an 85 °C alert threshold when healthy.
    assert 45.0 <= statistics.median(s.signal("temperature") for s in samples) <= 80.0


def test_press_pressure_follows_the_stroke() -> None:
    # 7 s steps against a ~12 s stroke: samples land on every phase of the stroke.
    settings = single_machine(MachineType.HYDRAULIC_PRESS, faults(), speed=7.0)
    samples = [s for s in run(settings, 3 * 3_600.0)[0] if s.state == "running"]
    pressures = [s.signal("pressure") for s in samples]
    assert max(pressures) >= 170.0
    assert min(pressures) <= 30.0
    high = [s.signal("power") for s in samples if s.signal("pressure") > 150]
    low = [s.signal("power") for s in samples if s.signal("pressure") < 40]
    assert statistics.mean(high) > 1.5 * statistics.mean(low)


@pytest.mark.parametrize("machine_type", list(MachineType))
def test_overheating_exceeds_85_celsius_within_minutes(machine_type: MachineType) -> None:
    onset = 600.0
    settings = single_machine(
        machine_type,
        faults(
            scheduled=[
                ScheduledFault(
                    machine=machine_id(machine_type), fault="overheating", at_s=onset, severity=0.9
                )
            ]
        ),
    )
    samples = run(settings, onset + 900.0)[0]
    before = [s.signal("temperature") for s in samples if s.time_s < onset]
    assert max(before) < 80.0  # healthy machines stay below the alert threshold
    hot = [s for s in samples if s.signal("temperature") > 85.0]
    assert hot, "temperature never exceeded 85 °C"
    assert hot[0].time_s - onset <= 6 * 60
    # Ground truth: the fault start is labelled at its onset; a trip, if any, comes after 85 °C.
    starts = [e for s in samples for e in s.events if e["event"] == "fault_start"]
    assert [(e["fault"], e["onset"]) for e in starts] == [("overheating", "1970-01-01T00:10:00.000Z")]
    trips = [(s.time_s, e) for s in samples for e in s.events if e["to_state"] == "fault"]
    for when, trip in trips:
        assert trip["reason"] == "overtemperature_trip" and trip["fault"] == "overheating"
        assert when > hot[0].time_s


def test_mild_overheating_runs_hot_without_tripping() -> None:
    settings = single_machine(
        MachineType.CNC_MILL,
        faults(
            scheduled=[
                ScheduledFault(
                    machine=machine_id(MachineType.CNC_MILL), fault="overheating", at_s=0.0, severity=0.2
                )
            ]
        ),
        speed=20.0,
    )
    samples = run(settings, 3 * 3_600.0)[0]
    assert not any(s.state == "fault" for s in samples)
    running = [s.signal("temperature") for s in samples if s.state == "running"]
    healthy = run(single_machine(MachineType.CNC_MILL, faults(), speed=20.0), 3 * 3_600.0)[0]
    healthy_running = [s.signal("temperature") for s in healthy if s.state == "running"]
    assert statistics.median(running) > statistics.median(healthy_running) + 5.0


@pytest.mark.parametrize("machine_type", list(MachineType))
def test_bearing_wear_raises_vibration_over_hours(machine_type: MachineType) -> None:
    onset = 1_800.0
    settings = single_machine(
        machine_type,
        faults(
            scheduled=[
                ScheduledFault(
                    machine=machine_id(machine_type), fault="bearing_wear", at_s=onset, severity=0.8
                )
            ]
        ),
        speed=20.0,
    )
    samples = run(settings, 8 * 3_600.0)[0]
    # Look at running samples until the bearing is repaired (it trips once fully developed).
    repaired_at = next(
        (
            i
            for i, s in enumerate(samples)
            for e in s.events
            if e["event"] == "fault_end" and e["fault"] == "bearing_wear"
        ),
        len(samples),
    )
    running = [(s.time_s, s.signal("vibration_rms")) for s in samples[:repaired_at] if s.state == "running"]
    baseline = [v for t, v in running if t < onset]
    developed = [v for t, v in running if t > onset + 1.5 * 3_600.0]
    assert baseline and len(developed) > 20
    assert statistics.mean(developed) > 2.0 * statistics.mean(baseline)
    # A trend, not a jump: vibration one hour in sits between the baseline and the developed level.
    middle = [v for t, v in running if onset + 0.5 * 3_600.0 < t < onset + 1.0 * 3_600.0]
    if middle:
        assert statistics.mean(baseline) < statistics.mean(middle) < statistics.mean(developed)
    # Slope of running vibration against time after onset is positive.
    after = [(t, v) for t, v in running if t >= onset]
    mean_t = statistics.mean(t for t, _ in after)
    mean_v = statistics.mean(v for _, v in after)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in after)
    assert slope > 0


def test_tool_wear_raises_reject_rate() -> None:
    mills = {MachineType.CNC_MILL: 4}
    worn_ids = [f"site-00-line-01-cnc_mill-{n:02d}" for n in range(1, 5)]
    # Severity below the breakage threshold: the tool stays in and keeps making bad parts.
    scheduled = [ScheduledFault(machine=m, fault="tool_wear", at_s=0.0, severity=0.45) for m in worn_ids]
    base = {"seed": 3, "lines_per_site": 1, "machines_per_line": mills, "speed": 60.0}
    worn = run(FleetSettings.model_validate({**base, "faults": faults(scheduled=scheduled)}), 8 * 3_600.0)
    sharp = run(FleetSettings.model_validate({**base, "faults": faults()}), 8 * 3_600.0)

    def reject_rate(runs: list[list[Sample]]) -> float:
        good = sum(samples[-1].view.parts_good for samples in runs)
        rejected = sum(samples[-1].view.parts_rejected for samples in runs)
        assert good + rejected > 500
        return rejected / (good + rejected)

    assert reject_rate(sharp) < 0.03
    assert reject_rate(worn) > 3 * reject_rate(sharp)
    assert reject_rate(worn) > 0.06


def test_severe_tool_wear_ends_in_breakage_then_maintenance_restores_health() -> None:
    settings = single_machine(
        MachineType.CNC_MILL,
        faults(
            scheduled=[
                ScheduledFault(
                    machine=machine_id(MachineType.CNC_MILL), fault="tool_wear", at_s=0.0, severity=1.0
                )
            ],
            mean_repair_s=1_200.0,
        ),
        speed=20.0,
    )
    samples = run(settings, 6 * 3_600.0)[0]
    events = [e for s in samples for e in s.events]
    kinds = [(e["event"], e["to_state"] or e["fault"], e["reason"]) for e in events]
    assert ("state_change", "fault", "tool_breakage") in kinds
    breakage = kinds.index(("state_change", "fault", "tool_breakage"))
    assert ("state_change", "maintenance", "repair_started") in kinds[breakage:]
    assert ("fault_end", "tool_wear", "repaired") in kinds[breakage:]
    lowest = min(s.view.health for s in samples)
    assert lowest < 0.6
    assert samples[-1].view.health >= 0.9
    assert "tool_wear" not in samples[-1].view.active_faults


def test_health_degrades_with_running_hours_and_maintenance_restores_it() -> None:
    decay_per_hour = 0.02
    settings = single_machine(MachineType.CONVEYOR, faults(health_decay_per_hour=decay_per_hour), speed=120.0)
    samples = run(settings, 36 * 3_600.0)[0]
    healths = [s.view.health for s in samples]
    assert all(0.0 <= h <= 1.0 for h in healths)
    repairs = [i for i, s in enumerate(samples) for e in s.events if e["reason"] == "repaired"]
    preventive = [e for s in samples for e in s.events if e["reason"] == "preventive_maintenance"]
    assert repairs and preventive, "a worn machine should get planned maintenance"
    first_repair = repairs[0]
    worn = samples[:first_repair]
    assert all(b.view.health <= a.view.health + 1e-12 for a, b in itertools.pairwise(worn))
    # Wear accrues fully while running and at a quarter rate while idle or in setup.
    seconds = worn[-1].view.state_seconds
    loaded_hours = (seconds["running"] + 0.25 * (seconds["idle"] + seconds["setup"])) / 3_600.0
    assert worn[0].view.health - worn[-1].view.health == pytest.approx(
        decay_per_hour * loaded_hours, rel=0.05
    )
    assert worn[-1].view.health < 0.6
    assert samples[first_repair].view.health >= 0.95


@pytest.mark.parametrize("kind", ["stuck", "drift", "spike", "noise_burst", "dropout"])
def test_sensor_faults_corrupt_one_reading(kind: str) -> None:
    machine_type = MachineType.HYDRAULIC_PRESS
    duration = 0 if kind == "spike" else 600.0
    scheduled = ScheduledFault(
        machine=machine_id(machine_type), fault=kind, at_s=600.0, severity=1.0, duration_s=duration or None
    )
    faulty = run(single_machine(machine_type, faults(scheduled=[scheduled]), speed=2.0), 1_500.0)[0]
    clean = run(single_machine(machine_type, faults(), speed=2.0), 1_500.0)[0]
    starts = [e for s in faulty for e in s.events if e["event"] == "fault_start"]
    assert len(starts) == 1 and starts[0]["fault"] == kind and starts[0]["fault_class"] == "sensor"
    signal = starts[0]["signal"]
    ends = [e for s in faulty for e in s.events if e["event"] == "fault_end"]
    assert len(ends) == 1 and ends[0]["fault_id"] == starts[0]["fault_id"]
    window = [i for i, s in enumerate(faulty) if s.view.active_faults]
    assert window
    # The machine itself is unaffected: same states and counters as without the fault.
    assert [(s.state, s.telemetry["parts"]) for s in faulty] == [
        (s.state, s.telemetry["parts"]) for s in clean
    ]
    reported = [faulty[i].signal(signal) for i in window]
    true = [clean[i].signal(signal) for i in window]
    # Every other reading, and this one outside the window, is exactly what it would have been.
    for i, (faulty_sample, clean_sample) in enumerate(zip(faulty, clean, strict=True)):
        for name in clean_sample.telemetry["signals"]:
            if name != signal or i not in window:
                assert faulty_sample.signal(name) == clean_sample.signal(name), (i, name)
    if kind == "dropout":
        assert all(value is None for value in reported)
    elif kind == "stuck":
        assert len(set(reported)) == 1
    elif kind == "drift":
        deviation = [abs(r - t) for r, t in zip(reported, true, strict=True)]
        assert deviation[-1] > deviation[0]
        assert deviation[-1] > 0
    elif kind == "spike":
        assert len(window) == 1
        assert reported[0] != true[0]
    else:
        assert any(abs(r - t) > 0 for r, t in zip(reported, true, strict=True))


def test_random_sensor_faults_stay_in_sensor_range() -> None:
    settings = FleetSettings(
        seed=9,
        lines_per_site=1,
        machines_per_line=ONE_OF_EACH,
        speed=60.0,
        faults=faults(sensor_fault_per_hour=3.0),
    )
    runs = run(settings, 12 * 3_600.0)
    kinds_seen = set()
    dropped = 0
    for samples in runs:
        profile = PROFILES[samples[0].view.spec.type]
        faulted = sensor_faulted(samples)
        for sample, corrupted in zip(samples, faulted, strict=True):
            kinds_seen |= {e["fault"] for e in sample.events if e["fault_class"] == "sensor"}
            for name, (value, _unit) in sample.telemetry["signals"].items():
                if value is None:
                    assert name in corrupted, (name, sample.telemetry)
                    dropped += 1
                    continue
                bounds = profile.ranges[name]
                assert bounds.low <= value <= bounds.high
    assert kinds_seen == {"stuck", "drift", "spike", "noise_burst", "dropout"}
    assert dropped > 0
