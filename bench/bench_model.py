"""Generation cost of the factory model alone: µs per message, against orjson in the same run.

Run: .venv/bin/python bench/bench_model.py [--machines 10000] [--repeats 7]
Prints medians of CPU time (process time, so other load on a shared machine inflates them less) and
the ratio against a reference measured in the same run; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from factory_core.fleet import FaultSettings, FleetSettings, MachineType
from simulator.dry_run import DEFAULT_START_EPOCH_MS, write
from simulator.model import SiteModel


def big_site(machines: int) -> FleetSettings:
    """A site of about `machines` machines: 100 lines in the default 2:1:1:1 type mix."""
    lines = 100
    per_line = max(5, machines // lines)
    mix = {
        MachineType.CNC_MILL: per_line * 2 // 5,
        MachineType.HYDRAULIC_PRESS: per_line // 5,
        MachineType.CONVEYOR: per_line // 5,
        MachineType.AIR_COMPRESSOR: per_line - per_line * 2 // 5 - 2 * (per_line // 5),
    }
    # Default fault rates scaled up so fault handling is part of what is measured.
    faults = FaultSettings(sensor_fault_per_hour=0.5, bearing_wear_per_hour=0.1, overheating_per_hour=0.1)
    return FleetSettings(seed=1, lines_per_site=lines, machines_per_line=mix, faults=faults)


def time_model(model: SiteModel, rounds: int) -> tuple[float, int]:
    """Seconds and telemetry messages for `rounds` samples of every machine (ground truth included)."""
    count = len(model.machines)
    sample = model.sample
    started = time.process_time()
    for _ in range(rounds):
        for index in range(count):
            sample(index)
    return time.process_time() - started, rounds * count


def time_reference(payload: dict, calls: int) -> float:
    dumps = orjson.dumps
    started = time.process_time()
    for _ in range(calls):
        dumps(payload)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="samples per machine per repeat")
    args = parser.parse_args()

    fleet = big_site(args.machines)
    started = time.process_time()
    model = SiteModel(fleet, 0, DEFAULT_START_EPOCH_MS)
    build_s = time.process_time() - started
    machines = len(model.machines)
    time_model(model, 1)  # warm-up: first samples emit the start events
    example = orjson.loads(model.sample(0)[-1].payload)

    model_us, reference_us = [], []
    for _ in range(args.repeats):
        seconds, messages = time_model(model, args.rounds)
        model_us.append(seconds / messages * 1e6)
        reference_us.append(time_reference(example, messages) / messages * 1e6)
    model_median, reference_median = statistics.median(model_us), statistics.median(reference_us)

    default_fleet = FleetSettings(seed=7)
    hour_s, hour_wall_s = [], []
    for _ in range(3):
        sink = io.BytesIO()
        started, started_wall = time.process_time(), time.perf_counter()
        lines = write(sink, default_fleet, 0, 3_600.0)
        hour_s.append(time.process_time() - started)
        hour_wall_s.append(time.perf_counter() - started_wall)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"machines in site                      {machines}")
    per_machine_us = build_s / machines * 1e6
    print(f"model build                           {build_s * 1000:.0f} ms ({per_machine_us:.1f} µs/machine)")
    print(
        f"model, CPU µs per telemetry message   {model_median:.2f} (median of {args.repeats}; "
        f"min {min(model_us):.2f}, max {max(model_us):.2f})"
    )
    print(f"reference orjson.dumps of it, µs      {reference_median:.2f}")
    print(f"ratio model / reference               {model_median / reference_median:.1f}x")
    print(f"one core sustains                     {1e6 / model_median:,.0f} messages/s of model work")
    print(f"payload size (cnc_mill telemetry)     {len(orjson.dumps(example))} bytes")
    hour_median, hour_wall = statistics.median(hour_s), statistics.median(hour_wall_s)
    print(
        f"dry run, 1 simulated hour, default    {hour_median:.2f} s CPU ({hour_wall:.2f} s wall)"
        f" for {lines} lines ({lines / hour_median:,.0f} lines/s, {3_600 / hour_median:,.0f}x real time)"
    )
    print(f"max RSS                               {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
