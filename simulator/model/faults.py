"""Injected faults: failure modes change the machine, sensor faults change one reading."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, get_args

from factory_core.fleet import ScheduledFault

# The one list of fault names is the `ScheduledFault.fault` literal in settings; split it by effect.
FAULT_KINDS: Final[tuple[str, ...]] = get_args(ScheduledFault.model_fields["fault"].annotation)
FAILURE_MODES: Final[tuple[str, ...]] = ("bearing_wear", "overheating", "tool_wear")
SENSOR_FAULTS: Final[tuple[str, ...]] = ("stuck", "drift", "spike", "noise_burst", "dropout")
if set(FAULT_KINDS) != {*FAILURE_MODES, *SENSOR_FAULTS}:  # pragma: no cover - guards a settings edit
    raise RuntimeError(f"fault kinds in settings {FAULT_KINDS} are not all modelled")

FAILURE_MODE, SENSOR = "failure_mode", "sensor"

# A failure mode of at least this severity ends in the fault state once fully developed.
TRIP_SEVERITY = 0.5
# Overheating (a failed cooler): the temperature heads for this much above normal at severity 1,
# with the hot spot's time constant, so severity means the same on every type: from about 0.55-0.7
# (by type) it reaches the trip point, 0.2 runs some 20 °C hot.
OVERHEAT_RISE_C = 100.0
OVERHEAT_TIME_CONSTANT_S = 240.0
OVERHEAT_RAMP_S = 60.0
# Mean durations of sensor faults that were not given a duration (seconds); 0 = a single reading.
SENSOR_FAULT_MEAN_S: Final[dict[str, float]] = {
    "stuck": 900.0,
    "drift": 3_600.0,
    "spike": 0.0,
    "noise_burst": 180.0,
    "dropout": 60.0,
}
SPIKE_PROBABILITY = 0.3  # per reading inside a spike window longer than one reading


def development_time_s(kind: str, severity: float) -> float:
    """Running time a failure mode needs to develop fully: severe faults develop faster."""
    if kind == "bearing_wear":
        return 3_600.0 * (4.5 - 2.5 * severity)  # 2 h at severity 1, 4 h at 0.2
    if kind == "tool_wear":
        return 3_600.0 * (2.5 - 1.5 * severity)  # 1 h at severity 1
    return OVERHEAT_RAMP_S


@dataclass(slots=True)
class ActiveFault:
    """One injected fault instance on one machine, from onset until it ends."""

    fault_id: int
    kind: str
    severity: float
    onset_s: float
    end_s: float  # math.inf: until repaired
    scheduled: bool
    signal: str | None = None  # sensor faults: the reading they corrupt
    progress: float = 0.0  # failure modes: 0 at onset, 1 fully developed
    direction: float = 1.0  # drift and spike sign
    stuck_value: float | None = None
    single_reading: bool = False  # a spike without a duration hits exactly one reading
    develop_s: float = OVERHEAT_RAMP_S
    scale: float = 1.0  # sensor faults: typical magnitude of the corrupted signal
    rng: random.Random | None = None  # sensor faults: the fault's own stream

    @property
    def fault_class(self) -> str:
        return FAILURE_MODE if self.kind in FAILURE_MODES else SENSOR

    @property
    def impact(self) -> float:
        """How strongly a failure mode shows right now, 0..1."""
        return self.severity * self.progress


def corrupt_reading(fault: ActiveFault, value: float | None, now_s: float) -> float | None:
    """What a faulty sensor reports instead of `value`."""
    kind, scale, rng = fault.kind, fault.scale, fault.rng
    assert rng is not None, "sensor faults carry their own stream"
    if kind == "dropout":
        return None
    if value is None:
        return None
    if kind == "stuck":
        if fault.stuck_value is None:
            fault.stuck_value = value
        return fault.stuck_value
    if kind == "drift":
        hours = max(0.0, now_s - fault.onset_s) / 3_600.0
        return value + fault.direction * fault.severity * 0.5 * scale * hours
    if kind == "noise_burst":
        return value + rng.gauss(0.0, fault.severity * 0.3 * scale)
    # spike: a downward spike that would read below zero shows upward instead, so it is visible
    spike = fault.direction * fault.severity * 2.0 * scale
    if value + spike < 0.0:
        spike = -spike
    if fault.single_reading:
        fault.end_s = now_s  # ends at the reading it corrupted; reported with the next step
        return value + spike
    if rng.random() < SPIKE_PROBABILITY:
        return value + spike
    return value


def lognormal_with_mean(rng: random.Random, mean_s: float, sigma: float = 0.5) -> float:
    """Skewed dwell time with the given mean, as repair and changeover times are in practice."""
    return rng.lognormvariate(math.log(mean_s) - sigma * sigma / 2.0, sigma)
