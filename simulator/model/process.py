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
from simulator.model.air_system import AirPiece
from simulator.model.ambient import Ambient
from simulator.model.failure_modes import (
    MAINTENANCE_TIMES,
    MODES,
    MODES_BY_TYPE,
    TIMESCALES,
    Failure,
)
from simulator.model.labels import NO_EVENTS, LabelEvent
from simulator.model.line import LineFeed
from simulator.model.process_failures import FailureModes, fault_fields
from simulator.model.process_pieces import Pieces
from simulator.model.process_support import Job, ProcessConstants, draw_job, job_heat
from simulator.model.profiles import (
    COMPRESSOR_DEMAND_MEAN_S,
    CONVEYOR_LOAD_MEAN_S,
    FAULT,
    IDLE,
    MAINTENANCE,
    RUNNING,
    SETUP,
    STATES,
    MachineProfile,
)
from simulator.model.randomness import CounterRandom
from simulator.model.thermal import Lag, Temperature

INF = math.inf
_END_REASONS = {"corrective": "repaired", "condition_based": "condition_based", "preventive": "preventive"}


class MachineProcess(FailureModes, Pieces):
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
        fields = fault_fields(cause, self.damage(cause, self.t)) if cause is not None else {}
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
