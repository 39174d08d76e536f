"""The cloud stacks' verbs (dev, prod, any `Pulumi.<name>.yaml`): `StackVerbs` on Pulumi's Automation API."""

from __future__ import annotations

from typing import Any

from automation import preflight, stack_context
from automation.cloud_rotation import rotate_certificates
from automation.cloud_status import stack_status
from automation.drift import detect_drift, revert_guard
from automation.scaling import BoundsError, QuotaVerdict, plan_scale
from automation.stack_context import (
    StackContext,
    apply_stack_config,
    fleet_of,
    limits_of,
    needs_confirmation,
    open_stack,
    ordered_outputs,
    outputs_of,
    prepare,
    require_prerequisites,
    text_or_none,
)
from automation.stack_port import BackendSettings, StackPort, UpdateFailedError, UpdateResult
from automation.state_backend import PROJECT
from automation.updates import run_update
from factory_core import cert_rotation
from factory_core.archive_report import VerifyReport
from factory_core.errors import OperationFailed, UsageError, VerbUnavailable
from factory_core.local_results import LocalStopResult, LogsResult, TailResult
from factory_core.progress_events import CostChanged, ScalePlanned
from factory_core.score_report import ScoreReport
from factory_core.stack_file import (
    MAX_SIMULATORS_KEY,
    MIN_SIMULATORS_KEY,
    ROTATION_KEY,
    SIMULATOR_COUNT_KEY,
    config_int,
    program_view,
    read_config,
    require_stack_file,
)
from factory_core.verb_results import (
    BootstrapResult,
    CloudOutputs,
    CloudStatus,
    CostChange,
    CostResult,
    DoctorReport,
    DriftReport,
    QueryResult,
    ReportResult,
    RotationOutcome,
    UpdateOutcome,
    describe_changes,
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
    require_answerable,
    require_confirmation,
)
from infra.settings import StackSettings, load_settings


class CloudStack(StackVerbs):
    """A stack on AWS, deployed from `infra/` through the Pulumi Automation API."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _outcome(self, result: UpdateResult, cost_change: CostChange | None = None) -> UpdateOutcome:
        return UpdateOutcome(
            self.name,
            result.kind,
            dict(result.resource_changes),
            ordered_outputs(result.outputs),
            cost_change,
        )

    def up(self, request: UpRequest, sink: ProgressSink) -> UpdateOutcome:
        if request.detach:
            raise UsageError(
                "--detach is for --stack local; a cloud update runs until it is done (Ctrl-C cancels it)"
            )
        require_prerequisites(self.name, "up", sink)
        context = prepare(self.name, "up")
        what = f"updating stack '{self.name}'"
        # --json is for machines: they confirm with --yes rather than answer a prompt.
        ask = needs_confirmation(context) and require_answerable(sink, yes=request.yes, what=what)
        port = open_stack(context, create=True)
        apply_stack_config(context, port)
        revert_guard(port, context.source, allow=request.allow_revert, sink=sink)
        self._note_rotation(port, sink)
        change = self._report_cost_change(port, _file_settings(context), sink)
        if ask:
            planned = run_update(port, "preview", sink)
            question = f"Apply {describe_changes(planned.resource_changes)} to '{self.name}'?"
            require_confirmation(sink, question, what=what)
        return self._outcome(run_update(port, "up", sink), change)

    def _report_cost_change(
        self, port: StackPort, after: StackSettings, sink: ProgressSink
    ) -> CostChange | None:
        """Before an update: the monthly estimate from the last update's settings to these (an estimate:
        it never stops the update)."""
        from automation.cost_report import deployed_settings, stack_cost_change

        try:
            outputs = port.outputs()
        except UpdateFailedError:
            outputs = {}
        change = stack_cost_change(deployed_settings(outputs), after)
        if change is not None:
            sink.event(CostChanged(change))
        return change

    def _note_rotation(self, port: StackPort, sink: ProgressSink) -> None:
        record = cert_rotation.parse_record(port.get_config(ROTATION_KEY))
        if record is not None:
            sink.step(
                f"certificate rotation {record.from_generation} -> {record.to_generation} is at step "
                f"'{record.phase.value}'; finish it with `python cli.py rotate-certs --stack {self.name}` "
                "(or undo it with --rollback)",
                warning=True,
            )

    def preview(self, request: PreviewRequest, sink: ProgressSink) -> UpdateOutcome:
        require_prerequisites(self.name, "preview", sink)
        context = prepare(self.name, "preview")
        port = open_stack(context, create=True)
        apply_stack_config(context, port)
        return self._outcome(run_update(port, "preview", sink))

    def destroy(self, request: DestroyRequest, sink: ProgressSink) -> UpdateOutcome:
        what = f"destroying stack '{self.name}'"
        ask = require_answerable(sink, yes=request.yes, what=what)
        # Destroy does not run the program: a stack whose config no longer validates can still go.
        context = prepare(self.name, "destroy", runs_program=False)
        if ask:
            require_confirmation(
                sink, f"Destroy stack '{self.name}' and everything it created in AWS?", what=what
            )
        port = open_stack(context, create=False)
        return self._outcome(run_update(port, "destroy", sink))

    def outputs(self, request: OutputsRequest, sink: ProgressSink) -> CloudOutputs:
        context = prepare(self.name, "outputs", needs_aws=False, needs_region=False, runs_program=False)
        return CloudOutputs(self.name, outputs_of(open_stack(context, create=False)))

    def status(self, request: StatusRequest, sink: ProgressSink) -> CloudStatus:
        context = prepare(self.name, "status", needs_aws=False, needs_region=False, runs_program=False)
        return stack_status(context)

    def scale(self, request: ScaleRequest, sink: ProgressSink) -> UpdateOutcome:
        context = prepare(self.name, "scale")
        simulators = request.simulators
        self._check_scale(context, simulators, sink)
        port = open_stack(context, create=True)
        apply_stack_config(context, port)
        from automation.cost_model import with_simulators

        change = self._report_cost_change(port, with_simulators(_file_settings(context), simulators), sink)
        port.set_config(SIMULATOR_COUNT_KEY, simulators)
        try:
            return self._outcome(run_update(port, "up", sink), change)
        except OperationFailed as exc:
            raise OperationFailed(
                f"{exc} ({SIMULATOR_COUNT_KEY} is now {simulators}; run `up` to retry or scale to another N)"
            ) from None

    def _check_scale(self, context: StackContext, simulators: int, sink: ProgressSink) -> None:
        """The stack's bounds and the account's IoT quota, explained before anything changes."""
        limits = limits_of(context.config, context.source)
        fleet = fleet_of(context.config, context.source)
        try:
            plan = plan_scale(simulators, fleet, limits)
        except BoundsError as exc:
            raise UsageError(
                f"{exc}; set {MIN_SIMULATORS_KEY}/{MAX_SIMULATORS_KEY} in {context.source}"
            ) from None
        if plan.verdict is QuotaVerdict.OVER_QUOTA:
            raise UsageError(f"scale refused: {plan.explanation()}")
        notes = [plan.explanation()] + ([note] if (note := plan.connect_note()) else [])
        sink.event(
            ScalePlanned(
                simulators=plan.simulators,
                publishes_per_second=plan.publishes_per_second,
                connections=plan.connections,
                account_publishes_per_second=plan.account_publishes_per_second,
                verdict=plan.verdict.value,
                notes=tuple(notes),
            )
        )

    def rotate_certs(self, request: RotateRequest, sink: ProgressSink) -> RotationOutcome:
        context = prepare(self.name, "rotate-certs")
        return rotate_certificates(context, sink, rollback=request.rollback)

    def verify(self, request: VerifyRequest, sink: ProgressSink) -> VerifyReport:
        raise VerbUnavailable(
            f"`verify --stack {self.name}` is not wired to cloud stacks; verify reads any archive with "
            "`python cli.py verify --archive s3://BUCKET` (the bucket is archiveBucket in "
            f"`python cli.py outputs --stack {self.name}`)"
        )

    def score(self, request: ScoreRequest, sink: ProgressSink) -> ScoreReport:
        """Regenerated labels only: reading the cloud's bucket is `score --archive s3://BUCKET`."""
        if request.archive is not None or not request.regenerate:
            raise VerbUnavailable(
                f"`score --stack {self.name}` regenerates labels from the stack's fleet config "
                f"(`--regenerate --duration S --start ISO`); to score against the archived ground truth use "
                "`python cli.py score DETECTIONS --archive s3://BUCKET` (the bucket is archiveBucket in "
                f"`python cli.py outputs --stack {self.name}`)"
            )
        from scoring.command import score_request

        def stack_fleet() -> tuple[Any, int, str]:
            path = require_stack_file(stack_context.cloud_env().project_dir, self.name)
            config = read_config(path)
            count = config_int(config, SIMULATOR_COUNT_KEY, 1, str(path))
            return fleet_of(config, str(path)), count, str(path)

        def no_archive() -> Any:
            raise AssertionError("refused above")

        return score_request(request, stack_archive=no_archive, stack_fleet=stack_fleet)

    def query(self, request: QueryRequest, sink: ProgressSink) -> QueryResult:
        """Athena over the stack's archive, through the workgroup and Glue database `up` created."""
        from analytics.athena import AthenaTarget, query_athena

        context = prepare(self.name, "query", runs_program=False)
        outputs = outputs_of(open_stack(context, create=False))
        region = preflight.aws_region(context.region)
        target = AthenaTarget.from_outputs(self.name, outputs, region)
        return query_athena(self.name, target, request.sql, request.out, request.timeout_s)

    def report(self, request: ReportRequest, sink: ProgressSink) -> ReportResult:
        raise VerbUnavailable(
            f"`report --stack {self.name}` is not wired to cloud stacks; the report reads any archive "
            "with the local tools: `python cli.py report --archive s3://BUCKET --out report.html` (the "
            f"bucket is archiveBucket in `python cli.py outputs --stack {self.name}`), and `python cli.py "
            f"query --stack {self.name}` runs the same views in Athena"
        )

    def logs(self, request: LogsRequest, sink: ProgressSink) -> LogsResult:
        groups = f"/{PROJECT}/{self.name}"
        raise VerbUnavailable(
            f"`logs` reads the local stack's log files; stack '{self.name}' logs to CloudWatch: "
            f"`aws logs tail {groups}/simulators --follow` (also {groups}/monitoring)"
        )

    def tail(self, request: TailRequest, sink: ProgressSink) -> TailResult:
        raise VerbUnavailable(
            f"`tail` watches the local broker; for stack '{self.name}' subscribe to factory/simulator/# in"
            " the AWS IoT console's MQTT test client (AWS IoT > Test > MQTT test client): `aws iot-data`"
            " can publish but not subscribe, and the devices' policy lets them subscribe to nothing"
        )

    def stop(self, request: StopRequest, sink: ProgressSink) -> LocalStopResult:
        raise VerbUnavailable(
            f"`stop` is for the local stack; a cloud stack keeps running: scale it to zero with "
            f"`python cli.py scale --stack {self.name} --simulators 0`, or delete it with "
            f"`python cli.py destroy --stack {self.name}`"
        )

    def doctor(self, request: DoctorRequest, sink: ProgressSink) -> DoctorReport:
        """Every prerequisite of `up`, checked together; never stops at the first."""
        env = stack_context.cloud_env()
        return env.doctor(self.name, env.project_dir)

    def drift(self, request: DriftRequest, sink: ProgressSink) -> DriftReport:
        """Refresh preview (AWS against the state) and preview (this checkout against the state)."""
        context = prepare(self.name, "drift")
        port = open_stack(context, create=False)
        apply_stack_config(context, port)
        return detect_drift(port, sink)

    def bootstrap(self, request: BootstrapRequest, sink: ProgressSink) -> BootstrapResult:
        """S3 state bucket + KMS key for the stack; needs boto3 and credentials, not the Pulumi CLI."""
        import boto3

        from automation.stack_files import write_backend
        from automation.state_backend import bootstrap_state_backend, expected_secrets_provider
        from factory_core.stack_file import check_secrets_provider, set_secrets_provider

        env = stack_context.cloud_env()
        path = require_stack_file(env.project_dir, self.name)
        config = read_config(path, fix=f"edit {path.name}")
        region = preflight.aws_region(text_or_none(config.get("aws:region")))
        if region is None:
            raise UsageError(
                f"no AWS region for stack '{self.name}': set aws:region in {path.name} (or AWS_REGION)"
            )
        preflight.require_aws_credentials("bootstrap")
        provider = expected_secrets_provider(self.name, region)
        # Check the stack file can take the provider before creating anything.
        check_secrets_provider(path, provider)
        report = bootstrap_state_backend(boto3.session.Session(region_name=region), self.name, region)
        backend = report.backend
        backends_file = write_backend(
            env.project_dir, self.name, BackendSettings(backend.backend_url, backend.secrets_provider)
        )
        if set_secrets_provider(path, backend.secrets_provider):
            report.changes.append(f"set secretsprovider in {path.name}")
        from automation.ci_policy import write_ci_policy

        ci_policy = write_ci_policy(env.project_dir, self.name, backend.bucket, backend.kms_key_arn)
        return BootstrapResult(
            stack=self.name,
            backend_url=backend.backend_url,
            secrets_provider=backend.secrets_provider,
            bucket=backend.bucket,
            kms_key_arn=backend.kms_key_arn,
            kms_alias=backend.kms_alias,
            backends_file=str(backends_file.relative_to(env.project_dir)),
            stack_file=path.name,
            changes=tuple(report.changes),
            ci_policy_file=str(ci_policy.relative_to(env.project_dir)),
        )

    def cost(self, request: CostRequest, sink: ProgressSink) -> CostResult:
        """From the stack file alone: no Pulumi CLI, no state, no AWS (unless refreshing prices)."""
        from automation.cost_report import estimate_stack_cost

        env = stack_context.cloud_env()
        path = require_stack_file(env.project_dir, self.name)
        settings = load_settings(self.name, program_view(read_config(path, fix=f"edit {path.name}")))
        return estimate_stack_cost(
            settings, simulators=request.simulators, refresh_prices=request.refresh_prices
        )


def _file_settings(context: StackContext) -> StackSettings:
    """The program's settings from the stack file (already validated by `prepare`)."""
    return load_settings(context.name, program_view(context.config))
