"""Rule runner payload checks: a reason per kind of garbage; the fast validator agrees with jsonschema."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import orjson
import pytest
from test_rule_runner_support import fleet_messages

from factory_core.fleet import FleetSettings, MachineType, telemetry_topic
from factory_core.payload_contract import PayloadKind, validator
from local_stack.message_check import check_message, schema_check, topic_kind


def _corpus() -> list[tuple[str, bytes, PayloadKind]]:
    faulty = FleetSettings(
        lines_per_site=1,
        machines_per_line={t: 1 for t in MachineType},
        faults={"sensor_fault_per_hour": 50.0, "timescale": "demo", "failure_rate_scale": 20.0},
    )
    messages = fleet_messages(rounds=300, fleet=faulty)
    assert {m.kind for m in messages} == {"telemetry", "ground_truth"}
    return [(m.topic, m.payload, m.kind) for m in messages]


def test_real_payloads_are_archived_with_their_kind() -> None:
    for topic, payload, kind in _corpus():
        verdict = check_message(topic, payload)
        assert (verdict.reason, verdict.kind) == (None, kind), verdict.detail
        assert verdict.timestamp_s is not None


def test_topic_kinds() -> None:
    assert topic_kind("factory/simulator/site-00/line-01/m") == "telemetry"
    assert topic_kind("factory/simulator/ground-truth/site-00/line-01/m") == "ground_truth"
    for other in (
        "factory/simulator/site-00/line-01",
        "factory/other/a/b/c",
        "factory/simulator/ground-truth/a/b",
    ):
        assert topic_kind(other) is None


def _mutations(document: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key in list(document):
        out.append({k: v for k, v in document.items() if k != key})
        for wrong in (None, "x", -1, 0, 1.5, [], {}, True):
            out.append({**document, key: wrong})
    out.append({**document, "ts": "2026-13-01T00:00:00.000Z"})
    out.append({**document, "ts": "2026-01-01T00:00:00Z"})
    out.append({**document, "unexpected": 1})
    if "signals" in document:
        signals = copy.deepcopy(document["signals"])
        name = next(iter(signals))
        out.append({**document, "signals": {**signals, name: [signals[name], "°C"]}})  # schema 1's pairs
        out.append({**document, "signals": {**signals, "humidity": 1.0}})
        out.append({**document, "signals": {**signals, name: -1e9}})  # beyond the transmitter
        out.append({**document, "signals": {**signals, "speed": 1_480.0}, "state": "idle"})
    if "severity" in document:
        out.append({**document, "severity": 7})
        out.append({**document, "event": "party"})
    return out


@pytest.mark.skipif(importlib.util.find_spec("jsonschema_rs") is None, reason="jsonschema-rs not installed")
def test_fast_validator_agrees_with_jsonschema() -> None:
    checked = 0
    for _topic, payload, kind in _corpus()[::7]:
        document = orjson.loads(payload)
        for candidate in [document, *_mutations(document)]:
            assert schema_check(kind)(candidate) == validator(kind).is_valid(candidate), candidate
            checked += 1
    assert checked > 1000


def test_each_kind_of_garbage_gets_its_reason() -> None:
    topic, payload, _ = next(item for item in _corpus() if item[2] == "telemetry")
    document = orjson.loads(payload)
    cases = {
        b"\xff\xfe": "invalid_json",
        b"": "invalid_json",
        b"null": "schema_violation",
        orjson.dumps({**document, "seq": 0}): "schema_violation",
        orjson.dumps({**document, "line": "line-02"}): "machine_mismatch",  # not the machine's line
        b" " * (128 * 1024 + 1): "payload_too_large",
        # What verify could not read back as the same message is never archived.
        payload[:-1] + b',"seq":2}': "invalid_json",
        orjson.dumps({**document, "seq": 1}).replace(b'"seq":1,', b'"seq":18446744073709551616,'): (
            "schema_violation"
        ),
        orjson.dumps({**document, "parts": {"good": 2**63, "rejected": 0}}): "schema_violation",
    }
    for garbage, reason in cases.items():
        verdict = check_message(topic, garbage)
        assert verdict.reason == reason and verdict.detail, (garbage[:40], verdict)
    # Another machine's payload on this machine's topic.
    assert check_message(topic[:-2] + "99", payload).reason == "topic_mismatch"
    # A machine id of another site, line or type, on the topic it names: not this payload's machine.
    site, line, kind_of_machine = document["site"], document["line"], document["type"]
    others = {"cnc_mill": "conveyor"}.get(kind_of_machine, "cnc_mill")
    for machine in (
        document["machine"].replace(site, "site-42", 1),
        document["machine"].replace(line, "line-42", 1),
        document["machine"].replace(kind_of_machine, others, 1),
    ):
        forged = orjson.dumps({**document, "machine": machine})
        verdict = check_message(telemetry_topic(site, line, machine), forged)
        assert verdict.reason == "machine_mismatch" and machine in verdict.detail, verdict
    # A telemetry payload on a ground-truth topic fails that topic's schema.
    ground_truth_topic = topic.replace("factory/simulator/", "factory/simulator/ground-truth/")
    assert check_message(ground_truth_topic, payload).reason == "schema_violation"
