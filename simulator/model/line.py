"""Coupling along a line: the line's conveyor as the machines around it see it.

Parts flow from the machining cell (mills) over the line's first conveyor to the press. When the
conveyor stops for longer than a machine's buffer covers, the mills upstream are blocked (their
output buffer is full) and the press downstream is starved; they resume when it runs again. The
coupling goes one way only, so it never loops: nothing the mills or the press do stops the conveyor.

The conveyor's process is event-driven and does not depend on when it is sampled, so the feed walks
a copy of it (same seed, same settings) as far ahead as its neighbours ask: the copy changes state
at exactly the times the conveyor itself does, whatever the order in which machines are sampled.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.model.process import MachineProcess

_RUNNING = "running"
_KEEP_TRANSITIONS = 256  # older transitions than every neighbour has asked about are dropped past this


class LineFeed:
    """When the line's conveyor runs: `status(t)` = (running, since when, next change)."""

    __slots__ = ("_asked", "_conveyor", "_running", "_times")

    def __init__(self, conveyor: MachineProcess) -> None:
        self._conveyor = conveyor
        self._times = [0.0]
        self._running = [conveyor.state == _RUNNING]
        self._asked: list[float] = []

    def register(self) -> int:
        """A neighbour's handle for `status`."""
        self._asked.append(0.0)
        return len(self._asked) - 1

    def status(self, consumer: int, t: float) -> tuple[bool, float, float]:
        """(conveyor running at `t`, since when, when that next changes)."""
        times = self._times
        while times[-1] <= t:
            self._walk()
        index = bisect_right(times, t) - 1
        self._asked[consumer] = t
        if len(times) > _KEEP_TRANSITIONS:
            self._forget()
            index = bisect_right(self._times, t) - 1
        return self._running[index], self._times[index], self._times[index + 1]

    def _walk(self) -> None:
        """Advance the conveyor copy by one event; record a change between running and stopped."""
        for event in self._conveyor.advance_one():
            if event.event == "state_change" and event.to_state is not None:
                running = event.to_state == _RUNNING
                if running != self._running[-1]:
                    self._times.append(event.at_s)
                    self._running.append(running)

    def _forget(self) -> None:
        oldest = bisect_right(self._times, min(self._asked)) - 2
        if oldest > 0:
            del self._times[:oldest]
            del self._running[:oldest]
