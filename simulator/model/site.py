"""One site's machines on a simulated clock: the pure model the publisher and dry-run drive.

No I/O, no wall clock, no global random state: every machine's streams are keyed by (fleet seed,
machine id), so its bytes depend on nothing else in the fleet but its line's first conveyor (the
coupling along the line), and on no other machine at all if its line has no conveyor.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from factory_core.fleet import (
    FleetSettings,
    MachineType,
    ScheduledFault,
    ground_truth_topic,
    site_id,
    telemetry_topic,
)
from factory_core.payload_contract import BOOT_FIELD
from simulator.model.ambient import Ambient, site_ambient
from simulator.model.labels import LabelEvent
from simulator.model.line import LineFeed
from simulator.model.machine import Machine, build_process
from simulator.model.payload import TelemetryEncoder, encode_ground_truth, iso_timestamp
from simulator.model.profiles import PROFILES
from simulator.model.randomness import stream_key
from simulator.model.signals import Sensors

MessageKind = Literal["telemetry", "ground_truth"]


@dataclass(frozen=True)
class MachineSpec:
    index: int  # position in the site's machine list
    machine_id: str  # f"{site}-{line}-{type}-{n:02d}", n counts per type per line from 01
    site: str
    line: str
    type: MachineType
    telemetry_topic: str
    ground_truth_topic: str
    phase: float  # [0, 1): offset within the publish interval, from this machine's own id and seed


class Message(NamedTuple):
    """One payload to publish. A NamedTuple: built 10,000+ times a second, a frozen dataclass's
    `__init__` cost more than the physics of some samples."""

    topic: str
    payload: bytes  # compact JSON, one line
    kind: MessageKind
    machine_index: int


@dataclass(frozen=True)
class MachineView:
    """What the metrics need, in payload units (°C, mm/s, rpm, kW, bar, s)."""

    spec: MachineSpec
    state: str
    signals: Mapping[str, float | None]  # None = sensor dropout
    health: float
    parts_good: int
    parts_rejected: int
    ideal_cycle_time_s: float  # 0.0 for machines that make no parts (compressors)
    state_seconds: Mapping[str, float]
    active_faults: frozenset[str]


def line_id(line_number: int) -> str:
    """Lines are numbered from 1: line-01, line-02, ..."""
    return f"line-{line_number:02d}"


def machine_id(site: str, line: str, machine_type: MachineType, number: int) -> str:
    return f"{site}-{line}-{machine_type.value}-{number:02d}"


@dataclass(frozen=True)
class MachineStream:
    """Seeds and publish phase of one machine, from a stable hash of (fleet seed, machine id)."""

    process_seed: int  # key of the process streams (states, faults, jobs, production) and the noise
    sensor_fault_seed: int  # sensor faults
    phase: float  # [0, 1)


def machine_stream(seed: int, machine: str) -> MachineStream:
    """hashlib, not `hash()`: string hashing is salted per process, and the stream must not be."""
    digest = hashlib.blake2b(f"{seed}\x1f{machine}".encode(), digest_size=24).digest()
    return MachineStream(
        process_seed=int.from_bytes(digest[:8], "big"),
        sensor_fault_seed=int.from_bytes(digest[8:16], "big"),
        phase=int.from_bytes(digest[16:], "big") / 2.0**64,
    )


def build_machine_specs(fleet: FleetSettings, site_index: int) -> tuple[MachineSpec, ...]:
    """Every machine of the site, line by line, types in `MachineType` order, numbered per type."""
    site = site_id(site_index)
    specs: list[MachineSpec] = []
    for line_number in range(1, fleet.lines_per_site + 1):
        line = line_id(line_number)
        for machine_type in MachineType:
            for number in range(1, fleet.machines_per_line.get(machine_type, 0) + 1):
                machine = machine_id(site, line, machine_type, number)
                specs.append(
                    MachineSpec(
                        index=len(specs),
                        machine_id=machine,
                        site=site,
                        line=line,
                        type=machine_type,
                        telemetry_topic=telemetry_topic(site, line, machine, fleet.topic_namespace),
                        ground_truth_topic=ground_truth_topic(site, line, machine, fleet.topic_namespace),
                        phase=machine_stream(fleet.seed, machine).phase,
                    )
                )
    return tuple(specs)


_MACHINE_ID = re.compile(r"site-(\d{2,})-line-(\d{2,})-([a-z_]+)-(\d{2,})")


def unknown_scheduled_machines(fleet: FleetSettings) -> list[str]:
    """Machine ids in `faults.scheduled` that no site of this fleet has (for config checks).

    Any site index is accepted: each simulator process simulates one site of the same shape.
    """
    return [item.machine for item in fleet.faults.scheduled if not _fits_fleet(fleet, item.machine)]


def _fits_fleet(fleet: FleetSettings, machine: str) -> bool:
    match = _MACHINE_ID.fullmatch(machine)
    if match is None:
        return False
    try:
        machine_type = MachineType(match[3])
    except ValueError:
        return False
    line_number, number = int(match[2]), int(match[4])
    return (
        1 <= line_number <= fleet.lines_per_site
        and 1 <= number <= fleet.machines_per_line.get(machine_type, 0)
        and machine == machine_id(site_id(int(match[1])), line_id(line_number), machine_type, number)
    )


def scheduled_faults_by_machine(fleet: FleetSettings) -> dict[str, list[ScheduledFault]]:
    by_machine: dict[str, list[ScheduledFault]] = {}
    for item in fleet.faults.scheduled:
        by_machine.setdefault(item.machine, []).append(item)
    return by_machine


class _MachineRun:
    """Per-machine bookkeeping around the physics: clock position, sequence numbers, last readings."""

    __slots__ = ("encoder", "header", "machine", "readings", "samples", "seq_ground_truth", "seq_telemetry")

    def __init__(self, spec: MachineSpec, machine: Machine) -> None:
        self.machine = machine
        self.header = {
            "machine": spec.machine_id,
            "site": spec.site,
            "line": spec.line,
            "type": spec.type.value,
        }
        self.samples = 0
        self.seq_telemetry = 0
        self.seq_ground_truth = 0
        # Nothing measured until the first sample: looking never consumes randomness.
        self.readings: dict[str, float | None] = dict.fromkeys(machine.profile.signals)
        self.encoder = TelemetryEncoder(self.header, self.readings)

    # The encoder is a cache of the header: checkpoints leave it out and rebuild it on load.
    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "encoder"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.encoder = TelemetryEncoder(self.header, self.readings)


def _line_feeds(
    fleet: FleetSettings,
    specs: tuple[MachineSpec, ...],
    ambient: Ambient,
    start_epoch_ms: int,
    scheduled: dict[str, list[ScheduledFault]],
) -> dict[str, LineFeed]:
    """A feed per line with a conveyor: a copy of the line's first conveyor's process."""
    feeds: dict[str, LineFeed] = {}
    for spec in specs:
        if spec.type is MachineType.CONVEYOR and spec.line not in feeds:
            key = machine_stream(fleet.seed, spec.machine_id).process_seed
            copy = build_process(
                PROFILES[spec.type],
                fleet.faults,
                key,
                ambient,
                start_epoch_ms,
                scheduled.get(spec.machine_id, ()),
                count_parts=False,
            )
            feeds[spec.line] = LineFeed(copy)
    return feeds


class SiteModel:
    """All machines of one site. `sample(i)` advances machine i by one step and encodes its messages."""

    def __init__(self, fleet: FleetSettings, site_index: int, start_epoch_ms: int) -> None:
        self.fleet = fleet
        self.start_epoch_ms = start_epoch_ms
        self.machines: tuple[MachineSpec, ...] = build_machine_specs(fleet, site_index)
        self.step_s: float = fleet.publish_interval_s * fleet.speed
        scheduled = scheduled_faults_by_machine(fleet)
        ambient = site_ambient(fleet.seed, site_id(site_index), start_epoch_ms)
        feeds = _line_feeds(fleet, self.machines, ambient, start_epoch_ms, scheduled)
        self._runs: list[_MachineRun] = []
        for spec in self.machines:
            stream = machine_stream(fleet.seed, spec.machine_id)
            profile = PROFILES[spec.type]
            feed = feeds.get(spec.line) if profile.feed_role is not None else None
            own = scheduled.get(spec.machine_id, ())
            process = build_process(
                profile, fleet.faults, stream.process_seed, ambient, start_epoch_ms, own, feed
            )
            sensors = Sensors(spec.type, stream_key(stream.process_seed, "sensors"), self.step_s)
            machine = Machine(process, sensors, stream.sensor_fault_seed, own)
            self._runs.append(_MachineRun(spec, machine))

    def seqs(self, machine_index: int) -> tuple[int, int]:
        """The last telemetry and ground-truth `seq` machine `machine_index` used (0: none yet)."""
        run = self._runs[machine_index]
        return run.seq_telemetry, run.seq_ground_truth

    def start_boot(self, boot: str, floors: Mapping[str, tuple[int, int]] | None = None) -> None:
        """A new process run: its messages carry `boot`, and each machine's next telemetry and
        ground-truth `seq` lie above its `floors` entry (what an earlier run may have used)."""
        floors = floors or {}
        for spec, run in zip(self.machines, self._runs, strict=True):
            run.header[BOOT_FIELD] = boot
            run.encoder = TelemetryEncoder(run.header, run.readings)
            telemetry, ground_truth = floors.get(spec.machine_id, (0, 0))
            run.seq_telemetry = max(run.seq_telemetry, telemetry)
            run.seq_ground_truth = max(run.seq_ground_truth, ground_truth)

    def samples_taken(self, machine_index: int) -> int:
        """How many steps machine `machine_index` has made (its next sample's slot number)."""
        return self._runs[machine_index].samples

    def next_sample_time_s(self, machine_index: int) -> float:
        """Simulated time the next `sample(machine_index)` will advance to."""
        run = self._runs[machine_index]
        return (run.samples + self.machines[machine_index].phase) * self.step_s

    def sample(self, machine_index: int) -> list[Message]:
        """Advance one step; return its ground-truth messages (in time order) and one telemetry message."""
        run = self._runs[machine_index]
        spec = self.machines[machine_index]
        machine = run.machine
        now_s = (run.samples + spec.phase) * self.step_s
        run.samples += 1
        events = machine.advance(now_s)
        timestamp = iso_timestamp(self.start_epoch_ms + round(now_s * 1000))
        messages: list[Message] = []
        for event in events:  # usually none: most samples only carry telemetry
            run.seq_ground_truth += 1
            messages.append(
                Message(
                    spec.ground_truth_topic,
                    encode_ground_truth(
                        run.header, timestamp, run.seq_ground_truth, event, self.start_epoch_ms
                    ),
                    "ground_truth",
                    machine_index,
                )
            )
        run.readings = readings = machine.measure()
        run.seq_telemetry += 1
        process = machine.process
        payload = run.encoder.encode(
            timestamp, run.seq_telemetry, process.state, readings, process.parts_good, process.parts_rejected
        )
        messages.append(Message(spec.telemetry_topic, payload, "telemetry", machine_index))
        return messages

    def labels(self, machine_index: int, until_s: float) -> Sequence[LabelEvent]:
        """Advance machine `machine_index` to `until_s` without sampling: its label events only.

        The process does not depend on sampling, so these are the labels a sampled run has. Do not
        mix with `sample` on the same model.
        """
        return self._runs[machine_index].machine.advance(until_s)

    def ground_truth_until(self, machine_index: int, duration_s: float) -> list[Message]:
        """The ground-truth messages a sampled run of `duration_s` publishes for this machine, byte for
        byte, without sampling: each event is stamped with the first sample time at or after it."""
        run, spec = self._runs[machine_index], self.machines[machine_index]
        last = math.ceil(duration_s / self.step_s - spec.phase) - 1  # index of the last sample
        if last < 0:
            return []
        messages = []
        for event in run.machine.advance((last + spec.phase) * self.step_s):
            sample = max(0, math.ceil(event.at_s / self.step_s - spec.phase))
            while (sample + spec.phase) * self.step_s < event.at_s:  # guard against rounding
                sample += 1
            timestamp = iso_timestamp(self.start_epoch_ms + round((sample + spec.phase) * self.step_s * 1000))
            run.seq_ground_truth += 1
            payload = encode_ground_truth(
                run.header, timestamp, run.seq_ground_truth, event, self.start_epoch_ms
            )
            messages.append(Message(spec.ground_truth_topic, payload, "ground_truth", machine_index))
        return messages

    def view(self, machine_index: int) -> MachineView:
        run = self._runs[machine_index]
        machine = run.machine
        process = machine.process
        t = machine.t
        seconds = dict(process.state_seconds)
        seconds[process.state] += t - process.t
        return MachineView(
            spec=self.machines[machine_index],
            state=process.state,
            signals=MappingProxyType(dict(run.readings)),
            health=process.health(t),
            parts_good=process.parts_good,
            parts_rejected=process.parts_rejected,
            ideal_cycle_time_s=(process.c.ideal_cycle_time_s if process.profile.produces_parts else 0.0),
            state_seconds=MappingProxyType(seconds),
            active_faults=machine.active_fault_kinds(),
        )

    def sim_time_s(self, machine_index: int) -> float:
        """Simulated time of the machine's last sample (0.0 before the first)."""
        return self._runs[machine_index].machine.t
