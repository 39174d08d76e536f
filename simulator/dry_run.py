"""Dry run: every payload of a simulated period as JSON lines, generated as fast as possible.

Nothing sleeps and nothing connects; the same arguments give byte-identical output, so this is
also a backfill generator for the archive.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson

from factory_core.fleet import FleetSettings
from simulator.model.site import SiteModel

# A fixed default start keeps dry-run output reproducible; callers may pass another start.
DEFAULT_START_EPOCH_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
_WRITE_BATCH_BYTES = 1 << 20


def generate(
    fleet: FleetSettings,
    site_index: int = 0,
    duration_s: float = 3600.0,
    start_epoch_ms: int = DEFAULT_START_EPOCH_MS,
) -> Iterator[bytes]:
    """Every payload for `duration_s` simulated seconds, ordered by (simulated time, machine index).

    A machine's ground-truth messages of a step come right before its telemetry of that step.
    """
    model = SiteModel(fleet, site_index, start_epoch_ms)
    # All machines share the step, so after the first round the order is a fixed rotation by phase:
    # sort once, then walk the rotation instead of keeping a heap of every machine.
    order = sorted(range(len(model.machines)), key=lambda index: (model.next_sample_time_s(index), index))
    if not order:
        return
    sample, next_time = model.sample, model.next_sample_time_s
    while True:
        emitted = False
        for index in order:
            if next_time(index) >= duration_s:
                break
            emitted = True
            for message in sample(index):
                yield message.payload
        if not emitted:
            return


def generate_merged(
    fleet: FleetSettings, site_index: int, duration_s: float, start_epoch_ms: int
) -> Iterator[bytes]:
    """Reference implementation of `generate` with a heap; tests compare the two."""
    model = SiteModel(fleet, site_index, start_epoch_ms)
    heap = [(model.next_sample_time_s(index), index) for index in range(len(model.machines))]
    heapq.heapify(heap)
    while heap:
        when, index = heap[0]
        if when >= duration_s:
            return
        for message in model.sample(index):
            yield message.payload
        heapq.heapreplace(heap, (model.next_sample_time_s(index), index))


def write(
    out: BinaryIO,
    fleet: FleetSettings,
    site_index: int = 0,
    duration_s: float = 3600.0,
    start_epoch_ms: int = DEFAULT_START_EPOCH_MS,
) -> int:
    """Write `generate(...)` as JSON lines to a binary stream; returns the number of lines."""
    batch: list[bytes] = []
    batch_bytes = 0
    lines = 0
    for payload in generate(fleet, site_index, duration_s, start_epoch_ms):
        batch.append(payload)
        batch_bytes += len(payload) + 1
        if batch_bytes >= _WRITE_BATCH_BYTES:
            out.write(b"\n".join(batch) + b"\n")
            lines += len(batch)
            batch, batch_bytes = [], 0
    if batch:
        out.write(b"\n".join(batch) + b"\n")
        lines += len(batch)
    out.flush()
    return lines


def ground_truth(
    fleet: FleetSettings,
    site_index: int = 0,
    duration_s: float = 3600.0,
    start_epoch_ms: int = DEFAULT_START_EPOCH_MS,
) -> Iterator[bytes]:
    """The ground-truth payloads of `generate(...)`, byte for byte, without generating telemetry.

    The machines' processes do not depend on sampling, so labels alone cost a few events per
    machine-hour instead of 3,600 samples: 30 simulated days of the default fleet take seconds.
    Ordered by machine, then time (not interleaved across machines as `generate` is).
    """
    model = SiteModel(fleet, site_index, start_epoch_ms)
    for index in range(len(model.machines)):
        for message in model.ground_truth_until(index, duration_s):
            yield message.payload


@dataclass
class MachineStream:
    """Everything one machine emitted, in order: raw payloads and the decoded messages by kind."""

    machine: str
    payloads: list[bytes] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: list[dict[str, Any]] = field(default_factory=list)


def collect(
    fleet: FleetSettings,
    site_index: int = 0,
    duration_s: float = 3600.0,
    start_epoch_ms: int = DEFAULT_START_EPOCH_MS,
    *,
    validate: bool = True,
) -> dict[str, MachineStream]:
    """A dry run held in memory and split per machine (for tests and notebooks).

    With `validate`, every payload is checked against its JSON Schema first.
    """
    payloads = list(generate(fleet, site_index, duration_s, start_epoch_ms))
    if validate:
        # Imported here: jsonschema is a third of the dry run's start-up and plain runs skip it.
        from factory_core.payload_contract import validate_payloads

        validate_payloads(payloads)
    streams: dict[str, MachineStream] = {}
    for payload in payloads:
        message = orjson.loads(payload)
        stream = streams.setdefault(message["machine"], MachineStream(message["machine"]))
        stream.payloads.append(payload)
        (stream.ground_truth if message["kind"] == "ground_truth" else stream.telemetry).append(message)
    return streams
