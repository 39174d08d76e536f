"""Ground-truth label events as the model produces them (times in simulated seconds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """A ground-truth fact: a state change, or a fault starting, growing or ending."""

    event: str  # "state_change" | "fault_start" | "fault_update" | "fault_end"
    at_s: float  # when the described change happened
    onset_s: float  # state_change: = at_s; fault events: when the fault began
    end_s: float | None = None  # fault_end: when the fault ended
    detectable_from_s: float | None = None
    fault: str | None = None
    fault_class: str | None = None
    fault_id: int | None = None
    signal: str | None = None
    severity: float | None = None
    scheduled: bool = False
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None


def event_time(event: LabelEvent) -> float:
    return event.at_s


NO_EVENTS: tuple[LabelEvent, ...] = ()
