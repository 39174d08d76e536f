"""Cold-path benchmark: messages/s the rule runner archives at QoS 1, batched vs one object per message.

A real mutual-TLS Mosquitto (persistence on) is fed by a fast paho QoS 1 publisher while the rule
runner runs as its own process. Each configuration is repeated; the script prints medians and the
ratio of archived msg/s to the publisher's own msg/s in the same run (1.0 = the archive kept up).

    .venv/bin/python bench/bench_archive.py [--repeats 3] [--messages 60000] [--skip-s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from factory_core.fleet import FleetSettings, MachineType  # noqa: E402
from local_stack.certificate_authority import CertificateAuthority  # noqa: E402
from local_stack.dynamic_security import BrokerAccess  # noqa: E402
from local_stack.identities import RULE_RUNNER_IDENTITY, device_identity  # noqa: E402
from local_stack.mosquitto import BrokerConfig, MosquittoProcess  # noqa: E402
from local_stack.ports import free_port, wait_for_port  # noqa: E402
from local_stack.services import BROKER_INFLIGHT_TO_SUBSCRIBERS  # noqa: E402
from local_stack.verify import verify_archive  # noqa: E402
from simulator.model.site import SiteModel  # noqa: E402

MOTO_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Config:
    name: str
    mode: str  # batched | direct
    backend: str  # local | s3
    messages: int
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    published_per_s: float  # the publishers alone, while the runner archives (live phase)
    archived_per_s: float  # live phase: messages / (first publish → last message archived)
    drain_per_s: float  # backlog phase: messages queued in the runner's session / time to archive them
    objects: int
    missing: int
    duplicates: int

    @property
    def ratio(self) -> float:
        return self.archived_per_s / self.published_per_s


def streams(machines: int, per_machine: int) -> list[tuple[str, list[bytes]]]:
    """Telemetry of `machines` simulated machines (~330-byte payloads), seq counting from 1 each."""
    fleet = FleetSettings(lines_per_site=1, machines_per_line={MachineType.CNC_MILL: machines})
    model = SiteModel(fleet, 0, int(time.time() * 1000) - 3_600_000 * 24)
    out: list[tuple[str, list[bytes]]] = []
    for index, spec in enumerate(model.machines):
        payloads: list[bytes] = []
        while len(payloads) < per_machine:
            payloads += [m.payload for m in model.sample(index) if m.kind == "telemetry"]
        out.append((spec.telemetry_topic, payloads[:per_machine]))
    return out


class Stack:
    """CA, broker and certificates in a temporary folder.

    Each publisher has a certificate of its own: the broker takes a certificate's CN as its client
    id, so publishers sharing one would close each other's connection.
    """

    def __init__(
        self,
        root: Path,
        max_inflight: int,
        autosave_s: int = BrokerConfig.autosave_interval_s,
        publishers: int = 4,
    ) -> None:
        self.root = root
        self.max_inflight = max_inflight
        self.ca = CertificateAuthority.create(root / "ca")
        server = self.ca.issue_server("broker", root / "broker")
        self.devices = [
            self.ca.issue_client(device_identity("g1", 0, number), root / "devices")
            for number in range(max(1, publishers))
        ]
        self.device = self.devices[0]
        self.reader = self.ca.issue_client(RULE_RUNNER_IDENTITY, root / "readers")
        self.port = free_port()
        self.broker = MosquittoProcess(
            BrokerConfig(
                port=self.port,
                data_dir=root / "mosquitto",
                ca_file=self.ca.ca_cert_path,
                cert_file=server.cert_path,
                key_file=server.key_path,
                crl_file=self.ca.crl_path,
                access=BrokerAccess(devices={device.common_name: "site-00" for device in self.devices}),
                max_inflight_messages=max_inflight,
                autosave_interval_s=autosave_s,
            ),
            root / "mosquitto.log",
        )


def publish(stack: Stack, topic_payloads: list[tuple[str, list[bytes]]], run_id: str) -> float:
    """One `mosquitto_pub -l -q 1` per machine, all at once; returns seconds until all have finished.

    The C client is the fastest QoS 1 publisher here, so the runner, not the publisher, is what
    the ratio measures. It exits once every publish is acknowledged.
    """
    processes = []
    started = time.monotonic()
    for number, (topic, payloads) in enumerate(topic_payloads):
        device = stack.devices[number % len(stack.devices)]
        process = subprocess.Popen(
            [
                "mosquitto_pub",
                "-h",
                "127.0.0.1",
                "-p",
                str(stack.port),
                "--cafile",
                str(stack.ca.ca_cert_path),
                "--cert",
                str(device.cert_path),
                "--key",
                str(device.key_path),
                "-i",
                device.common_name,
                "-q",
                "1",
                "-M",
                "100",
                "-t",
                topic,
                "-l",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes.append((process, b"\n".join(payloads) + b"\n"))
    feeders = [threading.Thread(target=process.communicate, args=(data,)) for process, data in processes]
    for feeder in feeders:
        feeder.start()
    for feeder in feeders:
        feeder.join()
    elapsed = time.monotonic() - started
    for process, _ in processes:
        if process.returncode != 0:
            raise RuntimeError(f"mosquitto_pub failed ({process.returncode})")
    return elapsed


def archived_count(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("archive_messages_archived_total{")
    )


class Runner:
    def __init__(self, stack: Stack, config: Config, run_id: str, s3_endpoint: str | None) -> None:
        self.metrics_port = free_port()
        self.ready = stack.root / f"{run_id}.ready"
        self.log_path = stack.root / f"{run_id}.log"
        if config.backend == "s3":
            self.location = f"s3://bench-{run_id.lower()}"
            backend_args = ["--s3-endpoint-url", str(s3_endpoint), "--create-bucket"]
        else:
            self.location = str(stack.root / "archives" / run_id)
            backend_args = []
        self.args = [
            sys.executable,
            "-m",
            "local_stack.rule_runner",
            "--endpoint",
            "127.0.0.1",
            "--port",
            str(stack.port),
            "--ca",
            str(stack.ca.ca_cert_path),
            "--cert",
            str(stack.reader.cert_path),
            "--key",
            str(stack.reader.key_path),
            "--archive",
            self.location,
            "--mode",
            config.mode,
            "--metrics-port",
            str(self.metrics_port),
            "--ready-file",
            str(self.ready),
            "--log-level",
            "WARNING",
            "--receive-window",
            str(stack.max_inflight),
            *backend_args,
            *config.extra,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.s3_endpoint = s3_endpoint

    def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rule runner did not start: {self.log_path.read_text()}")
            time.sleep(0.01)

    def wait_archived(self, count: int, offset: float = 0.0) -> float:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if archived_count(self.metrics_port) >= count:
                return time.monotonic()
            # Each scrape costs the runner CPU; 0.1 s keeps that small at < 2 % timing error.
            time.sleep(0.1)
        raise RuntimeError(f"not everything was archived in time; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def archive(self) -> object:
        if self.location.startswith("s3://"):
            from local_stack.archive import S3Archive

            return S3Archive(self.location.removeprefix("s3://"), endpoint_url=self.s3_endpoint)
        from local_stack.archive import LocalArchive

        return LocalArchive(Path(self.location))


def run_once(
    stack: Stack, config: Config, corpus: list[tuple[str, list[bytes]]], run_id: str, s3_endpoint: str | None
) -> Result:
    per_machine = config.messages // len(corpus) // 2
    live = [(topic, payloads[:per_machine]) for topic, payloads in corpus]
    backlog = [(topic, payloads[per_machine : 2 * per_machine]) for topic, payloads in corpus]
    live_count = sum(len(p) for _, p in live)
    backlog_count = sum(len(p) for _, p in backlog)
    runner = Runner(stack, config, run_id, s3_endpoint)
    try:
        # Live: the runner archives while the publishers publish.
        runner.start()
        started = time.monotonic()
        publish_s = publish(stack, live, run_id)
        archived_at = runner.wait_archived(live_count)
        # Backlog: publish while the runner is down (its session queues), then time the drain.
        runner.stop()
        publish(stack, backlog, run_id)
        runner.start()
        drain_started = time.monotonic()
        drained_at = runner.wait_archived(backlog_count)
    finally:
        runner.stop()
    report = verify_archive(runner.archive())  # type: ignore[arg-type]
    total = live_count + backlog_count
    return Result(
        published_per_s=live_count / publish_s,
        archived_per_s=live_count / (archived_at - started),
        drain_per_s=backlog_count / (drained_at - drain_started),
        objects=report.objects,
        missing=report.missing + max(0, total - report.unique),
        duplicates=report.duplicates,
    )


class SteadyDevice:
    """A paho device at QoS 1 with a persistent session: it resends what the broker did not PUBACK."""

    def __init__(self, stack: Stack, client_id: str) -> None:
        import ssl

        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        context = ssl.create_default_context(cafile=str(stack.ca.ca_cert_path))
        context.load_cert_chain(str(stack.device.cert_path), str(stack.device.key_path))
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.acknowledged = 0
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", stack.port)
        self.client.loop_start()

    def _on_publish(self, *args: object) -> None:
        self.acknowledged += 1

    def publish_at(self, messages: list[tuple[str, bytes]], rate_per_s: float) -> None:
        started = time.monotonic()
        for count, (topic, payload) in enumerate(messages):
            self.client.publish(topic, payload, qos=1)
            ahead = started + count / rate_per_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def close(self, expected: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()


def broker_kill_scenario(
    autosave_s: int, runner_up: bool, rate_per_s: float, seconds: float
) -> tuple[int, int, int]:
    """Publish steadily, SIGKILL the broker halfway, restart it; returns (published, lost, duplicates).

    Publishing starts once the broker has saved its sessions at least once, as on a stack that has
    been up for a while.

    `runner_up=False`: the rule runner is down while the broker queues for it, the worst case,
    because everything queued since the last autosave exists only in the broker's memory.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-archive-kill-"))
    stack = Stack(root, BrokerConfig.max_inflight_messages, autosave_s)
    stack.broker.start()
    runner = Runner(stack, Config("kill", "batched", "local", 0, ("--flush-interval", "0.2")), "kill", None)
    try:
        count = int(rate_per_s * seconds)
        per_machine = streams(4, count // 4)
        corpus = [(topic, payloads[n]) for n in range(count // 4) for topic, payloads in per_machine]
        runner.start()
        if not runner_up:
            runner.stop()
        device = SteadyDevice(stack, "site-00-kill")
        # A stack that has run for a while: the sessions are in at least one saved snapshot.
        time.sleep(autosave_s + 1.5)
        half = len(corpus) // 2
        device.publish_at(corpus[:half], rate_per_s)
        stack.broker.kill()
        stack.broker.start()
        device.publish_at(corpus[half:], rate_per_s)
        device.close(len(corpus))
        if not runner_up:
            runner.start()
        settled, last = time.monotonic(), -1.0
        while time.monotonic() - settled < 3:
            now = archived_count(runner.metrics_port)
            if now != last:
                settled, last = time.monotonic(), now
            time.sleep(0.2)
        runner.stop()
        report = verify_archive(runner.archive())  # type: ignore[arg-type]
        # Counted against what was published, so loss at the start or end of a stream counts too.
        return len(corpus), len(corpus) - report.unique, report.duplicates
    finally:
        runner.stop()
        stack.broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--messages", type=int, default=100_000, help="messages per batched run (both phases)"
    )
    parser.add_argument("--direct-messages", type=int, default=4_000, help="messages per one-object run")
    parser.add_argument(
        "--broker-inflight",
        type=int,
        default=BROKER_INFLIGHT_TO_SUBSCRIBERS,
        help="Mosquitto max_inflight_messages (0 = unlimited), passed to --receive-window too;"
        " the default is what the local stack runs",
    )
    parser.add_argument("--publishers", type=int, default=4, help="parallel mosquitto_pub processes")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--skip-kill", action="store_true", help="skip the broker SIGKILL scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    os.environ.update(MOTO_ENV)  # moto accepts any credentials; never real ones

    configs = [
        Config("local folder, batched", "batched", "local", options.messages),
        Config("local folder, one object per message", "direct", "local", options.direct_messages),
    ]
    if not options.skip_s3:
        configs += [
            Config("moto S3, batched", "batched", "s3", options.messages),
            Config("moto S3, one object per message", "direct", "s3", options.direct_messages),
        ]
    root = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    stack = Stack(root, options.broker_inflight, publishers=options.publishers)
    stack.broker.start()
    moto: subprocess.Popen[bytes] | None = None
    s3_endpoint = None
    try:
        if not options.skip_s3:
            moto_port = free_port()
            moto = subprocess.Popen(
                [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(moto_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if not wait_for_port(moto_port, timeout_s=20):
                raise RuntimeError("moto_server did not start")
            s3_endpoint = f"http://127.0.0.1:{moto_port}"
        biggest = max(config.messages for config in configs)
        corpus = streams(options.publishers, 2 * (biggest // options.publishers // 2))
        size = statistics.mean(len(payload) for payload in corpus[0][1][:1000])
        print(
            f"payload ≈ {size:.0f} bytes; mTLS Mosquitto QoS 1 on 127.0.0.1:{stack.port};"
            f" {options.publishers} mosquitto_pub publishers; {options.repeats} repeats, medians"
        )
        print(
            "live: published/s of the publishers and archived/s while they publish (ratio 1.0 = kept up);"
            " drain: archived/s of a backlog queued in the runner's session\n"
        )
        print(
            f"{'configuration':38} {'published/s':>11} {'archived/s':>11} {'ratio':>6} {'drain/s':>9}"
            f" {'objects':>8} {'missing':>8} {'dups':>5}"
        )
        for config in configs:
            results = [
                run_once(
                    stack,
                    config,
                    corpus[: config.messages],
                    f"{config.mode}{config.backend}{repeat}",
                    s3_endpoint,
                )
                for repeat in range(options.repeats)
            ]
            print(
                f"{config.name:38} {statistics.median(r.published_per_s for r in results):>11,.0f}"
                f" {statistics.median(r.archived_per_s for r in results):>11,.0f}"
                f" {statistics.median(r.ratio for r in results):>6.2f}"
                f" {statistics.median(r.drain_per_s for r in results):>9,.0f}"
                f" {statistics.median(r.objects for r in results):>8,.0f}"
                f" {max(r.missing for r in results):>8} {max(r.duplicates for r in results):>5}",
                flush=True,
            )
        if not options.skip_kill:
            print("\nbroker SIGKILL halfway through 8 s at 1,000 msg/s, then restarted (persistence on):")
            print(f"{'rule runner':12} {'autosave_interval':>18} {'published':>10} {'lost':>6} {'dups':>6}")
            for runner_up in (True, False):
                for autosave in (1, BrokerConfig.autosave_interval_s, 30):
                    published, lost, duplicates = broker_kill_scenario(autosave, runner_up, 1000, 8)
                    print(
                        f"{'running' if runner_up else 'down':12} {autosave:>16} s {published:>10,}"
                        f" {lost:>6,} {duplicates:>6,}",
                        flush=True,
                    )
    finally:
        stack.broker.stop()
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
