"""Real `pulumi.automation` engine events (built from the engine's JSON shape) as progress events,
drawn as a progress bar and written as JSON lines."""

from __future__ import annotations

import io
import json

from pulumi.automation import EngineEvent
from rich.console import Console

from automation.progress import progress_event
from automation.recording_stack import ScriptedResource, engine_events
from cli_render.json_style import JsonSink, event_document
from cli_render.update_progress import UpdateProgress, short_urn

URN = "urn:pulumi:dev::iotfactory::iotfactory:iot:DeviceFleet$aws:iot/thing:Thing::site-00"


def event(**fields: object) -> EngineEvent:
    return EngineEvent.from_json({"sequence": 1, "timestamp": 0, **fields})


def event_record(engine_event: EngineEvent) -> dict[str, object] | None:
    """The JSON line `--json` writes for an engine event (None: not shown)."""
    converted = progress_event(engine_event)
    return None if converted is None else event_document(converted)


def test_short_urn_keeps_the_leaf_type_and_name() -> None:
    assert short_urn(URN) == "aws:iot/thing:Thing site-00"
    assert short_urn("not-a-urn") == "not-a-urn"


def test_event_records_are_flat_and_skip_noise() -> None:
    meta = {"op": "create", "urn": URN, "type": "aws:iot/thing:Thing", "provider": ""}
    assert event_record(event(resourcePreEvent={"metadata": meta})) == {
        "event": "resource-start",
        "op": "create",
        "urn": URN,
        "type": "aws:iot/thing:Thing",
    }
    assert event_record(event(diagnosticEvent={"severity": "debug", "message": "x"})) is None
    assert (
        event_record(event(diagnosticEvent={"severity": "info", "message": "x", "ephemeral": True})) is None
    )
    assert event_record(event(cancelEvent={})) is None
    assert event_record(event(preludeEvent={"config": {"iotfactory:owner": "x"}})) is None
    summary = event_record(
        event(summaryEvent={"resourceChanges": {"create": 2, "same": 5}, "durationSeconds": 7})
    )
    assert summary == {
        "event": "summary",
        "resource_changes": {"create": 2, "same": 5},
        "duration_s": 7,
        "maybe_corrupt": False,
    }


def feed(renderer: UpdateProgress, item: EngineEvent) -> None:
    converted = progress_event(item)
    if converted is not None:
        renderer.handle(converted)


def render(resources: list[ScriptedResource]) -> tuple[UpdateProgress, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None, force_terminal=False)
    renderer = UpdateProgress("up", console)
    with renderer:
        for item in engine_events("dev", resources):
            feed(renderer, item)
    return renderer, buffer.getvalue()


def test_progress_counts_changed_resources_and_reports_failures_with_their_message() -> None:
    renderer, text = render(
        [
            ScriptedResource("aws:s3/bucket:Bucket", "archive", "same"),
            ScriptedResource("aws:iot/thing:Thing", "site-00", "create"),
            ScriptedResource(
                "aws:ecs/service:Service", "simulators", "update", error="timeout waiting for steady"
            ),
        ]
    )
    # "same" is not work: 2 of 2 changed resources are finished (one of them failed).
    assert "2/2" in text
    assert "✗ updating aws:ecs/service:Service simulators: timeout waiting for steady" in text
    assert renderer.failures == {
        "urn:pulumi:dev::iotfactory::aws:ecs/service:Service::simulators": "timeout waiting for steady"
    }
    assert renderer.changes == {"same": 1, "create": 1}


def test_progress_prints_warnings_and_program_output() -> None:
    buffer = io.StringIO()
    renderer = UpdateProgress("preview", Console(file=buffer, width=200, color_system=None))
    with renderer:
        feed(renderer, event(diagnosticEvent={"severity": "warning", "urn": URN, "message": "deprecated\n"}))
        feed(renderer, event(diagnosticEvent={"severity": "info", "message": "building image\n"}))
        feed(renderer, event(diagnosticEvent={"severity": "error", "message": "program failed\n"}))
    text = buffer.getvalue()
    assert "warning: aws:iot/thing:Thing site-00: deprecated" in text
    assert "building image" in text
    assert "error: program failed" in text


def test_json_lines_are_one_object_per_line() -> None:
    buffer = io.StringIO()
    renderer = JsonSink(lambda: buffer)
    for item in engine_events("dev", [ScriptedResource("aws:iot/thing:Thing", "site-00")]):
        if (converted := progress_event(item)) is not None:
            renderer.event(converted)
    renderer.step("hello")
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["resource-start", "resource-done", "summary", "note"]
