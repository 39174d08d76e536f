"""The local stack's services: what each one is, its port, how its process is built, when it is
ready, how long it may take to stop, and what happens when it exits on its own.

`SPECS` is the table; `ServiceBuilder` turns the stack config into `Service`s of each kind; a
`Service` carries one process and its restart bookkeeping; a `ServiceSet` launches, stops and
restarts them by their specs. Which service starts when, and in what order they stop, is the
supervisor's business.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path

from factory_core.errors import UsageError
from local_stack import alertmanager, grafana, grafana_container, prometheus
from local_stack.certificate_authority import IssuedCertificate
from local_stack.dynamic_security import BrokerAccess
from local_stack.identities import device_prefix
from local_stack.mosquitto import BrokerConfig, MosquittoProcess
from local_stack.paths import (
    ALERTMANAGER,
    BROKER,
    GRAFANA,
    PROJECT_DIR,
    PROMETHEUS,
    RULE_RUNNER,
    StatePaths,
    simulator_index,
    simulator_service,
)
from local_stack.ports import HOST, free_port, port_in_use
from local_stack.processes import ManagedProcess, python_command
from local_stack.readiness import AllConnectionsUp, FileAppears, PortOpen, Readiness, Stage, wait_ready
from local_stack.rotation import DevicePki
from local_stack.stack_config import StackConfig
from local_stack.status_document import ServiceReport

READY_FILE = "rule-runner.ready"
FINAL_METRICS_FILE = "rule-runner.final.prom"
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
SERVICE_START_TIMEOUT_S = 20.0
SIMULATOR_CONNECT_TIMEOUT_S = 30.0
SIMULATOR_STOP_TIMEOUT_S = 35.0  # the simulator flushes for at most 20 s and exits within 30 s
# QoS 1 messages Mosquitto sends the rule runner before waiting for its PUBACKs. The rule runner
# acknowledges only after a batch is durable, so this is also its largest batch: 100 (Mosquitto's
# default) meant a gzip + fsync per 100 messages, which capped the archive near 4k msg/s here.
BROKER_INFLIGHT_TO_SUBSCRIBERS = 1000


class Kind(StrEnum):
    BROKER = "broker"
    RULE_RUNNER = "rule-runner"
    SIMULATOR = "simulator"
    PROMETHEUS = "prometheus"
    ALERTMANAGER = "alertmanager"
    GRAFANA = "grafana"


@dataclass(frozen=True)
class RestartPolicy:
    """An unexpected exit is logged and restarted, but at most `limit` times within `window_s`:
    a service that keeps crashing is left stopped and shown as failed instead of looping."""

    limit: int = RESTART_LIMIT
    window_s: float = RESTART_WINDOW_S

    def allows(self, restart_times: Sequence[float], now: float) -> bool:
        return sum(1 for t in restart_times if now - t < self.window_s) < self.limit


@dataclass(frozen=True)
class KindSpec:
    port_key: str  # the key under iotfactory:local in the stack file that sets its port
    stop_timeout_s: float  # SIGTERM, then SIGKILL after this long
    restart: RestartPolicy = RestartPolicy()
    exporter: bool = False  # its metrics feed the pipeline totals


SPECS: dict[Kind, KindSpec] = {
    Kind.BROKER: KindSpec("brokerPort", stop_timeout_s=30.0),
    Kind.RULE_RUNNER: KindSpec("metricsPortBase", stop_timeout_s=30.0, exporter=True),
    Kind.SIMULATOR: KindSpec("metricsPortBase", stop_timeout_s=SIMULATOR_STOP_TIMEOUT_S, exporter=True),
    Kind.PROMETHEUS: KindSpec("prometheusPort", stop_timeout_s=20.0),
    Kind.ALERTMANAGER: KindSpec("alertmanagerPort", stop_timeout_s=20.0),
    Kind.GRAFANA: KindSpec("grafanaPort", stop_timeout_s=20.0),
}


@dataclass
class Service:
    """One service of the stack: how to build its process, the process itself, and its history."""

    name: str
    kind: Kind
    port: int | None  # the port that says it is up: broker TLS, exporter or HTTP
    build: Callable[[], ManagedProcess]
    readiness: Readiness
    process: ManagedProcess | None = None
    generation: str | None = None  # simulators: certificate generation in use
    restarts: int = 0
    restart_times: deque[float] = field(init=False)  # the most recent ones its policy counts
    intentional_stop: bool = False
    gave_up: bool = False
    last_exit: int | None = None
    final_metrics: Path | None = None  # where the process leaves its final counts when it exits cleanly

    def __post_init__(self) -> None:
        self.restart_times = deque(maxlen=self.spec.restart.limit)

    @property
    def spec(self) -> KindSpec:
        return SPECS[self.kind]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def launch(self) -> None:
        self.intentional_stop = False
        if self.final_metrics is not None:
            self.final_metrics.unlink(missing_ok=True)  # only this process's own counts may count
        self.process = self.build()
        self.process.start()

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_ready(self.name, self.process, self.readiness)

    def exited_unexpectedly(self) -> bool:
        return self.process is not None and not (self.intentional_stop or self.gave_up or self.running)

    def report(self, paths: StatePaths) -> ServiceReport:
        if self.running:
            state = "running"
        elif self.gave_up:
            state = f"failed (exit {self.last_exit})"
        elif self.intentional_stop:
            state = "stopped"
        else:
            state = f"exited ({self.last_exit})" if self.last_exit is not None else "starting"
        return ServiceReport(
            name=self.name,
            kind=self.kind.value,
            state=state,
            pid=self.process.pid if self.process and self.running else None,
            port=self.port,
            restarts=self.restarts,
            generation=self.generation,
            log=str(paths.log(self.name)),
        )


class ServiceSet:
    """The services one supervisor runs, and what happens to them: launch, stop, restart on exit.

    Changed only by the supervisor's main thread; read by other threads as copies taken under `lock`.
    """

    def __init__(
        self, on_event: Callable[[str], None], before_relaunch: Callable[[str], None],
        on_final_counts: Callable[[str, Path], None] = lambda _name, _path: None,
    ) -> None:
        """`on_event`: a line for `status`; `before_relaunch`: a service's process is about to be
        replaced; `on_final_counts`: a service stopped cleanly and left its final counts in a file."""
        self.lock = threading.RLock()
        self._services: dict[str, Service] = {}
        self._on_event = on_event
        self._before_relaunch = before_relaunch
        self._on_final_counts = on_final_counts

    def add(self, service: Service) -> Service:
        with self.lock:
            self._services[service.name] = service
        return service

    def get(self, name: str) -> Service | None:
        with self.lock:
            return self._services.get(name)

    def all(self) -> list[Service]:
        with self.lock:
            return list(self._services.values())

    def of_kind(self, *kinds: Kind) -> list[Service]:
        return [service for service in self.all() if service.kind in kinds]

    def remove(self, services: Iterable[Service]) -> None:
        with self.lock:
            for service in services:
                self._services.pop(service.name, None)

    def relaunch(self, service: Service) -> None:
        self._before_relaunch(service.name)
        service.launch()

    def stop(self, services: Sequence[Service]) -> None:
        """SIGTERM all at once (they drain in parallel), then wait for each within its stop timeout."""
        running = [s for s in services if s.running]
        for service in services:
            service.intentional_stop = True
        for service in running:
            assert service.process is not None
            service.process.terminate()
        for service in running:
            assert service.process is not None
            service.process.stop(service.spec.stop_timeout_s)
            service.last_exit = service.process.returncode
            final = service.final_metrics
            if service.last_exit == 0 and final is not None and final.exists():
                self._on_final_counts(service.name, final)
            if service.last_exit not in (0, None):
                self._on_event(
                    f"{service.name} exited with code {service.last_exit} while stopping; "
                    f"see {service.process.log_path}"
                )

    def restart_exited(self) -> None:
        """Restart what exited on its own, as far as its restart policy allows."""
        for service in self.all():
            if not service.exited_unexpectedly():
                continue
            assert service.process is not None
            service.last_exit = service.process.returncode
            now = time.monotonic()
            if not service.spec.restart.allows(service.restart_times, now):
                service.gave_up = True
                policy = service.spec.restart
                self._on_event(
                    f"{service.name} exited (code {service.last_exit}) {policy.limit} times within "
                    f"{policy.window_s:g} s; not restarting it: {service.process.log_tail()}"
                )
                continue
            self._on_event(f"{service.name} exited unexpectedly (code {service.last_exit}); restarting it")
            service.restarts += 1
            service.restart_times.append(now)
            try:
                self.relaunch(service)
            except (OSError, UsageError) as error:
                service.gave_up = True
                self._on_event(f"{service.name} could not be restarted: {error}")

    def kill_all(self) -> None:
        for service in self.all():
            service.intentional_stop = True
            if service.process is not None:
                service.process.kill()

    def pids(self) -> list[int]:
        return [pid for s in self.all() if s.running and s.process and (pid := s.process.pid) is not None]

    def exporters(self) -> dict[str, int]:
        """Service name -> metrics port of every running service whose metrics feed the pipeline totals
        (not one being stopped: what it counts while it drains comes with its final counts)."""
        return {
            s.name: s.port
            for s in self.all()
            if s.spec.exporter and s.port and s.running and not s.intentional_stop
        }


# -- ports ---------------------------------------------------------------------------------------


def plan_ports(stack: StackConfig, simulators: int, with_grafana: bool) -> dict[str, int]:
    """The port of every service: the configured one (refused if taken), or a free one for 0."""
    local = stack.local
    wanted = {
        BROKER: (local.broker_port, SPECS[Kind.BROKER].port_key),
        PROMETHEUS: (local.prometheus_port, SPECS[Kind.PROMETHEUS].port_key),
        ALERTMANAGER: (local.alertmanager_port, SPECS[Kind.ALERTMANAGER].port_key),
        RULE_RUNNER: (local.metrics_port_base, SPECS[Kind.RULE_RUNNER].port_key),
    }
    if with_grafana:
        wanted[GRAFANA] = (local.grafana_port, SPECS[Kind.GRAFANA].port_key)
    for index in range(simulators):
        wanted[simulator_service(index)] = (_simulator_port(stack, index), SPECS[Kind.SIMULATOR].port_key)
    ports: dict[str, int] = {}
    for name, (port, key) in wanted.items():
        if port == 0:
            port = free_port_except(set(ports.values()))
        elif port_in_use(port, HOST):
            raise UsageError(port_in_use_message(port, name, key, stack.path))
        ports[name] = port
    return ports


def simulator_port(stack: StackConfig, index: int, taken: set[int]) -> int:
    """The metrics port of a simulator added while running (scale up)."""
    port = _simulator_port(stack, index) or free_port_except(taken)
    if port_in_use(port, HOST):
        raise UsageError(
            port_in_use_message(port, simulator_service(index), SPECS[Kind.SIMULATOR].port_key, stack.path)
        )
    return port


def _simulator_port(stack: StackConfig, index: int) -> int:
    base = stack.local.metrics_port_base
    return base + 1 + index if base else 0


def free_port_except(taken: set[int]) -> int:
    while True:
        port = free_port(HOST)
        if port not in taken:
            return port


def port_in_use_message(port: int, service: str, key: str, config_path: Path) -> str:
    hint = {
        PROMETHEUS: " (a system Prometheus service?)",
        ALERTMANAGER: " (a system Alertmanager service?)",
        GRAFANA: " (a system Grafana service?)",
    }.get(service, "")
    return (
        f"port {port} for {service} is already in use{hint}; stop what listens there or set "
        f"iotfactory:local.{key} in {config_path} (0 picks a free port)"
    )


# -- processes -----------------------------------------------------------------------------------


class ServiceBuilder:
    """Builds each kind of service from the stack config, its ports and its certificates."""

    def __init__(self, stack: StackConfig, paths: StatePaths, ports: dict[str, int], pki: DevicePki) -> None:
        self.stack = stack
        self.paths = paths
        self.ports = ports  # shared with the supervisor: scale adds and removes simulators' ports
        self.pki = pki

    def broker(self, server_cert: IssuedCertificate, access: Callable[[], BrokerAccess]) -> Service:
        """`access`: asked at every (re)start, so a restarted broker knows who is admitted by then."""
        build = partial(self._broker_process, server_cert, access)
        return Service(BROKER, Kind.BROKER, self.ports[BROKER], build, _port_ready(self.ports[BROKER]))

    def rule_runner(self, reader_cert: IssuedCertificate) -> Service:
        ready = (Stage(FileAppears(self.paths.root / READY_FILE, "subscribe"), SERVICE_START_TIMEOUT_S),)
        return Service(
            RULE_RUNNER,
            Kind.RULE_RUNNER,
            self.ports[RULE_RUNNER],
            partial(self._rule_runner_process, reader_cert),
            ready,
            final_metrics=self.paths.root / FINAL_METRICS_FILE,
        )

    def simulator(self, index: int, generation: str) -> Service:
        name = simulator_service(index)
        port = self.ports[name]
        ready = (
            *_port_ready(port),
            Stage(AllConnectionsUp(port), SIMULATOR_CONNECT_TIMEOUT_S, poll_s=0.1),
        )
        # Imported here: the model behind it is no business of the CLI's other verbs.
        from simulator.checkpoint import final_metrics_path

        service = Service(name, Kind.SIMULATOR, port, lambda: self._simulator_process(service), ready)
        service.generation = generation
        service.final_metrics = final_metrics_path(self.paths.simulator_state(index))
        return service

    def prometheus(self, config_file: Path) -> Service:
        port = self.ports[PROMETHEUS]
        local = self.stack.local
        return Service(
            PROMETHEUS,
            Kind.PROMETHEUS,
            port,
            lambda: prometheus.process(
                config_file,
                self.paths.prometheus_data_dir,
                port,
                local.prometheus_retention,
                self.paths.log(PROMETHEUS),
            ),
            _port_ready(port),
        )

    def alertmanager(self, config_file: Path) -> Service:
        port = self.ports[ALERTMANAGER]
        return Service(
            ALERTMANAGER,
            Kind.ALERTMANAGER,
            port,
            lambda: alertmanager.process(
                config_file, self.paths.alertmanager_data_dir, port, self.paths.log(ALERTMANAGER)
            ),
            _port_ready(port),
        )

    def grafana(self, runtime: grafana.GrafanaRuntime) -> Service:
        port = self.ports[GRAFANA]
        readiness = _port_ready(port)
        if isinstance(runtime, grafana.GrafanaInDocker):
            # The first start pulls the image.
            readiness = (Stage(PortOpen(port, HOST), grafana_container.FIRST_START_TIMEOUT_S, poll_s=0.2),)
        return Service(
            GRAFANA,
            Kind.GRAFANA,
            port,
            lambda: grafana.process(runtime, self.paths.grafana_dir, port, self.paths.log(GRAFANA)),
            readiness,
        )

    def _broker_process(
        self, server_cert: IssuedCertificate, access: Callable[[], BrokerAccess]
    ) -> ManagedProcess:
        settings = self.stack.local.mosquitto
        config = BrokerConfig(
            port=self.ports[BROKER],
            data_dir=self.paths.broker_dir,
            ca_file=self.pki.ca.ca_cert_path,
            cert_file=server_cert.cert_path,
            key_file=server_cert.key_path,
            crl_file=self.pki.ca.crl_path,
            access=access(),
            persistence=settings.persistence,
            autosave_interval_s=settings.autosave_interval_s,
            max_inflight_messages=BROKER_INFLIGHT_TO_SUBSCRIBERS,
        )
        stop_timeout_s = SPECS[Kind.BROKER].stop_timeout_s
        # No ready_timeout_s: readiness is waited for like every other service's.
        return MosquittoProcess(
            config, self.paths.log(BROKER), name=BROKER, stop_timeout_s=stop_timeout_s, ready_timeout_s=None
        )

    def _broker_client_args(self, service_name: str) -> list[str]:
        """The flags every MQTT client service shares: the broker over mutual TLS, and its
        Prometheus exporter on the port allocated to it (the certificate flags differ)."""
        return [
            *("--endpoint", HOST, "--port", str(self.ports[BROKER])),
            *("--ca", str(self.pki.ca.ca_cert_path)),
            *("--metrics-host", HOST, "--metrics-port", str(self.ports[service_name])),
        ]

    def _rule_runner_process(self, reader_cert: IssuedCertificate) -> ManagedProcess:
        settings = self.stack.local
        ready_file = self.paths.root / READY_FILE
        ready_file.unlink(missing_ok=True)
        argv = python_command(
            "local_stack.rule_runner",
            *self._broker_client_args(RULE_RUNNER),
            *("--cert", str(reader_cert.cert_path), "--key", str(reader_cert.key_path)),
            *("--flush-interval", str(settings.rule_runner.flush_interval_s)),
            *("--max-batch", str(settings.rule_runner.batch_max_messages)),
            *("--receive-window", str(BROKER_INFLIGHT_TO_SUBSCRIBERS)),
            *("--ready-file", str(ready_file)),
            *("--final-metrics", str(self.paths.root / FINAL_METRICS_FILE)),
            *_archive_mode_args(self.stack),
        )
        environment = child_environment()
        if settings.archive.s3 is not None:
            s3 = settings.archive.s3
            argv += ["--archive", f"s3://{s3.bucket}", "--s3-endpoint-url", s3.endpoint, "--create-bucket"]
            environment.setdefault("AWS_DEFAULT_REGION", s3.region)
        else:
            folder = self.stack.archive_folder(self.paths.root)
            assert folder is not None
            argv += ["--archive", str(folder)]
        return ManagedProcess(
            RULE_RUNNER,
            argv,
            self.paths.log(RULE_RUNNER),
            env=environment,
            cwd=PROJECT_DIR,
            stop_timeout_s=SPECS[Kind.RULE_RUNNER].stop_timeout_s,
        )

    def _simulator_process(self, service: Service) -> ManagedProcess:
        assert service.generation is not None
        index = simulator_index(service.name)
        assert index is not None
        credentials = self.pki.device(index, service.generation)
        argv = python_command(
            "simulator",
            *("--config", str(self.paths.fleet_config), "--site-index", str(index)),
            *self._broker_client_args(service.name),
            # One certificate per connection, each named as the planner names its connection with
            # this prefix: the broker takes a certificate's CN as its client id.
            *("--cert-dir", str(credentials.cert_dir)),
            *("--client-id-prefix", device_prefix(service.generation)),
            # Drained simulators checkpoint their model here and resume from it: `seq` continues.
            *("--state-file", str(self.paths.simulator_state(index))),
            *(("--topic-prefix", self.stack.topic_prefix) if self.stack.topic_prefix else ()),
        )
        return ManagedProcess(
            service.name,
            argv,
            self.paths.log(service.name),
            env=child_environment(),
            cwd=PROJECT_DIR,
            stop_timeout_s=SIMULATOR_STOP_TIMEOUT_S,
        )


def _archive_mode_args(stack: StackConfig) -> list[str]:
    """The rule runner's side of the archive mode: one object per message (direct), or batches read
    from the topics (batched) or from the local rule's Basic Ingest topics (basic-ingest)."""
    direct = ["--mode", "direct"] if stack.archive_mode == "direct" else []
    prefix = ["--basic-ingest-prefix", stack.topic_prefix] if stack.topic_prefix else []
    return [*direct, *prefix]


def _port_ready(port: int) -> Readiness:
    return (Stage(PortOpen(port, HOST), SERVICE_START_TIMEOUT_S),)


def child_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PROJECT_DIR), environment.get("PYTHONPATH", "")) if part
    )
    # Log lines reach the log files as they happen, not when a buffer fills.
    environment["PYTHONUNBUFFERED"] = "1"
    return environment
