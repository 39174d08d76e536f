"""Physics of the four machine types: plausible ranges, thermal inertia, load, jobs, hall and noise."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from factory_core.fleet import FaultSettings, FleetSettings, MachineType, ScheduledFault
from factory_core.payload_contract import SIGNALS, validate_payloads
from simulator.model import MachineView, SiteModel
from simulator.model.ambient import site_ambient
from simulator.model.profiles import PROFILES

NO_RANDOM_FAULTS = {"failure_rate_scale": 0.0, "sensor_fault_per_hour": 0.0}
ONE_OF_EACH = {machine_type: 1 for machine_type in MachineType}
JANUARY_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
JULY_MS = int(datetime(2026, 7, 20, tzinfo=UTC).timestamp() * 1000)
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

    def signal(self, name: str) -> float:
        value = self.telemetry["signals"][name]
        assert value is not None
        return value


def run(settings: FleetSettings, duration_s: float, start_ms: int = JANUARY_MS) -> list[list[Sample]]:
    """Sample every machine until `duration_s`; every payload is schema-validated."""
    model = SiteModel(settings, 0, start_ms)
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


@pytest.fixture(scope="module")
def long_run() -> list[list[Sample]]:
    """Two simulated days in July of one machine of each type, healthy, no sensor faults."""
    settings = FleetSettings(
        seed=5, lines_per_site=1, machines_per_line=ONE_OF_EACH, speed=LONG_STEP_S, faults=faults()
    )
    return run(settings, LONG_RUN_HOURS * 3_600.0, JULY_MS)


def test_every_type_stays_in_physical_bounds(long_run: list[list[Sample]]) -> None:
    for samples in long_run:
        spec = samples[0].view.spec
        profile = PROFILES[spec.type]
        assert len(samples) == LONG_RUN_HOURS * 3_600 / LONG_STEP_S
        assert {sample.state for sample in samples} >= {"running", "idle"}, spec.machine_id
        for position, sample in enumerate(samples):
            temperature, vibration = sample.signal("temperature"), sample.signal("vibration_rms")
            speed, power = sample.signal("speed"), sample.signal("power")
            # Healthy machines stay below their alarm temperature even on a July afternoon.
            assert 15.0 <= temperature < profile.alarm_temperature_c, (spec.machine_id, sample.telemetry)
            assert vibration >= 0.0 and power >= 0.0
            if sample.state == "running":
                nominal = profile.nominal_speed_rpm  # mills: spindle speed; motors: synchronous speed
                low = (
                    nominal
                    * min(profile.job_speed_range)
                    * (1 - profile.speed_spread)
                    * (1 - 1.6 * profile.rated_slip)
                )
                high = nominal * max(profile.job_speed_range) * (1 + profile.speed_spread)
                assert low * 0.995 <= speed <= high, (spec.machine_id, speed)
                # ISO 10816: a healthy machine runs in zones A/B.
                assert vibration < profile.zone_bc_mm_s, (spec.machine_id, sample.telemetry)
                assert power >= profile.idle_power_kw
            else:
                assert speed == 0.0, sample.telemetry
                assert vibration <= 0.6
                assert power <= max(profile.setup_power_kw, profile.idle_power_kw) * 1.5
            if spec.type is MachineType.AIR_COMPRESSOR:
                pressure = sample.signal("pressure")
                assert 0.0 <= pressure <= 8.1
                settled = all(s.state == "running" for s in samples[max(0, position - 3) : position + 1])
                if settled:  # after a restart the receiver needs a few minutes to fill
                    assert pressure >= 6.2  # cut-in is at 6.3-7.0 bar
                warm = all(s.state == "running" for s in samples[max(0, position - 8) : position + 1])
                if warm:  # air-end discharge runs 75-95 °C in a warm hall, once warmed up
                    assert 70.0 <= temperature <= 100.0, temperature
            if spec.type is MachineType.HYDRAULIC_PRESS:
                pressure = sample.signal("pressure")
                assert (15.0 <= pressure <= 250.0) if sample.state == "running" else (pressure <= 3.0)
            if "cycle_time" in profile.signals:
                cycle_time = sample.signal("cycle_time")
                assert sample.view.ideal_cycle_time_s <= cycle_time <= sample.view.ideal_cycle_time_s * 1.6


def test_counters_are_monotonic_and_grow_only_while_running(long_run: list[list[Sample]]) -> None:
    for samples in long_run:
        spec = samples[0].view.spec
        profile = PROFILES[spec.type]
        for previous, sample in itertools.pairwise(samples):
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
            if profile.produces_parts:
                assert made <= LONG_STEP_S / sample.view.ideal_cycle_time_s + 1
            else:
                assert good == rejected == 0
        last = samples[-1].view
        assert sum(last.state_seconds.values()) == pytest.approx(samples[-1].time_s)
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
        assert 0.6 <= performance <= 1.0
        assert 0.95 <= quality <= 1.0  # healthy: only the base reject rate


def test_temperature_has_thermal_inertia(long_run: list[list[Sample]]) -> None:
    """After a machine stops, temperature decays over several samples instead of jumping."""
    checked = 0
    for samples in long_run:
        profile = PROFILES[samples[0].view.spec.type]
        for before, after in itertools.pairwise(samples):
            if before.state == "running" and after.state in ("idle", "setup"):
                drop = before.signal("temperature") - after.signal("temperature")
                rise = profile.temperature_rise_running_c * 1.3
                assert drop <= rise * (1 - math.exp(-LONG_STEP_S / profile.thermal_time_constant_s)) + 3.0
                checked += 1
    assert checked >= 5


def test_the_hall_follows_season_and_time_of_day() -> None:
    january, july = site_ambient(42, "site-00", JANUARY_MS), site_ambient(42, "site-00", JULY_MS)
    hours = [january.value(h * 3_600.0) for h in range(24 * 14)]
    assert 12.0 < min(hours) < max(hours) < 25.0
    assert statistics.mean(july.value(h * 3_600.0) for h in range(24 * 14)) > statistics.mean(hours) + 5.0
    # Warmest in the afternoon, coolest before dawn (UTC taken as local time).
    afternoon = statistics.mean(january.value((d * 24 + 15) * 3_600.0) for d in range(14))
    dawn = statistics.mean(january.value((d * 24 + 3) * 3_600.0) for d in range(14))
    assert afternoon > dawn + 2.5
    assert site_ambient(42, "site-01", JANUARY_MS).value(86_400.0) != january.value(86_400.0)  # own weather


def test_jobs_set_the_operating_point_after_each_changeover() -> None:
    samples = run(single_machine(MachineType.CNC_MILL, faults(), speed=30.0), 24 * 3_600.0)[0]
    speeds_by_job: list[set[float]] = [set()]
    for sample in samples:
        if any(e["event"] == "state_change" and e["reason"] == "setup_done" for e in sample.events):
            speeds_by_job.append(set())
        if sample.state == "running":
            speeds_by_job[-1].add(round(sample.signal("speed"), -2))
    jobs = [speeds for speeds in speeds_by_job if speeds]
    assert len(jobs) >= 4
    assert all(len(speeds) <= 2 for speeds in jobs)  # one programmed speed per job (±0.05 % servo ripple)
    assert len({min(speeds) for speeds in jobs}) >= 3  # and jobs differ


def test_mill_power_follows_the_cutting_cycle() -> None:
    samples = run(single_machine(MachineType.CNC_MILL, faults()), 3 * 3_600.0)[0]
    running = [s for s in samples if s.state == "running"]
    powers = [s.signal("power") for s in running]
    assert max(powers) > 2.5 * min(powers)  # roughing versus positioning within each cycle
    cycle = round(statistics.median(s.signal("cycle_time") for s in running))
    same_phase = _autocorrelation(powers, cycle)
    half_cycle = _autocorrelation(powers, cycle // 2)
    assert same_phase > 0.3 and same_phase > half_cycle + 0.3


def _autocorrelation(values: list[float], lag: int) -> float:
    mean = statistics.fmean(values)
    centred = [v - mean for v in values]
    denominator = sum(v * v for v in centred)
    return sum(a * b for a, b in zip(centred, centred[lag:], strict=False)) / denominator


def test_noise_is_autocorrelated_and_motor_speed_droops_with_load() -> None:
    settings = single_machine(MachineType.CONVEYOR, faults())
    samples = [s for s in run(settings, 4 * 3_600.0)[0] if s.state == "running"]
    power = [s.signal("power") for s in samples]
    vibration = [s.signal("vibration_rms") for s in samples]
    assert _autocorrelation(power, 1) > 0.7
    assert _autocorrelation(vibration, 1) > 0.3
    speed = [s.signal("speed") for s in samples]
    # An induction motor slips more under load: speed falls as power rises.
    assert statistics.correlation(power, speed) < -0.5


def test_temperature_follows_load() -> None:
    """At the end of long runs, a mill's spindle is warmer above the hall the faster its job turns."""
    settings = single_machine(MachineType.CNC_MILL, faults(), speed=60.0)
    samples = run(settings, 8 * 86_400.0)[0]
    hall = site_ambient(settings.seed, "site-00", JANUARY_MS)
    tau = PROFILES[MachineType.CNC_MILL].thermal_time_constant_s
    speeds, rises = [], []
    running_since = None
    for sample in samples:
        if sample.state != "running":
            running_since = None
            continue
        running_since = sample.time_s if running_since is None else running_since
        if sample.time_s - running_since > 4 * tau:  # settled
            speeds.append(sample.signal("speed"))
            rises.append(sample.signal("temperature") - hall.value(sample.time_s))
    assert len(speeds) > 200
    assert statistics.correlation(speeds, rises) > 0.5


def test_compressor_cycles_between_load_and_unload() -> None:
    settings = single_machine(MachineType.AIR_COMPRESSOR, faults(), speed=5.0)
    everything = run(settings, 4 * 3_600.0)[0]
    samples = [
        s for i, s in enumerate(everything) if all(x.state == "running" for x in everything[i - 60 : i + 1])
    ]
    assert len(samples) > 500
    pressures = [s.signal("pressure") for s in samples]
    powers = [s.signal("power") for s in samples]
    assert 0.8 <= max(pressures) - min(pressures) <= 1.2  # fills to cut-out, drains to cut-in
    loaded = [p for p in powers if p > 20.0]
    unloaded = [p for p in powers if p <= 20.0]
    assert len(loaded) > 100 and len(unloaded) > 100
    assert statistics.median(unloaded) < 0.45 * statistics.median(loaded)


def test_a_vented_receiver_stays_vented_until_the_compressor_runs() -> None:
    compressor = machine_id(MachineType.AIR_COMPRESSOR)
    scheduled = [ScheduledFault(machine=compressor, fault="air_leak", at_s=600.0, severity=0.99)]
    settings = single_machine(
        MachineType.AIR_COMPRESSOR, faults(scheduled=scheduled, timescale="demo"), speed=2.0
    )
    samples = run(settings, 3 * 3_600.0)[0]
    after = [s for s in samples if s.time_s > 600.0]
    vented = next(i for i, s in enumerate(after) if s.state == "maintenance")
    stopped = list(itertools.takewhile(lambda s: s.state != "running", after[vented:]))
    assert stopped and stopped[-1].state == "idle"
    pressures = [s.signal("pressure") for s in stopped]
    assert all(b <= a + 0.03 for a, b in itertools.pairwise(pressures))  # never re-pressurises by itself


def test_press_pressure_follows_the_stroke() -> None:
    settings = single_machine(MachineType.HYDRAULIC_PRESS, faults(), speed=7.0)
    samples = [s for s in run(settings, 3 * 3_600.0)[0] if s.state == "running"]
    pressures = [s.signal("pressure") for s in samples]
    assert max(pressures) >= 130.0 and min(pressures) <= 30.0
    high = [s.signal("power") for s in samples if s.signal("pressure") > 120]
    low = [s.signal("power") for s in samples if s.signal("pressure") < 40]
    assert statistics.mean(high) > 1.5 * statistics.mean(low)


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
    # The machine itself is unaffected: same states and counters as without the fault.
    assert [(s.state, s.telemetry["parts"]) for s in faulty] == [
        (s.state, s.telemetry["parts"]) for s in clean
    ]
    differing = [
        (i, name)
        for i, (a, b) in enumerate(zip(faulty, clean, strict=True))
        for name in a.telemetry["signals"]
        if a.telemetry["signals"][name] != b.telemetry["signals"][name]
    ]
    assert {name for _, name in differing} <= {signal}
    window = sorted({i for i, _ in differing})
    assert window, "the fault changed nothing"
    assert all(600.0 <= faulty[i].time_s <= 600.0 + max(duration, 2.0) + 2.0 for i in window)
    reported = [faulty[i].telemetry["signals"][signal] for i in window]
    if kind == "dropout":
        assert all(value is None for value in reported)
    elif kind == "spike":
        assert len(window) == 1
        assert ends[0]["end"] == starts[0]["onset"]  # a single reading: the label is an instant


def test_random_sensor_faults_stay_in_sensor_range() -> None:
    settings = FleetSettings(
        seed=9,
        lines_per_site=1,
        machines_per_line=ONE_OF_EACH,
        speed=60.0,
        faults=faults(sensor_fault_per_hour=3.0),
    )
    runs = run(settings, 12 * 3_600.0)
    kinds_seen, dropped = set(), 0
    for samples in runs:
        bounds = {spec.name: spec for spec in SIGNALS[samples[0].view.spec.type]}
        for sample in samples:
            kinds_seen |= {e["fault"] for e in sample.events if e["fault_class"] == "sensor"}
            for name, value in sample.telemetry["signals"].items():
                if value is None:
                    dropped += 1
                    continue
                assert bounds[name].low <= value <= bounds[name].high
                if name == "speed" and sample.state != "running":
                    assert value == 0.0  # the drive reports 0 when off, whatever the sensor does
    assert kinds_seen == {"stuck", "drift", "spike", "noise_burst", "dropout"}
    assert dropped > 0
