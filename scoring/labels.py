"""Labels as a scorer needs them: one window per fault, built from ground-truth events of schema 2.

A failure mode's window runs from its onset to the moment the machine stopped because of it: its
trip, or the start of the maintenance that ended it (planned from a condition alarm, or scheduled).
A sensor fault's window runs from onset to end. Times are epoch seconds (UTC).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from factory_core.errors import UsageError
from factory_core.payload_contract import FAILURE_MODE, SCHEMA_VERSION

_STOPPED = ("fault", "maintenance")


def epoch_seconds(timestamp: str) -> float:
    """`2026-01-01T00:00:00.000Z` -> epoch seconds."""
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class Label:
    """One fault on one machine, as a window a detector should fire in."""

    machine: str
    machine_type: str
    fault: str
    fault_class: str  # failure_mode | sensor
    fault_id: int
    onset: float
    window_end: float  # the trip or the stop for maintenance (failure modes), the end (sensor faults)
    end: float | None  # when the label closed; None while it was still open at the end of the data
    end_reason: str | None
    detectable_from: float | None  # when its symptom left the healthy band; None: never did
    tripped: bool  # the window ended in a protective trip (not a planned stop)
    scheduled: bool

    @property
    def is_failure(self) -> bool:
        return self.fault_class == FAILURE_MODE


@dataclass
class GroundTruth:
    """Everything the scorer needs from a run: labels, when each machine was stopped, what was observed."""

    labels: list[Label]
    stopped: dict[str, list[tuple[float, float]]]  # machine -> (from, to) in fault or maintenance
    observed: dict[str, tuple[float, float]]  # machine -> (first, last) time seen
    machine_types: dict[str, str] = field(default_factory=dict)

    @property
    def machine_days(self) -> float:
        return sum(max(0.0, last - first) for first, last in self.observed.values()) / 86_400.0


class _MachineEvents:
    """Collects one machine's events in time order and turns them into labels."""

    def __init__(self, machine: str, machine_type: str) -> None:
        self.machine, self.machine_type = machine, machine_type
        self.starts: dict[int, Mapping[str, Any]] = {}
        self.ends: dict[int, Mapping[str, Any]] = {}
        self.visible: dict[int, float] = {}
        self.states: list[tuple[float, str, Mapping[str, Any]]] = []

    def add(self, event: Mapping[str, Any]) -> None:
        kind, fault_id = event["event"], event["fault_id"]
        if kind == "state_change":
            self.states.append((epoch_seconds(event["at"]), event["to_state"], event))
            return
        if kind == "fault_start":
            self.starts[fault_id] = event
        elif kind == "fault_end":
            self.ends[fault_id] = event
        if event["detectable_from"] is not None and fault_id not in self.visible:
            self.visible[fault_id] = epoch_seconds(event["detectable_from"])

    def stopped(self, until: float) -> list[tuple[float, float]]:
        spans, since = [], None
        for at, state, _ in sorted(self.states, key=lambda item: item[0]):
            if state in _STOPPED and since is None:
                since = at
            elif state not in _STOPPED and since is not None:
                spans.append((since, at))
                since = None
        if since is not None:
            spans.append((since, until))
        return spans

    def labels(self, until: float) -> list[Label]:
        found = []
        states = sorted(self.states, key=lambda item: item[0])
        for fault_id, start in self.starts.items():
            ending = self.ends.get(fault_id)
            onset = epoch_seconds(start["onset"])
            end = epoch_seconds(ending["end"]) if ending is not None else None
            window_end, tripped = end if end is not None else until, False
            if start["fault_class"] == FAILURE_MODE:
                # The machine's first stop after onset: every repair ends all failure modes under way.
                for at, state, event in states:
                    if at >= onset and state in _STOPPED:
                        if at <= window_end:
                            window_end, tripped = at, state == "fault" and event["fault_id"] == fault_id
                        break
            found.append(
                Label(
                    machine=self.machine,
                    machine_type=self.machine_type,
                    fault=start["fault"],
                    fault_class=start["fault_class"],
                    fault_id=fault_id,
                    onset=onset,
                    window_end=window_end,
                    end=end,
                    end_reason=ending["reason"] if ending is not None else None,
                    detectable_from=self.visible.get(fault_id),
                    tripped=tripped,
                    scheduled=bool(start["scheduled"]),
                )
            )
        return found


def ground_truth_from_events(
    events: Iterable[Mapping[str, Any]], observed: Mapping[str, tuple[float, float]]
) -> GroundTruth:
    """Labels of every machine from its ground-truth events (any order; schema 2 only).

    `observed` gives each machine's first and last observed time; labels still open are cut there.
    """
    machines: dict[str, _MachineEvents] = {}
    for event in events:
        if event.get("schema") != SCHEMA_VERSION:
            raise UsageError(
                f"ground truth of schema {event.get('schema')!r} (machine {event.get('machine')!r}); "
                f"score needs schema {SCHEMA_VERSION}: regenerate it with this version (score --regenerate)"
            )
        machine = event["machine"]
        collected = machines.get(machine)
        if collected is None:
            collected = machines[machine] = _MachineEvents(machine, event["type"])
        collected.add(event)
    labels: list[Label] = []
    stopped: dict[str, list[tuple[float, float]]] = {}
    for machine, collected in machines.items():
        until = observed.get(machine, (0.0, float("inf")))[1]
        labels.extend(collected.labels(until))
        stopped[machine] = collected.stopped(until)
    labels.sort(key=lambda label: (label.machine, label.onset, label.fault_id))
    types = {machine: collected.machine_type for machine, collected in machines.items()}
    return GroundTruth(labels, stopped, dict(observed), types)
