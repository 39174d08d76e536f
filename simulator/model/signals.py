"""What the sensors read: the process's state at the sample time, plus plant-like noise.

Readings follow the load: power and vibration move with the cutting phase of a mill's cycle or the
stroke of a press, motor speed droops with load (slip), temperature follows the slow part of the
load. Noise is autocorrelated, as on a plant: a slow drift (material, tool, temperature; ~30 min)
and fast load fluctuation (~15 s) shared by power, vibration and speed, vibration's own short-term
variation, and small white noise at the transmitter. All of it comes from one `random.Random` per
machine, drawn in sample order, so it never touches the process.
"""

from __future__ import annotations

import math
import random

from factory_core.fleet import MachineType
from simulator.model.process import MachineProcess
from simulator.model.profiles import (
    COMPRESSOR_UNLOADED_POWER_RATIO,
    PRESS_LOW_PRESSURE_BAR,
    RUNNING,
    SETUP,
)
from simulator.model.randomness import NORMAL_TABLE_SIZE, STANDARD_NORMAL

_N = STANDARD_NORMAL
_MASK = NORMAL_TABLE_SIZE - 1
# Autocorrelated noise: (time constant in s, standard deviation relative to the level).
SLOW_DRIFT = (1_800.0, 0.03)
LOAD_FLUCTUATION = (15.0, 0.05)
VIBRATION_FLUCTUATION = (3.0, 0.06)
# A mill's cutting power over one cycle: positioning and tool change, roughing, finishing, retract.
MILL_CYCLE_PROFILE = ((0.08, 0.15), (0.55, 1.0), (0.85, 0.55), (1.0, 0.2))
MILL_SPINDLE_IDLE_KW = 1.2  # spindle turning without cutting, at nominal speed


class Sensors:
    """The readings of one machine. `read(process, t)` is called once per sample, in order."""

    __slots__ = (
        "_decay_fast",
        "_decay_slow",
        "_decay_vibration",
        "_fast",
        "_rng",
        "_sigma_fast",
        "_sigma_slow",
        "_sigma_vibration",
        "_slow",
        "_started",
        "_vibration",
        "read_running",
    )

    def __init__(self, machine_type: MachineType, seed: int, step_s: float) -> None:
        self._rng = random.Random(seed)
        # Per-step decay and innovation scale of the three noise processes at this sampling step.
        decays, sigmas = [], []
        for tau, sigma in (SLOW_DRIFT, LOAD_FLUCTUATION, VIBRATION_FLUCTUATION):
            decay = math.exp(-step_s / tau)
            decays.append(decay)
            sigmas.append(sigma * math.sqrt(1.0 - decay * decay))
        self._decay_slow, self._decay_fast, self._decay_vibration = decays
        self._sigma_slow, self._sigma_fast, self._sigma_vibration = sigmas
        self._slow = self._fast = self._vibration = 0.0
        self._started = False
        self.read_running = {
            MachineType.CNC_MILL: self._mill,
            MachineType.HYDRAULIC_PRESS: self._press,
            MachineType.CONVEYOR: self._conveyor,
            MachineType.AIR_COMPRESSOR: self._compressor,
        }[machine_type]

    def __getstate__(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "read_running"} | {
            "type": self.read_running.__name__
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        kind = state.pop("type")
        for name, value in state.items():
            setattr(self, name, value)
        self.read_running = getattr(self, str(kind))

    def _start(self) -> None:
        """Start each noise process in its stationary distribution."""
        self._started = True
        first = self._rng.getrandbits(36)
        self._slow = SLOW_DRIFT[1] * _N[first & _MASK]
        self._fast = LOAD_FLUCTUATION[1] * _N[(first >> 12) & _MASK]
        self._vibration = VIBRATION_FLUCTUATION[1] * _N[(first >> 24) & _MASK]

    def read(self, process: MachineProcess, t: float) -> dict[str, float | None]:
        """Readings in payload units before sensor faults, clamping and rounding."""
        if not self._started:
            self._start()
        # One draw of 60 bits gives five table indices: the three noise processes, the temperature
        # transmitter's own noise and one spare (a second draw costs more than the physics).
        bits = self._rng.getrandbits(60)
        self._slow = slow = self._decay_slow * self._slow + self._sigma_slow * _N[bits & _MASK]
        self._fast = fast = self._decay_fast * self._fast + self._sigma_fast * _N[(bits >> 12) & _MASK]
        self._vibration = wobble = (
            self._decay_vibration * self._vibration + self._sigma_vibration * _N[(bits >> 24) & _MASK]
        )
        spare = bits >> 36
        temperature = process.temperature.value(t) + 0.05 * _N[spare & _MASK]
        state = process.state
        if state == RUNNING:
            return self.read_running(process, t, temperature, slow, fast, wobble, spare >> 12)
        profile = process.profile
        powered = state != "fault" and state != "maintenance"
        white = _N[(spare >> 12) & _MASK]
        readings: dict[str, float | None] = {"temperature": temperature}
        if powered:
            readings["vibration_rms"] = profile.idle_vibration_mm_s * (1.0 + 0.2 * white)
            level = profile.setup_power_kw if state == SETUP else profile.idle_power_kw
        else:
            readings["vibration_rms"] = 0.03 * (1.0 + 0.3 * white)
            level = profile.standby_power_kw
        readings["speed"] = 0.0
        readings["power"] = level * (1.0 + 0.05 * white + slow)
        machine_type = profile.type
        if machine_type is MachineType.HYDRAULIC_PRESS:
            readings["pressure"] = 2.0 + 0.1 * white if powered else 0.0  # pilot pressure only
            readings["cycle_time"] = process.last_cycle_s
        elif machine_type is MachineType.AIR_COMPRESSOR:
            readings["pressure"] = process.air.at(t)[0] + 0.005 * white
        elif machine_type is MachineType.CNC_MILL:
            readings["cycle_time"] = process.last_cycle_s
        return readings

    # ---- running, per type ------------------------------------------------------------------------

    @staticmethod
    def _faults(process: MachineProcess, t: float) -> tuple[float, float]:
        """(vibration added in mm/s, power factor) of the failure modes under way."""
        return process.effect("vibration_rms", t), 1.0 + process.effect("power", t)

    def _mill(
        self,
        process: MachineProcess,
        t: float,
        temperature: float,
        slow: float,
        fast: float,
        wobble: float,
        spare: int,
    ) -> dict[str, float | None]:
        c, job = process.c, process.job
        phase = (process.clock0 + (t - process.t) - process.cycle_start_clock) / process.cycle_s
        cut = 0.2
        for until, level in MILL_CYCLE_PROFILE:
            if phase < until:
                cut = level
                break
        added, factor = self._faults(process, t) if process.failures else (0.0, 1.0)
        load = 1.0 + slow + fast
        speed_factor = job.speed_factor
        power = (MILL_SPINDLE_IDLE_KW * speed_factor + c.rated_power_kw * job.load * cut * load) * factor
        vibration = c.base_vibration_mm_s * speed_factor * (0.45 + 0.55 * cut * load) * (1.0 + wobble) + added
        return {
            "temperature": temperature + 4.0 * slow,
            "vibration_rms": vibration,
            "speed": c.nominal_speed_rpm * speed_factor * (1.0 + 0.0005 * _N[spare & _MASK]),
            "power": power,
            "cycle_time": process.last_cycle_s,
        }

    def _press(
        self,
        process: MachineProcess,
        t: float,
        temperature: float,
        slow: float,
        fast: float,
        wobble: float,
        spare: int,
    ) -> dict[str, float | None]:
        c, job = process.c, process.job
        phase = (process.clock0 + (t - process.t) - process.cycle_start_clock) / process.cycle_s
        added, factor = self._faults(process, t) if process.failures else (0.0, 1.0)
        peak = c.max_pressure_bar * job.load
        if process.failures:
            peak *= 1.0 + process.effect("pressure", t)
        pressure = _stroke_pressure(phase, peak)
        share = pressure / c.max_pressure_bar
        demand = 0.3 + 0.9 * share
        return {
            "temperature": temperature + 3.0 * slow,
            "vibration_rms": c.base_vibration_mm_s * (0.75 + 0.25 * share) * (1.0 + 0.5 * slow + wobble)
            + added,
            "speed": 1_500.0
            * (1.0 - process.profile.rated_slip * demand)
            * (1.0 + 0.0003 * _N[spare & _MASK]),
            "power": c.rated_power_kw * demand * (1.0 + 0.5 * slow + 0.5 * fast) * factor,
            "pressure": pressure * (1.0 + 0.005 * _N[self._rng.getrandbits(12)]),
            "cycle_time": process.last_cycle_s,
        }

    def _conveyor(
        self,
        process: MachineProcess,
        t: float,
        temperature: float,
        slow: float,
        fast: float,
        wobble: float,
        spare: int,
    ) -> dict[str, float | None]:
        c = process.c
        added, factor = self._faults(process, t) if process.failures else (0.0, 1.0)
        load = process.job.load * (1.0 + slow + fast) * factor
        return {
            "temperature": temperature + 3.0 * slow,
            "vibration_rms": c.base_vibration_mm_s * (0.85 + 0.15 * load) * (1.0 + wobble) + added,
            "speed": 1_500.0 * (1.0 - process.profile.rated_slip * load) * (1.0 + 0.0005 * _N[spare & _MASK]),
            "power": c.rated_power_kw * (0.3 + 0.7 * load),
        }

    def _compressor(
        self,
        process: MachineProcess,
        t: float,
        temperature: float,
        slow: float,
        fast: float,
        wobble: float,
        spare: int,
    ) -> dict[str, float | None]:
        c = process.c
        pressure, loaded = process.air.at(t)
        added, factor = self._faults(process, t) if process.failures else (0.0, 1.0)
        if loaded:
            power = c.rated_power_kw * (1.0 + 0.04 * (pressure - c.cut_in_bar)) * (1.0 + 0.3 * fast) * factor
            shake, slip = 1.0, process.profile.rated_slip
        else:
            power = c.rated_power_kw * COMPRESSOR_UNLOADED_POWER_RATIO * (1.0 + 0.3 * fast)
            shake, slip = 0.85, 0.3 * process.profile.rated_slip
        return {
            "temperature": temperature,
            "vibration_rms": c.base_vibration_mm_s * shake * (1.0 + wobble) + added,
            "speed": 3_000.0 * (1.0 - slip) * (1.0 + 0.0003 * _N[spare & _MASK]),
            "power": power * (1.0 + 0.3 * slow),
            "pressure": pressure + 0.005 * _N[self._rng.getrandbits(12)],
        }


def _stroke_pressure(phase: float, peak: float) -> float:
    """System pressure along one stroke: approach, build-up, pressing, decompression, return."""
    low = PRESS_LOW_PRESSURE_BAR
    if phase < 0.3:
        return low
    if phase < 0.4:
        return low + (peak - low) * (phase - 0.3) / 0.1
    if phase < 0.65:
        return peak
    if phase < 0.75:
        return peak - (peak - low) * (phase - 0.65) / 0.1
    return low * 0.8
