"""The situations docs/cloud.md describes when cloud operations go wrong, set up for a real run.

Each scenario prepares a project, the recording stand-in for Pulumi and recorded AWS answers
(or none at all), so `python cli.py ...` prints what a user sees in that situation. Used by
tests/test_docs_cloud_operations.py (whole documented blocks) and tests/docs_reproductions.py
(the documented `error:` lines).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from support_cloud import isolate_from_real_aws, use_plain_terminal
from support_ecs import CLUSTER, REGION, RecordedEcs, deployed_sites
from typer.testing import CliRunner

from automation import rollout_check, stack_context
from automation.recording_stack import Interrupted, RecordingStack, ScriptedResource
from automation.stack_context import CloudEnv
from automation.stack_port import OutputValue, StackLock
from factory_core.verb_results import DoctorReport

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "aws:region": REGION,
    "iotfactory:owner": "team",
    "iotfactory:simulatorCount": 2,
    "iotfactory:archiveMode": "direct",
    "iotfactory:allowedCidrs": ["203.0.113.0/24"],
}


Scenario = Callable[[Path, pytest.MonkeyPatch], None]


def _recording(project: Path, monkeypatch: pytest.MonkeyPatch, stack: RecordingStack) -> None:
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": CONFIG}), encoding="utf-8")
    fake_bin = project.parent / "bin"
    fake_bin.mkdir()
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(
            project_dir=project, open_stack=stack.opener(), doctor=lambda s, p: DoctorReport(s, ())
        ),
    )


def prerequisites(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This repository's own dev stack on a machine with no Pulumi CLI, no Docker, no AWS credentials."""
    monkeypatch.setenv("PATH", str(project / "empty-bin"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setattr(stack_context, "cloud_env", lambda: CloudEnv(project_dir=REPO))


def interrupt(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = RecordingStack("dev")
    stack.fail_next("up", Interrupted(signal.SIGTERM))
    _recording(project, monkeypatch, stack)


def interrupt_locked(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = RecordingStack("dev")
    lock = "s3://iotfactory-pulumi-state-123456789012-eu-west-1/.pulumi/locks/organization/iotfactory/dev/0b1c.json"
    stack.locks = [StackLock(lock, "taken by ci@runner (pid 7) at 2026-12-04T10:00:00Z")]
    stack.fail_next("up", Interrupted(signal.SIGTERM))
    _recording(project, monkeypatch, stack)


def rotation_rollback(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = RecordingStack(
        "dev", outputs={"clusterName": CLUSTER, "region": REGION, "simulatorSites": deployed_sites()}
    )
    _recording(project, monkeypatch, stack)
    ecs = (
        RecordedEcs().services("describe_services_rolled_back.json").tasks("tasks_all_new.json", ("site-00",))
    )
    ecs.stubber.activate()
    monkeypatch.setattr(rollout_check, "ecs_client", lambda region: ecs.client)


def drift(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = RecordingStack(
        "dev", resources=[ScriptedResource("aws:ecs/service:Service", "simulators-site-00-service", "same")]
    )
    stack.refresh_resources = [
        ScriptedResource(
            "aws:ecs/service:Service", "simulators-site-00-service", "update", diffs=("desiredCount",)
        )
    ]
    _recording(project, monkeypatch, stack)


def revert(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generations = '[{"name": "g1", "status": "ACTIVE"}]'
    stack = RecordingStack("dev", config={**CONFIG, "iotfactory:certGenerations": generations})
    stack.updates = [
        (
            "update",
            "succeeded",
            {"iotfactory:simulatorCount": "2", "iotfactory:certGenerations": generations},
        ),
        (
            "update",
            "succeeded",
            {"iotfactory:simulatorCount": "7", "iotfactory:certGenerations": generations},
        ),
    ]
    stack.set_outputs(
        {"simulatorCount": OutputValue(7), "certGenerations": [{"name": "g1", "status": "ACTIVE"}]}
    )
    _recording(project, monkeypatch, stack)


SCENARIOS: dict[str, Scenario] = {
    "prerequisites": prerequisites,
    "interrupt": interrupt,
    "interrupt-locked": interrupt_locked,
    "rotation-rollback": rotation_rollback,
    "drift": drift,
    "revert": revert,
}


def run_scenario(name: str, arguments: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`python cli.py <arguments>` (in process) in the named situation; the click result."""
    import cli

    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    isolate_from_real_aws(monkeypatch, tmp_path)
    use_plain_terminal(monkeypatch)
    SCENARIOS[name](project, monkeypatch)
    return CliRunner().invoke(cli.app, arguments)


def error_line(name: str, arguments: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one `error:` line the run prints (for docs_reproductions.py)."""
    result = run_scenario(name, arguments, tmp_path, monkeypatch)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.exit_code in (1, 2, 130), (result.exit_code, result.stderr)
    return lines[0]
