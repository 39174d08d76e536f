"""Failure modes of each machine type: how often they start, how they grow, what they show, how they end.

A failure mode starts as an invisible defect (damage 0) and grows while the machine runs, along
`damage = (e^(a r) - 1) / (e^a - 1)` of its development `r` (0..1 of its running time to failure):
slow first, fast at the end, like the RMS of run-to-failure bearing tests. Damage 1 is a
functional failure. Every effect on the signals is proportional to damage. Damage is published
(as the label's severity) at every 5 % step; between steps it is linear in running time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

from factory_core.fleet import FAILURE_MODES, MachineType
from simulator.model.profiles import PROFILES, MachineProfile
from simulator.model.randomness import CounterRandom

TripCriterion = Literal["damage", "temperature"]
ConditionAlarm = Literal["vibration", "temperature"] | None

# A fault that trips on temperature develops over at least this many thermal time constants.
THERMAL_DEVELOPMENT_FLOOR: Final = 4.0
# Damage is published, and interpolated between, at these steps.
DAMAGE_STEP: Final = 0.05
# A symptom is visible once the fault's effect on a signal exceeds this many healthy standard
# deviations of that signal (profiles.MachineProfile.healthy_sigma).
DETECT_SIGMAS: Final = 3.0


@dataclass(frozen=True)
class ModeSpec:
    """One failure mode: rates and times at the `realistic` timescale, effects at damage 1."""

    name: str
    machine_type: MachineType
    mtbf_h: float  # mean running hours between onsets on one machine
    development_h: tuple[float, float]  # running hours from onset to failure (uniform in this range)
    growth: float  # `a` of the damage curve: larger = later, steeper rise
    repair_h: float  # mean repair time once a technician works on it
    trip: TripCriterion  # what usually trips it: damage 1 (always does), or the trip temperature first
    trip_reason: str
    alarm: ConditionAlarm  # what a condition monitor sees (None: nothing it watches)
    # Effects at damage 1: vibration in mm/s (running), temperature rise in °C (powered; lagged),
    # power / cycle time / press peak pressure relative, compressor capacity and air demand relative,
    # reject probability added.
    effects: dict[str, float] = field(default_factory=dict)

    def effect(self, name: str) -> float:
        return self.effects.get(name, 0.0)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # Checkpoints refer to the registry's spec by name: one object per mode, compared by identity.
        return _mode_named, (self.name,)


def _mode_named(name: str) -> ModeSpec:
    return MODES[name]


def _mode(machine_type: MachineType, name: str, **spec: object) -> ModeSpec:
    return ModeSpec(name=name, machine_type=machine_type, **spec)  # type: ignore[arg-type]


_MILL, _PRESS = MachineType.CNC_MILL, MachineType.HYDRAULIC_PRESS
_CONVEYOR, _COMPRESSOR = MachineType.CONVEYOR, MachineType.AIR_COMPRESSOR

MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        _mode(
            _MILL,
            "spindle_bearing_wear",
            mtbf_h=4_000.0,
            development_h=(72.0, 240.0),
            growth=4.0,
            repair_h=8.0,
            trip="damage",
            trip_reason="bearing_failure",
            alarm="vibration",
            effects={"vibration_rms": 5.0, "temperature": 12.0, "power": 0.04},
        ),
        _mode(
            _MILL,
            "tool_wear",
            mtbf_h=1_000.0,
            development_h=(3.0, 12.0),
            growth=2.0,
            repair_h=0.5,
            trip="damage",
            trip_reason="tool_breakage",
            alarm=None,
            effects={
                "power": 0.35,
                "vibration_rms": 0.6,
                "cycle_time": 0.06,
                "rejects": 0.25,
                "temperature": 3.0,
            },
        ),
        _mode(
            _MILL,
            "coolant_failure",
            mtbf_h=3_000.0,
            development_h=(24.0, 96.0),
            growth=1.5,
            repair_h=2.0,
            trip="temperature",
            trip_reason="overtemperature_trip",
            alarm="temperature",
            effects={"temperature": 55.0, "power": 0.02},
        ),
        _mode(
            _PRESS,
            "seal_leakage",
            mtbf_h=3_000.0,
            development_h=(72.0, 200.0),
            growth=2.0,
            repair_h=4.0,
            trip="damage",
            trip_reason="pressure_loss",
            alarm="temperature",
            effects={
                "cycle_time": 0.25,
                "pressure": -0.12,
                "temperature": 28.0,
                "power": 0.08,
                "rejects": 0.05,
            },
        ),
        _mode(
            _PRESS,
            "pump_wear",
            mtbf_h=5_000.0,
            development_h=(120.0, 360.0),
            growth=3.0,
            repair_h=6.0,
            trip="damage",
            trip_reason="pressure_loss",
            alarm="vibration",
            effects={
                "vibration_rms": 5.0,
                "power": 0.12,
                "cycle_time": 0.1,
                "pressure": -0.05,
                "temperature": 8.0,
            },
        ),
        _mode(
            _PRESS,
            "oil_overheating",
            mtbf_h=3_000.0,
            development_h=(24.0, 96.0),
            growth=1.5,
            repair_h=2.0,
            trip="temperature",
            trip_reason="overtemperature_trip",
            alarm="temperature",
            effects={"temperature": 45.0},
        ),
        _mode(
            _CONVEYOR,
            "belt_misalignment",
            mtbf_h=2_500.0,
            development_h=(24.0, 96.0),
            growth=2.0,
            repair_h=1.0,
            trip="damage",
            trip_reason="overload_trip",
            alarm="vibration",
            effects={"power": 0.3, "vibration_rms": 1.5, "rejects": 0.03, "temperature": 6.0},
        ),
        _mode(
            _CONVEYOR,
            "gearbox_wear",
            mtbf_h=6_000.0,
            development_h=(168.0, 480.0),
            growth=3.0,
            repair_h=8.0,
            trip="damage",
            trip_reason="vibration_trip",
            alarm="vibration",
            effects={"vibration_rms": 4.5, "temperature": 15.0, "power": 0.08},
        ),
        _mode(
            _CONVEYOR,
            "motor_bearing_wear",
            mtbf_h=5_000.0,
            development_h=(96.0, 300.0),
            growth=4.0,
            repair_h=4.0,
            trip="damage",
            trip_reason="bearing_failure",
            alarm="vibration",
            effects={"vibration_rms": 4.0, "temperature": 8.0, "power": 0.03},
        ),
        _mode(
            _COMPRESSOR,
            "airend_wear",
            mtbf_h=10_000.0,
            development_h=(200.0, 600.0),
            growth=3.0,
            repair_h=16.0,
            trip="damage",
            trip_reason="vibration_trip",
            alarm="vibration",
            effects={"vibration_rms": 5.5, "temperature": 10.0, "capacity": -0.15, "power": 0.05},
        ),
        _mode(
            _COMPRESSOR,
            "cooler_fouling",
            mtbf_h=6_000.0,
            development_h=(100.0, 300.0),
            growth=1.2,
            repair_h=3.0,
            trip="temperature",
            trip_reason="overtemperature_trip",
            alarm="temperature",
            effects={"temperature": 55.0},
        ),
        _mode(
            _COMPRESSOR,
            "inlet_filter_clogging",
            mtbf_h=4_000.0,
            development_h=(80.0, 240.0),
            growth=1.5,
            repair_h=0.5,
            trip="damage",
            trip_reason="pressure_loss",
            alarm="temperature",
            effects={"capacity": -0.4, "temperature": 20.0, "power": -0.04},
        ),
        _mode(
            _COMPRESSOR,
            "air_leak",
            mtbf_h=5_000.0,
            development_h=(24.0, 96.0),
            growth=1.5,
            repair_h=2.0,
            trip="damage",
            trip_reason="pressure_loss",
            alarm=None,
            effects={"demand": 0.35},
        ),
    )
}
MODES_BY_TYPE: dict[MachineType, tuple[ModeSpec, ...]] = {
    machine_type: tuple(MODES[name] for name in names) for machine_type, names in FAILURE_MODES.items()
}
if set(MODES) != {name for names in FAILURE_MODES.values() for name in names}:  # pragma: no cover
    raise RuntimeError("every failure mode in factory_core.fleet.FAILURE_MODES needs a ModeSpec here")


@dataclass(frozen=True)
class MaintenanceTimes:
    """Durations of the maintenance organisation at the `realistic` timescale (hours)."""

    technician_wait_h: float = 1.0  # after a trip, until the repair starts (exponential)
    planning_h: float = 8.0  # condition alarm to planned stop (exponential)
    corrective_factor: float = 1.5  # a repair after a failure takes longer (collateral damage)


MAINTENANCE_TIMES: Final = MaintenanceTimes()


@dataclass(frozen=True)
class Timescale:
    """How fast degradation and maintenance run: `factor` times the realistic durations and MTBFs.

    Floors keep the compressed durations watchable on a dashboard (a tool that wears out in 15
    seconds, or a 4-second repair, would be a blip between two scrapes).
    """

    factor: float
    min_development_s: float = 0.0
    min_repair_s: float = 0.0
    min_wait_s: float = 0.0

    def development_s(self, hours: float, floor_s: float = 0.0) -> float:
        """`floor_s`: a fault that heats the machine develops over a few thermal time constants at
        least, or a compressed one would trip before its temperature could show it."""
        return max(hours * 3_600.0 * self.factor, self.min_development_s, floor_s)

    def repair_s(self, hours: float) -> float:
        return max(hours * 3_600.0 * self.factor, self.min_repair_s)

    def wait_s(self, hours: float) -> float:
        return max(hours * 3_600.0 * self.factor, self.min_wait_s)

    def running_s(self, hours: float) -> float:
        """Running time between events that are counted in running hours (MTBF, PM interval)."""
        return hours * 3_600.0 * self.factor


# The `demo` timescale runs degradation and maintenance 720x faster (a simulated day of wear in two
# minutes) and leaves operations (jobs, changeovers, thermal time constants) as they are.
TIMESCALES: Final[dict[str, Timescale]] = {
    "realistic": Timescale(1.0),
    "demo": Timescale(1.0 / 720.0, min_development_s=180.0, min_repair_s=60.0, min_wait_s=15.0),
}


def damage_at(progress: float, growth: float) -> float:
    """Damage after `progress` (0..1) of a fault's development."""
    if progress >= 1.0:
        return 1.0
    return math.expm1(growth * progress) / math.expm1(growth)


def progress_at(damage: float, growth: float) -> float:
    """Inverse of `damage_at`."""
    if damage >= 1.0:
        return 1.0
    return math.log1p(damage * math.expm1(growth)) / growth


def detectable_damage(spec: ModeSpec, profile: MachineProfile, healthy: dict[str, float]) -> float:
    """Smallest damage at which a non-thermal effect leaves the healthy band (> 1: never).

    `healthy` holds this machine's running levels (vibration mm/s, duty share); temperature is
    handled by the thermal model, which knows the lag.
    """
    sigma = profile.healthy_sigma
    candidates = [math.inf]
    vibration = spec.effect("vibration_rms")
    if vibration > 0.0:
        candidates.append(DETECT_SIGMAS * sigma["vibration_rms"] * healthy["vibration_rms"] / vibration)
    for name in ("power", "cycle_time", "pressure"):
        gain = abs(spec.effect(name))
        if gain > 0.0 and name in sigma:
            candidates.append(DETECT_SIGMAS * sigma[name] / gain)
    duty_gain = healthy.get("duty", 0.0) * (abs(spec.effect("capacity")) + spec.effect("demand"))
    if duty_gain > 0.0:
        candidates.append(DETECT_SIGMAS * sigma["duty"] / duty_gain)
    return min(candidates)


def alarm_damage(spec: ModeSpec, profile: MachineProfile, healthy_vibration: float) -> float:
    """Damage at which a vibration alarm (ISO zone C) is raised (> 1: never)."""
    gain = spec.effect("vibration_rms")
    if spec.alarm != "vibration" or gain <= 0.0:
        return math.inf
    return max(0.0, (profile.zone_bc_mm_s - healthy_vibration) / gain)


__all__ = ["MODES", "MODES_BY_TYPE", "PROFILES", "ModeSpec"]


def damage_step_above(damage: float) -> float:
    """The next published damage step strictly above `damage` (at most 1)."""
    steps = math.floor(damage / DAMAGE_STEP + 1e-9) + 1
    return min(1.0, round(steps * DAMAGE_STEP, 10))


@dataclass(slots=True)
class Failure:
    """One failure mode developing on one machine, from onset until maintenance ends it.

    Damage is linear in the machine's running clock between two knots (published steps), so every
    crossing time is exact: `clock_at(d)` inverts `damage(clock)` within the current segment.
    """

    fault_id: int
    spec: ModeSpec
    onset_s: float
    scheduled: bool
    develop_s: float  # running seconds from damage 0 to 1
    knot_clock: float
    knot_damage: float
    next_damage: float = 1.0
    slope: float = 0.0  # damage per running second until the next knot
    detect_damage: float = math.inf  # non-thermal symptoms leave the healthy band here
    alarm_damage: float = math.inf  # a vibration alarm is raised here
    end_s: float = math.inf  # a scheduled duration ends the fault here
    detectable_from_s: float | None = None
    alarmed: bool = False
    rng: CounterRandom | None = None  # the fault's own stream: what it draws never shifts the machine's

    def start_segment(self) -> None:
        """Set the slope towards the next knot from the damage curve."""
        if self.knot_damage >= 1.0:
            self.next_damage, self.slope = 1.0, 0.0
            return
        self.next_damage = damage_step_above(self.knot_damage)
        growth = self.spec.growth
        progress = progress_at(self.next_damage, growth) - progress_at(self.knot_damage, growth)
        running_s = progress * self.develop_s
        self.slope = (self.next_damage - self.knot_damage) / max(running_s, 1e-9)

    def damage(self, clock: float) -> float:
        value = self.knot_damage + self.slope * (clock - self.knot_clock)
        return value if value < self.next_damage else self.next_damage

    def clock_at(self, damage: float) -> float:
        """Running clock at which the current segment reaches `damage` (inf if it does not)."""
        if damage <= self.knot_damage:
            return self.knot_clock
        if damage > self.next_damage or self.slope <= 0.0:
            return math.inf
        return self.knot_clock + (damage - self.knot_damage) / self.slope

    def pass_knot(self) -> None:
        self.knot_clock = self.clock_at(self.next_damage)
        self.knot_damage = self.next_damage
        self.start_segment()


def published_severity(damage: float) -> float:
    """Damage as the label's severity: two decimals, never 0 (the schema needs severity > 0)."""
    return max(0.01, round(damage, 2))
