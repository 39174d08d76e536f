"""Readiness and restart policy on real (tiny) processes; the state file and the supervisor's lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory_core.errors import OperationFailed, UsageError
from local_stack.paths import StatePaths
from local_stack.ports import free_port
from local_stack.processes import ManagedProcess
from local_stack.readiness import FileAppears, LogLineAfter, PortOpen, Stage, wait_ready, wait_until
from local_stack.services import RESTART_LIMIT, Kind, RestartPolicy, Service, ServiceSet
from local_stack.state_file import StateWriter, SupervisorLock, is_running, read_state
from local_stack.status_document import StackOutputs, StateDocument
from local_stack.status_view import PipelineSnapshot

# Exits 0 on SIGTERM, as the real services do when they stop cleanly; says so in a file once it does.
DRAINS_ON_SIGTERM = "trap 'kill $!; exit 0' TERM; touch {ready}; sleep 60 & wait"


def shell(name: str, script: str, directory: Path) -> ManagedProcess:
    return ManagedProcess(name, ["sh", "-c", script], directory / f"{name}.log", stop_timeout_s=5)


@pytest.mark.timeout(30)
def test_a_service_that_never_opens_its_port_fails_naming_it_and_its_log(tmp_path: Path) -> None:
    process = shell("broker", "echo listening soon; exec sleep 60", tmp_path)
    port = free_port()
    process.start()
    try:
        with pytest.raises(OperationFailed) as failed:
            wait_ready("broker", process, (Stage(PortOpen(port), 0.5),))
        message = str(failed.value)
        assert message.startswith(f"broker did not open port {port} within 0.5 s")
        assert "listening soon" in message and str(process.log_path) in message
        assert process.running()  # left for the caller's cleanup to stop gracefully
    finally:
        process.stop()


@pytest.mark.timeout(30)
def test_each_stage_waits_in_turn_and_names_the_one_missed(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    process = shell("rule-runner", f"touch {ready_file}; exec sleep 60", tmp_path)
    process.start()
    try:
        readiness = (
            Stage(FileAppears(ready_file, "subscribe"), 10.0),
            Stage(FileAppears(tmp_path / "never", "connect"), 0.3),
        )
        with pytest.raises(OperationFailed, match=r"^rule-runner did not connect within 0\.3 s"):
            wait_ready("rule-runner", process, readiness)
    finally:
        process.stop()


@pytest.mark.parametrize(("code", "error"), [(2, UsageError), (1, OperationFailed)])
def test_a_service_that_exits_while_starting_fails_at_once_with_its_last_words(
    tmp_path: Path, code: int, error: type[Exception]
) -> None:
    process = shell("simulator-00", f"echo 'bad fleet file' >&2; exit {code}", tmp_path)
    process.start()
    with pytest.raises(error) as failed:
        # A deadline far away: the exit, not the deadline, ends the wait.
        wait_ready("simulator-00", process, (Stage(PortOpen(free_port()), 600.0),))
    assert str(failed.value) == (
        f"simulator-00 exited during start (exit {code}): bad fleet file; see {process.log_path}"
    )


def test_wait_until_checks_once_more_at_the_deadline_and_polls_in_between() -> None:
    calls: list[int] = []
    assert not wait_until(lambda: bool(calls.append(1)), 0.0)
    assert calls == [1]
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), 10.0, poll_s=0.001)


def test_a_log_line_counts_only_when_written_after_the_probe_was_made(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("Reloading config.\n")
    reloaded = LogLineAfter.from_now(log, "Reloading config.", "reload")
    assert not reloaded()
    with log.open("a") as stream:
        stream.write("2026-01-01T00:00:00: Reloading config.\n")
    assert reloaded()
    assert not LogLineAfter.from_now(tmp_path / "missing.log", "x", "reload")()


# -- restart policy ------------------------------------------------------------------------------


def test_restart_policy_counts_only_restarts_within_its_window() -> None:
    policy = RestartPolicy(limit=2, window_s=10.0)
    assert policy.allows([], now=100.0)
    assert policy.allows([95.0], now=100.0)
    assert not policy.allows([95.0, 99.0], now=100.0)
    assert policy.allows([85.0, 99.0], now=100.0)  # the first one left the window


@pytest.mark.timeout(60)
def test_a_crashing_service_is_restarted_up_to_its_limit_then_shown_failed(tmp_path: Path) -> None:
    events: list[str] = []
    relaunched: list[str] = []
    services = ServiceSet(events.append, relaunched.append)
    crashing = services.add(
        Service(
            "prometheus",
            Kind.PROMETHEUS,
            None,
            lambda: shell("prometheus", "echo 'bad config'; exit 3", tmp_path),
            readiness=(),
        )
    )
    crashing.launch()

    def settled() -> bool:
        services.restart_exited()
        return crashing.gave_up

    assert wait_until(settled, 30.0)
    assert crashing.restarts == RESTART_LIMIT and len(relaunched) == RESTART_LIMIT
    assert events.count("prometheus exited unexpectedly (code 3); restarting it") == RESTART_LIMIT
    assert events[-1].startswith(f"prometheus exited (code 3) {RESTART_LIMIT} times within 60 s")
    assert "bad config" in events[-1]
    assert crashing.report(StatePaths(tmp_path)).state == "failed (exit 3)"


@pytest.mark.timeout(30)
def test_a_stopped_service_is_not_restarted(tmp_path: Path) -> None:
    events: list[str] = []
    services = ServiceSet(events.append, lambda _name: None)
    script = DRAINS_ON_SIGTERM.format(ready=tmp_path / "ready")
    readiness = (Stage(FileAppears(tmp_path / "ready", "trap SIGTERM"), 10.0),)
    service = services.add(
        Service("grafana", Kind.GRAFANA, None, lambda: shell("grafana", script, tmp_path), readiness)
    )
    service.launch()
    service.wait_ready()
    services.stop([service])
    services.restart_exited()
    assert service.restarts == 0 and events == [] and service.report(StatePaths(tmp_path)).state == "stopped"


# -- lock and state file -------------------------------------------------------------------------


def test_one_supervisor_per_state_folder(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    first, second = SupervisorLock(paths), SupervisorLock(paths)
    assert not is_running(paths)
    first.acquire()
    assert is_running(paths)
    with pytest.raises(UsageError, match="already running"):
        second.acquire()
    first.release()
    assert not is_running(paths)
    second.acquire()
    second.release()


def test_state_file_is_replaced_whole_and_throttled(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    assert read_state(paths) is None
    paths.state_file.write_text("{half a docu")
    assert read_state(paths) is None

    written: list[int] = []

    def document() -> StateDocument:
        written.append(1)
        return StateDocument.model_validate(_state_json())

    writer = StateWriter(paths, interval_s=3600.0)
    writer.write(document)
    writer.write(document)  # within the interval: skipped
    writer.write(document, force=True)
    assert len(written) == 2
    state = read_state(paths)
    assert state is not None and state.as_dict() == _state_json()
    assert "exit_code" not in json.loads(paths.state_file.read_text())
    assert not paths.state_file.with_suffix(".tmp").exists()


def _state_json() -> dict:
    outputs = StackOutputs(
        broker_url=None,
        broker_endpoint="127.0.0.1",
        broker_port=None,
        ca_certificate="/ca.pem",
        prometheus_url=None,
        grafana_url=None,
        grafana_password_file=None,
        grafana_skipped=None,
        archive=None,
        logs_dir="/logs",
        state_dir="/state",
        config_file="/c.yaml",
        simulator_count=0,
        certificate_generation=None,
        metrics_ports={},
    )
    return {
        "stack": "local",
        "running": True,
        "phase": "starting",
        "supervisor_pid": 1,
        "started_at": 1.0,
        "uptime_s": 0.0,
        "first_archived_after_s": None,
        "simulators": {"desired": 0, "up": 0},
        "generation": None,
        "rotation": None,
        "pipeline": PipelineSnapshot().as_dict(),
        "services": [],
        "events": [],
        "error": None,
        "broker_refusals": {"oversize_disconnects": 0, "tls_refusals": 0, "sessions_cut": 0, "takeovers": 0},
        "outputs": outputs.as_dict(),
        "control_socket": "/state/control.sock",
        "pids": [],
    }
