"""Physical constants of the four machine types: nameplates, thermal behaviour, alarms, dwell times."""

from __future__ import annotations

from dataclasses import dataclass, field

from factory_core.fleet import MachineType
from factory_core.metric_catalog import MACHINE_STATES
from factory_core.payload_contract import SIGNALS

STATES: tuple[str, ...] = MACHINE_STATES
RUNNING, IDLE, SETUP, FAULT, MAINTENANCE = "running", "idle", "setup", "fault", "maintenance"
# States in which the drive is energised: heat is produced and a failing cooler matters.
POWERED_STATES = frozenset({RUNNING, IDLE, SETUP})


@dataclass(frozen=True)
class MachineProfile:
    """Nominal behaviour of one machine type; each machine draws its own variation around it."""

    type: MachineType
    produces_parts: bool
    ideal_cycle_time_s: float  # nameplate; 0 for machines that make no parts
    cycle_overhead: float  # actual/ideal cycle time ratio minus 1, on average (small stops, slow cuts)
    job_cycle_range: tuple[float, float]  # a job's standard cycle time relative to the ideal
    base_reject_rate: float
    nominal_speed_rpm: float  # mill: spindle speed of an average job; motors: synchronous speed
    speed_spread: float  # relative spread of nominal speed between machines of the type
    job_speed_range: tuple[float, float]  # programmed spindle speed of a job, relative (mills)
    rated_slip: float  # induction motors: speed drop at full load, relative (0 for a servo spindle)
    running_power_kw: float
    job_load_range: tuple[float, float]  # a job's (or belt period's) load, relative to rated
    idle_power_kw: float
    setup_power_kw: float
    standby_power_kw: float  # fault / maintenance: controls only
    running_vibration_mm_s: float  # healthy, at rated load: ISO 10816 zone A/B
    idle_vibration_mm_s: float
    zone_bc_mm_s: float  # ISO 10816 boundary B/C: condition-based maintenance is planned above it
    zone_cd_mm_s: float  # boundary C/D: damage likely
    temperature_rise_running_c: float  # steady state above the hall at rated load
    temperature_rise_idle_c: float
    thermal_time_constant_s: float
    alarm_temperature_c: float  # condition-based maintenance is planned when reached
    trip_temperature_c: float  # protective trip -> fault
    mean_running_s: float
    mean_idle_s: float
    mean_setup_s: float
    changeover_probability: float  # after a run ends: setup instead of idle
    initial_running_probability: float
    pm_interval_h: float  # running hours between scheduled preventive maintenance (realistic)
    pm_duration_h: float
    feed_role: str | None  # coupling to the line's conveyor: "blocked" (upstream), "starved" (downstream)
    buffer_s: float  # parts buffer between this machine and the conveyor, in production time
    # Healthy variation a detector has to see past, as standard deviations: job-to-job and slow
    # drift of the running level (vibration, power, cycle time, pressure relative to their nominal;
    # temperature in °C, including the hall's daily swing). See failure_modes.detectable_damage.
    healthy_sigma: dict[str, float] = field(default_factory=dict)

    def __reduce__(self) -> tuple[object, tuple[MachineType]]:
        # Checkpoints refer to the type's profile instead of copying it into every machine.
        return _profile_of, (self.type,)

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in SIGNALS[self.type])

    @property
    def output_format(self) -> tuple[tuple[str, float, float, int], ...]:
        """(signal, low, high, decimals) in payload order: how readings are clamped and rounded."""
        return tuple((spec.name, spec.low, spec.high, spec.decimals) for spec in SIGNALS[self.type])


PROFILES: dict[MachineType, MachineProfile] = {
    # Machining centre, 11 kW spindle: spindle-bearing temperature, cutting power follows the tool path.
    # ISO 10816-1 class I (small machines): zone boundaries 0.71 / 1.8 / 4.5 mm/s.
    MachineType.CNC_MILL: MachineProfile(
        type=MachineType.CNC_MILL,
        produces_parts=True,
        ideal_cycle_time_s=45.0,
        cycle_overhead=0.07,
        job_cycle_range=(1.0, 1.3),
        base_reject_rate=0.008,
        nominal_speed_rpm=9_000.0,
        speed_spread=0.1,
        job_speed_range=(0.65, 1.25),
        rated_slip=0.0,
        running_power_kw=11.0,
        job_load_range=(0.75, 1.25),
        idle_power_kw=1.6,
        setup_power_kw=2.2,
        standby_power_kw=0.4,
        running_vibration_mm_s=0.8,
        idle_vibration_mm_s=0.12,
        zone_bc_mm_s=1.8,
        zone_cd_mm_s=4.5,
        temperature_rise_running_c=18.0,
        temperature_rise_idle_c=5.0,
        thermal_time_constant_s=600.0,
        alarm_temperature_c=65.0,
        trip_temperature_c=75.0,
        mean_running_s=2_400.0,
        mean_idle_s=300.0,
        mean_setup_s=1_200.0,
        changeover_probability=0.35,
        initial_running_probability=0.8,
        pm_interval_h=500.0,
        pm_duration_h=3.0,
        feed_role="blocked",
        buffer_s=900.0,
        healthy_sigma={"vibration_rms": 0.17, "power": 0.15, "cycle_time": 0.09, "temperature": 3.0},
    ),
    # Hydraulic press, 22 kW pump motor: system pressure follows the stroke, oil temperature.
    # ISO 10816-3 group 2 (15-300 kW), rigid: boundaries 1.4 / 2.8 / 4.5; the pump stand is flexible:
    # 2.3 / 4.5 / 7.1. Zone C is taken at 2.8 mm/s (the catalog's alert level), D at 7.1.
    MachineType.HYDRAULIC_PRESS: MachineProfile(
        type=MachineType.HYDRAULIC_PRESS,
        produces_parts=True,
        ideal_cycle_time_s=12.0,
        cycle_overhead=0.05,
        job_cycle_range=(1.0, 1.2),
        base_reject_rate=0.006,
        nominal_speed_rpm=1_500.0,
        speed_spread=0.0,
        job_speed_range=(1.0, 1.0),
        rated_slip=0.015,
        running_power_kw=22.0,
        job_load_range=(0.75, 1.0),  # the job's tonnage: peak pressure relative to the machine's maximum
        idle_power_kw=0.9,
        setup_power_kw=1.5,
        standby_power_kw=0.3,
        running_vibration_mm_s=1.4,
        idle_vibration_mm_s=0.1,
        zone_bc_mm_s=2.8,
        zone_cd_mm_s=7.1,
        temperature_rise_running_c=26.0,
        temperature_rise_idle_c=6.0,
        thermal_time_constant_s=1_200.0,
        alarm_temperature_c=65.0,
        trip_temperature_c=75.0,
        mean_running_s=3_000.0,
        mean_idle_s=300.0,
        mean_setup_s=900.0,
        changeover_probability=0.3,
        initial_running_probability=0.8,
        pm_interval_h=750.0,
        pm_duration_h=4.0,
        feed_role="starved",
        buffer_s=600.0,
        healthy_sigma={
            "vibration_rms": 0.08,
            "power": 0.08,
            "cycle_time": 0.06,
            "pressure": 0.07,
            "temperature": 3.0,
        },
    ),
    # Belt conveyor, 3 kW gearmotor: the line's transfer from the machining cell to the press.
    # ISO 10816-1 class I: 0.71 / 1.8 / 4.5 mm/s.
    MachineType.CONVEYOR: MachineProfile(
        type=MachineType.CONVEYOR,
        produces_parts=True,
        ideal_cycle_time_s=6.0,
        cycle_overhead=0.03,
        job_cycle_range=(1.0, 1.0),
        base_reject_rate=0.001,
        nominal_speed_rpm=1_500.0,
        speed_spread=0.0,
        job_speed_range=(1.0, 1.0),
        rated_slip=0.04,
        running_power_kw=3.5,
        job_load_range=(0.4, 1.0),  # belt load of a period
        idle_power_kw=0.15,
        setup_power_kw=0.2,
        standby_power_kw=0.05,
        running_vibration_mm_s=0.6,
        idle_vibration_mm_s=0.05,
        zone_bc_mm_s=1.8,
        zone_cd_mm_s=4.5,
        temperature_rise_running_c=20.0,
        temperature_rise_idle_c=2.0,
        thermal_time_constant_s=900.0,
        alarm_temperature_c=80.0,
        trip_temperature_c=90.0,
        mean_running_s=7_200.0,
        mean_idle_s=600.0,
        mean_setup_s=600.0,
        changeover_probability=0.05,
        initial_running_probability=0.9,
        pm_interval_h=1_000.0,
        pm_duration_h=2.0,
        feed_role=None,
        buffer_s=0.0,
        healthy_sigma={"vibration_rms": 0.12, "power": 0.17, "temperature": 3.0},
    ),
    # Oil-injected screw compressor, 37 kW: load/unload cycling keeps the receiver between cut-in and
    # cut-out. ISO 10816-3 group 2: zone C from 2.8 mm/s, D from 7.1. Air-end discharge runs 75-95 °C
    # (manufacturers warn at ~105-110 °C and shut down at ~115-120 °C).
    MachineType.AIR_COMPRESSOR: MachineProfile(
        type=MachineType.AIR_COMPRESSOR,
        produces_parts=False,
        ideal_cycle_time_s=0.0,
        cycle_overhead=0.0,
        job_cycle_range=(1.0, 1.0),
        base_reject_rate=0.0,
        nominal_speed_rpm=3_000.0,
        speed_spread=0.0,
        job_speed_range=(1.0, 1.0),
        rated_slip=0.012,
        running_power_kw=37.0,  # loaded; unloaded draws COMPRESSOR_UNLOADED_POWER_RATIO of it
        job_load_range=(1.0, 1.0),
        idle_power_kw=0.3,
        setup_power_kw=0.3,
        standby_power_kw=0.2,
        running_vibration_mm_s=1.6,
        idle_vibration_mm_s=0.05,
        zone_bc_mm_s=2.8,
        zone_cd_mm_s=7.1,
        temperature_rise_running_c=70.0,  # fully loaded; unloaded is lower, see COMPRESSOR_*
        temperature_rise_idle_c=3.0,
        thermal_time_constant_s=300.0,
        alarm_temperature_c=105.0,
        trip_temperature_c=115.0,
        mean_running_s=5_400.0,
        mean_idle_s=900.0,
        mean_setup_s=600.0,
        changeover_probability=0.0,  # compressors have no changeover
        initial_running_probability=0.85,
        pm_interval_h=2_000.0,
        pm_duration_h=3.0,
        feed_role=None,
        buffer_s=0.0,
        healthy_sigma={"vibration_rms": 0.08, "power": 0.1, "duty": 0.15, "temperature": 3.5},
    ),
}


def _profile_of(machine_type: MachineType) -> MachineProfile:
    return PROFILES[machine_type]


# Compressor constants (bar, bar/s): receiver pressure band and how fast it fills and drains.
COMPRESSOR_UNLOADED_POWER_RATIO = 0.28
COMPRESSOR_UNLOADED_RISE_RATIO = 0.75  # temperature rise unloaded vs loaded
COMPRESSOR_BAND_BAR = 1.0
COMPRESSOR_FILL_RATE_BAR_S = 0.06  # at zero demand, full capacity
COMPRESSOR_LEAK_TIME_CONSTANT_S = 1_800.0  # receiver pressure decay while stopped
COMPRESSOR_VENT_TIME_CONSTANT_S = 60.0  # maintenance vents the receiver (lock-out before work)
COMPRESSOR_DEMAND_MEAN_S = 1_800.0  # mean length of a period of steady air demand
COMPRESSOR_DEMAND_DAY = 0.6  # mean demand (share of capacity) 06:00-22:00
COMPRESSOR_DEMAND_NIGHT = 0.35
CONVEYOR_LOAD_MEAN_S = 1_800.0  # mean length of a period of steady belt load

# Press stroke: pressure outside the pressing phase.
PRESS_LOW_PRESSURE_BAR = 25.0
PRESS_MAX_PRESSURE_RANGE_BAR = (180.0, 240.0)
