"""A restarted simulator resumes from its checkpoint: every machine's seq and clock continue."""

from __future__ import annotations

import math
import signal
import time
from collections import defaultdict

import pytest
from conftest import Broker
from test_transport_broker import Subscriber, finish, start_simulator

from factory_core.fleet import FleetSettings
from simulator.checkpoint import RESERVE_AHEAD_S, SeqLedger, new_boot, read_marks
from simulator.model.site import SiteModel

FLEET = ("--lines", "1", "--machines", "cnc_mill=2,conveyor=1", "--publish-interval", "0.05")


def _per_machine(subscriber: Subscriber) -> dict[str, list[dict]]:
    documents: dict[str, list[dict]] = defaultdict(list)
    with subscriber.lock:
        for topic, document in subscriber.messages:
            if "/ground-truth/" not in topic:
                documents[document["machine"]].append(document)
    return documents


@pytest.mark.integration
def test_restart_with_state_file_continues_seq_without_gap_or_repeat(broker: Broker, tmp_path) -> None:
    state = tmp_path / "site-00.checkpoint"
    subscriber = Subscriber(broker)
    try:
        first = start_simulator(broker, "fleet", *FLEET, "--state-file", str(state))
        time.sleep(2.0)
        first.send_signal(signal.SIGTERM)
        code, stderr = finish(first, 40)
        assert code == 0, stderr
        assert state.exists() and (state.stat().st_mode & 0o777) == 0o600
        before = _per_machine(subscriber)
        assert len(before) == 3 and all(len(docs) > 5 for docs in before.values())

        second = start_simulator(broker, "fleet", *FLEET, "--state-file", str(state), "--count", "30")
        code, stderr = finish(second, 40)
        assert code == 0, stderr
        assert "resumed from" in stderr
        subscriber.wait_for(sum(len(d) for d in before.values()) + 30, 10)
    finally:
        subscriber.close()
    after = _per_machine(subscriber)
    for machine, documents in after.items():
        seqs = [doc["seq"] for doc in documents]
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"{machine}: gap or repeat"
        assert max(seqs) > len(before[machine]), f"{machine} did not continue after the restart"
        stamps = [doc["ts"] for doc in sorted(documents, key=lambda d: d["seq"])]
        assert stamps == sorted(stamps), f"{machine}: timestamps went backwards across the restart"


@pytest.mark.integration
def test_checkpoint_of_another_fleet_is_not_resumed(broker: Broker, tmp_path) -> None:
    state = tmp_path / "site-00.checkpoint"
    first = start_simulator(broker, "fleet", *FLEET, "--state-file", str(state), "--count", "6")
    assert finish(first, 40)[0] == 0
    other = start_simulator(
        broker, "fleet", "--lines", "1", "--machines", "conveyor=2", "--publish-interval", "0.05",
        "--state-file", str(state), "--count", "4",
    )
    code, stderr = finish(other, 40)
    assert code == 0, stderr
    assert "another site or fleet config; starting afresh" in stderr


def _model() -> SiteModel:
    return SiteModel(FleetSettings(lines_per_site=1, machines_per_line={"conveyor": 2}, seed=1), 0, 0)


def _publish(model: SiteModel, ledger: SeqLedger, samples: int) -> list[tuple[int, int]]:
    """Sample like the scheduler: each message is covered on disk before it is handed on."""
    published = []
    for _ in range(samples):
        for index in range(len(model.machines)):
            model.sample(index)
            if not ledger.covers(index):
                ledger.reserve()
            marks = read_marks(ledger.path)
            assert marks is not None
            telemetry, ground_truth = model.seqs(index)
            assert telemetry < marks.telemetry[index] and ground_truth < marks.ground_truth[index]
            published.append((telemetry, ground_truth))
    return published


def test_a_killed_simulator_never_hands_its_seqs_to_the_next_one(tmp_path) -> None:
    clock = iter(range(0, 10_000, 30))  # every reservation 30 s after the last: blocks stay small
    path = tmp_path / "site-00.checkpoint.seq"
    first = _model()
    ledger = SeqLedger(path, first, publish_interval_s=1.0, clock=lambda: next(clock))
    first.start_boot(new_boot(), ledger.floors())
    ledger.reserve()
    _publish(first, ledger, 25)
    used = [first.seqs(i) for i in range(2)]  # ... then kill -9: no checkpoint, no settle

    second = _model()  # from nothing, as after a crash before any drain
    floors = SeqLedger(path, second, publish_interval_s=1.0).floors()
    second.start_boot(new_boot(), floors)
    for index, (telemetry, ground_truth) in enumerate(used):
        resumed = second.seqs(index)
        # Strictly beyond: the crash always leaves a visible gap, at most one reservation wide.
        assert telemetry < resumed[0] <= telemetry + math.ceil(RESERVE_AHEAD_S) + 1
        assert ground_truth < resumed[1]


def test_a_drained_simulator_hands_over_without_a_gap(tmp_path) -> None:
    path = tmp_path / "site-00.checkpoint.seq"
    first = _model()
    ledger = SeqLedger(path, first, publish_interval_s=0.5)
    first.start_boot(new_boot(), ledger.floors())
    ledger.reserve()
    _publish(first, ledger, 40)  # reservations come fast here (no clock advance): blocks grow
    assert ledger.telemetry_block > math.ceil(RESERVE_AHEAD_S / 0.5) + 1
    ledger.settle()
    second = _model()
    second.start_boot(new_boot(), SeqLedger(path, second, publish_interval_s=0.5).floors())
    assert [second.seqs(i) for i in range(2)] == [first.seqs(i) for i in range(2)]
    assert path.stat().st_mode & 0o777 == 0o600
