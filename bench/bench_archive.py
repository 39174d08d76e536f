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
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from local_stack.certificate_authority import CertificateAuthority  # noqa: E402
from local_stack.mosquitto import RULE_RUNNER_IDENTITY, BrokerConfig, MosquittoProcess  # noqa: E402
from local_stack.ports import free_port, wait_for_port  # noqa: E402
from local_stack.verify import verify_archive  # noqa: E402
from simulator.model.site import SiteModel  # noqa: E402
from simulator.settings import FleetSettings, MachineType  # noqa: E402

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
    published_per_s: float
    archived_per_s: float
    objects: int
    missing: int
    duplicates: int

    @property
    def ratio(self) -> float:
        return self.archived_per_s / self.published_per_s


def payloads(count: int, site_index: int = 0) -> list[tuple[str, bytes]]:
    """Real simulator messages (~250-300 bytes), each machine's seq counting from 1."""
    fleet = FleetSettings(lines_per_site=10, machines_per_line={MachineType.CNC_MILL: 2, MachineType.CONVEYOR: 2,
                                                                MachineType.HYDRAULIC_PRESS: 1,
                                                                MachineType.AIR_COMPRESSOR: 1})
    model = SiteModel(fleet, site_index, int(time.time() * 1000) - 3_600_000)
    out: list[tuple[str, bytes]] = []
    while len(out) < count:
        for index in range(len(model.machines)):
            out += [(m.topic, m.payload) for m in model.sample(index)]
    return out[:count]


class Stack:
    """CA, broker and certificates in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertificateAuthority.create(root / "ca")
        server = self.ca.issue_server("broker", root / "broker")
        self.device = self.ca.issue_client("site-00", root / "devices")
        self.reader = self.ca.issue_client(RULE_RUNNER_IDENTITY, root / "devices")
        self.port = free_port()
        self.broker = MosquittoProcess(
            BrokerConfig(port=self.port, data_dir=root / "mosquitto", ca_file=self.ca.ca_cert_path,
                         cert_file=server.cert_path, key_file=server.key_path, crl_file=self.ca.crl_path,
                         acl_file=root / "mosquitto" / "acl"),
            root / "mosquitto.log",
        )

    def context(self, cert_path: Path, key_path: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.ca_cert_path))
        context.load_cert_chain(str(cert_path), str(key_path))
        return context


def publish_all(stack: Stack, messages: list[tuple[str, bytes]], client_id: str) -> tuple[float, float]:
    """Publish at QoS 1 with a window of 100 released on PUBACK; returns (start, all-acknowledged) times."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.tls_set_context(stack.context(stack.device.cert_path, stack.device.key_path))
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    window = threading.Semaphore(100)
    done = threading.Event()
    acknowledged = [0]

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        acknowledged[0] += 1
        window.release()
        if acknowledged[0] == len(messages):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", stack.port)
    client.loop_start()
    started = time.monotonic()
    for topic, payload in messages:
        window.acquire()
        client.publish(topic, payload, qos=1)
    done.wait(600)
    finished = time.monotonic()
    client.disconnect()
    client.loop_stop()
    return started, finished


def archived_count(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("archive_messages_archived_total{"))


def run_once(stack: Stack, config: Config, messages: list[tuple[str, bytes]], run_id: str,
             s3_endpoint: str | None) -> Result:
    metrics_port = free_port()
    ready = stack.root / f"{run_id}.ready"
    if config.backend == "s3":
        archive_location = f"s3://bench-{run_id.lower()}"
        backend_args = ["--s3-endpoint-url", str(s3_endpoint), "--create-bucket"]
    else:
        archive_location = str(stack.root / "archives" / run_id)
        backend_args = []
    args = [sys.executable, "-m", "local_stack.rule_runner", "--endpoint", "127.0.0.1", "--port", str(stack.port),
            "--ca", str(stack.ca.ca_cert_path), "--cert", str(stack.reader.cert_path),
            "--key", str(stack.reader.key_path), "--client-id", f"bench-{run_id}", "--archive", archive_location,
            "--mode", config.mode, "--metrics-port", str(metrics_port), "--ready-file", str(ready),
            "--log-level", "WARNING", *backend_args, *config.extra]
    log = (stack.root / f"{run_id}.log").open("wb")
    runner = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **MOTO_ENV})
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if runner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rule runner did not start: {(stack.root / f'{run_id}.log').read_text()}")
            time.sleep(0.02)
        started, published_at = publish_all(stack, messages, f"site-00-bench-{run_id}")
        archived_at = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if archived_count(metrics_port) >= len(messages):
                archived_at = time.monotonic()
                break
            time.sleep(0.02)
        if archived_at is None:
            raise RuntimeError(f"{config.name}: not everything was archived in time")
        runner.send_signal(signal.SIGTERM)
        runner.wait(60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        log.close()
    if config.backend == "s3":
        from local_stack.archive import S3Archive

        archive = S3Archive(archive_location.removeprefix("s3://"), endpoint_url=s3_endpoint)
    else:
        from local_stack.archive import LocalArchive

        archive = LocalArchive(Path(archive_location))
    report = verify_archive(archive)
    return Result(
        published_per_s=len(messages) / (published_at - started),
        archived_per_s=len(messages) / (archived_at - started),
        objects=report.objects,
        missing=report.missing + max(0, len(messages) - report.unique),
        duplicates=report.duplicates,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--messages", type=int, default=60_000, help="messages per batched run")
    parser.add_argument("--direct-messages", type=int, default=3_000, help="messages per one-object run")
    parser.add_argument("--skip-s3", action="store_true")
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
    stack = Stack(root)
    stack.broker.start()
    moto: subprocess.Popen[bytes] | None = None
    s3_endpoint = None
    try:
        if not options.skip_s3:
            moto_port = free_port()
            moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                     "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_for_port(moto_port, timeout_s=20):
                raise RuntimeError("moto_server did not start")
            s3_endpoint = f"http://127.0.0.1:{moto_port}"
        biggest = max(config.messages for config in configs)
        corpus = payloads(biggest)
        size = statistics.mean(len(payload) for _, payload in corpus[:1000])
        print(f"payload ≈ {size:.0f} bytes; broker mTLS QoS 1 on 127.0.0.1:{stack.port};"
              f" {options.repeats} repeats, medians\n")
        print(f"{'configuration':40} {'published/s':>12} {'archived/s':>12} {'ratio':>6} {'objects':>8}"
              f" {'missing':>8} {'dups':>6}")
        for config in configs:
            results = [
                run_once(stack, config, corpus[: config.messages], f"{config.mode}{config.backend}{repeat}",
                         s3_endpoint)
                for repeat in range(options.repeats)
            ]
            print(
                f"{config.name:40} {statistics.median(r.published_per_s for r in results):>12,.0f}"
                f" {statistics.median(r.archived_per_s for r in results):>12,.0f}"
                f" {statistics.median(r.ratio for r in results):>6.2f}"
                f" {statistics.median(r.objects for r in results):>8,.0f}"
                f" {max(r.missing for r in results):>8} {max(r.duplicates for r in results):>6}",
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
