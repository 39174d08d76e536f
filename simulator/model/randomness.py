"""Random streams of the model: counter-based for the machine's process, a normal table for noise.

The process of a machine (states, faults, jobs, production) must not depend on when it is looked
at, so its draws come from a counter-based generator: draw `n` of stream `key` is a fixed function
of (key, n) (SplitMix64's finaliser, Steele et al., "Fast splittable pseudorandom number
generators", OOPSLA 2014). It holds two integers, so every machine can have several independent
streams (and a copy of its line's conveyor) without the 2.5 KB a Mersenne Twister keeps.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist
from typing import Final

_MASK64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_TO_UNIT: Final = 1.0 / (1 << 53)

# Standard normal quantiles at 4096 evenly spaced probabilities (|z| <= 3.6): measurement noise is
# drawn by table look-up, since random.gauss costs more than the rest of a reading.
NORMAL_TABLE_BITS: Final = 12
NORMAL_TABLE_SIZE: Final = 1 << NORMAL_TABLE_BITS
STANDARD_NORMAL: Final[tuple[float, ...]] = tuple(
    NormalDist().inv_cdf((k + 0.5) / NORMAL_TABLE_SIZE) for k in range(NORMAL_TABLE_SIZE)
)
_INV_CDF = NormalDist().inv_cdf


def stream_key(*parts: object) -> int:
    """A 64-bit key from stable parts (hashlib: `hash()` of strings is salted per process)."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix64(value: int) -> int:
    """SplitMix64's output function: a bijective 64-bit mixer."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class CounterRandom:
    """Draw `n` of this stream is `mix64(key + n * golden)`: the stream's state is its position."""

    __slots__ = ("count", "key")

    def __init__(self, key: int) -> None:
        self.key = key & _MASK64
        self.count = 0

    def bits(self) -> int:
        """The next 64 random bits."""
        self.count += 1
        return mix64((self.key + self.count * _GOLDEN) & _MASK64)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self.bits() >> 11) * _TO_UNIT

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def expovariate(self, rate: float) -> float:
        """Exponential with the given rate (mean 1 / rate); infinite for rate 0."""
        if rate <= 0.0:
            return math.inf
        return -math.log(1.0 - self.random()) / rate

    def gauss(self, mean: float = 0.0, sigma: float = 1.0) -> float:
        # Inverse CDF of a uniform kept away from 0 and 1: one draw per normal, any tail exact enough.
        u = min(max(self.random(), 1e-12), 1.0 - 1e-12)
        return mean + sigma * _INV_CDF(u)

    def lognormal_with_mean(self, mean: float, sigma: float = 0.5) -> float:
        """Skewed duration with the given mean, as repair and changeover times are in practice."""
        return math.exp(math.log(mean) - sigma * sigma / 2.0 + sigma * self.gauss())

    def pick(self, weights: tuple[float, ...]) -> int:
        """Index drawn with probability proportional to its weight."""
        target = self.random() * sum(weights)
        for index, weight in enumerate(weights):
            target -= weight
            if target < 0.0:
                return index
        return len(weights) - 1
