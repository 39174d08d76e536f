"""Fast versions of bench/model_horizon.py's checks: labels stay a minority and close; signals drift."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict

import orjson

from factory_core.fleet import FAILURE_MODES, FaultSettings, FleetSettings, MachineType
from factory_core.payload_contract import FAULT_END_REASONS
from scoring import regenerated
from simulator.dry_run import DEFAULT_START_EPOCH_MS, generate

START_S = DEFAULT_START_EPOCH_MS / 1000


def _open_share(truth: object) -> float:
    """Share of machine-time with at least one failure label open."""
    covered = total = 0.0
    for machine, (first, last) in truth.observed.items():  # type: ignore[attr-defined]
        spans = sorted(
            (max(label.onset, first), label.end if label.end is not None else last)
            for label in truth.labels  # type: ignore[attr-defined]
            if label.machine == machine and label.is_failure
        )
        reach = first
        for begin, end in spans:
            covered += max(0.0, end - max(begin, reach))
            reach = max(reach, end)
        total += last - first
    return covered / total


def test_failure_labels_are_a_minority_and_close_with_a_reason() -> None:
    """Two sites for a demo day: about two realistic years of failure modes, maintenance included."""
    fleet = FleetSettings(seed=42, faults=FaultSettings(timescale="demo"))
    truth = regenerated(fleet, [0, 1], 86_400.0, DEFAULT_START_EPOCH_MS)
    failures = [label for label in truth.labels if label.is_failure]
    assert len(failures) > 200
    assert _open_share(truth) <= 0.15
    reasons = defaultdict(int)
    for label in failures:
        assert label.fault in FAILURE_MODES[MachineType(label.machine_type)], label
        if label.end is None:  # only the last few hours' faults may still be developing
            assert label.onset > START_S + 86_400.0 - 4 * 3_600.0, label
            continue
        assert label.end_reason in FAULT_END_REASONS
        reasons[label.end_reason] += 1
    assert reasons["condition_based"] > 0 and reasons["repaired"] > 0 and reasons["preventive"] > 0


def test_realistic_labels_stay_rare_over_a_week() -> None:
    truth = regenerated(FleetSettings(seed=42), [0, 1, 2], 7 * 86_400.0, DEFAULT_START_EPOCH_MS)
    assert 0.0 < _open_share(truth) <= 0.15


def _lag_one(values: list[float]) -> float:
    return statistics.correlation(values[:-1], values[1:])


def test_healthy_signals_drift_and_are_autocorrelated() -> None:
    fleet = FleetSettings(
        seed=42, lines_per_site=1, faults=FaultSettings(failure_rate_scale=0.0, sensor_fault_per_hour=0.0)
    )
    runs: dict[str, list[dict]] = defaultdict(list)
    for payload in generate(fleet, 0, 6 * 3_600.0):
        message = orjson.loads(payload)
        if message["kind"] == "telemetry":
            runs[message["machine"]].append(message)
    for machine, messages in runs.items():
        stretch = max(_running_stretches(messages), key=len)
        assert len(stretch) > 600, machine
        for name in ("temperature", "vibration_rms", "power"):
            values = [m["signals"][name] for m in stretch]
            assert _lag_one(values) > 0.5, (machine, name)
        hourly = defaultdict(list)
        for message in messages:
            if message["state"] == "running":
                hourly[message["ts"][:13]].append(message["signals"]["power"])
        means = [statistics.fmean(v) for v in hourly.values() if len(v) > 1_200]
        changes = [abs(b - a) / a for a, b in itertools.pairwise(means)]
        assert changes and max(changes) > 0.01, machine  # running means move from hour to hour


def _running_stretches(messages: list[dict]) -> list[list[dict]]:
    stretches: list[list[dict]] = [[]]
    for message in messages:
        if message["state"] == "running":
            stretches[-1].append(message)
        elif stretches[-1]:
            stretches.append([])
    return stretches
