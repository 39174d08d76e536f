"""`rotate-certs` on a cloud stack: the resumable steps of `factory_core.cert_rotation`, one `up` each.

The rotation record and the generations are written to the stack's config before and after each
step, so an interrupted rotation resumes (or rolls back) from exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

from automation.cloud_status import live_services
from automation.stack_context import (
    StackContext,
    apply_stack_config,
    open_stack,
    ordered_outputs,
)
from automation.stack_port import StackPort, UpdateResult
from automation.updates import run_update
from factory_core import cert_rotation
from factory_core.errors import OperationFailed, UsageError
from factory_core.stack_file import CERT_GENERATIONS_KEY, ROTATION_KEY
from factory_core.verb_results import RotationOutcome
from factory_core.verbs import ProgressSink


def rotate_certificates(context: StackContext, sink: ProgressSink, *, rollback: bool) -> RotationOutcome:
    port = open_stack(context, create=False)
    apply_stack_config(context, port)
    config = port.get_all_config()
    try:
        generations = cert_rotation.parse_generations(config.get(CERT_GENERATIONS_KEY))
        record = cert_rotation.parse_record(config.get(ROTATION_KEY))
        action = (
            cert_rotation.rollback_action(generations, record)
            if rollback
            else cert_rotation.next_action(generations, record)
        )
    except cert_rotation.RotationError as exc:
        raise UsageError(str(exc)) from None
    if record is not None and not rollback:
        sink.step(
            f"resuming rotation {record.from_generation} -> {record.to_generation} "
            f"(step '{record.phase.value}')"
        )
    steps: list[str] = []
    while True:
        sink.step(f"rotate-certs: {action.describe()}")
        steps.append(action.kind.value)
        _write_rotation_state(port, generations, record, action.generations, action.record_before)
        if action.apply:
            result = run_update(port, "up", sink)
            if action.kind is cert_rotation.ActionKind.ADD:
                _require_steady_simulators(context, result, action)
        if action.record_after != action.record_before:
            _write_rotation_state(
                port, action.generations, action.record_before, action.generations, action.record_after
            )
        generations, record = action.generations, action.record_after
        if action.last:
            break
        action = cert_rotation.next_action(generations, record)
    rolled_back = action.kind is cert_rotation.ActionKind.ROLLBACK
    return RotationOutcome(
        stack=context.name,
        generation=cert_rotation.current_generation(generations).name,
        from_generation=action.from_generation,
        to_generation=action.to_generation,
        rolled_back=rolled_back,
        finished=True,
        steps=tuple(steps),
    )


def _require_steady_simulators(
    context: StackContext, result: UpdateResult, action: cert_rotation.RotationAction
) -> None:
    """Before the old generation is deactivated, every simulator service must run steadily on the new one.

    `up` already waits for steady state; this re-reads ECS so a service that was rolled back or is
    still deploying stops the rotation at 'started' (re-run to check again) instead of cutting off
    simulators that still hold the old certificate.
    """
    services, note = live_services(ordered_outputs(result.outputs), context.region, simulators_only=True)
    unsteady = [service for service in services if not service.steady]
    if note is None and not unsteady:
        return
    why = note or ", ".join(
        f"{s.name} {s.running}/{s.desired} running, {s.pending} pending, {s.rollout.lower()}"
        for s in unsteady
    )
    raise OperationFailed(
        f"rotation {action.from_generation} -> {action.to_generation} paused before deactivating "
        f"{action.from_generation}: simulators not confirmed steady on {action.to_generation} ({why}); "
        f"{action.from_generation} stays active. Re-run rotate-certs to check again, or --rollback"
    )


def _write_rotation_state(
    port: StackPort,
    old_generations: tuple[cert_rotation.Generation, ...],
    old_record: cert_rotation.RotationRecord | None,
    generations: tuple[cert_rotation.Generation, ...],
    record: cert_rotation.RotationRecord | None,
) -> None:
    """Write generations and record in one config write, so they never disagree on disk."""
    values: dict[str, Any] = {}
    if generations != old_generations:
        values[CERT_GENERATIONS_KEY] = cert_rotation.dump_generations(generations)
    if record is not None and record != old_record:
        values[ROTATION_KEY] = cert_rotation.dump_record(record)
    if values:
        port.set_all_config(values)
    if record is None and old_record is not None:
        port.remove_config(ROTATION_KEY)
