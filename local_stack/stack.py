"""The local stack's verbs (`--stack local`): `StackVerbs` over the supervisor and the state folder."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator
from typing import Any

from factory_core.archive_report import VerifyReport
from factory_core.errors import OperationFailed, UsageError, VerbUnavailable
from factory_core.local_results import (
    LocalDestroyResult,
    LocalOutputsResult,
    LocalScaleResult,
    LocalStatus,
    LocalStopResult,
    LocalUpResult,
    LogsResult,
    PanelLink,
    TailResult,
)
from factory_core.score_report import ScoreReport
from factory_core.verb_results import (
    BootstrapResult,
    CostResult,
    DoctorReport,
    DriftReport,
    QueryResult,
    ReportResult,
    RotationOutcome,
    UpdateOutcome,
)
from factory_core.verbs import (
    BootstrapRequest,
    CostRequest,
    DestroyRequest,
    DoctorRequest,
    DriftRequest,
    LogsRequest,
    OutputsRequest,
    PreviewRequest,
    ProgressSink,
    QueryRequest,
    ReportRequest,
    RotateRequest,
    ScaleRequest,
    ScoreRequest,
    StackVerbs,
    StatusRequest,
    StopRequest,
    TailRequest,
    UpRequest,
    VerifyRequest,
)
from local_stack import lifecycle, log_files
from local_stack import stack_config as config_module
from local_stack.control import ControlClient, RotationReport
from local_stack.paths import StatePaths, config_path
from local_stack.rotation import DevicePki, StoppedStack, rotate
from local_stack.stack_config import StackConfig
from local_stack.state_file import LOCK_FILE, already_running_message, is_running, read_state
from local_stack.status_document import STACK, StackOutputs, StatusReport

NOT_STARTED = "the local stack has not been started yet; run `python cli.py up --stack local`"


def _load() -> tuple[StackConfig, StatePaths]:
    return config_module.load(config_path()), StatePaths.from_environment()


@contextlib.contextmanager
def _exclusive(paths: StatePaths) -> Iterator[None]:
    """Hold the supervisor's lock while changing a stopped stack, so no `up` starts meanwhile."""
    with (paths.root / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(already_running_message(paths)) from None
        yield


def open_stack_archive(config: StackConfig, paths: StatePaths) -> Any:
    from local_stack.archive import LocalArchive, S3Archive

    folder = config.archive_folder(paths.root)
    if folder is not None:
        if not folder.is_dir():
            raise UsageError(f"no archive at {folder} yet; run `python cli.py up --stack local` first")
        return LocalArchive(folder)
    s3 = config.local.archive.s3
    assert s3 is not None
    os.environ.setdefault("AWS_DEFAULT_REGION", s3.region)
    return S3Archive(s3.bucket, endpoint_url=s3.endpoint)


def _explicit_archive(location: str, endpoint_url: str | None) -> Any:
    """An archive named on the command line (`--archive`), read with the local tools."""
    from local_stack.archive import open_archive

    return open_archive(location, endpoint_url=endpoint_url)


class LocalStack(StackVerbs):
    """Everything on this machine: Mosquitto, simulators, rule runner, Prometheus (and Grafana)."""

    name = STACK

    def up(self, request: UpRequest, sink: ProgressSink) -> LocalUpResult:
        config, paths = _load()
        lifecycle.preflight(config, paths)
        if request.detach:
            return lifecycle.up_detached(config, paths, sink)
        return lifecycle.up_foreground(config, paths, sink)

    def preview(self, request: PreviewRequest, sink: ProgressSink) -> UpdateOutcome:
        raise VerbUnavailable(
            "`preview` is for cloud stacks; the local stack has nothing to preview: "
            "run `python cli.py up --stack local`"
        )

    def status(self, request: StatusRequest, sink: ProgressSink) -> LocalStatus:
        paths = StatePaths.from_environment()
        running = is_running(paths)
        current: StatusReport | None = None
        if running:
            with contextlib.suppress(OperationFailed):
                current = ControlClient(paths, timeout_s=5.0).status()
        if current is None:
            current = read_state(paths)
        if current is None:
            return LocalStatus(stack=STACK, running=False, phase="absent", state_dir=str(paths.root))
        return current.to_result(running=running, state_dir=str(paths.root))

    def outputs(self, request: OutputsRequest, sink: ProgressSink) -> LocalOutputsResult:
        paths = StatePaths.from_environment()
        running = is_running(paths)
        values: StackOutputs | None = None
        if running:
            with contextlib.suppress(OperationFailed):
                values = ControlClient(paths, timeout_s=5.0).outputs()
        if values is None:
            state = read_state(paths)
            values = state.outputs if state else None
        if values is None:
            raise UsageError(NOT_STARTED)
        outputs = values.to_result()
        links: tuple[PanelLink, ...] = ()
        if outputs.grafana_url is None and outputs.prometheus_url:
            from observability.pasteable import main_panel_links

            links = tuple(PanelLink(title, url) for title, url in main_panel_links(outputs.prometheus_url))
        return LocalOutputsResult(stack=STACK, running=running, outputs=outputs, prometheus_links=links)

    def scale(self, request: ScaleRequest, sink: ProgressSink) -> LocalScaleResult:
        config, paths = _load()
        count = request.simulators
        config_module.check_simulator_count(count, "--simulators", "choose a count in that range")
        if is_running(paths):
            answer = ControlClient(paths).scale(count, sink.step)
            return LocalScaleResult(
                stack=STACK,
                running=True,
                simulators=answer.simulators,
                before=answer.before,
                config_file=answer.config_file,
            )
        config_module.record_simulator_count(config.path, count)
        return LocalScaleResult(
            stack=STACK, running=False, simulators=count, before=None, config_file=str(config.path)
        )

    def rotate_certs(self, request: RotateRequest, sink: ProgressSink) -> RotationOutcome:
        config, paths = _load()

        def progress(message: str) -> None:
            sink.step(f"rotate-certs: {message}")

        if is_running(paths):
            return ControlClient(paths).rotate(progress, rollback=request.rollback).to_result()
        if not paths.pki_file.exists():
            raise UsageError(
                "the local stack has no device certificates yet; run `python cli.py up --stack local`"
            )
        with _exclusive(paths):
            pki = DevicePki.open(paths, config.fleet)
            result = rotate(pki, StoppedStack(config.simulator_count), progress, rollback=request.rollback)
        progress("the stack is not running: the next `up` uses the new certificates")
        return RotationReport.of(result).to_result()

    def verify(self, request: VerifyRequest, sink: ProgressSink) -> VerifyReport:
        from local_stack.verify import verify_archive

        expect_seq_from = None if request.window else 1
        if request.archive is not None:
            archive = _explicit_archive(request.archive, request.endpoint_url)
            return verify_archive(archive, expect_seq_from=expect_seq_from)
        config, paths = _load()
        report = verify_archive(open_stack_archive(config, paths), expect_seq_from=expect_seq_from)
        if is_running(paths):
            note = "the stack is running: the newest messages may still be on their way to the archive"
            report = dataclasses.replace(report, notes=(*report.notes, note))
        return report

    def score(self, request: ScoreRequest, sink: ProgressSink) -> ScoreReport:
        from scoring.command import score_request

        def stack_archive() -> Any:
            config, paths = _load()
            return open_stack_archive(config, paths)

        def stack_fleet() -> tuple[Any, int, str]:
            config = config_module.load(config_path())
            return config.fleet, config.simulator_count, str(config.path)

        return score_request(request, stack_archive=stack_archive, stack_fleet=stack_fleet)

    def query(self, request: QueryRequest, sink: ProgressSink) -> QueryResult:
        from analytics.archive_db import query_archive

        archive = self._archive(request.archive, request.endpoint_url)
        return query_archive(STACK, archive, request.sql, request.out)

    def report(self, request: ReportRequest, sink: ProgressSink) -> ReportResult:
        from analytics.report import ReportInputs, write_report

        archive = self._archive(request.archive, request.endpoint_url)
        prometheus_url, fleet = request.prometheus_url, None
        if request.archive is None:
            config, paths = _load()
            fleet = config.fleet
            if prometheus_url is None and is_running(paths):
                with contextlib.suppress(OperationFailed, UsageError):
                    prometheus_url = self.outputs(OutputsRequest(), sink).outputs.prometheus_url
        inputs = ReportInputs.from_request(request, archive, prometheus_url=prometheus_url, fleet=fleet)
        return write_report(STACK, inputs, sink.step)

    def _archive(self, location: str | None, endpoint_url: str | None) -> Any:
        if location is not None:
            return _explicit_archive(location, endpoint_url)
        config, paths = _load()
        return open_stack_archive(config, paths)

    def logs(self, request: LogsRequest, sink: ProgressSink) -> LogsResult:
        return log_files.logs(StatePaths.from_environment(), request, sink)

    def tail(self, request: TailRequest, sink: ProgressSink) -> TailResult:
        from local_stack.tail import tail

        return tail(StatePaths.from_environment(), request, sink)

    def stop(self, request: StopRequest, sink: ProgressSink) -> LocalStopResult:
        return lifecycle.stop(StatePaths.from_environment(), sink)

    def destroy(self, request: DestroyRequest, sink: ProgressSink) -> LocalDestroyResult:
        return lifecycle.destroy(StatePaths.from_environment(), sink, yes=request.yes)

    def bootstrap(self, request: BootstrapRequest, sink: ProgressSink) -> BootstrapResult:
        raise VerbUnavailable(
            "`bootstrap` creates the S3 state bucket and KMS key a cloud stack keeps its Pulumi state "
            "in; the local stack keeps its state in its own folder and needs none: "
            "run `python cli.py up --stack local`"
        )

    def doctor(self, request: DoctorRequest, sink: ProgressSink) -> DoctorReport:
        from local_stack.doctor import local_doctor

        return local_doctor(_load)

    def drift(self, request: DriftRequest, sink: ProgressSink) -> DriftReport:
        raise VerbUnavailable(
            "`drift` compares a cloud stack's deployed state with AWS; the local stack has no deployed "
            "state to drift from: `python cli.py status --stack local` shows what runs"
        )

    def cost(self, request: CostRequest, sink: ProgressSink) -> CostResult:
        raise VerbUnavailable("`cost` estimates AWS charges; the local stack costs nothing — try --stack dev")
