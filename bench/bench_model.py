"""Generation cost of the factory model alone: µs per message, against orjson in the same run.

Run: .venv/bin/python bench/bench_model.py [--machines 10000] [--repeats 7]
     .venv/bin/python bench/bench_model.py --baseline /path/to/older/checkout

Prints medians of CPU time (process time, so other load on a shared machine inflates them less) and
the ratio against a reference measured in the same run: `orjson.dumps` of the same payload. With
`--baseline`, the model of another checkout (e.g. `git worktree add ../baseline <commit>`) is
measured too, in alternating processes with the same interpreter, so both ratios come from one
invocation under the same load; the last line compares them. Asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parents[1]


def big_site(machines: int) -> Any:
    """A site of about `machines` machines: 100 lines in the default 2:1:1:1 type mix, faults on."""
    from factory_core.fleet import FaultSettings, FleetSettings, MachineType

    lines = 100
    per_line = max(5, machines // lines)
    mix = {
        MachineType.CNC_MILL: per_line * 2 // 5,
        MachineType.HYDRAULIC_PRESS: per_line // 5,
        MachineType.CONVEYOR: per_line // 5,
        MachineType.AIR_COMPRESSOR: per_line - per_line * 2 // 5 - 2 * (per_line // 5),
    }
    fields = FaultSettings.model_fields
    if "failure_rate_scale" in fields:
        # Failure modes three times as often as by default (about a quarter of the machines have
        # one under way at any time) and ten times the sensor faults, so fault handling is measured.
        faults = FaultSettings(sensor_fault_per_hour=0.5, failure_rate_scale=3.0)
    else:  # an older checkout (schema 1), as its own benchmark configured it
        faults = FaultSettings(sensor_fault_per_hour=0.5, bearing_wear_per_hour=0.1, overheating_per_hour=0.1)
    return FleetSettings(seed=1, lines_per_site=lines, machines_per_line=mix, faults=faults)


def time_model(model: Any, rounds: int) -> tuple[float, int]:
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


def measure(machines: int, repeats: int, rounds: int) -> dict[str, Any]:
    """Model and reference µs per telemetry message, for the checkout on sys.path."""
    from simulator.dry_run import DEFAULT_START_EPOCH_MS
    from simulator.model import SiteModel

    started = time.process_time()
    model = SiteModel(big_site(machines), 0, DEFAULT_START_EPOCH_MS)
    build_s = time.process_time() - started
    time_model(model, 1)  # warm-up: first samples emit the start events
    example = orjson.loads(model.sample(0)[-1].payload)
    model_us, reference_us = [], []
    for _ in range(repeats):
        seconds, messages = time_model(model, rounds)
        model_us.append(seconds / messages * 1e6)
        reference_us.append(time_reference(example, messages) / messages * 1e6)
    return {
        "machines": len(model.machines),
        "build_s": build_s,
        "model_us": model_us,
        "reference_us": reference_us,
        "payload_bytes": len(orjson.dumps(example)),
    }


def dry_run_hour() -> tuple[float, float, int]:
    from factory_core.fleet import FleetSettings
    from simulator.dry_run import write

    cpu, wall = [], []
    lines = 0
    for _ in range(3):
        sink = io.BytesIO()
        started, started_wall = time.process_time(), time.perf_counter()
        lines = write(sink, FleetSettings(seed=7), 0, 3_600.0)
        cpu.append(time.process_time() - started)
        wall.append(time.perf_counter() - started_wall)
    return statistics.median(cpu), statistics.median(wall), lines


def _child(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--root",
        str(root),
        "--machines",
        str(args.machines),
        "--repeats",
        str(args.repeats),
        "--rounds",
        str(args.rounds),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def compare(args: argparse.Namespace) -> None:
    """Baseline and current model in alternating processes; medians over all their repeats."""
    results: dict[str, dict[str, list[float]]] = {"baseline": {}, "current": {}}
    for _ in range(args.processes):
        for name, root in (("baseline", args.baseline), ("current", HERE)):
            found = _child(root, args)
            for key in ("model_us", "reference_us"):
                results[name].setdefault(key, []).extend(found[key])
            results[name]["payload_bytes"] = [found["payload_bytes"]]
    ratios = {}
    print(f"{'':38s}{'baseline':>12s}{'current':>12s}")
    for label, key in (
        ("model, CPU µs per telemetry message", "model_us"),
        ("orjson.dumps of the same payload, µs", "reference_us"),
    ):
        row = [statistics.median(results[name][key]) for name in ("baseline", "current")]
        print(f"{label:38s}{row[0]:12.2f}{row[1]:12.2f}")
    for name in ("baseline", "current"):
        ratios[name] = statistics.median(results[name]["model_us"]) / statistics.median(
            results[name]["reference_us"]
        )
    print(f"{'ratio model / reference':38s}{ratios['baseline']:11.1f}x{ratios['current']:11.1f}x")
    sizes = [results[name]["payload_bytes"][0] for name in ("baseline", "current")]
    print(f"{'payload size (cnc_mill telemetry)':38s}{sizes[0]:10d} B{sizes[1]:10d} B")
    print(
        f"current ratio / baseline ratio        {ratios['current'] / ratios['baseline']:.2f} "
        f"({args.processes} alternating processes x {args.repeats} repeats each)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="samples per machine per repeat")
    parser.add_argument("--baseline", type=Path, help="another checkout whose model to measure alongside")
    parser.add_argument("--processes", type=int, default=3, help="with --baseline: processes per checkout")
    parser.add_argument(
        "--root", type=Path, help=argparse.SUPPRESS
    )  # child: measure this checkout, print JSON
    args = parser.parse_args()
    if args.root is not None:
        sys.path.insert(0, str(args.root))
        print(json.dumps(measure(args.machines, args.repeats, args.rounds)))
        return
    sys.path.insert(0, str(HERE))  # run from anywhere without installing
    if args.baseline is not None:
        compare(args)
        return
    found = measure(args.machines, args.repeats, args.rounds)
    model_us, reference_us = found["model_us"], found["reference_us"]
    model_median, reference_median = statistics.median(model_us), statistics.median(reference_us)
    hour_cpu, hour_wall, lines = dry_run_hour()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machines = found["machines"]
    print(f"machines in site                      {machines}")
    per_machine_us = found["build_s"] / machines * 1e6
    build_ms = found["build_s"] * 1000
    print(f"model build                           {build_ms:.0f} ms ({per_machine_us:.1f} µs/machine)")
    print(
        f"model, CPU µs per telemetry message   {model_median:.2f} (median of {args.repeats}; "
        f"min {min(model_us):.2f}, max {max(model_us):.2f})"
    )
    print(f"reference orjson.dumps of it, µs      {reference_median:.2f}")
    print(f"ratio model / reference               {model_median / reference_median:.1f}x")
    print(f"one core sustains                     {1e6 / model_median:,.0f} messages/s of model work")
    print(f"payload size (cnc_mill telemetry)     {found['payload_bytes']} bytes")
    print(
        f"dry run, 1 simulated hour, default    {hour_cpu:.2f} s CPU ({hour_wall:.2f} s wall)"
        f" for {lines} lines ({lines / hour_cpu:,.0f} lines/s, {3_600 / hour_cpu:,.0f}x real time)"
    )
    print(f"max RSS                               {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
