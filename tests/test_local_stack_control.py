"""The supervisor's control protocol over a real Unix socket: typed round trips, bad requests, hang-ups.

A stand-in supervisor implements `ControlHandler`; a thread plays the supervisor's main thread and
runs the queued jobs with the real `perform`, as `Supervisor.serve` does.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support_local_stack import write_local_stack_file

from factory_core.errors import OperationFailed, UsageError
from local_stack import stack_config
from local_stack.control import (
    ControlClient,
    ControlServer,
    ErrorReply,
    Job,
    ObserverGrant,
    ObserverRequest,
    ObserverReturned,
    ObserverReturnRequest,
    OutputsRequest,
    ProgressReply,
    RestartRequest,
    ResultReply,
    RotateRequest,
    ScaleRequest,
    ScaleResult,
    StatusRequest,
    StopRequest,
    check_socket_folder,
    decode_reply,
    decode_request,
    encode,
    perform,
    request,
)
from local_stack.paths import StatePaths
from local_stack.readiness import wait_until
from local_stack.rotation import RotationResult
from local_stack.status_document import SimulatorCounts, StackOutputs, StatusReport
from local_stack.status_view import PipelineSnapshot
from local_stack.supervisor import Supervisor


class StandIn:
    """Answers like a supervisor; `scale` can be held halfway until the test lets it go on."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.stopping = threading.Event()
        self.hold = threading.Event()
        self.release = threading.Event()
        self.finished: list[int] = []
        self.notes: list[str] = []

    @property
    def stop_requested(self) -> bool:
        return self.stopping.is_set()

    def request_stop(self) -> None:
        self.stopping.set()

    def status_report(self) -> StatusReport:
        return StatusReport(
            running=True,
            phase="running",
            supervisor_pid=os.getpid(),
            started_at=1.0,
            uptime_s=2.0,
            first_archived_after_s=0.5,
            simulators=SimulatorCounts(desired=2, up=2),
            generation="g1",
            rotation=None,
            pipeline=PipelineSnapshot(archived_total=7.0),
            services=[],
            events=["12:00:00 pipeline up"],
            error=None,
        )

    def outputs_report(self) -> StackOutputs:
        return StackOutputs(
            broker_url="mqtts://127.0.0.1:8883",
            broker_endpoint="127.0.0.1",
            broker_port=8883,
            ca_certificate="/ca.pem",
            prometheus_url=None,
            grafana_url=None,
            grafana_password_file=None,
            grafana_skipped="skipped",
            archive="/archive",
            logs_dir="/logs",
            state_dir="/state",
            config_file="/Pulumi.local.yaml",
            simulator_count=2,
            certificate_generation="g1",
            metrics_ports={"rule-runner": 9000},
        )

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def scale(self, simulators: int, progress) -> ScaleResult:
        progress(f"starting {simulators - 2} simulator(s)")
        if self.hold.is_set():
            assert self.release.wait(10)
        progress("prometheus: scraping")
        self.finished.append(simulators)
        return ScaleResult(simulators=simulators, before=2, config_file="/Pulumi.local.yaml")

    def rotate(self, progress, *, rollback: bool, stop_after: str | None) -> RotationResult:
        if stop_after == "bug":
            raise KeyError("a bug")
        return RotationResult("g1", "g2", rollback, stop_after is None, ("add",))

    def restart(self, service: str, progress):
        raise UsageError(f"no service {service!r}; services: broker")

    @property
    def observer_identities(self) -> StandIn:
        return self

    def lend_observer(self) -> ObserverGrant:
        return ObserverGrant(
            identity="observer-0123abcd", cert="/o.pem", key="/o.key", ca="/ca.pem", host="127.0.0.1", port=1
        )

    def return_observer(self, name: str) -> ObserverReturned:
        return ObserverReturned(identity=name)

    def note(self, message: str) -> None:
        self.notes.append(message)


def run_jobs(handler: StandIn, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            job = handler.jobs.get(timeout=0.05)
        except queue.Empty:
            continue
        perform(job, handler)


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A state folder short enough for the socket to live in it (not in the shared /tmp fallback)."""
    root = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Served:
    paths: StatePaths
    handler: StandIn
    server: ControlServer


@pytest.fixture
def served(short_root: Path) -> Iterator[Served]:
    paths = StatePaths(short_root)
    paths.create()
    assert paths.control_socket.parent == short_root
    handler = StandIn()
    server = ControlServer(paths.control_socket, handler)
    stop = threading.Event()
    main_thread = threading.Thread(target=run_jobs, args=(handler, stop), daemon=True)
    main_thread.start()
    try:
        yield Served(paths, handler, server)
    finally:
        handler.release.set()
        stop.set()
        main_thread.join(5)
        server.close()


def raw_exchange(paths: StatePaths, line: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(paths.control_socket))
        connection.sendall(line)
        with connection.makefile("rb") as stream:
            return [json.loads(reply) for reply in stream]


# -- the wire ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        StatusRequest(),
        OutputsRequest(),
        StopRequest(),
        ScaleRequest(simulators=4),
        RotateRequest(rollback=True, stop_after="add"),
        RestartRequest(service="broker"),
        ObserverRequest(),
        ObserverReturnRequest(identity="observer-0123abcd"),
    ],
)
def test_every_request_survives_the_wire(message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == message


@pytest.mark.parametrize(
    "reply",
    [
        ProgressReply(message="draining"),
        ResultReply(result={"simulators": 3}),
        ErrorReply(error="no", code=2),
    ],
)
def test_every_reply_survives_the_wire(reply) -> None:
    assert decode_reply(encode(reply)) == reply


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"not json\n", "one JSON object per line"),
        (b"[1, 2]\n", "one JSON object per line"),
        (b"\xff\xfe\x00\n", "one JSON object per line"),
        (b"{}\n", "needs an `op`"),
        (b'{"op": "dance"}\n', "unknown request 'dance'"),
        (b'{"op": "scale"}\n', "bad scale request: simulators"),
        (b'{"op": "scale", "simulators": "many"}\n', "bad scale request: simulators"),
        (b'{"op": "status", "verbose": true}\n', "bad status request: verbose"),
    ],
)
def test_a_malformed_request_gets_an_error_reply_and_the_server_goes_on(
    served: Served, line: bytes, fragment: str
) -> None:
    replies = raw_exchange(served.paths, line)
    assert len(replies) == 1 and replies[0]["kind"] == "error" and replies[0]["code"] == 2
    assert fragment in replies[0]["error"]
    assert ControlClient(served.paths).status().simulators.up == 2


# -- the typed client ----------------------------------------------------------------------------


def test_typed_round_trip_of_each_command(served: Served) -> None:
    client = ControlClient(served.paths, timeout_s=10)
    status = client.status()
    assert status.supervisor_pid == os.getpid() and status.pipeline.archived_total == 7.0
    assert client.outputs().metrics_ports == {"rule-runner": 9000}

    lines: list[str] = []
    scaled = client.scale(4, lines.append)
    assert scaled == ScaleResult(simulators=4, before=2, config_file="/Pulumi.local.yaml")
    assert lines == ["starting 2 simulator(s)", "prometheus: scraping"]

    rotated = client.rotate(stop_after="add")
    assert (rotated.from_generation, rotated.to_generation, rotated.finished, rotated.steps) == (
        "g1",
        "g2",
        False,
        ["add"],
    )
    with pytest.raises(UsageError, match="no service 'nope'"):
        client.restart("nope")
    # Lending `tail` an identity starts no process: answered at once, also while a job runs.
    grant = client.lend_observer()
    assert (grant.identity, grant.cert, grant.port) == ("observer-0123abcd", "/o.pem", 1)
    assert client.return_observer(grant.identity).identity == grant.identity
    assert served.handler.jobs.empty()
    assert client.stop().stopping and served.handler.stop_requested
    # Once stopping, work that changes processes is refused; reading still works.
    with pytest.raises(OperationFailed, match="stopping"):
        client.scale(5)
    assert client.status().phase == "running"


def test_the_string_api_returns_the_same_json_as_before(served: Served) -> None:
    status = request(served.paths, "status", timeout_s=10)
    assert status["supervisor_pid"] == os.getpid()
    assert status["simulators"] == {"desired": 2, "up": 2}
    assert status["pipeline"]["archived_total"] == 7.0
    assert request(served.paths, "outputs")["metrics_ports"] == {"rule-runner": 9000}
    progress: list[str] = []
    assert request(served.paths, "scale", progress.append, simulators=3) == {
        "simulators": 3,
        "before": 2,
        "config_file": "/Pulumi.local.yaml",
    }
    assert progress[0] == "starting 1 simulator(s)"
    rotated = request(served.paths, "rotate", stop_after="add")
    assert rotated == {
        "from_generation": "g1",
        "to_generation": "g2",
        "rolled_back": False,
        "finished": False,
        "steps": ["add"],
    }
    with pytest.raises(UsageError, match="unknown request 'dance'"):
        request(served.paths, "dance")


def test_a_bug_in_a_command_is_an_error_reply_and_an_event(served: Served) -> None:
    with pytest.raises(OperationFailed, match="rotate failed: KeyError"):
        ControlClient(served.paths).rotate(stop_after="bug")
    assert served.handler.notes == ["request rotate failed: KeyError('a bug')"]
    assert ControlClient(served.paths).status().phase == "running"


def test_a_client_that_hangs_up_mid_stream_does_not_stop_the_job_or_the_server(served: Served) -> None:
    served.handler.hold.set()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(str(served.paths.control_socket))
        connection.sendall(encode(ScaleRequest(simulators=5)))
        with connection.makefile("rb") as stream:
            first = decode_reply(stream.readline())
        assert isinstance(first, ProgressReply)
    # The client is gone; the job goes on and its remaining replies go nowhere.
    served.handler.release.set()
    assert wait_until(lambda: served.handler.finished == [5], 10)
    served.handler.hold.clear()
    assert ControlClient(served.paths).scale(3).simulators == 3
    assert ControlClient(served.paths).status().running


def test_no_supervisor_is_one_line_naming_the_socket(short_root: Path) -> None:
    paths = StatePaths(short_root)
    with pytest.raises(OperationFailed, match=r"does not answer on .*control\.sock"):
        ControlClient(paths).status()


# -- the socket's folder -------------------------------------------------------------------------


def test_socket_folder_checks(tmp_path: Path) -> None:
    check_socket_folder(tmp_path / "missing")  # created private later
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_socket_folder(private)
    readable = tmp_path / "readable"
    readable.mkdir()
    readable.chmod(0o755)
    check_socket_folder(readable)  # others may list it, not swap the socket

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UsageError, match=r"can be written by others \(mode 0777\)"):
        check_socket_folder(shared)
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(UsageError, match="is a symbolic link"):
        check_socket_folder(link)
    plain = tmp_path / "file"
    plain.write_text("")
    with pytest.raises(UsageError, match="is not a folder"):
        check_socket_folder(plain)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_socket_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(UsageError, match=r"belongs to another user \(uid 65534\)") as refused:
        check_socket_folder(foreign)
    assert "\n" not in str(refused.value) and "IOTFACTORY_STATE_DIR" in str(refused.value)


def test_server_and_client_refuse_a_folder_others_can_write(short_root: Path) -> None:
    paths = StatePaths(short_root)
    short_root.chmod(0o777)
    with pytest.raises(UsageError, match="can be written by others"):
        ControlServer(paths.control_socket, StandIn())
    assert not paths.control_socket.exists()
    with pytest.raises(UsageError, match="would hold the control socket"):
        ControlClient(paths).status()


def test_supervisor_start_refuses_the_folder_before_starting_anything(
    short_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to the control socket the supervisor starts nothing, so a refusal leaves no process behind."""
    config = stack_config.load(write_local_stack_file(tmp_path, 1, {"seed": 1}))
    paths = StatePaths(short_root / "s")
    # The real fallback under /tmp is shared by every test on this machine: point the socket elsewhere.
    shared = short_root / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setattr(StatePaths, "control_socket", property(lambda self: shared / "x.sock"))
    supervisor = Supervisor(config, paths, lambda _line: None)
    with pytest.raises(UsageError, match="can be written by others"):
        supervisor.start()
    state = json.loads(paths.state_file.read_text())
    assert state["phase"] == "failed" and state["exit_code"] == 2 and state["pids"] == []


@pytest.mark.timeout(60)
def test_the_supervisor_answers_failed_work_and_keeps_serving(short_root: Path, tmp_path: Path) -> None:
    """The real dispatch, on a supervisor that runs no processes: errors are replies, never a crash."""
    config = stack_config.load(write_local_stack_file(tmp_path, 1, {"seed": 1}))
    paths = StatePaths(short_root / "s")
    events: list[str] = []
    supervisor = Supervisor(config, paths, events.append)
    supervisor.acquire_lock()
    supervisor._server = ControlServer(paths.control_socket, supervisor)
    serving = threading.Thread(target=supervisor.serve, daemon=True)
    serving.start()
    try:
        client = ControlClient(paths, timeout_s=20)
        with pytest.raises(UsageError, match="no service 'nope'"):
            client.restart("nope")
        with pytest.raises(UsageError, match="--simulators"):
            client.scale(-1)
        with pytest.raises(OperationFailed, match="rotate failed: AssertionError"):
            client.rotate()  # no certificates yet: a bug, reported and survived
        assert any("request rotate failed" in line for line in client.status().events)
        assert client.stop().stopping
        serving.join(20)
        assert not serving.is_alive()
    finally:
        supervisor.shutdown(quiet=True)
    assert not paths.control_socket.exists()
    assert read_state_phase(paths) == "stopped"


def read_state_phase(paths: StatePaths) -> str:
    return str(json.loads(paths.state_file.read_text())["phase"])
