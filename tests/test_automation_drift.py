"""Drift and stale checkouts: `drift` lists what differs, `up` refuses to revert what scale/rotate deployed.

The Pulumi side is the recording stand-in (as in tests/test_cli_cloud.py); in a LocalWorkspace the
stack's config IS the checkout's Pulumi.<stack>.yaml, so the stand-in's config plays the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support_cloud import isolate_from_real_aws, use_plain_terminal
from typer.testing import CliRunner

import cli
from automation import stack_context
from automation.recording_stack import RecordingStack, ScriptedResource
from automation.stack_context import CloudEnv
from factory_core.verb_results import DoctorReport

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "aws:region": "eu-west-1",
    "iotfactory:owner": "team",
    "iotfactory:simulatorCount": 2,
    "iotfactory:archiveMode": "direct",
    "iotfactory:allowedCidrs": ["203.0.113.0/24"],
}
G1 = [{"name": "g1", "status": "ACTIVE"}]
G2 = [{"name": "g2", "status": "ACTIVE"}]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingStack]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": CONFIG}), encoding="utf-8")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    isolate_from_real_aws(monkeypatch, tmp_path)
    stand_in = RecordingStack(
        "dev",
        config={**CONFIG, "iotfactory:certGenerations": G1},
        resources=[ScriptedResource("aws:ecs/service:Service", "simulators-site-00-service", "same")],
    )
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(
            project_dir=project, open_stack=stand_in.opener(), doctor=lambda s, p: DoctorReport(s, ())
        ),
    )
    use_plain_terminal(monkeypatch)
    yield stand_in


def run(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


# --- drift -------------------------------------------------------------------------------------------


def test_no_drift_is_exit_0(stack: RecordingStack) -> None:
    result = run("drift", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.splitlines()[-1])
    assert (report["drifted"], report["changed_outside"], report["not_deployed"]) == (False, [], [])
    updates = [name for name in stack.operations() if name in ("preview_refresh", "preview", "up", "refresh")]
    assert updates == ["preview_refresh", "preview"]  # nothing is written: no refresh, no up


def test_drift_lists_changes_made_outside_pulumi_and_undeployed_ones_then_exits_1(
    stack: RecordingStack,
) -> None:
    stack.refresh_resources = [
        ScriptedResource(
            "aws:ecs/service:Service", "simulators-site-00-service", "update", diffs=("desiredCount",)
        ),
        ScriptedResource("aws:iot/topicRule:TopicRule", "archive", "refresh", diffs=("sql",)),
    ]
    stack.resources = [
        ScriptedResource("aws:ecs/service:Service", "simulators-site-00-service", "same"),
        ScriptedResource("aws:ecs/taskDefinition:TaskDefinition", "monitoring-task", "replace"),
    ]
    result = run("drift", "--stack", "dev")
    assert result.exit_code == 1, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    start = lines.index("changed outside Pulumi (refresh would record it; `up` puts it back):")
    assert lines[start + 1 : start + 3] == [
        "update   aws:ecs/service:Service simulators-site-00-service [desiredCount]",
        "update   aws:iot/topicRule:TopicRule archive [sql]",
    ]
    start = lines.index("in this checkout but not deployed (`up` would apply it):")
    assert lines[start + 1] == "replace  aws:ecs/taskDefinition:TaskDefinition monitoring-task"
    assert "stack 'dev' has drifted; see docs/cloud.md, Drift, for what to do" in lines
    assert "up" not in stack.operations() and "refresh" not in stack.operations()


def test_drift_json_is_one_document(stack: RecordingStack) -> None:
    stack.refresh_resources = [ScriptedResource("aws:s3/bucket:Bucket", "archive", "delete")]
    result = run("drift", "--stack", "dev", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output.splitlines()[-1])
    assert report["changed_outside"] == [
        {"op": "delete", "type": "aws:s3/bucket:Bucket", "name": "archive", "properties": []}
    ]


def test_drift_is_for_cloud_stacks(stack: RecordingStack) -> None:
    result = run("drift", "--stack", "local")
    assert result.exit_code == 2
    assert "`drift` compares a cloud stack's deployed state with AWS" in result.stderr


# --- up from a stale checkout ------------------------------------------------------------------------


def deployed(stack: RecordingStack, count: int, generations: list[dict[str, str]]) -> None:
    """The backend's view of the last update: its outputs."""
    stack.set_outputs({"simulatorCount": count, "certGenerations": generations})


def history(stack: RecordingStack, *updates: tuple[str, int, list[dict[str, str]]]) -> None:
    stack.updates = [
        (
            "update",
            result,
            {"iotfactory:simulatorCount": str(count), "iotfactory:certGenerations": json.dumps(generations)},
        )
        for result, count, generations in updates
    ]


def test_up_from_a_stale_checkout_refuses_to_revert_a_scale(stack: RecordingStack) -> None:
    # Deployed: scaled 2 -> 7 from another checkout. This checkout still says 2.
    history(stack, ("succeeded", 2, G1), ("succeeded", 7, G1))
    deployed(stack, 7, G1)
    result = run("up", "--stack", "dev")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: up would revert stack 'dev' to values deployed earlier: simulatorCount 7 -> 2 "
        "(Pulumi.dev.yaml is older than the deployed stack, e.g. a stale checkout); pull the latest "
        "Pulumi.dev.yaml, or pass --allow-revert to apply it anyway\n"
    )
    assert "up" not in stack.operations()


def test_up_from_a_stale_checkout_refuses_to_bring_back_retired_certificates(stack: RecordingStack) -> None:
    history(stack, ("succeeded", 2, G1), ("succeeded", 2, [*G1, *G2]), ("succeeded", 2, G2))
    deployed(stack, 2, G2)
    result = run("up", "--stack", "dev")
    assert result.exit_code == 2
    assert "certGenerations g2 ACTIVE -> g1 ACTIVE" in result.stderr
    assert "up" not in stack.operations()


def test_allow_revert_applies_the_older_values_and_says_so(stack: RecordingStack) -> None:
    history(stack, ("succeeded", 2, G1), ("succeeded", 7, G1))
    deployed(stack, 7, G1)
    result = run("up", "--stack", "dev", "--allow-revert")
    assert result.exit_code == 0, result.output
    assert (
        "--allow-revert: applying the older values of Pulumi.dev.yaml: simulatorCount 7 -> 2" in result.output
    )
    assert stack.applied[-1][1]["iotfactory:simulatorCount"] == "2"


def test_a_value_never_deployed_is_new_not_a_revert(stack: RecordingStack) -> None:
    # `scale -n 7` recorded 7 and its update failed: `up` retries it, as documented.
    stack.config["iotfactory:simulatorCount"] = "7"
    history(stack, ("succeeded", 2, G1), ("failed", 7, G1))
    deployed(stack, 2, G1)
    result = run("up", "--stack", "dev")
    assert result.exit_code == 0, result.output
    operation, applied = stack.applied[-1]
    assert (operation, applied["iotfactory:simulatorCount"]) == ("up", "7")


def test_a_first_up_has_nothing_to_revert(stack: RecordingStack) -> None:
    assert run("up", "--stack", "dev").exit_code == 0
    assert "history" not in stack.operations()  # no outputs yet: nothing deployed to compare with


# --- the scheduled drift workflow --------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    document = yaml.safe_load((REPO / ".github" / "workflows" / "drift.yml").read_text(encoding="utf-8"))
    document["on"] = document.pop(True)  # YAML 1.1 reads the key `on` as True
    return document


def test_drift_runs_on_a_schedule_for_every_cloud_stack_with_an_oidc_role() -> None:
    document = workflow()
    assert document["on"]["schedule"] and "workflow_dispatch" in document["on"]
    (job,) = document["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert job["strategy"]["fail-fast"] is False
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    steps = job["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert uses.index("aws-actions/configure-aws-credentials") < next(
        index for index, step in enumerate(steps) if "cli.py drift" in step.get("run", "")
    )
    (drift,) = [step for step in steps if "cli.py drift" in step.get("run", "")]
    assert re.search(r"python cli\.py drift --stack \"\$\{\{ matrix\.stack \}\}\"", drift["run"])
    # The same Pulumi CLI as the preview job (the version doctor requires).
    ci = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    (ci_pulumi,) = [
        s for s in ci["jobs"]["preview"]["steps"] if s.get("uses", "").startswith("pulumi/actions")
    ]
    (pulumi,) = [s for s in steps if s.get("uses", "").startswith("pulumi/actions")]
    assert pulumi["with"]["pulumi-version"] == ci_pulumi["with"]["pulumi-version"]
    assert "command" not in pulumi["with"]  # installs the CLI only; cli.py drives it
