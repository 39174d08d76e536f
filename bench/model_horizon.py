"""What the model's data looks like over a long horizon: labels, healthy signals, and how detectors score.

Run: .venv/bin/python bench/model_horizon.py [--days 30] [--sites 5] [--signal-days 2]

1. Labels over `--days` of the default fleet (`--sites` sites, realistic timescale, condition-based
   maintenance), generated without telemetry (labels do not depend on sampling): the share of
   machine-time with a failure label open, how labels end, durations, modes per type, MTBF,
   repair times by cause, how long before the stop a fault became visible.
2. Healthy signals of site-00 sampled every second for `--signal-days`: hour-to-hour change of
   running means and lag-1 autocorrelation per type and signal, and their 1st-99th percentiles.
3. Scores of the perfect, baseline, random and empty detectors over the same `--days`, from
   telemetry sampled every `--score-step` seconds (the labels are the same at any step).
Prints tables; asserts nothing. docs/model.md quotes its output.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from baseline_detector import detect  # noqa: E402

from factory_core.fleet import FAILURE_MODES, FleetSettings, MachineType  # noqa: E402
from scoring import Detection, GroundTruth, regenerated, score  # noqa: E402
from simulator.dry_run import DEFAULT_START_EPOCH_MS, generate, ground_truth  # noqa: E402

START_S = DEFAULT_START_EPOCH_MS / 1000


def _union(spans: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """(time covered by at least one span, by at least two)."""
    edges = sorted([(a, 1) for a, b in spans if b > a] + [(b, -1) for a, b in spans if b > a])
    one = two = 0.0
    depth, previous = 0, None
    for at, step in edges:
        if previous is not None:
            one += (at - previous) if depth >= 1 else 0.0
            two += (at - previous) if depth >= 2 else 0.0
        depth += step
        previous = at
    return one, two


def label_figures(truths: list[GroundTruth], fleet: FleetSettings, days: float) -> None:
    covered = covered_twice = total = 0.0
    durations: dict[str, list[float]] = defaultdict(list)
    reasons: Counter[str] = Counter()
    seen: dict[str, set[str]] = defaultdict(set)
    visible_before_stop, visible_lead = 0, []
    failure_labels = 0
    for truth in truths:
        for machine, (first, last) in truth.observed.items():
            spans = [
                (max(label.onset, first), label.end if label.end is not None else last)
                for label in truth.labels
                if label.machine == machine and label.is_failure
            ]
            one, two = _union(spans)
            covered, covered_twice, total = covered + one, covered_twice + two, total + (last - first)
        for label in truth.labels:
            if not label.is_failure:
                continue
            failure_labels += 1
            seen[label.machine_type].add(label.fault)
            reasons[label.end_reason or "still open at the end"] += 1
            if label.end is not None:
                durations[label.fault].append((label.end - max(label.onset, START_S)) / 3_600.0)
            if label.detectable_from is not None and label.detectable_from <= label.window_end:
                visible_before_stop += 1
                visible_lead.append((label.window_end - label.detectable_from) / 3_600.0)
    machines = sum(len(truth.observed) for truth in truths)
    print(f"## Labels: {days:g} days, {machines} machines, realistic, {fleet.faults.maintenance}")
    print(
        f"failure labels: {failure_labels}; machine-time with one open {100 * covered / total:.1f} %, "
        f"with two or more {100 * covered_twice / total:.2f} %"
    )
    print("how they ended: " + ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()))
    foreign = {t: modes - set(FAILURE_MODES[MachineType(t)]) for t, modes in seen.items()}
    print("modes of another type: " + (", ".join(f"{t}: {m}" for t, m in foreign.items() if m) or "none"))
    print(
        f"visible before the machine stopped: {visible_before_stop} of {failure_labels}; "
        f"visible for median {statistics.median(visible_lead or [0]):.1f} h before the stop"
    )
    print(f"{'mode':24s} {'labels':>6s} {'median h':>9s} {'max h':>7s}")
    for mode, values in sorted(durations.items()):
        print(f"{mode:24s} {len(values):6d} {statistics.median(values):9.1f} {max(values):7.1f}")
    _maintenance_figures(truths)


def _maintenance_figures(truths: list[GroundTruth]) -> None:
    running: dict[str, float] = defaultdict(float)
    onsets: Counter[str] = Counter()
    for truth in truths:
        for label in truth.labels:
            if label.is_failure and label.onset >= START_S:
                onsets[label.machine_type] += 1
        for machine, (first, last) in truth.observed.items():
            stopped = sum(min(b, last) - max(a, first) for a, b in truth.stopped.get(machine, []))
            running[truth.machine_types[machine]] += (last - first - stopped) / 3_600.0
    print(
        "hours (not stopped) per failure-mode onset, by type: "
        + ", ".join(f"{t} {running[t] / onsets[t]:.0f} h" if onsets[t] else f"{t} -" for t in running)
    )


def _healthy_spans(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Times with any fault open (failure or sensor), per machine's event list."""
    open_at: dict[int, float] = {}
    spans = []
    for event in events:
        if event["event"] == "fault_start":
            open_at[event["fault_id"]] = max(0.0, _seconds(event["onset"]))
        elif event["event"] == "fault_end":
            spans.append((open_at.pop(event["fault_id"], 0.0), _seconds(event["end"])))
    spans += [(begin, math.inf) for begin in open_at.values()]
    return spans


def _seconds(timestamp: str) -> float:
    from scoring.labels import epoch_seconds

    return epoch_seconds(timestamp) - START_S


def signal_figures(days: float) -> None:
    fleet = FleetSettings(seed=42)
    per_machine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payload in generate(fleet, 0, days * 86_400.0):
        message = orjson.loads(payload)
        (per_machine if message["kind"] == "telemetry" else events)[message["machine"]].append(message)
    changes: dict[tuple[str, str], list[float]] = defaultdict(list)
    pairs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for machine, messages in per_machine.items():
        faulty = _healthy_spans(events[machine])
        machine_type = messages[0]["type"]
        hours: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        previous = None
        for message in messages:
            t = _seconds(message["ts"])
            healthy = message["state"] == "running" and not any(a <= t <= b for a, b in faulty)
            if not healthy:
                previous = None
                continue
            for name, value in message["signals"].items():
                if value is None:
                    continue
                hours[int(t // 3_600)][name].append(value)
                values[(machine_type, name)].append(value)
                if previous is not None and previous["signals"].get(name) is not None:
                    pairs[(machine_type, name)].append((previous["signals"][name], value))
            previous = message
        for hour, by_signal in hours.items():
            after = hours.get(hour + 1)
            for name, samples in by_signal.items():
                if after and len(samples) >= 1_800 and len(after.get(name, [])) >= 1_800:
                    mean, next_mean = statistics.fmean(samples), statistics.fmean(after[name])
                    if mean:
                        changes[(machine_type, name)].append(abs(next_mean - mean) / abs(mean) * 100.0)
    print(f"\n## Healthy running signals, site-00, {days:g} days sampled every second")
    print(
        f"{'type':16s} {'signal':14s} {'hour-to-hour |change| of mean':>31s} {'lag-1 autocorr.':>16s} "
        f"{'1st-99th percentile':>22s}"
    )
    for (machine_type, name), found in sorted(values.items()):
        change = changes.get((machine_type, name), [])
        spread = statistics.quantiles(found, n=100)
        text = (
            f"median {statistics.median(change):5.1f} %, p90 {statistics.quantiles(change, n=10)[-1]:5.1f} %"
            if len(change) >= 10
            else "-"
        )
        print(
            f"{machine_type:16s} {name:14s} {text:>31s} {_lag_one(pairs[(machine_type, name)]):16.2f} "
            f"{spread[0]:10.4g} - {spread[-1]:<10.4g}"
        )


def _lag_one(pairs: list[tuple[float, float]]) -> float:
    if len(pairs) < 3:
        return math.nan
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    try:
        return statistics.correlation(first, second)
    except statistics.StatisticsError:  # constant (e.g. a mill's cycle time within one job)
        return math.nan


def score_figures(days: float, sites: int, step: float) -> None:
    fleet = FleetSettings(seed=42, speed=step)
    duration = days * 86_400.0
    truth = regenerated(fleet, range(sites), duration, DEFAULT_START_EPOCH_MS)
    telemetry = (orjson.loads(p) for site in range(sites) for p in generate(fleet, site, duration))
    baseline = list(detect(telemetry))
    perfect = [
        Detection(label.machine, max(label.detectable_from, truth.observed[label.machine][0]))
        for label in truth.labels
        if label.detectable_from is not None and label.detectable_from <= label.window_end
    ]
    rng = random.Random(7)
    machines = sorted(truth.observed)
    noise = [Detection(m, rng.uniform(*truth.observed[m])) for m in (rng.choice(machines) for _ in baseline)]
    print(f"\n## Scores: {days:g} days, {len(machines)} machines, telemetry every {step:g} s")
    print(
        f"{'detector':9s} {'detections':>10s} {'P':>5s} {'R':>5s} {'F1':>5s} {'failure-mode F1':>15s} "
        f"{'false alarms/machine-day':>24s} {'NAB':>6s} {'lead before trip (median)':>26s}"
    )
    for name, found in (("perfect", perfect), ("baseline", baseline), ("random", noise), ("empty", [])):
        report = score(truth, found)
        overall, failures = report.row("overall"), report.row("failure modes")
        lead = failures.lead_before_trip_median_s
        print(
            f"{name:9s} {len(found):10d} {overall.precision_ratio:5.2f} {overall.recall_ratio:5.2f} "
            f"{overall.f1_score:5.2f} "
            f"{failures.f1_score:15.2f} {report.false_alarms_per_machine_day:24.2f} {report.nab_score:6.1f} "
            f"{'-' if lead is None else f'{lead / 3_600:.1f} h':>26s}"
        )
    print("\nThe baseline detector (examples/baseline_detector.py) by fault kind:")
    print(f"{'kind':22s} {'labels':>6s} {'invisible':>9s} {'detected':>8s} {'P':>5s} {'R':>5s} {'F1':>5s}")
    for row in score(truth, baseline).rows:
        print(
            f"{row.kind:22s} {row.labels:6d} {row.invisible:9d} {row.detected:8d} {row.precision_ratio:5.2f} "
            f"{row.recall_ratio:5.2f} {row.f1_score:5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--sites", type=int, default=5, help="sites of the default fleet (10 machines each)")
    parser.add_argument("--signal-days", type=float, default=2.0)
    parser.add_argument("--score-step", type=float, default=60.0)
    args = parser.parse_args()
    started = time.process_time()
    fleet = FleetSettings(seed=42)
    truths = [
        regenerated(fleet, [site], args.days * 86_400.0, DEFAULT_START_EPOCH_MS) for site in range(args.sites)
    ]
    label_figures(truths, fleet, args.days)
    print(f"median hours in maintenance by cause: {_repair_hours(fleet, args.days, args.sites)}")
    signal_figures(args.signal_days)
    score_figures(args.days, args.sites, args.score_step)
    print(f"\n({time.process_time() - started:.0f} s CPU)")


def _repair_hours(fleet: FleetSettings, days: float, sites: int) -> str:
    """Median hours in maintenance by cause (preventive: scheduled)."""
    started: dict[str, dict[str, Any]] = {}
    hours: dict[str, list[float]] = defaultdict(list)
    payloads = (p for site in range(sites) for p in ground_truth(fleet, site, days * 86_400.0))
    for payload in payloads:
        event = orjson.loads(payload)
        if event["event"] != "state_change":
            continue
        if event["to_state"] == "maintenance":
            started[event["machine"]] = event
        elif event["from_state"] == "maintenance" and event["machine"] in started:
            begin = started.pop(event["machine"])
            cause = begin["fault"] or "preventive"
            hours[cause].append((_seconds(event["at"]) - _seconds(begin["at"])) / 3_600.0)
    return ", ".join(f"{cause} {statistics.median(v):.1f}" for cause, v in sorted(hours.items()))


if __name__ == "__main__":
    main()
