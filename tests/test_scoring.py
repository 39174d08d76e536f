"""The scorer: detectors whose scores are known, label windows, false alarms, lead times, inputs."""

from __future__ import annotations

import datetime as dt
import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from factory_core.errors import UsageError
from factory_core.fleet import FaultSettings, FleetSettings
from local_stack.archive import LocalArchive, batch_key, encode_batch
from scoring import Detection, ground_truth_from_events, parse_detections, regenerated, score
from scoring.scorer import ScoreOptions, percentile
from scoring.sources import from_archive
from simulator.dry_run import DEFAULT_START_EPOCH_MS, generate

START = DEFAULT_START_EPOCH_MS / 1000
HOUR = 3_600.0
MILL, PRESS = "site-00-line-01-cnc_mill-01", "site-00-line-01-hydraulic_press-01"


def _iso(offset_s: float) -> str:
    moment = dt.datetime.fromtimestamp(START + offset_s, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(machine: str, event: str, at: float, **fields: Any) -> dict[str, Any]:
    base = {
        "schema": 2,
        "kind": "ground_truth",
        "machine": machine,
        "site": "site-00",
        "line": "line-01",
        "type": machine.split("-")[4],
        "ts": _iso(at),
        "seq": 1,
        "event": event,
        "at": _iso(at),
        "onset": _iso(fields.pop("onset", at)),
        "end": None,
        "detectable_from": None,
        "fault": None,
        "fault_class": None,
        "fault_id": None,
        "signal": None,
        "severity": None,
        "scheduled": False,
        "from_state": None,
        "to_state": None,
        "reason": None,
    }
    for key in ("end", "detectable_from"):
        if key in fields:
            fields[key] = _iso(fields[key])
    return {**base, **fields}


def _failure(
    machine: str,
    fault: str,
    fault_id: int,
    onset: float,
    visible: float,
    stop: float,
    end: float,
    *,
    trip: bool,
) -> list[dict[str, Any]]:
    """A failure mode: onset, visible, then a trip (or a planned stop), repair, end."""
    common = {
        "fault": fault,
        "fault_class": "failure_mode",
        "fault_id": fault_id,
        "severity": 0.5,
        "onset": onset,
    }
    stop_state = "fault" if trip else "maintenance"
    return [
        _event(machine, "fault_start", onset, **common),
        _event(machine, "fault_update", visible, detectable_from=visible, **common),
        _event(
            machine,
            "state_change",
            stop,
            from_state="running",
            to_state=stop_state,
            reason="bearing_failure" if trip else "condition_based_maintenance",
            **common,
        ),
        _event(
            machine,
            "state_change",
            end,
            from_state="maintenance" if not trip else "fault",
            to_state="idle",
            reason="maintenance_done",
        ),
        _event(
            machine,
            "fault_end",
            end,
            end=end,
            detectable_from=visible,
            reason="repaired" if trip else "condition_based",
            **common,
        ),
    ]


def _truth() -> Any:
    """Two machines over 10 hours: a mill bearing trips, a press pump is taken out on condition."""
    events = [
        _event(MILL, "state_change", 0.0, to_state="running", reason="start"),
        _event(PRESS, "state_change", 0.0, to_state="running", reason="start"),
        *_failure(
            MILL,
            "spindle_bearing_wear",
            1,
            onset=1 * HOUR,
            visible=2 * HOUR,
            stop=4 * HOUR,
            end=5 * HOUR,
            trip=True,
        ),
        *_failure(
            PRESS, "pump_wear", 1, onset=3 * HOUR, visible=5 * HOUR, stop=6 * HOUR, end=7 * HOUR, trip=False
        ),
    ]
    observed = {MILL: (START, START + 10 * HOUR), PRESS: (START, START + 10 * HOUR)}
    return ground_truth_from_events(events, observed)


def _at(machine: str, offset_s: float, mode: str | None = None) -> Detection:
    return Detection(machine, START + offset_s, mode)


def test_windows_run_from_onset_to_the_stop() -> None:
    labels = {label.machine: label for label in _truth().labels}
    mill, press = labels[MILL], labels[PRESS]
    assert (mill.onset, mill.window_end, mill.tripped) == (START + HOUR, START + 4 * HOUR, True)
    assert (press.window_end, press.tripped, press.end_reason) == (START + 6 * HOUR, False, "condition_based")
    assert mill.detectable_from == START + 2 * HOUR


def test_perfect_detector() -> None:
    """A detection at the start of each window: every score at its best, NAB 100."""
    report = score(_truth(), [_at(MILL, HOUR), _at(PRESS, 3 * HOUR)])
    overall = report.row("overall")
    assert (overall.precision_ratio, overall.recall_ratio, overall.f1_score) == (1.0, 1.0, 1.0)
    assert report.false_alarms == 0 and report.nab_score == pytest.approx(100.0)
    mill = report.row("spindle_bearing_wear")
    assert mill.lead_before_trip_median_s == 3 * HOUR  # detected 3 h before the trip
    assert mill.delay_after_visible_median_s == -HOUR  # an hour before the symptom was visible
    assert report.row("pump_wear").lead_before_trip_median_s is None  # planned stop, no trip


def test_empty_detector() -> None:
    report = score(_truth(), [])
    overall = report.row("overall")
    assert (overall.precision_ratio, overall.recall_ratio, overall.f1_score, overall.detected) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    assert report.nab_score == 0.0 and report.false_alarms == 0


def test_always_on_detector() -> None:
    """A detection every minute on every machine: everything detected, and a false alarm per stretch
    between windows (detections closer than merge_s are one alarm); stopped time is ignored."""
    detections = [_at(machine, minute * 60.0) for machine in (MILL, PRESS) for minute in range(600)]
    report = score(_truth(), detections, ScoreOptions(merge_s=HOUR))
    overall = report.row("overall")
    assert overall.recall_ratio == 1.0
    # Mill: [0, 1 h) before its window, [5 h, 10 h] after repair. Press: [0, 3 h) and [7 h, 10 h].
    assert report.false_alarms == 4
    assert overall.precision_ratio == pytest.approx(2 / 6)
    assert report.ignored == 60 + 60  # one hour stopped on each machine
    assert report.false_alarms_per_machine_day == pytest.approx(4 / (20 / 24))
    assert report.row("spindle_bearing_wear").lead_before_trip_median_s == 3 * HOUR


def test_random_detector_scores_in_between_and_reproducibly() -> None:
    truth = _truth()

    def draw() -> list[Detection]:
        rng = random.Random(3)
        return [_at(rng.choice((MILL, PRESS)), rng.uniform(0, 10 * HOUR)) for _ in range(12)]

    first, again = score(truth, draw()), score(truth, draw())
    assert first == again
    assert 0.0 < first.row("overall").f1_score < 1.0
    assert first.false_alarms > 0


def test_false_alarms_count_for_the_failure_modes_of_the_machines_type() -> None:
    """An unnamed false alarm on a mill counts a third against each of a mill's three modes; one
    naming a fault counts against that fault only."""
    detections = [
        _at(MILL, 2 * HOUR),  # detects the bearing
        _at(MILL, 0.5 * HOUR),  # false, unnamed
        _at(PRESS, 4 * HOUR),  # detects the pump
        _at(PRESS, 8 * HOUR, "seal_leakage"),  # false, named
    ]
    report = score(_truth(), detections)
    assert report.false_alarms == 2
    assert report.row("spindle_bearing_wear").precision_ratio == pytest.approx(1 / (1 + 1 / 3))
    assert report.row("pump_wear").precision_ratio == 1.0
    assert report.row("failure modes").precision_ratio == pytest.approx(2 / 4)


def test_diagnosis_and_unknown_machines() -> None:
    detections = [
        _at(MILL, 2 * HOUR, "spindle_bearing_wear"),
        _at(PRESS, 4 * HOUR, "seal_leakage"),
        _at("site-09-line-01-conveyor-01", HOUR),
    ]
    report = score(_truth(), detections)
    assert report.diagnosis_ratio == 0.5
    assert report.unknown_machines == ("site-09-line-01-conveyor-01",)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.1) == pytest.approx(1.4)
    assert percentile([], 0.5) is None


def test_detections_are_read_from_csv_and_json_lines() -> None:
    csv_text = (
        "machine,timestamp,failure_mode,score\n"
        f"{MILL},2026-01-01T02:00:00.000Z,tool_wear,0.9\n"
        f"{PRESS},{START + 60},,\n"
    )
    from_csv = parse_detections(csv_text)
    json_text = (
        orjson.dumps(
            {"machine": MILL, "ts": "2026-01-01T02:00:00Z", "failure_mode": "tool_wear", "score": 0.9}
        )
        + b"\n"
        + orjson.dumps({"machine": PRESS, "timestamp": START + 60})
    ).decode()
    assert from_csv == parse_detections(json_text)
    assert from_csv[0] == Detection(MILL, START + 2 * HOUR, "tool_wear", 0.9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "machine,timestamp\nsite-00-line-01-cnc_mill-01,yesterday\n",
            r"detections:2: timestamp 'yesterday'",
        ),
        ("time,score\n1,2\n", "CSV needs a header row"),
        ('{"machine": "m"}\n', "needs a timestamp"),
        ('{"machine": "m", "ts": 1, "failure_mode": "gremlins"}\n', "unknown failure_mode 'gremlins'"),
        ("{not json\n", r"detections:1: not JSON"),
    ],
)
def test_bad_detections_name_the_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_detections(text)


def _baseline_module() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "baseline_detector.py"
    spec = importlib.util.spec_from_file_location("baseline_detector", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_detector"] = module
    spec.loader.exec_module(module)
    return module


def test_score_ranks_perfect_baseline_random_empty() -> None:
    """On a week of a small plant (minute samples, failure modes 20x as often as by default)."""
    fleet = FleetSettings(seed=42, speed=60.0, faults=FaultSettings(failure_rate_scale=20.0))
    duration = 7 * 86_400.0
    truth = regenerated(fleet, [0], duration, DEFAULT_START_EPOCH_MS)
    telemetry = (orjson.loads(payload) for payload in generate(fleet, 0, duration))
    baseline = list(_baseline_module().detect(telemetry))
    perfect = [  # as soon as the symptom is visible, or when the data starts (faults already under way)
        Detection(label.machine, max(label.detectable_from, truth.observed[label.machine][0]))
        for label in truth.labels
        if label.detectable_from is not None and label.detectable_from <= label.window_end
    ]
    rng = random.Random(7)
    machines = sorted(truth.observed)
    noise = [
        Detection(machine, rng.uniform(*truth.observed[machine]))
        for machine in (rng.choice(machines) for _ in range(len(baseline)))
    ]
    f1 = {
        name: score(truth, found).row("overall").f1_score
        for name, found in (("perfect", perfect), ("baseline", baseline), ("random", noise), ("empty", []))
    }
    assert f1["perfect"] == 1.0
    assert f1["perfect"] > f1["baseline"] > f1["random"] > f1["empty"] == 0.0, f1


def test_ground_truth_from_the_archive_scores_like_the_regenerated_one(tmp_path: Path) -> None:
    fleet = FleetSettings(
        seed=5,
        lines_per_site=1,
        speed=30.0,
        faults=FaultSettings(timescale="demo", sensor_fault_per_hour=0.5),
    )
    duration = 4 * HOUR
    archive = LocalArchive(tmp_path / "archive")
    payloads = list(generate(fleet, 0, duration))
    for first in range(0, len(payloads), 500):  # batches of the rule runner's shape, one duplicated
        archive.put_object(
            batch_key("test", dt.datetime.now(dt.UTC)), encode_batch(payloads[first : first + 500])
        )
    archive.put_object(batch_key("test", dt.datetime.now(dt.UTC)), encode_batch(payloads[:50]))
    archived, again = from_archive(archive), regenerated(fleet, [0], duration, DEFAULT_START_EPOCH_MS)
    assert len(archived.labels) > 10

    def windows(truth: Any) -> list[tuple[str, int, float, float]]:
        return [(label.machine, label.fault_id, label.onset, label.window_end) for label in truth.labels]

    assert windows(archived) == windows(again)
    detections = [Detection(label.machine, label.onset + 1.0) for label in again.labels[::2]]
    assert score(archived, detections).row("overall").f1_score == pytest.approx(
        score(again, detections).row("overall").f1_score, abs=0.02
    )
