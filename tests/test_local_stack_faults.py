"""The fault run (issue 10's done-when), short: every fault under load, then 0 missing where nothing
may be lost, and what a broker SIGKILL lost reported exactly as an independent count finds it.

bench/bench_fault_run.py runs the same plan with the issue's durations (runner stopped 30 s, archive
unwritable 20 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support_fault_run import FaultPlan, FaultRun, run_fault_plan, start_fault_stack
from support_local_stack import run_cli

from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV
from local_stack.processes import pid_alive
from local_stack.state_file import read_state

pytestmark = pytest.mark.integration

SHORT = FaultPlan(runner_stopped_s=8.0, archive_unwritable_s=6.0)


@pytest.fixture
def fault_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultRun]:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "Pulumi.local.yaml"))
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    paths = start_fault_stack(tmp_path, SHORT)
    pids: list[int] = []
    try:
        state = read_state(paths)
        assert state is not None
        pids = [state.supervisor_pid, *state.pids]
        yield run_fault_plan(paths, SHORT, tmp_path, print)
    finally:
        run_cli("stop", "--stack", "local", "--json")
        leftovers = [pid for pid in pids if pid_alive(pid)]
        assert not leftovers, f"processes outlived the stack: {leftovers}"


def test_every_fault_loses_nothing_and_a_broker_sigkill_is_reported_as_it_was(fault_run: FaultRun) -> None:
    run = fault_run
    # Up to the broker SIGKILL: kill -9s, SIGTERM, SIGSTOP, an unwritable archive and a rotation
    # lost nothing that reached the broker.
    before = run.before_broker_kill
    assert before.missing == 0 and before.unreadable == 0, [s.gaps for s in before.streams if s.gaps]
    assert before.restarts > 0 and before.possibly_lost > 0  # the killed simulator, sized

    # After it: verify reports exactly what the archive, read on its own, lacks.
    report = run.report
    archived = run.archived_set
    missing = run.raw_missing()
    assert report.missing == len(missing)
    assert report.duplicates == run.raw_duplicates()
    assert report.possibly_lost == run.raw_restart_gaps()
    assert report.unique == len(archived) and report.unreadable == 0
    # Whatever the subscriber saw and the archive lacks, verify counts missing: nothing is hidden.
    assert run.seen - archived <= missing
    assert len(run.seen & archived) > 0.5 * len(archived)
    # And a loss can only be the SIGKILL's: what the broker held in memory since its last autosave.
    for machine, kind, boot, seq in missing:
        neighbours = [m for m in run.archived if m[:3] == (machine, kind, boot) and abs(m[3] - seq) == 1]
        assert neighbours, (machine, kind, boot, seq)
    print(
        f"\nfault run: {report.missing} missing after broker SIGKILL (autosave {SHORT.autosave_s} s),"
        f" {report.duplicates} duplicates, {report.restarts} restarts,"
        f" {report.possibly_lost} possibly lost, {report.unique} unique"
    )
