"""Exact first-order thermal lag between process events, and where it crosses a threshold.

Between two events of a machine the temperature target is the hall's (a sum of sinusoids) plus a
constant rise plus a linear ramp (a fault growing): the response to each part is closed form, so a
temperature is a pure function of the piece and the time, whatever the sampling step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from simulator.model.ambient import Ambient

# A crossing search scans in steps of this share of the time constant before bisecting.
_SCAN_SHARE = 0.125
_BISECTIONS = 40
# Pieces without a known end are searched this far ahead, then checked again.
SEARCH_HORIZON_S = 2 * 86_400.0


class Lag:
    """`x(t) = A + B s - B tau + C e^(-s/tau)` with `s = t - t0`: a lag following `A + B s`."""

    __slots__ = ("a", "b", "c", "t0", "tau")

    def __init__(self, t0: float, tau: float, start: float, a: float, b: float) -> None:
        self.t0, self.tau, self.a, self.b = t0, tau, a, b
        self.c = start - a + b * tau

    def value(self, t: float) -> float:
        s = t - self.t0
        return self.a + self.b * (s - self.tau) + self.c * math.exp(-s / self.tau)

    def upper_bound(self, until: float) -> float:
        """No value in [t0, until] exceeds this (B >= 0)."""
        return self.a + max(self.b, 0.0) * (until - self.t0) + max(self.c, 0.0)


class Temperature:
    """A machine's temperature piece: the lagged hall plus a lag of its own heat sources."""

    __slots__ = ("ambient", "heat")

    def __init__(self, ambient: Ambient, heat: Lag) -> None:
        self.ambient = ambient  # already lagged by the machine's time constant
        self.heat = heat

    def value(self, t: float) -> float:
        heat = self.heat
        s = t - heat.t0
        return self.ambient.value(t) + heat.a + heat.b * (s - heat.tau) + heat.c * math.exp(-s / heat.tau)

    def upper_bound(self, until: float) -> float:
        return self.ambient.upper_bound + self.heat.upper_bound(until)


def first_crossing(
    value: Callable[[float], float], start: float, end: float, threshold: float, tau: float
) -> float | None:
    """First time in (start, end] at which `value` reaches `threshold`, or None.

    Scans in steps of tau/8 (a lag cannot turn around faster than its time constant allows) and
    bisects the first bracket, so the result depends only on the piece, never on sampling.
    """
    if value(start) >= threshold:
        return start
    step = max(tau * _SCAN_SHARE, 1e-3)
    low = start
    while low < end:
        high = min(low + step, end)
        if value(high) >= threshold:
            for _ in range(_BISECTIONS):
                middle = 0.5 * (low + high)
                if value(middle) >= threshold:
                    high = middle
                else:
                    low = middle
            return high
        low = high
    return None
