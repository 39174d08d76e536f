"""First run: seconds from `git clone` to the first archived message, before and after, side by side.

Each run clones a revision into a fresh temporary folder and runs the README's first command
there, detached so it returns once the first message is archived:
    git clone REPO clone && cd clone && ./iotfactory up --stack local --detach --json
on a machine that already has the apt packages (mosquitto, prometheus) and uv. The stack file
has every port at 0 and its own state folder, so runs never collide with a stack already running.

- before: `--before` (default: where this branch left main, `git merge-base HEAD main`)
- after: `--after` (default: HEAD; commit first, the clone sees only commits)
- cold cache: uv's cache is an empty folder (`UV_CACHE_DIR`), so every wheel is downloaded
- warm cache: uv's usual cache, which holds the locked wheels once anything here was synced

Reported per revision and cache: median seconds from clone to first archived message, of which
the stack's own `up` -> first archived (what bench_local_stack.py measures), and the size of the
.venv the clone ended up with; then the before/after ratios. Runs are interleaved so machine and
network noise hits both revisions alike.

    .venv/bin/python bench/bench_first_run.py [--repeats 3] [--caches cold,warm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from bench_local_stack import stack_file  # noqa: E402

from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV  # noqa: E402

CACHES = ("cold", "warm")
UP_TIMEOUT_S = 900


@dataclass(frozen=True)
class FirstRun:
    total_s: float  # git clone -> `up --detach` returned with the first message archived
    stack_s: float  # inside `up`: start -> first archived message
    venv_mb: float


def git(*args: str, cwd: Path = REPO_ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def megabytes(folder: Path) -> float:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total / 1e6


def first_run(revision: str, cache: str) -> FirstRun:
    with tempfile.TemporaryDirectory(prefix="bench-first-run-") as temporary:
        workdir = Path(temporary)
        clone = workdir / "clone"
        environment = {
            name: value for name, value in os.environ.items() if name not in ("VIRTUAL_ENV", "UV_CACHE_DIR")
        }
        environment[CONFIG_ENV] = str(stack_file(workdir, None))
        environment[STATE_DIR_ENV] = str(workdir / "state")
        if cache == "cold":
            environment["UV_CACHE_DIR"] = str(workdir / "uv-cache")
        began = time.monotonic()
        git("clone", "--quiet", "--no-checkout", str(REPO_ROOT), str(clone))
        git("checkout", "--quiet", "--detach", revision, cwd=clone)
        try:
            up = subprocess.run(
                ["./iotfactory", "up", "--stack", "local", "--detach", "--json"],
                cwd=clone, env=environment, capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False,
            )
            total = time.monotonic() - began
            if up.returncode != 0:
                raise SystemExit(f"{revision[:10]} ({cache} cache): up failed: {up.stderr.strip()[-2000:]}")
            result = json.loads(up.stdout.strip().splitlines()[-1])  # progress events come first
            return FirstRun(total, float(result["first_archived_after_s"]), megabytes(clone / ".venv"))
        finally:
            python = clone / ".venv" / "bin" / "python"
            if python.exists():
                subprocess.run(
                    [str(python), "cli.py", "destroy", "--stack", "local", "--yes"],
                    cwd=clone, env=environment, capture_output=True, timeout=120, check=False,
                )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per revision and cache (default 3)")
    parser.add_argument("--before", help="revision measured as before (default: merge-base with main)")
    parser.add_argument("--after", default="HEAD", help="revision measured as after (default: HEAD)")
    parser.add_argument("--caches", default=",".join(CACHES), help="cold, warm or both (default: cold,warm)")
    args = parser.parse_args()
    caches = [cache for cache in args.caches.split(",") if cache]
    if unknown := set(caches) - set(CACHES):
        parser.error(f"unknown cache {sorted(unknown)}; use cold and/or warm")
    revisions = {
        "before": git("rev-parse", args.before or git("merge-base", "HEAD", "main")),
        "after": git("rev-parse", args.after),
    }
    for label, revision in revisions.items():
        print(f"{label}: {revision[:10]} {git('log', '-1', '--format=%s', revision)[:90]}")

    runs: dict[tuple[str, str], list[FirstRun]] = {(c, label): [] for c in caches for label in revisions}
    for repeat in range(args.repeats):
        for cache in caches:
            for label, revision in revisions.items():
                run = first_run(revision, cache)
                runs[cache, label].append(run)
                print(
                    f"  run {repeat + 1} {cache:4} {label:6} clone -> first archived {run.total_s:6.1f} s "
                    f"(stack {run.stack_s:4.1f} s, .venv {run.venv_mb:4.0f} MB)",
                    flush=True,
                )

    print(f"\nmedians of {args.repeats} runs (clone -> first archived message; of which the stack's own up)")
    for cache in caches:
        medians = {
            label: (
                statistics.median(run.total_s for run in runs[cache, label]),
                statistics.median(run.stack_s for run in runs[cache, label]),
                statistics.median(run.venv_mb for run in runs[cache, label]),
            )
            for label in revisions
        }
        for label, (total, stack, venv) in medians.items():
            print(f"  {cache:4} cache  {label:6} {total:6.1f} s (stack {stack:4.1f} s, .venv {venv:4.0f} MB)")
        before, after = medians["before"][0], medians["after"][0]
        print(f"  {cache:4} cache  after/before {after / before:.2f} ({before / after:.1f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
