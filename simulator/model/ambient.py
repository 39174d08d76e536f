"""Hall temperature of a site by simulated date: season, time of day and weather, as sinusoids.

A sum of sinusoids keeps every machine's thermal model exact: the response of a first-order lag
to `A cos(wt + p)` is `A / sqrt(1 + (w tau)^2) cos(wt + p - atan(w tau))`, so temperatures are
evaluated in closed form at any instant, whatever the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.model.randomness import CounterRandom, stream_key

DAY_S = 86_400.0
YEAR_S = 365.2425 * DAY_S
# An unconditioned production hall in a temperate climate (northern hemisphere, times in UTC):
# 21 °C on average, ±4 °C over the year (warmest around 20 July), ±2 °C over the day (warmest at
# 15:00), and weather: two slow swings of a few days with phases of the site's own.
HALL_MEAN_C = 21.0
SEASON_AMPLITUDE_C = 4.0
SEASON_PEAK_DAY = 201.0  # day of the year
DAY_AMPLITUDE_C = 2.0
DAY_PEAK_HOUR = 15.0
WEATHER_PERIODS_S = (4.3 * DAY_S, 9.1 * DAY_S)
WEATHER_AMPLITUDES_C = (1.0, 0.7)
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True, slots=True)
class Wave:
    amplitude: float
    omega: float  # rad/s
    phase: float  # rad, at simulated time 0


class Ambient:
    """The hall temperature felt through a first-order lag: `value(t)` for simulated seconds `t`."""

    __slots__ = ("_terms", "mean", "upper_bound", "waves")

    def __init__(self, mean: float, waves: tuple[Wave, ...]) -> None:
        self.mean, self.waves = mean, waves
        # Flat (amplitude, omega, phase) triples: evaluated for every sample of every machine.
        self._terms = tuple(x for wave in waves for x in (wave.amplitude, wave.omega, wave.phase))
        self.upper_bound = mean + sum(abs(wave.amplitude) for wave in waves)  # no value exceeds it

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ambient) and (self.mean, self.waves) == (other.mean, other.waves)

    def __hash__(self) -> int:
        return hash((self.mean, self.waves))

    def __getstate__(self) -> tuple[float, tuple[Wave, ...]]:
        return self.mean, self.waves

    def __setstate__(self, state: tuple[float, tuple[Wave, ...]]) -> None:
        self.__init__(*state)  # type: ignore[misc]

    def value(self, t: float) -> float:
        cos = math.cos
        a1, w1, p1, a2, w2, p2, a3, w3, p3, a4, w4, p4 = self._terms
        return (
            self.mean
            + a1 * cos(w1 * t + p1)
            + a2 * cos(w2 * t + p2)
            + a3 * cos(w3 * t + p3)
            + a4 * cos(w4 * t + p4)
        )

    def lagged(self, tau_s: float, offset_c: float = 0.0) -> Ambient:
        """The steady-state response of a lag with time constant `tau_s`, shifted by `offset_c`."""
        waves = tuple(
            Wave(
                wave.amplitude / math.sqrt(1.0 + (wave.omega * tau_s) ** 2),
                wave.omega,
                wave.phase - math.atan(wave.omega * tau_s),
            )
            for wave in self.waves
        )
        return Ambient(self.mean + offset_c, waves)


def site_ambient(seed: int, site: str, start_epoch_ms: int) -> Ambient:
    """The hall temperature of `site` for a run starting at `start_epoch_ms` (UTC)."""
    start_s = start_epoch_ms / 1000.0
    year_omega = _TWO_PI / YEAR_S
    day_omega = _TWO_PI / DAY_S
    # 1970-01-01 is day 0 of a year (to within the leap-day drift, a fraction of a day).
    waves = [
        Wave(SEASON_AMPLITUDE_C, year_omega, year_omega * (start_s - SEASON_PEAK_DAY * DAY_S) % _TWO_PI),
        Wave(DAY_AMPLITUDE_C, day_omega, day_omega * (start_s - DAY_PEAK_HOUR * 3_600.0) % _TWO_PI),
    ]
    weather = CounterRandom(stream_key(seed, site, "weather"))
    for period, amplitude in zip(WEATHER_PERIODS_S, WEATHER_AMPLITUDES_C, strict=True):
        omega = _TWO_PI / period
        waves.append(Wave(amplitude, omega, (omega * start_s + _TWO_PI * weather.random()) % _TWO_PI))
    return Ambient(HALL_MEAN_C, tuple(waves))
