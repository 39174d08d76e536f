"""The one JSON style of `--json` (docs/json-output.md), checked on every result and event type.

The walker reads the field declarations of every result and event, and everything they contain,
so a new field that breaks the style (a camelCase key, a float count) fails here, not in a user's
script. The encoder is checked on values the verbs really produce (the supervisor's documents,
Pulumi output names).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import typing
from collections.abc import Iterator
from typing import Any

import pytest

import factory_core.archive_report  # noqa: F401  (defines VerifyReport, a VerbResult)
from cli_render.human import RENDERERS
from cli_render.json_style import event_document, result_document, snake_key, to_document
from factory_core.local_results import LocalStatus, PipelineStatus
from factory_core.progress_events import ProgressEvent, ScalePlanned, UpdateSummary
from factory_core.verb_results import CloudOutputs, UpdateOutcome, VerbResult
from factory_core.verbs import StackVerbs
from local_stack.control import RotationReport
from local_stack.status_document import StatusReport

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
KEBAB = re.compile(r"^[a-z]+(-[a-z]+)*$")
# A float carries its unit in its name: seconds (`_s`), US dollars (`_usd`), a share 0-1 (`_ratio`), a
# score on a documented scale (`_score`) or a rate (`_per_<unit>`: `_per_s`, `_per_second`,
# `_per_month`, `_per_message`, `_per_million`, `_per_machine_day`); counts are ints.
FLOAT_NAME = re.compile(r"_(s|usd|ratio|score|per_[a-z_]+)$")


def subclasses(base: type) -> set[type]:
    found: set[type] = set()
    pending = [base]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    return found


def parts(hint: Any) -> Iterator[Any]:
    """A type hint and every type inside it (unions, tuples, dicts, lists)."""
    yield hint
    for inner in typing.get_args(hint):
        yield from parts(inner)


def reachable(roots: set[type]) -> set[type]:
    """Every dataclass a document of these types can contain."""
    seen: set[type] = set()
    pending = list(roots)
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for hint in typing.get_type_hints(cls).values():
            pending += [part for part in parts(hint) if dataclasses.is_dataclass(part)]
    return seen


RESULTS = subclasses(VerbResult)
EVENTS = subclasses(ProgressEvent)
DOCUMENT_TYPES = sorted(reachable(RESULTS | EVENTS), key=lambda cls: cls.__name__)


def is_float(hint: Any) -> bool:
    return any(part is float for part in parts(hint))


def test_the_walker_sees_every_verb_result() -> None:
    returned: set[type] = set()
    for name in StackVerbs.__abstractmethods__:
        hint = typing.get_type_hints(getattr(StackVerbs, name))["return"]
        returned |= {part for part in parts(hint) if isinstance(part, type)}
    assert returned and returned <= RESULTS, returned - RESULTS
    assert len(DOCUMENT_TYPES) > 25


@pytest.mark.parametrize("cls", DOCUMENT_TYPES, ids=lambda cls: cls.__name__)
def test_field_names_are_snake_case_and_floats_are_seconds_or_rates(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        assert SNAKE.match(field.name), f"{cls.__name__}.{field.name} is not snake_case"
        if is_float(hints[field.name]):
            assert FLOAT_NAME.search(field.name), (
                f"{cls.__name__}.{field.name} is a float: name its unit (`_s` seconds, `_usd`, `_ratio`,"
                " a rate `_per_s`/`_per_month`), or make it an int if it counts something"
            )


def test_event_kinds_are_distinct_kebab_case_names() -> None:
    kinds = [cls.kind for cls in EVENTS]
    assert all(KEBAB.match(kind) for kind in kinds), kinds
    assert len(set(kinds)) == len(kinds) and "result" not in kinds


def test_every_result_has_a_rich_rendering() -> None:
    assert set(RENDERERS) == RESULTS


def walk(document: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, document
    if isinstance(document, dict):
        for key, value in document.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from walk(value, f"{path}[{index}]")


def camel_keys(document: Any) -> list[str]:
    return [
        path
        for path, value in walk(document)
        if isinstance(value, dict)
        for key in value
        if key != snake_key(key)
    ]


SUPERVISOR_STATUS: dict[str, Any] = {
    "stack": "local",
    "running": True,
    "phase": "running",
    "supervisor_pid": 4242,
    "started_at": 1_780_000_000.25,
    "uptime_s": 12.5,
    "first_archived_after_s": 1.9,
    "simulators": {"desired": 2, "up": 2},
    "generation": "g1",
    "rotation": {"from_generation": "g1", "to_generation": "g2", "step": "added"},
    # What the sampler reports: counters summed from Prometheus samples are floats.
    "pipeline": {
        "published_total": 980.0,
        "archived_total": 975.0,
        "quarantined_total": 2.0,
        "publish_failures_total": 0.0,
        "published_per_s": 20.5,
        "archived_per_s": 19.75,
        "lag_s": 0.12,
        "connections_up": 2.0,
        "connections_planned": 2.0,
        "queued": 0.0,
        "inflight": 3.0,
        "exporters_up": 3,
        "exporters_expected": 3,
        "sampled_at": 1_780_000_012.5,
    },
    "services": [
        {
            "name": "simulator-00",
            "kind": "simulator",
            "state": "running",
            "pid": 4300,
            "port": 9101,
            "restarts": 0,
            "generation": "g1",
            "log": "/tmp/state/logs/simulator-00.log",
        }
    ],
    "events": ["12:00:01 pipeline up"],
    "error": None,
}


def test_local_status_document_has_integer_counts_and_iso_times() -> None:
    report = StatusReport.model_validate(SUPERVISOR_STATUS)
    document = result_document(report.to_result(running=True, state_dir="/tmp/state"))
    assert document["event"] == "result" and not camel_keys(document)
    pipeline = document["pipeline"]
    for name in ("published_total", "archived_total", "quarantined_total", "connections_up", "inflight"):
        assert type(pipeline[name]) is int, name
    assert pipeline["published_total"] == 980 and pipeline["archived_per_s"] == 19.75
    assert document["supervisor_pid"] == 4242 and document["uptime_s"] == 12.5
    assert document["started_at"] == "2026-05-28T20:26:40.250000Z"
    assert pipeline["sampled_at"].endswith("Z")
    assert document["rotation"] == {"from": "g1", "to": "g2", "step": "added"}


def test_pulumi_output_names_become_snake_case() -> None:
    outputs = {
        "grafanaUrl": "http://alb/",
        "iotDataEndpoint": "x.iot",
        "simulatorServiceNames": ["sim-site-00"],
    }
    document = result_document(CloudOutputs("dev", outputs))
    assert document["outputs"] == {
        "grafana_url": "http://alb/",
        "iot_data_endpoint": "x.iot",
        "simulator_service_names": ["sim-site-00"],
    }
    update = result_document(UpdateOutcome("dev", "up", {"create": 2, "create-replacement": 1}, outputs))
    assert update["resource_changes"] == {"create": 2, "create-replacement": 1}
    assert not camel_keys(update)


def test_keys_that_are_data_keep_their_spelling() -> None:
    assert to_document({"site-00": 1, "simulator-01": 2, "invalid_json": 3, "caURL": 4}) == {
        "site-00": 1,
        "simulator-01": 2,
        "invalid_json": 3,
        "ca_url": 4,
    }


def test_a_count_that_is_not_whole_is_a_bug_not_a_document() -> None:
    def pipeline(published: float) -> PipelineStatus:
        return PipelineStatus(published, 0, 0, 0, 0.0, 0.0, None, 0, 0, 0, 0, 0, 0, None)  # type: ignore[arg-type]

    assert to_document(pipeline(3.0))["published_total"] == 3
    with pytest.raises(TypeError, match=r"PipelineStatus\.published_total is a count"):
        to_document(pipeline(2.5))
    summary = event_document(UpdateSummary({"create": 2.0}, 7, False))  # type: ignore[dict-item]
    assert summary == {
        "event": "summary",
        "resource_changes": {"create": 2},
        "duration_s": 7,
        "maybe_corrupt": False,
    }
    assert type(summary["resource_changes"]["create"]) is int


def test_timestamps_are_utc_with_z() -> None:
    naive = dt.datetime(2026, 1, 2, 3, 4, 5)
    other_zone = dt.datetime(2026, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert to_document(naive) == "2026-01-02T03:04:05Z" == to_document(other_zone)


def test_events_carry_their_kind_first() -> None:
    plan = ScalePlanned(9, 18_000.0, 225, 20_000, "near-quota", ("note",))
    document = event_document(plan)
    assert next(iter(document)) == "event" and document["event"] == "scale-plan"
    assert document["connections"] == 225 and document["notes"] == ["note"]


def test_rotation_answer_becomes_a_typed_outcome() -> None:
    outcome = RotationReport(
        from_generation="g1", to_generation="g2", rolled_back=True, finished=True, steps=["rollback"]
    ).to_result()
    document = result_document(outcome)
    assert document["generation"] == "g1" and document["rolled_back"] is True
    assert not camel_keys(document)


def test_an_empty_local_status_is_a_full_document() -> None:
    document = result_document(LocalStatus(stack="local", running=False, phase="absent", state_dir="/s"))
    assert document["running"] is False and document["services"] == [] and document["pipeline"] is None
