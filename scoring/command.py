"""The `score` verb's work, shared by every kind of stack: read detections, get labels, score."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from factory_core.errors import UsageError, describe_validation_error
from factory_core.fleet import FleetSettings
from factory_core.score_report import ScoreOptions, ScoreReport
from factory_core.verbs import ScoreRequest
from scoring.detections import read_detections
from scoring.labels import GroundTruth
from scoring.scorer import score

if TYPE_CHECKING:
    from local_stack.archive import Archive

DRY_RUN_START = "2026-01-01T00:00:00Z"  # simulator.dry_run.DEFAULT_START_EPOCH_MS


def _start_ms(text: str | None) -> int:
    value = text or DRY_RUN_START
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--start {value!r} is not ISO 8601; e.g. {DRY_RUN_START}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _fleet_file(path: str) -> FleetSettings:
    from pydantic import ValidationError

    from simulator.config_loader import read_fleet_file

    try:
        return FleetSettings.model_validate(read_fleet_file(Path(path)))
    except ValidationError as error:
        raise UsageError(
            describe_validation_error(error, "fleet", f"edit {path}", model=FleetSettings)
        ) from None


def _regenerated(
    request: ScoreRequest, stack_fleet: Callable[[], tuple[FleetSettings, int, str]]
) -> tuple[GroundTruth, str]:
    from scoring.sources import regenerated

    if request.duration_s is None or request.duration_s <= 0:
        raise UsageError(
            "score --regenerate needs --duration: the simulated seconds the run covered, e.g. 3600"
        )
    if request.config is not None:
        fleet, sites, what = _fleet_file(request.config), 1, request.config
    else:
        fleet, sites, what = stack_fleet()
    chosen = request.sites or tuple(range(sites))
    start_ms = _start_ms(request.start)
    start = dt.datetime.fromtimestamp(start_ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
    truth = regenerated(fleet, chosen, request.duration_s, start_ms)
    sites_text = ", ".join(f"site-{site:02d}" for site in chosen)
    return (
        truth,
        f"regenerated from {what} (seed {fleet.seed}; {sites_text}; {request.duration_s:g} s from {start})",
    )


def score_request(
    request: ScoreRequest,
    *,
    stack_archive: Callable[[], Archive],
    stack_fleet: Callable[[], tuple[FleetSettings, int, str]],
) -> ScoreReport:
    """`stack_archive` opens the stack's own archive; `stack_fleet` gives its fleet, site count and name."""
    if request.regenerate and request.archive is not None:
        raise UsageError("score takes labels from --archive or from --regenerate, not both; drop one")
    detections = read_detections(Path(request.detections), request.threshold)
    options = ScoreOptions(merge_s=request.merge_s, grace_s=request.grace_s, tolerance_s=request.tolerance_s)
    if request.regenerate:
        truth, source = _regenerated(request, stack_fleet)
    else:
        from local_stack.archive import open_archive
        from scoring.sources import from_archive

        archive = (
            open_archive(request.archive, endpoint_url=request.endpoint_url)
            if request.archive is not None
            else stack_archive()
        )
        truth, source = from_archive(archive), archive.location
        if not truth.observed:
            raise UsageError(
                f"no messages in the archive {source}; score a run that was archived, or use --regenerate"
            )
    return score(truth, detections, options, source)
