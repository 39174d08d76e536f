"""The local stack end to end: real Mosquitto, simulators, rule runner and Prometheus on ephemeral ports.

Each test starts a stack in its own temporary state folder (as `up --detach` does), works on it
while it runs, stops it cleanly and reconciles the archive. Every process is gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from support_audit import subscribe_to_everything
from support_local_stack import admitted_device, run_cli, write_local_stack_file
from support_mqtt import tls_client

from factory_core.payload_contract import payload_kind
from local_stack import prometheus as prometheus_api
from local_stack.archive import RAW_PREFIX, LocalArchive, iter_records
from local_stack.certificate_authority import CA_CERT_FILE, CertificateAuthority, IssuedCertificate
from local_stack.control import request
from local_stack.identities import OBSERVER_IDENTITY
from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV, StatePaths
from local_stack.ports import free_port, wait_for_port
from local_stack.processes import pid_alive, wait_gone
from local_stack.state_file import read_state
from local_stack.verify import VerifyReport, verify_archive

pytestmark = pytest.mark.integration

MACHINES_PER_SITE = 5  # one line of the default machine mix


FLEET = {"seed": 11, "lines_per_site": 1, "publish_interval_s": 0.25}


def write_stack_file(directory: Path, simulators: int, **local: Any) -> Path:
    return write_local_stack_file(directory, simulators, FLEET, header="# test stack\n", **local)


@dataclass
class RunningStack:
    paths: StatePaths
    config_file: Path
    started_at: float = field(default_factory=time.monotonic)

    def status(self) -> dict[str, Any]:
        return dict(request(self.paths, "status", timeout_s=10))

    def outputs(self) -> dict[str, Any]:
        return dict(request(self.paths, "outputs", timeout_s=10))

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.paths.ca_dir)

    @property
    def broker_port(self) -> int:
        return int(self.outputs()["broker_port"])

    def archived(self) -> float:
        return float(self.status()["pipeline"]["archived_total"])

    def wait_archived_beyond(self, count: float, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.archived() > count:
                return
            time.sleep(0.2)
        raise AssertionError(f"the archive did not grow beyond {count} within {timeout_s} s: {self.status()}")

    def wait_service(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self.service(name)):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached the expected state: {self.service(name)}")

    def run_until(self, seconds_since_start: float) -> None:
        time.sleep(max(0.0, self.started_at + seconds_since_start - time.monotonic()))

    def all_pids(self) -> list[int]:
        state = read_state(self.paths)
        if state is None:  # destroyed
            return []
        return [state.supervisor_pid, *state.pids]

    def stop(self) -> None:
        assert run_cli("stop", "--stack", "local", "--json").exit_code == 0

    def verify(self) -> VerifyReport:
        return verify_archive(LocalArchive(self.paths.default_archive_dir))


@pytest.fixture
def start_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningStack]]:
    started: list[RunningStack] = []
    pids: list[int] = []

    def start(simulators: int = 2, **local: Any) -> RunningStack:
        config_file = write_stack_file(tmp_path, simulators, **local)
        state = tmp_path / "state"
        monkeypatch.setenv(CONFIG_ENV, str(config_file))
        monkeypatch.setenv(STATE_DIR_ENV, str(state))
        assert run_cli("up", "--stack", "local", "--detach", "--yes", "--json").exit_code == 0
        stack = RunningStack(StatePaths(state), config_file)
        started.append(stack)
        return stack

    try:
        yield start
    finally:
        for stack in started:
            pids += stack.all_pids()
            run_cli("stop", "--stack", "local", "--json")
        leftovers = [pid for pid in pids if pid_alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes outlived the stack: {leftovers}"


def stack_client(stack: RunningStack, cert: IssuedCertificate | None, client_id: str) -> mqtt.Client:
    return tls_client(stack.paths.ca_dir / CA_CERT_FILE, cert, client_id)


def connects(stack: RunningStack, cert: IssuedCertificate | None, client_id: str) -> bool:
    client = stack_client(stack, cert, client_id)
    accepted = threading.Event()
    settled = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            accepted.set()
        settled.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_args: settled.set()
    try:
        client.connect("127.0.0.1", stack.broker_port, keepalive=10)
        client.loop_start()
        settled.wait(5)
        # A revoked certificate can pass the handshake's first flight and be cut right after.
        time.sleep(0.3)
        return accepted.is_set() and client.is_connected()
    except (ssl.SSLError, OSError):
        return False
    finally:
        client.loop_stop()
        client.disconnect()


def stack_certificate(stack: RunningStack, name: str) -> IssuedCertificate:
    """One of the stack's own service certificates (`observer`, `iotfactory-admin`, ...)."""
    certs = stack.paths.certs_dir
    return IssuedCertificate(certs / f"{name}.pem", certs / f"{name}.key", 0, name, None)  # type: ignore[arg-type]


class HeldConnection:
    """A connection kept open (no reconnect) to see whether the broker closes it."""

    def __init__(self, stack: RunningStack, cert: IssuedCertificate) -> None:
        self.connected, self.gone = threading.Event(), threading.Event()
        self.client = stack_client(stack, cert, "held")
        self.client.on_connect = lambda _c, _u, _f, reason, _p: (
            self.connected.set() if not reason.is_failure else self.gone.set()
        )
        self.client.on_disconnect = lambda *_args: self.gone.set()
        self.client.connect("127.0.0.1", stack.broker_port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Auditor:
    """An independent subscriber (the read-only observer identity) counting what flows."""

    def __init__(self, stack: RunningStack, directory: Path) -> None:
        cert = stack_certificate(stack, OBSERVER_IDENTITY)
        self.seen: set[tuple[str, str, int]] = set()
        self.client = stack_client(stack, cert, "test-auditor")
        subscribe_to_everything(self.client, stack.broker_port, self._on_message)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            document = orjson.loads(message.payload)
            self.seen.add((document["machine"], payload_kind(document), int(document["seq"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def read_archive(root: Path) -> tuple[list[tuple[str, str, int]], list[bytes]]:
    """Every archived record, read without the verify module: (machine, kind, seq) and raw lines."""
    archive = LocalArchive(root)
    records: list[tuple[str, str, int]] = []
    lines: list[bytes] = []
    for info in archive.list_objects(RAW_PREFIX):
        for line in iter_records(archive.get_object(info.key).body):
            document = orjson.loads(line)
            records.append((document["machine"], payload_kind(document), int(document["seq"])))
            lines.append(line)
    return records, lines


def assert_no_gaps(report: VerifyReport, expected_machines: int, *, continuous: bool) -> None:
    assert report.missing == 0, [(s.machine, s.gaps) for s in report.streams if s.gaps]
    assert report.unreadable == 0
    telemetry = [s for s in report.streams if s.kind == "telemetry"]
    assert len(telemetry) == expected_machines
    assert all(s.first_seq == 1 for s in telemetry)
    if continuous:
        # A drained and restarted simulator resumed from its checkpoint instead of counting again.
        assert all(s.runs == 1 for s in report.streams), [
            (s.machine, s.runs) for s in report.streams if s.runs > 1
        ]


def test_full_pipeline_archives_every_message_exactly_once(start_stack, tmp_path: Path) -> None:
    stack = start_stack(simulators=2)
    auditor = Auditor(stack, tmp_path)
    ca = stack.ca()

    # Refused: no certificate, a certificate of another CA.
    assert not connects(stack, None, "anonymous")
    foreign = CertificateAuthority.create(tmp_path / "other-ca").issue_client("site-00", tmp_path / "foreign")
    assert not connects(stack, foreign, "site-00-foreign")

    # A device with a valid certificate: garbage under its own prefix is quarantined; a publish
    # under another site's prefix never reaches the archive.
    intruder = admitted_device(
        stack.paths, stack.broker_port, "g1-site-90-c00", "site-90", tmp_path / "intruder"
    )
    client = stack_client(stack, intruder, "site-90-c00")
    client.connect("127.0.0.1", stack.broker_port)
    client.loop_start()
    marker = "forged-by-site-90"
    forged = {
        "schema": 1,
        "machine": "site-00-line-01-cnc_mill-01",
        "site": "site-00",
        "seq": 1,
        "note": marker,
    }
    for topic, payload in [
        ("factory/simulator/site-90/line-01/site-90-line-01-cnc_mill-01", b"not json at all"),
        ("factory/simulator/site-90/line-01/site-90-line-01-cnc_mill-01", b'{"schema": 1, "seq": "x"}'),
        ("factory/simulator/site-90/line-01/site-90-line-01-cnc_mill-01", b"\xff\xfe\x00"),
        ("factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-01", json.dumps(forged).encode()),
        ("factory/elsewhere", json.dumps(forged).encode()),
    ]:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()

    # Revoked: the CRL plus a broker reload (what rotate-certs does) refuses the certificate.
    assert connects(stack, intruder, "site-90-c01")
    ca.revoke(intruder.serial)
    os.kill(int(stack.service("broker")["pid"]), signal.SIGHUP)
    time.sleep(0.5)
    assert not connects(stack, intruder, "site-90-c02")

    stack.run_until(20)
    port = int(stack.outputs()["prometheus_url"].rsplit(":", 1)[1])
    published = prometheus_api.query(port, "simulator_messages_published_total")
    assert {series["metric"]["site"] for series in published} == {"site-00", "site-01"}
    targets = prometheus_api.query(port, 'up{job="simulator"}')
    assert len(targets) == 2 and all(series["value"][1] == "1" for series in targets)
    assert prometheus_api.query(port, "archive_messages_archived_total")
    rules = prometheus_api.api_get(port, "/api/v1/rules")["data"]["groups"]
    assert {group["name"] for group in rules} >= {"iotfactory-simulator", "iotfactory-archive"}

    auditor.stop()
    stack.stop()
    report = stack.verify()
    assert_no_gaps(report, expected_machines=2 * MACHINES_PER_SITE, continuous=True)
    assert report.duplicates == 0

    # The independent count agrees with verify, and holds everything the auditor saw on the wire.
    records, lines = read_archive(stack.paths.default_archive_dir)
    assert len(records) == report.messages
    assert len(set(records)) == report.unique == len(records)
    assert auditor.seen <= set(records)
    assert len(auditor.seen) > 0.5 * len(records)
    assert not any(marker.encode() in line for line in lines)
    assert report.quarantined.get("invalid_json", 0) == 2
    assert report.quarantined.get("schema_violation", 0) == 1


def test_scale_up_and_down_while_running_loses_nothing(start_stack) -> None:
    stack = start_stack(simulators=2)
    stack.run_until(3)
    assert run_cli("scale", "--stack", "local", "--simulators", "4", "--json").exit_code == 0
    status = stack.status()
    assert status["simulators"] == {"desired": 4, "up": 4}
    port = int(stack.outputs()["prometheus_url"].rsplit(":", 1)[1])
    assert len(prometheus_api.active_targets(port)) == 4
    stack.run_until(7)
    assert run_cli("scale", "--stack", "local", "--simulators", "1", "--json").exit_code == 0
    assert stack.status()["simulators"] == {"desired": 1, "up": 1}
    assert len(prometheus_api.active_targets(port)) == 1
    assert yaml.safe_load(stack.config_file.read_text())["config"]["iotfactory:simulatorCount"] == 1
    assert stack.config_file.read_text().startswith("# test stack\n")
    archived = stack.archived()
    stack.wait_archived_beyond(archived)
    stack.stop()
    assert_no_gaps(stack.verify(), expected_machines=4 * MACHINES_PER_SITE, continuous=True)


def test_rotation_while_running_loses_nothing_and_refuses_the_old_certificate(
    start_stack, tmp_path: Path
) -> None:
    stack = start_stack(simulators=2)
    old_dir = stack.paths.certs_dir / "g1"
    kept = tmp_path / "old-g1"
    kept.mkdir()
    name = "g1-site-00-c00"  # simulator-00's connection in generation g1
    for suffix in (".pem", ".key"):
        (kept / f"{name}{suffix}").write_bytes((old_dir / "site-00" / f"{name}{suffix}").read_bytes())
    old = IssuedCertificate(kept / f"{name}.pem", kept / f"{name}.key", 0, name, None)  # type: ignore[arg-type]
    stack.run_until(3)

    # Interrupted after the first step and rolled back: the simulators return to g1, g2 is revoked.
    result = request(stack.paths, "rotate", stop_after="add")
    assert result["steps"] == ["add"] and not result["finished"]
    assert connects(stack, old, "probe")  # the simulators use g2 now: nobody is displaced
    assert run_cli("rotate-certs", "--stack", "local", "--rollback", "--json").exit_code == 0
    status = stack.status()
    assert status["generation"] == "g1" and status["rotation"] is None
    assert {s["generation"] for s in status["services"] if s["kind"] == "simulator"} == {"g1"}
    assert all(s["state"] == "running" for s in status["services"])

    # Again (the name g2 is reused: its first certificates are revoked and gone), then resumed
    # while a connection is held open on an old-generation certificate.
    result = request(stack.paths, "rotate", stop_after="add")
    assert result["steps"] == ["add"] and not result["finished"]
    status = stack.status()
    assert status["rotation"]["step"] == "added"
    assert {s["generation"] for s in status["services"] if s["kind"] == "simulator"} == {"g2"}
    held = HeldConnection(stack, old)
    assert held.connected.wait(10) and not held.gone.is_set()  # not revoked yet
    assert run_cli("rotate-certs", "--stack", "local", "--json").exit_code == 0
    # Revocation cut the open session (the CRL alone would have left it up), and it cannot return.
    assert held.gone.wait(10), "the connection on a revoked certificate stayed open"
    held.close()
    log = (stack.paths.logs_dir / "broker.log").read_text()
    assert f"Client {name} been disconnected by administrative action." in log
    assert not connects(stack, old, "probe")
    refusals = stack.status()["broker_refusals"]
    assert refusals["sessions_cut"] >= 1 and refusals["tls_refusals"] >= 1

    assert not old_dir.exists()
    status = stack.status()
    assert status["generation"] == "g2" and status["rotation"] is None
    assert all(s["state"] == "running" for s in status["services"])
    archived = stack.archived()
    stack.wait_archived_beyond(archived)
    stack.stop()
    assert_no_gaps(stack.verify(), expected_machines=2 * MACHINES_PER_SITE, continuous=True)


def test_broker_sigterm_and_rule_runner_sigkill_lose_nothing(start_stack) -> None:
    stack = start_stack(simulators=2)
    stack.run_until(3)
    os.kill(int(stack.service("broker")["pid"]), signal.SIGTERM)
    stack.wait_service("broker", lambda s: s["restarts"] == 1 and s["state"] == "running")
    stack.wait_archived_beyond(stack.archived())
    os.kill(int(stack.service("rule-runner")["pid"]), signal.SIGKILL)
    stack.wait_service("rule-runner", lambda s: s["restarts"] == 1 and s["state"] == "running")
    stack.wait_archived_beyond(stack.archived())
    events = " | ".join(stack.status()["events"])
    assert "broker exited unexpectedly" in events and "rule-runner exited unexpectedly" in events
    stack.stop()
    report = stack.verify()
    assert_no_gaps(report, expected_machines=2 * MACHINES_PER_SITE, continuous=True)


def test_broker_sigkill_loss_is_measured(start_stack, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL skips Mosquitto's save: whatever it held only in memory may be lost. Measure it."""
    stack = start_stack(simulators=2, mosquitto={"autosaveIntervalS": 5})
    stack.run_until(4)
    before = stack.archived()
    os.kill(int(stack.service("broker")["pid"]), signal.SIGKILL)
    stack.wait_service("broker", lambda s: s["restarts"] == 1 and s["state"] == "running")
    stack.wait_archived_beyond(before)  # the pipeline recovered on its own
    stack.run_until(10)
    stack.stop()
    report = stack.verify()
    with capsys.disabled():
        print(
            f"\nbroker SIGKILL with autosave 5 s: {report.missing} missing, {report.duplicates} duplicates"
            f" of {report.unique} unique archived messages"
        )
    assert report.unique > 0
    assert report.unreadable == 0


def test_s3_compatible_archive(start_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(port, timeout_s=20)
        endpoint = f"http://127.0.0.1:{port}"
        stack = start_stack(simulators=1, archive={"s3": {"endpoint": endpoint, "bucket": "telemetry-local"}})
        assert stack.outputs()["archive"].startswith("s3://telemetry-local")
        stack.run_until(4)
        stack.stop()
        verified = run_cli("verify", "--stack", "local", "--json")
        assert verified.exit_code == 0
        report = json.loads(verified.stdout)
        assert report["ok"] and report["missing"] == 0 and report["unique"] > 0
        assert report["archive"].startswith("s3://telemetry-local")
    finally:
        moto.terminate()
        moto.wait(10)


def test_supervisor_killed_outright_leaves_no_orphans(start_stack) -> None:
    stack = start_stack(simulators=1)
    children = stack.all_pids()[1:]
    assert children and all(pid_alive(pid) for pid in children)
    os.kill(stack.all_pids()[0], signal.SIGKILL)
    # Each child gets SIGTERM from the kernel when the supervisor dies (PR_SET_PDEATHSIG).
    assert wait_gone(children, 40.0), [pid for pid in children if pid_alive(pid)]
    # The control socket died with its owner: `stop` and `destroy` still work on what is left.
    assert run_cli("stop", "--stack", "local", "--json").exit_code == 0
    assert run_cli("destroy", "--stack", "local", "--yes", "--json").exit_code == 0
    assert not stack.paths.root.exists()
