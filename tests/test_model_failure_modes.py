"""Failure modes: each type's own, with its own signature, growth, trip, repair time and maintenance."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from factory_core.fleet import FAILURE_MODES, FaultSettings, FleetSettings, MachineType, ScheduledFault
from simulator.dry_run import collect, ground_truth
from simulator.model.failure_modes import MODES
from simulator.model.profiles import PROFILES

START_MS = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp() * 1000)
ONSET_S = 1_800.0
ALL_MODES = [(machine_type, mode) for machine_type, modes in FAILURE_MODES.items() for mode in modes]


def _seconds(timestamp: str) -> float:
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return moment.timestamp() - START_MS / 1000


def _twins(machine_type: MachineType, mode: str) -> tuple[Any, Any]:
    """One machine run twice, with and without the failure mode starting at ONSET_S (demo, run to failure)."""
    machine = f"site-00-line-01-{machine_type.value}-01"

    def fleet(scheduled: list[ScheduledFault]) -> FleetSettings:
        return FleetSettings(
            seed=11,
            lines_per_site=1,
            machines_per_line={machine_type: 1},
            speed=2.0,
            faults=FaultSettings(
                timescale="demo",
                maintenance="run_to_failure",
                failure_rate_scale=0.0,
                sensor_fault_per_hour=0.0,
                scheduled=scheduled,
            ),
        )

    faulty = collect(
        fleet([ScheduledFault(machine=machine, fault=mode, at_s=ONSET_S, severity=0.01)]),
        0,
        4 * 3_600.0,
        START_MS,
    )[machine]
    healthy = collect(fleet([]), 0, 4 * 3_600.0, START_MS, validate=False)[machine]
    return faulty, healthy


@pytest.mark.parametrize(("machine_type", "mode"), ALL_MODES, ids=[mode for _, mode in ALL_MODES])
def test_each_failure_mode_grows_shows_its_signature_and_trips(machine_type: MachineType, mode: str) -> None:
    faulty, healthy = _twins(machine_type, mode)
    spec, profile = MODES[mode], PROFILES[machine_type]
    # Until the onset, the run is the healthy run byte for byte: the fault draws from its own stream.
    before = sum(1 for message in healthy.telemetry if _seconds(message["ts"]) < ONSET_S)
    assert faulty.telemetry[:before] == healthy.telemetry[:before]

    labels = [e for e in faulty.ground_truth if e["fault"] == mode]
    start, end = labels[0], labels[-1]
    assert (start["event"], start["severity"], _seconds(start["onset"])) == ("fault_start", 0.01, ONSET_S)
    severities = [e["severity"] for e in labels if e["event"] == "fault_update"]
    assert (severities == sorted(severities) and severities[-1] == 1.0) or end["reason"] != "repaired"
    trip = next(e for e in faulty.ground_truth if e["event"] == "state_change" and e["to_state"] == "fault")
    assert (trip["reason"], trip["fault"], trip["fault_id"]) == (spec.trip_reason, mode, start["fault_id"])
    assert end["event"] == "fault_end" and end["reason"] == "repaired" and end["at"] > trip["at"]

    # The signature: while both runs are in the same state, the faulty one differs where the mode acts.
    trip_s = _seconds(trip["at"])
    pairs = [
        (a, b)
        for a, b in zip(faulty.telemetry, healthy.telemetry, strict=False)
        if ONSET_S < _seconds(a["ts"]) < trip_s and a["state"] == b["state"] == "running"
    ]
    assert len(pairs) > 20
    late = pairs[len(pairs) * 3 // 4 :]  # the last quarter before the trip, where damage is highest

    def shift(signal: str) -> float:
        return statistics.fmean(a["signals"][signal] - b["signals"][signal] for a, b in late)

    if spec.effect("vibration_rms") >= 1.0:
        assert shift("vibration_rms") > 0.25 * spec.effect("vibration_rms")
    if spec.trip == "temperature":
        assert shift("temperature") > 8.0
    if spec.effect("cycle_time") >= 0.1:
        assert shift("cycle_time") > 0.03 * profile.ideal_cycle_time_s
    if mode in ("tool_wear", "belt_misalignment", "air_leak"):
        assert shift("power") > 0.0
    visible = end["detectable_from"]
    if visible is not None:
        assert ONSET_S <= _seconds(visible) <= trip_s


def test_no_machine_type_shows_a_failure_mode_of_another() -> None:
    fleet = FleetSettings(seed=3, faults=FaultSettings(timescale="demo", failure_rate_scale=4.0))
    seen: dict[str, set[str]] = defaultdict(set)
    for payload in ground_truth(fleet, 0, 6 * 3_600.0, START_MS):
        event = orjson.loads(payload)
        if event["fault_class"] == "failure_mode":
            seen[event["type"]].add(event["fault"])
    for machine_type in MachineType:
        assert seen[machine_type.value], machine_type
        assert seen[machine_type.value] <= set(FAILURE_MODES[machine_type]), machine_type


def _maintenance_hours_by_cause(policy: str) -> dict[str, list[float]]:
    fleet = FleetSettings(
        seed=5, lines_per_site=4, faults=FaultSettings(failure_rate_scale=6.0, maintenance=policy)
    )
    started: dict[str, dict[str, Any]] = {}
    hours: dict[str, list[float]] = defaultdict(list)
    for payload in ground_truth(fleet, 0, 45 * 86_400.0, START_MS):
        event = orjson.loads(payload)
        if event["event"] != "state_change":
            continue
        if event["to_state"] == "maintenance":
            started[event["machine"]] = event
        elif event["from_state"] == "maintenance":
            begin = started.pop(event["machine"])
            cause = begin["fault"] or begin["reason"]
            hours[cause].append((_seconds(event["at"]) - _seconds(begin["at"])) / 3_600.0)
    return hours


def test_repair_time_depends_on_the_cause() -> None:
    hours = _maintenance_hours_by_cause("run_to_failure")
    assert len(hours["tool_wear"]) >= 10 and len(hours["spindle_bearing_wear"]) >= 3
    # A spindle-bearing replacement takes a shift; a broken tool is changed within the hour.
    assert statistics.median(hours["spindle_bearing_wear"]) > 4 * statistics.median(hours["tool_wear"])
    assert statistics.median(hours["tool_wear"]) < 1.5


@pytest.mark.parametrize("policy", ["condition_based", "preventive", "run_to_failure"])
def test_the_maintenance_policy_decides_how_labels_end(policy: str) -> None:
    fleet = FleetSettings(
        seed=9, lines_per_site=3, faults=FaultSettings(failure_rate_scale=5.0, maintenance=policy)
    )
    reasons: dict[str, int] = defaultdict(int)
    maintenance: dict[str, int] = defaultdict(int)
    for payload in ground_truth(fleet, 0, 30 * 86_400.0, START_MS):
        event = orjson.loads(payload)
        if event["event"] == "fault_end" and event["fault_class"] == "failure_mode":
            reasons[event["reason"]] += 1
        if event["event"] == "state_change" and event["to_state"] == "maintenance":
            maintenance[event["reason"]] += 1
    assert sum(reasons.values()) >= 20
    if policy == "run_to_failure":  # nothing is maintained before it fails
        assert set(reasons) == {"repaired"} and set(maintenance) == {"repair_started"}
    elif policy == "preventive":
        assert set(reasons) == {"repaired", "preventive"}
        assert set(maintenance) == {"repair_started", "preventive_maintenance"}
    else:
        assert reasons["condition_based"] >= 0.25 * sum(reasons.values())
        assert reasons["condition_based"] > 0 and reasons["repaired"] > 0


def test_condition_based_maintenance_starts_at_iso_zone_c() -> None:
    """A bearing is taken out once its vibration has left ISO 10816 zone B, before it fails."""
    machine = "site-00-line-01-conveyor-01"
    fleet = FleetSettings(
        seed=2,
        lines_per_site=1,
        machines_per_line={MachineType.CONVEYOR: 1},
        speed=5.0,
        faults=FaultSettings(
            timescale="demo",
            failure_rate_scale=0.0,
            sensor_fault_per_hour=0.0,
            scheduled=[
                ScheduledFault(machine=machine, fault="motor_bearing_wear", at_s=600.0, severity=0.01)
            ],
        ),
    )
    stream = collect(fleet, 0, 3 * 3_600.0, START_MS)[machine]
    stop = next(
        e for e in stream.ground_truth if e["event"] == "state_change" and e["to_state"] == "maintenance"
    )
    assert stop["reason"] == "condition_based_maintenance" and stop["fault"] == "motor_bearing_wear"
    assert not any(e["event"] == "state_change" and e["to_state"] == "fault" for e in stream.ground_truth)
    stop_s = _seconds(stop["at"])
    before = [
        m["signals"]["vibration_rms"]
        for m in stream.telemetry
        if stop_s - 60 < _seconds(m["ts"]) < stop_s and m["state"] == "running"
    ]
    assert before and statistics.fmean(before) > PROFILES[MachineType.CONVEYOR].zone_bc_mm_s * 0.9
    end = next(e for e in stream.ground_truth if e["event"] == "fault_end")
    assert end["reason"] == "condition_based" and end["severity"] < 1.0


def test_the_documented_failure_modes_are_the_modelled_ones() -> None:
    """docs/model.md's table names every mode of every type with its MTBF and development time."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text(encoding="utf-8")
    rows = {line.split("|")[2].strip(" `"): line for line in text.splitlines() if line.count("|") == 9}
    for name, spec in MODES.items():
        row = rows[name]
        low, high = spec.development_h
        assert f"| {spec.mtbf_h:,.0f} |" in row and f"| {low:g}\u2013{high:g} |" in row, row  # an en dash
        assert f"`{spec.trip_reason}`" in row and f"| {spec.repair_h:g} |" in row, row
