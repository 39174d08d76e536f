"""Pulumi engine events as the verbs' progress events (resources started, done, failed; diagnostics; summary).

Events are read by attribute only, so this module needs no Pulumi import. `cli_render` draws the
result as a progress bar or writes it as JSON lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from factory_core.progress_events import (
    Diagnostic,
    ProgressEvent,
    ResourceDone,
    ResourceFailed,
    ResourceStarted,
    UpdateSummary,
)

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent


def progress_event(event: EngineEvent) -> ProgressEvent | None:
    """One engine event as a progress event, or None for events not worth showing."""
    if (pre := event.resource_pre_event) is not None:
        meta = pre.metadata
        return ResourceStarted(_op(meta.op), meta.urn, meta.type)
    if (done := event.res_outputs_event) is not None:
        meta = done.metadata
        return ResourceDone(_op(meta.op), meta.urn, meta.type)
    if (failed := event.res_op_failed_event) is not None:
        meta = failed.metadata
        return ResourceFailed(_op(meta.op), meta.urn, meta.type)
    if (diag := event.diagnostic_event) is not None:
        if diag.ephemeral or diag.severity == "debug":
            return None
        return Diagnostic(diag.severity, diag.urn, (diag.prefix or "") + diag.message.rstrip())
    if (summary := event.summary_event) is not None:
        return UpdateSummary(
            resource_changes={_op(op): count for op, count in summary.resource_changes.items()},
            duration_s=float(summary.duration_seconds),
            maybe_corrupt=bool(summary.maybe_corrupt),
        )
    # CancelEvent marks the end of every update, successful or not: nothing to show.
    return None


def _op(op: Any) -> str:
    return str(getattr(op, "value", op))
