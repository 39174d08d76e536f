"""Checkpoint of a site's model, so a restarted simulator continues its machines where they stopped.

A simulator that drains (SIGTERM on scale-down, certificate rotation, a redeploy) saves its model;
the next process for the same site resumes from it, so every machine's `seq` continues without a gap
or a repeat and its physics (health, wear, temperature) carry on. The file is written atomically
with mode 0600 next to the simulator's other private state; it is pickled because it is only ever
read back by the same code on the same machine, never taken from elsewhere.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

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
