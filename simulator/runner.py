"""The live run: schedule every machine's samples on the wall clock, publish them, export metrics.

Machine m's n-th sample is due `(n + phase_m) * publish_interval_s` wall seconds after the start
and carries model time `start + (n + phase_m) * publish_interval_s * speed`. The scheduler walks
machines in phase order, round after round, sleeping until each slot; when it falls behind it
catches up without sleeping and records how late each sample was.
"""

from __future__ import annotations

import gc
import math
import random
import signal
import sys
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from factory_core.connection_plan import plan_connections
from factory_core.fleet import site_id
from factory_core.metric_catalog import LAG_BUCKETS
from simulator import checkpoint
from simulator.config_loader import RunConfig
from simulator.connection_settings import validate_connection
from simulator.metrics.accumulators import BucketCounts
from simulator.metrics.exporter import RuntimeProbe, SimulatorExporter
from simulator.model.site import SiteModel
from simulator.transport import make_publisher
from simulator.transport.publisher import (
    QOS0_SEND_BACKLOG,
    Publisher,
    TransportOptions,
    TransportSnapshot,
)

# ECS gives a task 30 s between SIGTERM and SIGKILL: flush for at most 20, then disconnect.
SHUTDOWN_FLUSH_S = 20.0
# Waits longer than this are cut into slices so that a signal is noticed quickly.
SLEEP_SLICE_S = 0.25
LAG_RESERVOIR = 100_000
# A sample due within this much is generated now: a select() per message would cost more at
# 10k msg/s than the few milliseconds are worth (timestamps are model time either way).
EARLY_S = 0.005


@dataclass(frozen=True)
class RunSummary:
    telemetry_generated: int
    messages_generated: int
    snapshot: TransportSnapshot
    unsent_at_exit: int
    elapsed_s: float
    lag_p50_s: float
    lag_p99_s: float
    stopped_by_signal: bool

    def describe(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.snapshot.failures.items()) if v) or "none"
        rate = self.snapshot.published_total / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"done: generated {self.messages_generated} messages ({self.telemetry_generated} telemetry),"
            f" published {self.snapshot.published_total} ({rate:.0f} msg/s) in {self.elapsed_s:.1f} s;"
            f" failed: {failed}; unsent at exit {self.unsent_at_exit};"
            f" scheduler lag p50 {self.lag_p50_s * 1000:.1f} ms p99 {self.lag_p99_s * 1000:.1f} ms"
        )


class LagRecorder:
    """Scheduler lag: a histogram for the metrics and a bounded reservoir for exact percentiles."""

    def __init__(self) -> None:
        self.histogram = BucketCounts(LAG_BUCKETS)
        self.reservoir = array("d")
        self.seen = 0
        self._random = random.Random(0)

    def observe(self, lag_s: float) -> None:
        self.histogram.observe(lag_s)
        self.seen += 1
        if len(self.reservoir) < LAG_RESERVOIR:
            self.reservoir.append(lag_s)
        else:
            slot = self._random.randrange(self.seen)
            if slot < LAG_RESERVOIR:
                self.reservoir[slot] = lag_s

    def quantile(self, q: float) -> float:
        if not self.reservoir:
            return 0.0
        ordered = sorted(self.reservoir)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class _LiveState:
    """What the exporter reads; filled in once the publisher is connected and the clock starts."""

    def __init__(self) -> None:
        self.model: SiteModel | None = None
        self.scheduler: Scheduler | None = None
        self.model_lock = threading.Lock()
        self._empty_lag = BucketCounts(LAG_BUCKETS)

    def attach(self, model: SiteModel, scheduler: Scheduler) -> None:
        self.model, self.scheduler = model, scheduler

    def ready(self) -> bool:
        return self.scheduler is not None

    def view(self, index: int) -> Any:
        assert self.model is not None
        return self.model.view(index)

    def lag_histogram(self) -> BucketCounts:
        return self.scheduler.lag.histogram if self.scheduler else self._empty_lag

    def simulated_time_s(self) -> float:
        return self.scheduler.simulated_time_s if self.scheduler else 0.0


class Scheduler:
    """Generates samples at their slots and hands them to the publisher."""

    def __init__(
        self,
        model: SiteModel,
        publisher: Publisher,
        config: RunConfig,
        connection_of: list[int],
        stop: threading.Event,
        model_lock: threading.Lock,
        ledger: checkpoint.SeqLedger | None = None,
    ) -> None:
        self.model = model
        self.ledger = ledger
        self.publisher = publisher
        self.config = config
        self.connection_of = connection_of
        self.stop = stop
        self.model_lock = model_lock
        self.lag = LagRecorder()
        self.simulated_time_s = 0.0
        self.telemetry = 0
        self.messages = 0

    def run(self, start_monotonic: float, first_round: int = 0) -> None:
        """Sample round after round from `first_round` (> 0 when resumed from a checkpoint)."""
        model, publisher = self.model, self.publisher
        config = self.config
        interval = config.fleet.publish_interval_s
        step_s = model.step_s
        duration_s = config.duration_s
        count = config.count
        max_rate = config.max_rate
        high_water = 2 * publisher.plan.window if config.fleet.qos == 1 else QOS0_SEND_BACKLOG
        order = sorted(range(len(model.machines)), key=lambda index: (model.machines[index].phase, index))
        phases = [model.machines[index].phase for index in order]
        connections = [self.connection_of[index] for index in order]
        observe = self.lag.observe
        sample = model.sample
        submit = publisher.submit
        poll = publisher.poll
        lock = self.model_lock
        stop = self.stop
        taken = model.samples_taken
        ledger = self.ledger
        round_number = first_round
        while not stop.is_set():
            for index, phase, connection in zip(order, phases, connections, strict=True):
                if round_number == first_round and taken(index) > round_number:
                    continue  # sampled in this round before the checkpoint was taken
                slot = round_number + phase
                simulated = slot * step_s
                if duration_s is not None and simulated >= duration_s:
                    return
                if max_rate:
                    if publisher.queued(connection) >= high_water:
                        while not publisher.wait_for_room(connection, high_water, SLEEP_SLICE_S):
                            if stop.is_set():
                                return
                else:
                    due = start_monotonic + (slot - first_round) * interval
                    now = time.monotonic()
                    while due - now > EARLY_S:
                        poll(min(due - now - EARLY_S, SLEEP_SLICE_S))
                        if stop.is_set():
                            return
                        now = time.monotonic()
                    observe(max(0.0, now - due))
                with lock:
                    messages = sample(index)
                # Reserved on disk before anyone can see them: a crash never repeats a seq.
                if ledger is not None and not ledger.covers(index):
                    ledger.reserve()
                for message in messages:
                    submit(connection, message)
                self.messages += len(messages)
                self.telemetry += 1
                self.simulated_time_s = simulated
                if count is not None and self.telemetry >= count:
                    return
                if stop.is_set():
                    return
            round_number += 1


def transport_options(config: RunConfig, connections: int) -> TransportOptions:
    connection = config.connection
    assert connection.endpoint and connection.ca_path
    assert connection.cert_dir or (connection.cert_path and connection.key_path)
    fleet = config.fleet
    return TransportOptions(
        endpoint=connection.endpoint,
        port=connection.port,
        ca_path=connection.ca_path,
        cert_path=connection.cert_path,
        key_path=connection.key_path,
        cert_dir=connection.cert_dir,
        qos=fleet.qos,
        queue_limit_per_connection=max(1, math.ceil(fleet.offline_queue_limit / connections)),
        keepalive_s=connection.keepalive_s,
        rate_limit_per_connection=None if config.max_rate else TransportOptions.rate_limit_per_connection,
        linger_s=0.0 if config.max_rate else TransportOptions.linger_s,
        topic_prefix=connection.topic_prefix,
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _start_boot(model: SiteModel, config: RunConfig) -> checkpoint.SeqLedger | None:
    """Name this run (`boot`) and, with a state file, continue every seq above what any earlier run
    of the site may have published; the first reservation is on disk before the first publish."""
    boot = checkpoint.new_boot()
    if config.state_file is None:
        model.start_boot(boot)
        _say(f"boot {boot}")
        return None
    ledger = checkpoint.SeqLedger(
        checkpoint.ledger_path(config.state_file), model, config.fleet.publish_interval_s
    )
    model.start_boot(boot, ledger.floors())
    ledger.reserve()
    _say(f"boot {boot}; seqs reserved in {ledger.path}")
    return ledger


def _exporter(config: RunConfig, live: _LiveState, publisher: Publisher) -> SimulatorExporter:
    """The simulator's Prometheus exporter, reading the live run (nothing until the model is attached)."""
    return SimulatorExporter(
        RuntimeProbe(
            site=site_id(config.site_index),
            view=live.view,
            machine_count=config.fleet.machines_per_site,
            model_lock=live.model_lock,
            ready=live.ready,
            transport=lambda: publisher.snapshot() if live.ready() else None,
            scheduler_lag=live.lag_histogram,
            simulated_time_s=live.simulated_time_s,
        ),
        config.fleet.max_machine_series,
        warn=_say,
    )


def _load_model(config: RunConfig) -> tuple[SiteModel, bool, int]:
    """The site's model, resumed from the checkpoint if there is one; whether it was; its first round."""
    model = None
    if config.state_file is not None:
        model = checkpoint.load(config.state_file, config.fleet, config.site_index)
    resumed = model is not None
    if model is None:
        model = SiteModel(config.fleet, config.site_index, config.start_epoch_ms or 0)
    first_round = min((model.samples_taken(i) for i in range(len(model.machines))), default=0)
    if resumed:
        _say(f"resumed from {config.state_file}: every machine continues at sample {first_round + 1}")
    return model, resumed, first_round


def _save_state(
    state_file: Path,
    config: RunConfig,
    live: _LiveState,
    model: SiteModel,
    ledger: checkpoint.SeqLedger | None,
    exporter: SimulatorExporter,
) -> None:
    """At the end of a run: the checkpoint, the settled seq ledger and the final metrics."""
    with live.model_lock:
        checkpoint.save(state_file, config.fleet, config.site_index, model)
        if ledger is not None:
            ledger.settle()
    exporter.write_final(checkpoint.final_metrics_path(state_file))


def run_live(config: RunConfig) -> RunSummary:
    """Plan, validate, connect, run until the duration, the count or a signal; then drain."""
    fleet = config.fleet
    plan = plan_connections(
        fleet,
        config.site_index,
        config.connection.client_id_prefix,
        connections=config.connection.connections,
        max_rate=config.max_rate,
    )
    validate_connection(config.connection, plan.client_ids)

    live = _LiveState()
    stop = threading.Event()
    publisher = make_publisher(fleet.engine, plan, transport_options(config, plan.connections))
    exporter = _exporter(config, live, publisher)
    signalled: list[int] = []

    def on_signal(number: int, _frame: FrameType | None) -> None:
        signalled.append(number)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # The exporter first: a taken port fails before any connection is opened.
        metrics_port = 0
        if config.connection.metrics_port:
            metrics_port = exporter.serve(config.connection.metrics_host, config.connection.metrics_port)
        publisher.start()
        # Printed once connected, so that a bad endpoint or certificate ends with its one error line.
        _say(plan.describe(fleet.engine.value, fleet.qos, config.connection.where)
             + f"; connected {publisher.snapshot().connections_up}/{plan.connections}")
        for warning in plan.quota_warnings():
            _say(warning)
        if metrics_port:
            _say(f"metrics: http://{config.connection.metrics_host}:{metrics_port}/metrics")
        # Building 10,000 machines takes most of a second, so the model is built first and the
        # clock starts after it, once connected: the first slots are late by neither. The model
        # only reads `start_epoch_ms` when it encodes a sample, so it can be set now.
        model, resumed, first_round = _load_model(config)
        ledger = _start_boot(model, config)
        # The model, clients and modules live for the whole run: move them out of the cyclic
        # collector's reach, so that full collections stay short (a gen-2 pass over 10,000
        # machines was a visible scheduler stall).
        gc.collect()
        gc.freeze()
        start_monotonic = time.monotonic()
        if config.start_epoch_ms is None:
            # At speed 1 this puts each sample's timestamp on its slot's wall time, also after a
            # resume; never earlier than before, so timestamps stay monotonic per machine.
            anchored = int(time.time() * 1000 - first_round * model.step_s * 1000)
            model.start_epoch_ms = max(model.start_epoch_ms, anchored) if resumed else anchored
        scheduler = Scheduler(
            model, publisher, config, [plan.connection_for(i) for i in range(len(model.machines))], stop,
            live.model_lock, ledger,
        )
        live.attach(model, scheduler)
        if not signalled:
            scheduler.run(start_monotonic, first_round)
        unsent = publisher.unsent()
        if unsent:
            reason = "signal" if signalled else "end of run"
            _say(f"{reason}: flushing {unsent} unsent message(s) (at most {SHUTDOWN_FLUSH_S:g} s)")
        left = publisher.flush(SHUTDOWN_FLUSH_S)
        elapsed = time.monotonic() - start_monotonic
        if config.state_file is not None:
            _save_state(config.state_file, config, live, model, ledger, exporter)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        publisher.close()
        exporter.close()
    summary = RunSummary(
        telemetry_generated=scheduler.telemetry,
        messages_generated=scheduler.messages,
        snapshot=publisher.snapshot(),
        unsent_at_exit=left,
        elapsed_s=elapsed,
        lag_p50_s=scheduler.lag.quantile(0.5),
        lag_p99_s=scheduler.lag.quantile(0.99),
        stopped_by_signal=bool(signalled),
    )
    _say(summary.describe())
    return summary
