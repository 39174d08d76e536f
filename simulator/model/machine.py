"""One simulated machine: state machine, physics, wear and faults, advanced on a simulated clock.

Pure: all randomness comes from the machine's own `random.Random`, all time from the caller.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from factory_core.fleet import FaultSettings, MachineType, ScheduledFault
from simulator.model.faults import (
    FAILURE_MODES,
    OVERHEAT_RISE_C,
    OVERHEAT_TIME_CONSTANT_S,
    SENSOR_FAULT_MEAN_S,
    SENSOR_FAULTS,
    TRIP_SEVERITY,
    ActiveFault,
    corrupt_reading,
    development_time_s,
    lognormal_with_mean,
)
from simulator.model.profiles import (
    COMPRESSOR_BAND_BAR,
    COMPRESSOR_FILL_RATE_BAR_S,
    COMPRESSOR_LEAK_TIME_CONSTANT_S,
    COMPRESSOR_STANDBY_DROP_BAR,
    COMPRESSOR_UNLOADED_POWER_RATIO,
    COMPRESSOR_UNLOADED_RISE_RATIO,
    COMPRESSOR_VENT_TIME_CONSTANT_S,
    FAULT,
    IDLE,
    MAINTENANCE,
    POWERED_STATES,
    PRESS_LOW_PRESSURE_BAR,
    RUNNING,
    SETUP,
    STATES,
    MachineProfile,
)

INF = math.inf
# Standard normal quantiles at 4096 evenly spaced probabilities (|z| <= 3.6): sensor noise drawn by
# table look-up, since random.gauss costs more than the rest of a reading.
_NORMAL_TABLE_SIZE = 4096
_STANDARD_NORMAL: tuple[float, ...] = tuple(
    NormalDist().inv_cdf((k + 0.5) / _NORMAL_TABLE_SIZE) for k in range(_NORMAL_TABLE_SIZE)
)
PREVENTIVE_HEALTH = 0.6  # an idle machine this worn (age, not acute faults) gets planned maintenance
FAILURE_RATE_WEAR_FACTOR = 3.0  # failure modes start up to 4x as often on a worn machine
DEMAND_TIME_CONSTANT_S = 900.0  # compressed-air demand wanders on this time scale


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """A ground-truth fact: a state change or a fault starting or ending (times in simulated s)."""

    event: str  # "state_change" | "fault_start" | "fault_end"
    onset_s: float  # when the change happened, or when the fault began
    end_s: float | None = None  # fault_end: when the fault ended
    fault: str | None = None
    fault_class: str | None = None
    fault_id: int | None = None
    signal: str | None = None
    severity: float | None = None
    scheduled: bool = False
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None


_NO_EVENTS: tuple[LabelEvent, ...] = ()


def _onset_probability(rate_per_hour: float, dt: float) -> float:
    expected = rate_per_hour * dt / 3_600.0
    return expected if expected < 1e-3 else -math.expm1(-expected)


def _event_time(event: LabelEvent) -> float:
    return event.end_s if event.end_s is not None else event.onset_s


def _fault_fields(fault: ActiveFault) -> dict[str, Any]:
    return {
        "fault": fault.kind,
        "fault_class": fault.fault_class,
        "fault_id": fault.fault_id,
        "signal": fault.signal,
        "severity": fault.severity,
        "scheduled": fault.scheduled,
    }


class Machine:
    """State and step function of one machine. `advance(t)` moves it to simulated time `t`."""

    __slots__ = (
        "_alpha_cache",
        "_events",
        "_next_fault_id",
        "_schedule",
        "_schedule_pos",
        "_sensor_schedule",
        "_sensor_schedule_pos",
        "ambient_c",
        "base_health",
        "base_vibration",
        "compressor_loaded",
        "current_cycle_s",
        "cut_in_bar",
        "cycle_elapsed_s",
        "demand_fraction",
        "demand_mean",
        "fault_settings",
        "faults",
        "ideal_cycle_time_s",
        "last_cycle_s",
        "next_sensor_onset_s",
        "nominal_speed",
        "parts_good",
        "parts_rejected",
        "peak_pressure_bar",
        "pressure_bar",
        "profile",
        "random_sensor_faults",
        "rng",
        "running_power",
        "sensor_fault_seed",
        "state",
        "state_seconds",
        "state_until",
        "t",
        "temperature_c",
    )

    def __init__(
        self,
        profile: MachineProfile,
        fault_settings: FaultSettings,
        rng: random.Random,
        sensor_fault_seed: int,
        scheduled: Iterable[ScheduledFault] = (),
    ) -> None:
        self.profile = profile
        self.fault_settings = fault_settings
        # `rng` drives the process and the measurement noise. Sensor faults draw from streams of
        # their own (one per fault, keyed by `sensor_fault_seed`), so a sensor fault changes the one
        # reading it corrupts and nothing else: runs with and without it compare sample by sample.
        # Per-fault streams instead of a second Mersenne Twister per machine keep 10,000 machines
        # small (each generator holds 2.5 KB of state).
        self.rng = rng
        self.sensor_fault_seed = sensor_fault_seed
        self.random_sensor_faults = 0
        ordered = sorted(scheduled, key=lambda item: item.at_s)
        self._schedule = [item for item in ordered if item.fault in FAILURE_MODES]
        self._schedule_pos = 0
        self._sensor_schedule = [item for item in ordered if item.fault in SENSOR_FAULTS]
        self._sensor_schedule_pos = 0
        self._next_fault_id = 1
        self._events: list[LabelEvent] = []
        self._alpha_cache: tuple[float, float] = (-1.0, 0.0)
        self.t = 0.0
        # Each machine is an individual: its own ambient, nameplate and wear, drawn in a fixed order.
        self.ambient_c = rng.uniform(20.0, 25.0)
        self.nominal_speed = profile.nominal_speed_rpm * (1.0 + rng.uniform(-1, 1) * profile.speed_spread)
        self.running_power = profile.running_power_kw * rng.uniform(0.85, 1.15)
        self.base_vibration = profile.running_vibration_mm_s * rng.uniform(0.75, 1.25)
        self.ideal_cycle_time_s = round(profile.ideal_cycle_time_s * rng.uniform(0.8, 1.2), 1)
        self.peak_pressure_bar = rng.uniform(180.0, 240.0)
        self.cut_in_bar = round(rng.uniform(6.3, 7.0), 1)
        self.demand_mean = rng.uniform(0.4, 0.7)
        self.demand_fraction = self.demand_mean
        self.base_health = rng.uniform(0.85, 1.0)
        self.pressure_bar = self.cut_in_bar + rng.random() * COMPRESSOR_BAND_BAR
        self.compressor_loaded = rng.random() < self.demand_mean
        self.parts_good = 0
        self.parts_rejected = 0
        self.faults: list[ActiveFault] = []
        self.cycle_elapsed_s = rng.random() * self.ideal_cycle_time_s
        self.current_cycle_s = self._draw_cycle_time()
        self.last_cycle_s = self.current_cycle_s
        self.state_seconds = dict.fromkeys(STATES, 0.0)
        self.state = RUNNING if rng.random() < profile.initial_running_probability else IDLE
        self.state_until = self._draw_dwell(self.state)
        # Start warm, as a machine that has been working before the run began.
        self.temperature_c = self._temperature_target()
        rate = fault_settings.sensor_fault_per_hour
        self.next_sensor_onset_s = (
            self._sensor_fault_rng("random", 0).expovariate(rate / 3_600.0) if rate > 0 else INF
        )
        self._events.append(LabelEvent("state_change", 0.0, to_state=self.state, reason="start"))

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def health(self) -> float:
        """Ground-truth health: wear, lowered further by developing failure modes."""
        impact = max((f.impact for f in self.faults if f.kind in FAILURE_MODES), default=0.0)
        return max(0.0, min(1.0, self.base_health * (1.0 - 0.6 * impact)))

    def active_fault_kinds(self) -> frozenset[str]:
        return frozenset(f.kind for f in self.faults)

    def _impact(self, kind: str) -> float:
        impact = 0.0
        for fault in self.faults:
            if fault.kind == kind and fault.impact > impact:
                impact = fault.impact
        return impact

    def _signal_scale(self, signal: str) -> float:
        """Typical magnitude of a signal on this machine: how far a faulty sensor strays."""
        if signal == "temperature":
            return 30.0
        if signal == "vibration_rms":
            return 2.0 * self.base_vibration
        if signal == "speed":
            return self.nominal_speed
        if signal == "power":
            return self.running_power
        if signal == "pressure":
            compressor = self.profile.type is MachineType.AIR_COMPRESSOR
            return self.cut_in_bar if compressor else self.peak_pressure_bar
        return self.ideal_cycle_time_s or 1.0

    def _draw_cycle_time(self) -> float:
        profile = self.profile
        if not profile.produces_parts:
            return INF
        slow = 1.0 + profile.cycle_overhead * (0.5 + self.rng.random())
        wear = 1.0 + 0.15 * self._impact("tool_wear") if self.faults else 1.0
        return self.ideal_cycle_time_s * slow * wear

    def _draw_dwell(self, state: str) -> float:
        profile, settings, rng = self.profile, self.fault_settings, self.rng
        if state == RUNNING:
            dwell = rng.expovariate(1.0 / profile.mean_running_s)
        elif state == IDLE:
            dwell = rng.expovariate(1.0 / profile.mean_idle_s)
        elif state == SETUP:
            dwell = lognormal_with_mean(rng, profile.mean_setup_s, 0.4)
        elif state == FAULT:  # waiting for a technician
            dwell = rng.expovariate(1.0 / (0.2 * settings.mean_repair_s))
        else:
            dwell = lognormal_with_mean(rng, settings.mean_repair_s, 0.5)
        return self.t + max(1.0, dwell)

    def _temperature_target(self) -> float:
        profile, state = self.profile, self.state
        if state == RUNNING:
            rise = profile.temperature_rise_running_c
            if profile.type is MachineType.AIR_COMPRESSOR:
                # Loaded share of time equals demand; thermal inertia averages over load cycles.
                duty = self.demand_fraction
                rise *= COMPRESSOR_UNLOADED_RISE_RATIO + (1 - COMPRESSOR_UNLOADED_RISE_RATIO) * duty
        elif state in POWERED_STATES:
            rise = profile.temperature_rise_idle_c
        else:
            rise = 0.0
        if self.faults:
            if state == RUNNING:
                rise += 8.0 * self._impact("bearing_wear")  # friction heat of a failing bearing
            if state in POWERED_STATES:
                rise += OVERHEAT_RISE_C * self._impact("overheating")
        return self.ambient_c + rise

    # ---- time advance -------------------------------------------------------------------------

    def advance(self, t_new: float) -> Sequence[LabelEvent]:
        """Move to simulated time `t_new`; return the label events of (t, t_new] in time order.

        The process is integrated piecewise between its own events (state changes, failure modes
        starting or ending). Sensor faults only matter when a reading is taken, so they never split
        the integration: the machine behaves the same with or without them.
        """
        schedule = self._schedule
        while True:
            next_scheduled = schedule[self._schedule_pos].at_s if self._schedule_pos < len(schedule) else INF
            next_fault_end = (
                min((f.end_s for f in self.faults if f.kind in FAILURE_MODES), default=INF)
                if self.faults
                else INF
            )
            t_event = min(next_scheduled, self.state_until, next_fault_end)
            if t_event > t_new:
                break
            if t_event > self.t:
                self._integrate(t_event)
            if t_event == next_scheduled:
                self._inject(schedule[self._schedule_pos], max(t_event, 0.0))
                self._schedule_pos += 1
            elif t_event == next_fault_end:
                self._end_faults(t_event, sensor=False)
            else:
                self._leave_state(t_event)
        if t_new > self.t:
            self._integrate(t_new)
        self._advance_sensor_faults(t_new)
        if not self._events:
            return _NO_EVENTS  # the common case: no list allocated per sample
        events, self._events = self._events, []
        if len(events) > 1:
            events.sort(key=_event_time)
        return events

    def _integrate(self, t1: float) -> None:
        """Continuous dynamics over [self.t, t1] in the current state, then trips and random onsets."""
        dt = t1 - self.t
        self.t = t1
        profile, state = self.profile, self.state
        self.state_seconds[state] += dt
        running = state == RUNNING
        powered = state in POWERED_STATES

        load = 1.0 if running else (0.25 if powered else 0.0)
        if load:
            self.base_health = max(
                0.0, self.base_health - self.fault_settings.health_decay_per_hour * load * dt / 3_600.0
            )
        for fault in self.faults:
            if fault.kind == "overheating":
                if powered:
                    fault.progress = min(1.0, fault.progress + dt / fault.develop_s)
            elif running and fault.kind in FAILURE_MODES:
                fault.progress = min(1.0, fault.progress + dt / fault.develop_s)

        if profile.type is MachineType.AIR_COMPRESSOR:
            self._advance_compressor(dt, running)

        # First-order thermal lag, solved exactly so any step length is stable.
        if powered and self.faults and self._impact("overheating") > 0.0:
            # The sensor sits at the hot spot of the failed cooling circuit, which heats faster
            # than the machine's bulk (oil tank, motor frame).
            tau = min(profile.thermal_time_constant_s, OVERHEAT_TIME_CONSTANT_S)
            alpha = -math.expm1(-dt / tau)
        else:
            cached_dt, alpha = self._alpha_cache
            if cached_dt != dt:
                alpha = -math.expm1(-dt / profile.thermal_time_constant_s)
                self._alpha_cache = (dt, alpha)
        self.temperature_c += (self._temperature_target() - self.temperature_c) * alpha

        if running and profile.produces_parts:
            self._produce(dt)

        self._random_onsets(dt, running, t1)

        if powered:
            self._check_trips(t1)

    def _advance_compressor(self, dt: float, running: bool) -> None:
        rng = self.rng
        # Air demand: mean-reverting random walk, the plant's consumption.
        keep = math.exp(-dt / DEMAND_TIME_CONSTANT_S)
        spread = 0.1 * math.sqrt(1.0 - keep * keep)
        demand = self.demand_mean + (self.demand_fraction - self.demand_mean) * keep + rng.gauss(0, spread)
        self.demand_fraction = demand = min(0.95, max(0.05, demand))
        if not running:
            self.compressor_loaded = False
            state = self.state
            if state == MAINTENANCE:
                target, tau = 0.0, COMPRESSOR_VENT_TIME_CONSTANT_S
            elif state == FAULT:  # tripped: demand and leaks drain the receiver
                target, tau = 0.0, COMPRESSOR_LEAK_TIME_CONSTANT_S
            else:  # standby: stopped for lack of demand, the network stays near cut-in
                target, tau = self.cut_in_bar - COMPRESSOR_STANDBY_DROP_BAR, COMPRESSOR_LEAK_TIME_CONSTANT_S
            self.pressure_bar = target + (self.pressure_bar - target) * math.exp(-dt / tau)
            return
        fill = COMPRESSOR_FILL_RATE_BAR_S * (1.0 - demand)
        drain = COMPRESSOR_FILL_RATE_BAR_S * demand
        cut_in, cut_out = self.cut_in_bar, self.cut_in_bar + COMPRESSOR_BAND_BAR
        pressure, loaded, remaining = self.pressure_bar, self.compressor_loaded, dt
        period = COMPRESSOR_BAND_BAR / fill + COMPRESSOR_BAND_BAR / drain
        while remaining > 0.0:
            if pressure < cut_in:
                loaded = True
            if loaded:
                to_switch = max(0.0, (cut_out - pressure) / fill)
                if to_switch > remaining:
                    pressure += fill * remaining
                    break
                pressure, loaded = cut_out, False
            else:
                to_switch = max(0.0, (pressure - cut_in) / drain)
                if to_switch > remaining:
                    pressure -= drain * remaining
                    break
                pressure, loaded = cut_in, True
            remaining -= to_switch
            # Whole load/unload cycles change nothing: skip them (long steps at high --speed).
            if remaining > period:
                remaining %= period
        self.pressure_bar, self.compressor_loaded = pressure, loaded

    def _produce(self, dt: float) -> None:
        self.cycle_elapsed_s += dt
        if self.cycle_elapsed_s < self.current_cycle_s:
            return
        rng = self.rng
        reject_rate = self.profile.base_reject_rate
        if self.faults:
            reject_rate += 0.35 * self._impact("tool_wear") + 0.05 * self._impact("bearing_wear")
        while self.cycle_elapsed_s >= self.current_cycle_s:
            self.cycle_elapsed_s -= self.current_cycle_s
            self.last_cycle_s = self.current_cycle_s
            if rng.random() < reject_rate:
                self.parts_rejected += 1
            else:
                self.parts_good += 1
            self.current_cycle_s = self._draw_cycle_time()

    def _random_onsets(self, dt: float, running: bool, now: float) -> None:
        """Poisson onsets of failure modes, only under load; a worn machine fails more often."""
        settings = self.fault_settings
        if running:
            base_rate = (
                settings.bearing_wear_per_hour + settings.overheating_per_hour + settings.tool_wear_per_hour
            )
            if base_rate > 0.0 and self.rng.random() < _onset_probability(
                base_rate * (1.0 + FAILURE_RATE_WEAR_FACTOR * (1.0 - self.base_health)), dt
            ):
                rng = self.rng
                pick = rng.random() * base_rate
                if pick < settings.bearing_wear_per_hour:
                    kind = "bearing_wear"
                elif pick < settings.bearing_wear_per_hour + settings.overheating_per_hour:
                    kind = "overheating"
                else:
                    kind = "tool_wear"
                # Worn machines fail harder.
                severity = min(1.0, max(0.1, rng.betavariate(2.0, 3.0) + 0.5 * (1.0 - self.base_health)))
                if not any(f.kind == kind for f in self.faults):
                    self._start_fault(kind, round(severity, 2), now, None, scheduled=False)

    def _check_trips(self, now: float) -> None:
        if self.temperature_c >= self.profile.trip_temperature_c:
            cause = next((f for f in self.faults if f.kind == "overheating"), None)
            self._enter(FAULT, now, "overtemperature_trip", cause)
            return
        for fault in self.faults:
            if (
                fault.kind in ("bearing_wear", "tool_wear")
                and fault.progress >= 1.0
                and fault.severity >= TRIP_SEVERITY
            ):
                reason = "bearing_failure" if fault.kind == "bearing_wear" else "tool_breakage"
                self._enter(FAULT, now, reason, fault)
                return
        if self.base_health <= 0.0:
            self._enter(FAULT, now, "worn_out", None)

    # ---- discrete events ----------------------------------------------------------------------

    def _sensor_fault_rng(self, origin: str, number: int) -> random.Random:
        """The stream of one sensor fault: stable whatever else the machine does."""
        return random.Random(f"{self.sensor_fault_seed}:{origin}:{number}")

    def _advance_sensor_faults(self, t_new: float) -> None:
        """Start the scheduled and random sensor faults due by `t_new`, in time order, then end the
        ones whose time is up. Random onsets form a Poisson process of their own."""
        schedule = self._sensor_schedule
        rate_per_s = self.fault_settings.sensor_fault_per_hour / 3_600.0
        while True:
            pos = self._sensor_schedule_pos
            scheduled_at = schedule[pos].at_s if pos < len(schedule) else INF
            random_at = self.next_sensor_onset_s
            if min(scheduled_at, random_at) > t_new:
                break
            if scheduled_at <= random_at:
                item = schedule[pos]
                self._sensor_schedule_pos += 1
                rng = self._sensor_fault_rng("scheduled", pos)
                self._start_fault(
                    item.fault, item.severity, item.at_s, item.duration_s, scheduled=True, rng=rng
                )
            else:
                self.random_sensor_faults += 1
                rng = self._sensor_fault_rng("random", self.random_sensor_faults)
                kind = SENSOR_FAULTS[int(rng.random() * len(SENSOR_FAULTS)) % len(SENSOR_FAULTS)]
                severity = round(min(1.0, max(0.1, rng.betavariate(2.0, 2.0))), 2)
                self._start_fault(kind, severity, random_at, None, scheduled=False, rng=rng)
                self.next_sensor_onset_s = random_at + rng.expovariate(rate_per_s)
        self._end_faults(t_new, sensor=True)

    def _inject(self, item: ScheduledFault, now: float) -> None:
        self._start_fault(item.fault, item.severity, now, item.duration_s, scheduled=True)

    def _start_fault(
        self,
        kind: str,
        severity: float,
        now: float,
        duration_s: float | None,
        *,
        scheduled: bool,
        rng: random.Random | None = None,
    ) -> None:
        fault = ActiveFault(
            fault_id=self._next_fault_id,
            kind=kind,
            severity=severity,
            onset_s=now,
            end_s=INF if duration_s is None else now + duration_s,
            scheduled=scheduled,
        )
        self._next_fault_id += 1
        if rng is not None:  # sensor fault
            signals = self.profile.signals
            fault.signal = signals[int(rng.random() * len(signals)) % len(signals)]
            fault.rng = rng
            fault.scale = self._signal_scale(fault.signal)
            fault.direction = 1.0 if rng.random() < 0.5 else -1.0
            if duration_s is None:
                mean_s = SENSOR_FAULT_MEAN_S[kind]
                if mean_s > 0:
                    fault.end_s = now + max(1.0, rng.expovariate(1.0 / mean_s))
                else:
                    fault.single_reading = True
        else:
            fault.develop_s = development_time_s(kind, severity)
        self.faults.append(fault)
        self._events.append(LabelEvent("fault_start", now, **_fault_fields(fault)))

    def _end_faults(self, now: float, *, sensor: bool, reason: str = "cleared") -> None:
        """End the sensor faults or the failure modes whose time is up."""
        if not self.faults:
            return
        kinds = SENSOR_FAULTS if sensor else FAILURE_MODES
        ended = [f for f in self.faults if f.end_s <= now and f.kind in kinds]
        if not ended:
            return
        self.faults = [f for f in self.faults if f not in ended]
        for fault in ended:
            self._events.append(
                LabelEvent(
                    "fault_end", fault.onset_s, end_s=fault.end_s, reason=reason, **_fault_fields(fault)
                )
            )

    def _enter(self, state: str, now: float, reason: str, cause: ActiveFault | None = None) -> None:
        previous = self.state
        self.state = state
        if state == SETUP:
            self.cycle_elapsed_s = 0.0  # a changeover starts a new job
        self.state_until = self._draw_dwell(state)
        extra: dict[str, Any] = {}
        if cause is not None:
            extra = _fault_fields(cause)
            extra["signal"] = None
        self._events.append(
            LabelEvent("state_change", now, from_state=previous, to_state=state, reason=reason, **extra)
        )

    def _leave_state(self, now: float) -> None:
        """The dwell time of the current state is over: pick the next state."""
        state = self.state
        if state == RUNNING:
            if self.rng.random() < self.profile.changeover_probability:
                self._enter(SETUP, now, "changeover")
            else:
                self._enter(IDLE, now, "starved")
        elif state == IDLE:
            if self.base_health < PREVENTIVE_HEALTH:
                self._enter(MAINTENANCE, now, "preventive_maintenance")
            else:
                self._enter(RUNNING, now, "resumed")
        elif state == SETUP:
            self._enter(RUNNING, now, "setup_done")
        elif state == FAULT:
            self._enter(MAINTENANCE, now, "repair_started")
        else:
            self._repair(now)
            self._enter(IDLE, now, "repaired")

    def _repair(self, now: float) -> None:
        """Maintenance replaces worn parts: health restored, failure modes gone."""
        self.base_health = self.rng.uniform(0.95, 1.0)
        for fault in self.faults:
            if fault.kind in FAILURE_MODES:
                fault.end_s = now
        self._end_faults(now, sensor=False, reason="repaired")

    # ---- readings -----------------------------------------------------------------------------

    def measure(self, *, noisy: bool = True) -> dict[str, float | None]:
        """Sensor readings at the current time, in payload units, after sensor faults."""
        profile, state = self.profile, self.state
        rng = self.rng
        if noisy:
            uniform = rng.random

            def z() -> float:  # standard normal from a quantile table: ~5x cheaper than gauss()
                return _STANDARD_NORMAL[int(uniform() * _NORMAL_TABLE_SIZE)]
        else:

            def z() -> float:
                return 0.0

        running = state == RUNNING
        powered = state in POWERED_STATES
        machine_type = profile.type
        bearing = self._impact("bearing_wear") if self.faults else 0.0

        readings: dict[str, float | None] = {}
        readings["temperature"] = self.temperature_c + 0.1 * z()

        if running:
            vibration = self.base_vibration * (1.0 + 0.06 * z())
            if machine_type is MachineType.AIR_COMPRESSOR and not self.compressor_loaded:
                vibration *= 0.85
            vibration += profile.bearing_vibration_gain_mm_s * bearing**1.5
        elif powered:
            vibration = profile.idle_vibration_mm_s * (1.0 + 0.2 * z())
        else:
            vibration = 0.03 * (1.0 + 0.3 * z())
        readings["vibration_rms"] = vibration

        readings["speed"] = self.nominal_speed * (1.0 + 0.002 * z()) if running else 0.0

        stroke_phase = self.cycle_elapsed_s / self.current_cycle_s if self.current_cycle_s < INF else 0.0
        if running:
            if machine_type is MachineType.CNC_MILL:
                cut = 0.75 + 0.5 * (rng.random() if noisy else 0.5)
                tool = self._impact("tool_wear") if self.faults else 0.0
                power = self.running_power * cut * (1.0 + 0.25 * tool + 0.1 * bearing)
            elif machine_type is MachineType.HYDRAULIC_PRESS:
                pressure_share = self._press_pressure(stroke_phase) / self.peak_pressure_bar
                power = self.running_power * (0.3 + 0.9 * pressure_share) * (1.0 + 0.03 * z())
            elif machine_type is MachineType.CONVEYOR:
                power = self.running_power * (0.85 + 0.1 * z()) * (1.0 + 0.15 * bearing)
            else:
                share = 1.0 if self.compressor_loaded else COMPRESSOR_UNLOADED_POWER_RATIO
                tool = self._impact("tool_wear") if self.faults else 0.0  # air-end wear costs energy
                power = self.running_power * share * (1.0 + 0.2 * tool) * (1.0 + 0.02 * z())
        elif state == IDLE:
            power = profile.idle_power_kw * (1.0 + 0.05 * z())
        elif state == SETUP:
            power = profile.setup_power_kw * (1.0 + 0.1 * z())
        else:
            power = profile.standby_power_kw * (1.0 + 0.05 * z())
        readings["power"] = power

        if machine_type is MachineType.HYDRAULIC_PRESS:
            if running:
                pressure = self._press_pressure(stroke_phase) * (1.0 + 0.01 * z())
            elif powered:
                pressure = 2.0 + 0.1 * z()  # pilot pressure with the main pump off
            else:
                pressure = 0.0  # depressurised: required before anyone works on it
            readings["pressure"] = pressure
            readings["cycle_time"] = self.last_cycle_s
        elif machine_type is MachineType.AIR_COMPRESSOR:
            readings["pressure"] = self.pressure_bar + 0.01 * z()
        elif machine_type is MachineType.CNC_MILL:
            readings["cycle_time"] = self.last_cycle_s

        if self.faults:
            now = self.t
            for fault in self.faults:
                if fault.signal is not None:
                    readings[fault.signal] = corrupt_reading(fault, readings[fault.signal], now)

        for name, low, high, decimals in profile.output_format:
            value = readings[name]
            if value is not None:
                readings[name] = round(high if value > high else (low if value < low else value), decimals)
        return readings

    def _press_pressure(self, phase: float) -> float:
        """System pressure along one stroke: approach, build-up, pressing, decompression, return."""
        low, peak = PRESS_LOW_PRESSURE_BAR, self.peak_pressure_bar
        if phase < 0.3:
            return low
        if phase < 0.4:
            return low + (peak - low) * (phase - 0.3) / 0.1
        if phase < 0.65:
            return peak
        if phase < 0.75:
            return peak - (peak - low) * (phase - 0.65) / 0.1
        return low * 0.8
