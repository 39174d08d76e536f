"""End-to-end benchmark of the local stack: what `python cli.py up --stack local` does on this machine.

1. Seconds from `up --detach` to the first archived message (a fresh state folder each time, so
   the CA, certificates and broker database are created as on a first run). Goal: <= 5 s.
2. For each offered rate: the whole pipeline (simulators -> Mosquitto over mTLS, QoS 1 -> rule
   runner -> archive folder) for `--seconds`, then a clean stop and `verify`. Reported: archived
   msg/s (median of 1 s samples while running), archived/published (reference: what the
   simulators themselves report having published; goal 1.0), missing, duplicates, and
   publish->archive latency p50/p99 from the archive (goal p99 <= 2 s).
3. Optional `--kill-broker`: the same at the first rate with the broker SIGKILLed mid-run, to
   measure what Mosquitto's autosave interval can lose.

    .venv/bin/python bench/bench_local_stack.py [--repeats 3] [--seconds 60] [--rates 2000,6000]
                                                [--check] [--json FILE]

`--check` compares the first-archive time, the worst ratio and the worst p99 of the clean runs
against the goals in README.md's performance table and exits 1 if one is missed (the broker-kill
runs measure loss, they have no goal); `--json FILE` writes the results and verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from goals import check, finish  # noqa: E402

from factory_core.verbs import QuietSink, StopRequest  # noqa: E402
from local_stack.archive import LocalArchive  # noqa: E402
from local_stack.control import request  # noqa: E402
from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV, StatePaths  # noqa: E402
from local_stack.stack import LocalStack  # noqa: E402
from local_stack.verify import verify_archive  # noqa: E402

CLI = str(REPO_ROOT / "cli.py")
SIMULATORS = 2
MACHINES_PER_LINE = {"cnc_mill": 40, "hydraulic_press": 20, "conveyor": 20, "air_compressor": 20}
BACKLOG_S = 8.0
_PUBLISHED = re.compile(r"^done: .*?published (\d+)", re.MULTILINE)


def stack_file(directory: Path, rate: float | None, autosave_s: int = 5) -> Path:
    """2 simulators; `rate` msg/s in total at one sample per machine per second (None: the default fleet)."""
    fleet: dict[str, Any] = {"seed": 3}
    if rate is not None:
        per_line = sum(MACHINES_PER_LINE.values())
        lines = max(1, round(rate / SIMULATORS / per_line))
        fleet |= {
            "lines_per_site": lines,
            "machines_per_line": MACHINES_PER_LINE,
            "publish_interval_s": 1.0,
            "max_machine_series": lines * per_line,
        }
    from factory_core import stack_file

    document = {
        stack_file.CONFIG_FIELD: {
            stack_file.FLEET_KEY: fleet,
            stack_file.SIMULATOR_COUNT_KEY: SIMULATORS,
            stack_file.LOCAL_KEY: {
                "brokerPort": 0,
                "prometheusPort": 0,
                "grafanaPort": 0,
                "alertmanagerPort": 0,
                "metricsPortBase": 0,
                "mosquitto": {"autosaveIntervalS": autosave_s},
            },
        }
    }
    path = directory / "Pulumi.local.yaml"
    path.write_text(stack_file.render(document))
    return path


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def environment(config: Path, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[CONFIG_ENV] = str(config)
    env[STATE_DIR_ENV] = str(state)
    return env


def time_to_first_archive(workdir: Path) -> tuple[float, float]:
    """(wall seconds of `up --detach` until it returned, the stack's own up->first-archived seconds)."""
    state = workdir / "state-first"
    env = environment(stack_file(workdir, None), state)
    began = time.monotonic()
    result = cli(env, "up", "--stack", "local", "--detach", "--json")
    wall = time.monotonic() - began
    try:
        if result.returncode != 0:
            raise SystemExit(f"up failed: {result.stderr.strip()}")
        result_line = result.stdout.strip().splitlines()[-1]  # progress events come first
        return wall, float(json.loads(result_line)["first_archived_after_s"])
    finally:
        cli(env, "destroy", "--stack", "local", "--yes")


@dataclass
class PipelineRun:
    offered: float
    archived_per_s: float
    published: int
    unique: int
    missing: int
    duplicates: int
    p50_s: float | None
    p99_s: float | None

    @property
    def ratio(self) -> float:
        return self.unique / self.published if self.published else 0.0


def pipeline(
    workdir: Path, rate: float, seconds: float, kill_broker: str | None = None, autosave_s: int = 5
) -> PipelineRun:
    """`kill_broker`: None; "now" (SIGKILL mid-run); "backlog" (the rule runner paused for
    BACKLOG_S first, so the broker holds a queue for it when it is killed)."""
    state = workdir / f"state-{int(rate)}-{kill_broker or 'clean'}-{autosave_s}"
    env = environment(stack_file(workdir, rate, autosave_s), state)
    paths = StatePaths(state)
    result = cli(env, "up", "--stack", "local", "--detach", "--json")
    if result.returncode != 0:
        raise SystemExit(f"up failed: {result.stderr.strip()}")
    samples: list[float] = []
    try:
        began = time.monotonic()
        killed = False
        while time.monotonic() - began < seconds:
            time.sleep(1.0)
            status = request(paths, "status", timeout_s=10)
            if time.monotonic() - began > 5:  # past the connect ramp
                samples.append(float(status["pipeline"]["archived_per_s"]))
            if kill_broker and not killed and time.monotonic() - began > seconds / 2:
                pid_of = {s["name"]: int(s["pid"]) for s in status["services"] if s["pid"]}
                if kill_broker == "backlog":
                    os.kill(pid_of["rule-runner"], signal.SIGSTOP)
                    time.sleep(BACKLOG_S)
                os.kill(pid_of["broker"], signal.SIGKILL)
                if kill_broker == "backlog":
                    os.kill(pid_of["rule-runner"], signal.SIGCONT)
                killed = True
        # A clean stop (what Ctrl-C does): simulators drain, the archive catches up, then verify.
        os.environ[CONFIG_ENV], os.environ[STATE_DIR_ENV] = env[CONFIG_ENV], env[STATE_DIR_ENV]
        LocalStack().stop(StopRequest(), QuietSink())
        published = sum(
            int(match)
            for log in paths.logs_dir.glob("simulator-*.log")
            for match in _PUBLISHED.findall(log.read_text(errors="replace"))
        )
        report = verify_archive(LocalArchive(paths.default_archive_dir))
    finally:
        cli(env, "destroy", "--stack", "local", "--yes")
    latency = report.latency
    return PipelineRun(
        offered=rate,
        archived_per_s=statistics.median(samples) if samples else 0.0,
        published=published,
        unique=report.unique,
        missing=report.missing,
        duplicates=report.duplicates,
        p50_s=latency.p50_s if latency else None,
        p99_s=latency.p99_s if latency else None,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of the up->first-archive measurement")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each pipeline run")
    parser.add_argument("--rates", default="2000,6000", help="offered msg/s (all simulators together)")
    parser.add_argument("--kill-broker", action="store_true", help="also measure loss after broker SIGKILLs")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal in README.md is missed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results and verdicts here")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",") if rate]

    with tempfile.TemporaryDirectory(prefix="bench-local-stack-") as temporary:
        workdir = Path(temporary)
        walls, firsts = [], []
        for _ in range(args.repeats):
            wall, first = time_to_first_archive(workdir)
            walls.append(wall)
            firsts.append(first)
        print(
            f"up --detach -> first archived message: median {statistics.median(firsts):.2f} s inside the "
            f"stack, {statistics.median(walls):.2f} s wall for the command "
            f"(goal <= 5 s; {args.repeats} runs: " + ", ".join(f"{value:.2f}" for value in walls) + ")"
        )

        print(
            f"\n{'offered':>8} {'archived/s':>11} {'published':>10} {'unique':>9} {'ratio':>6} "
            f"{'missing':>8} {'dups':>6} {'p50 s':>7} {'p99 s':>7}"
        )
        kills = [(rates[0], "now", 5), (rates[0], "backlog", 5), (rates[0], "backlog", 1)]
        plan: list[tuple[float, str | None, int]] = [(rate, None, 5) for rate in rates]
        plan += kills if args.kill_broker else []
        clean: list[PipelineRun] = []
        for rate, kill, autosave_s in plan:
            run = pipeline(workdir, rate, args.seconds, kill_broker=kill, autosave_s=autosave_s)
            if kill is None:
                clean.append(run)
            label = f"{run.offered:>8.0f}"
            print(
                f"{label} {run.archived_per_s:>11.0f} {run.published:>10} {run.unique:>9} {run.ratio:>6.3f} "
                f"{run.missing:>8} {run.duplicates:>6} {_seconds(run.p50_s):>7} {_seconds(run.p99_s):>7}"
                + {
                    None: "",
                    "now": f"  (broker SIGKILLed mid-run; autosave {autosave_s} s)",
                    "backlog": f"  (rule runner paused {BACKLOG_S:g} s, then broker SIGKILLed;"
                    f" autosave {autosave_s} s)",
                }[kill],
                flush=True,
            )
        print(
            "\nratio = unique archived / published by the simulators (goal 1.000); "
            "latency = archive write time - payload ts (goal p99 <= 2 s)"
        )
    measured = {
        "first-archive": {"value": statistics.median(firsts)},
        "local-stack": {
            "ratio": min(run.ratio for run in clean),
            # A run without latencies archived nothing: infinitely late, not on time.
            "p99": max(float("inf") if run.p99_s is None else run.p99_s for run in clean),
        },
    }
    verdicts = [verdict for row, values in measured.items() for verdict in check(row, values)]
    results = {**measured, "runs": [asdict(run) for run in clean]}
    code = finish(verdicts, args.json, results)
    return code if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
