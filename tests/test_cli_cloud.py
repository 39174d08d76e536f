"""The cloud verbs driven through cli.py against a recording stand-in for the Automation API's stack.

The stand-in sits exactly at the `StackPort` boundary: everything above it (cli.py, preflight,
config handling, scale and rotation logic, progress rendering) is the real code. A fake `pulumi`
on PATH satisfies preflight and fails loudly if anything calls the real CLI.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support_cloud import BASE_CONFIG, Cloud, cloud_stand_in

from automation import stack_context, updates
from automation.recording_stack import Call, Interrupted, RecordingStack, ScriptedResource
from automation.stack_port import StackBusyError, StackLock, UpdateFailedError


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    state = cloud_stand_in(tmp_path, monkeypatch)
    yield state
    state.assert_pulumi_never_called()


def config_of(stack: RecordingStack, key: str) -> Any:
    raw = stack.config.get(key)
    return None if raw is None else json.loads(raw) if raw[:1] in "[{" else raw


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# --- up ----------------------------------------------------------------------------------------


def test_up_sets_config_then_streams_events_and_prints_outputs(cloud: Cloud) -> None:
    # The workspace lacks a key the stack file has: up must bring it in before updating.
    cloud.stack.config = {"aws:region": "eu-west-1"}
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 0, result.output
    names = cloud.stack.operations()
    assert names[:3] == ["open", "get_all_config", "set_all_config"]
    assert names.index("set_all_config") < names.index("up")
    written = cloud.stack.calls[names.index("set_all_config")].args["values"]
    assert written["iotfactory:owner"] == "platform-team"
    assert written["iotfactory:fleet"] == BASE_CONFIG["iotfactory:fleet"]
    assert written["iotfactory:certGenerations"] == [{"name": "g1", "status": "ACTIVE"}]
    # The update ran with that config in place.
    operation, applied = cloud.stack.applied[-1]
    assert operation == "up"
    assert applied["iotfactory:owner"] == "platform-team"
    # Progress display: both resources done, the summary, then the outputs with Grafana first.
    assert "2/2" in result.output
    assert "up of 'dev' done: 1 to create, 1 to update" in result.output
    lines = result.output.splitlines()
    grafana = next(i for i, line in enumerate(lines) if "grafanaUrl" in line)
    archive = next(i for i, line in enumerate(lines) if "archiveBucket" in line)
    assert grafana < archive
    assert "hunter2" not in result.output


def test_up_writes_only_what_differs(cloud: Cloud) -> None:
    assert cloud.run("up", "--stack", "dev").exit_code == 0
    cloud.stack.calls.clear()
    assert cloud.run("up", "--stack", "dev").exit_code == 0
    assert "set_all_config" not in cloud.stack.operations()
    assert "up" in cloud.stack.operations()


def test_up_json_emits_one_object_per_event(cloud: Cloud) -> None:
    result = cloud.run("up", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    records = json_lines(result.output)
    assert len(records) == len(result.output.strip().splitlines())
    kinds = [record["event"] for record in records]
    assert kinds.count("resource-start") == 2 and kinds.count("resource-done") == 2
    assert kinds[-2:] == ["summary", "result"]
    final = records[-1]
    assert final["outputs"]["grafana_url"] == "http://alb.example/"
    assert final["outputs"]["grafana_admin_password"] == "[secret]"
    assert next(r for r in records if r["event"] == "resource-start")["op"] == "update"


def test_failed_resource_shows_its_message_and_exits_1(cloud: Cloud) -> None:
    cloud.stack.resources = [
        ScriptedResource(
            "aws:ecs/service:Service", "simulators", "update", error="InvalidParameterException: bad"
        )
    ]
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 1
    assert "✗ updating aws:ecs/service:Service simulators: InvalidParameterException: bad" in result.output
    assert result.stderr.count("\n") == 1 and "up of stack 'dev' failed" in result.stderr


def notes(output: str) -> list[str]:
    return [record["message"] for record in json_lines(output) if record["event"] == "note"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_waits_for_the_engine_then_reports_the_lock_and_never_cancels(
    cloud: Cloud, signum: int
) -> None:
    cloud.stack.fail_next("up", Interrupted(signum))
    result = cloud.run("up", "--stack", "dev", "--json")
    assert result.exit_code == 130
    names = cloud.stack.operations()
    assert "cancel" not in names  # `pulumi cancel` would delete the lock of a still-running update
    # Passed on to the engine once; the lock is read only after the engine has exited.
    assert names.count("interrupt_engine") == 1, (names, result.output, result.stderr)
    assert names.index("signal") < names.index("interrupt_engine") < names.index("engine-exited")
    assert names.index("engine-exited") < names.index("lock_holders")
    assert cloud.stack.updates_running == 0
    # What the user sees, in order: waiting, the in-flight resource finishing, then the verdict.
    records = json_lines(result.output)
    order = [
        r.get("message", r["event"]) for r in records if r["event"] in ("note", "resource-done", "summary")
    ]
    assert order[0].startswith("interrupted: waiting for Pulumi to finish the operations in flight")
    assert order[1:3] == ["resource-done", "summary"]
    assert order[3] == (
        "Pulumi stopped and stack 'dev' is not locked; resources it had not reached are unchanged. "
        "Run the same command again to finish"
    )
    assert result.stderr.strip() == "error: interrupted"


def test_an_interrupt_that_left_a_lock_names_it_and_the_command_that_releases_it(cloud: Cloud) -> None:
    lock = ".pulumi/locks/organization/iotfactory/dev/0b1c.json"
    holder = "taken by ci@runner (pid 7) at 2026-12-04T10:00:00Z"
    cloud.stack.locks = [StackLock(f"s3://state/{lock}", holder)]
    cloud.stack.fail_next("up", Interrupted(signal.SIGTERM))
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 130
    assert (
        "Pulumi stopped but stack 'dev' is still locked (s3://state/.pulumi/locks/organization/iotfactory/dev/"
        "0b1c.json, taken by ci@runner (pid 7) at 2026-12-04T10:00:00Z); if no update is running there, "
        "release it with `pulumi cancel --stack dev --yes`, then run the same command again"
    ) in result.output
    assert "cancel" not in cloud.stack.operations()


def test_a_terminal_ctrl_c_is_not_passed_on_a_second_time(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The terminal sent Ctrl-C to the engine too: a second SIGINT would make it stop abruptly."""
    monkeypatch.setattr(updates, "engine_already_interrupted", lambda signum: signum == signal.SIGINT)
    cloud.stack.fail_next("up", Interrupted(signal.SIGINT, engine_gets_it=True))
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 130
    assert "interrupt_engine" not in cloud.stack.operations()
    assert "engine-exited" in cloud.stack.operations()


def test_concurrent_update_is_one_clear_line(cloud: Cloud) -> None:
    cloud.stack.fail_next("up", StackBusyError("the stack is currently locked by 1 lock(s)"))
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "stack 'dev' is locked by another update" in result.stderr
    assert "pulumi cancel --stack dev" in result.stderr
    assert "cancel" not in cloud.stack.operations()


PROD_CONFIG = {
    **BASE_CONFIG,
    "iotfactory:certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
    "iotfactory:domainName": "factory.example.com",
    "iotfactory:accountId": "123456789012",
    "iotfactory:imageCache": {"enabled": False},
}


def test_prod_up_asks_first_and_refuses_without_a_terminal(cloud: Cloud) -> None:
    cloud.write_stack_file(PROD_CONFIG, name="prod")
    result = cloud.run("up", "--stack", "prod")
    assert result.exit_code == 2
    assert "needs confirmation; re-run with --yes" in result.stderr
    assert cloud.stack.operations() == []

    cloud.tty, cloud.answer = True, False
    result = cloud.run("up", "--stack", "prod")
    assert result.exit_code == 2
    assert "preview" in cloud.stack.operations() and "up" not in cloud.stack.operations()

    cloud.stack.calls.clear()
    assert cloud.run("up", "--stack", "prod", "--yes").exit_code == 0
    assert "preview" not in cloud.stack.operations() and "up" in cloud.stack.operations()


def test_detach_is_refused_on_cloud_stacks(cloud: Cloud) -> None:
    result = cloud.run("up", "--stack", "dev", "--detach")
    assert result.exit_code == 2 and "--detach is for --stack local" in result.stderr
    assert cloud.stack.operations() == []


# --- preflight ---------------------------------------------------------------------------------


def test_missing_aws_credentials_stop_up_and_preview_before_any_work(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for verb in ("up", "preview"):
        result = cloud.run(verb, "--stack", "dev")
        assert result.exit_code == 2, result.output
        assert "no AWS credentials found" in result.stderr and result.stderr.count("\n") == 1
    assert cloud.stack.operations() == []


def test_unknown_stack_lists_the_stacks_that_exist(cloud: Cloud) -> None:
    cloud.write_stack_file(BASE_CONFIG, name="staging")
    (cloud.project / "Pulumi.dev.yaml").unlink()
    result = cloud.run("preview", "--stack", "prod")
    assert result.exit_code == 2
    assert "unknown stack 'prod'" in result.stderr
    assert "stacks that exist: staging, local" in result.stderr
    assert cloud.stack.operations() == []


def test_bad_config_names_the_key_before_any_work(cloud: Cloud) -> None:
    cloud.write_stack_file({**BASE_CONFIG, "iotfactory:fleet": {"qos": 2}})
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 2
    assert "iotfactory:fleet" in result.stderr and "qos" in result.stderr
    assert "Pulumi.dev.yaml" in result.stderr
    assert cloud.stack.operations() == []


def test_stack_missing_from_backend_is_a_usage_error_for_read_verbs(cloud: Cloud) -> None:
    cloud.stack.exists = False
    for verb in ("outputs", "status"):
        result = cloud.run(verb, "--stack", "dev")
        assert result.exit_code == 2
        assert "does not exist" in result.stderr and "up --stack dev" in result.stderr


# --- preview, destroy, outputs, status ---------------------------------------------------------


def test_preview_runs_preview_only(cloud: Cloud) -> None:
    result = cloud.run("preview", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    assert "preview" in cloud.stack.operations() and "up" not in cloud.stack.operations()
    assert json_lines(result.output)[-1]["operation"] == "preview"


def test_destroy_refuses_without_confirmation(cloud: Cloud) -> None:
    result = cloud.run("destroy", "--stack", "dev")
    assert result.exit_code == 2
    assert "re-run with --yes" in result.stderr
    assert cloud.stack.operations() == []


def test_destroy_with_yes_destroys(cloud: Cloud) -> None:
    result = cloud.run("destroy", "--stack", "dev", "--yes")
    assert result.exit_code == 0, result.output
    assert cloud.stack.operations() == ["open", "destroy"]
    assert cloud.stack.opened_with[-1][2] is False  # never creates a stack just to destroy it
    assert "2 to delete" in result.output


def test_outputs_json_masks_secrets(cloud: Cloud) -> None:
    result = cloud.run("outputs", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    (record,) = json_lines(result.output)
    assert next(iter(record["outputs"])) == "grafana_url"
    assert record["outputs"]["grafana_admin_password"] == "[secret]"


def test_outputs_table_shows_the_mask_not_the_secret(cloud: Cloud) -> None:
    result = cloud.run("outputs", "--stack", "dev")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "grafanaAdminPassword" in line)
    assert "[secret]" in line and "hunter2" not in result.output


def test_status_reports_generation_rotation_and_simulators(cloud: Cloud) -> None:
    cloud.stack.config.update(
        {
            "iotfactory:simulatorCount": "3",
            "iotfactory:certGenerations": json.dumps(
                [{"name": "g1", "status": "ACTIVE"}, {"name": "g2", "status": "ACTIVE"}]
            ),
            "iotfactory:rotation": json.dumps({"from": "g1", "to": "g2", "step": "added"}),
        }
    )
    result = cloud.run("status", "--stack", "dev", "--json")
    assert result.exit_code == 0, result.output
    (report,) = json_lines(result.output)
    assert report["simulators"] == 3
    assert report["certificate_generation"] == "g2"
    assert report["rotation"] == {"from": "g1", "to": "g2", "step": "added"}
    assert "up" not in cloud.stack.operations()


# --- scale -------------------------------------------------------------------------------------


def test_scale_records_n_then_applies(cloud: Cloud) -> None:
    result = cloud.run("scale", "--stack", "dev", "--simulators", "7")
    assert result.exit_code == 0, result.output
    names = cloud.stack.operations()
    set_count = next(
        i
        for i, call in enumerate(cloud.stack.calls)
        if call.name == "set_config" and call.args["key"] == "iotfactory:simulatorCount"
    )
    assert cloud.stack.calls[set_count].args["value"] == 7
    assert set_count < names.index("up")
    assert cloud.stack.applied[-1][1]["iotfactory:simulatorCount"] == "7"
    assert "7 simulators publish 70 msg/s over 7 connections" in result.output


@pytest.mark.parametrize("count", ["-1", "51"])
def test_scale_outside_bounds_is_refused_before_any_work(cloud: Cloud, count: str) -> None:
    result = cloud.run("scale", "--stack", "dev", "--simulators", count)
    assert result.exit_code == 2
    assert f"--simulators {count} is outside this stack's bounds 0..50" in result.stderr
    assert "iotfactory:maxSimulators" in result.stderr
    assert cloud.stack.operations() == []


def big_site_fleet() -> dict[str, Any]:
    # 2 lines x 1,000 machines at 1 msg/s: 2,000 publishes/s per simulator.
    return {"lines_per_site": 2, "machines_per_line": {"cnc_mill": 1000}, "publish_interval_s": 1.0}


def test_scale_over_the_account_quota_is_refused_with_an_explanation(cloud: Cloud) -> None:
    cloud.write_stack_file({**BASE_CONFIG, "iotfactory:fleet": big_site_fleet()})
    result = cloud.run("scale", "--stack", "dev", "--simulators", "11")
    assert result.exit_code == 2
    message = result.stderr
    assert "22,000 msg/s" in message and "20,000 publishes/s" in message
    assert "throttle" in message and "at most 10 simulators" in message
    assert "iotfactory:iotPublishQuotaPerSecond" in message
    assert cloud.stack.operations() == []


def test_scale_near_the_quota_warns_and_proceeds(cloud: Cloud) -> None:
    cloud.write_stack_file({**BASE_CONFIG, "iotfactory:fleet": big_site_fleet()})
    result = cloud.run("scale", "--stack", "dev", "--simulators", "9", "--json")
    assert result.exit_code == 0, result.output
    plan = json_lines(result.output)[0]
    assert plan["verdict"] == "near-quota" and plan["publishes_per_second"] == 18_000
    # 2,000 msg/s per simulator at <= 80 msg/s per connection: 25 connections each.
    assert plan["connections"] == 9 * 25
    assert "up" in cloud.stack.operations()


def test_a_raised_quota_allows_the_scale(cloud: Cloud) -> None:
    cloud.write_stack_file(
        {**BASE_CONFIG, "iotfactory:fleet": big_site_fleet(), "iotfactory:iotPublishQuotaPerSecond": 50_000}
    )
    result = cloud.run("scale", "--stack", "dev", "--simulators", "11")
    assert result.exit_code == 0, result.output
    assert "44.0% of the account's 50,000 publishes/s" in result.output


def test_configured_bounds_apply(cloud: Cloud) -> None:
    cloud.write_stack_file({**BASE_CONFIG, "iotfactory:minSimulators": 1, "iotfactory:maxSimulators": 4})
    assert cloud.run("scale", "--stack", "dev", "--simulators", "0").exit_code == 2
    assert cloud.run("scale", "--stack", "dev", "--simulators", "5").exit_code == 2
    assert cloud.stack.operations() == []
    assert cloud.run("scale", "--stack", "dev", "--simulators", "4").exit_code == 0


# --- rotate-certs ------------------------------------------------------------------------------


def generations_per_update(stack: RecordingStack) -> list[tuple[list[dict[str, str]], dict[str, str] | None]]:
    """What each `up` applied: (certGenerations, rotation record)."""
    applied = []
    for operation, config in stack.applied:
        if operation == "up":
            record = config.get("iotfactory:rotation")
            applied.append(
                (json.loads(config["iotfactory:certGenerations"]), json.loads(record) if record else None)
            )
    return applied


def test_rotation_adds_then_deactivates_then_removes(cloud: Cloud) -> None:
    result = cloud.run("rotate-certs", "--stack", "dev")
    assert result.exit_code == 0, result.output
    assert generations_per_update(cloud.stack) == [
        (
            [{"name": "g1", "status": "ACTIVE"}, {"name": "g2", "status": "ACTIVE"}],
            {"from": "g1", "to": "g2", "step": "started"},
        ),
        (
            [{"name": "g1", "status": "INACTIVE"}, {"name": "g2", "status": "ACTIVE"}],
            {"from": "g1", "to": "g2", "step": "added"},
        ),
        ([{"name": "g2", "status": "ACTIVE"}], {"from": "g1", "to": "g2", "step": "deactivated"}),
    ]
    assert config_of(cloud.stack, "iotfactory:certGenerations") == [{"name": "g2", "status": "ACTIVE"}]
    assert "iotfactory:rotation" not in cloud.stack.config
    assert cloud.stack.operations()[-1] == "remove_config"
    assert "uses generation g2" in result.output

    # A second rotation starts from g2.
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 0
    assert config_of(cloud.stack, "iotfactory:certGenerations") == [{"name": "g3", "status": "ACTIVE"}]


@pytest.mark.parametrize(
    ("interrupted_update", "expected_step"),
    [(1, "started"), (2, "added"), (3, "deactivated")],
)
def test_rotation_resumes_after_an_interruption_at_each_step(
    cloud: Cloud, interrupted_update: int, expected_step: str
) -> None:
    cloud.stack.fail_next("up", *([None] * (interrupted_update - 1)), KeyboardInterrupt())
    result = cloud.run("rotate-certs", "--stack", "dev")
    assert result.exit_code == 130
    assert cloud.stack.operations()[-1] == "lock_holders" and "cancel" not in cloud.stack.operations()
    assert config_of(cloud.stack, "iotfactory:rotation") == {"from": "g1", "to": "g2", "step": expected_step}
    ups_before = len(generations_per_update(cloud.stack))

    result = cloud.run("rotate-certs", "--stack", "dev")
    assert result.exit_code == 0, result.output
    assert f"resuming rotation g1 -> g2 (step '{expected_step}')" in result.output
    resumed = generations_per_update(cloud.stack)[ups_before:]
    # The interrupted step is applied again, then the remaining ones, nothing twice more.
    assert len(resumed) == 3 - interrupted_update + 1
    assert resumed[0] == generations_per_update(cloud.stack)[interrupted_update - 1]
    assert config_of(cloud.stack, "iotfactory:certGenerations") == [{"name": "g2", "status": "ACTIVE"}]
    assert "iotfactory:rotation" not in cloud.stack.config


@pytest.mark.parametrize("interrupted_update", [1, 2])
def test_rollback_restores_the_old_generation(cloud: Cloud, interrupted_update: int) -> None:
    cloud.stack.fail_next("up", *([None] * (interrupted_update - 1)), KeyboardInterrupt())
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 130

    result = cloud.run("rotate-certs", "--stack", "dev", "--rollback")
    assert result.exit_code == 0, result.output
    rollback_applied, record = generations_per_update(cloud.stack)[-1]
    assert rollback_applied == [{"name": "g1", "status": "ACTIVE"}]
    assert record == {"from": "g1", "to": "g2", "step": "rolling-back"}
    assert config_of(cloud.stack, "iotfactory:certGenerations") == [{"name": "g1", "status": "ACTIVE"}]
    assert "iotfactory:rotation" not in cloud.stack.config
    assert "rolled back: stack 'dev' uses generation g1" in result.output


def test_interrupted_rollback_finishes_on_the_next_run(cloud: Cloud) -> None:
    cloud.stack.fail_next("up", None, KeyboardInterrupt(), KeyboardInterrupt())
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 130
    assert cloud.run("rotate-certs", "--stack", "dev", "--rollback").exit_code == 130
    assert config_of(cloud.stack, "iotfactory:rotation")["step"] == "rolling-back"
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 0
    assert config_of(cloud.stack, "iotfactory:certGenerations") == [{"name": "g1", "status": "ACTIVE"}]
    assert "iotfactory:rotation" not in cloud.stack.config


def test_rollback_after_the_old_generation_was_removed_is_refused(cloud: Cloud) -> None:
    cloud.stack.fail_next("up", None, None, KeyboardInterrupt())
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 130
    calls_before = len(cloud.stack.calls)
    result = cloud.run("rotate-certs", "--stack", "dev", "--rollback")
    assert result.exit_code == 2
    assert "cannot roll back: generation g1 was already removed" in result.stderr
    assert "up" not in cloud.stack.operations()[calls_before:]


def test_rollback_without_a_rotation_is_a_usage_error(cloud: Cloud) -> None:
    result = cloud.run("rotate-certs", "--stack", "dev", "--rollback")
    assert result.exit_code == 2 and "no certificate rotation in progress" in result.stderr
    assert "up" not in cloud.stack.operations()


def test_failed_rotation_step_keeps_the_record_for_a_resume(cloud: Cloud) -> None:
    cloud.stack.fail_next("up", None, UpdateFailedError("ECS deployment failed: circuit breaker"))
    result = cloud.run("rotate-certs", "--stack", "dev")
    assert result.exit_code == 1
    assert "circuit breaker" in result.stderr
    assert config_of(cloud.stack, "iotfactory:rotation") == {"from": "g1", "to": "g2", "step": "added"}


def test_up_mentions_a_rotation_in_progress(cloud: Cloud) -> None:
    cloud.stack.fail_next("up", KeyboardInterrupt())
    assert cloud.run("rotate-certs", "--stack", "dev").exit_code == 130
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 0
    assert "certificate rotation g1 -> g2 is at step 'started'" in result.output


def test_the_program_accepts_the_keys_only_the_cli_reads() -> None:
    """Contract with infra/settings.py: a stack file using the CLI's keys must still run the program."""
    from infra.settings import load_settings

    values = stack_context.program_view(
        {
            **BASE_CONFIG,
            "iotfactory:minSimulators": 1,
            "iotfactory:maxSimulators": 4,
            "iotfactory:iotPublishQuotaPerSecond": 50_000,
            "iotfactory:confirmUpdates": True,
            "iotfactory:rotation": {"from": "g1", "to": "g2", "step": "added"},
        }
    )
    assert set(stack_context.CLI_ONLY_KEYS) <= set(values)
    assert load_settings("dev", values).simulator_count == 2


def test_waiting_shows_the_engine_is_still_finishing(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that takes a while after the interrupt: the CLI keeps saying it waits, then reports."""
    from automation.updates import run_update
    from factory_core.verbs import QuietSink

    monkeypatch.setattr(updates, "STILL_WAITING_EVERY_S", 0.01)
    saw_heartbeat = threading.Event()
    steps: list[str] = []

    class Sink(QuietSink):
        def step(self, message: str, *, warning: bool = False) -> None:
            steps.append(message)
            if message.startswith("still waiting for Pulumi to stop"):
                saw_heartbeat.set()

    class SlowEngine(RecordingStack):
        def up(self, on_event: Any) -> Any:
            self.calls.append(Call("up"))
            self._interrupt.clear()
            signal.raise_signal(signal.SIGTERM)
            assert self._interrupt.wait(30), "the interrupt was not passed on"
            assert saw_heartbeat.wait(30), "the CLI never said it was still waiting"
            self.calls.append(Call("engine-exited"))
            raise UpdateFailedError("update canceled")

    stack = SlowEngine("dev")
    with pytest.raises(KeyboardInterrupt):
        run_update(stack, "up", Sink())
    assert stack.operations() == ["up", "interrupt_engine", "engine-exited", "lock_holders"]
    assert steps[0].startswith("interrupted: waiting") and steps[-1].startswith("Pulumi stopped and")


def test_a_second_interrupt_stops_waiting_and_warns_that_the_lock_may_stay() -> None:
    from automation.updates import run_update
    from factory_core.verbs import QuietSink

    release = threading.Event()
    steps: list[str] = []

    class Sink(QuietSink):
        def step(self, message: str, *, warning: bool = False) -> None:
            steps.append(message)

    class StuckEngine(RecordingStack):
        def up(self, on_event: Any) -> Any:
            self.calls.append(Call("up"))
            self._interrupt.clear()
            signal.raise_signal(signal.SIGINT)
            assert self._interrupt.wait(30)
            signal.raise_signal(signal.SIGINT)  # the user presses Ctrl-C again
            release.wait(30)
            raise UpdateFailedError("update canceled")

    stack = StuckEngine("dev")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_update(stack, "up", Sink())
    finally:
        release.set()
    assert "lock_holders" not in stack.operations()
    assert steps[-1].startswith("stopped waiting: Pulumi may still be running and holding the lock")


def test_pulumi_stack_passes_the_interrupt_to_its_engine_process() -> None:
    """The real adapter: SIGINT (Pulumi's "stop safely") to the child process running the CLI."""
    import subprocess

    from automation.stack_port import PulumiStack

    child = subprocess.Popen(["sleep", "60"])
    try:
        PulumiStack(None).interrupt_engine()  # type: ignore[arg-type]
        assert child.wait(timeout=10) == -signal.SIGINT
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
