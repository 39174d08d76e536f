"""Test helpers for the cloud verbs: no real AWS account can be reached, and output is plain text."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from automation import stack_context
from automation.recording_stack import RecordingStack, ScriptedResource
from automation.stack_context import CloudEnv
from automation.stack_port import OutputValue
from factory_core.verb_results import DoctorReport, PrerequisiteCheck


def isolate_from_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static credentials; no metadata service, no ~/.aws files, no PULUMI_BACKEND_URL."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)


def plain_console() -> Console:
    """Wide and colourless, so assertions see whole lines without markup."""
    return Console(width=240, highlight=False, color_system=None)


def use_plain_terminal(
    monkeypatch: pytest.MonkeyPatch,
    tty: Callable[[], bool] = lambda: False,
    answer: Callable[[str], bool] = lambda _question: False,
) -> None:
    """The rich renderer draws on `plain_console()`, with this terminal and these answers."""
    from cli_render import terminal

    monkeypatch.setattr(
        terminal, "terminal", lambda: terminal.Terminal(console=plain_console(), stdin_is_tty=tty, ask=answer)
    )


BASE_CONFIG: dict[str, Any] = {
    "aws:region": "eu-west-1",
    "iotfactory:owner": "platform-team",
    "iotfactory:simulatorCount": 2,
    "iotfactory:archiveMode": "direct",
    "iotfactory:allowedCidrs": ["203.0.113.0/24"],
    "iotfactory:fleet": {"lines_per_site": 2, "publish_interval_s": 1.0},
}
OUTPUTS = {
    "archiveBucket": "iotfactory-dev-archive",
    "prometheusUrl": "http://alb.example/prometheus/",
    "grafanaUrl": "http://alb.example/",
    "grafanaAdminPassword": OutputValue("hunter2", secret=True),
    # No simulator sites: rotate-certs has nothing to prove in ECS (tests/test_automation_rollout.py does).
    "simulatorSites": {},
}
RESOURCES = [
    ScriptedResource("aws:ecs/service:Service", "simulators", "update"),
    ScriptedResource("aws:iot/thing:Thing", "site-00", "create"),
]


@dataclass
class Cloud:
    project: Path
    stack: RecordingStack
    pulumi_calls: Path
    runner: CliRunner
    tty: bool = False
    answer: bool = True

    def write_stack_file(self, config: dict[str, Any], name: str = "dev", extra: str = "") -> Path:
        path = self.project / f"Pulumi.{name}.yaml"
        path.write_text(extra + yaml.safe_dump({"config": config}, sort_keys=False), encoding="utf-8")
        return path

    def run(self, *args: str) -> Any:
        import cli

        return self.runner.invoke(cli.app, list(args))

    def assert_pulumi_never_called(self) -> None:
        calls = self.pulumi_calls
        assert not calls.exists(), f"the real pulumi CLI was invoked: {calls.read_text()}"


def all_present(stack: str, project_dir: Path) -> DoctorReport:
    """`doctor` with every prerequisite in place (tests/test_automation_doctor.py checks the real one)."""
    return DoctorReport(stack, (PrerequisiteCheck("everything", True, "stand-in"),))


def cloud_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """A project folder with Pulumi.dev.yaml, a fake `pulumi` on PATH, and the recording stack."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        "name: iotfactory\nruntime: python\nmain: infra/\n", encoding="utf-8"
    )
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    pulumi_calls = tmp_path / "pulumi-calls"
    # Preflight only needs `pulumi` to exist; calling it would bypass the boundary under test.
    (fake_bin / "pulumi").write_text(f'#!/bin/sh\necho "$@" >> {pulumi_calls}\nexit 97\n', encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    isolate_from_real_aws(monkeypatch, tmp_path)
    stack = RecordingStack("dev", outputs=OUTPUTS, resources=RESOURCES)
    state = Cloud(project, stack, pulumi_calls, CliRunner())
    state.write_stack_file(BASE_CONFIG)

    def env() -> CloudEnv:
        return CloudEnv(project_dir=project, open_stack=stack.opener(), doctor=all_present)

    monkeypatch.setattr(stack_context, "cloud_env", env)
    use_plain_terminal(monkeypatch, tty=lambda: state.tty, answer=lambda _question: state.answer)
    return state
