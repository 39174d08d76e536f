"""Wall time of `python cli.py --help` against `python -c "import typer"`, measured side by side.

`--help` should cost little more than importing Typer itself: the verbs import Pulumi, pulumi_aws
and boto3 only when they run. Goal: median ratio <= 1.5. Runs are interleaved so machine noise
hits all commands alike. Also measured: `--help` with TYPER_USE_RICH=0 (Typer's plain help),
which separates what cli.py imports from what Typer's rich help renderer costs.

    .venv/bin/python bench/bench_cli_help.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.5


def wall_time(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()

    python = sys.executable
    reference = [python, "-c", "import typer"]
    help_command = [python, str(REPO / "cli.py"), "--help"]
    plain_env = {**os.environ, "TYPER_USE_RICH": "0"}
    # Warm the page cache and bytecode once; cold-start disk reads are not what this measures.
    wall_time(reference)
    wall_time(help_command)
    wall_time(help_command, plain_env)

    times: dict[str, list[float]] = {"reference": [], "help": [], "plain": []}
    for _ in range(args.repeats):
        times["reference"].append(wall_time(reference))
        times["help"].append(wall_time(help_command))
        times["plain"].append(wall_time(help_command, plain_env))

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["help"] / medians["reference"]
    plain_ratio = medians["plain"] / medians["reference"]
    print(f"python: {python} (PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')})")
    print(f"repeats: {args.repeats}, interleaved")
    print(f'python -c "import typer":             median {medians["reference"] * 1000:7.1f} ms')
    print(
        f"python cli.py --help:                 median {medians['help'] * 1000:7.1f} ms  ratio {ratio:.2f}x"
    )
    print(
        f"TYPER_USE_RICH=0 python cli.py --help: median {medians['plain'] * 1000:7.1f} ms  "
        f"ratio {plain_ratio:.2f}x"
    )
    print(f"goal --help <= {GOAL_RATIO}x import typer: {'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
