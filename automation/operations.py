"""The cloud verbs (dev, prod, any `Pulumi.<name>.yaml`) that cli.py dispatches to.

Every verb runs its preflight first (Pulumi CLI on PATH, the stack file, its config, AWS
credentials) and only then opens the stack through a `StackPort`, so a machine without the cloud
gets one line and exit code 2 before any work. Pulumi itself is imported only by the opener.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from automation import preflight
from automation.fleet_status import (
    MONITORING_SERVICE_OUTPUT,
    SIMULATOR_SERVICES_OUTPUT,
    ServiceState,
    read_services,
    service_names,
)
from automation.progress import JsonLinesRenderer, Renderer, renderer_for
from automation.scaling import BoundsError, QuotaVerdict, ScaleLimits, plan_scale
from automation.stack_files import read_backend
from automation.stack_port import (
    BackendSettings,
    OutputValue,
    StackBusyError,
    StackMissingError,
    StackOpener,
    StackPort,
    UpdateFailedError,
    UpdateResult,
    open_pulumi_stack,
)
from factory_core import cert_rotation
from factory_core.errors import OperationFailed, UsageError, describe_validation_error
from factory_core.fleet import IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND, FleetSettings
from factory_core.stack_file import (
    CERT_GENERATIONS_KEY,
    CLI_ONLY_KEYS,  # noqa: F401 - part of this module's interface (tests, infra.settings' contract)
    CONFIRM_KEY,
    FLEET_KEY,
    MAX_SIMULATORS_KEY,
    MIN_SIMULATORS_KEY,
    PUBLISH_QUOTA_KEY,
    ROTATION_KEY,
    SIMULATOR_COUNT_KEY,
    config_int,
    decode_value,
    is_secure,
    program_view,
    read_config,
    require_stack_file,
    same_value,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Keys the CLI writes (scale, rotate-certs); `up` sets them only when absent, never back to the file.
CLI_OWNED_KEYS = (SIMULATOR_COUNT_KEY, CERT_GENERATIONS_KEY, ROTATION_KEY)
SECRET_MASK = "[secret]"


@dataclass
class CloudEnv:
    """What the verbs touch outside themselves; tests swap the stack opener for a recording stand-in."""

    project_dir: Path = PROJECT_DIR
    open_stack: StackOpener = open_pulumi_stack
    console: Console = field(default_factory=lambda: Console(highlight=False))
    stdin_is_tty: Callable[[], bool] = field(default=lambda: sys.stdin.isatty())
    confirm: Callable[[str], bool] = field(default=lambda question: _ask(question))


def _ask(question: str) -> bool:
    import typer

    return bool(typer.confirm(question, default=False))


cloud_env: Callable[[], CloudEnv] = CloudEnv


@dataclass(frozen=True)
class StackContext:
    """A stack that passed preflight: its file's config and where its state lives."""

    env: CloudEnv
    name: str
    file: Path
    config: dict[str, Any]
    backend: BackendSettings

    @property
    def source(self) -> str:
        return self.file.name


# --- preflight ---------------------------------------------------------------------------------


def _prepare(
    stack: str, purpose: str, *, needs_aws: bool = True, needs_region: bool = True, runs_program: bool = True
) -> StackContext:
    """Checks in order: project, stack file, config, Pulumi CLI, region, credentials."""
    env = cloud_env()
    if not (env.project_dir / "Pulumi.yaml").is_file():
        raise UsageError(f"no Pulumi.yaml in {env.project_dir}; run the CLI from the project's checkout")
    path = require_stack_file(env.project_dir, stack)
    # A broken stack file is reported as such even on a machine without the Pulumi CLI.
    config = read_config(path, fix=f"edit {path.name}")
    context = StackContext(env, stack, path, config, read_backend(env.project_dir, stack))
    if runs_program:
        _validate_config(context)
    preflight.require_pulumi_cli()
    if needs_region and preflight.aws_region(_text(config.get("aws:region"))) is None:
        raise UsageError(f"no AWS region for stack '{stack}': set aws:region in {path.name} (or AWS_REGION)")
    state_in_s3 = (context.backend.backend_url or "").startswith("s3://")
    if needs_aws or state_in_s3:
        preflight.require_aws_credentials(purpose)
    return context


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _validate_config(context: StackContext) -> None:
    """The program's own schema first (so a bad key fails here, not mid-update), then the CLI's keys."""
    from infra.settings import load_settings

    load_settings(context.name, program_view(context.config))
    _fleet(context.config, context.source)
    _limits(context.config, context.source)
    try:
        cert_rotation.parse_generations(context.config.get(CERT_GENERATIONS_KEY))
        cert_rotation.parse_record(context.config.get(ROTATION_KEY))
    except cert_rotation.RotationError as exc:
        raise UsageError(f"{exc}; edit {context.source}") from None


def _fleet(config: Mapping[str, Any], source: str) -> FleetSettings:
    raw = decode_value(config.get(FLEET_KEY))
    if raw is None:
        return FleetSettings()
    try:
        return FleetSettings.model_validate(raw)
    except ValidationError as exc:
        message = describe_validation_error(exc, FLEET_KEY, f"edit {source}", model=FleetSettings)
        raise UsageError(message) from None


def _limits(config: Mapping[str, Any], source: str) -> ScaleLimits:
    defaults = ScaleLimits()
    limits = ScaleLimits(
        min_simulators=config_int(config, MIN_SIMULATORS_KEY, defaults.min_simulators, source),
        max_simulators=config_int(config, MAX_SIMULATORS_KEY, defaults.max_simulators, source),
        account_publishes_per_second=config_int(
            config, PUBLISH_QUOTA_KEY, IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND, source
        ),
    )
    if not 0 <= limits.min_simulators <= limits.max_simulators:
        raise UsageError(
            f"config {MIN_SIMULATORS_KEY}/{MAX_SIMULATORS_KEY}: need 0 <= min <= max "
            f"(got {limits.min_simulators}..{limits.max_simulators}); edit {source}"
        )
    if limits.account_publishes_per_second <= 0:
        raise UsageError(f"config {PUBLISH_QUOTA_KEY}: must be positive; edit {source}")
    return limits


def _open(context: StackContext, *, create: bool) -> StackPort:
    try:
        return context.env.open_stack(context.name, context.env.project_dir, context.backend, create)
    except StackMissingError:
        where = context.backend.backend_url or "the backend you are logged in to"
        raise UsageError(
            f"stack '{context.name}' does not exist in {where} yet; create it with "
            f"`python cli.py up --stack {context.name}`"
        ) from None
    except StackBusyError:
        raise _busy(context.name) from None
    except UpdateFailedError as exc:
        raise OperationFailed(f"could not open stack '{context.name}': {exc}") from None


def _busy(stack: str) -> OperationFailed:
    return OperationFailed(
        f"stack '{stack}' is locked by another update; wait for it to finish, or if that run was "
        f"interrupted, release the lock with `pulumi cancel --stack {stack}`"
    )


def _apply_stack_config(context: StackContext, port: StackPort) -> dict[str, Any]:
    """Make the stack's config match its file plus the CLI's defaults; write only what differs.

    Secure (encrypted) values are Pulumi's to read; the keys the CLI owns are only defaulted.
    """
    current = port.get_all_config()
    wanted = {
        key: value
        for key, value in context.config.items()
        if not is_secure(value) and key not in CLI_OWNED_KEYS
    }
    defaults = {CERT_GENERATIONS_KEY: cert_rotation.dump_generations(cert_rotation.initial_generations())}
    for key in CLI_OWNED_KEYS:
        if key in current:
            continue
        if key in context.config:
            wanted[key] = context.config[key]
        elif key in defaults:
            wanted[key] = defaults[key]
    changes = {key: value for key, value in wanted.items() if not same_value(value, current.get(key))}
    if changes:
        port.set_all_config(changes)
    return changes


# --- running updates ---------------------------------------------------------------------------


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, a container stopped) gets the same clean cancel as Ctrl-C.

    A terminal's Ctrl-C reaches the Pulumi CLI too (same process group); SIGTERM reaches only
    this process, so it is passed on to the children as SIGINT, Pulumi's signal to stop safely.
    """

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        _interrupt_children()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt_children() -> None:
    for child in psutil.Process().children():
        # psutil checks the child is still the process it listed, so a reused pid is never signalled.
        with suppress(psutil.Error):
            child.send_signal(signal.SIGINT)


def _run_update(port: StackPort, operation: str, renderer: Renderer) -> UpdateResult:
    run: Callable[..., UpdateResult] = getattr(port, operation)
    with _terminate_as_interrupt():
        try:
            return run(renderer)
        except KeyboardInterrupt:
            _cancel(port, renderer)
            raise
        except StackBusyError:
            raise _busy(port.name) from None
        except UpdateFailedError as exc:
            raise OperationFailed(f"{operation} of stack '{port.name}' failed: {exc}") from None


def _cancel(port: StackPort, renderer: Renderer) -> None:
    renderer.note("interrupted: cancelling the update (press Ctrl-C again only if this hangs)")
    try:
        port.cancel()
    except KeyboardInterrupt:
        renderer.note(
            f"cancel interrupted; if the stack stays locked run `pulumi cancel --stack {port.name}`"
        )
    except (UpdateFailedError, StackBusyError, StackMissingError) as exc:
        # Pulumi stops on the same Ctrl-C and may already have released its lock.
        renderer.note(f"update stopped ({exc}); no lock left")
    else:
        renderer.note(
            f"update cancelled and the lock released; run the command again to finish stack '{port.name}'"
        )


def _update(context: StackContext, port: StackPort, operation: str, json_output: bool) -> UpdateResult:
    renderer = renderer_for(operation, json_output=json_output, console=context.env.console)
    with renderer:
        return _run_update(port, operation, renderer)


def _emit(record: Mapping[str, Any]) -> None:
    JsonLinesRenderer().emit(record)


def _changes_text(changes: Mapping[str, int]) -> str:
    moved = {op: n for op, n in changes.items() if n and op != "same"}
    if not moved:
        return "no changes"
    return ", ".join(f"{n} to {op}" for op, n in sorted(moved.items()))


# --- outputs -----------------------------------------------------------------------------------


def _ordered_outputs(outputs: Mapping[str, OutputValue]) -> list[tuple[str, OutputValue]]:
    def rank(key: str) -> tuple[int, int, str]:
        # Grafana's URL is what a user opens first, then Prometheus'.
        lowered = key.lower()
        service = 0 if "grafana" in lowered else 1 if "prometheus" in lowered else 2
        return service, 0 if "url" in lowered else 1, lowered

    return sorted(outputs.items(), key=lambda item: rank(item[0]))


def _plain_outputs(outputs: Mapping[str, OutputValue]) -> dict[str, Any]:
    return {key: SECRET_MASK if item.secret else item.value for key, item in _ordered_outputs(outputs)}


def _print_outputs(console: Console, stack: str, outputs: Mapping[str, OutputValue]) -> None:
    if not outputs:
        console.print(f"stack '{stack}' has no outputs yet")
        return
    table = Table(title=f"stack {stack}", show_header=True, header_style="bold")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    for key, value in _plain_outputs(outputs).items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)


# --- verbs -------------------------------------------------------------------------------------


def up(stack: str, *, detach: bool, yes: bool, json_output: bool) -> int:
    if detach:
        raise UsageError(
            "--detach is for --stack local; a cloud update runs until it is done (Ctrl-C cancels it)"
        )
    context = _prepare(stack, "up")
    ask = _needs_confirmation(context) and not yes
    # --json output is for machines: they confirm with --yes rather than answer a prompt.
    if ask and (json_output or not context.env.stdin_is_tty()):
        raise UsageError(f"updating stack '{stack}' needs confirmation; re-run with --yes")
    port = _open(context, create=True)
    _apply_stack_config(context, port)
    _note_rotation(context, port, json_output)
    if ask:
        preview_result = _update(context, port, "preview", json_output)
        if not context.env.confirm(f"Apply {_changes_text(preview_result.resource_changes)} to '{stack}'?"):
            raise UsageError(f"update of stack '{stack}' declined; nothing was changed")
    result = _update(context, port, "up", json_output)
    _report_update(context, result, json_output)
    return 0


def _needs_confirmation(context: StackContext) -> bool:
    raw = context.config.get(CONFIRM_KEY)
    if raw is None:
        return context.name == "prod"
    return str(raw).lower() in ("true", "1", "yes")


def _note_rotation(context: StackContext, port: StackPort, json_output: bool) -> None:
    record = cert_rotation.parse_record(port.get_config(ROTATION_KEY))
    if record is None:
        return
    message = (
        f"certificate rotation {record.from_generation} -> {record.to_generation} is at step "
        f"'{record.phase.value}'; finish it with `python cli.py rotate-certs --stack {context.name}` "
        "(or undo it with --rollback)"
    )
    if json_output:
        JsonLinesRenderer().note(message)
    else:
        context.env.console.print(f"[yellow]{message}[/yellow]")


def _report_update(context: StackContext, result: UpdateResult, json_output: bool) -> None:
    if json_output:
        _emit(
            {
                "event": "result",
                "operation": result.kind,
                "stack": context.name,
                "resource_changes": result.resource_changes,
                "outputs": _plain_outputs(result.outputs),
            },
        )
        return
    context.env.console.print(
        f"{result.kind} of '{context.name}' done: {_changes_text(result.resource_changes)}"
    )
    if result.kind == "up":
        _print_outputs(context.env.console, context.name, result.outputs)


def preview(stack: str, *, json_output: bool) -> int:
    context = _prepare(stack, "preview")
    port = _open(context, create=True)
    _apply_stack_config(context, port)
    result = _update(context, port, "preview", json_output)
    _report_update(context, result, json_output)
    return 0


def destroy(stack: str, *, json_output: bool) -> int:
    # Destroy does not run the program: a stack whose config no longer validates can still go.
    context = _prepare(stack, "destroy", runs_program=False)
    port = _open(context, create=False)
    result = _update(context, port, "destroy", json_output)
    _report_update(context, result, json_output)
    return 0


def outputs(stack: str, *, json_output: bool) -> int:
    context = _prepare(stack, "outputs", needs_aws=False, needs_region=False, runs_program=False)
    port = _open(context, create=False)
    values = _outputs_of(port)
    if json_output:
        _emit({"stack": stack, "outputs": _plain_outputs(values)})
    else:
        _print_outputs(context.env.console, stack, values)
    return 0


def _outputs_of(port: StackPort) -> dict[str, OutputValue]:
    try:
        return port.outputs()
    except UpdateFailedError as exc:
        raise OperationFailed(f"could not read outputs of stack '{port.name}': {exc}") from None


def status(stack: str, *, json_output: bool) -> int:
    context = _prepare(stack, "status", needs_aws=False, needs_region=False, runs_program=False)
    port = _open(context, create=False)
    config = port.get_all_config()
    last = port.last_update()
    generations = cert_rotation.parse_generations(config.get(CERT_GENERATIONS_KEY))
    record = cert_rotation.parse_record(config.get(ROTATION_KEY))
    values = _plain_outputs(_outputs_of(port))
    report: dict[str, Any] = {
        "stack": stack,
        "backend": context.backend.backend_url or "(current `pulumi login`)",
        "secrets_provider": context.backend.secrets_provider or "(stack default)",
        "last_update": None
        if last is None
        else {"kind": last.kind, "result": last.result, "started": last.started, "ended": last.ended},
        "simulators": config_int(config, SIMULATOR_COUNT_KEY, 0, context.source)
        if SIMULATOR_COUNT_KEY in config
        else None,
        "certificate_generation": cert_rotation.current_generation(generations).name,
        "certificate_generations": cert_rotation.dump_generations(generations),
        "rotation": None if record is None else cert_rotation.dump_record(record),
        "outputs": values,
    }
    services, services_note = _live_services(values, _text(config.get("aws:region")))
    report["services"] = [service.as_dict() for service in services]
    report["services_note"] = services_note
    if json_output:
        _emit(report)
        return 0
    console = context.env.console
    table = Table(title=f"stack {stack}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("backend", report["backend"])
    table.add_row(
        "last update",
        "never"
        if last is None
        else f"{last.kind} {last.result} (started {last.started}, ended {last.ended})",
    )
    table.add_row(
        "simulators", "program default" if report["simulators"] is None else str(report["simulators"])
    )
    table.add_row(
        "certificates",
        report["certificate_generation"]
        + (
            ""
            if record is None
            else f" (rotation {record.from_generation} -> {record.to_generation}: {record.phase.value})"
        ),
    )
    for service in services:
        state = "steady" if service.steady else service.rollout.lower()
        table.add_row(
            f"service {service.name}",
            f"{service.running}/{service.desired} running, {service.pending} pending, {state}",
        )
    if services_note:
        table.add_row("services", services_note)
    for key, value in values.items():
        if key.endswith("Url") or key in STATUS_OUTPUTS:
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
    return 0


STATUS_OUTPUTS = ("iotDataEndpoint", "archiveBucket", "clusterName")


def _live_services(
    outputs: Mapping[str, Any], config_region: str | None, *, simulators_only: bool = False
) -> tuple[list[ServiceState], str | None]:
    """ECS desired/running counts of the stack's services, or a note saying why they are not shown."""
    keys = (
        (SIMULATOR_SERVICES_OUTPUT,)
        if simulators_only
        else (MONITORING_SERVICE_OUTPUT, SIMULATOR_SERVICES_OUTPUT)
    )
    cluster, names = outputs.get("clusterName"), service_names(outputs, keys)
    if not isinstance(cluster, str) or not names:
        return [], None
    region = (
        outputs.get("region")
        if isinstance(outputs.get("region"), str)
        else preflight.aws_region(config_region)
    )
    if region is None:
        return [], "no AWS region known; live service state not read"
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if boto3.session.Session().get_credentials() is None:
        return [], "no AWS credentials; live service state not read"
    try:
        return read_services(cluster, names, region), None
    except (BotoCoreError, ClientError) as exc:
        return [], f"could not read ECS services: {exc}"


def scale(stack: str, simulators: int, *, json_output: bool) -> int:
    context = _prepare(stack, "scale")
    limits = _limits(context.config, context.source)
    fleet = _fleet(context.config, context.source)
    try:
        plan = plan_scale(simulators, fleet, limits)
    except BoundsError as exc:
        raise UsageError(
            f"{exc}; set {MIN_SIMULATORS_KEY}/{MAX_SIMULATORS_KEY} in {context.source}"
        ) from None
    if plan.verdict is QuotaVerdict.OVER_QUOTA:
        raise UsageError(f"scale refused: {plan.explanation()}")
    notes = [plan.explanation()] + ([note] if (note := plan.connect_note()) else [])
    if json_output:
        _emit(
            {
                "event": "scale-plan",
                "simulators": plan.simulators,
                "publishes_per_second": plan.publishes_per_second,
                "connections": plan.connections,
                "account_publishes_per_second": plan.account_publishes_per_second,
                "verdict": plan.verdict.value,
                "notes": notes,
            },
        )
    else:
        colour = "yellow" if plan.verdict is QuotaVerdict.NEAR_QUOTA else "green"
        for note in notes:
            context.env.console.print(f"[{colour}]{note}[/{colour}]")
    port = _open(context, create=True)
    _apply_stack_config(context, port)
    port.set_config(SIMULATOR_COUNT_KEY, simulators)
    try:
        result = _update(context, port, "up", json_output)
    except OperationFailed as exc:
        raise OperationFailed(
            f"{exc} ({SIMULATOR_COUNT_KEY} is now {simulators}; run `up` to retry or scale to another N)"
        ) from None
    _report_update(context, result, json_output)
    return 0


def rotate_certs(stack: str, *, rollback: bool, json_output: bool) -> int:
    context = _prepare(stack, "rotate-certs")
    port = _open(context, create=False)
    _apply_stack_config(context, port)
    config = port.get_all_config()
    try:
        generations = cert_rotation.parse_generations(config.get(CERT_GENERATIONS_KEY))
        record = cert_rotation.parse_record(config.get(ROTATION_KEY))
        action = (
            cert_rotation.rollback_action(generations, record)
            if rollback
            else cert_rotation.next_action(generations, record)
        )
    except cert_rotation.RotationError as exc:
        raise UsageError(str(exc)) from None
    if record is not None and not rollback:
        _say(
            context,
            json_output,
            f"resuming rotation {record.from_generation} -> {record.to_generation} "
            f"(step '{record.phase.value}')",
        )
    while True:
        _say(context, json_output, f"rotate-certs: {action.describe()}", step=action.kind.value)
        _write_rotation_state(port, generations, record, action.generations, action.record_before)
        if action.apply:
            result = _update(context, port, "up", json_output)
            if action.kind is cert_rotation.ActionKind.ADD:
                _require_steady_simulators(context, result, action)
        if action.record_after != action.record_before:
            _write_rotation_state(
                port, action.generations, action.record_before, action.generations, action.record_after
            )
        generations, record = action.generations, action.record_after
        if action.last:
            break
        action = cert_rotation.next_action(generations, record)
    current = cert_rotation.current_generation(generations).name
    done = "rolled back" if action.kind is cert_rotation.ActionKind.ROLLBACK else "rotated"
    _say(
        context,
        json_output,
        f"certificates {done}: stack '{stack}' uses generation {current}",
        step="done",
        generation=current,
    )
    return 0


def _require_steady_simulators(
    context: StackContext, result: UpdateResult, action: cert_rotation.RotationAction
) -> None:
    """Before the old generation is deactivated, every simulator service must run steadily on the new one.

    `up` already waits for steady state; this re-reads ECS so a service that was rolled back or is
    still deploying stops the rotation at 'started' (re-run to check again) instead of cutting off
    simulators that still hold the old certificate.
    """
    services, note = _live_services(
        _plain_outputs(result.outputs), _text(context.config.get("aws:region")), simulators_only=True
    )
    unsteady = [service for service in services if not service.steady]
    if note is None and not unsteady:
        return
    why = note or ", ".join(
        f"{s.name} {s.running}/{s.desired} running, {s.pending} pending, {s.rollout.lower()}"
        for s in unsteady
    )
    raise OperationFailed(
        f"rotation {action.from_generation} -> {action.to_generation} paused before deactivating "
        f"{action.from_generation}: simulators not confirmed steady on {action.to_generation} ({why}); "
        f"{action.from_generation} stays active. Re-run rotate-certs to check again, or --rollback"
    )


def _say(context: StackContext, json_output: bool, message: str, **fields: Any) -> None:
    if json_output:
        JsonLinesRenderer().emit({"event": "rotation", "message": message, **fields})
    else:
        context.env.console.print(message)


def _write_rotation_state(
    port: StackPort,
    old_generations: tuple[cert_rotation.Generation, ...],
    old_record: cert_rotation.RotationRecord | None,
    generations: tuple[cert_rotation.Generation, ...],
    record: cert_rotation.RotationRecord | None,
) -> None:
    """Write generations and record in one config write, so they never disagree on disk."""
    values: dict[str, Any] = {}
    if generations != old_generations:
        values[CERT_GENERATIONS_KEY] = cert_rotation.dump_generations(generations)
    if record is not None and record != old_record:
        values[ROTATION_KEY] = cert_rotation.dump_record(record)
    if values:
        port.set_all_config(values)
    if record is None and old_record is not None:
        port.remove_config(ROTATION_KEY)


def bootstrap(stack: str, *, json_output: bool) -> int:
    """S3 state bucket + KMS key for a stack; needs boto3 and credentials, not the Pulumi CLI."""
    import boto3

    from automation.stack_files import write_backend
    from automation.state_backend import bootstrap_state_backend, expected_secrets_provider
    from factory_core.stack_file import check_secrets_provider, set_secrets_provider

    env = cloud_env()
    path = require_stack_file(env.project_dir, stack)
    config = read_config(path, fix=f"edit {path.name}")
    region = preflight.aws_region(_text(config.get("aws:region")))
    if region is None:
        raise UsageError(f"no AWS region for stack '{stack}': set aws:region in {path.name} (or AWS_REGION)")
    preflight.require_aws_credentials("bootstrap")
    provider = expected_secrets_provider(stack, region)
    # Check the stack file can take the provider before creating anything.
    check_secrets_provider(path, provider)
    report = bootstrap_state_backend(boto3.session.Session(region_name=region), stack, region)
    backend = report.backend
    backends_file = write_backend(
        env.project_dir, stack, BackendSettings(backend.backend_url, backend.secrets_provider)
    )
    if set_secrets_provider(path, backend.secrets_provider):
        report.changes.append(f"set secretsprovider in {path.name}")
    summary = {
        "stack": stack,
        "backend_url": backend.backend_url,
        "secrets_provider": backend.secrets_provider,
        "bucket": backend.bucket,
        "kms_key_arn": backend.kms_key_arn,
        "kms_alias": backend.kms_alias,
        "backends_file": str(backends_file.relative_to(env.project_dir)),
        "changes": report.changes,
    }
    if json_output:
        _emit(summary)
        return 0
    console = env.console
    for change in report.changes or ["nothing to change: the state backend is already set up"]:
        console.print(f"• {change}")
    console.print(f"state backend:    pulumi login '{backend.backend_url}'")
    console.print(f"secrets provider: {backend.secrets_provider}")
    console.print(
        f"recorded in {summary['backends_file']} and {path.name}; the cloud verbs use them. "
        f"Next: python cli.py up --stack {stack}"
    )
    return 0
