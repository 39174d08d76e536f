"""Event-based scoring of detections against labelled windows (after the Numenta Anomaly Benchmark).

Each fault is a window: from onset to the machine's stop (trip or maintenance) for a failure mode,
from onset to end for a sensor fault. A window is detected by a detection inside it; its first
detection gives the lead time. Detections outside every window are false; those closer than
`merge_s` on one machine form one false alarm (a detector that fires on every sample while it is
worried raises one alarm, not thousands). Detections while a machine is stopped for a fault or
maintenance (and for `grace_s` after) are ignored, unless they fall in a window (a sensor fault can
happen at any time): the plant knows the machine is down.

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark",
IEEE ICMLA 2015 (arXiv:1510.03336): windows, first detection per window, scaled sigmoid reward,
standard profile weights. Lead time before failure follows PHM practice (Saxena et al., "Metrics for
Evaluating Performance of Prognostic Techniques", PHM 2008).
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from factory_core.fleet import FAILURE_MODES, SENSOR_FAULTS, MachineType
from factory_core.score_report import (
    FAILURE_MODES_ROW,
    OVERALL_ROW,
    SENSOR_FAULTS_ROW,
    KindScore,
    ScoreOptions,
    ScoreReport,
)
from scoring.detections import Detection
from scoring.labels import GroundTruth, Label

# NAB's standard application profile.
NAB_TRUE_POSITIVE, NAB_FALSE_NEGATIVE, NAB_FALSE_POSITIVE = 1.0, -1.0, -0.11


def percentile(values: Sequence[float], share: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _nab_reward(first: float, start: float, end: float) -> float:
    """Scaled sigmoid of the detection's place in its window: ~1 at the start, 0 at the end."""
    width = max(end - start, 1e-9)
    position = (first - end) / width  # -1 .. 0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


@dataclass
class _Window:
    label: Label
    start: float
    end: float
    first: float | None = None

    @property
    def visible(self) -> bool:
        return self.label.detectable_from is not None and self.label.detectable_from <= self.end


class _Machine:
    """One machine's windows and stops, for locating detections."""

    def __init__(self, truth: GroundTruth, machine: str, labels: list[Label], options: ScoreOptions) -> None:
        first_seen, _ = truth.observed.get(machine, (-math.inf, math.inf))
        self.observed = truth.observed.get(machine, (-math.inf, math.inf))
        self.windows = []
        for label in labels:
            end = (
                label.window_end
                if label.is_failure
                else (label.end or label.window_end) + options.tolerance_s
            )
            self.windows.append(_Window(label, max(label.onset, first_seen), end))
        spans = sorted(truth.stopped.get(machine, []))
        self.stop_starts = [start for start, _ in spans]
        self.stop_ends = [end + options.grace_s for _, end in spans]

    def ignored(self, t: float) -> bool:
        if not self.observed[0] <= t <= self.observed[1]:
            return True
        index = bisect_right(self.stop_starts, t) - 1
        return index >= 0 and t <= self.stop_ends[index]

    def windows_at(self, t: float) -> list[_Window]:
        return [window for window in self.windows if window.start <= t <= window.end]


def score(
    truth: GroundTruth,
    detections: Sequence[Detection],
    options: ScoreOptions | None = None,
    source: str = "",
) -> ScoreReport:
    """Score `detections` against the labels of `truth` (`source` says where those came from)."""
    options = options or ScoreOptions()
    by_machine: dict[str, list[Label]] = defaultdict(list)
    for label in truth.labels:
        by_machine[label.machine].append(label)
    machines = {m: _Machine(truth, m, by_machine.get(m, []), options) for m in truth.observed}
    false_times: dict[str, list[Detection]] = defaultdict(list)
    ignored, unknown = 0, set()
    named = right = 0
    for detection in sorted(detections, key=lambda d: (d.machine, d.time)):
        machine = machines.get(detection.machine)
        if machine is None:
            unknown.add(detection.machine)
            continue
        hits = machine.windows_at(detection.time)
        if not hits and machine.ignored(detection.time):
            ignored += 1
            continue
        for window in hits:
            if window.first is None:
                window.first = detection.time
                if detection.failure_mode is not None:
                    named += 1
                    right += detection.failure_mode == window.label.fault
        if not hits:
            false_times[detection.machine].append(detection)
    alarms = _false_alarms(false_times, truth.machine_types, options.merge_s)
    windows = [window for machine in machines.values() for window in machine.windows]
    total_alarms = len(_alarm_starts(false_times, options.merge_s))
    days = truth.machine_days
    return ScoreReport(
        ground_truth=source,
        rows=tuple(_rows(windows, alarms)),
        nab_score=_nab(windows, total_alarms),
        false_alarms=total_alarms,
        false_alarms_per_machine_day=total_alarms / days if days > 0 else 0.0,
        observed_s=days * 86_400.0,
        detections=len(detections),
        ignored=ignored,
        unknown_machines=tuple(sorted(unknown)),
        diagnosis_ratio=right / named if named else None,
        options=options,
    )


def _alarm_starts(false_times: dict[str, list[Detection]], merge_s: float) -> list[Detection]:
    """The first detection of each false alarm: a new alarm starts after a gap longer than merge_s."""
    starts = []
    for detections in false_times.values():
        previous = -math.inf
        for detection in detections:
            if detection.time - previous > merge_s:
                starts.append(detection)
            previous = detection.time
    return starts


def _false_alarms(
    false_times: dict[str, list[Detection]], types: dict[str, str], merge_s: float
) -> dict[str, float]:
    """False alarms attributed to fault kinds."""
    attributed: dict[str, float] = defaultdict(float)
    for detection in _alarm_starts(false_times, merge_s):
        if detection.failure_mode is not None:
            attributed[detection.failure_mode] += 1.0
            continue
        machine_type = types.get(detection.machine)
        modes = FAILURE_MODES.get(MachineType(machine_type), ()) if machine_type else ()
        for mode in modes:
            attributed[mode] += 1.0 / len(modes)
    return attributed


def _kind_row(kind: str, windows: list[_Window], false_alarms: float) -> KindScore:
    visible = [w for w in windows if w.visible]
    detected = [w for w in visible if w.first is not None]
    credited = len(detected) + sum(1 for w in windows if not w.visible and w.first is not None)
    recall = len(detected) / len(visible) if visible else 0.0
    precision = credited / (credited + false_alarms) if credited + false_alarms > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    leads = [w.end - w.first for w in detected if w.label.tripped and w.first is not None]
    delays = [
        w.first - w.label.detectable_from
        for w in detected
        if w.first is not None and w.label.detectable_from is not None
    ]
    return KindScore(
        kind=kind,
        labels=len(visible),
        invisible=len(windows) - len(visible),
        detected=len(detected),
        precision_ratio=precision,
        recall_ratio=recall,
        f1_score=f1,
        lead_before_trip_median_s=statistics.median(leads) if leads else None,
        lead_before_trip_p10_s=percentile(leads, 0.1),
        delay_after_visible_median_s=statistics.median(delays) if delays else None,
        delay_after_visible_p90_s=percentile(delays, 0.9),
    )


def _rows(windows: list[_Window], alarms: dict[str, float]) -> list[KindScore]:
    by_kind: dict[str, list[_Window]] = defaultdict(list)
    for window in windows:
        by_kind[window.label.fault].append(window)
    order = [mode for modes in FAILURE_MODES.values() for mode in modes] + list(SENSOR_FAULTS)
    rows = [_kind_row(kind, by_kind[kind], alarms.get(kind, 0.0)) for kind in order if by_kind.get(kind)]
    failures = [w for w in windows if w.label.is_failure]
    sensors = [w for w in windows if not w.label.is_failure]
    failure_alarms = sum(value for kind, value in alarms.items() if kind not in SENSOR_FAULTS)
    sensor_alarms = sum(value for kind, value in alarms.items() if kind in SENSOR_FAULTS)
    rows.append(_kind_row(FAILURE_MODES_ROW, failures, failure_alarms))
    rows.append(_kind_row(SENSOR_FAULTS_ROW, sensors, sensor_alarms))
    rows.append(_kind_row(OVERALL_ROW, windows, failure_alarms + sensor_alarms))
    return rows


def _nab(windows: list[_Window], false_alarms: int) -> float:
    """NAB score of the visible windows, normalised between no detections (0) and perfect (100)."""
    scored = [w for w in windows if w.visible]
    if not scored:
        return 0.0
    raw = (
        sum(
            NAB_TRUE_POSITIVE * _nab_reward(w.first, w.start, w.end)
            if w.first is not None
            else NAB_FALSE_NEGATIVE
            for w in scored
        )
        + NAB_FALSE_POSITIVE * false_alarms
    )
    null = NAB_FALSE_NEGATIVE * len(scored)
    perfect = NAB_TRUE_POSITIVE * sum(_nab_reward(w.start, w.start, w.end) for w in scored)
    return 100.0 * (raw - null) / (perfect - null)
