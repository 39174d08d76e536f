"""Ground truth: every fault and state change is labelled, labels close, and they match the telemetry."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from factory_core.fleet import FAILURE_MODES, FaultSettings, FleetSettings, MachineType, ScheduledFault
from factory_core.payload_contract import FAULT_END_REASONS, TRIP_REASONS, validate_payloads
from simulator.dry_run import MachineStream, collect
from simulator.model import SiteModel, unknown_scheduled_machines

START_MS = int(datetime(2026, 3, 1, 6, 0, tzinfo=UTC).timestamp() * 1000)
MILL = "site-00-line-01-cnc_mill-01"
PRESS = "site-00-line-02-hydraulic_press-01"
CONVEYOR = "site-00-line-01-conveyor-01"
SENSOR_KINDS = ("stuck", "drift", "spike", "noise_burst", "dropout")

SCHEDULE = [
    ScheduledFault(machine=MILL, fault="spindle_bearing_wear", at_s=900.0, severity=0.3),
    ScheduledFault(machine=MILL, fault="dropout", at_s=1_234.5, severity=0.5, duration_s=120.0),
    ScheduledFault(machine=PRESS, fault="oil_overheating", at_s=2_000.25, severity=0.95),
    ScheduledFault(machine=CONVEYOR, fault="drift", at_s=600.0, severity=0.3, duration_s=1_800.0),
    ScheduledFault(machine=CONVEYOR, fault="belt_misalignment", at_s=3_000.0, severity=0.4, duration_s=60.0),
    # Another site's machine: this process must ignore it.
    ScheduledFault(machine="site-01-line-01-cnc_mill-01", fault="stuck", at_s=10.0),
]


def iso(offset_s: float) -> str:
    ms = START_MS + round(offset_s * 1000)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@pytest.fixture(scope="module")
def streams() -> dict[str, MachineStream]:
    fleet = FleetSettings(
        seed=21,
        speed=30.0,
        faults=FaultSettings(
            timescale="demo", failure_rate_scale=3.0, sensor_fault_per_hour=1.0, scheduled=SCHEDULE
        ),
    )
    return collect(fleet, 0, 4 * 3_600.0, START_MS)  # validates every payload


def test_scheduled_faults_are_labelled_with_machine_type_and_onset(streams: dict[str, MachineStream]) -> None:
    for item in SCHEDULE:
        if item.machine not in streams:
            assert item.machine.startswith("site-01")
            continue
        starts = [
            event
            for event in streams[item.machine].ground_truth
            if event["event"] == "fault_start" and event["scheduled"] and event["fault"] == item.fault
        ]
        assert len(starts) == 1, (item, starts)
        start = starts[0]
        assert start["onset"] == start["at"] == iso(item.at_s)
        assert start["severity"] == item.severity
        assert start["at"] <= start["ts"]
        assert start["fault_class"] == ("sensor" if item.fault in SENSOR_KINDS else "failure_mode")
        _, _, _, line_number, machine_type, _ = item.machine.split("-")
        header = {k: start[k] for k in ("kind", "machine", "site", "line", "type")}
        assert header == {
            "kind": "ground_truth",
            "machine": item.machine,
            "site": "site-00",
            "line": f"line-{line_number}",
            "type": machine_type,
        }
        if item.duration_s is not None:
            ends = [
                e
                for e in streams[item.machine].ground_truth
                if e["event"] == "fault_end" and e["fault_id"] == start["fault_id"]
            ]
            assert len(ends) == 1
            end = ends[0]
            # Ends when its duration runs out, unless maintenance ended it earlier.
            if end["reason"] == "cleared":
                assert end["end"] == end["at"] == iso(item.at_s + item.duration_s)
            else:
                assert end["reason"] in FAULT_END_REASONS and end["end"] < iso(item.at_s + item.duration_s)
            assert end["onset"] == start["onset"]
    assert "site-01-line-01-cnc_mill-01" not in streams


def test_no_telemetry_carries_labels(streams: dict[str, MachineStream]) -> None:
    for stream in streams.values():
        for message in stream.telemetry:
            assert set(message) == {
                "schema",
                "kind",
                "machine",
                "site",
                "line",
                "type",
                "ts",
                "seq",
                "state",
                "signals",
                "parts",
            }
            assert message["kind"] == "telemetry"


def test_sequence_numbers_count_from_one_without_gaps(streams: dict[str, MachineStream]) -> None:
    for stream in streams.values():
        assert [m["seq"] for m in stream.telemetry] == list(range(1, len(stream.telemetry) + 1))
        assert [m["seq"] for m in stream.ground_truth] == list(range(1, len(stream.ground_truth) + 1))


def test_state_changes_in_telemetry_match_state_change_events(streams: dict[str, MachineStream]) -> None:
    """Replaying the state_change events gives the state of every telemetry sample."""
    changes_seen = 0
    for stream in streams.values():
        state = None
        for message in _in_emission_order(stream):
            if message["kind"] == "ground_truth":
                if message["event"] == "state_change":
                    assert message["from_state"] == state, message
                    state = message["to_state"]
                    changes_seen += 1
            else:
                assert message["state"] == state, message
        first = stream.ground_truth[0]
        assert (first["event"], first["from_state"], first["reason"]) == ("state_change", None, "start")
    assert changes_seen > 50


def _in_emission_order(stream: MachineStream) -> list[dict]:
    return [orjson.loads(payload) for payload in stream.payloads]


def test_every_fault_end_closes_a_started_fault(streams: dict[str, MachineStream]) -> None:
    kinds = set()
    for stream in streams.values():
        open_faults: dict[int, dict] = {}
        for event in stream.ground_truth:
            if event["event"] == "fault_start":
                assert event["fault_id"] not in open_faults
                open_faults[event["fault_id"]] = event
                kinds.add(event["fault"])
            elif event["event"] == "fault_update":
                start = open_faults[event["fault_id"]]
                assert (event["fault"], event["onset"]) == (start["fault"], start["onset"])
            elif event["event"] == "fault_end":
                start = open_faults.pop(event["fault_id"])
                assert (event["fault"], event["onset"]) == (start["fault"], start["onset"])
                assert start["onset"] <= event["end"] == event["at"] <= event["ts"]
                if event["fault_class"] == "sensor":
                    assert event["reason"] == "cleared" and event["severity"] == start["severity"]
    failure_modes = {mode for modes in FAILURE_MODES.values() for mode in modes}
    assert len(kinds & failure_modes) >= 6
    assert len(kinds & set(SENSOR_KINDS)) >= 3


def test_failure_labels_grow_become_visible_and_close_with_a_reason(
    streams: dict[str, MachineStream],
) -> None:
    closed = 0
    for machine, stream in streams.items():
        machine_type = MachineType(machine.split("-")[4])
        severities: dict[int, list[float]] = {}
        for event in stream.ground_truth:
            if event["fault_class"] != "failure_mode" or event["event"] == "state_change":
                continue
            assert event["fault"] in FAILURE_MODES[machine_type], (machine, event["fault"])
            severities.setdefault(event["fault_id"], []).append(event["severity"])
            visible = event["detectable_from"]
            if visible is not None and event["onset"] >= iso(0):
                assert event["onset"] <= visible <= event["at"]
            if event["event"] == "fault_end":
                closed += 1
                assert event["reason"] in ("repaired", "condition_based", "preventive", "cleared")
        for values in severities.values():
            assert values == sorted(values), values  # damage only grows until the fault ends
    assert closed >= 10


def test_fault_states_are_caused_by_labelled_faults(streams: dict[str, MachineStream]) -> None:
    trips = 0
    for stream in streams.values():
        started = set()
        for event in stream.ground_truth:
            if event["event"] == "fault_start":
                started.add(event["fault_id"])
            if event["event"] == "state_change" and event["to_state"] == "fault":
                trips += 1
                assert event["reason"] in TRIP_REASONS
                assert event["fault_id"] in started
    assert trips >= 1


def test_timestamps_are_ordered_and_events_not_in_the_future(streams: dict[str, MachineStream]) -> None:
    for stream in streams.values():
        stamps = [m["ts"] for m in _in_emission_order(stream)]
        assert stamps == sorted(stamps)
        for event in stream.ground_truth:
            assert event["onset"] <= event["at"] <= event["ts"]


def test_view_active_faults_match_ground_truth() -> None:
    fleet = FleetSettings(
        seed=4,
        speed=10.0,
        faults=FaultSettings(timescale="demo", failure_rate_scale=5.0, sensor_fault_per_hour=2.0),
    )
    model = SiteModel(fleet, 0, START_MS)
    payloads = []
    for index in range(len(model.machines)):
        active: dict[int, str] = {}
        for _ in range(200):
            messages = model.sample(index)
            payloads += [m.payload for m in messages]
            for message in messages[:-1]:
                event = orjson.loads(message.payload)
                if event["event"] == "fault_start":
                    active[event["fault_id"]] = event["fault"]
                elif event["event"] == "fault_end":
                    active.pop(event["fault_id"])
            assert model.view(index).active_faults == set(active.values())
    validate_payloads(payloads)


def test_unknown_scheduled_machines_are_reported() -> None:
    fleet = FleetSettings(
        lines_per_site=2,
        faults=FaultSettings(
            scheduled=[
                ScheduledFault(machine="site-00-line-01-cnc_mill-02", fault="stuck", at_s=1.0),
                ScheduledFault(machine="site-07-line-02-air_compressor-01", fault="stuck", at_s=1.0),
                ScheduledFault(machine="site-00-line-03-cnc_mill-01", fault="stuck", at_s=1.0),  # no line 3
                ScheduledFault(
                    machine="site-00-line-01-cnc_mill-03", fault="stuck", at_s=1.0
                ),  # only 2 mills
                ScheduledFault(machine="site-00-line-01-robot-01", fault="stuck", at_s=1.0),
                ScheduledFault(machine="site-0-line-1-cnc_mill-1", fault="stuck", at_s=1.0),
                ScheduledFault(machine="mill", fault="stuck", at_s=1.0),
            ]
        ),
    )
    assert unknown_scheduled_machines(fleet) == [
        "site-00-line-03-cnc_mill-01",
        "site-00-line-01-cnc_mill-03",
        "site-00-line-01-robot-01",
        "site-0-line-1-cnc_mill-1",
        "mill",
    ]


def test_a_failure_mode_of_another_machine_type_is_refused() -> None:
    with pytest.raises(ValueError, match="'tool_wear' does not occur on air_compressor machines"):
        ScheduledFault(machine="site-00-line-01-air_compressor-01", fault="tool_wear", at_s=1.0)
    ScheduledFault(machine="site-00-line-01-air_compressor-01", fault="cooler_fouling", at_s=1.0)
