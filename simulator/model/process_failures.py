"""A machine's failure modes: how they start, become visible and end, and the parts they spoil.

The methods here are half of `MachineProcess` (simulator/model/process.py), mixed into it: they work
on its state and keep none of their own.
"""

from __future__ import annotations

import math

from factory_core.payload_contract import FAILURE_MODE
from simulator.model.failure_modes import (
    MODES_BY_TYPE,
    THERMAL_DEVELOPMENT_FLOOR,
    Failure,
    ModeSpec,
    alarm_damage,
    damage_at,
    detectable_damage,
    progress_at,
    published_severity,
)
from simulator.model.labels import LabelEvent
from simulator.model.randomness import CounterRandom, stream_key

INF = math.inf
RUNNING_SHARE = 0.8  # share of time a machine runs, to place the onset of faults already under way at start


class FailureModes:
    """The failure-mode half of a machine's process."""

    __slots__ = ()

    # ---- starting and ending -----------------------------------------------------------------------------

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
                    **fault_fields(failure, self.damage(failure, self.t)),
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
                **fault_fields(failure, damage),
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


def fault_fields(failure: Failure, damage: float) -> dict[str, object]:
    """The fault keys of a label event about `failure` at `damage`."""
    return {
        "fault": failure.spec.name,
        "fault_class": FAILURE_MODE,
        "fault_id": failure.fault_id,
        "severity": published_severity(damage),
        "scheduled": failure.scheduled,
    }
