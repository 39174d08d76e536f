"""The boundary between the cloud verbs and Pulumi's Automation API: a small protocol and its adapter.

Everything above this module (the verbs, rotation, scaling, progress) talks to a `StackPort`.
`PulumiStack` adapts a real `pulumi.automation.Stack`; `automation.recording_stack.RecordingStack`
is an in-memory stand-in that records every call, so the CLI is tested at exactly this boundary.
Pulumi is imported only inside `open_pulumi_stack` and the adapter's methods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent, Stack

ConfigInput = str | int | float | bool | list[Any] | dict[str, Any]
EventSink = Callable[["EngineEvent"], None]


@dataclass(frozen=True)
class OutputValue:
    value: Any
    secret: bool = False


@dataclass(frozen=True)
class UpdateResult:
    """What an operation changed: resource counts per operation ("create": 3, "same": 40)."""

    kind: str
    resource_changes: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, OutputValue] = field(default_factory=dict)


@dataclass(frozen=True)
class LastUpdate:
    kind: str
    result: str
    started: str
    ended: str | None
    resource_changes: dict[str, int]


@dataclass(frozen=True)
class DeployedConfig:
    """The config one past update applied (from the stack's history), as the Automation API gives it."""

    kind: str  # update, refresh, destroy, ...
    result: str  # succeeded, failed, in-progress
    config: dict[str, str]


@dataclass(frozen=True)
class StackLock:
    """A lock the backend holds for the stack: where it is, and who took it when."""

    where: str
    holder: str


@dataclass(frozen=True)
class BackendSettings:
    """Where the stack's state lives and how its secrets are encrypted (written by `bootstrap`)."""

    backend_url: str | None = None
    secrets_provider: str | None = None


class StackBusyError(Exception):
    """Another update holds the stack's lock."""


class StackMissingError(Exception):
    """The stack does not exist in the backend yet."""


class UpdateFailedError(Exception):
    """The Pulumi command failed; the message is its first error line."""


class StackPort(Protocol):
    """The operations the cloud verbs need from a Pulumi stack, in plain Python types.

    Config values come back as the Automation API returns them: strings, with structured values
    (lists, objects) as JSON text.
    """

    @property
    def name(self) -> str: ...

    def up(self, on_event: EventSink) -> UpdateResult: ...

    def preview(self, on_event: EventSink) -> UpdateResult: ...

    def destroy(self, on_event: EventSink) -> UpdateResult: ...

    def refresh(self, on_event: EventSink) -> UpdateResult: ...

    def preview_refresh(self, on_event: EventSink) -> UpdateResult:
        """What a refresh would change (the cloud against the state), writing nothing."""
        ...

    def outputs(self) -> dict[str, OutputValue]: ...

    def get_config(self, key: str) -> str | None: ...

    def get_all_config(self) -> dict[str, str]: ...

    def set_config(self, key: str, value: ConfigInput, *, secret: bool = False) -> None: ...

    def set_all_config(self, values: Mapping[str, ConfigInput]) -> None: ...

    def remove_config(self, key: str) -> None: ...

    def interrupt_engine(self) -> None:
        """Pass an interrupt to the running engine once (it then stops at a safe point and exits).

        There is deliberately no `cancel`: `pulumi cancel` deletes the lock of an update that may
        still be running, and the next command then starts a second update on the same state.
        """
        ...

    def lock_holders(self) -> list[StackLock] | None:
        """The locks the backend holds for this stack; None when this backend's locks cannot be read."""
        ...

    def last_update(self) -> LastUpdate | None: ...

    def history(self, limit: int) -> list[DeployedConfig]:
        """The newest `limit` updates, newest first, with the config each applied."""
        ...


StackOpener = Callable[[str, Path, BackendSettings, bool], StackPort]

_ERROR_LINE = re.compile(r"\berror:\s*(?P<message>.+)$", re.IGNORECASE)


def first_error_line(text: str) -> str:
    """The most useful single line of a Pulumi failure (its last `error:` line, else its last line)."""
    errors = [match["message"].strip() for line in text.splitlines() if (match := _ERROR_LINE.search(line))]
    # Pulumi ends with a generic "update failed" after the real cause; prefer the cause.
    specific = [message for message in errors if message.lower() not in {"update failed", "preview failed"}]
    if specific:
        return specific[-1]
    if errors:
        return errors[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "the Pulumi command failed"


@contextmanager
def _translated_errors() -> Iterator[None]:
    from pulumi import automation as auto

    try:
        yield
    except auto.ConcurrentUpdateError as exc:
        raise StackBusyError(first_error_line(str(exc))) from None
    except auto.StackNotFoundError as exc:
        raise StackMissingError(first_error_line(str(exc))) from None
    except auto.CommandError as exc:
        raise UpdateFailedError(first_error_line(str(exc))) from None


def _config_json(key: str, value: ConfigInput, secret: bool) -> dict[str, Any]:
    if isinstance(value, list | dict):
        return {key: {"value": json.dumps(value), "objectValue": value, "secret": secret}}
    return {key: {"value": _scalar_text(value), "secret": secret}}


def _scalar_text(value: ConfigInput) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PulumiStack:
    """`StackPort` over a real `pulumi.automation.Stack` (needs the Pulumi CLI on PATH)."""

    def __init__(self, stack: Stack, backend: BackendSettings | None = None) -> None:
        self._stack = stack
        self._backend = backend or BackendSettings()

    @property
    def name(self) -> str:
        return self._stack.name

    def up(self, on_event: EventSink) -> UpdateResult:
        with _translated_errors():
            result = self._stack.up(on_event=on_event, color="never", suppress_progress=True)
        return UpdateResult("up", _changes(result.summary.resource_changes), _outputs(result.outputs))

    def preview(self, on_event: EventSink) -> UpdateResult:
        with _translated_errors():
            result = self._stack.preview(on_event=on_event, color="never", suppress_progress=True)
        return UpdateResult("preview", _changes(result.change_summary))

    def destroy(self, on_event: EventSink) -> UpdateResult:
        with _translated_errors():
            result = self._stack.destroy(on_event=on_event, color="never", suppress_progress=True)
        return UpdateResult("destroy", _changes(result.summary.resource_changes))

    def refresh(self, on_event: EventSink) -> UpdateResult:
        with _translated_errors():
            result = self._stack.refresh(on_event=on_event, color="never", suppress_progress=True)
        return UpdateResult("refresh", _changes(result.summary.resource_changes))

    def preview_refresh(self, on_event: EventSink) -> UpdateResult:
        with _translated_errors():
            result = self._stack.preview_refresh(on_event=on_event, color="never", suppress_progress=True)
        return UpdateResult("preview-refresh", _changes(result.change_summary))

    def outputs(self) -> dict[str, OutputValue]:
        with _translated_errors():
            return _outputs(self._stack.outputs())

    def get_config(self, key: str) -> str | None:
        return self.get_all_config().get(key)

    def get_all_config(self) -> dict[str, str]:
        with _translated_errors():
            return {key: value.value for key, value in self._stack.get_all_config().items()}

    def set_config(self, key: str, value: ConfigInput, *, secret: bool = False) -> None:
        # `config set-all --json` takes structured values natively (objectValue), so lists and
        # objects stay YAML structures in Pulumi.<stack>.yaml instead of JSON strings.
        with _translated_errors():
            self._stack.set_all_config_json(json.dumps(_config_json(key, value, secret)))

    def set_all_config(self, values: Mapping[str, ConfigInput]) -> None:
        document: dict[str, Any] = {}
        for key, value in values.items():
            document.update(_config_json(key, value, False))
        with _translated_errors():
            self._stack.set_all_config_json(json.dumps(document))

    def remove_config(self, key: str) -> None:
        with _translated_errors():
            self._stack.remove_config(key)

    def interrupt_engine(self) -> None:
        import signal

        import psutil

        # The Automation API runs the `pulumi` CLI as this process's child; SIGINT is its "stop safely".
        for child in psutil.Process().children():
            # psutil checks the child is still the process it listed, so a reused pid is never signalled.
            try:
                child.send_signal(signal.SIGINT)
            except psutil.Error:
                continue

    def lock_holders(self) -> list[StackLock] | None:
        from automation.state_lock import read_locks

        return read_locks(self._backend.backend_url, self._stack.workspace.project_settings().name, self.name)

    def history(self, limit: int) -> list[DeployedConfig]:
        with _translated_errors():
            summaries = self._stack.history(page_size=limit, page=1, show_secrets=False)
        return [
            DeployedConfig(
                kind=summary.kind,
                result=summary.result,
                config={key: str(value.value) for key, value in (summary.config or {}).items()},
            )
            for summary in summaries
        ]

    def last_update(self) -> LastUpdate | None:
        with _translated_errors():
            summary = self._stack.info(show_secrets=False)
        if summary is None:
            return None
        return LastUpdate(
            kind=summary.kind,
            result=summary.result,
            started=str(summary.start_time),
            ended=str(summary.end_time) if summary.end_time else None,
            resource_changes=_changes(summary.resource_changes or {}),
        )


def _changes(op_map: Mapping[Any, int] | None) -> dict[str, int]:
    return {getattr(op, "value", str(op)): count for op, count in (op_map or {}).items()}


def _outputs(output_map: Mapping[str, Any]) -> dict[str, OutputValue]:
    return {key: OutputValue(item.value, bool(item.secret)) for key, item in output_map.items()}


def open_pulumi_stack(
    stack_name: str, project_dir: Path, backend: BackendSettings, create: bool
) -> StackPort:
    """Select (or create) the stack in a LocalWorkspace on the project folder, like `pulumi` in a shell."""
    from pulumi import automation as auto

    env_vars = {"PULUMI_BACKEND_URL": backend.backend_url} if backend.backend_url else None
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project_dir), env_vars=env_vars, secrets_provider=backend.secrets_provider
    )
    with _translated_errors():
        if create:
            stack = auto.create_or_select_stack(stack_name, work_dir=str(project_dir), opts=options)
        else:
            stack = auto.select_stack(stack_name, work_dir=str(project_dir), opts=options)
    return PulumiStack(stack, backend)
