"""Helpers for the cold-path tests: real device publishers, the rule runner as a process, moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from conftest import Broker
from support_mqtt import broker_flags, tls_client

from factory_core.fleet import FleetSettings, MachineType
from local_stack.certificate_authority import IssuedCertificate
from local_stack.ports import free_port, wait_for_port
from simulator.model.site import Message, SiteModel

REPO_ROOT = Path(__file__).resolve().parent.parent

SMALL_FLEET = FleetSettings(
    lines_per_site=1,
    machines_per_line={MachineType.CNC_MILL: 1, MachineType.CONVEYOR: 1, MachineType.AIR_COMPRESSOR: 1},
)


def fleet_messages(
    rounds: int, site_index: int = 0, fleet: FleetSettings = SMALL_FLEET, start_epoch_ms: int | None = None
) -> list[Message]:
    """Real simulator payloads (telemetry and ground truth) for `rounds` samples of every machine."""
    start = int(time.time() * 1000) if start_epoch_ms is None else start_epoch_ms
    model = SiteModel(fleet, site_index, start)
    messages: list[Message] = []
    for _ in range(rounds):
        for index in range(len(model.machines)):
            messages.extend(model.sample(index))
    return messages


class DevicePublisher:
    """A device at QoS 1 with a persistent session, so it resends what the broker did not PUBACK."""

    def __init__(self, broker: Broker, cert: IssuedCertificate | None = None, client_id: str = "site-00-c00"):
        self.client = tls_client(
            broker.pki.ca.ca_cert_path, cert or broker.pki.device, client_id, clean_session=False
        )
        self.client.max_inflight_messages_set(20)
        self.client.reconnect_delay_set(0.1, 1)
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.acknowledged = 0
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "device could not connect"
        self.published = 0

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        with self._lock:
            self.acknowledged += 1

    def publish(self, topic: str, payload: bytes) -> None:
        # While disconnected paho queues QoS 1 publishes (rc NO_CONN) and sends them on reconnect.
        self.client.publish(topic, payload, qos=1)
        self.published += 1

    def publish_all(self, messages: Sequence[Message], rate_per_s: float | None = None) -> None:
        started = time.monotonic()
        for count, message in enumerate(messages):
            self.publish(message.topic, message.payload)
            if rate_per_s:
                ahead = started + count / rate_per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def wait_all_acknowledged(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < self.published:
            assert time.monotonic() < deadline, (
                f"the broker acknowledged {self.acknowledged} of {self.published} publishes"
            )
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RunnerProcess:
    """`python -m local_stack.rule_runner` as a child process, the way the local stack runs it."""

    def __init__(
        self,
        broker: Broker,
        archive: str,
        work_dir: Path,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.ready_file = work_dir / "rule-runner.ready"
        self.log_path = work_dir / "rule-runner.log"
        self.args = [
            sys.executable,
            "-m",
            "local_stack.rule_runner",
            *broker_flags(broker, broker.pki.reader),
            "--archive",
            archive,
            "--ready-file",
            str(self.ready_file),
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"rule runner exited {self.process.returncode}: {self.log()}")
            assert time.monotonic() < deadline, f"rule runner not ready: {self.log()}"
            time.sleep(0.05)

    def ready_info(self) -> dict[str, object]:
        return json.loads(self.ready_file.read_text())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running_runner(
    broker: Broker, archive: str, work_dir: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[RunnerProcess]:
    runner = RunnerProcess(broker, archive, work_dir, extra, env)
    runner.start()
    try:
        yield runner
    finally:
        runner.kill()


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's S3 server on an ephemeral loopback port; yields its endpoint URL."""
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(port, timeout_s=20), "moto_server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
