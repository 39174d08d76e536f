"""The adapter over `pulumi.automation.Stack`: arguments it passes and errors it translates.

A duck-typed object stands in for the Automation API's Stack (the Pulumi CLI is not installed
here); the exceptions are the Automation API's own, built the way it builds them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pulumi.automation import CommandResult, ConfigValue, OutputValue
from pulumi.automation.errors import create_command_error

from automation.stack_port import (
    PulumiStack,
    StackBusyError,
    StackMissingError,
    UpdateFailedError,
    first_error_line,
)

LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end "
    "or delete the lock file with `pulumi cancel`."
)
FAILED = (
    "Updating (dev):\n"
    "    error: creating ECS Service (simulators): InvalidParameterException: bad task definition\n"
    "error: update failed\n"
)


class Summary:
    resource_changes: dict[str, int] = {"create": 2, "same": 1}


class FakeAutomationStack:
    name = "dev"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _call(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if self.error is not None:
            raise self.error

    def up(self, **kwargs: Any) -> Any:
        self._call("up", **kwargs)
        return type(
            "R", (), {"summary": Summary(), "outputs": {"grafanaUrl": OutputValue("http://x/", False)}}
        )()

    def preview(self, **kwargs: Any) -> Any:
        self._call("preview", **kwargs)
        return type("R", (), {"change_summary": {"update": 1}})()

    def set_all_config_json(self, config_json: str) -> None:
        self._call("set_all_config_json", document=json.loads(config_json))

    def get_all_config(self) -> dict[str, ConfigValue]:
        self._call("get_all_config")
        return {"iotfactory:simulatorCount": ConfigValue("2"), "iotfactory:fleet": ConfigValue('{"qos": 1}')}

    def cancel(self) -> None:
        self._call("cancel")

    def preview_refresh(self, **kwargs: Any) -> Any:
        self._call("preview_refresh", **kwargs)
        return type("R", (), {"change_summary": {"update": 1, "same": 40}})()

    def history(self, **kwargs: Any) -> list[Any]:
        self._call("history", **kwargs)
        summary = type("S", (), {"kind": "update", "result": "succeeded"})()
        summary.config = {"iotfactory:simulatorCount": ConfigValue("7")}
        return [summary]


def command_error(stderr: str) -> Exception:
    return create_command_error(CommandResult(stdout="", stderr=stderr, code=255))


def test_up_streams_events_without_colour_and_returns_plain_results() -> None:
    fake = FakeAutomationStack()
    events: list[Any] = []
    result = PulumiStack(fake).up(events.append)
    name, kwargs = fake.calls[0]
    assert name == "up" and kwargs["on_event"] == events.append and kwargs["color"] == "never"
    assert result.resource_changes == {"create": 2, "same": 1}
    assert result.outputs["grafanaUrl"].value == "http://x/" and not result.outputs["grafanaUrl"].secret


def test_structured_config_is_written_as_objects_not_strings() -> None:
    fake = FakeAutomationStack()
    port = PulumiStack(fake)
    port.set_config("iotfactory:certGenerations", [{"name": "g1", "status": "ACTIVE"}])
    port.set_all_config({"iotfactory:simulatorCount": 3, "iotfactory:production": False})
    first = fake.calls[0][1]["document"]["iotfactory:certGenerations"]
    assert first["objectValue"] == [{"name": "g1", "status": "ACTIVE"}]
    assert json.loads(first["value"]) == first["objectValue"] and first["secret"] is False
    second = fake.calls[1][1]["document"]
    assert second["iotfactory:simulatorCount"] == {"value": "3", "secret": False}
    assert second["iotfactory:production"] == {"value": "false", "secret": False}


def test_config_comes_back_as_the_automation_api_strings() -> None:
    assert PulumiStack(FakeAutomationStack()).get_all_config() == {
        "iotfactory:simulatorCount": "2",
        "iotfactory:fleet": '{"qos": 1}',
    }


@pytest.mark.parametrize(
    ("stderr", "translated", "message"),
    [
        (LOCKED, StackBusyError, "the stack is currently locked"),
        ("error: no stack named 'dev' found", StackMissingError, "no stack named 'dev' found"),
        (FAILED, UpdateFailedError, "creating ECS Service (simulators): InvalidParameterException"),
    ],
)
def test_automation_errors_become_port_errors_with_one_line(
    stderr: str, translated: type[Exception], message: str
) -> None:
    port = PulumiStack(FakeAutomationStack(error=command_error(stderr)))
    with pytest.raises(translated) as caught:
        port.up(lambda _event: None)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_port_cannot_cancel_a_running_update() -> None:
    """`pulumi cancel` deletes the lock of an update that may still run: nothing above the port calls it."""
    from automation.stack_port import StackPort

    assert not hasattr(PulumiStack, "cancel") and not hasattr(StackPort, "cancel")
    fake = FakeAutomationStack()
    port = PulumiStack(fake)
    port.preview_refresh(lambda _event: None)
    assert [name for name, _ in fake.calls] == ["preview_refresh"]
    assert "cancel" not in [name for name, _ in fake.calls]


def test_refresh_preview_and_history_in_plain_types() -> None:
    fake = FakeAutomationStack()
    port = PulumiStack(fake)
    result = port.preview_refresh(lambda _event: None)
    assert result.kind == "preview-refresh" and result.resource_changes == {"update": 1, "same": 40}
    assert fake.calls[0][1]["color"] == "never"
    (update,) = port.history(5)
    assert (update.kind, update.result) == ("update", "succeeded")
    assert update.config == {"iotfactory:simulatorCount": "7"}
    assert fake.calls[-1] == ("history", {"page_size": 5, "page": 1, "show_secrets": False})
    failing = PulumiStack(FakeAutomationStack(error=command_error("error: no update in progress")))
    with pytest.raises(UpdateFailedError, match="no update in progress"):
        failing.history(5)


def test_first_error_line_prefers_the_cause_over_the_generic_failure() -> None:
    assert first_error_line(FAILED).startswith("creating ECS Service")
    assert first_error_line("error: update failed") == "update failed"
    assert first_error_line("just a message\n\n") == "just a message"
    assert first_error_line("") == "the Pulumi command failed"


def test_open_uses_the_project_folder_backend_and_secrets_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    import pulumi.automation as auto

    from automation.stack_port import BackendSettings, open_pulumi_stack

    seen: list[tuple[str, str, dict[str, Any]]] = []

    def fake_open(kind: str) -> Any:
        def open_stack(stack_name: str, *, work_dir: str, opts: auto.LocalWorkspaceOptions) -> Any:
            seen.append((kind, stack_name, {"work_dir": work_dir, **vars(opts)}))
            return FakeAutomationStack()

        return open_stack

    monkeypatch.setattr(auto, "create_or_select_stack", fake_open("create_or_select"))
    monkeypatch.setattr(auto, "select_stack", fake_open("select"))
    backend = BackendSettings("s3://state?region=eu-west-1", "awskms://alias/k?region=eu-west-1")
    open_pulumi_stack("dev", Path("/repo"), backend, True)
    open_pulumi_stack("dev", Path("/repo"), BackendSettings(), False)
    (kind, name, options), (second_kind, _, second_options) = seen
    assert (kind, name, second_kind) == ("create_or_select", "dev", "select")
    assert options["work_dir"] == "/repo"
    assert options["env_vars"] == {"PULUMI_BACKEND_URL": "s3://state?region=eu-west-1"}
    assert options["secrets_provider"] == "awskms://alias/k?region=eu-west-1"
    # Without a recorded backend the user's own `pulumi login` applies.
    assert second_options["env_vars"] is None and second_options["secrets_provider"] is None
