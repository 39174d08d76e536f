"""Test helper: real archives, written by the archive writer from dry-run payloads of the real model.

`build_archive` writes what a rule runner would: GZIP JSON-lines batches under the Firehose key
layout (and, if asked, the cloud's direct layout), with QoS 1 redeliveries archived twice, a
simulator restart, and lines the contract does not accept. `expected` parses the same payloads in
plain Python, so the SQL views are checked against an independent reading.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from factory_core.fleet import FleetSettings
from local_stack.archive import LocalArchive, batch_key, direct_key, encode_batch
from simulator.dry_run import DEFAULT_START_EPOCH_MS, generate

FLEET = FleetSettings.model_validate(
    {"seed": 7, "lines_per_site": 1, "faults": {"timescale": "demo", "sensor_fault_per_hour": 2}}
)
FIRST_RUN_S = 600.0
SECOND_RUN_S = 300.0
RESTART_GAP_S = 120.0  # the simulator was down this long between its two runs
BATCH = 500
WRITTEN_AT = dt.datetime(2026, 3, 7, 9, 58, 0, tzinfo=dt.UTC)  # crosses an hour partition


@dataclass
class BuiltArchive:
    root: Path
    payloads: list[bytes] = field(default_factory=list)  # every distinct payload, in publish order
    duplicates: int = 0

    @property
    def archive(self) -> LocalArchive:
        return LocalArchive(self.root)

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in map(orjson.loads, self.payloads) if message["kind"] == kind]

    def telemetry_per_machine(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for message in self.messages("telemetry"):
            counts[message["machine"]] += 1
        return dict(counts)


def run_payloads(fleet: FleetSettings = FLEET) -> list[bytes]:
    """Two runs of one site: the second starts from seq 1 again, after a gap (a restart)."""
    first = list(generate(fleet, 0, FIRST_RUN_S, DEFAULT_START_EPOCH_MS))
    restart_ms = DEFAULT_START_EPOCH_MS + int((FIRST_RUN_S + RESTART_GAP_S) * 1000)
    return first + list(generate(fleet, 0, SECOND_RUN_S, restart_ms))


def build_archive(
    root: Path,
    payloads: Iterable[bytes] | None = None,
    *,
    direct_share: int = 0,
    redeliver_every: int = 7,
    junk: bool = True,
) -> BuiltArchive:
    """Write `payloads` as the rule runner would; every `redeliver_every`-th batch is written twice.

    `direct_share`: every Nth payload goes to the direct layout (one object per message) instead.
    """
    archive = LocalArchive(root)
    built = BuiltArchive(root, list(payloads if payloads is not None else run_payloads()))
    batched = [p for i, p in enumerate(built.payloads) if not direct_share or i % direct_share]
    for index, start in enumerate(range(0, len(batched), BATCH)):
        written = WRITTEN_AT + dt.timedelta(seconds=60 * index)
        body = encode_batch(batched[start : start + BATCH])
        archive.put_object(batch_key("iotfactory-test", written), body)
        if redeliver_every and index % redeliver_every == 3:
            archive.put_object(batch_key("iotfactory-test", written + dt.timedelta(seconds=1)), body)
            built.duplicates += len(batched[start : start + BATCH])
    if direct_share:
        for payload in built.payloads[::direct_share]:
            message = orjson.loads(payload)
            topic = f"factory/simulator/{message['site']}/{message['line']}/{message['machine']}"
            archive.put_object(direct_key(topic, WRITTEN_AT), payload)
    if junk:
        schema_one = b'{"schema":1,"machine":"site-00-line-01-cnc_mill-01","signals":{"speed":[1.0,"rpm"]}}'
        junk_lines = encode_batch([b"not json {", schema_one])
        archive.put_object(batch_key("iotfactory-test", WRITTEN_AT), junk_lines)
    return built
