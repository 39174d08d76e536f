"""The fault run of issue 10 with its full durations: every fault under load, then reconciled.

Starts a local stack (2 simulators, ephemeral ports, in a temporary folder), then: kill -9 of a
simulator, kill -9 of the rule runner, broker SIGTERM, rule runner SIGSTOP (`--runner-stopped`,
30 s), the archive folder unwritable (`--unwritable`, 20 s), a certificate rotation, and broker
SIGKILL. Prints the timeline, then `verify` beside an independent count (the archive read line by
line, and a subscriber of its own): missing, duplicates, restarts and what they may have lost.
Exits 1 if anything went missing before the broker SIGKILL, or if verify and the independent
count disagree. tests/test_local_stack_faults.py runs the same plan, shortened, in CI.

    .venv/bin/python bench/bench_fault_run.py [--runner-stopped 30] [--unwritable 20] [--autosave 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from support_fault_run import FaultPlan, run_fault_plan, start_fault_stack  # noqa: E402
from support_local_stack import run_cli  # noqa: E402

from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner-stopped", type=float, default=30.0, help="seconds the runner is stopped")
    parser.add_argument("--unwritable", type=float, default=20.0, help="seconds the archive is unwritable")
    parser.add_argument("--autosave", type=int, default=5, help="Mosquitto autosave interval, seconds")
    parser.add_argument("--simulators", type=int, default=2)
    args = parser.parse_args()
    plan = FaultPlan(args.simulators, args.runner_stopped, args.unwritable, args.autosave)
    with tempfile.TemporaryDirectory(prefix="fault-run-") as folder:
        directory = Path(folder)
        os.environ[CONFIG_ENV] = str(directory / "Pulumi.local.yaml")
        os.environ[STATE_DIR_ENV] = str(directory / "state")
        paths = start_fault_stack(directory, plan)
        try:
            run = run_fault_plan(paths, plan, directory, print)
        finally:
            run_cli("destroy", "--stack", "local", "--yes", "--json")
    report, missing = run.report, run.raw_missing()
    rows = [
        ("missing before the broker SIGKILL", run.before_broker_kill.missing, "-"),
        ("missing", report.missing, len(missing)),
        ("duplicates", report.duplicates, run.raw_duplicates()),
        ("possibly lost at restarts", report.possibly_lost, run.raw_restart_gaps()),
        ("unique archived", report.unique, len(run.archived_set)),
        ("seen by the subscriber, not archived", "-", len(run.seen - run.archived_set)),
    ]
    print(f"\n{'':40} {'verify':>10} {'independent':>12}")
    for label, verified, counted in rows:
        print(f"{label:40} {verified!s:>10} {counted!s:>12}")
    agree = (
        report.missing == len(missing)
        and report.duplicates == run.raw_duplicates()
        and report.possibly_lost == run.raw_restart_gaps()
        and run.seen - run.archived_set <= missing
    )
    print(f"\nverify and the independent count {'agree' if agree else 'DISAGREE'}")
    return 0 if agree and run.before_broker_kill.missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
