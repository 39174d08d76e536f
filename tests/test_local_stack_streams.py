"""Streams across crashes, on the real local stack: a killed simulator is a restart, never duplicates.

Each test runs a stack (real Mosquitto, simulators, rule runner, Prometheus on ephemeral ports),
breaks something, and then holds `verify` against an independent count: a subscriber that saw what
reached the broker, and the archive read line by line without the verify module.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import defaultdict
from pathlib import Path

import pytest
from support_audit import Auditor, Message, archived_messages
from test_local_stack_pipeline import MACHINES_PER_SITE, start_stack  # noqa: F401

pytestmark = pytest.mark.integration


def restart_gaps(messages: set[Message]) -> dict[tuple[str, str], list[int]]:
    """Per stream, between consecutive boots: first seq of the later minus last of the earlier, minus 1."""
    by_boot: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for machine, kind, boot, seq in messages:
        by_boot[(machine, kind)][boot].append(seq)
    gaps: dict[tuple[str, str], list[int]] = {}
    for stream, boots in by_boot.items():
        ordered = [boots[boot] for boot in sorted(boots)]
        gaps[stream] = [min(later) - max(earlier) - 1 for earlier, later in itertools.pairwise(ordered)]
        for seqs in ordered:  # and within one boot, nothing missing
            assert sorted(seqs) == list(range(min(seqs), max(seqs) + 1)), stream
    return gaps


def test_a_killed_simulator_is_one_restart_with_its_possible_loss_never_duplicates(
    start_stack, tmp_path: Path  # noqa: F811
) -> None:
    stack = start_stack(simulators=2)
    auditor = Auditor(stack.paths.ca_dir, stack.broker_port, tmp_path, "test-boot-auditor")
    stack.wait_archived_beyond(stack.archived() + 40)
    killed = stack.service("simulator-00")
    os.kill(int(killed["pid"]), signal.SIGKILL)
    stack.wait_service("simulator-00", lambda s: s["restarts"] == 1 and s["state"] == "running")
    stack.wait_archived_beyond(stack.archived() + 40)
    stack.stop()
    seen = auditor.stop()
    report = stack.verify()

    assert report.duplicates == 0 and report.missing == 0 and report.unreadable == 0
    site_00 = [s for s in report.streams if s.site == "site-00"]
    site_01 = [s for s in report.streams if s.site == "site-01"]
    telemetry_00 = [s for s in site_00 if s.kind == "telemetry"]
    assert len(telemetry_00) == MACHINES_PER_SITE
    # One restart per machine of the killed site, each with a visible gap; the other site none.
    assert all(len(s.restarts) == 1 and s.boots == 2 for s in telemetry_00), telemetry_00
    assert all(s.restarts[0].possibly_lost and s.restarts[0].possibly_lost > 0 for s in telemetry_00)
    assert all(not s.restarts and s.boots == 1 for s in site_01)
    assert report.restarts == sum(len(s.restarts) for s in site_00)
    assert report.possibly_lost == sum(s.possibly_lost for s in site_00) > 0

    # The independent count: the archive read directly, and what the auditor saw on the wire.
    archived = archived_messages(stack.paths.default_archive_dir)
    assert len(archived) == len(set(archived)) == report.unique
    assert seen <= set(archived)
    # Everything the killed process got to the broker is archived: what verify calls possibly lost
    # never reached the broker (the auditor did not see it either).
    killed_boot = {boot for machine, _k, boot, _s in archived if machine.startswith("site-00")}
    assert len(killed_boot) == 2
    old_boot = min(killed_boot)
    # (The auditor subscribed a moment after the first messages: compare from what it saw first.)
    seen_old = {m for m in seen if m[2] == old_boot}
    first_seen: dict[tuple[str, str], int] = {}
    for machine, kind, _boot, seq in seen_old:
        first_seen[(machine, kind)] = min(seq, first_seen.get((machine, kind), seq))
    archived_old = {
        m for m in archived if m[2] == old_boot and (m[0], m[1]) in first_seen and m[3] >= first_seen[m[:2]]
    }
    assert seen_old == archived_old and seen_old
    gaps = restart_gaps(set(archived))
    verified = {(s.machine, s.kind): [r.possibly_lost for r in s.restarts] for s in site_00 if s.restarts}
    assert verified == {stream: lost for stream, lost in gaps.items() if lost}
