"""The CLI verbs for `--stack local`: up, destroy, outputs, status, scale, rotate-certs, verify, logs, stop.

`cli.py` calls these by name (the cloud stacks have the same functions in `automation/operations.py`).
Each prints with rich and returns an exit code; bad input raises `UsageError` (exit 2), a failed
operation `OperationFailed` (exit 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from factory_core.errors import OperationFailed, UsageError
from local_stack import grafana, status_view
from local_stack import stack_config as config_module
from local_stack.paths import (
    BROKER,
    GRAFANA,
    PROJECT_DIR,
    PROMETHEUS,
    RULE_RUNNER,
    SUPERVISOR,
    StatePaths,
    config_path,
    simulator_index,
    simulator_service,
)
from local_stack.ports import port_in_use
from local_stack.processes import pid_alive, process_command_line, require_binary, wait_gone
from local_stack.rotation import DevicePki, StoppedStack, rotate
from local_stack.stack_config import StackConfig
from local_stack.supervisor import (
    HOST,
    LOCK_FILE,
    Supervisor,
    already_running_message,
    is_running,
    port_in_use_message,
    read_state,
    request,
)

UP_TIMEOUT_S = 90.0  # detached `up`: until the first message is archived
STOP_TIMEOUT_S = 150.0  # simulators drain (≤ 35 s), the archive catches up (≤ 60 s), the rest
SERVICE_ORDER = (SUPERVISOR, BROKER, RULE_RUNNER, PROMETHEUS, GRAFANA)


def _console() -> Console:
    return Console(highlight=False)


def _say(console: Console, message: str) -> None:
    # Messages carry paths and log tails: never let rich read them as markup.
    console.print(Text(message))


def _emit(document: Any) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def _load() -> tuple[StackConfig, StatePaths]:
    return config_module.load(config_path()), StatePaths.from_environment()


def _check_local(stack: str) -> None:
    if stack != "local":  # cli.py dispatches only `local` here; guard direct callers
        raise UsageError(f"local_stack.operations handles stack 'local', not {stack!r}")


# -- up ------------------------------------------------------------------------------------------


def preflight(stack: StackConfig, paths: StatePaths) -> None:
    """Everything that would make `up` fail at once, checked before anything starts."""
    if is_running(paths):
        raise UsageError(already_running_message(paths))
    require_binary("mosquitto")
    require_binary("prometheus")
    local = stack.local
    fixed = [
        (BROKER, local.broker_port, "brokerPort"),
        (PROMETHEUS, local.prometheus_port, "prometheusPort"),
        (RULE_RUNNER, local.metrics_port_base, "metricsPortBase"),
    ]
    if local.metrics_port_base:
        fixed += [
            (simulator_service(i), local.metrics_port_base + 1 + i, "metricsPortBase")
            for i in range(stack.simulator_count)
        ]
    if grafana.find_install() is not None:
        fixed.append((GRAFANA, local.grafana_port, "grafanaPort"))
    for service, port, key in fixed:
        if port and port_in_use(port, HOST):
            raise UsageError(port_in_use_message(port, service, key, stack.path))


def up(stack: str, *, detach: bool, yes: bool, json_output: bool) -> int:
    _check_local(stack)
    config, paths = _load()
    preflight(config, paths)
    if detach:
        return _up_detached(config, paths, json_output)
    return _up_foreground(config, paths, json_output)


def _print_where(console: Console, outputs: dict[str, Any], json_output: bool, extra: dict[str, Any]) -> None:
    if json_output:
        _emit({"stack": "local", "running": True, **extra, "outputs": outputs})
        return
    console.print(status_view.where_table(outputs))


def _up_foreground(config: StackConfig, paths: StatePaths, json_output: bool) -> int:
    console = _console()
    say = (lambda message: _say(console, message)) if not json_output else (lambda _message: None)
    supervisor = Supervisor(config, paths, say)
    supervisor.acquire_lock()
    began = time.monotonic()
    say(f"starting the local stack ({config.simulator_count} simulators) in {paths.root}")
    supervisor.start()  # Ctrl-C here raises KeyboardInterrupt; start() cleans up after itself
    _print_where(console, supervisor.outputs(), json_output, {"supervisorPid": os.getpid()})
    if not json_output:
        say(
            f"up in {time.monotonic() - began:.1f} s; Ctrl-C stops everything cleanly "
            "(simulators drain, the archive catches up, the broker saves)"
        )

    interrupts: list[int] = []

    def on_signal(number: int, _frame: FrameType | None) -> None:
        interrupts.append(number)
        if len(interrupts) == 1:
            supervisor.request_stop()
        elif number == signal.SIGINT:
            say("second Ctrl-C: killing every process without draining")
            supervisor.kill_everything()

    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        if json_output or not console.is_terminal:
            _serve_with_periodic_lines(supervisor, console, json_output)
        else:
            with Live(
                get_renderable=lambda: status_view.status_renderable(supervisor.status()),
                console=console,
                refresh_per_second=2,
                transient=True,
            ):
                supervisor.serve()
        if interrupts:
            say("stopping the local stack")
        supervisor.shutdown()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if json_output:
        _emit({"stack": "local", "running": False, "status": supervisor.status()})
    return 0


def _serve_with_periodic_lines(supervisor: Supervisor, console: Console, json_output: bool) -> None:
    """Without a terminal (logs, CI): one status line every 10 s instead of a live view."""
    done = threading.Event()

    def report() -> None:
        while not done.wait(10.0):
            status = supervisor.status()
            if json_output:
                _emit({"event": "status", "simulators": status["simulators"], "pipeline": status["pipeline"]})
            else:
                console.print(status_view.pipeline_line(status["pipeline"], status["simulators"]))

    thread = threading.Thread(target=report, name="status-lines", daemon=True)
    thread.start()
    try:
        supervisor.serve()
    finally:
        done.set()


def _up_detached(config: StackConfig, paths: StatePaths, json_output: bool) -> int:
    console = _console()
    began = time.monotonic()
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
        # so closing this terminal does not stop it (destroy, or SIGTERM to its pid, does).
        pid = os.posix_spawn(
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
    if not json_output:
        _say(
            console,
            f"starting the local stack in the background (supervisor pid {pid}); "
            "waiting for the first archived message",
        )
    status = _wait_until_flowing(paths, pid, began)
    seconds = time.monotonic() - began
    outputs = status.get("outputs") or request(paths, "outputs")
    if json_output:
        _emit(
            {
                "stack": "local",
                "running": True,
                "supervisorPid": pid,
                "firstArchivedAfterS": round(seconds, 2),
                "outputs": outputs,
            }
        )
        return 0
    console.print(status_view.where_table(outputs))
    _say(console, f"pipeline up: first message archived {seconds:.1f} s after `up`; supervisor pid {pid}")
    _say(
        console,
        "next: `python cli.py status --stack local`, `logs --stack local -f`, "
        "`verify --stack local`; stop and delete it with `destroy --stack local`",
    )
    return 0


def _exit_code(pid: int) -> int | None:
    """The supervisor's exit code once it has exited (it is this process's child), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if pid_alive(pid) else 1
    return os.waitstatus_to_exitcode(status) if done else None


def _wait_until_flowing(paths: StatePaths, pid: int, began: float) -> dict[str, Any]:
    deadline = began + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        code = _exit_code(pid)
        if code is not None:
            state = read_state(paths) or {}
            message = state.get("error") or _last_error_line(paths.log(SUPERVISOR)) or f"exit {code}"
            message = str(message).removeprefix("error: ")
            raise (
                UsageError(message)
                if code == 2
                else OperationFailed(
                    f"the local stack failed to start: {message}"
                    + ("" if "; see " in message else f"; see {paths.log(SUPERVISOR)}")
                )
            )
        state = read_state(paths) or {}
        if state.get("phase") == "running":
            try:
                status = request(paths, "status", timeout_s=5.0)
            except OperationFailed:
                status = None
            if status and status["pipeline"]["archived_total"] > 0:
                status["outputs"] = state.get("outputs")
                return dict(status)
        time.sleep(0.1)
    with contextlib.suppress(OperationFailed):
        request(paths, "stop", timeout_s=5.0)
    raise OperationFailed(
        f"the stack started but nothing reached the archive within {UP_TIMEOUT_S:g} s; it is being stopped. "
        f"See the logs: python cli.py logs --stack local (in {paths.logs_dir})"
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


# -- stop / destroy ------------------------------------------------------------------------------


def _stop_supervisor(paths: StatePaths, console: Console | None) -> int:
    """Ask the supervisor to stop and wait until it is gone; returns its pid (0 if none ran)."""
    state = read_state(paths) or {}
    pid = int(state.get("supervisorPid") or 0)
    if not is_running(paths):
        return 0
    if console is not None:
        _say(console, f"stopping the local stack (supervisor pid {pid}): simulators drain first")
    try:
        request(paths, "stop", timeout_s=10.0)
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
    """Processes the state file lists that still run (only possible after a SIGKILLed supervisor)."""
    state = read_state(paths) or {}
    killed = 0
    for pid in state.get("pids") or []:
        command = " ".join(process_command_line(int(pid)))
        # Only what this stack started: its state folder or its own programs are on the command line.
        if pid_alive(int(pid)) and (
            str(paths.root) in command or "local_stack" in command or "simulator" in command
        ):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
            killed += 1
    return killed


def stop(stack: str, *, json_output: bool) -> int:
    """Stop a running local stack and keep its state (archive, logs, certificates)."""
    _check_local(stack)
    paths = StatePaths.from_environment()
    console = _console()
    pid = _stop_supervisor(paths, None if json_output else console)
    _kill_leftovers(paths)
    if json_output:
        _emit({"stack": "local", "stopped": bool(pid), "stateDir": str(paths.root)})
    elif pid:
        _say(console, f"stopped; state kept in {paths.root}")
    else:
        _say(console, "the local stack is not running")
    return 0


def destroy(stack: str, *, json_output: bool) -> int:
    _check_local(stack)
    paths = StatePaths.from_environment()
    console = _console()
    if not paths.root.exists():
        if json_output:
            _emit({"stack": "local", "destroyed": False, "stateDir": str(paths.root)})
        else:
            _say(console, f"nothing to destroy: {paths.root} does not exist")
        return 0
    if not paths.exists():
        raise UsageError(
            f"refusing to delete {paths.root}: it has no {paths.marker.name} marker, so it is not a local "
            "stack's state folder; check IOTFACTORY_STATE_DIR"
        )
    pid = _stop_supervisor(paths, None if json_output else console)
    killed = _kill_leftovers(paths)
    socket_path = paths.control_socket
    shutil.rmtree(paths.root)
    socket_path.unlink(missing_ok=True)
    if json_output:
        _emit(
            {
                "stack": "local",
                "destroyed": True,
                "stateDir": str(paths.root),
                "stoppedSupervisor": pid or None,
                "killedLeftovers": killed,
            }
        )
    else:
        _say(
            console,
            f"destroyed: deleted {paths.root} (archive, certificates, logs); "
            f"the config in {config_path()} is kept",
        )
    return 0


# -- outputs / status ----------------------------------------------------------------------------


def outputs(stack: str, *, json_output: bool) -> int:
    _check_local(stack)
    paths = StatePaths.from_environment()
    running = is_running(paths)
    values: dict[str, Any] | None = None
    if running:
        with contextlib.suppress(OperationFailed):
            values = request(paths, "outputs", timeout_s=5.0)
    if values is None:
        values = (read_state(paths) or {}).get("outputs")
    if values is None:
        raise UsageError("the local stack has not been started yet; run `python cli.py up --stack local`")
    if json_output:
        _emit({"stack": "local", "running": running, "outputs": values})
        return 0
    console = _console()
    console.print(status_view.where_table(values))
    if not running:
        _say(console, "(not running: these are the addresses of its last run)")
    return 0


def status(stack: str, *, json_output: bool) -> int:
    _check_local(stack)
    paths = StatePaths.from_environment()
    console = _console()
    running = is_running(paths)
    current: dict[str, Any] | None = None
    if running:
        with contextlib.suppress(OperationFailed):
            current = request(paths, "status", timeout_s=5.0)
    if current is None:
        current = read_state(paths)
        if current is not None:
            current["running"] = running
    if current is None:
        if json_output:
            _emit({"stack": "local", "running": False, "phase": "absent"})
        else:
            _say(console, "the local stack has not been started; run `python cli.py up --stack local`")
        return 0
    if json_output:
        _emit(current)
        return 0
    if running:
        uptime = int(current.get("uptimeS") or 0)
        _say(
            console,
            f"local stack: {current.get('phase')} (supervisor pid {current.get('supervisorPid')}, "
            f"up {uptime // 60} min {uptime % 60} s, certificates {current.get('generation')})",
        )
        console.print(status_view.status_renderable(current))
    else:
        phase = current.get("phase")
        error = f": {current['error']}" if current.get("error") else ""
        _say(console, f"local stack: not running (last run {phase}{error}); state in {paths.root}")
    return 0


# -- scale / rotate ------------------------------------------------------------------------------


def scale(stack: str, simulators: int, *, json_output: bool) -> int:
    _check_local(stack)
    config, paths = _load()
    config_module.check_simulator_count(simulators, "--simulators", "choose a count in that range")
    console = _console()
    progress = (
        (lambda message: _emit({"event": "scale", "message": message}))
        if json_output
        else (lambda message: _say(console, message))
    )
    if is_running(paths):
        result = request(paths, "scale", progress, simulators=simulators)
        if json_output:
            _emit({"stack": "local", "running": True, **result})
        else:
            _say(console, f"scaled from {result['before']} to {result['simulators']} simulators")
        return 0
    changed = config_module.record_simulator_count(config.path, simulators)
    if json_output:
        _emit(
            {
                "stack": "local",
                "running": False,
                "simulators": simulators,
                "configFile": str(config.path),
                "changed": changed,
            }
        )
    else:
        _say(
            console,
            f"the local stack is not running; recorded iotfactory:simulatorCount: {simulators} in "
            f"{config.path} for the next `up`",
        )
    return 0


@contextlib.contextmanager
def _exclusive(paths: StatePaths) -> Iterator[None]:
    """Hold the supervisor's lock while changing a stopped stack, so no `up` starts meanwhile."""
    with (paths.root / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(already_running_message(paths)) from None
        yield


def rotate_certs(stack: str, *, rollback: bool, json_output: bool) -> int:
    _check_local(stack)
    config, paths = _load()
    console = _console()

    def progress(message: str) -> None:
        if json_output:
            _emit({"event": "rotation", "message": message})
        else:
            _say(console, f"rotate-certs: {message}")

    if is_running(paths):
        result = request(paths, "rotate", progress, rollback=rollback)
    else:
        if not paths.pki_file.exists():
            raise UsageError(
                "the local stack has no device certificates yet; run `python cli.py up --stack local`"
            )
        with _exclusive(paths):
            pki = DevicePki.open(paths)
            result = rotate(pki, StoppedStack(config.simulator_count), progress, rollback=rollback).as_dict()
        progress("the stack is not running: the next `up` uses the new certificates")
    generation = result["from"] if result["rolledBack"] else result["to"]
    done = "rolled back" if result["rolledBack"] else "rotated"
    if json_output:
        _emit({"event": "rotation", "step": "done", "generation": generation, **result})
    else:
        _say(console, f"certificates {done}: stack 'local' uses generation {generation}")
    return 0


# -- verify --------------------------------------------------------------------------------------


def open_stack_archive(config: StackConfig, paths: StatePaths) -> Any:
    from local_stack.archive import LocalArchive, S3Archive

    folder = config.archive_folder(paths.root)
    if folder is not None:
        if not folder.is_dir():
            raise UsageError(f"no archive at {folder} yet; run `python cli.py up --stack local` first")
        return LocalArchive(folder)
    s3 = config.local.archive.s3
    assert s3 is not None
    os.environ.setdefault("AWS_DEFAULT_REGION", s3.region)
    return S3Archive(s3.bucket, endpoint_url=s3.endpoint)


def verify(stack: str, *, json_output: bool) -> int:
    _check_local(stack)
    from local_stack.verify import render_report, verify_archive

    config, paths = _load()
    report = verify_archive(open_stack_archive(config, paths))
    if json_output:
        sys.stdout.buffer.write(report.to_json_bytes() + b"\n")
        sys.stdout.flush()
    else:
        console = _console()
        render_report(report, console)
        if is_running(paths):
            _say(
                console, "the stack is running: the newest messages may still be on their way to the archive"
            )
    return 0 if report.ok else 1


# -- logs ----------------------------------------------------------------------------------------


def _log_services(paths: StatePaths) -> list[str]:
    found = [path.stem for path in paths.logs_dir.glob("*.log")] if paths.logs_dir.is_dir() else []

    def order(name: str) -> tuple[int, int, str]:
        index = simulator_index(name)
        if index is not None:
            return (len(SERVICE_ORDER), index, name)
        return (SERVICE_ORDER.index(name) if name in SERVICE_ORDER else len(SERVICE_ORDER) + 1, 0, name)

    return sorted(found, key=order)


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        # Read back far enough for `lines` lines of ordinary length, not the whole file.
        handle.seek(max(0, size - max(lines, 1) * 400 - 4096))
        text = handle.read().decode(errors="replace")
    return (text.splitlines()[-lines:] if lines > 0 else []), size


def logs(stack: str, *, service: str | None, follow: bool, lines: int) -> int:
    _check_local(stack)
    paths = StatePaths.from_environment()
    known = _log_services(paths)
    if not known:
        raise UsageError(
            f"no logs in {paths.logs_dir} yet; start the stack with `python cli.py up --stack local`"
        )
    if service is not None and service not in known:
        raise UsageError(f"no service {service!r}; services with logs: {', '.join(known)}")
    chosen = [service] if service else known
    console = _console()
    prefix = len(chosen) > 1
    width = max(len(name) for name in chosen)
    offsets: dict[str, int] = {}
    for name in chosen:
        tail, offsets[name] = _tail(paths.log(name), lines)
        if prefix and not follow:
            console.print(Text(f"==> {name} <==", style="bold"))
        for line in tail:
            _print_log_line(console, name, line, width if prefix and follow else 0)
    if not follow:
        return 0
    try:
        while True:
            for name in chosen:
                offsets[name] = _follow_once(
                    console, paths.log(name), name, offsets[name], width if prefix else 0
                )
            if service is None:
                for name in _log_services(paths):
                    if name not in offsets:  # a simulator added by `scale`
                        chosen.append(name)
                        offsets[name] = 0
                        width = max(width, len(name))
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def _print_log_line(console: Console, name: str, line: str, width: int) -> None:
    if width:
        console.print(Text.assemble((f"{name:<{width}} | ", "dim"), line), soft_wrap=True)
    else:
        console.print(Text(line), soft_wrap=True)


def _follow_once(console: Console, path: Path, name: str, offset: int, width: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return offset
    if size < offset:  # truncated or replaced
        offset = 0
    if size == offset:
        return offset
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    complete, _, _rest = chunk.rpartition(b"\n")
    if not complete and b"\n" not in chunk:
        return offset
    for line in complete.decode(errors="replace").split("\n"):
        _print_log_line(console, name, line, width)
    return offset + len(complete) + 1
