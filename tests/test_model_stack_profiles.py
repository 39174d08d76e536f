"""The timescale each stack file runs, and what a local run shows in its first five minutes."""

from __future__ import annotations

import time
from pathlib import Path

from factory_core.fleet import FleetSettings
from local_stack.stack_config import load
from scoring import regenerated
from simulator.config_loader import read_fleet_file

REPO = Path(__file__).resolve().parents[1]


def test_the_local_stack_shows_a_labelled_fault_within_five_minutes() -> None:
    stack = load(REPO / "Pulumi.local.yaml")
    assert stack.fleet.faults.timescale == "demo"
    start_ms = int(time.time() * 1000)  # a live run starts now: the hall's date must not matter
    five_minutes = start_ms / 1000 + 300
    truth = regenerated(stack.fleet, range(stack.simulator_count), 600.0, start_ms)
    visible = [
        label
        for label in truth.labels
        if label.is_failure and label.detectable_from is not None and label.detectable_from <= five_minutes
    ]
    assert visible, "no failure mode becomes visible in the local stack's first five minutes"
    # The scheduled one is visible at once, grows, is stopped on condition within five minutes and
    # repaired a few minutes later.
    scheduled = next(label for label in truth.labels if label.scheduled)
    assert scheduled.fault == "spindle_bearing_wear" and scheduled.window_end <= five_minutes
    assert scheduled.end_reason == "condition_based" and not scheduled.tripped


def test_the_cloud_stacks_run_the_realistic_timescale() -> None:
    for name in ("dev", "prod"):
        fleet = FleetSettings.model_validate(read_fleet_file(REPO / f"Pulumi.{name}.yaml"))
        assert fleet.faults.timescale == "realistic", name
