"""Physical constants of the four machine types: nominal values, dwell times, thermal behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

from factory_core.fleet import MachineType
from factory_core.metric_catalog import MACHINE_SIGNALS, MACHINE_STATES

# Payload unit of every signal, from the metric catalog so payload and metrics never disagree.
SIGNAL_UNITS: dict[str, str] = {
    metric.signal: metric.payload_unit
    for metric in MACHINE_SIGNALS
    if metric.signal is not None and metric.payload_unit is not None
}
STATES: tuple[str, ...] = MACHINE_STATES
RUNNING, IDLE, SETUP, FAULT, MAINTENANCE = "running", "idle", "setup", "fault", "maintenance"
# States in which the drive is energised: heat is produced and a failing cooler matters.
POWERED_STATES = frozenset({RUNNING, IDLE, SETUP})


@dataclass(frozen=True)
class SensorRange:
    """Measurement range of the transmitter: readings saturate here, even when the sensor fails."""

    low: float
    high: float
    decimals: int  # resolution the payload reports


@dataclass(frozen=True)
class MachineProfile:
    """Nominal behaviour of one machine type; each machine draws its own variation around it."""

    type: MachineType
    signals: tuple[str, ...]  # payload order
    ranges: dict[str, SensorRange]
    produces_parts: bool
    ideal_cycle_time_s: float  # nameplate; 0 for machines that make no parts
    cycle_overhead: float  # typical actual/ideal cycle time ratio minus 1 (small stops, slow cuts)
    base_reject_rate: float
    nominal_speed_rpm: float
    speed_spread: float  # relative spread of nominal speed between machines of the type
    running_power_kw: float
    idle_power_kw: float
    setup_power_kw: float
    standby_power_kw: float  # fault / maintenance: controls only
    running_vibration_mm_s: float  # ISO 10816 zone A/B when healthy
    idle_vibration_mm_s: float
    temperature_rise_running_c: float  # steady state above ambient while running
    temperature_rise_idle_c: float
    thermal_time_constant_s: float
    trip_temperature_c: float  # protective trip -> fault
    bearing_vibration_gain_mm_s: float  # vibration added by a fully developed bearing fault
    mean_running_s: float
    mean_idle_s: float
    mean_setup_s: float
    changeover_probability: float  # after a run ends: setup instead of idle
    initial_running_probability: float

    # (signal, low, high, decimals) in payload order: how each reading is clamped and rounded.
    output_format: tuple[tuple[str, float, float, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        output_format = tuple(
            (name, self.ranges[name].low, self.ranges[name].high, self.ranges[name].decimals)
            for name in self.signals
        )
        object.__setattr__(self, "output_format", output_format)  # derived once; the class is frozen


_TEMPERATURE = SensorRange(-20.0, 150.0, 1)
_VIBRATION = SensorRange(0.0, 50.0, 2)
_POWER_DECIMALS = 2


PROFILES: dict[MachineType, MachineProfile] = {
    # Machining centre: spindle temperature, cutting power follows the tool path.
    MachineType.CNC_MILL: MachineProfile(
        type=MachineType.CNC_MILL,
        signals=("temperature", "vibration_rms", "speed", "power", "cycle_time"),
        ranges={
            "temperature": _TEMPERATURE,
            "vibration_rms": _VIBRATION,
            "speed": SensorRange(0.0, 24_000.0, 0),
            "power": SensorRange(0.0, 60.0, _POWER_DECIMALS),
            "cycle_time": SensorRange(0.0, 3_600.0, 2),
        },
        produces_parts=True,
        ideal_cycle_time_s=45.0,
        cycle_overhead=0.08,
        base_reject_rate=0.01,
        nominal_speed_rpm=9_000.0,
        speed_spread=0.15,
        running_power_kw=11.0,
        idle_power_kw=1.6,
        setup_power_kw=2.2,
        standby_power_kw=0.4,
        running_vibration_mm_s=1.2,
        idle_vibration_mm_s=0.15,
        temperature_rise_running_c=20.0,
        temperature_rise_idle_c=5.0,
        thermal_time_constant_s=300.0,
        trip_temperature_c=105.0,
        bearing_vibration_gain_mm_s=9.0,
        mean_running_s=2_400.0,
        mean_idle_s=300.0,
        mean_setup_s=1_200.0,
        changeover_probability=0.35,
        initial_running_probability=0.8,
    ),
    # Hydraulic press: pump motor speed, system pressure follows the stroke, oil temperature.
    MachineType.HYDRAULIC_PRESS: MachineProfile(
        type=MachineType.HYDRAULIC_PRESS,
        signals=("temperature", "vibration_rms", "speed", "power", "pressure", "cycle_time"),
        ranges={
            "temperature": _TEMPERATURE,
            "vibration_rms": _VIBRATION,
            "speed": SensorRange(0.0, 3_000.0, 0),
            "power": SensorRange(0.0, 120.0, _POWER_DECIMALS),
            "pressure": SensorRange(0.0, 400.0, 1),
            "cycle_time": SensorRange(0.0, 600.0, 2),
        },
        produces_parts=True,
        ideal_cycle_time_s=12.0,
        cycle_overhead=0.06,
        base_reject_rate=0.008,
        nominal_speed_rpm=1_480.0,
        speed_spread=0.005,
        running_power_kw=22.0,
        idle_power_kw=0.9,
        setup_power_kw=1.5,
        standby_power_kw=0.3,
        running_vibration_mm_s=2.0,
        idle_vibration_mm_s=0.1,
        temperature_rise_running_c=25.0,
        temperature_rise_idle_c=6.0,
        thermal_time_constant_s=900.0,
        trip_temperature_c=100.0,
        bearing_vibration_gain_mm_s=8.0,
        mean_running_s=3_000.0,
        mean_idle_s=300.0,
        mean_setup_s=900.0,
        changeover_probability=0.3,
        initial_running_probability=0.8,
    ),
    # Belt conveyor: geared drive motor, low vibration, counts the items it carries.
    MachineType.CONVEYOR: MachineProfile(
        type=MachineType.CONVEYOR,
        signals=("temperature", "vibration_rms", "speed", "power"),
        ranges={
            "temperature": _TEMPERATURE,
            "vibration_rms": _VIBRATION,
            "speed": SensorRange(0.0, 3_000.0, 0),
            "power": SensorRange(0.0, 30.0, _POWER_DECIMALS),
        },
        produces_parts=True,
        ideal_cycle_time_s=6.0,
        cycle_overhead=0.03,
        base_reject_rate=0.002,
        nominal_speed_rpm=1_440.0,
        speed_spread=0.01,
        running_power_kw=3.5,
        idle_power_kw=0.15,
        setup_power_kw=0.2,
        standby_power_kw=0.05,
        running_vibration_mm_s=0.6,
        idle_vibration_mm_s=0.05,
        temperature_rise_running_c=15.0,
        temperature_rise_idle_c=2.0,
        thermal_time_constant_s=600.0,
        trip_temperature_c=105.0,
        bearing_vibration_gain_mm_s=7.0,
        mean_running_s=7_200.0,
        mean_idle_s=600.0,
        mean_setup_s=600.0,
        changeover_probability=0.05,
        initial_running_probability=0.9,
    ),
    # Oil-injected screw compressor: load/unload cycling keeps the receiver between cut-in and cut-out.
    MachineType.AIR_COMPRESSOR: MachineProfile(
        type=MachineType.AIR_COMPRESSOR,
        signals=("temperature", "vibration_rms", "speed", "power", "pressure"),
        ranges={
            "temperature": _TEMPERATURE,
            "vibration_rms": _VIBRATION,
            "speed": SensorRange(0.0, 4_000.0, 0),
            "power": SensorRange(0.0, 120.0, _POWER_DECIMALS),
            "pressure": SensorRange(0.0, 16.0, 2),
        },
        produces_parts=False,
        ideal_cycle_time_s=0.0,
        cycle_overhead=0.0,
        base_reject_rate=0.0,
        nominal_speed_rpm=2_960.0,
        speed_spread=0.003,
        running_power_kw=37.0,  # loaded; unloaded draws UNLOADED_POWER_RATIO of it
        idle_power_kw=0.3,
        setup_power_kw=0.3,
        standby_power_kw=0.2,
        running_vibration_mm_s=1.8,
        idle_vibration_mm_s=0.05,
        temperature_rise_running_c=48.0,  # fully loaded; unloaded is lower, see machine.py
        temperature_rise_idle_c=3.0,
        thermal_time_constant_s=300.0,
        trip_temperature_c=115.0,
        bearing_vibration_gain_mm_s=9.0,
        mean_running_s=5_400.0,
        mean_idle_s=900.0,
        mean_setup_s=600.0,
        changeover_probability=0.0,  # compressors have no changeover
        initial_running_probability=0.85,
    ),
}

# Compressor constants (bar, bar/s): receiver pressure band and how fast it fills and drains.
COMPRESSOR_UNLOADED_POWER_RATIO = 0.3
COMPRESSOR_UNLOADED_RISE_RATIO = 0.6  # temperature rise unloaded vs loaded
COMPRESSOR_BAND_BAR = 1.0
COMPRESSOR_FILL_RATE_BAR_S = 0.06  # at zero demand, full capacity
COMPRESSOR_LEAK_TIME_CONSTANT_S = 1_800.0  # receiver pressure decay while stopped
COMPRESSOR_STANDBY_DROP_BAR = 0.3  # in standby the network (other compressors) holds just below cut-in
COMPRESSOR_VENT_TIME_CONSTANT_S = 60.0  # maintenance vents the receiver (lock-out before work)

# Press stroke: fraction of the cycle spent in each phase and pressures outside the pressing phase.
PRESS_PEAK_PRESSURE_BAR = 210.0
PRESS_LOW_PRESSURE_BAR = 25.0
