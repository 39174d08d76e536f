"""A restarted simulator resumes from its checkpoint: every machine's seq and clock continue."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest
from conftest import Broker
from test_transport_broker import Subscriber, finish, start_simulator

pytestmark = pytest.mark.integration

FLEET = ("--lines", "1", "--machines", "cnc_mill=2,conveyor=1", "--publish-interval", "0.05")


def _per_machine(subscriber: Subscriber) -> dict[str, list[dict]]:
    documents: dict[str, list[dict]] = defaultdict(list)
    with subscriber.lock:
        for topic, document in subscriber.messages:
            if "/ground-truth/" not in topic:
                documents[document["machine"]].append(document)
    return documents


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
