"""The certificate-rotation state machine on its own: every state, forward and back."""

from __future__ import annotations

import pytest

from factory_core.cert_rotation import (
    ACTIVE,
    INACTIVE,
    ActionKind,
    Generation,
    Phase,
    RotationError,
    RotationRecord,
    current_generation,
    dump_generations,
    dump_record,
    next_action,
    next_generation_name,
    parse_generations,
    parse_record,
    rollback_action,
)

G1 = Generation("g1", ACTIVE)


def run_forward(generations: tuple[Generation, ...], record: RotationRecord | None) -> list[ActionKind]:
    """Drive the machine to the end the way rotate-certs does; return the actions taken."""
    kinds = []
    action = next_action(generations, record)
    while True:
        kinds.append(action.kind)
        generations, record = action.generations, action.record_after
        if action.last:
            return kinds
        action = next_action(generations, record)


def test_a_fresh_rotation_runs_add_deactivate_remove_finish() -> None:
    assert run_forward((G1,), None) == [
        ActionKind.ADD,
        ActionKind.DEACTIVATE,
        ActionKind.REMOVE,
        ActionKind.FINISH,
    ]


def test_each_step_writes_its_intent_before_applying() -> None:
    add = next_action((G1,), None)
    assert add.generations == (G1, Generation("g2", ACTIVE))
    assert add.record_before == RotationRecord("g1", "g2", Phase.STARTED)
    assert add.apply and add.record_after == RotationRecord("g1", "g2", Phase.ADDED)
    # Simulators use the newest ACTIVE generation: adding g2 is what moves them.
    assert current_generation(add.generations).name == "g2"

    deactivate = next_action(add.generations, add.record_after)
    assert deactivate.generations == (Generation("g1", INACTIVE), Generation("g2", ACTIVE))
    assert deactivate.record_after.phase is Phase.DEACTIVATED

    remove = next_action(deactivate.generations, deactivate.record_after)
    assert remove.generations == (Generation("g2", ACTIVE),)
    assert remove.record_after.phase is Phase.REMOVED

    finish = next_action(remove.generations, remove.record_after)
    assert finish.kind is ActionKind.FINISH and not finish.apply
    assert finish.record_before is None and finish.record_after is None


@pytest.mark.parametrize(
    ("phase", "generations", "expected"),
    [
        (Phase.STARTED, (G1, Generation("g2")), [ActionKind.ADD, ActionKind.DEACTIVATE, ActionKind.REMOVE]),
        # Interrupted between writing the new generation and recording it: still re-applies the add.
        (Phase.STARTED, (G1,), [ActionKind.ADD, ActionKind.DEACTIVATE, ActionKind.REMOVE]),
        (Phase.ADDED, (G1, Generation("g2")), [ActionKind.DEACTIVATE, ActionKind.REMOVE]),
        (
            Phase.ADDED,
            (Generation("g1", INACTIVE), Generation("g2")),
            [ActionKind.DEACTIVATE, ActionKind.REMOVE],
        ),
        (Phase.DEACTIVATED, (Generation("g1", INACTIVE), Generation("g2")), [ActionKind.REMOVE]),
        (Phase.DEACTIVATED, (Generation("g2"),), [ActionKind.REMOVE]),
        (Phase.REMOVED, (Generation("g2"),), []),
    ],
)
def test_resume_from_every_recorded_step(
    phase: Phase, generations: tuple[Generation, ...], expected: list[ActionKind]
) -> None:
    record = RotationRecord("g1", "g2", phase)
    assert run_forward(generations, record) == [*expected, ActionKind.FINISH]


def test_resumed_add_restores_the_new_generation_if_it_is_missing() -> None:
    action = next_action((G1,), RotationRecord("g1", "g2", Phase.STARTED))
    assert action.generations == (G1, Generation("g2", ACTIVE))


@pytest.mark.parametrize(
    ("phase", "generations"),
    [
        (Phase.STARTED, (G1, Generation("g2"))),
        (Phase.ADDED, (G1, Generation("g2"))),
        (Phase.ADDED, (Generation("g1", INACTIVE), Generation("g2"))),
        (Phase.DEACTIVATED, (Generation("g1", INACTIVE), Generation("g2"))),
        (Phase.ROLLING_BACK, (G1,)),
    ],
)
def test_rollback_reactivates_the_old_generation_and_drops_the_new(
    phase: Phase, generations: tuple[Generation, ...]
) -> None:
    action = rollback_action(generations, RotationRecord("g1", "g2", phase))
    assert action.kind is ActionKind.ROLLBACK and action.apply and action.last
    assert action.generations == (Generation("g1", ACTIVE),)
    assert action.record_before == RotationRecord("g1", "g2", Phase.ROLLING_BACK)
    assert action.record_after is None


def test_an_interrupted_rollback_is_finished_by_a_forward_run() -> None:
    action = next_action((G1,), RotationRecord("g1", "g2", Phase.ROLLING_BACK))
    assert action.kind is ActionKind.ROLLBACK


@pytest.mark.parametrize(
    ("phase", "generations"),
    [(Phase.REMOVED, (Generation("g2"),)), (Phase.DEACTIVATED, (Generation("g2"),))],
)
def test_rollback_is_refused_once_the_old_generation_is_gone(
    phase: Phase, generations: tuple[Generation, ...]
) -> None:
    with pytest.raises(RotationError, match="already removed"):
        rollback_action(generations, RotationRecord("g1", "g2", phase))


def test_rollback_without_rotation_is_refused() -> None:
    with pytest.raises(RotationError, match="nothing to roll back"):
        rollback_action((G1,), None)


def test_generation_names_and_current_generation() -> None:
    assert next_generation_name((Generation("g1", INACTIVE), Generation("g9"))) == "g10"
    assert next_generation_name((Generation("blue"),)) == "g2"
    assert current_generation((Generation("g1"), Generation("g2", INACTIVE))).name == "g1"
    with pytest.raises(RotationError, match="no ACTIVE"):
        current_generation((Generation("g1", INACTIVE),))


def test_config_round_trip_from_json_text_and_yaml_structures() -> None:
    generations = (Generation("g1", INACTIVE), Generation("g2"))
    dumped = dump_generations(generations)
    assert parse_generations(dumped) == generations
    assert parse_generations('[{"name": "g1", "status": "inactive"}, {"name": "g2"}]') == generations
    assert parse_generations(None) == (G1,)
    record = RotationRecord("g1", "g2", Phase.ADDED)
    assert dump_record(record) == {"from": "g1", "to": "g2", "step": "added"}
    assert parse_record('{"from": "g1", "to": "g2", "step": "added"}') == record
    assert parse_record(None) is None and parse_record("") is None and parse_record({}) is None


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [{"status": "ACTIVE"}],
        [{"name": "g1", "status": "RETIRED"}],
        [{"name": "g1"}, {"name": "g1"}],
        "not json",
    ],
)
def test_bad_generations_are_rejected_with_the_key(raw: object) -> None:
    with pytest.raises(RotationError, match=r"iotfactory:certGenerations|JSON"):
        parse_generations(raw)


def test_bad_record_is_rejected_with_the_allowed_steps() -> None:
    with pytest.raises(RotationError, match="step one of started, added"):
        parse_record({"from": "g1", "to": "g2", "step": "halfway"})
