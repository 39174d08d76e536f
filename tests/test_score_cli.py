"""`cli.py score` as a user runs it: a dry run, detections in a file, labels regenerated or archived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support_local_stack import write_local_stack_file

from factory_core.fleet import FleetSettings
from local_stack.paths import CONFIG_ENV, PROJECT_DIR, STATE_DIR_ENV
from simulator.dry_run import generate

CLI = str(PROJECT_DIR / "cli.py")
DURATION_S = 6 * 3_600.0
FLEET = {"seed": 4, "lines_per_site": 1, "publish_interval_s": 30.0, "faults": {"timescale": "demo"}}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLI, "score", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=PROJECT_DIR,
    )


@pytest.fixture
def run(tmp_path: Path) -> dict[str, object]:
    """Six demo hours of one line, its fleet file, a local stack file and a few detections."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(json.dumps(FLEET))
    fleet = FleetSettings.model_validate(FLEET)
    telemetry = [orjson.loads(p) for p in generate(fleet, 0, DURATION_S) if b'"telemetry"' in p]
    hot = [m for m in telemetry if m["signals"]["vibration_rms"] > 1.8 or m["signals"]["temperature"] > 60]
    detections = tmp_path / "detections.csv"
    detections.write_text(
        "machine,timestamp,failure_mode,score\n" + "".join(f"{m['machine']},{m['ts']},,1\n" for m in hot)
    )
    env = dict(os.environ)
    env[CONFIG_ENV] = str(write_local_stack_file(tmp_path, 1, FLEET))
    env[STATE_DIR_ENV] = str(tmp_path / "state")
    return {"env": env, "fleet_file": str(fleet_file), "detections": str(detections), "hot": len(hot)}


def test_score_a_dry_run_against_regenerated_labels(run: dict) -> None:
    args = (run["detections"], "--regenerate", "--duration", str(DURATION_S))
    from_file = _cli(*args, "--config", run["fleet_file"], "--json", env=run["env"])
    assert from_file.returncode == 0, from_file.stderr
    report = json.loads(from_file.stdout.strip().splitlines()[-1])
    assert report["event"] == "result" and report["detections"] == run["hot"] > 0
    overall = next(row for row in report["rows"] if row["kind"] == "overall")
    assert overall["labels"] > 0 and 0.0 < overall["f1_score"] <= 1.0
    assert report["ground_truth"].startswith("regenerated from")
    # Without --config, the local stack's own fleet (the same one here) gives the same score.
    from_stack = _cli(*args, "--json", env=run["env"])
    assert from_stack.returncode == 0, from_stack.stderr
    again = json.loads(from_stack.stdout.strip().splitlines()[-1])
    assert again["rows"] == report["rows"]
    people = _cli(*args, env=run["env"])
    assert people.returncode == 0 and "failure modes" in people.stdout and "NAB score" in people.stdout


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--regenerate",), "needs --duration"),
        (("--regenerate", "--duration", "60", "--start", "yesterday"), "--start 'yesterday' is not ISO 8601"),
        (("--regenerate", "--archive", "x", "--duration", "60"), "not both"),
        ((), "no archive at"),
        (("--stack", "dev"), "--archive s3://BUCKET"),
    ],
)
def test_bad_requests_are_one_line_errors(run: dict, extra: tuple[str, ...], fragment: str) -> None:
    result = _cli(run["detections"], *extra, env=run["env"])
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_a_bad_detections_file_names_its_line(run: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.csv"
    broken.write_text("machine,timestamp\nsite-00-line-01-cnc_mill-01,soon\n")
    result = _cli(str(broken), "--regenerate", "--duration", "60", env=run["env"])
    assert result.returncode == 2 and f"{broken}:2: timestamp 'soon'" in result.stderr


def test_faults_settings_validate_in_the_fleet_file(run: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**FLEET, "faults": {"timescale": "geological"}}))
    result = _cli(run["detections"], "--regenerate", "--duration", "60", "--config", str(bad), env=run["env"])
    assert result.returncode == 2 and "timescale" in result.stderr
