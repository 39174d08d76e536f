"""A site's durable state across simulator processes: the model checkpoint and the `seq` ledger.

Checkpoint: a simulator that drains (SIGTERM on scale-down, certificate rotation, a redeploy) saves
its model; the next process for the same site resumes from it, so every machine's `seq` continues
without a gap or a repeat and its physics (health, wear, temperature) carry on.

Ledger: a process killed outright (kill -9, OOM, a power cut of the host) saves nothing, so its
successor would resume from an older checkpoint, or from nothing, and hand out `seq`s the dead one
had already published. Every process therefore reserves `seq`s before it publishes them: the ledger
holds, per machine, a ceiling no published `seq` exceeds, written before a message above the last
ceiling leaves the process; a new process starts every machine above it. Each process also draws a
`boot` (a UUIDv7, time-ordered, unique without any stored state) that every message carries, so
(machine, boot, seq) names one message even where no ledger is kept (a container without a volume).
`verify` reads a crash as a new boot whose first `seq` lies beyond the last one archived from the
previous boot: the difference is what the crash may have lost (docs/cold-path.md).

Both files are written atomically with mode 0600 next to the simulator's other private state; they
are pickled because they are only ever read back by the same code on the same machine.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uuid6

from factory_core.fleet import FleetSettings
from simulator.model.site import SiteModel
from simulator.private_files import write_private

FORMAT_VERSION = 2  # 2: the event-driven model (payload schema 2)
# How messages travel does not change what the machines do: these may differ across a restart.
_TRANSPORT_FIELDS = {
    "qos", "engine", "max_publishes_per_connection", "inflight_window", "offline_queue_limit",
    "max_machine_series",
}


@dataclass(frozen=True)
class Checkpoint:
    format_version: int
    fleet_fingerprint: str
    site_index: int
    model: SiteModel


def fleet_fingerprint(fleet: FleetSettings) -> str:
    """Settings that shape the model; a checkpoint taken under other settings is not resumed."""
    shaping = fleet.model_dump_json(exclude=_TRANSPORT_FIELDS)
    return hashlib.sha256(shaping.encode()).hexdigest()


def save(path: Path, fleet: FleetSettings, site_index: int, model: SiteModel) -> None:
    checkpoint = Checkpoint(FORMAT_VERSION, fleet_fingerprint(fleet), site_index, model)
    write_private(path, pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL))


def load(path: Path, fleet: FleetSettings, site_index: int) -> SiteModel | None:
    """The saved model if it was taken for this site under the same settings, else None.

    A mismatch is not an error (the fleet config changed on purpose): the simulator says so in one
    line and starts its machines afresh.
    """
    if not path.exists():
        return None
    try:
        with path.open("rb") as handle:
            checkpoint = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        print(f"warning: ignoring unreadable checkpoint {path} ({exc}); starting afresh", file=sys.stderr)
        return None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format_version != FORMAT_VERSION:
        print(f"warning: checkpoint {path} is from another version; starting afresh", file=sys.stderr)
        return None
    if checkpoint.site_index != site_index or checkpoint.fleet_fingerprint != fleet_fingerprint(fleet):
        print(
            f"warning: checkpoint {path} was taken for another site or fleet config; starting afresh",
            file=sys.stderr,
        )
        return None
    return checkpoint.model


# -- the seq ledger ----------------------------------------------------------------------------------

LEDGER_FORMAT_VERSION = 1
# A reservation covers about this much publishing: a crash costs a successor at most this many
# unused telemetry seqs per machine, and the ledger is rewritten about this often.
RESERVE_AHEAD_S = 5.0
GROUND_TRUTH_BLOCK = 4  # label events are rare: a few per machine per reservation
MAX_BLOCK = 1 << 20


def new_boot() -> str:
    """A run id for this process: a UUIDv7, so later boots sort after earlier ones."""
    return str(uuid6.uuid7())


def ledger_path(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + ".seq")


def final_metrics_path(state_file: Path) -> Path:
    """Where a drained process leaves its exporter's last exposition: its final counts, including
    what it published after the last scrape (the local stack adds them to its totals)."""
    return state_file.with_name(state_file.name + ".final.prom")


@dataclass(frozen=True)
class SeqMarks:
    """Per machine id, the highest telemetry and ground-truth `seq` a run may have published."""

    format_version: int
    machines: tuple[str, ...]
    telemetry: array
    ground_truth: array

    def floors(self) -> dict[str, tuple[int, int]]:
        return {m: (t, g) for m, t, g in zip(self.machines, self.telemetry, self.ground_truth, strict=True)}


class SeqLedger:
    """Reserves `seq`s on disk before they are published (see the module note).

    `covers(i)` is asked after each sample, before its messages are handed to the publisher; when it
    says no, `reserve()` writes new ceilings first. Blocks grow while reservations come faster than
    every `RESERVE_AHEAD_S / 2` (no rate limit: `--max-rate`), so the file is written rarely.
    """

    def __init__(
        self,
        path: Path,
        model: SiteModel,
        publish_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.model = model
        self.clock = clock
        self.telemetry_block = math.ceil(RESERVE_AHEAD_S / publish_interval_s) + 1
        self.ground_truth_block = GROUND_TRUTH_BLOCK
        count = len(model.machines)
        self.telemetry_ceiling = array("q", [0] * count)
        self.ground_truth_ceiling = array("q", [0] * count)
        self._reserved_at: float | None = None
        earlier = read_marks(path)
        self._earlier: dict[str, tuple[int, int]] = earlier.floors() if earlier else {}

    def floors(self) -> dict[str, tuple[int, int]]:
        """What earlier runs of this site may have published (empty when there is no ledger)."""
        return dict(self._earlier)

    def covers(self, index: int) -> bool:
        """True while machine `index`'s last seqs are strictly below their reserved ceilings."""
        telemetry, ground_truth = self.model.seqs(index)
        return telemetry < self.telemetry_ceiling[index] and ground_truth < self.ground_truth_ceiling[index]

    def reserve(self) -> None:
        """Write ceilings a block above every machine's current seqs (strictly above: a crash always
        leaves its successor a visible gap, so `verify` can tell it from a clean handover)."""
        now = self.clock()
        if self._reserved_at is not None and now - self._reserved_at < RESERVE_AHEAD_S / 2:
            self.telemetry_block = min(MAX_BLOCK, self.telemetry_block * 2)
            self.ground_truth_block = min(MAX_BLOCK, self.ground_truth_block * 2)
        self._reserved_at = now
        for index in range(len(self.model.machines)):
            telemetry, ground_truth = self.model.seqs(index)
            self.telemetry_ceiling[index] = telemetry + self.telemetry_block
            self.ground_truth_ceiling[index] = ground_truth + self.ground_truth_block
        self._write(self.telemetry_ceiling, self.ground_truth_ceiling)

    def settle(self) -> None:
        """After a drain (the checkpoint is saved): the marks become exactly the seqs used, so the
        next process continues without a gap."""
        seqs = [self.model.seqs(index) for index in range(len(self.model.machines))]
        self._write(array("q", (t for t, _ in seqs)), array("q", (g for _, g in seqs)))

    def _write(self, telemetry: array, ground_truth: array) -> None:
        # Machines of earlier fleet shapes keep their marks: if they come back, they continue above.
        current = {spec.machine_id for spec in self.model.machines}
        kept = [(m, t, g) for m, (t, g) in self._earlier.items() if m not in current]
        machines = tuple(spec.machine_id for spec in self.model.machines) + tuple(m for m, _, _ in kept)
        document = SeqMarks(
            LEDGER_FORMAT_VERSION,
            machines,
            array("q", [*telemetry, *(t for _, t, _ in kept)]),
            array("q", [*ground_truth, *(g for _, _, g in kept)]),
        )
        write_private(self.path, pickle.dumps(document, protocol=pickle.HIGHEST_PROTOCOL))


def read_marks(path: Path) -> SeqMarks | None:
    if not path.exists():
        return None
    try:
        with path.open("rb") as handle:
            marks = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        # Without it seqs may repeat across this restart; `boot` still tells the runs apart.
        print(f"warning: ignoring unreadable seq ledger {path} ({exc})", file=sys.stderr)
        return None
    if not isinstance(marks, SeqMarks) or marks.format_version != LEDGER_FORMAT_VERSION:
        print(f"warning: seq ledger {path} is from another version; ignoring it", file=sys.stderr)
        return None
    return marks
