"""A small baseline detector, as a worked example of scoring: rolling z-scores of vibration and temperature.

For every machine it keeps, over running samples only, a short and a long exponentially weighted
mean of vibration RMS and temperature, and the long-run variance. It fires when the short mean
leaves the long mean by more than `threshold` long-run standard deviations, then stays quiet for
`cooldown_s`. While it is worried it stops learning (the fault must not become the new normal), and
it forgets everything after maintenance (the repaired machine is a new machine).

    python -m simulator --dry-run --duration 604800 > week.jsonl
    python examples/baseline_detector.py week.jsonl --out detections.csv
    python cli.py score detections.csv --regenerate --duration 604800

It reads telemetry and ignores ground truth (a detector must not see labels).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from scoring.detections import Detection, write_detections
from scoring.labels import epoch_seconds

SIGNALS = ("vibration_rms", "temperature")


@dataclass(frozen=True)
class BaselineSettings:
    short_s: float = 1_800.0  # the recent level: half an hour
    long_s: float = 86_400.0  # normal: the last day
    threshold: float = 3.0  # standard deviations of the long-run spread
    cooldown_s: float = 3_600.0
    warmup_s: float = 4 * 3_600.0  # running time to learn normal before judging


@dataclass
class _Track:
    """Running statistics of one signal of one machine (EWMAs, the long ones bias-corrected)."""

    short: float | None = None
    long_sum: float = 0.0
    square_sum: float = 0.0
    weight: float = 0.0  # of everything seen: normalises the long mean and variance from the start

    def update(self, value: float, dt: float, settings: BaselineSettings, learn: bool) -> float:
        """Add a sample `dt` seconds after the previous one; return its z-score."""
        if self.short is None:
            self.short = value
        else:
            self.short += (1.0 - math.exp(-dt / settings.short_s)) * (value - self.short)
        if learn:
            keep = math.exp(-dt / settings.long_s)
            self.long_sum = keep * self.long_sum + value
            self.square_sum = keep * self.square_sum + value * value
            self.weight = keep * self.weight + 1.0
        if self.weight < 2.0:
            return 0.0
        mean = self.long_sum / self.weight
        variance = max(self.square_sum / self.weight - mean * mean, 1e-12)
        return (self.short - mean) / math.sqrt(variance)


@dataclass
class _Machine:
    tracks: dict[str, _Track] = field(default_factory=lambda: {name: _Track() for name in SIGNALS})
    last_time: float | None = None
    running_s: float = 0.0
    quiet_until: float = -math.inf
    worried: bool = False


def detect(messages: Iterable[dict], settings: BaselineSettings | None = None) -> Iterator[Detection]:
    """Detections from telemetry messages in time order (ground-truth messages are skipped)."""
    settings = settings or BaselineSettings()
    machines: dict[str, _Machine] = {}
    for message in messages:
        if message.get("kind") != "telemetry":
            continue
        machine = machines.setdefault(message["machine"], _Machine())
        if message["state"] == "maintenance":
            machines[message["machine"]] = _Machine()  # repaired: learn it afresh
            continue
        now = epoch_seconds(message["ts"])
        dt = 0.0 if machine.last_time is None else now - machine.last_time
        machine.last_time = now
        if message["state"] != "running":
            continue
        machine.running_s += dt
        worst = 0.0
        for name in SIGNALS:
            value = message["signals"].get(name)
            if value is not None:
                z = machine.tracks[name].update(value, dt, settings, learn=not machine.worried)
                worst = max(worst, z)
        machine.worried = worst > settings.threshold / 2
        if (
            machine.running_s >= settings.warmup_s
            and worst > settings.threshold
            and now >= machine.quiet_until
        ):
            machine.quiet_until = now + settings.cooldown_s
            yield Detection(message["machine"], now, None, round(worst, 2))


def read_messages(path: Path) -> Iterator[dict]:
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "telemetry", type=Path, help="JSON lines: a dry run's output, or the archive's records"
    )
    parser.add_argument("--out", type=Path, default=Path("detections.csv"))
    defaults = BaselineSettings()
    for name in ("short_s", "long_s", "threshold", "cooldown_s", "warmup_s"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    settings = BaselineSettings(args.short_s, args.long_s, args.threshold, args.cooldown_s, args.warmup_s)
    detections = list(detect(read_messages(args.telemetry), settings))
    write_detections(detections, args.out)
    print(f"{len(detections)} detections written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
