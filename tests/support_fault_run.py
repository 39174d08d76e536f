"""The fault run of issue 10: one local stack through every fault an operator meets, then reconciled.

Faults, in order, each under load: kill -9 of a simulator, of the rule runner, broker SIGTERM, the
rule runner stopped (SIGSTOP) for a while, the archive folder unwritable for a while, a certificate
rotation, and last broker SIGKILL (Mosquitto saves its sessions only every `autosaveIntervalS`, so
it may lose what arrived since: docs/cold-path.md). The archive is then checked twice: by `verify`,
and independently, read line by line, against what a subscriber of its own saw on the wire.

tests/test_local_stack_faults.py runs it short; bench/bench_fault_run.py runs it with the issue's
durations and prints the timeline and the counts.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support_audit import Auditor, Message, archived_messages
from support_local_stack import run_cli, write_local_stack_file

from factory_core.archive_report import VerifyReport
from local_stack.archive import LocalArchive
from local_stack.control import ControlClient
from local_stack.paths import StatePaths
from local_stack.status_document import StatusReport
from local_stack.verify import verify_archive

FLEET = {"seed": 11, "lines_per_site": 1, "publish_interval_s": 0.25}


@dataclass(frozen=True)
class FaultPlan:
    simulators: int = 2
    runner_stopped_s: float = 30.0
    archive_unwritable_s: float = 20.0
    autosave_s: int = 5  # Mosquitto's autosave interval: what a broker SIGKILL may lose
    timeout_s: float = 90.0  # for any one recovery


@dataclass
class FaultRun:
    before_broker_kill: VerifyReport
    report: VerifyReport
    seen: set[Message]  # what the independent subscriber received
    archived: list[Message]  # every archived record, read without `verify`
    broker_killed_at: float  # epoch seconds
    timeline: list[str] = field(default_factory=list)

    @property
    def archived_set(self) -> set[Message]:
        return set(self.archived)

    def raw_missing(self) -> set[Message]:
        """Within each process run (boot) of each stream, the seqs absent between its first and last;
        a stream's first run also from seq 1. What lies between two boots is not counted here."""
        by_boot: dict[tuple[str, str], dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        for machine, kind, boot, seq in self.archived:
            by_boot[(machine, kind)][boot].add(seq)
        missing: set[Message] = set()
        for (machine, kind), boots in by_boot.items():
            for position, boot in enumerate(sorted(boots)):
                seqs = boots[boot]
                start = 1 if position == 0 else min(seqs)
                missing |= {(machine, kind, boot, s) for s in range(start, max(seqs) + 1) if s not in seqs}
        return missing

    def raw_duplicates(self) -> int:
        return sum(count - 1 for count in Counter(self.archived).values())

    def raw_restart_gaps(self) -> int:
        """Seqs between consecutive boots of a stream that did not continue where the last one ended."""
        by_boot: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for machine, kind, boot, seq in self.archived:
            by_boot[(machine, kind)][boot].append(seq)
        total = 0
        for boots in by_boot.values():
            ordered = [boots[boot] for boot in sorted(boots)]
            pairs = itertools.pairwise(ordered)
            total += sum(max(0, min(later) - max(earlier) - 1) for earlier, later in pairs)
        return total


class FaultRunner:
    """Drives one running stack through the plan; `say` gets the timeline as it happens."""

    def __init__(self, paths: StatePaths, plan: FaultPlan, say: Callable[[str], None]) -> None:
        self.paths = paths
        self.plan = plan
        self.client = ControlClient(paths, timeout_s=30)
        self.timeline: list[str] = []
        self._say = say
        self._began = time.monotonic()

    def note(self, line: str) -> None:
        entry = f"{time.monotonic() - self._began:6.1f} s  {line}"
        self.timeline.append(entry)
        self._say(entry)

    def status(self) -> StatusReport:
        return self.client.status()

    def pid(self, service: str) -> int:
        found = next(s for s in self.status().services if s.name == service)
        assert found.pid is not None, f"{service} is not running"
        return found.pid

    def wait(self, condition: Callable[[StatusReport], bool], what: str) -> None:
        deadline = time.monotonic() + self.plan.timeout_s
        while time.monotonic() < deadline:
            if condition(self.status()):
                return
            time.sleep(0.2)
        raise AssertionError(f"{what} within {self.plan.timeout_s} s: {self.status()}")

    def archive_grows(self) -> None:
        before = self.status().pipeline.archived_total
        self.wait(lambda s: s.pipeline.archived_total > before + 20, "the archive grows again")

    def restarted(self, service: str, times: int) -> None:
        def back(status: StatusReport) -> bool:
            return any(
                x.name == service and x.restarts == times and x.state == "running" for x in status.services
            )

        self.wait(back, f"{service} restarted")
        self.archive_grows()

    def kill(self, service: str, number: signal.Signals, restarts: int) -> None:
        os.kill(self.pid(service), number)
        self.note(f"{service}: {number.name}")
        self.restarted(service, restarts)
        self.note(f"{service}: running again, the archive grows")

    def runner_stopped(self) -> None:
        pid = self.pid("rule-runner")
        os.kill(pid, signal.SIGSTOP)
        self.note(f"rule-runner: SIGSTOP for {self.plan.runner_stopped_s:g} s")
        try:
            time.sleep(self.plan.runner_stopped_s)  # the fault's duration
        finally:
            os.kill(pid, signal.SIGCONT)
        self.note("rule-runner: SIGCONT")
        self.archive_grows()

    def archive_unwritable(self) -> None:
        folder = self.paths.default_archive_dir
        away = folder.with_name("archive-away")
        folder.rename(away)
        folder.write_text("not a folder: nobody can write in here\n")
        self.note(f"archive: replaced by a file for {self.plan.archive_unwritable_s:g} s")
        try:
            time.sleep(self.plan.archive_unwritable_s)  # the fault's duration
        finally:
            folder.unlink()
            away.rename(folder)
        self.note("archive: back")
        self.archive_grows()

    def rotation(self) -> None:
        self.note("rotate-certs under load")
        result = run_cli("rotate-certs", "--stack", "local", "--json")
        assert result.exit_code == 0, result.output
        self.archive_grows()
        self.note("rotate-certs: done")

    def caught_up(self) -> None:
        self.wait(
            lambda s: (s.pipeline.lag_s or 0.0) < 3 and not s.pipeline.unanswered, "the archive catches up"
        )


def start_fault_stack(directory: Path, plan: FaultPlan) -> StatePaths:
    """Write the stack file and start the stack detached; the caller sets the two environment
    variables (`IOTFACTORY_LOCAL_CONFIG`, `IOTFACTORY_STATE_DIR`) to `stack_file(directory)` and
    `directory / "state"` first, and stops it afterwards."""
    autosave = {"autosaveIntervalS": plan.autosave_s}
    write_local_stack_file(directory, plan.simulators, FLEET, mosquitto=autosave)
    started = run_cli("up", "--stack", "local", "--detach", "--yes", "--json")
    assert started.exit_code == 0, started.output
    return StatePaths(directory / "state")


def run_fault_plan(
    paths: StatePaths, plan: FaultPlan, directory: Path, say: Callable[[str], None]
) -> FaultRun:
    runner = FaultRunner(paths, plan, say)
    broker_port = runner.client.outputs().broker_port
    assert broker_port is not None
    auditor = Auditor(paths.ca_dir, broker_port, directory, "fault-run-auditor")
    try:
        runner.archive_grows()
        runner.kill("simulator-00", signal.SIGKILL, 1)
        runner.kill("rule-runner", signal.SIGKILL, 1)
        runner.kill("broker", signal.SIGTERM, 1)
        runner.runner_stopped()
        runner.archive_unwritable()
        runner.rotation()
        runner.caught_up()
        before = verify_archive(LocalArchive(paths.default_archive_dir))
        runner.note(f"verify before the broker SIGKILL: {before.missing} missing of {before.unique}")
        killed_at = time.time()
        runner.kill("broker", signal.SIGKILL, 2)
        runner.caught_up()
    finally:
        seen = auditor.stop()
        stopped = run_cli("stop", "--stack", "local", "--json")
        runner.note(f"stopped (exit {stopped.exit_code})")
    report = verify_archive(LocalArchive(paths.default_archive_dir))
    runner.note(
        f"verify: {report.missing} missing, {report.duplicates} duplicates, {report.restarts} restarts"
        f" ({report.possibly_lost} possibly lost) of {report.unique} unique"
    )
    archived = archived_messages(paths.default_archive_dir)
    return FaultRun(before, report, seen, archived, killed_at, runner.timeline)
