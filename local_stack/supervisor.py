"""The local stack's supervisor: starts every service, keeps them running, stops them in order, and
serves status, scale, rotate and restart on its control socket.

One supervisor per state folder (its lock proves it). `up` runs it in the foreground, or
`up --detach` starts `python -m local_stack.supervisor` in its own session; the other verbs talk to
it through `control.ControlClient`. What each service is lives in `services`, how to wait for one in
`readiness`, the protocol and its threads in `control`, the lock and state file in `state_file`.

Processes are started and stopped only by the main thread (control.py says why). Nothing is
restarted silently: an unexpected exit is logged and shown in `status`, then the service is
restarted as far as its `RestartPolicy` allows.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

from factory_core.archive_modes import archive_topic_filter
from factory_core.errors import OperationFailed, UsageError
from factory_core.fleet import site_id
from local_stack import grafana, observers, prometheus
from local_stack import stack_config as config_module
from local_stack.access_control import BrokerRights
from local_stack.alertmanager import BINARY as ALERTMANAGER_BINARY
from local_stack.broker_log import BrokerLogCounter
from local_stack.broker_setup import ServiceCertificates, ensure_archive_session
from local_stack.control import ControlServer, Job, RestartResult, ScaleResult, perform
from local_stack.mosquitto import MosquittoProcess
from local_stack.paths import BROKER, PROMETHEUS, RULE_RUNNER, StatePaths, simulator_index, simulator_service
from local_stack.processes import require_binary
from local_stack.readiness import CountersSettle, LogLineAfter, wait_until
from local_stack.rotation import DevicePki, Progress, RotationResult, interrupted_notice, rotate
from local_stack.sampling import PipelineMonitor
from local_stack.services import Kind, Service, ServiceBuilder, ServiceSet, plan_ports, simulator_port
from local_stack.stack_config import StackConfig
from local_stack.state_file import StateWriter, SupervisorLock
from local_stack.status_document import (
    RotationInProgress,
    SimulatorCounts,
    StackOutputs,
    StateDocument,
    StatusReport,
    stack_outputs,
)

QUIET_TIMEOUT_S = 60.0  # at most this long waiting for the rule runner to archive the backlog
BROKER_RELOAD_TIMEOUT_S = 5.0


class StopRequested(OperationFailed):
    """The stack is shutting down; the running operation ends early (and stays resumable)."""


def _timestamp() -> str:
    return time.strftime("%H:%M:%S")


class Supervisor:
    def __init__(self, stack: StackConfig, paths: StatePaths, progress: Progress = print) -> None:
        self.stack = stack
        self.paths = paths
        self.say = progress
        self.lock = threading.RLock()  # guards `phase` and `events` against the other threads
        self.monitor = PipelineMonitor(self._exporters, self._first_archived)
        self.services = ServiceSet(self._event, self.monitor.forget, self.monitor.settle)
        self.ports: dict[str, int] = {}
        self.desired_simulators = stack.simulator_count
        self.phase = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self.events: deque[str] = deque(maxlen=50)
        self.grafana_skipped: str | None = None
        self.grafana_container: str | None = None
        self._grafana_runtime: grafana.GrafanaRuntime | None = None
        self.pki: DevicePki | None = None
        self.rights: BrokerRights | None = None
        self.broker_log = BrokerLogCounter(paths.log(BROKER))
        self._builder: ServiceBuilder | None = None
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self._server: ControlServer | None = None
        self._lock = SupervisorLock(paths)
        self._state = StateWriter(paths)

    # -- lifecycle -------------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        self._lock.acquire()

    def start(self) -> None:
        """Bring the whole pipeline up; on failure everything started so far is stopped again."""
        if not self._lock.held:
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
        builder, certificates = self._prepare()
        assert self.pki is not None and self.rights is not None
        self._server = ControlServer(self.paths.control_socket, self)
        broker = self.services.add(builder.broker(certificates.server, self.rights.access))
        broker.launch()
        broker.wait_ready()
        assert isinstance(broker.process, MosquittoProcess)
        broker.process.check_plugin()
        self.rights.broker_started(self.ports[BROKER])
        # The archive's session must exist before any simulator publishes: the broker drops what
        # nobody subscribed to. Creating it here (a moment's work) lets the rule runner and the
        # simulators boot in parallel; the broker queues for the session until the runner attaches.
        ensure_archive_session(
            self.ports[BROKER],
            self.pki.ca.ca_cert_path,
            certificates.reader,
            topic_filter=archive_topic_filter(self.stack.topic_prefix),
        )
        pipeline = [
            self.services.add(builder.rule_runner(certificates.reader)),
            *(self._add_simulator(index) for index in range(self.desired_simulators)),
        ]
        for service in pipeline:
            service.launch()
        # The observers' config (slow to import and render) is written while the pipeline boots.
        watching = observers.build(builder, self._write_prometheus_config(), self._grafana_runtime, self.say)
        self.grafana_skipped, self.grafana_container = watching.grafana_skipped, watching.grafana_container
        for service in watching.services:
            self.services.add(service).launch()
        for service in (*pipeline, *watching.services):
            service.wait_ready()
        self.monitor.start(self._stop)

    def _prepare(self) -> tuple[ServiceBuilder, ServiceCertificates]:
        """Binaries, ports, certificates and the simulators' fleet file: what every service needs."""
        # Binaries first: a missing one costs one line, before any file is written.
        require_binary("mosquitto")
        require_binary("prometheus")
        require_binary(ALERTMANAGER_BINARY)
        self._grafana_runtime = grafana.find_runtime()
        self.ports.update(plan_ports(self.stack, self.desired_simulators, self._grafana_runtime is not None))
        self.pki = DevicePki.open(self.paths, self.stack.fleet)
        for notice in (interrupted_notice(self.pki), self.pki.legacy_notice):
            if notice:
                self._event(notice)
        self.rights = BrokerRights.prepare(
            self.pki, self.paths, range(self.desired_simulators), self.stack.topic_prefix
        )
        certificates = self.rights.certificates
        self.paths.fleet_config.write_text(config_module.fleet_file_text(self.stack))
        self._builder = ServiceBuilder(self.stack, self.paths, self.ports, self.pki)
        return self._builder, certificates

    def serve(self) -> None:
        """Run queued requests and watch the children until a stop is requested."""
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.25)
            except queue.Empty:
                job = None
            if job is not None:
                perform(job, self)
                self._write_state(force=True)
            self.services.restart_exited()
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
        self._refuse_queued_jobs()
        with self.lock:
            self.phase = "stopping"
        self._write_state(force=True)
        self._retarget_prometheus(say, prometheus.ScrapeTargets())
        simulators = self.services.of_kind(Kind.SIMULATOR)
        if any(s.running for s in simulators):
            say(f"stopping {len(simulators)} simulator(s): draining in-flight messages")
        self.services.stop(simulators)
        runner, broker = self.services.get(RULE_RUNNER), self.services.get(BROKER)
        if runner and runner.running and broker and broker.running:
            say("rule runner: archiving what the broker still holds")
            self._wait_archive_quiet(runner)
        if runner:
            self.services.stop([runner])
        if broker:
            say("broker: saving sessions")
            self.services.stop([broker])
        self.services.stop(self.services.of_kind(Kind.PROMETHEUS, Kind.ALERTMANAGER, Kind.GRAFANA))
        if self._server is not None:
            self._server.close()
            self._server = None
        with self.lock:
            self.phase = "stopped" if self.phase == "stopping" else self.phase
        self._write_state(force=True)
        if not quiet:
            say("stopped; the archive, logs and certificates stay in " + str(self.paths.root))
        self._lock.release()

    def _refuse_queued_jobs(self) -> None:
        while True:
            try:
                self._jobs.get_nowait().refuse("the stack is stopping")
            except queue.Empty:
                return

    def kill_everything(self) -> None:
        """Second Ctrl-C: no draining, no saving."""
        self.services.kill_all()

    # -- services --------------------------------------------------------------------------------

    def _add_simulator(self, index: int) -> Service:
        assert self._builder is not None and self.pki is not None
        name = simulator_service(index)
        if name not in self.ports:
            self.ports[name] = simulator_port(self.stack, index, set(self.ports.values()))
        return self.services.add(self._builder.simulator(index, self.pki.current_generation))

    def _wait_archive_quiet(self, runner: Service) -> None:
        """Wait until the rule runner has archived everything (its counters stop moving)."""
        assert runner.port is not None
        # The rule runner writes at least every flush interval: quiet for longer means done.
        settled = CountersSettle(runner.port, quiet_s=self.stack.local.rule_runner.flush_interval_s + 0.5)
        wait_until(lambda: not runner.running or settled(), QUIET_TIMEOUT_S, poll_s=0.2)

    def _exporters(self) -> dict[str, int]:
        return self.services.exporters()

    # -- what it says ----------------------------------------------------------------------------

    def _event(self, message: str) -> None:
        with self.lock:
            self.events.append(f"{_timestamp()} {message}")
        self.say(message)

    def note(self, message: str) -> None:
        self._event(message)

    def _first_archived(self, at: float) -> None:
        self._event(f"pipeline up: first message archived {at - self.started_at:.1f} s after start")

    def outputs_report(self) -> StackOutputs:
        generation = self.pki.current_generation if self.pki else None
        # A copy: the main thread changes the ports while a connection thread may be answering.
        ports = dict(self.ports)
        return stack_outputs(
            self.stack,
            self.paths,
            ports,
            self.grafana_skipped,
            self.desired_simulators,
            generation,
            self.grafana_container,
        )

    def status_report(self) -> StatusReport:
        with self.lock:
            record = self.pki.record if self.pki else None
            first = self.monitor.first_archived_at
            return StatusReport(
                running=self.phase in ("starting", "running"),
                phase=self.phase,
                supervisor_pid=os.getpid(),
                started_at=self.started_at,
                uptime_s=time.time() - self.started_at,
                first_archived_after_s=first - self.started_at if first else None,
                simulators=SimulatorCounts(
                    desired=self.desired_simulators,
                    up=sum(1 for s in self.services.of_kind(Kind.SIMULATOR) if s.running),
                ),
                generation=self.pki.current_generation if self.pki else None,
                rotation=RotationInProgress(
                    from_generation=record.from_generation,
                    to_generation=record.to_generation,
                    step=record.phase.value,
                )
                if record
                else None,
                pipeline=self.monitor.snapshot,
                services=[service.report(self.paths) for service in self.services.all()],
                events=list(self.events),
                error=self.error,
                broker_refusals=self.broker_log.counts(),
            )

    def _write_state(self, *, force: bool = False, exit_code: int | None = None) -> None:
        def document() -> StateDocument:
            return StateDocument(
                **dict(self.status_report()),
                outputs=self.outputs_report(),
                control_socket=str(self.paths.control_socket),
                pids=self.services.pids(),
                exit_code=exit_code,
            )

        self._state.write(document, force=force)

    # -- requests (main thread) ------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def scale(self, simulators: int, progress: Progress) -> ScaleResult:
        config_module.check_simulator_count(simulators, "--simulators", "choose a count in that range")
        by_index = {simulator_index(s.name): s for s in self.services.of_kind(Kind.SIMULATOR)}
        current = sorted(i for i in by_index if i is not None)
        before = len(current)
        if simulators > before:
            self._start_simulators(range(before, simulators), progress)
            self.desired_simulators = simulators
            self._retarget_prometheus(progress)
        elif simulators < before:
            leaving = [by_index[index] for index in current[simulators:]]
            # Out of Prometheus first, then drained: leaving on purpose is not an outage.
            self.desired_simulators = simulators
            self._retarget_prometheus(progress)
            progress(f"draining {', '.join(s.name for s in leaving)}")
            self._remove_simulators(leaving)
        if config_module.record_simulator_count(self.stack.path, simulators):
            progress(f"recorded iotfactory:simulatorCount: {simulators} in {self.stack.path}")
        return ScaleResult(simulators=simulators, before=before, config_file=str(self.stack.path))

    def _start_simulators(self, indexes: Iterable[int], progress: Progress) -> None:
        """All or nothing: if one does not come up, the fleet stays as it was (and so do Prometheus
        and the config file)."""
        assert self.pki is not None and self.rights is not None
        started: list[Service] = []
        try:
            for index in indexes:
                service = self._add_simulator(index)
                started.append(service)
                # Known to the broker before the simulator connects: a 3.1.1 publish it is not
                # allowed yet would get a normal PUBACK and be dropped.
                self.rights.admit_site(index, self.pki.current_generation)
                progress(f"starting {service.name} ({site_id(index)}, certificate {service.generation})")
                service.launch()
            for service in started:
                service.wait_ready()
        except (OperationFailed, UsageError):
            self._remove_simulators(started)
            raise

    def _remove_simulators(self, services: list[Service]) -> None:
        self.services.stop(services)
        self.services.remove(services)
        for service in services:
            self.ports.pop(service.name, None)

    def _write_prometheus_config(self) -> Path:
        return observers.write_config(self.stack, self.paths, self.ports, self.desired_simulators)

    def _retarget_prometheus(
        self, progress: Progress, targets: prometheus.ScrapeTargets | None = None
    ) -> None:
        """Scrape exactly `targets` (default: the desired fleet). With none, a clean stop is not an
        outage: every target leaves Prometheus (its series end with staleness markers) before it stops."""
        if targets is None:
            targets = observers.scrape_targets(self.ports, self.desired_simulators)
        service = self.services.get(PROMETHEUS)
        port = self.ports[PROMETHEUS] if service is not None and service.running else None
        if prometheus.apply_targets(self.paths.root, targets, port):
            if port is not None:
                progress(f"prometheus: scraping {len(targets.simulators)} simulator(s)")
        else:
            self._event("prometheus did not pick up its new targets; see " + str(self.paths.log(PROMETHEUS)))

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
            should_stop=self._stop.is_set,
        )

    def roll_simulator(self, service: Service, generation: str, progress: Progress) -> None:
        """Drain one simulator and start it again on `generation`; its checkpoint keeps `seq` going."""
        if self._stop.is_set():
            raise StopRequested("the stack is stopping; the rotation stays recorded and resumes later")
        progress(f"{service.name}: draining, then restarting with certificate {generation}")
        self.services.stop([service])
        service.generation = generation
        self.services.relaunch(service)
        service.wait_ready()

    def reload_broker(self) -> None:
        """SIGHUP, and wait until the broker says it reloaded: callers test the new CRL right after."""
        broker = self.services.get(BROKER)
        if broker is None or broker.process is None or not broker.running:
            return
        # Mosquitto logs this line and then reloads on the same thread, before it serves anyone
        # again: once the line is there, every new connection meets the new CRL.
        reloaded = LogLineAfter.from_now(broker.process.log_path, "Reloading config.", "reload its config")
        broker.process.signal(signal.SIGHUP)
        if not wait_until(reloaded, BROKER_RELOAD_TIMEOUT_S):
            raise OperationFailed(
                f"the broker did not reload its config within {BROKER_RELOAD_TIMEOUT_S:g} s; "
                f"see {broker.process.log_path}"
            )

    @property
    def observer_identities(self) -> BrokerRights:
        """Lends `tail` its read-only identities (asked on the connection's thread)."""
        assert self.rights is not None
        return self.rights

    def restart(self, service: str, progress: Progress) -> RestartResult:
        """Stop one service cleanly and start it again (operators, and tests of recovery)."""
        found = self.services.get(service)
        if found is None:
            names = ", ".join(s.name for s in self.services.all())
            raise UsageError(f"no service {service!r}; services: {names}")
        progress(f"restarting {service}")
        self.services.stop([found])
        self.services.relaunch(found)
        found.wait_ready()
        return RestartResult(service=service, pid=found.process.pid if found.process else None)


class _RunningStack:
    """The supervisor as the rotation's runtime."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        assert supervisor.rights is not None
        self.admit = supervisor.rights.admit
        self.cut_sessions = supervisor.rights.cut

    def roll_simulators(self, generation: str, progress: Progress) -> None:
        simulators = sorted(
            self.supervisor.services.of_kind(Kind.SIMULATOR), key=lambda s: simulator_index(s.name) or 0
        )
        for service in simulators:
            if service.generation != generation:
                self.supervisor.roll_simulator(service, generation, progress)

    def reload_broker(self) -> None:
        self.supervisor.reload_broker()

    def site_indexes(self) -> list[int]:
        return list(range(self.supervisor.desired_simulators))


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
