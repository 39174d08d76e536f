"""A compressor's receiver between two process events, in closed form (load/unload cycling or decay)."""

from __future__ import annotations

import math

from simulator.model.profiles import COMPRESSOR_BAND_BAR


class AirPiece:
    """Receiver pressure and load state from `t0` on, until the next process event.

    Running, the compressor loads below cut-in and fills at `fill` bar/s until cut-out, then
    unloads and the plant's demand drains the receiver at `drain` bar/s. Stopped, the pressure
    decays towards `target` with time constant `tau` and never rises (a vented receiver stays
    vented until the compressor runs again).
    """

    __slots__ = ("cut_in", "cut_out", "cycling", "drain", "fill", "loaded0", "p0", "t0", "target", "tau")

    def __init__(self, t0: float, p0: float, loaded0: bool, cut_in: float) -> None:
        self.t0, self.p0, self.loaded0 = t0, p0, loaded0
        self.cut_in, self.cut_out = cut_in, cut_in + COMPRESSOR_BAND_BAR
        self.cycling = False
        self.fill = self.drain = 0.0
        self.target, self.tau = p0, math.inf

    @classmethod
    def cycling_from(
        cls, t0: float, p0: float, loaded0: bool, cut_in: float, fill: float, drain: float
    ) -> AirPiece:
        piece = cls(t0, p0, loaded0, cut_in)
        piece.cycling, piece.fill, piece.drain = True, fill, drain
        return piece

    @classmethod
    def decaying_from(cls, t0: float, p0: float, cut_in: float, target: float, tau: float) -> AirPiece:
        piece = cls(t0, p0, False, cut_in)
        piece.target, piece.tau = target, tau
        return piece

    def at(self, t: float) -> tuple[float, bool]:
        """(pressure in bar, loaded) at simulated time `t` >= t0."""
        s = t - self.t0
        if not self.cycling:
            if self.p0 <= self.target:
                return self.p0, False
            return self.target + (self.p0 - self.target) * math.exp(-s / self.tau), False
        fill, drain, cut_in, cut_out = self.fill, self.drain, self.cut_in, self.cut_out
        if fill <= 0.0:  # demand at or above capacity: loaded for good, the network sags
            return max(0.0, self.p0 + fill * s), True
        if self.loaded0 or self.p0 < cut_in:
            to_switch = max(0.0, (cut_out - self.p0) / fill)
            if s < to_switch:
                return self.p0 + fill * s, True
            if drain <= 0.0:
                return cut_out, False
            s -= to_switch
            unloading = True
        else:
            if drain <= 0.0:
                return self.p0, False
            to_switch = (self.p0 - cut_in) / drain
            if s < to_switch:
                return self.p0 - drain * s, False
            s -= to_switch
            unloading = False
        band = cut_out - cut_in
        down, up = band / drain, band / fill
        s %= down + up  # whole load/unload cycles change nothing
        if unloading:
            return (cut_out - drain * s, False) if s < down else (cut_in + fill * (s - down), True)
        return (cut_in + fill * s, True) if s < up else (cut_out - drain * (s - up), False)
