"""Along a line and across sampling steps: coupling to the conveyor, labels that do not depend on sampling."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson

from factory_core.fleet import FaultSettings, FleetSettings, MachineType
from simulator.dry_run import generate, ground_truth
from simulator.model.profiles import PROFILES

START_MS = int(datetime(2026, 5, 4, tzinfo=UTC).timestamp() * 1000)
BUSY = FaultSettings(timescale="demo", failure_rate_scale=2.0, sensor_fault_per_hour=2.0)


def _labels(fleet: FleetSettings, duration_s: float) -> list[dict[str, Any]]:
    """Ground-truth events without the fields that depend on sampling (ts, seq)."""
    found = []
    for payload in generate(fleet, 0, duration_s, START_MS):
        message = orjson.loads(payload)
        if message["kind"] == "ground_truth":
            del message["ts"], message["seq"]
            found.append(message)
    return sorted(
        found, key=lambda m: (m["machine"], m["at"], m["event"], m["fault_id"] or 0, m["to_state"] or "")
    )


def test_labels_do_not_depend_on_the_sampling_step() -> None:
    """States, faults, severities and their times are the same at any publish interval or speed."""
    every_second = _labels(FleetSettings(seed=5, faults=BUSY), 3 * 3_600.0)
    every_seven = _labels(FleetSettings(seed=5, faults=BUSY, speed=7.3), 3 * 3_600.0)
    assert len(every_second) > 300
    assert every_second == every_seven


def test_ground_truth_without_telemetry_is_the_dry_runs_byte_for_byte() -> None:
    fleet = FleetSettings(seed=3, speed=20.0, faults=BUSY)
    sampled = [p for p in generate(fleet, 0, 8 * 3_600.0, START_MS) if b'"kind":"ground_truth"' in p]
    labels_only = list(ground_truth(fleet, 0, 8 * 3_600.0, START_MS))

    def by_machine(payloads: list[bytes]) -> list[bytes]:
        return sorted(payloads, key=lambda p: orjson.loads(p)["machine"])  # stable: time order kept

    assert len(sampled) > 500
    assert by_machine(sampled) == by_machine(labels_only)


def _state_changes(fleet: FleetSettings, duration_s: float) -> dict[str, list[dict[str, Any]]]:
    changes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payload in ground_truth(fleet, 0, duration_s, START_MS):
        event = orjson.loads(payload)
        if event["event"] == "state_change":
            changes[event["machine"]].append(event)
    return changes


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() - START_MS / 1000


def test_a_stopped_conveyor_blocks_the_mills_and_starves_the_press() -> None:
    changes = _state_changes(FleetSettings(seed=42, faults=FaultSettings(timescale="demo")), 2 * 86_400.0)
    checked = 0
    for line in ("line-01", "line-02"):
        conveyor = changes[f"site-00-{line}-conveyor-01"]
        stops = [(_seconds(e["at"]), e["to_state"]) for e in conveyor if e["from_state"] in ("running", None)]
        restarts = {_seconds(e["at"]) for e in conveyor if e["to_state"] == "running"}
        for machine, role in (
            (f"site-00-{line}-cnc_mill-01", "blocked"),
            (f"site-00-{line}-hydraulic_press-01", "starved"),
        ):
            buffer_s = PROFILES[MachineType(machine.split("-")[4])].buffer_s
            events = changes[machine]
            for position, event in enumerate(events):
                if event["reason"] != role:
                    continue
                held_at = _seconds(event["at"])
                # The conveyor stopped exactly one buffer earlier (or before, if the machine was busy).
                stopped = max(t for t, _ in stops if t <= held_at + 1e-3)
                assert held_at >= stopped + buffer_s - 1e-3, (machine, event["at"])
                resumed = events[position + 1] if position + 1 < len(events) else None
                if resumed is not None and resumed["reason"] == "resumed":
                    assert any(abs(_seconds(resumed["at"]) - t) < 1e-3 for t in restarts), resumed
                checked += 1
    assert checked >= 10


def test_conveyor_downtime_longer_than_the_buffer_always_stops_its_neighbours() -> None:
    changes = _state_changes(FleetSettings(seed=7, faults=FaultSettings(timescale="demo")), 2 * 86_400.0)
    conveyor = changes["site-00-line-01-conveyor-01"]
    press = changes["site-00-line-01-hydraulic_press-01"]
    buffer_s = PROFILES[MachineType.HYDRAULIC_PRESS].buffer_s
    long_stops = []
    running_until = None
    for event in conveyor:
        if event["from_state"] == "running":
            running_until = _seconds(event["at"])
        elif event["to_state"] == "running" and running_until is not None:
            if _seconds(event["at"]) - running_until > buffer_s + 60:
                long_stops.append((running_until, _seconds(event["at"])))
            running_until = None
    assert long_stops
    for stop, restart in long_stops:
        during = [e for e in press if stop <= _seconds(e["at"]) <= restart]
        press_was_running = _state_at(press, stop + buffer_s) == "running"
        assert not press_was_running or any(e["reason"] == "starved" for e in during), (stop, restart)


def _state_at(events: list[dict[str, Any]], t: float) -> str | None:
    state = None
    for event in events:
        if _seconds(event["at"]) > t:
            break
        state = event["to_state"]
    return state


def test_a_line_without_a_conveyor_is_not_coupled() -> None:
    fleet = FleetSettings(
        seed=42,
        machines_per_line={MachineType.CNC_MILL: 2, MachineType.HYDRAULIC_PRESS: 1},
        faults=FaultSettings(timescale="demo"),
    )
    reasons = {e["reason"] for events in _state_changes(fleet, 86_400.0).values() for e in events}
    assert "waiting" in reasons and not reasons & {"blocked", "starved"}
