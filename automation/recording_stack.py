"""An in-memory `StackPort` that records every call: the stand-in the CLI tests drive.

It keeps config the way the Automation API returns it (strings; lists and objects as JSON text),
emits real `pulumi.automation.EngineEvent` objects built from the engine's JSON shape, and can be
told to fail or be interrupted at the Nth call of an operation. An interrupt behaves like the real
engine: the process gets the signal while a resource is in flight; once the CLI passes the
interrupt on, the engine finishes that resource, reports it, and exits with "update canceled".
Nothing here talks to Pulumi's CLI or to AWS.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automation.stack_port import (
    BackendSettings,
    ConfigInput,
    DeployedConfig,
    EventSink,
    LastUpdate,
    OutputValue,
    StackLock,
    StackPort,
    UpdateFailedError,
    UpdateResult,
)

OPERATIONS = ("up", "preview", "destroy", "refresh", "preview_refresh")
# How long the fake engine waits for the CLI to pass an interrupt on before it calls the test failed.
INTERRUPT_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Interrupted:
    """`fail_next` outcome: this signal reaches the process while the first resource is in flight.

    `engine_gets_it`: the engine receives the signal itself too, as a terminal's Ctrl-C reaches the
    whole foreground process group; it then stops without being told (and must not be told twice).
    """

    signum: int = signal.SIGINT
    engine_gets_it: bool = False


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptedResource:
    """A resource the fake engine reports: op is what the update does to it."""

    type: str
    name: str
    op: str = "create"
    error: str | None = None  # set: the engine reports this resource as failed with this message
    diffs: tuple[str, ...] = ()  # properties that differ (drift, updates)


def engine_events(stack: str, resources: Iterable[ScriptedResource]) -> list[Any]:
    """The event sequence the engine emits for these resources: pre, outputs/failure, summary."""
    from pulumi.automation import EngineEvent

    raw: list[dict[str, Any]] = [{"preludeEvent": {"config": {}}}]
    changes: dict[str, int] = {}
    for resource in resources:
        urn = f"urn:pulumi:{stack}::iotfactory::{resource.type}::{resource.name}"
        meta = {
            "op": resource.op,
            "urn": urn,
            "type": resource.type,
            "provider": "",
            "diffs": list(resource.diffs),
        }
        raw.append({"resourcePreEvent": {"metadata": meta}})
        if resource.error is None:
            raw.append({"resOutputsEvent": {"metadata": meta}})
            changes[resource.op] = changes.get(resource.op, 0) + 1
        else:
            raw.append(
                {"diagnosticEvent": {"severity": "error", "urn": urn, "message": resource.error + "\n"}}
            )
            raw.append({"resOpFailedEvent": {"metadata": meta, "status": 1, "steps": 1}})
    raw.append({"summaryEvent": {"resourceChanges": changes, "durationSeconds": 1, "maybeCorrupt": False}})
    raw.append({"cancelEvent": {}})
    return [EngineEvent.from_json({"sequence": i, "timestamp": 0, **item}) for i, item in enumerate(raw)]


def _stored(value: ConfigInput) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RecordingStack:
    """`StackPort` stand-in: records calls, keeps config, replays scripted engine events."""

    def __init__(
        self,
        name: str = "dev",
        *,
        config: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        resources: Iterable[ScriptedResource] = (ScriptedResource("aws:ecs/service:Service", "simulators"),),
        exists: bool = True,
    ) -> None:
        self._name = name
        self.config: dict[str, str] = {key: _stored(value) for key, value in (config or {}).items()}
        self._outputs = {
            key: value if isinstance(value, OutputValue) else OutputValue(value)
            for key, value in (outputs or {}).items()
        }
        self.resources = list(resources)
        self.exists = exists
        self.calls: list[Call] = []
        # Config as it was when each update ran: what that update applied.
        self.applied: list[tuple[str, dict[str, str]]] = []
        self._faults: dict[str, deque[BaseException | None]] = {}
        self.opened_with: list[tuple[Path, BackendSettings, bool]] = []
        self.updates_running = 0
        # What `preview_refresh` finds: resources whose cloud state differs from the state file.
        self.refresh_resources: list[ScriptedResource] = []
        # The backend's locks after an update (None: a backend whose locks cannot be read).
        self.locks: list[StackLock] | None = []
        # Finished updates, oldest first: (kind, result, config applied).
        self.updates: list[tuple[str, str, dict[str, str]]] = []
        self._interrupt = threading.Event()

    # --- test controls -------------------------------------------------------------------------

    def fail_next(self, operation: str, *outcomes: BaseException | None) -> None:
        """Queue outcomes for the next calls of `operation`: an exception to raise, or None (succeed)."""
        self._faults.setdefault(operation, deque()).extend(outcomes)

    def set_outputs(self, outputs: Mapping[str, Any]) -> None:
        """What the deployed stack reports (the outputs of its last update)."""
        self._outputs = {
            key: value if isinstance(value, OutputValue) else OutputValue(value)
            for key, value in outputs.items()
        }

    def opener(self) -> Callable[[str, Path, BackendSettings, bool], StackPort]:
        """A stack opener (as `open_pulumi_stack`) that hands out this stand-in."""
        from automation.stack_port import StackMissingError

        def open_stack(stack: str, project_dir: Path, backend: BackendSettings, create: bool) -> StackPort:
            self.calls.append(Call("open", {"stack": stack, "create": create}))
            self.opened_with.append((project_dir, backend, create))
            if not self.exists and not create:
                raise StackMissingError(f"no stack named '{stack}' found")
            self.exists = True
            self._name = stack
            return self

        return open_stack

    def operations(self) -> list[str]:
        return [call.name for call in self.calls]

    # --- StackPort -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    def _interrupted_run(
        self, interrupt: Interrupted, on_event: EventSink, resources: list[ScriptedResource]
    ) -> None:
        """The signal arrives with the first resource in flight; the engine finishes it once told to."""
        first = resources[:1]
        events = engine_events(self._name, first)
        for event in events[:2]:  # prelude, the first resource started
            on_event(event)
        self._interrupt.clear()
        if interrupt.engine_gets_it:
            self._interrupt.set()
        self.calls.append(Call("signal", {"signum": interrupt.signum}))
        os.kill(os.getpid(), interrupt.signum)
        if not self._interrupt.wait(INTERRUPT_DEADLINE_S):
            raise AssertionError("the CLI never passed the interrupt on to the engine")
        for event in events[2:]:  # the in-flight resource completes, then the summary
            on_event(event)
        self.calls.append(Call("engine-exited"))
        raise UpdateFailedError("update canceled")

    def _run(self, operation: str, on_event: EventSink, resources: list[ScriptedResource]) -> UpdateResult:
        self.calls.append(Call(operation))
        self.applied.append((operation, dict(self.config)))
        fault = self._faults.get(operation)
        outcome = fault.popleft() if fault else None
        events = engine_events(self._name, resources)
        self.updates_running += 1
        result = "failed"
        try:
            if isinstance(outcome, KeyboardInterrupt | Interrupted):
                interrupt = outcome if isinstance(outcome, Interrupted) else Interrupted()
                self._interrupted_run(interrupt, on_event, resources)
            for event in events:
                on_event(event)
            if outcome is not None:
                raise outcome
            failed = [resource.error for resource in resources if resource.error]
            if failed:
                raise UpdateFailedError(failed[0])
            result = "succeeded"
        finally:
            self.updates_running -= 1
            if operation in ("up", "destroy", "refresh"):
                self.updates.append(("update" if operation == "up" else operation, result, dict(self.config)))
        changes: dict[str, int] = {}
        for resource in resources:
            changes[resource.op] = changes.get(resource.op, 0) + 1
        outputs = dict(self._outputs) if operation == "up" else {}
        return UpdateResult(operation, changes, outputs)

    def up(self, on_event: EventSink) -> UpdateResult:
        return self._run("up", on_event, self.resources)

    def preview(self, on_event: EventSink) -> UpdateResult:
        return self._run("preview", on_event, self.resources)

    def destroy(self, on_event: EventSink) -> UpdateResult:
        deleted = [ScriptedResource(r.type, r.name, "delete") for r in self.resources]
        return self._run("destroy", on_event, deleted)

    def refresh(self, on_event: EventSink) -> UpdateResult:
        return self._run(
            "refresh", on_event, [ScriptedResource(r.type, r.name, "same") for r in self.resources]
        )

    def preview_refresh(self, on_event: EventSink) -> UpdateResult:
        unchanged = [ScriptedResource(r.type, r.name, "same") for r in self.resources]
        drifted = {(r.type, r.name) for r in self.refresh_resources}
        scripted = [r for r in unchanged if (r.type, r.name) not in drifted] + self.refresh_resources
        return self._run("preview_refresh", on_event, scripted)

    def outputs(self) -> dict[str, OutputValue]:
        self.calls.append(Call("outputs"))
        return dict(self._outputs)

    def set_output(self, key: str, value: OutputValue) -> None:
        """What the last update exported (tests: a stack that was deployed before)."""
        self._outputs[key] = value

    def get_config(self, key: str) -> str | None:
        self.calls.append(Call("get_config", {"key": key}))
        return self.config.get(key)

    def get_all_config(self) -> dict[str, str]:
        self.calls.append(Call("get_all_config"))
        return dict(self.config)

    def set_config(self, key: str, value: ConfigInput, *, secret: bool = False) -> None:
        self.calls.append(Call("set_config", {"key": key, "value": value, "secret": secret}))
        self.config[key] = _stored(value)

    def set_all_config(self, values: Mapping[str, ConfigInput]) -> None:
        self.calls.append(Call("set_all_config", {"values": dict(values)}))
        for key, value in values.items():
            self.config[key] = _stored(value)

    def remove_config(self, key: str) -> None:
        self.calls.append(Call("remove_config", {"key": key}))
        self.config.pop(key, None)

    def cancel(self) -> None:
        """Not part of `StackPort`: recorded so tests can show that nothing calls it."""
        self.calls.append(Call("cancel"))

    def interrupt_engine(self) -> None:
        self.calls.append(Call("interrupt_engine"))
        self._interrupt.set()

    def lock_holders(self) -> list[StackLock] | None:
        self.calls.append(Call("lock_holders"))
        return None if self.locks is None else list(self.locks)

    def history(self, limit: int) -> list[DeployedConfig]:
        self.calls.append(Call("history", {"limit": limit}))
        newest_first = list(reversed(self.updates))[:limit]
        return [DeployedConfig(kind, result, dict(config)) for kind, result, config in newest_first]

    def last_update(self) -> LastUpdate | None:
        self.calls.append(Call("last_update"))
        updates = [call for call in self.calls if call.name in OPERATIONS and call.name != "preview"]
        if not updates:
            return None
        return LastUpdate(updates[-1].name, "succeeded", "2024-01-01T00:00:00", "2024-01-01T00:01:00", {})
