"""What a machine's process does between events: closed-form pieces, and when the next event is.

The methods here are half of `MachineProcess` (simulator/model/process.py), mixed into it: they work
on its state and keep none of their own.
"""

from __future__ import annotations

import math

from factory_core.fleet import MachineType
from simulator.model.air_system import AirPiece
from simulator.model.failure_modes import Failure
from simulator.model.process_support import thermal_factor
from simulator.model.profiles import (
    COMPRESSOR_FILL_RATE_BAR_S,
    COMPRESSOR_LEAK_TIME_CONSTANT_S,
    COMPRESSOR_UNLOADED_RISE_RATIO,
    COMPRESSOR_VENT_TIME_CONSTANT_S,
    FAULT,
    MAINTENANCE,
    POWERED_STATES,
    RUNNING,
)
from simulator.model.thermal import SEARCH_HORIZON_S, Lag, Temperature, first_crossing

INF = math.inf


class Pieces:
    """The between-events half of a machine's process."""

    __slots__ = ()

    # ---- pieces between events ----------------------------------------------------------------------

    def _rebuild(self, *, warm: bool = False) -> None:
        """Start new closed-form pieces at `self.t` (temperature, receiver) for the current state."""
        t, state = self.t, self.state
        rise, slope = self._heat(t)
        start = rise if warm else self.temperature.heat.value(t)
        self.temperature = Temperature(
            self.c.ambient, Lag(t, self.profile.thermal_time_constant_s, start, rise, slope)
        )
        if self.profile.type is MachineType.AIR_COMPRESSOR:
            pressure, loaded = self.air.at(t)
            cut_in = self.c.cut_in_bar
            if state == RUNNING:
                demand, capacity = self._air_demand(t)
                self.air = AirPiece.cycling_from(
                    t,
                    pressure,
                    loaded,
                    cut_in,
                    COMPRESSOR_FILL_RATE_BAR_S * (capacity - demand),
                    COMPRESSOR_FILL_RATE_BAR_S * demand,
                )
            elif state == MAINTENANCE:
                self.air = AirPiece.decaying_from(t, pressure, cut_in, 0.0, COMPRESSOR_VENT_TIME_CONSTANT_S)
            else:  # standby or tripped: the receiver only loses pressure
                target = 0.0 if state == FAULT else cut_in - 0.3
                self.air = AirPiece.decaying_from(
                    t, pressure, cut_in, target, COMPRESSOR_LEAK_TIME_CONSTANT_S
                )

    def _air_demand(self, t: float) -> tuple[float, float]:
        """(air demand, capacity) as shares of the compressor's rated delivery, faults included."""
        demand = self.demand * (1.0 + self.effect("demand", t))
        capacity = 1.0 + self.effect("capacity", t)
        return demand, capacity

    def duty(self, t: float) -> float:
        demand, capacity = self._air_demand(t)
        return min(1.0, demand / max(capacity, 1e-6))

    def _heat(self, t: float) -> tuple[float, float]:
        """Temperature rise above the hall the machine heads for now, and its slope (°C/s)."""
        profile, state = self.profile, self.state
        if state == RUNNING:
            rise = profile.temperature_rise_running_c * self.job.heat
            if profile.type is MachineType.AIR_COMPRESSOR:
                ratio = COMPRESSOR_UNLOADED_RISE_RATIO
                rise *= ratio + (1.0 - ratio) * self.duty(t)
        elif state in POWERED_STATES:
            rise = profile.temperature_rise_idle_c
        else:
            rise = 0.0
        slope = 0.0
        factor = thermal_factor(state)
        for failure in self.failures:
            gain = failure.spec.effect("temperature") * factor
            if gain:
                rise += gain * self.damage(failure, t)
                if state == RUNNING:
                    slope += gain * failure.slope
        return rise, slope

    def temperature_at(self, t: float) -> float:
        return self.temperature.value(t)

    # ---- what happens next -------------------------------------------------------------------------

    def _reschedule(self) -> None:
        candidates: list[tuple[float, str, object]] = [(self.state_until, "state", None)]
        if self._schedule:
            candidates.append((max(self._schedule[-1].at_s, self.t), "inject", self._schedule[-1]))
        running = self.state == RUNNING
        for failure in self.failures:
            candidates.append((failure.end_s, "remove", failure))
            if running:
                candidates.append(
                    (
                        self._at_clock(failure.clock_at(failure.next_damage)) if failure.slope > 0 else INF,
                        "knot",
                        failure,
                    )
                )
            if failure.detectable_from_s is None:
                candidates.append((self._at_damage(failure, failure.detect_damage), "detect", failure))
            if not failure.alarmed:
                candidates.append((self._at_damage(failure, failure.alarm_damage), "alarm", failure))
        candidates.append((self._plan, "plan", None))
        if running and self.next_onset_clock < INF:
            candidates.append((self._at_clock(self.next_onset_clock), "onset", None))
        candidates.append((self.next_period_s, "period", None))
        if self.feed is not None:
            candidates.append((self._next_feed_event(), "feed", None))
        when, kind, payload = min(candidates, key=lambda item: item[0])
        horizon = when if when < INF else self.t + SEARCH_HORIZON_S
        for crossing in self._thermal_crossings(horizon):
            if crossing[0] < when or (crossing[0] == when and kind == "recheck"):
                when, kind, payload = crossing
        if when == INF:
            when, kind, payload = horizon, "recheck", None
        self.next_t, self._next_kind, self._next_payload = when, kind, payload

    def _at_damage(self, failure: Failure, damage: float) -> float:
        if damage > 1.0:
            return INF
        if damage <= failure.knot_damage:
            return self.t
        return self._at_clock(failure.clock_at(damage))

    def _thermal_crossings(self, horizon: float) -> list[tuple[float, str, object]]:
        """Temperature trip and alarm, and faults whose heat becomes visible, before `horizon`."""
        found: list[tuple[float, str, object]] = []
        profile, temperature, tau = self.profile, self.temperature, self.profile.thermal_time_constant_s
        if self.state in POWERED_STATES and temperature.upper_bound(horizon) >= profile.alarm_temperature_c:
            trip = first_crossing(temperature.value, self.t, horizon, profile.trip_temperature_c, tau)
            if trip is not None:
                found.append((trip, "temperature_trip", None))
            if not self.temperature_alarmed and any(f.spec.alarm == "temperature" for f in self.failures):
                alarm = first_crossing(temperature.value, self.t, horizon, profile.alarm_temperature_c, tau)
                if alarm is not None:
                    found.append((alarm, "temperature_alarm", None))
        band, factor = self.c.temperature_band, thermal_factor(self.state)
        for failure in self.failures:
            gain = failure.spec.effect("temperature") * factor
            if gain <= 0.0 or failure.detectable_from_s is not None:
                continue
            excess = Lag(
                self.t,
                tau,
                self._excess_now(failure),
                gain * self.damage(failure, self.t),
                gain * failure.slope if self.state == RUNNING else 0.0,
            )
            if excess.upper_bound(horizon) >= band:
                when = first_crossing(excess.value, self.t, horizon, band, tau)
                if when is not None:
                    found.append((when, "detect", failure))
        return found

    def _excess_now(self, failure: Failure) -> float:
        """The share of the temperature this fault causes now: its heat lagged from onset (approx.)."""
        gain = failure.spec.effect("temperature") * thermal_factor(self.state)
        return (
            gain
            * self.damage(failure, self.t)
            * (1.0 - math.exp(-max(0.0, self.t - failure.onset_s) / self.profile.thermal_time_constant_s))
        )

    def _next_feed_event(self) -> float:
        assert self.feed is not None
        up, since, next_change = self.feed.status(self.feed_consumer, self.t)
        if up:
            return next_change
        blocks_at = since + self.profile.buffer_s
        if blocks_at > self.t:
            return min(blocks_at, next_change)
        return next_change if self.held else INF
