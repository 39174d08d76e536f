"""The process of one machine: states, jobs, failure modes, maintenance and production, event by event.

Everything that happens to a machine is an event at an exact simulated time, computed from the
machine's own counter-based streams; between events every quantity (temperature, damage, receiver
pressure, the running clock) is a closed-form function of time. So the process does not depend on
when, or how often, it is sampled: the same seed gives the same labels at any publish interval,
and a copy advanced by someone else (a downstream machine asking about its conveyor) stays in step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from factory_core.fleet import FaultSettings, MachineType, ScheduledFault
from factory_core.payload_contract import FAILURE_MODE
from simulator.model.air_system import AirPiece
from simulator.model.ambient import Ambient
from simulator.model.failure_modes import (
    MAINTENANCE_TIMES,
    MODES,
    MODES_BY_TYPE,
    THERMAL_DEVELOPMENT_FLOOR,
    TIMESCALES,
    Failure,
    ModeSpec,
    alarm_damage,
    damage_at,
    detectable_damage,
    progress_at,
    published_severity,
)
from simulator.model.labels import NO_EVENTS, LabelEvent
from simulator.model.line import LineFeed
from simulator.model.process_support import Job, ProcessConstants, draw_job, job_heat, thermal_factor
from simulator.model.profiles import (
    COMPRESSOR_DEMAND_MEAN_S,
    COMPRESSOR_FILL_RATE_BAR_S,
    COMPRESSOR_LEAK_TIME_CONSTANT_S,
    COMPRESSOR_UNLOADED_RISE_RATIO,
    COMPRESSOR_VENT_TIME_CONSTANT_S,
    CONVEYOR_LOAD_MEAN_S,
    FAULT,
    IDLE,
    MAINTENANCE,
    POWERED_STATES,
    RUNNING,
    SETUP,
    STATES,
    MachineProfile,
)
from simulator.model.randomness import CounterRandom, stream_key
from simulator.model.thermal import SEARCH_HORIZON_S, Lag, Temperature, first_crossing

INF = math.inf
RUNNING_SHARE = 0.8  # share of time a machine runs, to place the onset of faults already under way at start
_END_REASONS = {"corrective": "repaired", "condition_based": "condition_based", "preventive": "preventive"}


class MachineProcess:
    """State and events of one machine. `advance(t)` moves it to `t` and returns the label events."""

    __slots__ = (
        "_events",
        "_next_fault_id",
        "_next_kind",
        "_next_payload",
        "_plan",
        "_plan_cause",
        "_schedule",
        "air",
        "c",
        "clock0",
        "cycle_end_clock",
        "cycle_s",
        "cycle_start_clock",
        "demand",
        "failures",
        "feed",
        "feed_consumer",
        "held",
        "job",
        "last_cycle_s",
        "maintenance_cause",
        "maintenance_kind",
        "next_onset_clock",
        "next_period_s",
        "next_t",
        "parts_good",
        "parts_rejected",
        "pm_due_clock",
        "produces_parts",
        "production",
        "profile",
        "rng",
        "settings",
        "state",
        "state_seconds",
        "state_until",
        "t",
        "temperature",
        "temperature_alarmed",
        "timescale",
    )

    def __init__(
        self,
        profile: MachineProfile,
        settings: FaultSettings,
        rng: CounterRandom,
        production: CounterRandom | None,
        ambient: Ambient,
        start_epoch_ms: int = 0,
        scheduled: Iterable[ScheduledFault] = (),
        feed: LineFeed | None = None,
    ) -> None:
        self.profile, self.settings, self.rng, self.production = profile, settings, rng, production
        self.timescale = TIMESCALES[settings.timescale]
        # A copy that only tells its neighbours when it runs (line.py) counts no parts: None.
        self.produces_parts = profile.produces_parts and production is not None
        self.c = ProcessConstants.draw(profile, rng, ambient, start_epoch_ms)
        self._schedule = sorted(
            (item for item in scheduled if item.fault in MODES), key=lambda item: item.at_s, reverse=True
        )
        self._events: list[LabelEvent] = []
        self._next_fault_id = 1
        self._plan, self._plan_cause = INF, None
        self.t = self.clock0 = 0.0
        self.failures: list[Failure] = []
        self.state_seconds = dict.fromkeys(STATES, 0.0)
        self.parts_good = self.parts_rejected = 0
        self.held, self.temperature_alarmed = False, False
        self.maintenance_kind, self.maintenance_cause = "", None
        self.feed, self.feed_consumer = feed, (feed.register() if feed is not None else -1)
        self.job: Job = draw_job(profile, self.c, rng)
        self.demand = self.c.demand_mean * self.c.demand_by_hour(0.0)
        self.next_period_s = self._draw_period()
        self.state = RUNNING if rng.random() < profile.initial_running_probability else IDLE
        self.state_until = self._draw_dwell(self.state)
        interval = self._pm_interval_s()
        self.pm_due_clock = rng.random() * interval  # machines start part-way through their PM cycle
        self.next_onset_clock = rng.expovariate(self._onset_rate())
        self.cycle_s = self.last_cycle_s = self.job.cycle_s
        self.cycle_start_clock = -rng.random() * self.cycle_s
        self.cycle_end_clock = self.cycle_start_clock + self.cycle_s
        self._events.append(LabelEvent("state_change", 0.0, 0.0, to_state=self.state, reason="start"))
        self._start_with_faults_under_way()
        self.temperature = Temperature(
            self.c.ambient, Lag(0.0, profile.thermal_time_constant_s, 0.0, 0.0, 0.0)
        )
        self.air = AirPiece(0.0, self.c.cut_in_bar + rng.random(), rng.random() < 0.5, self.c.cut_in_bar)
        self._rebuild(warm=True)
        self._reschedule()

    # ---- clocks and derived quantities ---------------------------------------------------------

    def clock(self, t: float) -> float:
        """Running seconds since the start of the run (the clock wear and production follow)."""
        return self.clock0 + (t - self.t) if self.state == RUNNING else self.clock0

    def _at_clock(self, clock: float) -> float:
        """Simulated time at which the running clock reaches `clock` (inf unless running)."""
        if self.state != RUNNING:
            return INF
        return self.t + max(0.0, clock - self.clock0)

    def damage(self, failure: Failure, t: float) -> float:
        return failure.damage(self.clock(t))

    def health(self, t: float) -> float:
        """Ground truth: 1 - the worst damage of the failure modes under way."""
        return 1.0 - max((self.damage(f, t) for f in self.failures), default=0.0)

    def effect(self, name: str, t: float) -> float:
        """Sum over the failure modes under way of their effect `name` at their damage now."""
        return self.effect_at_clock(name, self.clock(t))

    def effect_at_clock(self, name: str, clock: float) -> float:
        total = 0.0
        for failure in self.failures:
            gain = failure.spec.effects.get(name)
            if gain:
                total += gain * failure.damage(clock)
        return total

    def _onset_rate(self) -> float:
        scale, timescale = self.settings.failure_rate_scale, self.timescale
        return sum(scale / timescale.running_s(spec.mtbf_h) for spec in MODES_BY_TYPE[self.profile.type])

    def _pm_interval_s(self) -> float:
        return self.timescale.running_s(self.profile.pm_interval_h)

    def _draw_period(self) -> float:
        machine_type = self.profile.type
        if machine_type is MachineType.AIR_COMPRESSOR:
            return self.t + self.rng.expovariate(1.0 / COMPRESSOR_DEMAND_MEAN_S)
        if machine_type is MachineType.CONVEYOR:
            return self.t + self.rng.expovariate(1.0 / CONVEYOR_LOAD_MEAN_S)
        return INF

    def _draw_dwell(self, state: str) -> float:
        profile, rng = self.profile, self.rng
        if state == RUNNING:
            dwell = rng.expovariate(1.0 / profile.mean_running_s)
        elif state == IDLE:
            dwell = rng.expovariate(1.0 / profile.mean_idle_s)
        elif state == SETUP:
            dwell = rng.lognormal_with_mean(profile.mean_setup_s, 0.4)
        elif state == FAULT:  # waiting for a technician
            stream = self.maintenance_cause.rng if self.maintenance_cause is not None else rng
            assert stream is not None
            dwell = stream.expovariate(1.0 / self.timescale.wait_s(MAINTENANCE_TIMES.technician_wait_h))
        else:
            dwell = self._maintenance_duration()
        return self.t + max(1.0, dwell)

    def _maintenance_duration(self) -> float:
        timescale, cause = self.timescale, self.maintenance_cause
        if self.maintenance_kind == "preventive" or cause is None:
            return self.rng.lognormal_with_mean(timescale.repair_s(self.profile.pm_duration_h), 0.3)
        factor = MAINTENANCE_TIMES.corrective_factor if self.maintenance_kind == "corrective" else 1.0
        assert cause.rng is not None
        return cause.rng.lognormal_with_mean(timescale.repair_s(cause.spec.repair_h * factor), 0.5)

    # ---- time advance ----------------------------------------------------------------------------

    def advance(self, t_new: float) -> Sequence[LabelEvent]:
        """Handle every event up to `t_new`, produce up to `t_new`; return the label events in order."""
        while self.next_t <= t_new:
            self._handle_next()
        if self.state == RUNNING and self.produces_parts:
            self._produce(self.clock0 + (t_new - self.t))
        if not self._events:
            return NO_EVENTS  # the common case: no list allocated per sample
        events, self._events = self._events, []
        return events

    def advance_one(self) -> list[LabelEvent]:
        """Handle the next event only (a line's conveyor copy is walked this way)."""
        self._handle_next()
        events, self._events = self._events, []
        return events

    def _handle_next(self) -> None:
        t = self.next_t
        if self.state == RUNNING and self.produces_parts:
            self._produce(self.clock(t))
        self._anchor(t)
        kind, payload = self._next_kind, self._next_payload
        getattr(self, "_on_" + kind)(payload)
        self._rebuild()
        self._reschedule()

    def _anchor(self, t: float) -> None:
        """Move the clocks to `t`: the running clock and the time spent in the current state."""
        self.clock0 = self.clock(t)
        self.state_seconds[self.state] += t - self.t
        self.t = t

    # ---- events ------------------------------------------------------------------------------------

    def _on_state(self, _: object) -> None:
        state = self.state
        if state == RUNNING:
            if self._pm_due():
                self._start_maintenance("preventive", None, "preventive_maintenance")
            elif self.rng.random() < self.profile.changeover_probability:
                self._enter(SETUP, "changeover")
            else:
                self._enter(IDLE, "waiting")
        elif state == IDLE:
            if self._pm_due():
                self._start_maintenance("preventive", None, "preventive_maintenance")
            else:
                self._start_running("resumed")
        elif state == SETUP:
            self.job = draw_job(self.profile, self.c, self.rng)
            self.cycle_s = self.job.cycle_s
            self.cycle_start_clock = self.clock0
            self.cycle_end_clock = self.clock0 + self.cycle_s
            self._start_running("setup_done")
        elif state == FAULT:
            self._enter(MAINTENANCE, "repair_started", self.maintenance_cause)
        else:
            self._finish_maintenance()

    def _on_inject(self, item: ScheduledFault) -> None:
        self._schedule.pop()
        duration = INF if item.duration_s is None else item.duration_s
        failure = self._start_failure(
            MODES[item.fault], item.severity, self.t, scheduled=True, end_s=self.t + duration
        )
        if failure.knot_damage >= 1.0 and self.state not in (FAULT, MAINTENANCE):
            self._trip(failure.spec.trip_reason, failure)  # injected as a functional failure

    def _on_remove(self, failure: Failure) -> None:
        self._end_failures([failure], "cleared")

    def _on_knot(self, failure: Failure) -> None:
        failure.pass_knot()
        self._emit_fault("fault_update", failure, failure.knot_damage)
        if failure.knot_damage >= 1.0:  # functional failure, if nothing stopped the machine before
            self._trip(failure.spec.trip_reason, failure)

    def _on_detect(self, failure: Failure) -> None:
        failure.detectable_from_s = self.t
        self._emit_fault("fault_update", failure, self.damage(failure, self.t))

    def _on_alarm(self, failure: Failure) -> None:
        failure.alarmed = True
        self._plan_maintenance(failure)

    def _on_temperature_alarm(self, _: object) -> None:
        self.temperature_alarmed = True
        cause = self._hottest_failure()
        if cause is not None:
            self._plan_maintenance(cause)

    def _on_temperature_trip(self, _: object) -> None:
        self._trip("overtemperature_trip", self._hottest_failure())

    def _on_plan(self, _: object) -> None:
        cause, self._plan, self._plan_cause = self._plan_cause, INF, None
        if self.state not in (FAULT, MAINTENANCE) and cause in self.failures:
            self._start_maintenance("condition_based", cause, "condition_based_maintenance")

    def _on_onset(self, _: object) -> None:
        specs = MODES_BY_TYPE[self.profile.type]
        spec = specs[self.rng.pick(tuple(1.0 / s.mtbf_h for s in specs))]
        self.next_onset_clock = self.clock0 + self.rng.expovariate(self._onset_rate())
        if all(f.spec.name != spec.name for f in self.failures):
            self._start_failure(spec, 0.01, self.t, scheduled=False)

    def _on_feed(self, _: object) -> None:
        blocked = self._feed_blocks()
        if blocked and self.state == RUNNING:
            self.held = True
            self._enter(IDLE, self.profile.feed_role or "starved")
            self.state_until = INF
        elif not blocked and self.held:
            self.held = False
            if self.state == IDLE:
                self._start_running("resumed")

    def _on_period(self, _: object) -> None:
        rng = self.rng
        if self.profile.type is MachineType.AIR_COMPRESSOR:
            mean = self.c.demand_mean * self.c.demand_by_hour(self.t)
            self.demand = min(0.95, max(0.05, mean + 0.6 * (self.demand - mean) + rng.gauss(0.0, 0.08)))
        else:
            job, load = self.job, rng.uniform(*self.profile.job_load_range)
            self.job = Job(
                job.speed_factor, load, job.cycle_s, job_heat(self.profile.type, job.speed_factor, load)
            )
        self.next_period_s = self._draw_period()

    def _on_recheck(self, _: object) -> None:
        """Nothing happened within the search horizon: look again from here."""

    # ---- transitions ---------------------------------------------------------------------------------

    def _enter(self, state: str, reason: str, cause: Failure | None = None) -> None:
        previous, self.state = self.state, state
        self.state_until = self._draw_dwell(state)
        fields = _fault_fields(cause, self.damage(cause, self.t)) if cause is not None else {}
        self._events.append(
            LabelEvent(
                "state_change", self.t, self.t, from_state=previous, to_state=state, reason=reason, **fields
            )
        )

    def _start_running(self, reason: str) -> None:
        if self._feed_blocks():
            self.held = True
            if self.state != IDLE:
                self._enter(IDLE, self.profile.feed_role or "starved")
            self.state_until = INF
            return
        self._enter(RUNNING, reason)

    def _feed_blocks(self) -> bool:
        feed = self.feed
        if feed is None:
            return False
        up, since, _ = feed.status(self.feed_consumer, self.t)
        return not up and self.t - since >= self.profile.buffer_s

    def _pm_due(self) -> bool:
        return self.settings.maintenance != "run_to_failure" and self.clock0 >= self.pm_due_clock

    def _trip(self, reason: str, cause: Failure | None) -> None:
        self._plan, self._plan_cause = INF, None
        self.maintenance_kind, self.maintenance_cause = "corrective", cause
        self.held = False
        self._enter(FAULT, reason, cause)

    def _plan_maintenance(self, cause: Failure) -> None:
        if self.settings.maintenance != "condition_based" or self._plan < INF:
            return
        if self.state in (FAULT, MAINTENANCE):
            return
        assert cause.rng is not None
        delay = cause.rng.expovariate(1.0 / self.timescale.wait_s(MAINTENANCE_TIMES.planning_h))
        self._plan, self._plan_cause = self.t + delay, cause

    def _start_maintenance(self, kind: str, cause: Failure | None, reason: str) -> None:
        self.maintenance_kind, self.maintenance_cause = kind, cause
        self.held = False
        self._enter(MAINTENANCE, reason, cause)

    def _finish_maintenance(self) -> None:
        kind = self.maintenance_kind
        self._end_failures(list(self.failures), _END_REASONS.get(kind, "repaired"))
        if kind == "preventive":
            self.pm_due_clock = self.clock0 + self._pm_interval_s()
        self.temperature_alarmed = False
        self.maintenance_kind, self.maintenance_cause = "", None
        self._enter(IDLE, "maintenance_done")

    # ---- failure modes -----------------------------------------------------------------------------

    def _start_failure(
        self, spec: ModeSpec, damage: float, onset_s: float, *, scheduled: bool, end_s: float = INF
    ) -> Failure:
        # Everything the fault decides comes from its own stream, so a run with and without it stays
        # the same until the fault changes what the machine does.
        rng = CounterRandom(stream_key(self.rng.key, "failure", self._next_fault_id))
        develop_s = self.timescale.development_s(
            rng.uniform(*spec.development_h), self._development_floor(spec)
        )
        failure = Failure(
            self._next_fault_id,
            spec,
            onset_s,
            scheduled,
            develop_s,
            self.clock0,
            damage,
            end_s=end_s,
            rng=rng,
        )
        self._next_fault_id += 2  # failure modes take the odd ids, sensor faults the even ones
        failure.start_segment()
        failure.detect_damage = detectable_damage(spec, self.profile, self.c.healthy)
        if self.settings.maintenance == "condition_based":
            failure.alarm_damage = alarm_damage(spec, self.profile, self.c.healthy["vibration_rms"])
        if damage >= failure.detect_damage or damage >= self._thermal_detect_damage(failure):
            failure.detectable_from_s = self._detected_before(failure, damage)
        self.failures.append(failure)
        self._emit_fault("fault_start", failure, damage, at_s=onset_s)
        return failure

    def _development_floor(self, spec: ModeSpec) -> float:
        if spec.trip != "temperature":
            return 0.0
        return THERMAL_DEVELOPMENT_FLOOR * self.profile.thermal_time_constant_s

    def _detected_before(self, failure: Failure, damage: float) -> float:
        """When a fault already past its visibility became visible: now, or before the run began."""
        if failure.onset_s >= self.t:
            return failure.onset_s
        visible = min(failure.detect_damage, self._thermal_detect_damage(failure))
        growth = failure.spec.growth
        running = (progress_at(damage, growth) - progress_at(visible, growth)) * failure.develop_s
        return max(failure.onset_s, self.t - running / RUNNING_SHARE)

    def _thermal_detect_damage(self, failure: Failure) -> float:
        gain = failure.spec.effect("temperature")
        if gain <= 0.0:
            return INF
        return self.c.temperature_band / gain

    def _start_with_faults_under_way(self) -> None:
        """Machines start mid-life: some failure modes are already developing, in proportion to how
        long they last against how often they start (the stationary share)."""
        timescale, rate_scale = self.timescale, self.settings.failure_rate_scale
        reach = 1.0 if self.settings.maintenance == "run_to_failure" else 0.8
        for spec in MODES_BY_TYPE[self.profile.type]:
            develop_s = timescale.development_s(0.5 * sum(spec.development_h), self._development_floor(spec))
            share = min(0.5, rate_scale / timescale.running_s(spec.mtbf_h) * develop_s * reach)
            if self.rng.random() < share:
                progress = self.rng.uniform(0.0, reach)
                damage = max(0.01, damage_at(progress, spec.growth))
                onset = -progress * develop_s / RUNNING_SHARE
                self._start_failure(spec, damage, onset, scheduled=False)

    def _end_failures(self, ended: list[Failure], reason: str) -> None:
        for failure in ended:
            self.failures.remove(failure)
            self._events.append(
                LabelEvent(
                    "fault_end",
                    self.t,
                    failure.onset_s,
                    end_s=self.t,
                    detectable_from_s=failure.detectable_from_s,
                    reason=reason,
                    **_fault_fields(failure, self.damage(failure, self.t)),
                )
            )
            if self._plan_cause is failure:
                self._plan, self._plan_cause = INF, None

    def _emit_fault(self, event: str, failure: Failure, damage: float, at_s: float | None = None) -> None:
        self._events.append(
            LabelEvent(
                event,
                self.t if at_s is None else at_s,
                failure.onset_s,
                detectable_from_s=failure.detectable_from_s,
                **_fault_fields(failure, damage),
            )
        )

    def _hottest_failure(self) -> Failure | None:
        heating = [f for f in self.failures if f.spec.effect("temperature") > 0.0]
        if not heating:
            return None
        return max(heating, key=lambda f: f.spec.effect("temperature") * self.damage(f, self.t))

    # ---- production ------------------------------------------------------------------------------------

    def _produce(self, clock: float) -> None:
        """Complete the cycles that end by running clock `clock`: one draw per cycle, in cycle order,
        with faults as they were when the cycle ended, so parts do not depend on sampling either."""
        while self.cycle_end_clock <= clock:
            assert self.production is not None
            bits = self.production.bits()
            end = self.cycle_end_clock
            rejects = self.profile.base_reject_rate
            if self.failures:
                rejects += self.effect_at_clock("rejects", end)
            if (bits & 0xFFFFF) * 9.5367431640625e-07 < rejects:  # 20 low bits as a uniform
                self.parts_rejected += 1
            else:
                self.parts_good += 1
            self.last_cycle_s = self.cycle_s
            slower = 1.0 + self.effect_at_clock("cycle_time", end) if self.failures else 1.0
            overhead = self.profile.cycle_overhead * (0.5 + (bits >> 40) * 5.960464477539063e-08)
            self.cycle_s = self.job.cycle_s * (1.0 + overhead) * slower
            self.cycle_start_clock = self.cycle_end_clock
            self.cycle_end_clock += self.cycle_s

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


def _fault_fields(failure: Failure, damage: float) -> dict[str, object]:
    return {
        "fault": failure.spec.name,
        "fault_class": FAILURE_MODE,
        "fault_id": failure.fault_id,
        "severity": published_severity(damage),
        "scheduled": failure.scheduled,
    }
