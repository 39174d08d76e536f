"""Starting and stopping a local stack: `up` (foreground or detached), `stop` and `destroy`.

The supervisor (`local_stack.supervisor`) runs the services; this module starts it (in this
process, or detached in its own session), waits for it, and stops it again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from factory_core.errors import OperationFailed, UsageError
from factory_core.local_results import (
    LocalDestroyResult,
    LocalStatus,
    LocalStopResult,
    LocalUpResult,
    describe_deleted,
)
from factory_core.progress_events import LocalStarted
from factory_core.verbs import ProgressSink, require_answerable, require_confirmation
from local_stack import alertmanager, grafana, grafana_container
from local_stack import stack_config as config_module
from local_stack.control import ControlClient
from local_stack.paths import (
    ALERTMANAGER,
    BROKER,
    GRAFANA,
    PROJECT_DIR,
    PROMETHEUS,
    RULE_RUNNER,
    SUPERVISOR,
    StatePaths,
    config_path,
    simulator_service,
)
from local_stack.ports import HOST, port_in_use
from local_stack.processes import pid_alive, process_command_line, require_binary, wait_gone
from local_stack.services import port_in_use_message
from local_stack.stack_config import StackConfig
from local_stack.state_file import already_running_message, is_running, read_state
from local_stack.status_document import STACK, StackOutputs
from local_stack.supervisor import Supervisor

UP_TIMEOUT_S = 90.0  # detached `up`: until the first message is archived
STOP_TIMEOUT_S = 150.0  # simulators drain (≤ 35 s), the archive catches up (≤ 60 s), the rest


def preflight(stack: StackConfig, paths: StatePaths) -> None:
    """Everything that would make `up` fail at once, checked before anything starts."""
    if is_running(paths):
        raise UsageError(already_running_message(paths))
    require_binary("mosquitto")
    require_binary("prometheus")
    require_binary(alertmanager.BINARY)
    alertmanager.channels(stack.local.alerting, paths.alertmanager_dir)  # the SMTP password file is usable
    local = stack.local
    fixed = [
        (BROKER, local.broker_port, "brokerPort"),
        (PROMETHEUS, local.prometheus_port, "prometheusPort"),
        (ALERTMANAGER, local.alertmanager_port, "alertmanagerPort"),
        (RULE_RUNNER, local.metrics_port_base, "metricsPortBase"),
    ]
    if local.metrics_port_base:
        fixed += [
            (simulator_service(i), local.metrics_port_base + 1 + i, "metricsPortBase")
            for i in range(stack.simulator_count)
        ]
    if grafana.find_runtime() is not None:
        fixed.append((GRAFANA, local.grafana_port, "grafanaPort"))
    for service, port, key in fixed:
        if port and port_in_use(port, HOST):
            raise UsageError(port_in_use_message(port, service, key, stack.path))


# -- up in the foreground --------------------------------------------------------------------------


def up_foreground(config: StackConfig, paths: StatePaths, sink: ProgressSink) -> LocalUpResult:
    """Run the supervisor in this process until Ctrl-C (or SIGTERM/SIGHUP), then stop cleanly."""
    supervisor = Supervisor(config, paths, sink.step)
    supervisor.acquire_lock()
    began = time.monotonic()
    sink.step(f"starting the local stack ({config.simulator_count} simulators) in {paths.root}")
    interrupts: list[int] = []
    starting = [True]

    def on_signal(number: int, _frame: FrameType | None) -> None:
        interrupts.append(number)
        if starting[0]:
            raise KeyboardInterrupt  # start() stops what it started, then re-raises
        if len(interrupts) == 1:
            supervisor.request_stop()
        elif number == signal.SIGINT:
            sink.step("second Ctrl-C: killing every process without draining", warning=True)
            supervisor.kill_everything()

    def sample() -> LocalStatus:
        return supervisor.status_report().to_result(running=True, state_dir=str(paths.root))

    # Installed before start(): a signal is recorded even when the KeyboardInterrupt it raises is
    # swallowed (Python drops one raised inside an at-fork handler, as a child is being forked).
    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        supervisor.start()
        starting[0] = False
        outputs = supervisor.outputs_report().to_result()
        sink.event(LocalStarted(os.getpid(), time.monotonic() - began, outputs))
        if interrupts:  # it came while starting and its exception was lost: stop now, as asked
            supervisor.request_stop()
        sink.watch(supervisor.serve, sample)
        if interrupts:
            sink.step("stopping the local stack")
        supervisor.shutdown()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    final = supervisor.status_report().to_result(running=False, state_dir=str(paths.root))
    return LocalUpResult(
        stack=STACK,
        detached=False,
        running=False,
        supervisor_pid=os.getpid(),
        first_archived_after_s=final.first_archived_after_s,
        outputs=None,
        final_status=final,
    )


# -- up --detach -----------------------------------------------------------------------------------


def up_detached(config: StackConfig, paths: StatePaths, sink: ProgressSink) -> LocalUpResult:
    """Start the supervisor in its own session and return once the first message is archived."""
    began = time.monotonic()
    pid = _spawn_supervisor(config, paths)
    sink.step(
        f"starting the local stack in the background (supervisor pid {pid}); "
        "waiting for the first archived message"
    )
    outputs = _wait_until_flowing(paths, pid, began)
    return LocalUpResult(
        stack=STACK,
        detached=True,
        running=True,
        supervisor_pid=pid,
        first_archived_after_s=time.monotonic() - began,
        outputs=outputs.to_result(),
    )


def _spawn_supervisor(config: StackConfig, paths: StatePaths) -> int:
    paths.create()
    log_path = paths.log(SUPERVISOR)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    paths.state_file.unlink(missing_ok=True)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_DIR), environment.get("PYTHONPATH")) if p
    )
    environment["PYTHONUNBUFFERED"] = "1"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # posix_spawn, not Popen: the supervisor outlives this process, and there is no Popen
        # object left behind to complain about a child still running. setsid: its own session,
        # so closing this terminal does not stop it (stop, destroy, or SIGTERM to its pid, does).
        return os.posix_spawn(
            sys.executable,
            [
                sys.executable,
                "-m",
                "local_stack.supervisor",
                "--state-dir",
                str(paths.root),
                "--config",
                str(config.path),
            ],
            environment,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)


def _exit_code(pid: int) -> int | None:
    """The supervisor's exit code once it has exited (it is this process's child), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if pid_alive(pid) else 1
    return os.waitstatus_to_exitcode(status) if done else None


def _wait_until_flowing(paths: StatePaths, pid: int, began: float) -> StackOutputs:
    """The stack's outputs once its first message is archived; its own error if it exits first."""
    deadline = began + UP_TIMEOUT_S
    client = ControlClient(paths, timeout_s=5.0)
    while time.monotonic() < deadline:
        code = _exit_code(pid)
        if code is not None:
            raise _start_failure(paths, code)
        state = read_state(paths)
        if state is not None and state.phase == "running":
            try:
                status = client.status()
            except OperationFailed:
                status = None
            if status is not None and status.pipeline.archived_total > 0:
                return client.outputs()
        time.sleep(0.1)
    with contextlib.suppress(OperationFailed):
        client.stop()
    raise OperationFailed(
        f"the stack started but nothing reached the archive within {UP_TIMEOUT_S:g} s; it is being stopped. "
        f"See the logs: python cli.py logs --stack local (in {paths.logs_dir})"
    )


def _start_failure(paths: StatePaths, code: int) -> Exception:
    state = read_state(paths)
    message = (state and state.error) or _last_error_line(paths.log(SUPERVISOR)) or f"exit {code}"
    message = str(message).removeprefix("error: ")
    if code == 2:
        return UsageError(message)
    return OperationFailed(
        f"the local stack failed to start: {message}"
        + ("" if "; see " in message else f"; see {paths.log(SUPERVISOR)}")
    )


def _last_error_line(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    return lines[-1] if lines else None


# -- stop / destroy --------------------------------------------------------------------------------


def _stop_supervisor(paths: StatePaths, sink: ProgressSink) -> int:
    """Ask the supervisor to stop and wait until it is gone; returns its pid (0 if none ran)."""
    state = read_state(paths)
    pid = state.supervisor_pid if state else 0
    if not is_running(paths):
        return 0
    sink.step(f"stopping the local stack (supervisor pid {pid}): simulators drain first")
    try:
        ControlClient(paths, timeout_s=10.0).stop()
    except OperationFailed:
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and is_running(paths):
        time.sleep(0.1)
    if is_running(paths) and pid and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone([pid], 5.0)
    if pid:
        wait_gone([pid], 10.0)  # the lock goes a moment before the process
        _exit_code(pid)  # reap it if `up --detach` ran in this same process (tests, scripts)
    return pid


def _kill_leftovers(paths: StatePaths) -> int:
    """Processes the state file lists that still run (only possible after a SIGKILLed supervisor),
    and Grafana's container if it ran in one and is still there."""
    state = read_state(paths)
    killed = 0
    in_container = state is not None and state.outputs.grafana_container
    if in_container and grafana_container.remove_leftover(paths.root):
        killed += 1
    for pid in state.pids if state else ():
        command = " ".join(process_command_line(int(pid)))
        # Only what this stack started: its state folder or its own programs are on the command line.
        if pid_alive(int(pid)) and (
            str(paths.root) in command or "local_stack" in command or "simulator" in command
        ):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
            killed += 1
    return killed


def stop(paths: StatePaths, sink: ProgressSink) -> LocalStopResult:
    pid = _stop_supervisor(paths, sink)
    _kill_leftovers(paths)
    return LocalStopResult(
        stack=STACK, stopped=bool(pid), supervisor_pid=pid or None, state_dir=str(paths.root)
    )


@dataclass(frozen=True)
class _StateContents:
    """What deleting the state folder deletes, in numbers and words (for the prompt and the result)."""

    archive: str | None
    archive_deleted: bool
    archive_objects: int | None
    archive_bytes: int | None
    deleted: tuple[str, ...]

    def describe(self) -> str:
        return describe_deleted(
            self.archive, self.archive_deleted, self.archive_objects, self.archive_bytes, self.deleted
        )


def _state_contents(paths: StatePaths) -> _StateContents:
    try:
        config: StackConfig | None = config_module.load(config_path())
    except UsageError:
        config = None  # a broken stack file must not keep anyone from deleting the state folder
    folder = config.archive_folder(paths.root) if config else paths.default_archive_dir
    others = ("certificates and keys", "logs", "broker sessions", "Prometheus data", "simulator checkpoints")
    if folder is None:
        s3 = config.local.archive.s3 if config else None
        where = f"s3://{s3.bucket} at {s3.endpoint}" if s3 else None
        return _StateContents(where, False, None, None, others)
    inside = folder.resolve().is_relative_to(paths.root.resolve())
    files = [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")]
    size = sum(path.stat().st_size for path in files)
    deleted = ("archive", *others) if inside else others
    return _StateContents(str(folder), inside, len(files), size, deleted)


def destroy(paths: StatePaths, sink: ProgressSink, *, yes: bool) -> LocalDestroyResult:
    config_file = str(config_path())
    if not paths.root.exists():
        return LocalDestroyResult(
            stack=STACK, destroyed=False, state_dir=str(paths.root), config_file=config_file
        )
    if not paths.exists():
        raise UsageError(
            f"refusing to delete {paths.root}: it has no {paths.marker.name} marker, so it is not a local "
            "stack's state folder; check IOTFACTORY_STATE_DIR"
        )
    contents = _state_contents(paths)
    what = f"destroying stack 'local' (deletes {contents.describe()})"
    if require_answerable(sink, yes=yes, what=what):
        require_confirmation(
            sink,
            f"Destroy stack 'local': stop it and delete {paths.root}: {contents.describe()}? "
            f"(`stop --stack local` keeps them.)",
            what="destroying stack 'local'",
        )
    pid = _stop_supervisor(paths, sink)
    killed = _kill_leftovers(paths)
    socket_path = paths.control_socket
    shutil.rmtree(paths.root)
    socket_path.unlink(missing_ok=True)
    return LocalDestroyResult(
        stack=STACK,
        destroyed=True,
        state_dir=str(paths.root),
        config_file=config_file,
        stopped_supervisor=pid or None,
        killed_leftovers=killed,
        archive=contents.archive,
        archive_deleted=contents.archive_deleted,
        archive_objects=contents.archive_objects,
        archive_bytes=contents.archive_bytes,
        deleted=contents.deleted,
    )
