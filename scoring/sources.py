"""Where a run's ground truth comes from: the stack's archive, or the model again (same seed and config)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import orjson

from factory_core.fleet import TOPIC_ROOT, FleetSettings
from factory_core.payload_contract import payload_kind
from scoring.labels import GroundTruth, epoch_seconds, ground_truth_from_events

if TYPE_CHECKING:
    from local_stack.archive import Archive


def _archived_records(archive: Archive) -> Iterator[bytes]:
    """Every record under the batched layout and the cloud's direct (per-topic) layout."""
    # Imported here: the cloud stacks regenerate labels with this module and never read a local archive.
    from local_stack.archive import RAW_PREFIX, iter_records

    for prefix in (RAW_PREFIX, TOPIC_ROOT + "/"):
        for info in archive.list_objects(prefix):
            yield from iter_records(archive.get_object(info.key).body)


def from_archive(archive: Archive) -> GroundTruth:
    """Labels from the archived ground truth; each machine observed from its first to its last message."""
    events: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    for record in _archived_records(archive):
        try:
            message = orjson.loads(record)
            machine, stamp = message["machine"], message["ts"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # `verify` reports unreadable records; scoring uses what it can read
        if payload_kind(message) == "ground_truth":
            events.append(message)
        # ISO timestamps of one format sort as text: compare strings, convert once at the end.
        if stamp < first.get(machine, "\uffff"):
            first[machine] = stamp
        if stamp > last.get(machine, ""):
            last[machine] = stamp
    observed = {machine: (epoch_seconds(first[machine]), epoch_seconds(last[machine])) for machine in first}
    return ground_truth_from_events(_deduplicated(events), observed)


def _deduplicated(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """QoS 1 may archive a message twice: one event per (machine, seq)."""
    unique: dict[tuple[str, int], dict[str, Any]] = {}
    for event in events:
        unique.setdefault((event["machine"], event["seq"]), event)
    return list(unique.values())


def regenerated(
    fleet: FleetSettings, sites: Iterable[int], duration_s: float, start_epoch_ms: int
) -> GroundTruth:
    """Labels of a dry run (or of a live run started at `start_epoch_ms`), without its telemetry."""
    from simulator.dry_run import ground_truth
    from simulator.model import build_machine_specs

    events: list[dict[str, Any]] = []
    observed: dict[str, tuple[float, float]] = {}
    start_s = start_epoch_ms / 1000.0
    for site in sites:
        for spec in build_machine_specs(fleet, site):
            observed[spec.machine_id] = (start_s, start_s + duration_s)
        events.extend(
            orjson.loads(payload) for payload in ground_truth(fleet, site, duration_s, start_epoch_ms)
        )
    return ground_truth_from_events(events, observed)
