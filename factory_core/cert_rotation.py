"""Certificate rotation as a pure, resumable state machine: (generations, record) -> next action.

Shared by the cloud stacks (config keys `iotfactory:certGenerations` and `iotfactory:rotation`)
and usable by the local stack, so `rotate-certs` means the same on every stack:

1. add     — a new generation is added as ACTIVE; simulators use the newest ACTIVE generation, so
             applying it rolls every simulator onto the new certificates (wait until steady).
2. deactivate — the old generation is marked INACTIVE (AWS IoT refuses its certificates).
3. remove  — the old generation is deleted.

Each action says which state to write *before* applying (the intent) and which record to write
*after* the apply succeeded. An interrupted run therefore resumes by re-applying the intent (an
apply is idempotent), and `--rollback` can undo every step that did not delete the old generation.
No I/O here: callers persist the state and run the applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from factory_core.errors import describe_validation_error, shown
from factory_core.stack_file import CERT_GENERATIONS_KEY, ROTATION_KEY

ACTIVE = "ACTIVE"
INACTIVE = "INACTIVE"
_GENERATION_NAME = re.compile(r"^g(?P<number>\d+)$")


class Phase(StrEnum):
    """How far a rotation got; stored as `step` in the rotation record."""

    STARTED = "started"  # new generation written to config, its apply not confirmed yet
    ADDED = "added"  # simulators run on the new generation
    DEACTIVATED = "deactivated"  # old generation's certificates are inactive
    REMOVED = "removed"  # old generation deleted; only the record remains
    ROLLING_BACK = "rolling-back"  # old generation re-activated, new one being removed


class ActionKind(StrEnum):
    ADD = "add"
    DEACTIVATE = "deactivate"
    REMOVE = "remove"
    FINISH = "finish"
    ROLLBACK = "rollback"


class RotationError(ValueError):
    """The requested rotation step cannot be taken from this state (message says why and what to do)."""


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Generation:
    """One generation of device certificates: every site (shard) gets one certificate per generation.

    The one schema of an `iotfactory:certGenerations` entry, for the Pulumi program, the CLI and
    the local stack's `pki.json`. The name goes into resource names, hence short and lowercase.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,15}$")]
    status: Annotated[Literal["ACTIVE", "INACTIVE"], BeforeValidator(_upper)] = ACTIVE

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


def _valid_generations(value: tuple[Generation, ...]) -> tuple[Generation, ...]:
    names = [generation.name for generation in value]
    if len(set(names)) != len(names):
        raise ValueError(f"generation names must be unique (got {names})")
    if not any(generation.active for generation in value):
        raise ValueError("at least one generation must be ACTIVE; the simulators use the newest ACTIVE one")
    return value


# `iotfactory:certGenerations`: a non-empty list, unique names, at least one ACTIVE.
Generations = Annotated[tuple[Generation, ...], Field(min_length=1), AfterValidator(_valid_generations)]
_GENERATIONS: TypeAdapter[tuple[Generation, ...]] = TypeAdapter(Generations)


@dataclass(frozen=True)
class RotationRecord:
    from_generation: str
    to_generation: str
    phase: Phase


@dataclass(frozen=True)
class RotationAction:
    """Write `generations` and `record_before`, apply if `apply`, then write `record_after`.

    A record of None means "no rotation in progress" (delete the record).
    """

    kind: ActionKind
    from_generation: str
    to_generation: str
    generations: tuple[Generation, ...]
    record_before: RotationRecord | None
    apply: bool
    record_after: RotationRecord | None
    # Refresh the stack before applying: set when a step is re-applied after it stopped half-way,
    # e.g. after ECS rolled the simulators back outside Pulumi's knowledge (circuit breaker).
    refresh_first: bool = False

    @property
    def last(self) -> bool:
        """True when the rotation (or rollback) is over after this action."""
        return self.kind in (ActionKind.FINISH, ActionKind.ROLLBACK)

    def describe(self) -> str:
        old, new = self.from_generation, self.to_generation
        return {
            ActionKind.ADD: f"add generation {new} and roll the simulators onto it",
            ActionKind.DEACTIVATE: f"deactivate generation {old}",
            ActionKind.REMOVE: f"remove generation {old}",
            ActionKind.FINISH: f"finish rotation {old} -> {new}",
            ActionKind.ROLLBACK: f"roll back to generation {old} and remove {new}",
        }[self.kind]


def initial_generations() -> tuple[Generation, ...]:
    return (Generation("g1", ACTIVE),)


def current_generation(generations: Sequence[Generation]) -> Generation:
    """The generation simulators use: the newest (last listed) ACTIVE one."""
    for generation in reversed(generations):
        if generation.active:
            return generation
    raise RotationError(f"no ACTIVE certificate generation in {CERT_GENERATIONS_KEY}; add one, e.g. g1")


def next_generation_name(generations: Sequence[Generation]) -> str:
    numbers = [int(match["number"]) for g in generations if (match := _GENERATION_NAME.match(g.name))]
    return f"g{max(numbers, default=len(generations)) + 1}"


def next_action(generations: Sequence[Generation], record: RotationRecord | None) -> RotationAction:
    """The next forward step: start a rotation, resume an interrupted one, or finish it."""
    gens = tuple(generations)
    if record is None:
        old = current_generation(gens)
        new = next_generation_name(gens)
        started = RotationRecord(old.name, new, Phase.STARTED)
        return RotationAction(
            ActionKind.ADD,
            old.name,
            new,
            (*gens, Generation(new, ACTIVE)),
            started,
            True,
            replace(started, phase=Phase.ADDED),
        )
    old, new = record.from_generation, record.to_generation
    if record.phase is Phase.STARTED:
        # The add was interrupted or failed (a circuit-breaker rollback leaves it here): apply it again.
        return RotationAction(
            ActionKind.ADD,
            old,
            new,
            _with_active(gens, new),
            record,
            True,
            replace(record, phase=Phase.ADDED),
            refresh_first=True,
        )
    if record.phase is Phase.ADDED:
        deactivated = tuple(replace(g, status=INACTIVE) if g.name == old else g for g in gens)
        return RotationAction(
            ActionKind.DEACTIVATE,
            old,
            new,
            deactivated,
            record,
            True,
            replace(record, phase=Phase.DEACTIVATED),
        )
    if record.phase is Phase.DEACTIVATED:
        remaining = tuple(g for g in gens if g.name != old)
        return RotationAction(
            ActionKind.REMOVE, old, new, remaining, record, True, replace(record, phase=Phase.REMOVED)
        )
    if record.phase is Phase.REMOVED:
        return RotationAction(ActionKind.FINISH, old, new, gens, None, False, None)
    return rollback_action(gens, record)


def rollback_action(generations: Sequence[Generation], record: RotationRecord | None) -> RotationAction:
    """Undo an interrupted rotation: the old generation ACTIVE again, the new one gone."""
    if record is None:
        raise RotationError("no certificate rotation in progress; nothing to roll back")
    gens = tuple(generations)
    old, new = record.from_generation, record.to_generation
    if record.phase is Phase.REMOVED or all(g.name != old for g in gens):
        raise RotationError(
            f"cannot roll back: generation {old} was already removed (its certificates are deleted); "
            "run rotate-certs again to finish the rotation"
        )
    restored = tuple(replace(g, status=ACTIVE) if g.name == old else g for g in gens if g.name != new)
    return RotationAction(
        ActionKind.ROLLBACK, old, new, restored, replace(record, phase=Phase.ROLLING_BACK), True, None
    )


def _with_active(generations: tuple[Generation, ...], name: str) -> tuple[Generation, ...]:
    if any(g.name == name for g in generations):
        return tuple(replace(g, status=ACTIVE) if g.name == name else g for g in generations)
    return (*generations, Generation(name, ACTIVE))


# Config (de)serialisation. Values arrive as the Automation API returns them (JSON text) or as
# YAML-parsed structures from the stack file; both are accepted.


def parse_generations(raw: Any) -> tuple[Generation, ...]:
    """`iotfactory:certGenerations`: a list of {name, status}; absent means the initial g1."""
    value = _decoded(raw)
    if value is None:
        return initial_generations()
    try:
        return _GENERATIONS.validate_python(value)
    except ValidationError as error:
        fix = "it is a list of {name: g<N>, status: ACTIVE or INACTIVE}"
        raise RotationError(describe_validation_error(error, CERT_GENERATIONS_KEY, fix)) from None


def dump_generations(generations: Sequence[Generation]) -> list[dict[str, str]]:
    return [{"name": g.name, "status": g.status} for g in generations]


def parse_record(raw: Any) -> RotationRecord | None:
    """`iotfactory:rotation` (ROTATION_KEY): {from, to, step}; absent or empty: no rotation in progress."""
    value = _decoded(raw)
    if not value:
        return None
    try:
        return RotationRecord(str(value["from"]), str(value["to"]), Phase(value["step"]))
    except (KeyError, TypeError, ValueError):
        steps = ", ".join(p.value for p in Phase)
        raise RotationError(
            f"{ROTATION_KEY} must be {{from, to, step}} with step one of {steps} (got {shown(value)}); "
            "fix it or remove the key if no rotation is running"
        ) from None


def dump_record(record: RotationRecord) -> dict[str, str]:
    return {"from": record.from_generation, "to": record.to_generation, "step": record.phase.value}


def _decoded(raw: Any) -> Any:
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise RotationError(
                f"expected JSON for a certificate rotation config value, got {shown(text)}"
            ) from None
    return raw
