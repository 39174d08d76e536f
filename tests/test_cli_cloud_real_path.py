"""The real entrypoint in a subprocess: what a user on a machine without the cloud sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cli

REPO = Path(cli.__file__).resolve().parent
HEAVY_MODULES = ("pulumi", "pulumi_aws", "pulumi_docker", "boto3", "botocore")
PULUMI_MODULES = ("pulumi", "pulumi_aws", "pulumi_docker")
CLOUD_VERBS = ("up", "preview", "destroy", "outputs", "status", "scale", "rotate-certs", "bootstrap")

# Runs cli.py as `python cli.py ARGS` would, then records which top-level modules got imported.
WRAPPER = """
import json, os, runpy, sys
args = json.loads(sys.argv[1])
sys.argv = ["cli.py", *args]
code = 0
try:
    runpy.run_path("cli.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
with open(os.environ["MODULES_OUT"], "w") as out:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), out)
sys.exit(code)
"""


def run_cli(tmp_path: Path, *args: str, path: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    modules_file = tmp_path / "modules.json"
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "MODULES_OUT": str(modules_file),
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Any AWS call fails at once on a closed local port: no test ever reaches real AWS.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_MAX_ATTEMPTS": "1",
        "COLUMNS": "200",
    }
    completed = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(list(args))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed, set(json.loads(modules_file.read_text()))


def snapshot(folder: Path) -> dict[str, int | None]:
    """What `up --stack dev` could write: its stack file, the project file, the backends file."""
    paths = (folder / "Pulumi.yaml", folder / "Pulumi.dev.yaml", folder / "automation" / "backends.yaml")
    return {str(path): path.stat().st_mtime_ns if path.exists() else None for path in paths}


def test_up_without_pulumi_cli_lists_every_missing_prerequisite_exits_2_and_does_no_work(
    tmp_path: Path,
) -> None:
    empty_path = tmp_path / "empty-bin"
    empty_path.mkdir()
    before = snapshot(REPO)
    completed, modules = run_cli(tmp_path, "up", "--stack", "dev", path=str(empty_path))
    assert completed.returncode == 2, completed.stderr
    # Every missing prerequisite with its fix (doctor runs first), then one error line.
    listed = [line for line in completed.stdout.splitlines() if line.startswith("✗ ")]
    assert listed[0].startswith("✗ Pulumi CLI: not found on PATH; install the Pulumi CLI")
    assert "get.pulumi.com" in listed[0]
    assert any(line.startswith("✗ Docker: no Docker daemon answers") for line in listed)
    assert any(line.startswith("✗ AWS credentials: ") for line in listed)
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    summary = f"error: up of stack 'dev' needs {len(listed)} missing prerequisites (listed above)"
    assert lines[0].startswith(summary)
    assert "Traceback" not in completed.stderr
    # No work: the Pulumi SDK and providers were not loaded, no stack or backend file touched.
    assert modules.isdisjoint(PULUMI_MODULES), modules & set(PULUMI_MODULES)
    assert snapshot(REPO) == before


def test_help_lists_every_command_without_importing_pulumi(tmp_path: Path) -> None:
    completed, modules = run_cli(tmp_path, "--help", path=os.environ["PATH"])
    assert completed.returncode == 0, completed.stderr
    registered = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    assert set(CLOUD_VERBS) <= registered
    for name in registered:
        assert name in completed.stdout, f"{name} missing from --help"
    assert modules.isdisjoint(HEAVY_MODULES), modules & set(HEAVY_MODULES)


def test_verb_help_does_not_import_pulumi_either(tmp_path: Path) -> None:
    completed, modules = run_cli(tmp_path, "rotate-certs", "--help", path=os.environ["PATH"])
    assert completed.returncode == 0, completed.stderr
    assert "--rollback" in completed.stdout
    assert modules.isdisjoint(HEAVY_MODULES)
