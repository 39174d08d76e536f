"""How to make each documented sample error happen for real, for tests/test_docs_commands.py.

A documented `error: ...` line with a `$ command` right above it is produced by running that
command. The others are listed in `REPRODUCTIONS`, keyed by the start of the documented line: each
function sets up what the error needs (a port taken, a bad certificate, a stack that refuses) and
returns the one stderr line a user sees, with this run's paths and ports put back to the ones the
document shows.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml
from support_cloud import BASE_CONFIG, cloud_stand_in
from support_local_stack import every_port_free

from automation.recording_stack import ScriptedResource
from automation.stack_port import StackBusyError
from local_stack.certificate_authority import CertificateAuthority
from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV
from local_stack.ports import free_port

REPO = Path(__file__).resolve().parent.parent
Reproduction = Callable[[Path, pytest.MonkeyPatch], str]


def error_line(completed: subprocess.CompletedProcess[str], *, code: int = 2) -> str:
    """The one `error:` line of a failed run; fails the test if the run broke the rules for errors."""
    assert completed.returncode == code, (completed.args, completed.returncode, completed.stderr[-800:])
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in completed.stderr, (completed.args, completed.stderr)
    return lines[0]


def run(program: list[str], tmp_path: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None,
        code: int = 2) -> str:
    """`python <program>` as a user runs it, in `cwd`; this run's temp folder reads as the docs' names."""
    environment = {
        **os.environ,
        STATE_DIR_ENV: str(tmp_path / "state"),
        "PYTHONPATH": str(REPO),
        "NO_COLOR": "1",
        "COLUMNS": "200",
        **(env or {}),
    }
    completed = subprocess.run(
        [sys.executable, *program],
        cwd=cwd or REPO,
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    return error_line(completed, code=code).replace(f"{tmp_path}/", "").replace(str(REPO), "/repo")


# --- the simulator -----------------------------------------------------------------------------


def _simulator(*arguments: str) -> Reproduction:
    return lambda tmp_path, _monkeypatch: run(["-m", "simulator", *arguments], tmp_path)


def _device_files(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.create(tmp_path / "ca")
    ca.issue_client("site-00", tmp_path, file_stem="dev")
    ca.issue_client("site-00", tmp_path, file_stem="other")
    return ca


def _key_mismatch(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    ca = _device_files(tmp_path)
    flags = ["--endpoint", "127.0.0.1", "--ca", str(ca.ca_cert_path)]
    flags += ["--cert", "dev.pem", "--key", "other.key"]
    return run(["-m", "simulator", "--check-config", str(REPO / "Pulumi.local.yaml"), *flags], tmp_path,
               cwd=tmp_path)


def _expired(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    ca = _device_files(tmp_path)
    ended = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    ca.issue_client("site-00", tmp_path, file_stem="dev", not_before=ended - dt.timedelta(days=30),
                    not_after=ended)
    flags = ["--endpoint", "127.0.0.1", "--ca", str(ca.ca_cert_path), "--cert", "dev.pem", "--key", "dev.key"]
    return run(["-m", "simulator", "--check-config", str(REPO / "Pulumi.local.yaml"), *flags], tmp_path,
               cwd=tmp_path)


def _connect(tmp_path: Path, port: int, ca: CertificateAuthority, *extra: str) -> str:
    flags = ["--endpoint", "127.0.0.1", "--port", str(port), "--ca", str(ca.ca_cert_path),
             "--cert", "dev.pem", "--key", "dev.key", "--metrics-port", "0", "--count", "1", *extra]
    return run(["-m", "simulator", *flags], tmp_path, cwd=tmp_path)


def _refused(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    ca = _device_files(tmp_path)
    port = free_port()
    return _connect(tmp_path, port, ca).replace(f":{port}:", ":8884:")


@contextmanager
def _tls_server_trusting_another_ca(tmp_path: Path) -> Iterator[tuple[int, CertificateAuthority]]:
    """A TLS listener that demands client certificates from a CA the device's is not from."""
    device_ca = _device_files(tmp_path)
    broker_ca = CertificateAuthority.create(tmp_path / "broker-ca")
    server = broker_ca.issue_server("broker", tmp_path / "broker")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert_path, server.key_path)
    context.load_verify_locations(broker_ca.ca_cert_path)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            # The point: the handshake fails on the client's certificate.
            with connection, suppress(ssl.SSLError, OSError):
                context.wrap_socket(connection, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # The device trusts the broker's CA (so the server is accepted) but holds another CA's cert.
        yield listener.getsockname()[1], broker_ca
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    del device_ca


def _rejected(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    with _tls_server_trusting_another_ca(tmp_path) as (port, broker_ca):
        return _connect(tmp_path, port, broker_ca).replace(f":{port} ", ":8883 ")


def _metrics_port_taken(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    ca = _device_files(tmp_path)
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        flags = ["--endpoint", "127.0.0.1", "--port", str(free_port()), "--ca", str(ca.ca_cert_path),
                 "--cert", "dev.pem", "--key", "dev.key", "--metrics-port", str(port), "--count", "1"]
        line = run(["-m", "simulator", *flags], tmp_path, cwd=tmp_path)
    return line.replace(f":{port} ", ":9100 ")


# --- the local stack ---------------------------------------------------------------------------


def _local_stack_file(tmp_path: Path, **local: object) -> Path:
    document = {"config": {"iotfactory:local": {**every_port_free(), **local}}}
    path = tmp_path / "Pulumi.local.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _local(tmp_path: Path, *arguments: str, **local: object) -> str:
    config = _local_stack_file(tmp_path, **local)
    return run(["cli.py", *arguments], tmp_path, env={CONFIG_ENV: str(config)})


def _port_taken(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = _local(tmp_path, "up", "--stack", "local", "--detach", brokerPort=port)
    return line.replace(f"port {port} ", "port 8883 ")


def _already_running(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    config = _local_stack_file(tmp_path, brokerPort=0, scrapeIntervalS=1)
    env = {**os.environ, CONFIG_ENV: str(config), STATE_DIR_ENV: str(tmp_path / "state")}
    cli = [sys.executable, str(REPO / "cli.py")]
    started = subprocess.run([*cli, "up", "--stack", "local", "--detach"], env=env, capture_output=True,
                             text=True, timeout=150, check=False, cwd=REPO)
    try:
        assert started.returncode == 0, started.stderr
        return run(["cli.py", "up", "--stack", "local"], tmp_path, env={CONFIG_ENV: str(config)})
    finally:
        subprocess.run([*cli, "stop", "--stack", "local"], env=env, capture_output=True, timeout=150,
                       check=False, cwd=REPO)


def _bad_port(tmp_path: Path, _monkeypatch: pytest.MonkeyPatch) -> str:
    return _local(tmp_path, "up", "--stack", "local", brokerPort=70000)


# --- the cloud stacks, at the Automation API boundary --------------------------------------------


def _cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *arguments: str, code: int) -> str:
    cloud = cloud_stand_in(tmp_path, monkeypatch)
    result = cloud.run(*arguments)
    cloud.assert_pulumi_never_called()
    assert result.exit_code == code, (arguments, result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _update_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    cloud = cloud_stand_in(tmp_path, monkeypatch)
    error = "creating ECS Service (sim-site-03): InvalidParameterException: the task definition is invalid"
    failing = ScriptedResource("aws:ecs/service:Service", "sim-site-03", "update", error=error)
    cloud.stack.resources = [failing]
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 1, result.output
    return result.stderr.strip()


def _locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    cloud = cloud_stand_in(tmp_path, monkeypatch)
    cloud.stack.fail_next("up", StackBusyError("the stack is currently locked by 1 lock(s)"))
    result = cloud.run("up", "--stack", "dev")
    assert result.exit_code == 1, result.output
    return result.stderr.strip()


def _over_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    cloud = cloud_stand_in(tmp_path, monkeypatch)
    # 2,000 machines at 1 msg/s per site: 11 sites are 22,000 msg/s, over the default 20,000.
    fleet = {"lines_per_site": 20, "machines_per_line": {"cnc_mill": 100}, "publish_interval_s": 1.0}
    cloud.write_stack_file({**BASE_CONFIG, "iotfactory:fleet": fleet})
    result = cloud.run("scale", "--stack", "dev", "--simulators", "11")
    assert result.exit_code == 2, result.output
    return result.stderr.strip()


def _operations(name: str, *arguments: str) -> Reproduction:
    """A docs/cloud.md operations block's error, in its situation (tests/support_operations.py)."""

    def reproduce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
        from support_operations import error_line

        return error_line(name, list(arguments), tmp_path, monkeypatch)

    return reproduce


REPRODUCTIONS: dict[str, Reproduction] = {
    "error: unknown machine type 'lathe'": _simulator("--dry-run", "--machines", "lathe=1"),
    "error: config publish_interval_s": _simulator("--dry-run", "--publish-interval", "-1"),
    "error: certificate dev.pem and key other.key do not match": _key_mismatch,
    "error: certificate dev.pem (CN=site-00,O=iotfactory) expired": _expired,
    "error: cannot connect to 127.0.0.1:8884": _refused,
    "error: 127.0.0.1:8883 closed the connection before accepting it": _rejected,
    "error: metrics port 0.0.0.0:9100 is not available": _metrics_port_taken,
    "error: port 8883 for broker is already in use": _port_taken,
    "error: the local stack is already running": _already_running,
    "error: config iotfactory:local.brokerPort": _bad_port,
    "error: up of stack 'dev' failed": _update_failed,
    "error: stack 'dev' is locked by another update": _locked,
    "error: scale refused": _over_quota,
    "error: up of stack 'dev' needs": _operations("prerequisites", "up", "--stack", "dev"),
    "error: interrupted": _operations("interrupt", "up", "--stack", "dev"),
    "error: rotation g1 -> g2 failed at site-01": _operations(
        "rotation-rollback", "rotate-certs", "--stack", "dev"
    ),
    "error: up would revert stack 'dev'": _operations("revert", "up", "--stack", "dev"),
}
