"""Sensor faults: one reading of one machine is corrupted; the machine itself is unaffected."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from factory_core.fleet import SENSOR_FAULTS
from factory_core.payload_contract import SENSOR

# Mean durations of sensor faults that were not given a duration (seconds); 0 = a single reading.
SENSOR_FAULT_MEAN_S: Final[dict[str, float]] = {
    "stuck": 900.0,
    "drift": 3_600.0,
    "spike": 0.0,
    "noise_burst": 180.0,
    "dropout": 60.0,
}
SPIKE_PROBABILITY = 0.3  # per reading inside a spike window longer than one reading
DRIFT_PER_HOUR = 0.5  # drift offset per hour, relative to the signal's typical value, at severity 1
if set(SENSOR_FAULT_MEAN_S) != set(SENSOR_FAULTS):  # pragma: no cover - guards a settings edit
    raise RuntimeError("every sensor fault in factory_core.fleet.SENSOR_FAULTS needs a mean duration")


@dataclass(slots=True)
class SensorFault:
    """One sensor fault instance on one machine, from onset until it ends."""

    fault_id: int
    kind: str
    severity: float
    onset_s: float
    end_s: float
    scheduled: bool
    signal: str
    scale: float  # typical magnitude of the corrupted signal
    rng: random.Random  # the fault's own stream
    direction: float = 1.0  # drift and spike sign
    stuck_value: float | None = None
    single_reading: bool = False  # a spike without a duration hits exactly the next reading
    detectable_from_s: float | None = None

    fault_class = SENSOR


def drift_visible_after_s(severity: float, scale: float, band: float) -> float:
    """How long a drift takes to leave the signal's healthy band."""
    rate = DRIFT_PER_HOUR * severity * scale / 3_600.0
    return band / rate if rate > 0.0 else math.inf


def corrupt_reading(fault: SensorFault, value: float | None, now_s: float) -> float | None:
    """What a faulty sensor reports instead of `value`."""
    kind, scale, rng = fault.kind, fault.scale, fault.rng
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
        return value + fault.direction * fault.severity * DRIFT_PER_HOUR * scale * hours
    if kind == "noise_burst":
        return value + rng.gauss(0.0, fault.severity * 0.3 * scale)
    # spike: a downward spike that would read below zero shows upward instead, so it is visible
    spike = fault.direction * fault.severity * 2.0 * scale
    if value + spike < 0.0:
        spike = -spike
    if fault.single_reading or rng.random() < SPIKE_PROBABILITY:
        return value + spike
    return value
