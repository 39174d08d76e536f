"""rotate-certs never deactivates a certificate generation a simulator still uses.

ECS is answered by botocore's Stubber with recorded responses (tests/support_ecs.py,
tests/fixtures/ecs/*.json); the Pulumi side is the recording stand-in, as in tests/test_cli_cloud.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support_cloud import isolate_from_real_aws, use_plain_terminal
from support_ecs import CLUSTER, REGION, SITES, RecordedEcs, deployed_sites, task_definition
from typer.testing import CliRunner

import cli
from automation import rollout_check, stack_context
from automation.recording_stack import RecordingStack
from automation.rollout_check import SiteRollout, check_rollout
from automation.stack_context import CloudEnv
from factory_core.verb_results import DoctorReport


def sites(revision: int = 4, generation: str = "g2") -> list[SiteRollout]:
    return [
        SiteRollout(site, f"simulator-{site}", task_definition(site, revision), generation) for site in SITES
    ]


# --- the check on its own ------------------------------------------------------------------------


def test_a_rollback_that_completed_is_a_failed_step_naming_the_site() -> None:
    ecs = (
        RecordedEcs().services("describe_services_rolled_back.json").tasks("tasks_all_new.json", ("site-00",))
    )
    with ecs.stubber:
        (blocker,) = check_rollout(ecs.client, CLUSTER, sites())
    ecs.stubber.assert_no_pending_responses()
    assert blocker.site == "site-01" and blocker.rolled_back
    assert blocker.detail == (
        "ECS rolled simulator-site-01 back to iotfactory-dev-simulator-site-01:3 "
        "(deployment failed: tasks failed to start.)"
    )


def test_a_rollback_under_way_is_a_failed_step_too() -> None:
    ecs = (
        RecordedEcs()
        .services("describe_services_rolling_back.json")
        .tasks("tasks_all_new.json", ("site-00",))
    )
    with ecs.stubber:
        (blocker,) = check_rollout(ecs.client, CLUSTER, sites())
    assert blocker.rolled_back
    assert "ECS deployment circuit breaker: tasks failed to start." in blocker.detail


def test_an_old_task_still_draining_blocks_without_being_a_failure() -> None:
    ecs = RecordedEcs().services("describe_services_all_new.json").tasks("tasks_old_draining.json")
    with ecs.stubber:
        (blocker,) = check_rollout(ecs.client, CLUSTER, sites())
    ecs.stubber.assert_no_pending_responses()
    assert not blocker.rolled_back
    assert blocker.detail == (
        "task bb22cc33dd44ee55ff66778899001122 of simulator-site-01 (deactivating) still runs "
        "iotfactory-dev-simulator-site-01:3"
    )


def test_every_site_on_the_new_task_definition_is_the_proof() -> None:
    ecs = RecordedEcs().services("describe_services_all_new.json").tasks("tasks_all_new.json")
    with ecs.stubber:
        assert check_rollout(ecs.client, CLUSTER, sites()) == []
    ecs.stubber.assert_no_pending_responses()


def test_sites_must_be_exported_for_the_new_generation() -> None:
    from factory_core.errors import OperationFailed

    outputs = {
        "simulatorSites": {"site-00": {"serviceName": "s", "taskDefinitionArn": "t", "certGeneration": "g1"}}
    }
    with pytest.raises(OperationFailed, match="site-00 are defined for another generation than g2"):
        rollout_check.sites_of(outputs, "g2", "dev")
    with pytest.raises(OperationFailed, match="exports no simulatorSites"):
        rollout_check.sites_of({}, "g2", "dev")


# --- through rotate-certs --------------------------------------------------------------------------


@pytest.fixture
def rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingStack]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\n", encoding="utf-8")
    config = {
        "aws:region": REGION,
        "iotfactory:owner": "team",
        "iotfactory:simulatorCount": 2,
        "iotfactory:archiveMode": "direct",
        "iotfactory:allowedCidrs": ["203.0.113.0/24"],
    }
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": config}), encoding="utf-8")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pulumi").write_text("#!/bin/sh\nexit 97\n", encoding="utf-8")
    (fake_bin / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    isolate_from_real_aws(monkeypatch, tmp_path)
    outputs = {"clusterName": CLUSTER, "region": REGION, "simulatorSites": deployed_sites()}
    stack = RecordingStack("dev", outputs=outputs)
    monkeypatch.setattr(
        stack_context,
        "cloud_env",
        lambda: CloudEnv(
            project_dir=project, open_stack=stack.opener(), doctor=lambda s, p: DoctorReport(s, ())
        ),
    )
    use_plain_terminal(monkeypatch)
    yield stack


def use_ecs(monkeypatch: pytest.MonkeyPatch, ecs: RecordedEcs) -> None:
    ecs.stubber.activate()
    monkeypatch.setattr(rollout_check, "ecs_client", lambda region: ecs.client)


def applied_generations(stack: RecordingStack) -> list[list[dict[str, str]]]:
    return [json.loads(config["iotfactory:certGenerations"]) for op, config in stack.applied if op == "up"]


def test_rotation_stops_at_a_circuit_breaker_rollback_and_keeps_the_old_generation_active(
    rotation: RecordingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ecs = (
        RecordedEcs().services("describe_services_rolled_back.json").tasks("tasks_all_new.json", ("site-00",))
    )
    use_ecs(monkeypatch, ecs)
    result = CliRunner().invoke(cli.app, ["rotate-certs", "--stack", "dev"])
    assert result.exit_code == 1, result.output
    ecs.stubber.assert_no_pending_responses()
    # Only step 1 ran: g1 was never set INACTIVE.
    assert applied_generations(rotation) == [
        [{"name": "g1", "status": "ACTIVE"}, {"name": "g2", "status": "ACTIVE"}]
    ]
    assert json.loads(rotation.config["iotfactory:rotation"]) == {"from": "g1", "to": "g2", "step": "started"}
    assert result.stderr == (
        "error: rotation g1 -> g2 failed at site-01: ECS rolled simulator-site-01 back to "
        "iotfactory-dev-simulator-site-01:3 (deployment failed: tasks failed to start.); it still runs g1, "
        "so g1 stays active. Find the cause in `aws ecs describe-services --cluster iotfactory-dev "
        "--services simulator-site-01` (events) and the task logs, fix it, then run "
        "`python cli.py rotate-certs --stack dev` to roll out g2 again, or "
        "`python cli.py rotate-certs --stack dev --rollback` to return to g1\n"
    )


def test_a_resumed_rotation_refreshes_first_then_finishes_once_ecs_proves_the_move(
    rotation: RecordingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_ecs(
        monkeypatch,
        RecordedEcs()
        .services("describe_services_rolled_back.json")
        .tasks("tasks_all_new.json", ("site-00",)),
    )
    assert CliRunner().invoke(cli.app, ["rotate-certs", "--stack", "dev"]).exit_code == 1
    rotation.calls.clear()

    ecs = RecordedEcs().services("describe_services_all_new.json").tasks("tasks_all_new.json")
    use_ecs(monkeypatch, ecs)
    result = CliRunner().invoke(cli.app, ["rotate-certs", "--stack", "dev"])
    assert result.exit_code == 0, result.output
    ecs.stubber.assert_no_pending_responses()
    updates = [name for name in rotation.operations() if name in ("refresh", "up")]
    # The rollback happened outside Pulumi's state: refresh, so the re-applied step deploys g2 again.
    assert updates == ["refresh", "up", "up", "up"]
    assert json.loads(rotation.config["iotfactory:certGenerations"]) == [{"name": "g2", "status": "ACTIVE"}]
    assert "iotfactory:rotation" not in rotation.config


def test_an_old_task_still_draining_pauses_the_rotation(
    rotation: RecordingStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_ecs(
        monkeypatch, RecordedEcs().services("describe_services_all_new.json").tasks("tasks_old_draining.json")
    )
    result = CliRunner().invoke(cli.app, ["rotate-certs", "--stack", "dev"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: rotation g1 -> g2 paused before deactivating g1: site-01 not confirmed on g2 (task "
        "bb22cc33dd44ee55ff66778899001122 of simulator-site-01 (deactivating) still runs "
        "iotfactory-dev-simulator-site-01:3); g1 stays active."
    )
    assert rotation.operations().count("up") == 1


def test_a_step_resumed_after_it_stopped_half_way_refreshes_first() -> None:
    """The state machine says when: an add re-applied from 'started' (interrupted, or rolled back by
    ECS outside Pulumi's state); a fresh rotation's first add does not need it."""
    from factory_core.cert_rotation import ACTIVE, Generation, Phase, RotationRecord, next_action

    fresh = next_action((Generation("g1", ACTIVE),), None)
    assert not fresh.refresh_first
    resumed = next_action(fresh.generations, RotationRecord("g1", "g2", Phase.STARTED))
    assert resumed.refresh_first and resumed.apply
    later = next_action(fresh.generations, RotationRecord("g1", "g2", Phase.ADDED))
    assert not later.refresh_first
