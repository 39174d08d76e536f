"""Drift and stale checkouts: what differs between the deployed stack, AWS, and this working copy.

- `drift` (`cli.py drift`): a refresh preview (AWS against the state: changed outside Pulumi), then
  a preview (this checkout against the state: not deployed). Either non-empty is drift, exit 1.
  That is `pulumi preview --refresh --expect-no-changes`, with the engine's events kept so the
  report names every resource instead of one "changes occurred" line.
- `revert_guard` (before `up`): `scale` and `rotate-certs` record their state in `Pulumi.<stack>.yaml`,
  so an `up` from an older checkout would silently put back an older simulator count or certificate
  generations. A value that differs from the deployed one (the stack's outputs) and was deployed
  before (the stack's history) is a revert, refused unless the user asks for it (`--allow-revert`).
  A value never deployed (a scale whose update failed, an edit) is new and goes ahead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from automation.stack_port import StackPort
from automation.updates import run_update
from factory_core import cert_rotation
from factory_core.errors import UsageError
from factory_core.stack_file import CERT_GENERATIONS_KEY, SIMULATOR_COUNT_KEY, decode_value
from factory_core.verb_results import DriftItem, DriftReport
from factory_core.verbs import ProgressSink

# Updates of the stack's history searched for an earlier deployment of a value.
HISTORY_DEPTH = 50
_UNCHANGED = {"same", "read", "refresh", "read-replacement", "discard", "discard-replaced"}


def _resource_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


class _Collector:
    """Keeps the resources an engine run would change (events read by attribute: no Pulumi import)."""

    def __init__(self) -> None:
        self.items: dict[str, DriftItem] = {}

    def __call__(self, event: Any) -> None:
        for step in (event.resource_pre_event, event.res_outputs_event):
            meta = getattr(step, "metadata", None)
            if meta is None:
                continue
            op = str(getattr(meta.op, "value", meta.op))
            diffs = tuple(meta.diffs or ())
            # A refresh reports a drifted resource as op `refresh` with the properties that differ.
            if op in _UNCHANGED and not (op == "refresh" and diffs):
                continue
            shown = "update" if op == "refresh" else op
            self.items[meta.urn] = DriftItem(shown, meta.type, _resource_name(meta.urn), diffs)


def _scan(port: StackPort, operation: str, sink: ProgressSink) -> tuple[DriftItem, ...]:
    collector = _Collector()
    run_update(port, operation, sink, watch=collector)
    return tuple(sorted(collector.items.values(), key=lambda item: (item.type, item.name)))


def detect_drift(port: StackPort, sink: ProgressSink) -> DriftReport:
    sink.step(f"refresh preview of stack '{port.name}': does AWS still match the state?")
    outside = _scan(port, "preview_refresh", sink)
    sink.step(f"preview of stack '{port.name}': is this checkout deployed?")
    pending = _scan(port, "preview", sink)
    return DriftReport(port.name, outside, pending)


# -- stale checkouts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revert:
    key: str
    deployed: str
    in_file: str

    def describe(self) -> str:
        return f"{self.key.split(':', 1)[1]} {self.deployed} -> {self.in_file}"


def _count(value: Any) -> str | None:
    decoded = decode_value(value)
    return None if decoded is None else str(decoded)


def _generations(value: Any) -> str | None:
    decoded = decode_value(value)
    if decoded is None:
        return None
    try:
        parsed = cert_rotation.parse_generations(decoded)
    except cert_rotation.RotationError:
        return json.dumps(decoded)
    return ", ".join(f"{g.name} {g.status}" for g in parsed)


# config key -> (output that reports the deployed value, how both are compared and shown)
GUARDED: Mapping[str, tuple[str, Callable[[Any], str | None]]] = {
    SIMULATOR_COUNT_KEY: ("simulatorCount", _count),
    CERT_GENERATIONS_KEY: ("certGenerations", _generations),
}


def find_reverts(port: StackPort) -> list[Revert]:
    """Values this checkout would apply that differ from the deployed ones and were deployed before."""
    config = port.get_all_config()
    outputs = {key: item.value for key, item in port.outputs().items()}
    differing: list[Revert] = []
    for key, (output, normal) in GUARDED.items():
        deployed, in_file = normal(outputs.get(output)), normal(config.get(key))
        if deployed is not None and in_file is not None and deployed != in_file:
            differing.append(Revert(key, deployed, in_file))
    if not differing:
        return []
    earlier = [
        {key: normal(update.config.get(key)) for key, (_, normal) in GUARDED.items()}
        for update in port.history(HISTORY_DEPTH)
        if update.kind == "update" and update.result == "succeeded"
    ]
    return [revert for revert in differing if any(past[revert.key] == revert.in_file for past in earlier)]


def revert_guard(port: StackPort, source: str, *, allow: bool, sink: ProgressSink) -> None:
    """Refuse an `up` that would undo what scale or rotate-certs deployed, unless allowed."""
    reverts = find_reverts(port)
    if not reverts:
        return
    changes = "; ".join(revert.describe() for revert in reverts)
    if allow:
        sink.step(f"--allow-revert: applying the older values of {source}: {changes}", warning=True)
        return
    raise UsageError(
        f"up would revert stack '{port.name}' to values deployed earlier: {changes} ({source} is older "
        f"than the deployed stack, e.g. a stale checkout); pull the latest {source}, or pass --allow-revert "
        "to apply it anyway"
    )
