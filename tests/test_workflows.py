"""GitHub Actions workflows: actionlint-clean, pinned, OIDC-only, and doing what CI promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
ACTIONLINT = Path(sys.executable).with_name("actionlint")
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def load(path: Path) -> dict[Any, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def ci() -> dict[str, Any]:
    return load(REPO / ".github" / "workflows" / "ci.yml")


def test_there_are_workflows() -> None:
    assert WORKFLOWS, "no workflow files"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_passes(path: Path) -> None:
    completed = subprocess.run(
        [str(ACTIONLINT), "-no-color", str(path)], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_action_is_pinned_to_a_commit_with_its_version_named(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for step in steps(load(path)):
        uses = step.get("uses")
        if uses is None or uses.startswith("./"):
            continue
        assert PINNED.match(uses), f"{uses} is not pinned to a full commit SHA"
        assert re.search(re.escape(uses) + r" # v\d+\.\d+\.\d+", text), f"{uses} lacks a '# vX.Y.Z' comment"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_no_long_lived_aws_keys(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "aws-access-key-id" not in text and "aws-secret-access-key" not in text
    assert not re.search(r"secrets\.AWS_", text)
    workflow = load(path)
    assert (
        workflow.get("permissions") == {"contents": read_only()} or workflow.get("permissions") == "read-all"
    )


def read_only() -> str:
    return "read"


def test_pull_requests_run_the_test_suite() -> None:
    workflow = ci()
    assert "pull_request" in workflow["on"]
    runs = [step.get("run", "") for step in workflow["jobs"]["test"]["steps"]]
    assert any(run.strip() == "bash .ci/run" for run in runs)


def test_preview_assumes_a_role_by_oidc_and_comments_on_the_pr() -> None:
    job = ci()["jobs"]["preview"]
    assert job["needs"] == "test"
    assert "pull_request" in job["if"] and "head.repo.full_name == github.repository" in job["if"]
    assert job["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    by_action = {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}
    credentials = by_action["aws-actions/configure-aws-credentials"]["with"]
    assert credentials["role-to-assume"].startswith("${{ vars.")
    assert set(credentials) == {"role-to-assume", "role-session-name", "aws-region"}
    pulumi = by_action["pulumi/actions"]["with"]
    assert pulumi["command"] == "preview" and pulumi["stack-name"] == "dev"
    assert pulumi["comment-on-pr"] is True
    assert pulumi["cloud-url"] == "${{ steps.backend.outputs.url }}"
    # Credentials come before the step that needs them.
    order = [step.get("uses", step.get("name", "")).split("@")[0] for step in job["steps"]]
    assert order.index("aws-actions/configure-aws-credentials") < order.index("pulumi/actions")


def test_preview_reads_the_backend_bootstrap_recorded(tmp_path: Path) -> None:
    """The workflow's backend step runs the same lookup the CLI uses; check it on a sample project."""
    (step,) = [step for step in ci()["jobs"]["preview"]["steps"] if step.get("id") == "backend"]
    (command,) = re.findall(r"\.venv/bin/python -c '([^']+)'", step["run"])
    (tmp_path / "automation").mkdir()
    (tmp_path / "automation" / "backends.yaml").write_text(
        "stacks:\n  dev:\n    backend_url: s3://state-bucket?region=eu-west-1\n    secrets_provider: x\n",
        encoding="utf-8",
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "s3://state-bucket?region=eu-west-1"
    override = subprocess.run(
        [sys.executable, "-c", command],
        cwd=tmp_path,
        env={**env, "PULUMI_BACKEND_URL": "s3://from-variable"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert override.stdout.strip() == "s3://from-variable"


# --- the scheduled load test ---------------------------------------------------------------------


def test_the_load_test_runs_both_benchmarks_on_a_schedule_checking_readme_goals() -> None:
    workflow = load(REPO / ".github" / "workflows" / "load-test.yml")
    assert "schedule" in workflow["on"] and "workflow_dispatch" in workflow["on"]
    (job,) = workflow["jobs"].values()
    assert job["defaults"]["run"]["shell"] == "bash"  # pipefail: `| tee` keeps the benchmark's exit code
    runs = [step.get("run", "") for step in job["steps"]]
    for script in ("bench/bench_local_stack.py", "bench/bench_simulator.py"):
        (command,) = [run for run in runs if script in run]
        assert "--check" in command and "--json bench-results/" in command
    simulator = next(step for step in job["steps"] if "bench_simulator.py" in step.get("run", ""))
    assert simulator["if"] == "success() || failure()"  # runs even when the first benchmark failed
    upload = next(
        step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")
    )
    assert upload["if"] == "always()" and upload["with"]["path"] == "bench-results/"
