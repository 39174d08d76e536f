"""`rotate-certs` on a cloud stack: the resumable steps of `factory_core.cert_rotation`, one `up` each.

The rotation record and the generations are written to the stack's config before and after each
step, so an interrupted rotation resumes (or rolls back) from exactly where it stopped.
"""

from __future__ import annotations

from typing import Any

from automation import preflight, rollout_check
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
            if action.refresh_first:
                # A resumed step may follow an ECS rollback Pulumi's state does not know about:
                # refresh first, so `up` deploys the new task definitions again.
                run_update(port, "refresh", sink)
            result = run_update(port, "up", sink)
            if action.kind is cert_rotation.ActionKind.ADD:
                _require_new_generation_everywhere(context, result, action)
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


def _require_new_generation_everywhere(
    context: StackContext, result: UpdateResult, action: cert_rotation.RotationAction
) -> None:
    """Before the old generation is deactivated, ECS must show every site running only the new one.

    A circuit-breaker rollback is a failed step: the record stays at 'started', the old generation
    stays active, and the message names the site and what to do. Anything else unproven (a rollout
    still under way, an old task still draining, ECS unreadable) pauses the rotation the same way.
    """
    old, new = action.from_generation, action.to_generation
    outputs = ordered_outputs(result.outputs)
    sites = rollout_check.sites_of(outputs, new, context.name)
    cluster = outputs.get("clusterName")
    if not sites:
        return
    region = (
        outputs.get("region")
        if isinstance(outputs.get("region"), str)
        else preflight.aws_region(context.region)
    )
    if not isinstance(cluster, str) or region is None:
        raise OperationFailed(
            f"rotation {old} -> {new} paused before deactivating {old}: the stack exports no cluster or "
            f"region to check ECS in; {old} stays active. Run `python cli.py up --stack {context.name}`"
        )
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        blockers = rollout_check.check_rollout(rollout_check.ecs_client(region), cluster, sites)
    except (BotoCoreError, ClientError) as exc:
        raise OperationFailed(
            f"rotation {old} -> {new} paused before deactivating {old}: could not read ECS ({exc}); "
            f"{old} stays active. Re-run rotate-certs to check again"
        ) from None
    if not blockers:
        return
    more = f" (and {len(blockers) - 1} more site(s))" if len(blockers) > 1 else ""
    rolled_back = [blocker for blocker in blockers if blocker.rolled_back]
    rerun = f"`python cli.py rotate-certs --stack {context.name}`"
    if rolled_back:
        first = rolled_back[0]
        raise OperationFailed(
            f"rotation {old} -> {new} failed at {first.site}: {first.detail}; it still runs {old}, so "
            f"{old} stays active{more}. Find the cause in `aws ecs describe-services --cluster {cluster} "
            f"--services {first.service}` (events) and the task logs, fix it, then run {rerun} to roll "
            f"out {new} again, or {rerun[:-1]} --rollback` to return to {old}"
        )
    first = blockers[0]
    raise OperationFailed(
        f"rotation {old} -> {new} paused before deactivating {old}: {first.site} not confirmed on {new} "
        f"({first.detail}){more}; {old} stays active. Re-run {rerun} to check again, or add --rollback"
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
