"""One simulated machine: its process, its sensors and the sensor faults between them.

Pure: all randomness comes from the machine's own streams, all time from the caller. The process
(simulator/model/process.py) decides what happens; the sensors read it at sample times; sensor
faults corrupt single readings and never change what the machine does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence

from factory_core.fleet import SENSOR_FAULTS, FaultSettings, MachineType, ScheduledFault
from simulator.model.ambient import Ambient
from simulator.model.failure_modes import DETECT_SIGMAS
from simulator.model.faults import (
    SENSOR_FAULT_MEAN_S,
    SensorFault,
    corrupt_reading,
    drift_visible_after_s,
)
from simulator.model.labels import NO_EVENTS, LabelEvent
from simulator.model.line import LineFeed
from simulator.model.process import MachineProcess
from simulator.model.profiles import RUNNING, MachineProfile
from simulator.model.randomness import CounterRandom, stream_key
from simulator.model.signals import Sensors

INF = math.inf


def _sort_key(event: LabelEvent) -> float:
    # Faults already under way at start have onsets before 0; they stay after the `start` event.
    return max(event.at_s, 0.0)


def build_process(
    profile: MachineProfile,
    settings: FaultSettings,
    machine_key: int,
    ambient: Ambient,
    start_epoch_ms: int,
    scheduled: Iterable[ScheduledFault] = (),
    feed: LineFeed | None = None,
    *,
    count_parts: bool = True,
) -> MachineProcess:
    """A machine's process from its key: the same arguments always give the same process
    (`count_parts` False: a copy that only tells when it runs, see line.py)."""
    return MachineProcess(
        profile,
        settings,
        CounterRandom(stream_key(machine_key, "process")),
        CounterRandom(stream_key(machine_key, "production")) if count_parts else None,
        ambient,
        start_epoch_ms,
        scheduled,
        feed,
    )


class Machine:
    """Process, sensors and sensor faults of one machine. `advance(t)`, then `measure()`."""

    __slots__ = (
        "_output",
        "_pending_spikes",
        "_sensor_count",
        "_sensor_schedule",
        "next_sensor_onset_s",
        "process",
        "random_sensor_faults",
        "sensor_fault_seed",
        "sensor_faults",
        "sensors",
        "t",
    )

    def __init__(
        self,
        process: MachineProcess,
        sensors: Sensors,
        sensor_fault_seed: int,
        scheduled: Iterable[ScheduledFault] = (),
    ) -> None:
        self.process, self.sensors = process, sensors
        self.sensor_fault_seed = sensor_fault_seed
        self.random_sensor_faults = self._sensor_count = 0
        self.sensor_faults: list[SensorFault] = []
        self._pending_spikes: list[SensorFault] = []
        ordered = sorted((item for item in scheduled if item.fault in SENSOR_FAULTS), key=lambda i: i.at_s)
        self._sensor_schedule = list(enumerate(ordered))[::-1]  # popped from the end, earliest first
        self.t = 0.0
        # (signal, low, high, 10**decimals) in payload order: how each reading is clamped and rounded.
        self._output = tuple(
            (name, low, high, 10.0**decimals) for name, low, high, decimals in process.profile.output_format
        )
        rate = process.settings.sensor_fault_per_hour
        self.next_sensor_onset_s = (
            self._sensor_fault_rng("random", 0).expovariate(rate / 3_600.0) if rate > 0 else INF
        )

    @property
    def profile(self) -> MachineProfile:
        return self.process.profile

    # ---- time advance ------------------------------------------------------------------------------

    def advance(self, t_new: float) -> Sequence[LabelEvent]:
        """Move to simulated time `t_new`; return the label events of (t, t_new] in time order."""
        events = self.process.advance(t_new)
        if (
            self.sensor_faults
            or self._pending_spikes
            or self.next_sensor_onset_s <= t_new
            or (self._sensor_schedule and self._sensor_schedule[-1][1].at_s <= t_new)
        ):
            sensor_events: Sequence[LabelEvent] = self._advance_sensor_faults(t_new)
        else:
            sensor_events = NO_EVENTS
        self.t = t_new
        if not sensor_events:
            return events
        return sorted([*events, *sensor_events], key=_sort_key)

    def _advance_sensor_faults(self, t_new: float) -> list[LabelEvent]:
        """Start the scheduled and random sensor faults due by `t_new`, in time order, then end the
        ones whose time is up. Random onsets form a Poisson process of their own."""
        events: list[LabelEvent] = []
        if self._pending_spikes and self._pending_spikes[-1].onset_s <= self.t:
            self._pending_spikes.clear()  # no reading was taken since (labels only): nothing to hit
        schedule = self._sensor_schedule
        rate_per_s = self.process.settings.sensor_fault_per_hour / 3_600.0
        while True:
            scheduled_at = schedule[-1][1].at_s if schedule else INF
            random_at = self.next_sensor_onset_s
            if min(scheduled_at, random_at) > t_new:
                break
            if scheduled_at <= random_at:
                position, item = schedule.pop()
                rng = self._sensor_fault_rng("scheduled", position)
                self._start(item.fault, item.severity, item.at_s, item.duration_s, True, rng, events)
            else:
                self.random_sensor_faults += 1
                rng = self._sensor_fault_rng("random", self.random_sensor_faults)
                kind = SENSOR_FAULTS[int(rng.random() * len(SENSOR_FAULTS)) % len(SENSOR_FAULTS)]
                severity = round(min(1.0, max(0.1, rng.betavariate(2.0, 2.0))), 2)
                self._start(kind, severity, random_at, None, False, rng, events)
                self.next_sensor_onset_s = random_at + rng.expovariate(rate_per_s)
        ended = [fault for fault in self.sensor_faults if fault.end_s <= t_new]
        if ended:
            self.sensor_faults = [fault for fault in self.sensor_faults if fault.end_s > t_new]
            events.extend(_sensor_event("fault_end", fault) for fault in ended)
        events.sort(key=_sort_key)
        return events

    def _sensor_fault_rng(self, origin: str, number: int) -> random.Random:
        """The stream of one sensor fault: stable whatever else the machine does."""
        return random.Random(f"{self.sensor_fault_seed}:{origin}:{number}")

    def _start(
        self,
        kind: str,
        severity: float,
        onset_s: float,
        duration_s: float | None,
        scheduled: bool,
        rng: random.Random,
        events: list[LabelEvent],
    ) -> None:
        signals = self.profile.signals
        signal = signals[int(rng.random() * len(signals)) % len(signals)]
        # Sensor faults take the even ids, failure modes the odd ones: each keeps its own count.
        self._sensor_count += 1
        fault_id = 2 * self._sensor_count
        fault = SensorFault(
            fault_id, kind, severity, onset_s, INF, scheduled, signal, self._scale(signal), rng
        )
        fault.direction = 1.0 if rng.random() < 0.5 else -1.0
        if duration_s is None:
            mean_s = SENSOR_FAULT_MEAN_S[kind]
            if mean_s > 0:
                fault.end_s = onset_s + max(1.0, rng.expovariate(1.0 / mean_s))
            else:
                fault.single_reading, fault.end_s = True, onset_s
        else:
            fault.end_s = onset_s + duration_s
        if kind == "drift":
            visible = onset_s + drift_visible_after_s(severity, fault.scale, self._band(signal))
            fault.detectable_from_s = visible if visible <= fault.end_s else None
        else:
            fault.detectable_from_s = onset_s
        events.append(_sensor_event("fault_start", fault))
        if fault.single_reading:
            self._pending_spikes.append(fault)
            events.append(_sensor_event("fault_end", fault))
        else:
            self.sensor_faults.append(fault)

    def _scale(self, signal: str) -> float:
        """Typical magnitude of a signal on this machine: how far a faulty sensor strays."""
        c = self.process.c
        if signal == "temperature":
            return 30.0
        if signal == "vibration_rms":
            return 2.0 * c.base_vibration_mm_s
        if signal == "speed":
            return c.nominal_speed_rpm
        if signal == "power":
            return c.rated_power_kw
        if signal == "pressure":
            compressor = self.profile.type is MachineType.AIR_COMPRESSOR
            return c.cut_in_bar if compressor else c.max_pressure_bar
        return c.ideal_cycle_time_s or 1.0

    def _band(self, signal: str) -> float:
        """The healthy band of a signal on this machine (what a drift must exceed to be visible)."""
        sigma = self.profile.healthy_sigma
        if signal == "temperature":
            return self.process.c.temperature_band
        relative = sigma.get(signal, 0.02)
        return DETECT_SIGMAS * relative * self._scale(signal) / (2.0 if signal == "vibration_rms" else 1.0)

    # ---- readings --------------------------------------------------------------------------------

    def measure(self, t: float | None = None) -> dict[str, float | None]:
        """Sensor readings at the current time, in payload units, after sensor faults."""
        now = self.t if t is None else t
        process = self.process
        readings = self.sensors.read(process, now)
        if self.sensor_faults or self._pending_spikes:
            for fault in (*self.sensor_faults, *self._pending_spikes):
                readings[fault.signal] = corrupt_reading(fault, readings[fault.signal], now)
            self._pending_spikes.clear()
            if process.state != RUNNING and readings["speed"] is not None:
                readings["speed"] = 0.0  # the drive reports 0 when it is off, whatever the encoder says
        floor = math.floor
        for name, low, high, scale in self._output:
            value = readings[name]
            if value is not None:
                value = high if value > high else (low if value < low else value)
                readings[name] = floor(value * scale + 0.5) / scale
        return readings

    def active_fault_kinds(self) -> frozenset[str]:
        kinds = {failure.spec.name for failure in self.process.failures}
        kinds.update(fault.kind for fault in self.sensor_faults)
        return frozenset(kinds)


def _sensor_event(event: str, fault: SensorFault) -> LabelEvent:
    ending = event == "fault_end"
    return LabelEvent(
        event,
        fault.end_s if ending else fault.onset_s,
        fault.onset_s,
        end_s=fault.end_s if ending else None,
        detectable_from_s=fault.detectable_from_s
        if (ending or fault.detectable_from_s == fault.onset_s)
        else None,
        fault=fault.kind,
        fault_class=fault.fault_class,
        fault_id=fault.fault_id,
        signal=fault.signal,
        severity=fault.severity,
        scheduled=fault.scheduled,
        reason="cleared" if ending else None,
    )
