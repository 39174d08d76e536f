"""The local stack's supervisor: owns every process, stops them in order, and serves scale/rotate/status.

One supervisor per state folder (an exclusive lock proves it). `up` runs it in the foreground, or
`up --detach` starts `python -m local_stack.supervisor` in its own session. The other verbs talk to
it over a Unix socket in the state folder, one JSON request per connection, answered with JSON
lines: `{"progress": "..."}` while working, then `{"ok": true, "result": ...}` or
`{"ok": false, "error": "...", "code": 2}`.

Processes are changed only by the supervisor's main thread (requests are queued to it), which also
keeps every child's parent-death signal valid. Nothing is restarted silently: an unexpected exit is
logged and shown in `status`, then the service is restarted (at most `RESTART_LIMIT` times a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import queue
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from factory_core import metric_catalog as catalog
from factory_core.errors import OperationFailed, UsageError
from factory_core.fleet import TOPIC_ROOT, site_id
from local_stack import grafana, prometheus
from local_stack import stack_config as config_module
from local_stack.certificate_authority import CA_CERT_FILE, CertificateAuthority, IssuedCertificate
from local_stack.mosquitto import RULE_RUNNER_IDENTITY, BrokerConfig, MosquittoProcess
from local_stack.paths import (
    BROKER,
    GRAFANA,
    PROJECT_DIR,
    PROMETHEUS,
    RULE_RUNNER,
    StatePaths,
    simulator_index,
    simulator_service,
)
from local_stack.ports import free_port, port_in_use, wait_for_port
from local_stack.processes import ManagedProcess, python_command, require_binary
from local_stack.rotation import DevicePki, Progress, RotationResult, interrupted_notice, rotate
from local_stack.stack_config import StackConfig
from local_stack.status_view import PipelineSampler, PipelineSnapshot, scrape, total

LOCK_FILE = "supervisor.lock"
READY_FILE = "rule-runner.ready"
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
SIMULATOR_STOP_TIMEOUT_S = 35.0  # the simulator flushes for at most 20 s and exits within 30 s
SIMULATOR_CONNECT_TIMEOUT_S = 30.0
SERVICE_START_TIMEOUT_S = 20.0
QUIET_TIMEOUT_S = 60.0  # at most this long waiting for the rule runner to archive the backlog
SAMPLE_INTERVAL_S = 1.0
# QoS 1 messages Mosquitto sends the rule runner before waiting for its PUBACKs. The rule runner
# acknowledges only after a batch is durable, so this is also its largest batch: 100 (Mosquitto's
# default) meant a gzip + fsync per 100 messages, which capped the archive near 4k msg/s here.
BROKER_INFLIGHT_TO_SUBSCRIBERS = 1000
HOST = "127.0.0.1"


class StopRequested(Exception):
    """The stack is shutting down; the running operation ends early (and stays resumable)."""


@dataclass
class Service:
    name: str
    kind: str  # broker | rule-runner | simulator | prometheus | grafana
    port: int | None  # the port that says it is up: broker TLS, exporter or HTTP
    build: Callable[[], ManagedProcess]
    process: ManagedProcess | None = None
    generation: str | None = None  # simulators: certificate generation in use
    restarts: int = 0
    restart_times: deque[float] = field(default_factory=lambda: deque(maxlen=RESTART_LIMIT))
    intentional_stop: bool = False
    gave_up: bool = False
    last_exit: int | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def describe(self, paths: StatePaths) -> dict[str, Any]:
        if self.running:
            state = "running"
        elif self.gave_up:
            state = f"failed (exit {self.last_exit})"
        elif self.intentional_stop:
            state = "stopped"
        else:
            state = f"exited ({self.last_exit})" if self.last_exit is not None else "starting"
        return {
            "name": self.name,
            "kind": self.kind,
            "state": state,
            "pid": self.process.pid if self.process and self.running else None,
            "port": self.port,
            "restarts": self.restarts,
            "generation": self.generation,
            "log": str(paths.log(self.name)),
        }


@dataclass
class Request:
    op: str
    args: dict[str, Any]
    replies: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def progress(self, message: str) -> None:
        self.replies.put({"progress": message})


def _timestamp() -> str:
    return time.strftime("%H:%M:%S")


class Supervisor:
    def __init__(self, stack: StackConfig, paths: StatePaths, progress: Progress = print) -> None:
        self.stack = stack
        self.paths = paths
        self.say = progress
        self.lock = threading.RLock()
        self.services: dict[str, Service] = {}
        self.ports: dict[str, int] = {}
        self.desired_simulators = stack.simulator_count
        self.phase = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self.first_archived_at: float | None = None
        self.events: deque[str] = deque(maxlen=50)
        self.snapshot = PipelineSnapshot()
        self.grafana_skipped: str | None = None
        self.pki: DevicePki | None = None
        self._sampler = PipelineSampler()
        self._requests: queue.Queue[Request] = queue.Queue()
        self._stop = threading.Event()
        self._server: _ControlServer | None = None
        self._lock_handle: IO[str] | None = None
        self._state_written = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        self.paths.create()
        handle = (self.paths.root / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(already_running_message(self.paths)) from None
        self._lock_handle = handle

    def start(self) -> None:
        """Bring the whole pipeline up; on failure everything started so far is stopped again."""
        if self._lock_handle is None:
            self.acquire_lock()
        self.phase = "starting"
        self._write_state(force=True)
        try:
            self._start()
        except BaseException as error:
            self.error = str(error) if isinstance(error, UsageError | OperationFailed) else repr(error)
            self.shutdown(quiet=True)
            self.phase = "failed"
            self._write_state(force=True, exit_code=2 if isinstance(error, UsageError) else 1)
            raise
        self.phase = "running"
        self._write_state(force=True)

    def _start(self) -> None:
        stack, paths = self.stack, self.paths
        # Binaries first: a missing one costs one line, before any file is written.
        require_binary("mosquitto")
        require_binary("prometheus")
        self._allocate_ports()
        self.pki = DevicePki.open(paths)
        notice = interrupted_notice(self.pki)
        if notice:
            self._event(notice)
        server_cert, reader_cert = self._service_certificates(self.pki.ca)
        paths.fleet_config.write_text(config_module.fleet_file_text(stack))
        self._start_control_server()

        broker = self._add(BROKER, "broker", self.ports[BROKER], lambda: self._broker_process(server_cert))
        self._launch(broker)
        self._wait_port(broker, SERVICE_START_TIMEOUT_S)
        # The archive's session must exist before any simulator publishes: the broker drops what
        # nobody subscribed to. Creating it here (a moment's work) lets the rule runner and the
        # simulators boot in parallel; the broker queues for the session until the runner attaches.
        ensure_archive_session(self.ports[BROKER], self.pki.ca.ca_cert_path, reader_cert)
        runner = self._add(
            RULE_RUNNER,
            "rule-runner",
            self.ports[RULE_RUNNER],
            lambda: self._rule_runner_process(reader_cert),
        )
        self._launch(runner)
        for index in range(self.desired_simulators):
            self._launch(self._add_simulator(index))

        prometheus_config = self._write_prometheus_config()
        self._launch(
            self._add(
                PROMETHEUS,
                "prometheus",
                self.ports[PROMETHEUS],
                lambda: prometheus.process(
                    prometheus_config,
                    paths.prometheus_data_dir,
                    self.ports[PROMETHEUS],
                    stack.local.prometheus_retention,
                    paths.log(PROMETHEUS),
                ),
            )
        )
        install = grafana.find_install()
        if install is None:
            self.grafana_skipped = grafana.SKIPPED_SHORT
            self.say(grafana.SKIPPED_HINT)
        else:
            self._launch(
                self._add(
                    GRAFANA,
                    "grafana",
                    self.ports[GRAFANA],
                    lambda: grafana.process(
                        install, paths.grafana_dir, self.ports[GRAFANA], paths.log(GRAFANA)
                    ),
                )
            )
        self._wait_rule_runner(runner)
        for index in range(self.desired_simulators):
            self._wait_port(self.services[simulator_service(index)], SERVICE_START_TIMEOUT_S)
        self._wait_port(self.services[PROMETHEUS], SERVICE_START_TIMEOUT_S)
        if GRAFANA in self.services:
            self._wait_port(self.services[GRAFANA], SERVICE_START_TIMEOUT_S)
        threading.Thread(target=self._sample_forever, name="sampler", daemon=True).start()

    def _allocate_ports(self) -> None:
        local = self.stack.local
        wanted = {
            BROKER: (local.broker_port, "brokerPort"),
            PROMETHEUS: (local.prometheus_port, "prometheusPort"),
            RULE_RUNNER: (local.metrics_port_base, "metricsPortBase"),
        }
        if grafana.find_install() is not None:
            wanted[GRAFANA] = (local.grafana_port, "grafanaPort")
        for index in range(self.desired_simulators):
            base = local.metrics_port_base
            wanted[simulator_service(index)] = (base + 1 + index if base else 0, "metricsPortBase")
        taken: set[int] = set()
        for name, (port, key) in wanted.items():
            if port == 0:
                port = _free_port_except(taken)
            elif port_in_use(port, HOST):
                raise UsageError(port_in_use_message(port, name, key, self.stack.path))
            taken.add(port)
            self.ports[name] = port

    def _service_certificates(self, ca: CertificateAuthority) -> tuple[IssuedCertificate, IssuedCertificate]:
        """The broker's server certificate and the rule runner's reader certificate (reused across runs)."""
        certs = self.paths.certs_dir
        issued = []
        for name, issue in (
            ("broker", lambda: ca.issue_server("broker", certs)),
            (RULE_RUNNER_IDENTITY, lambda: ca.issue_client(RULE_RUNNER_IDENTITY, certs)),
        ):
            cert_path, key_path = certs / f"{name}.pem", certs / f"{name}.key"
            if cert_path.exists() and key_path.exists() and _signed_by(cert_path, ca):
                issued.append(IssuedCertificate(cert_path, key_path, 0, name, ca.cert.not_valid_after_utc))
            else:
                issued.append(issue())
        return issued[0], issued[1]

    def serve(self) -> None:
        """Run requests and watch the children until a stop is requested."""
        while not self._stop.is_set():
            try:
                request = self._requests.get(timeout=0.25)
            except queue.Empty:
                request = None
            if request is not None:
                self._execute(request)
            self._watch_children()
            self._write_state()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def shutdown(self, *, quiet: bool = False) -> None:
        """Stop in dependency order, losing nothing: simulators drain, the archive catches up and
        flushes, the broker saves its sessions, then Prometheus and Grafana."""
        say = (lambda _message: None) if quiet else self.say
        self._stop.set()
        with self.lock:
            self.phase = "stopping"
        self._write_state(force=True)
        simulators = [s for s in self.services.values() if s.kind == "simulator"]
        if any(s.running for s in simulators):
            say(f"stopping {len(simulators)} simulator(s): draining in-flight messages")
        self._stop_services(simulators, SIMULATOR_STOP_TIMEOUT_S)
        runner = self.services.get(RULE_RUNNER)
        broker = self.services.get(BROKER)
        if runner and runner.running and broker and broker.running:
            say("rule runner: archiving what the broker still holds")
            self._wait_archive_quiet(runner)
        if runner:
            self._stop_services([runner], 30.0)
        if broker:
            say("broker: saving sessions")
            self._stop_services([broker], 30.0)
        self._stop_services([s for s in self.services.values() if s.kind in ("prometheus", "grafana")], 20.0)
        if self._server is not None:
            self._server.close()
            self._server = None
        with self.lock:
            self.phase = "stopped" if self.phase == "stopping" else self.phase
        self._write_state(force=True)
        if not quiet:
            say("stopped; the archive, logs and certificates stay in " + str(self.paths.root))
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def kill_everything(self) -> None:
        """Second Ctrl-C: no draining, no saving."""
        for service in self.services.values():
            service.intentional_stop = True
            if service.process is not None:
                service.process.kill()

    # -- services --------------------------------------------------------------------------------

    def _add(self, name: str, kind: str, port: int | None, build: Callable[[], ManagedProcess]) -> Service:
        service = Service(name, kind, port, build)
        with self.lock:
            self.services[name] = service
        return service

    def _launch(self, service: Service) -> None:
        service.intentional_stop = False
        service.process = service.build()
        service.process.start()

    def _wait_port(self, service: Service, timeout_s: float) -> None:
        assert service.port is not None and service.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not service.process.running():
                raise self._start_failure(service)
            if wait_for_port(service.port, HOST, 0.2):
                return
        service.process.kill()
        raise OperationFailed(
            f"{service.name} did not open port {service.port} within {timeout_s:g} s: "
            f"{service.process.log_tail()}; see {service.process.log_path}"
        )

    def _start_failure(self, service: Service) -> Exception:
        assert service.process is not None
        code = service.process.returncode
        tail = service.process.log_tail()
        message = f"{service.name} exited during start (exit {code}): {tail}; see {service.process.log_path}"
        return UsageError(message) if code == 2 else OperationFailed(message)

    def _stop_services(self, services: list[Service], timeout_s: float) -> None:
        running = [s for s in services if s.running]
        for service in services:
            service.intentional_stop = True
        for service in running:
            assert service.process is not None
            service.process.terminate()
        for service in running:
            assert service.process is not None
            service.process.stop(timeout_s)
            service.last_exit = service.process.returncode
            if service.last_exit not in (0, None):
                self._event(
                    f"{service.name} exited with code {service.last_exit} while stopping; "
                    f"see {service.process.log_path}"
                )

    def _broker_process(self, server_cert: IssuedCertificate) -> ManagedProcess:
        assert self.pki is not None
        settings = self.stack.local.mosquitto
        config = BrokerConfig(
            port=self.ports[BROKER],
            data_dir=self.paths.broker_dir,
            ca_file=self.pki.ca.ca_cert_path,
            cert_file=server_cert.cert_path,
            key_file=server_cert.key_path,
            crl_file=self.pki.ca.crl_path,
            acl_file=self.paths.broker_dir / "acl",
            persistence=settings.persistence,
            autosave_interval_s=settings.autosave_interval_s,
            max_inflight_messages=BROKER_INFLIGHT_TO_SUBSCRIBERS,
        )
        return MosquittoProcess(
            config, self.paths.log(BROKER), name=BROKER, stop_timeout_s=30.0, ready_timeout_s=None
        )

    def _broker_client_args(self, identity: IssuedCertificate, service_name: str) -> list[str]:
        """The flags every MQTT client service shares: the broker over mutual TLS with its own
        certificate, and its Prometheus exporter on the port allocated to it."""
        assert self.pki is not None
        return [
            "--endpoint",
            HOST,
            "--port",
            str(self.ports[BROKER]),
            "--ca",
            str(self.pki.ca.ca_cert_path),
            "--cert",
            str(identity.cert_path),
            "--key",
            str(identity.key_path),
            "--metrics-host",
            HOST,
            "--metrics-port",
            str(self.ports[service_name]),
        ]

    def _rule_runner_process(self, reader_cert: IssuedCertificate) -> ManagedProcess:
        assert self.pki is not None
        settings = self.stack.local
        ready_file = self.paths.root / READY_FILE
        ready_file.unlink(missing_ok=True)
        argv = python_command(
            "local_stack.rule_runner",
            *self._broker_client_args(reader_cert, RULE_RUNNER),
            "--flush-interval",
            str(settings.rule_runner.flush_interval_s),
            "--max-batch",
            str(settings.rule_runner.batch_max_messages),
            "--receive-window",
            str(BROKER_INFLIGHT_TO_SUBSCRIBERS),
            "--ready-file",
            str(ready_file),
        )
        environment = _child_environment()
        if settings.archive.s3 is not None:
            argv += [
                "--archive",
                f"s3://{settings.archive.s3.bucket}",
                "--s3-endpoint-url",
                settings.archive.s3.endpoint,
                "--create-bucket",
            ]
            environment.setdefault("AWS_DEFAULT_REGION", settings.archive.s3.region)
        else:
            folder = self.stack.archive_folder(self.paths.root)
            assert folder is not None
            argv += ["--archive", str(folder)]
        return ManagedProcess(
            RULE_RUNNER, argv, self.paths.log(RULE_RUNNER), env=environment, cwd=PROJECT_DIR
        )

    def _wait_rule_runner(self, runner: Service) -> None:
        ready_file = self.paths.root / READY_FILE
        deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
        assert runner.process is not None
        while time.monotonic() < deadline:
            if not runner.process.running():
                raise self._start_failure(runner)
            if ready_file.exists():
                return
            time.sleep(0.05)
        raise OperationFailed(
            f"the rule runner did not subscribe within {SERVICE_START_TIMEOUT_S:g} s: "
            f"{runner.process.log_tail()}; see {runner.process.log_path}"
        )

    def _add_simulator(self, index: int, generation: str | None = None) -> Service:
        name = simulator_service(index)
        if name not in self.ports:
            base = self.stack.local.metrics_port_base
            port = base + 1 + index if base else _free_port_except(set(self.ports.values()))
            if port_in_use(port, HOST):
                raise UsageError(port_in_use_message(port, name, "metricsPortBase", self.stack.path))
            self.ports[name] = port
        assert self.pki is not None
        service = self._add(name, "simulator", self.ports[name], lambda: self._simulator_process(service))
        service.generation = generation or self.pki.current_generation
        return service

    def _simulator_process(self, service: Service) -> ManagedProcess:
        assert self.pki is not None and service.generation is not None
        index = simulator_index(service.name)
        assert index is not None
        device = self.pki.device(index, service.generation)
        argv = python_command(
            "simulator",
            "--config",
            str(self.paths.fleet_config),
            "--site-index",
            str(index),
            *self._broker_client_args(device, service.name),
            "--client-id-prefix",
            "",
            # Drained simulators checkpoint their model here and resume from it: `seq` continues.
            "--state-file",
            str(self.paths.simulator_state(index)),
        )
        return ManagedProcess(
            service.name,
            argv,
            self.paths.log(service.name),
            env=_child_environment(),
            cwd=PROJECT_DIR,
            stop_timeout_s=SIMULATOR_STOP_TIMEOUT_S,
        )

    def _wait_connected(self, service: Service, timeout_s: float) -> None:
        """A simulator is steady once every planned MQTT connection is up."""
        assert service.port is not None and service.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not service.process.running():
                raise self._start_failure(service)
            samples = scrape(service.port)
            if samples is not None:
                planned = total(samples, catalog.CONNECTIONS_PLANNED.name)
                if planned > 0 and total(samples, catalog.CONNECTIONS_UP.name) >= planned:
                    return
            time.sleep(0.1)
        raise OperationFailed(
            f"{service.name} did not connect within {timeout_s:g} s: {service.process.log_tail()};"
            f" see {service.process.log_path}"
        )

    def _watch_children(self) -> None:
        for service in list(self.services.values()):
            if service.process is None or service.intentional_stop or service.gave_up or service.running:
                continue
            service.last_exit = service.process.returncode
            now = time.monotonic()
            recent = [t for t in service.restart_times if now - t < RESTART_WINDOW_S]
            if len(recent) >= RESTART_LIMIT:
                service.gave_up = True
                self._event(
                    f"{service.name} exited (code {service.last_exit}) {RESTART_LIMIT} times within "
                    f"{RESTART_WINDOW_S:g} s; not restarting it: {service.process.log_tail()}"
                )
                continue
            self._event(f"{service.name} exited unexpectedly (code {service.last_exit}); restarting it")
            service.restarts += 1
            service.restart_times.append(now)
            if service.kind == "simulator":
                self._sampler.forget(service.name)
            try:
                self._launch(service)
            except (OSError, UsageError) as error:
                service.gave_up = True
                self._event(f"{service.name} could not be restarted: {error}")

    def _wait_archive_quiet(self, runner: Service) -> None:
        """Wait until the rule runner has archived everything (its counters stop moving)."""
        assert runner.port is not None
        # The rule runner writes at least every flush interval: quiet for longer means done.
        quiet_for = self.stack.local.rule_runner.flush_interval_s + 0.5
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        last: float | None = None
        last_change = time.monotonic()
        while time.monotonic() < deadline and runner.running:
            samples = scrape(runner.port)
            if samples is not None:
                seen = total(samples, catalog.ARCHIVED.name) + total(samples, catalog.QUARANTINED.name)
                if seen != last:
                    last, last_change = seen, time.monotonic()
            if time.monotonic() - last_change >= quiet_for:
                return
            time.sleep(0.2)

    # -- sampling and state ----------------------------------------------------------------------

    def _sample_forever(self) -> None:
        while not self._stop.is_set():
            exporters = {
                name: service.port
                for name, service in list(self.services.items())
                if service.kind in ("simulator", "rule-runner") and service.port and service.running
            }
            snapshot = self._sampler.sample(exporters)
            first = False
            with self.lock:
                self.snapshot = snapshot
                if self.first_archived_at is None and snapshot.archived_total > 0:
                    self.first_archived_at = time.time()
                    first = True
            if first:
                self._event(
                    f"pipeline up: first message archived {time.time() - self.started_at:.1f} s after start"
                )
            # Faster until the first message is archived: `up --detach` waits for exactly that.
            self._stop.wait(SAMPLE_INTERVAL_S if self.first_archived_at else 0.2)

    def _event(self, message: str) -> None:
        line = f"{_timestamp()} {message}"
        with self.lock:
            self.events.append(line)
        self.say(message)

    def outputs(self) -> dict[str, Any]:
        return stack_outputs(
            self.stack,
            self.paths,
            self.ports,
            self.grafana_skipped,
            self.desired_simulators,
            self.pki.current_generation if self.pki else None,
        )

    def status(self) -> dict[str, Any]:
        with self.lock:
            services = [service.describe(self.paths) for service in self.services.values()]
            simulators_up = sum(1 for s in self.services.values() if s.kind == "simulator" and s.running)
            record = self.pki.record if self.pki else None
            return {
                "stack": "local",
                "running": self.phase in ("starting", "running"),
                "phase": self.phase,
                "supervisorPid": os.getpid(),
                "startedAt": self.started_at,
                "uptimeS": time.time() - self.started_at,
                "firstArchivedAfterS": (self.first_archived_at - self.started_at)
                if self.first_archived_at
                else None,
                "simulators": {"desired": self.desired_simulators, "up": simulators_up},
                "generation": self.pki.current_generation if self.pki else None,
                "rotation": {
                    "from": record.from_generation,
                    "to": record.to_generation,
                    "step": record.phase.value,
                }
                if record
                else None,
                "pipeline": self.snapshot.as_dict(),
                "services": services,
                "events": list(self.events),
                "error": self.error,
            }

    def _write_state(self, *, force: bool = False, exit_code: int | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._state_written < 1.0:
            return
        self._state_written = now
        document = self.status()
        document["outputs"] = self.outputs()
        document["controlSocket"] = str(self.paths.control_socket)
        document["pids"] = [s.process.pid for s in self.services.values() if s.process and s.running]
        if exit_code is not None:
            document["exitCode"] = exit_code
        temporary = self.paths.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2))
        temporary.replace(self.paths.state_file)

    # -- requests --------------------------------------------------------------------------------

    def _start_control_server(self) -> None:
        self._server = _ControlServer(self.paths.control_socket, self)

    def submit(self, request: Request) -> None:
        self._requests.put(request)

    def _execute(self, request: Request) -> None:
        try:
            if request.op == "scale":
                result: Any = self.scale(int(request.args["simulators"]), request.progress)
            elif request.op == "rotate":
                result = self.rotate(
                    request.progress,
                    rollback=bool(request.args.get("rollback")),
                    stop_after=request.args.get("stop_after"),
                ).as_dict()
            elif request.op == "restart":
                result = self.restart(str(request.args["service"]), request.progress)
            else:
                raise UsageError(f"unknown request {request.op!r}")
        except UsageError as error:
            request.replies.put({"ok": False, "error": str(error), "code": 2})
        except (OperationFailed, StopRequested) as error:
            request.replies.put({"ok": False, "error": str(error) or "the stack is stopping", "code": 1})
        except Exception as error:  # a bug must not take the whole stack down with it
            self._event(f"request {request.op} failed: {error!r}")
            request.replies.put({"ok": False, "error": f"{request.op} failed: {error!r}", "code": 1})
        else:
            request.replies.put({"ok": True, "result": result})
        self._write_state(force=True)

    def scale(self, count: int, progress: Progress) -> dict[str, Any]:
        config_module.check_simulator_count(count, "--simulators", "choose a count in that range")
        current = sorted(
            i
            for s in self.services.values()
            if s.kind == "simulator" and (i := simulator_index(s.name)) is not None
        )
        before = len(current)
        if count > before:
            started = [self._add_simulator(index) for index in range(before, count)]
            for service in started:
                progress(
                    f"starting {service.name} ({site_id(simulator_index(service.name) or 0)}, "
                    f"certificate {service.generation})"
                )
                self._launch(service)
            try:
                for service in started:
                    self._wait_port(service, SERVICE_START_TIMEOUT_S)
                    self._wait_connected(service, SIMULATOR_CONNECT_TIMEOUT_S)
            except (OperationFailed, UsageError):
                # All or nothing: the fleet stays as it was, and so do Prometheus and the config.
                self._remove_simulators(started)
                raise
        elif count < before:
            leaving = [self.services[simulator_service(index)] for index in current[count:]]
            progress(f"draining {', '.join(s.name for s in leaving)}")
            self._remove_simulators(leaving)
        self.desired_simulators = count
        self._reconfigure_prometheus(progress)
        changed = config_module.record_simulator_count(self.stack.path, count)
        if changed:
            progress(f"recorded iotfactory:simulatorCount: {count} in {self.stack.path}")
        return {"simulators": count, "before": before, "configFile": str(self.stack.path)}

    def _remove_simulators(self, services: list[Service]) -> None:
        self._stop_services(services, SIMULATOR_STOP_TIMEOUT_S)
        with self.lock:
            for service in services:
                self.services.pop(service.name, None)
                self.ports.pop(service.name, None)

    def _write_prometheus_config(self) -> Path:
        targets = prometheus.ScrapeTargets(
            simulators=tuple(
                f"{HOST}:{self.ports[simulator_service(index)]}" for index in range(self.desired_simulators)
            ),
            archive=f"{HOST}:{self.ports[RULE_RUNNER]}",
        )
        return prometheus.write_config(
            self.paths.root,
            targets,
            self.stack.local.scrape_interval_s,
            prometheus.url(self.ports[PROMETHEUS]),
        )

    def _reconfigure_prometheus(self, progress: Progress) -> None:
        self._write_prometheus_config()
        service = self.services.get(PROMETHEUS)
        if service is None or service.process is None or not service.running:
            return
        service.process.signal(signal.SIGHUP)
        expected = [f"{HOST}:{self.ports[simulator_service(i)]}" for i in range(self.desired_simulators)]
        if prometheus.wait_for_targets(self.ports[PROMETHEUS], expected, 15.0):
            progress(f"prometheus: scraping {len(expected)} simulator(s)")
        else:
            self._event("prometheus did not pick up the new targets; see " + str(self.paths.log(PROMETHEUS)))

    def rotate(
        self, progress: Progress, *, rollback: bool = False, stop_after: str | None = None
    ) -> RotationResult:
        assert self.pki is not None
        return rotate(
            self.pki,
            _RunningStack(self),
            progress,
            rollback=rollback,
            stop_after=stop_after,
            should_stop=lambda: self._stop.is_set(),
        )

    def roll_simulator(self, service: Service, generation: str, progress: Progress) -> None:
        """Drain one simulator and start it again on `generation`; its checkpoint keeps `seq` going."""
        if self._stop.is_set():
            raise StopRequested("the stack is stopping; the rotation stays recorded and resumes later")
        progress(f"{service.name}: draining, then restarting with certificate {generation}")
        self._stop_services([service], SIMULATOR_STOP_TIMEOUT_S)
        self._sampler.forget(service.name)
        service.generation = generation
        self._launch(service)
        self._wait_port(service, SERVICE_START_TIMEOUT_S)
        self._wait_connected(service, SIMULATOR_CONNECT_TIMEOUT_S)

    def reload_broker(self) -> None:
        broker = self.services.get(BROKER)
        if broker is not None and broker.process is not None and broker.running:
            broker.process.signal(signal.SIGHUP)
            # Mosquitto re-reads the CRL on its next loop; give it that moment before callers test.
            time.sleep(0.3)

    def restart(self, name: str, progress: Progress) -> dict[str, Any]:
        """Stop one service cleanly and start it again (operators, and tests of recovery)."""
        service = self.services.get(name)
        if service is None:
            raise UsageError(f"no service {name!r}; services: {', '.join(self.services)}")
        progress(f"restarting {name}")
        self._stop_services([service], SIMULATOR_STOP_TIMEOUT_S)
        self._sampler.forget(name)
        self._launch(service)
        if name == RULE_RUNNER:
            self._wait_rule_runner(service)
        elif service.port is not None:
            self._wait_port(service, SERVICE_START_TIMEOUT_S)
        return {"service": name, "pid": service.process.pid if service.process else None}


class _RunningStack:
    """The supervisor as the rotation's runtime."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def roll_simulators(self, generation: str, progress: Progress) -> None:
        simulators = sorted(
            (s for s in self.supervisor.services.values() if s.kind == "simulator"),
            key=lambda s: simulator_index(s.name) or 0,
        )
        for service in simulators:
            if service.generation != generation:
                self.supervisor.roll_simulator(service, generation, progress)

    def reload_broker(self) -> None:
        self.supervisor.reload_broker()

    def site_indexes(self) -> list[int]:
        return list(range(self.supervisor.desired_simulators))


# -- control channel -----------------------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        supervisor = self.server.supervisor
        try:
            request = json.loads(self.rfile.readline(65536) or b"{}")
            op = str(request.get("op", ""))
        except (json.JSONDecodeError, AttributeError):
            self._send({"ok": False, "error": "requests are one JSON object per line", "code": 2})
            return
        if op == "status":
            self._send({"ok": True, "result": supervisor.status()})
            return
        if op == "outputs":
            self._send({"ok": True, "result": supervisor.outputs()})
            return
        if op == "stop":
            supervisor.request_stop()
            self._send({"ok": True, "result": {"stopping": True, "pid": os.getpid()}})
            return
        if supervisor.stop_requested:
            self._send({"ok": False, "error": "the stack is stopping", "code": 1})
            return
        pending = Request(op, {k: v for k, v in request.items() if k != "op"})
        supervisor.submit(pending)
        while True:
            reply = pending.replies.get()
            self._send(reply)
            if "ok" in reply:
                return

    def _send(self, document: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(document).encode() + b"\n")
            self.wfile.flush()


class _ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder = path.parent.stat()
        if folder.st_uid != os.getuid() or folder.st_mode & 0o077:
            raise UsageError(
                f"{path.parent} must belong to you and be private (mode 0700) to hold the control socket;"
                " fix it, or use a shorter IOTFACTORY_STATE_DIR"
            )
        path.unlink(missing_ok=True)
        # The socket starts out private: 0o177 leaves read/write for its owner only.
        previous = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(previous)
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


def request(
    paths: StatePaths, op: str, progress: Progress | None = None, timeout_s: float = 600.0, **args: Any
) -> Any:
    """Send one request to the running supervisor; progress lines go to `progress`."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout_s)
    try:
        connection.connect(str(paths.control_socket))
    except OSError:
        connection.close()
        raise OperationFailed(
            f"the local stack's supervisor does not answer on {paths.control_socket}; "
            "see `python cli.py status --stack local`"
        ) from None
    with connection, connection.makefile("rwb") as stream:
        stream.write(json.dumps({"op": op, **args}).encode() + b"\n")
        stream.flush()
        for line in _lines(stream):
            reply = json.loads(line)
            if "progress" in reply:
                if progress is not None:
                    progress(str(reply["progress"]))
                continue
            if reply.get("ok"):
                return reply.get("result")
            message = str(reply.get("error", "request failed"))
            raise UsageError(message) if reply.get("code") == 2 else OperationFailed(message)
    raise OperationFailed("the supervisor closed the connection without an answer (is it stopping?)")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        line = stream.readline()
        if not line:
            return
        yield line


# -- shared helpers ------------------------------------------------------------------------------


def is_running(paths: StatePaths) -> bool:
    """True while a supervisor holds the state folder's lock (it is released when it dies)."""
    lock_path = paths.root / LOCK_FILE
    if not lock_path.exists():
        return False
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_state(paths: StatePaths) -> dict[str, Any] | None:
    try:
        return dict(json.loads(paths.state_file.read_text()))
    except (OSError, ValueError):
        return None


def already_running_message(paths: StatePaths) -> str:
    state = read_state(paths) or {}
    pid = state.get("supervisorPid")
    return (
        f"the local stack is already running (supervisor pid {pid}, state in {paths.root}); "
        "see `python cli.py status --stack local`, or stop it with Ctrl-C in its terminal or "
        "`python cli.py destroy --stack local`"
    )


def port_in_use_message(port: int, service: str, key: str, config_path: Path) -> str:
    hint = {
        PROMETHEUS: " (a system Prometheus service?)",
        GRAFANA: " (a system Grafana service?)",
    }.get(service, "")
    return (
        f"port {port} for {service} is already in use{hint}; stop what listens there or set "
        f"iotfactory:local.{key} in {config_path} (0 picks a free port)"
    )


def stack_outputs(
    stack: StackConfig,
    paths: StatePaths,
    ports: dict[str, int],
    grafana_skipped: str | None,
    simulator_count: int,
    generation: str | None,
) -> dict[str, Any]:
    archive_folder = stack.archive_folder(paths.root)
    s3 = stack.local.archive.s3
    ca = paths.ca_dir / CA_CERT_FILE
    return {
        "stack": "local",
        "brokerUrl": f"mqtts://{HOST}:{ports[BROKER]}" if BROKER in ports else None,
        "brokerEndpoint": HOST,
        "brokerPort": ports.get(BROKER),
        "caCertificate": str(ca),
        "prometheusUrl": prometheus.url(ports[PROMETHEUS]) if PROMETHEUS in ports else None,
        "grafanaUrl": grafana.url(ports[GRAFANA]) if GRAFANA in ports else None,
        "grafanaPasswordFile": str(grafana.password_file(paths.grafana_dir)) if GRAFANA in ports else None,
        "grafanaSkipped": grafana_skipped,
        "archive": str(archive_folder)
        if archive_folder
        else f"s3://{s3.bucket} at {s3.endpoint}"
        if s3
        else None,
        "logsDir": str(paths.logs_dir),
        "stateDir": str(paths.root),
        "configFile": str(stack.path),
        "simulatorCount": simulator_count,
        "certificateGeneration": generation,
        "metricsPorts": {
            name: port for name, port in ports.items() if name not in (BROKER, PROMETHEUS, GRAFANA)
        },
    }


def ensure_archive_session(
    broker_port: int, ca_file: Path, reader: IssuedCertificate, timeout_s: float = 10.0
) -> None:
    """Create (or keep) the rule runner's persistent session: clean session off, QoS 1 subscription.

    Same client id and identity as the rule runner, so when it connects the broker resumes this
    session and delivers what it queued meanwhile.
    """
    import ssl

    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=RULE_RUNNER_IDENTITY,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(reader.cert_path), str(reader.key_path))
    client.tls_set_context(context)
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
        elif flags.session_present:
            subscribed.set()
        else:
            c.subscribe(f"{TOPIC_ROOT}/#", qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: subscribed.set()
    try:
        client.connect(HOST, broker_port, keepalive=30)
        client.loop_start()
        if not subscribed.wait(timeout_s) or refused:
            raise OperationFailed(
                f"could not create the archive's session on the broker ({', '.join(refused) or 'no answer'});"
                " see the broker log"
            )
    except (OSError, ssl.SSLError) as error:
        raise OperationFailed(f"could not reach the broker on {HOST}:{broker_port}: {error}") from None
    finally:
        client.disconnect()
        client.loop_stop()


def _free_port_except(taken: set[int]) -> int:
    while True:
        port = free_port(HOST)
        if port not in taken:
            return port


def _signed_by(cert_path: Path, ca: CertificateAuthority) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, Exception):
        return False
    return True


def _child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PROJECT_DIR), environment.get("PYTHONPATH", "")) if part
    )
    # Log lines reach the log files as they happen, not when a buffer fills.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


# -- detached entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_stack.supervisor",
        description="Run the local stack in this process (what `cli.py up --stack local --detach` starts).",
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)

    try:
        stack = config_module.load(args.config.resolve())
        supervisor = Supervisor(stack, StatePaths(args.state_dir.resolve()), say)
        supervisor.acquire_lock()
    except UsageError as error:
        say(f"error: {error}")
        return 2

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        supervisor.request_stop()

    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, on_signal)
    try:
        supervisor.start()
    except UsageError as error:
        say(f"error: {error}")
        return 2
    except OperationFailed as error:
        say(f"error: {error}")
        return 1
    say(f"running; control socket {supervisor.paths.control_socket}")
    try:
        supervisor.serve()
    finally:
        supervisor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
