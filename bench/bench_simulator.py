"""Simulator benchmark: delivered msg/s against reference publishers, fleet scale, generation cost.

Everything runs against a local Mosquitto over mutual TLS; a `mosquitto_sub` process (the C
client, so counting costs the measured process nothing) counts what is delivered. Delivered msg/s
is measured the same way for every publisher: messages received between the first and the last
arrival at the subscriber. Each scenario is repeated and the medians and ratios are printed; it
asserts nothing, because this machine is shared and noisy (compare ratios from the same run).

    .venv/bin/python bench/bench_simulator.py [--quick] [--repeats 3] [--skip-scale] [--check] [--json F]

`--check` compares the ratios (and, with the scale scenario, the fleet's p99 and RSS) against the
goals in README.md's performance table and exits 1 if one is missed; `--json F` writes the results.

1. QoS 1: the full simulator (`--max-rate`: model, scheduler, metrics exporter on) vs a bare
   AWSIoTPythonSDK `publishAsync` loop with a window of 20, the same payloads. Goal >= 0.9x.
2. QoS 0: the simulator vs `mosquitto_pub -l` fed the same payloads. Goal >= 0.5x.
3. Fleet scale: 10,000 machines at 1 msg/s over >= 100 connections, QoS 1, per engine: loss,
   p99 scheduler lateness, peak RSS, CPU. Then 20,000 msg/s over 200 connections (fleet engine).
4. Model generation cost, µs per message.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from goals import check, finish, goals  # noqa: E402

from factory_core.fleet import FleetSettings  # noqa: E402
from local_stack.certificate_authority import CertificateAuthority  # noqa: E402
from local_stack.dynamic_security import BrokerAccess  # noqa: E402
from local_stack.identities import RULE_RUNNER_IDENTITY, device_identity, device_prefix  # noqa: E402
from local_stack.mosquitto import BrokerConfig, MosquittoProcess  # noqa: E402
from local_stack.ports import free_port  # noqa: E402
from simulator.dry_run import generate  # noqa: E402
from simulator.model.site import SiteModel  # noqa: E402

PYTHON = sys.executable
BENCH_TOPIC = "factory/simulator/site-00/line-01/bench-reference"
SUMMARY = re.compile(
    r"generated (?P<generated>\d+) messages \((?P<telemetry>\d+) telemetry\).*published (?P<published>\d+) .*"
    r"unsent at exit (?P<unsent>\d+); scheduler lag p50 (?P<p50>[\d.]+) ms p99 (?P<p99>[\d.]+) ms"
)


@dataclass
class Stack:
    directory: Path
    port: int
    ca: Path
    device_cert: Path
    device_key: Path
    device_dir: Path  # one certificate per simulator connection (the broker binds client id to CN)
    reader_cert: Path
    reader_key: Path
    broker: MosquittoProcess


@dataclass
class Delivery:
    delivered: int
    rate: float  # msg/s between first and last arrival
    publisher_stdout: str
    publisher_stderr: str
    peak_rss_mb: float
    cpu_percent: float
    cpu_s: float


# Enough certificates for the largest plan here (10,000 machines: 125 connections).
DEVICE_CONNECTIONS = 160
GENERATION = "g1"


def start_stack(directory: Path) -> Stack:
    ca = CertificateAuthority.create(directory / "ca")
    server = ca.issue_server("broker", directory / "broker")
    names = [device_identity(GENERATION, 0, n) for n in range(DEVICE_CONNECTIONS)]
    devices = [ca.issue_client(name, directory / "devices") for name in names]
    reader = ca.issue_client(RULE_RUNNER_IDENTITY, directory / "readers")
    port = free_port()
    config = BrokerConfig(
        port=port,
        data_dir=directory / "mosquitto",
        ca_file=ca.ca_cert_path,
        cert_file=server.cert_path,
        key_file=server.key_path,
        persistence=False,
        max_queued_messages=10_000_000,
        access=BrokerAccess(devices=dict.fromkeys(names, "site-00")),
    )
    broker = MosquittoProcess(config, directory / "mosquitto.log")
    broker.start()
    return Stack(
        directory,
        port,
        ca.ca_cert_path,
        devices[0].cert_path,
        devices[0].key_path,
        directory / "devices",
        reader.cert_path,
        reader.key_path,
        broker,
    )


def tls_flags(stack: Stack, cert: Path, key: Path) -> list[str]:
    return [
        "-h",
        "127.0.0.1",
        "-p",
        str(stack.port),
        "--cafile",
        str(stack.ca),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]


def simulator_command(stack: Stack, *args: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "simulator",
        "--endpoint",
        "127.0.0.1",
        "--port",
        str(stack.port),
        "--ca",
        str(stack.ca),
        "--cert-dir",
        str(stack.device_dir),
        "--client-id-prefix",
        device_prefix(GENERATION),
        *args,
    ]


def _rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def deliver(
    stack: Stack,
    command: list[str],
    qos: int,
    *,
    stdin_path: Path | None = None,
    timeout_s: float = 120,
    stop_after_s: float | None = None,
) -> Delivery:
    """Run a publisher while mosquitto_sub counts arrivals; time first to last arrival."""
    received = stack.directory / f"received-{time.monotonic_ns()}.txt"
    with received.open("wb") as sink:
        subscriber = subprocess.Popen(
            [
                "mosquitto_sub",
                *tls_flags(stack, stack.reader_cert, stack.reader_key),
                "-t",
                "factory/simulator/#",
                "-q",
                str(qos),
                "-i",
                f"bench-sub-{time.monotonic_ns()}",
            ],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
    time.sleep(0.7)  # subscribed
    stdin = stdin_path.open("rb") if stdin_path else subprocess.DEVNULL
    # CPU time of the publisher exactly: children's rusage grows when it is reaped (poll()).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    publisher = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = last = None
    size = 0
    peak_rss, cpu_s = 0.0, 0.0
    started = ended = time.monotonic()
    deadline = started + timeout_s
    next_stats = started
    while time.monotonic() < deadline:
        now = time.monotonic()
        current = received.stat().st_size
        if current != size:
            size = current
            first = first or now
            last = now
        if publisher.returncode is None:
            if stop_after_s is not None and now - started > stop_after_s and publisher.poll() is None:
                publisher.send_signal(signal.SIGTERM)  # a publisher behind schedule: drain and stop
                stop_after_s = None
            if publisher.poll() is None:
                if now >= next_stats:
                    peak_rss = max(peak_rss, _rss_mb(publisher.pid))
                    next_stats = now + 0.25
            else:
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                ended = now
        elif last is not None and now - last > 1.5:
            break
        time.sleep(0.005)
    wall = (ended if publisher.returncode is not None else time.monotonic()) - started
    if publisher.poll() is None:
        publisher.kill()
    out, err = publisher.communicate()
    subscriber.terminate()
    subscriber.wait()
    if stdin_path:
        stdin.close()  # type: ignore[union-attr]
    lines = received.read_bytes().count(b"\n")
    received.unlink()
    rate = (lines - 1) / (last - first) if first and last and last > first else 0.0
    return Delivery(lines, rate, out, err, peak_rss, 100 * cpu_s / wall if wall else 0.0, cpu_s)


def summary_of(stderr: str) -> dict[str, float]:
    match = SUMMARY.search(stderr)
    if not match:
        raise SystemExit(f"simulator did not finish cleanly:\n{stderr[-2000:]}")
    return {key: float(value) for key, value in match.groupdict().items()}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def throughput_fleet() -> FleetSettings:
    # 100 machines of the default mix; --max-rate ignores the interval.
    return FleetSettings(seed=11, lines_per_site=20)


def write_payloads(path: Path, count: int) -> float:
    """The simulator's own payloads (same fleet, same seed), one per line; returns the mean size."""
    fleet = throughput_fleet()
    sizes = 0
    with path.open("wb") as out:
        for written, payload in enumerate(generate(fleet, 0, 10_000_000.0), start=1):
            out.write(payload + b"\n")
            sizes += len(payload)
            if written >= count:
                break
    return sizes / count


def scenario_throughput(stack: Stack, qos: int, messages: int, repeats: int) -> float:
    """Prints the medians; returns the ratio simulator / reference (delivered msg/s)."""
    payloads = stack.directory / f"payloads-{qos}.txt"
    mean_size = write_payloads(payloads, messages)
    fleet = throughput_fleet()
    telemetry = round(messages * 0.99)  # --count counts telemetry; ground truth adds ~1 %
    metrics_port = free_port()
    sim_rates: list[float] = []
    ref_rates: list[float] = []
    sim_cpu: list[float] = []
    ref_cpu: list[float] = []
    losses: list[int] = []
    for _ in range(repeats):
        sim = deliver(
            stack,
            simulator_command(
                stack,
                "--max-rate",
                "--count",
                str(telemetry),
                "--qos",
                str(qos),
                "--seed",
                str(fleet.seed),
                "--lines",
                str(fleet.lines_per_site),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(metrics_port),
            ),
            qos,
        )
        summary = summary_of(sim.publisher_stderr)
        sim_rates.append(sim.rate)
        sim_cpu.append(1e6 * sim.cpu_s / max(1, sim.delivered))
        losses.append(int(summary["generated"]) - sim.delivered)
        if qos == 1:
            ref_cmd = [
                PYTHON,
                str(REPO_ROOT / "bench" / "simulator_references.py"),
                "sdk",
                "127.0.0.1",
                str(stack.port),
                str(stack.ca),
                str(stack.device_cert),
                str(stack.device_key),
                BENCH_TOPIC,
                str(payloads),
                "1",
                "20",
            ]
            ref = deliver(stack, ref_cmd, qos)
        else:
            ref_cmd = [
                "mosquitto_pub",
                *tls_flags(stack, stack.device_cert, stack.device_key),
                "-t",
                BENCH_TOPIC,
                "-q",
                "0",
                "-l",
                "-i",
                "bench-mosquitto-pub",
            ]
            ref = deliver(stack, ref_cmd, qos, stdin_path=payloads)
        ref_rates.append(ref.rate)
        ref_cpu.append(1e6 * ref.cpu_s / max(1, ref.delivered))
    reference = "AWSIoTPythonSDK publishAsync, window 20" if qos == 1 else "mosquitto_pub -l"
    goal = 0.9 if qos == 1 else 0.5
    ratio = median(sim_rates) / median(ref_rates) if median(ref_rates) else float("nan")
    print(f"QoS {qos}, {messages} messages of {mean_size:.0f} B mean, {repeats} run(s):")
    print(
        f"  simulator (model + metrics, --max-rate): {median(sim_rates):9.0f} msg/s delivered"
        f"  {median(sim_cpu):5.0f} CPU-µs/msg  (lost at subscriber: {max(losses)})"
    )
    print(f"  {reference:40s}: {median(ref_rates):9.0f} msg/s delivered  {median(ref_cpu):5.0f} CPU-µs/msg")
    print(f"  ratio {ratio:.2f}x (goal >= {goal}x)")
    return ratio


def scenario_scale(
    stack: Stack, engine: str, machines: int, interval_s: float, seconds: float
) -> dict[str, float]:
    per_line = machines // 10 // 4
    mix = f"cnc_mill={per_line},hydraulic_press={per_line},conveyor={per_line},air_compressor={per_line}"
    run = deliver(
        stack,
        simulator_command(
            stack,
            "--engine",
            engine,
            "--lines",
            "10",
            "--machines",
            mix,
            "--publish-interval",
            str(interval_s),
            "--duration",
            str(seconds),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
        ),
        1,
        timeout_s=seconds + 90,
        stop_after_s=seconds + 15,
    )
    summary = summary_of(run.publisher_stderr)
    plan = re.search(r"(\d+) connection\(s\)", run.publisher_stderr)
    result = {
        "machines": machines * 1.0,
        "rate_planned": machines / interval_s,
        "connections": float(plan[1]) if plan else 0.0,
        "generated": summary["generated"],
        "delivered": float(run.delivered),
        "lost": summary["generated"] - run.delivered,
        "on_time_share": summary["telemetry"] / (machines * seconds / interval_s),
        "p99_ms": summary["p99"],
        "p50_ms": summary["p50"],
        "rss_mb": run.peak_rss_mb,
        "cpu": run.cpu_percent,
        "cpu_us": 1e6 * run.cpu_s / max(1.0, summary["published"]),
        "rate": run.rate,
    }
    print(
        f"  {engine:5s} {machines:6d} machines every {interval_s:g} s"
        f" ({result['rate_planned']:.0f} msg/s) over"
        f" {result['connections']:.0f} connections: delivered {result['rate']:.0f} msg/s,"
        f" lost {result['lost']:.0f}, generated {100 * result['on_time_share']:.0f} % of the schedule,"
        f" lateness p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms,"
        f" peak RSS {result['rss_mb']:.0f} MB, CPU {result['cpu']:.0f} % ({result['cpu_us']:.0f} CPU-µs/msg)",
        flush=True,
    )
    return result


def held(result: dict[str, float]) -> bool:
    """On schedule: nothing lost, p99 lateness within README's fleet goal, the whole schedule generated."""
    p99_goal = next(goal for goal in goals("fleet") if goal.metric == "p99")
    return result["lost"] == 0 and p99_goal.met(result["p99_ms"] / 1000) and result["on_time_share"] >= 0.99


def scenario_model(repeats: int) -> None:
    fleet = FleetSettings(seed=3, lines_per_site=100)
    timings: list[float] = []
    for _ in range(repeats):
        model = SiteModel(fleet, 0, 0)
        count = 0
        started = time.perf_counter()
        for _round in range(5):
            for index in range(len(model.machines)):
                count += len(model.sample(index))
        timings.append((time.perf_counter() - started) / count * 1e6)
    print(
        f"model generation ({len(model.machines)} machines, default mix): {median(timings):.1f} µs/message"
        f" (median of {repeats}); bench/bench_model.py has the model's own breakdown"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run of each scenario")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--engines", default="fleet,sdk")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal in README.md is missed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results and verdicts here")
    args = parser.parse_args()
    for tool in ("mosquitto", "mosquitto_sub", "mosquitto_pub"):
        if shutil.which(tool) is None and not Path("/usr/sbin/mosquitto").exists():
            raise SystemExit(f"{tool} is not installed: apt-get install mosquitto mosquitto-clients")
    repeats = 1 if args.quick else args.repeats
    qos1_messages = 50_000 if args.quick else 100_000
    qos0_messages = 100_000 if args.quick else 200_000
    scale_seconds = 10.0 if args.quick else 20.0
    with tempfile.TemporaryDirectory(prefix="bench-simulator-") as tmp:
        stack = start_stack(Path(tmp))
        try:
            print(
                f"broker: mosquitto on 127.0.0.1:{stack.port}, mutual TLS; {os.cpu_count()} CPUs", flush=True
            )
            scenario_model(3 if args.quick else 5)
            measured: dict[str, dict[str, float]] = {
                "simulator-qos1": {"ratio": scenario_throughput(stack, 1, qos1_messages, repeats)},
                "simulator-qos0": {"ratio": scenario_throughput(stack, 0, qos0_messages, repeats)},
            }
            if not args.skip_scale:
                print(
                    f"fleet scale, QoS 1, {scale_seconds:g} s each (goal: zero loss, p99 < 250 ms,"
                    " RSS < 300 MB):",
                    flush=True,
                )
                largest = 0
                for engine in args.engines.split(","):
                    result = scenario_scale(stack, engine, 10_000, 1.0, scale_seconds)
                    if engine == "fleet":
                        measured["fleet"] = {"p99": result["p99_ms"] / 1000, "rss": result["rss_mb"]}
                    if engine == "fleet" and held(result):
                        largest = 10_000
                if largest:
                    for machines in (20_000,) if args.quick else (12_000, 16_000, 20_000):
                        if not held(scenario_scale(stack, "fleet", machines, 1.0, scale_seconds)):
                            break
                        largest = machines
                print(
                    "largest fleet held on schedule by one process (fleet engine, zero loss, p99 < 250 ms):"
                    f" {largest or 'less than 10000'} machines at 1 msg/s"
                )
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        finally:
            stack.broker.stop()
    verdicts = [verdict for row, values in measured.items() for verdict in check(row, values)]
    code = finish(verdicts, args.json, measured)
    return code if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
