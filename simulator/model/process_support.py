"""The pieces a machine's process is made of: its individual constants and its jobs."""

from __future__ import annotations

from dataclasses import dataclass

from factory_core.fleet import MachineType
from simulator.model.ambient import DAY_S, Ambient
from simulator.model.failure_modes import DETECT_SIGMAS
from simulator.model.profiles import (
    COMPRESSOR_DEMAND_DAY,
    COMPRESSOR_DEMAND_NIGHT,
    IDLE,
    PRESS_MAX_PRESSURE_RANGE_BAR,
    RUNNING,
    SETUP,
    MachineProfile,
)
from simulator.model.randomness import CounterRandom

DAY_SHIFT_HOURS = (6.0, 22.0)  # two shifts; the night draws less compressed air


@dataclass(frozen=True, slots=True)
class Job:
    """What a machine is making: set at each changeover (belt load and air demand change by period)."""

    speed_factor: float  # programmed spindle speed relative to the machine's nominal (mills)
    load: float  # relative load: cutting power, press tonnage, belt load
    cycle_s: float  # standard cycle time of one part
    heat: float  # temperature rise relative to the type's rated rise


@dataclass(frozen=True)
class ProcessConstants:
    """One machine's own nameplate and surroundings, drawn once from its process stream."""

    ambient: Ambient  # the hall at this machine's spot, through its thermal time constant
    nominal_speed_rpm: float
    rated_power_kw: float
    base_vibration_mm_s: float
    ideal_cycle_time_s: float
    max_pressure_bar: float
    cut_in_bar: float
    demand_mean: float  # multiplies the plant's day/night air demand
    start_hour: float  # hour of the day (UTC) at simulated time 0
    temperature_band: float  # °C a fault's heat must add to leave the healthy band
    healthy: dict[str, float]  # healthy running levels failure modes are measured against

    @classmethod
    def draw(
        cls, profile: MachineProfile, rng: CounterRandom, hall: Ambient, start_epoch_ms: int = 0
    ) -> ProcessConstants:
        hall_offset = rng.uniform(-1.0, 2.0)  # near a door, or between warm machines
        spread = profile.speed_spread
        nominal_speed = profile.nominal_speed_rpm * (1.0 + rng.uniform(-1.0, 1.0) * spread)
        rated_power = profile.running_power_kw * rng.uniform(0.85, 1.15)
        vibration = profile.running_vibration_mm_s * rng.uniform(0.8, 1.2)
        ideal = round(profile.ideal_cycle_time_s * rng.uniform(0.8, 1.2), 1)
        max_pressure = rng.uniform(*PRESS_MAX_PRESSURE_RANGE_BAR)
        cut_in = round(rng.uniform(6.3, 7.0), 1)
        demand_mean = rng.uniform(0.85, 1.15)
        return cls(
            ambient=hall.lagged(profile.thermal_time_constant_s, hall_offset),
            nominal_speed_rpm=nominal_speed,
            rated_power_kw=rated_power,
            base_vibration_mm_s=vibration,
            ideal_cycle_time_s=ideal,
            max_pressure_bar=max_pressure,
            cut_in_bar=cut_in,
            demand_mean=demand_mean,
            start_hour=(start_epoch_ms / 1000.0 % DAY_S) / 3_600.0,
            temperature_band=DETECT_SIGMAS * profile.healthy_sigma["temperature"],
            healthy={"vibration_rms": vibration, "duty": 0.5 * demand_mean},
        )

    def demand_by_hour(self, t: float) -> float:
        """The plant's mean air demand (share of capacity) at simulated time `t`."""
        hour = (self.start_hour + t / 3_600.0) % 24.0
        return (
            COMPRESSOR_DEMAND_DAY
            if DAY_SHIFT_HOURS[0] <= hour < DAY_SHIFT_HOURS[1]
            else COMPRESSOR_DEMAND_NIGHT
        )


def job_heat(machine_type: MachineType, speed_factor: float, load: float) -> float:
    """Temperature rise of a job relative to rated: faster spindles and heavier loads run warmer."""
    if machine_type is MachineType.CNC_MILL:
        return (0.55 + 0.45 * speed_factor) * (0.85 + 0.15 * load)
    if machine_type is MachineType.HYDRAULIC_PRESS:
        return 0.7 + 0.3 * load
    if machine_type is MachineType.CONVEYOR:
        return 0.6 + 0.4 * load
    return 1.0


def draw_job(profile: MachineProfile, constants: ProcessConstants, rng: CounterRandom) -> Job:
    """A new job after a changeover (and the one under way at start)."""
    speed_factor = rng.uniform(*profile.job_speed_range)
    if profile.type is MachineType.CNC_MILL:  # programmed speeds are round numbers
        rpm = round(constants.nominal_speed_rpm * speed_factor / 50.0) * 50.0
        speed_factor = rpm / constants.nominal_speed_rpm
    load = rng.uniform(*profile.job_load_range)
    cycle_s = constants.ideal_cycle_time_s * rng.uniform(*profile.job_cycle_range)
    return Job(speed_factor, load, cycle_s, job_heat(profile.type, speed_factor, load))


def thermal_factor(state: str) -> float:
    """How much of a fault's heat shows in a state: all under load, some while idle, none when off."""
    if state == RUNNING:
        return 1.0
    if state in (IDLE, SETUP):
        return 0.4
    return 0.0
