"""The payload contract: the JSON Schemas agree with the model and reject malformed payloads."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from factory_core import payload_schema
from factory_core.fleet import (
    SENSOR_FAULTS,
    FaultKind,
    FaultSettings,
    FleetSettings,
    MachineType,
    ScheduledFault,
)
from factory_core.metric_catalog import MACHINE_STATES
from factory_core.payload_contract import (
    ALL_FAILURE_MODES,
    SCHEMA_VERSION,
    SIGNAL_UNITS,
    SIGNALS,
    PayloadInvalid,
    decode_payload,
    load_schema,
    payload_errors,
    payload_kind,
    validate_payload,
    validate_payloads,
)
from simulator.dry_run import generate
from simulator.model.payload import iso_timestamp
from simulator.model.profiles import PROFILES


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, Any]]:
    """One real telemetry payload per machine type and one ground-truth payload per event kind."""
    fleet = FleetSettings(
        seed=2,
        lines_per_site=1,
        faults=FaultSettings(
            scheduled=[
                ScheduledFault(
                    machine="site-00-line-01-cnc_mill-01", fault="dropout", at_s=5.0, duration_s=3.0
                ),
            ]
        ),
    )
    payloads = list(generate(fleet, 0, 30.0))
    validate_payloads(payloads)
    found: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        message = orjson.loads(payload)
        key = message["event"] if message["kind"] == "ground_truth" else message["type"]
        found.setdefault(key, message)
    assert set(found) == {*(t.value for t in MachineType), "state_change", "fault_start", "fault_end"}
    return found


def test_schemas_are_valid_draft_2020_12() -> None:
    for kind in ("telemetry", "ground_truth"):
        schema = load_schema(kind)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
        assert schema["properties"]["schema"]["const"] == SCHEMA_VERSION
        assert schema["additionalProperties"] is False
        assert "starts at 1" in schema["properties"]["seq"]["description"]


def test_telemetry_schema_matches_the_model() -> None:
    schema = load_schema("telemetry")
    assert schema["properties"]["state"]["enum"] == list(MACHINE_STATES)
    assert schema["properties"]["type"]["enum"] == [t.value for t in MachineType]
    signals = schema["properties"]["signals"]["properties"]
    assert {name: spec["x-unit"] for name, spec in signals.items()} == SIGNAL_UNITS
    per_type = {
        rule["if"]["properties"]["type"]["const"]: rule["then"]["properties"]["signals"]
        for rule in schema["allOf"]
        if "type" in rule["if"]["properties"]
    }
    assert {name: rule["required"] for name, rule in per_type.items()} == {
        t.value: list(profile.signals) for t, profile in PROFILES.items()
    }
    for machine_type, specs in SIGNALS.items():
        bounds = per_type[machine_type.value]["properties"]
        assert {
            spec.name: (bounds[spec.name]["minimum"], bounds[spec.name]["maximum"]) for spec in specs
        } == {spec.name: (spec.low, spec.high) for spec in specs}


def test_ground_truth_schema_matches_the_model() -> None:
    properties = load_schema("ground_truth")["properties"]
    assert properties["fault"]["enum"] == [*ALL_FAILURE_MODES, *SENSOR_FAULTS, None]
    assert set(properties["fault"]["enum"][:-1]) == set(FaultKind.__args__)
    assert properties["to_state"]["enum"] == [*MACHINE_STATES, None]
    assert properties["signal"]["enum"] == [*SIGNAL_UNITS, None]


def test_schemas_and_the_signal_table_are_generated_from_the_contract() -> None:
    assert payload_schema.main(["--check"]) == 0, "run python -m factory_core.payload_schema"
    assert payload_schema.signal_table() in payload_schema.DOC_FILE.read_text(encoding="utf-8")


def test_real_payloads_pass(samples: dict[str, dict[str, Any]]) -> None:
    for message in samples.values():
        assert validate_payload(orjson.dumps(message)) == message


def test_telemetry_size_stays_compact(samples: dict[str, dict[str, Any]]) -> None:
    for machine_type in MachineType:
        size = len(orjson.dumps(samples[machine_type.value]))
        assert 240 <= size <= 350, (machine_type, size)


def _broken(message: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(message)
    target = broken
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return broken


_DELETE = object()

TELEMETRY_BREAKAGES = [
    ("unknown state", ("state",), "broken"),
    ("missing state", ("state",), _DELETE),
    ("missing seq", ("seq",), _DELETE),
    ("seq as string", ("seq",), "1"),
    ("seq zero", ("seq",), 0),
    ("seq float", ("seq",), 1.5),
    ("schema version 1", ("schema",), 1),
    ("missing kind", ("kind",), _DELETE),
    ("ground-truth kind", ("kind",), "ground_truth"),
    ("machine id of another type", ("machine",), "site-00-line-01-conveyor-01"),
    ("machine id of another site", ("machine",), "site-03-line-01-cnc_mill-01"),
    ("machine id of another line", ("machine",), "site-00-line-07-cnc_mill-01"),
    ("negative speed", ("signals", "speed"), -5.0),
    ("speed beyond the transmitter", ("signals", "speed"), 30_000.0),
    ("temperature below absolute zero", ("signals", "temperature"), -273.0),
    ("temperature beyond the transmitter", ("signals", "temperature"), 400.0),
    ("negative power", ("signals", "power"), -0.5),
    ("schema-1 value and unit pair", ("signals", "temperature"), [41.2, "°C"]),
    ("seq beyond what every JSON reader holds exactly", ("seq",), 2**53),
    ("seq beyond 63 bits", ("seq",), 2**63),
    ("boot not a UUIDv7", ("boot",), "6f1c2a7e-3b2d-4c1e-8f00-000000000000"),
    ("boot not a string", ("boot",), 7),
    ("unknown type", ("type",), "robot_arm"),
    ("bad machine id", ("machine",), "mill 1"),
    ("timestamp without ms", ("ts",), "2026-01-01T00:00:01Z"),
    ("timestamp with offset", ("ts",), "2026-01-01T00:00:01.000+00:00"),
    ("extra top-level field", ("health",), 0.9),
    ("value as string", ("signals", "temperature"), "41.2"),
    ("unknown signal", ("signals", "humidity"), 50.0),
    ("missing signal", ("signals", "speed"), _DELETE),
    ("negative parts", ("parts", "good"), -1),
    ("parts beyond 2^53", ("parts", "rejected"), 2**53),
    ("missing parts", ("parts",), _DELETE),
    ("extra parts field", ("parts", "scrap"), 1),
]


@pytest.mark.parametrize(
    ("case", "path", "value"), TELEMETRY_BREAKAGES, ids=[c[0] for c in TELEMETRY_BREAKAGES]
)
def test_telemetry_schema_rejects(
    samples: dict[str, dict[str, Any]], case: str, path: tuple, value: Any
) -> None:
    message = _broken(samples["cnc_mill"], path, value)
    assert payload_errors(message, "telemetry"), case
    with pytest.raises(PayloadInvalid):
        validate_payload(orjson.dumps(message), "telemetry")


def test_signals_must_fit_the_machine_type(samples: dict[str, dict[str, Any]]) -> None:
    conveyor_with_pressure = _broken(samples["conveyor"], ("signals", "pressure"), 6.5)
    assert payload_errors(conveyor_with_pressure)
    press_without_pressure = _broken(samples["hydraulic_press"], ("signals", "pressure"), _DELETE)
    assert payload_errors(press_without_pressure)
    dropout = _broken(samples["air_compressor"], ("signals", "pressure"), None)
    assert payload_errors(dropout) == []
    # Bounds are per type: 1e9 bar is impossible anywhere, 300 bar only on a compressor.
    assert payload_errors(_broken(samples["air_compressor"], ("signals", "pressure"), 1e9))
    assert payload_errors(_broken(samples["air_compressor"], ("signals", "pressure"), 300.0))
    assert payload_errors(_broken(samples["hydraulic_press"], ("signals", "pressure"), 300.0)) == []


def test_speed_is_zero_unless_running(samples: dict[str, dict[str, Any]]) -> None:
    running = samples["hydraulic_press"]
    assert running["state"] == "running" and running["signals"]["speed"] > 1_000
    idle = _broken(_broken(running, ("state",), "idle"), ("signals", "speed"), 1_480.0)
    assert any("speed" in error for error in payload_errors(idle))
    assert payload_errors(_broken(idle, ("signals", "speed"), 0.0)) == []
    assert payload_errors(_broken(idle, ("signals", "speed"), None)) == []


GROUND_TRUTH_BREAKAGES = [
    ("unknown event", "state_change", ("event",), "reboot"),
    ("unknown to_state", "state_change", ("to_state",), "broken"),
    ("state change without to_state", "state_change", ("to_state",), None),
    ("missing reason key", "state_change", ("reason",), _DELETE),
    ("fault start without fault", "fault_start", ("fault",), None),
    ("unknown fault", "fault_start", ("fault",), "gremlins"),
    ("severity above 1", "fault_start", ("severity",), 1.5),
    ("severity zero", "fault_start", ("severity",), 0),
    ("sensor fault without signal", "fault_start", ("signal",), None),
    ("fault start with end", "fault_start", ("end",), "2026-01-01T00:00:01.000Z"),
    ("fault end without end", "fault_end", ("end",), None),
    ("fault end with state reason", "fault_end", ("reason",), "changeover"),
    ("failure mode marked sensor", "fault_end", ("fault",), "spindle_bearing_wear"),
    ("missing at", "fault_start", ("at",), _DELETE),
    ("telemetry kind", "state_change", ("kind",), "telemetry"),
    ("update of a sensor fault", "fault_start", ("event",), "fault_update"),
    ("scheduled as string", "fault_start", ("scheduled",), "yes"),
    ("extra field", "fault_start", ("label",), 1),
]


@pytest.mark.parametrize(
    ("case", "kind", "path", "value"), GROUND_TRUTH_BREAKAGES, ids=[c[0] for c in GROUND_TRUTH_BREAKAGES]
)
def test_ground_truth_schema_rejects(
    samples: dict[str, dict[str, Any]], case: str, kind: str, path: tuple, value: Any
) -> None:
    assert payload_errors(samples[kind]) == []
    assert payload_errors(_broken(samples[kind], path, value), "ground_truth"), case


def test_failure_modes_belong_to_their_machine_type(samples: dict[str, dict[str, Any]]) -> None:
    start = samples["fault_start"]
    assert start["type"] == "cnc_mill"
    as_failure = {**start, "fault_class": "failure_mode", "signal": None}
    assert payload_errors({**as_failure, "fault": "tool_wear"}) == []
    assert payload_errors({**as_failure, "fault": "air_leak"})
    assert payload_errors({**start, "signal": "pressure"})  # a mill has no pressure signal


def test_not_json_and_not_objects_are_reported() -> None:
    assert payload_errors(b"{not json")[0].startswith("not JSON")
    assert payload_errors(b"[1, 2]") == ["$: expected a JSON object, got list"]
    with pytest.raises(PayloadInvalid, match="not JSON"):
        validate_payload(b"")
    with pytest.raises(PayloadInvalid, match=r"payload #2: \$: 'schema' is a required property"):
        validate_payloads([next(generate(FleetSettings(), 0, 1.0)), b"{}"])


def test_kind_is_told_by_content(samples: dict[str, dict[str, Any]]) -> None:
    assert payload_kind(samples["conveyor"]) == "telemetry"
    assert payload_kind(samples["fault_end"]) == "ground_truth"


@pytest.mark.parametrize(
    ("epoch_ms", "expected"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_767_225_600_000, "2026-01-01T00:00:00.000Z"),
        (1_767_225_600_000 + 86_399_999, "2026-01-01T23:59:59.999Z"),
        (951_782_400_000 + 1_234, "2000-02-29T00:00:01.234Z"),
    ],
)
def test_timestamps_are_iso_utc_with_milliseconds(epoch_ms: int, expected: str) -> None:
    assert iso_timestamp(epoch_ms) == expected


def test_live_payloads_carry_their_boot_and_stay_valid() -> None:
    from simulator.checkpoint import new_boot
    from simulator.model.site import SiteModel

    model = SiteModel(FleetSettings(lines_per_site=1, seed=3), 0, 1_780_000_000_000)
    boot = new_boot()
    model.start_boot(boot, {model.machines[0].machine_id: (41, 7)})
    messages = [message for index in range(len(model.machines)) for message in model.sample(index)]
    documents = [validate_payload(message.payload) for message in messages]
    assert {document["boot"] for document in documents} == {boot}
    first = [d for d in documents if d["machine"] == model.machines[0].machine_id]
    assert {d["seq"] for d in first if "signals" in d} == {42}
    assert {d["seq"] for d in first if "event" in d} == {8}
    assert new_boot() > boot  # UUIDv7: a later process sorts after


def test_decoding_refuses_duplicate_keys_and_keeps_big_integers_exact(
    samples: dict[str, dict[str, Any]],
) -> None:
    payload = orjson.dumps(samples["cnc_mill"])
    assert decode_payload(payload) == samples["cnc_mill"]  # the fast path: written back identically
    spaced = payload.replace(b",", b", ")  # another writer's spacing: the careful path, same value
    assert decode_payload(spaced) == samples["cnc_mill"]
    with pytest.raises(PayloadInvalid, match="duplicate key 'seq'"):
        decode_payload(payload[:-1] + b',"seq":2}')
    with pytest.raises(PayloadInvalid, match="duplicate key 'good'"):
        decode_payload(b'{"parts": {"good": 1, "good": 1}}')
    assert decode_payload(b'{"seq": 18446744073709551616}') == {"seq": 2**64}
    for bad in (b'{"a": NaN}', b'{"a": Infinity}', b"\xff", b'{"a": "\\ud800"}'):
        with pytest.raises(PayloadInvalid):
            decode_payload(bad)
