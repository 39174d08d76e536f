"""A cloud stack made ready for a verb: preflight, its file's config checked, its Pulumi stack opened.

Every cloud verb runs `prepare` first (Pulumi CLI on PATH, the stack file, its config, AWS
credentials) and only then opens the stack through a `StackPort`, so a machine without the cloud
gets one line and exit code 2 before any work. Pulumi itself is imported only by the opener.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from automation import preflight
from automation.scaling import ScaleLimits
from automation.stack_files import read_backend
from automation.stack_port import (
    BackendSettings,
    OutputValue,
    StackBusyError,
    StackMissingError,
    StackOpener,
    StackPort,
    UpdateFailedError,
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
from factory_core.verb_results import DoctorReport
from factory_core.verbs import ProgressSink

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Keys the CLI writes (scale, rotate-certs); `up` sets them only when absent, never back to the file.
CLI_OWNED_KEYS = (SIMULATOR_COUNT_KEY, CERT_GENERATIONS_KEY, ROTATION_KEY)
SECRET_MASK = "[secret]"


def _cloud_doctor(stack: str, project_dir: Path) -> DoctorReport:
    from automation.doctor import cloud_doctor

    return cloud_doctor(stack, project_dir)


@dataclass
class CloudEnv:
    """What the verbs touch outside themselves; tests swap the stack opener for a recording stand-in."""

    project_dir: Path = PROJECT_DIR
    open_stack: StackOpener = open_pulumi_stack
    # Every prerequisite checked together (`doctor`, and before `up`/`preview`).
    doctor: Callable[[str, Path], DoctorReport] = _cloud_doctor


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

    @property
    def region(self) -> str | None:
        return text_or_none(self.config.get("aws:region"))


def text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def require_prerequisites(stack: str, purpose: str, sink: ProgressSink) -> None:
    """`doctor` before work that needs everything: each missing prerequisite is shown, then one line.

    A stack file that cannot be read or does not validate is refused first, in its own one line
    naming the key: on any machine, before anything else is looked at.
    """
    env = cloud_env()
    path = require_stack_file(env.project_dir, stack)
    validate_stack_config(stack, read_config(path, fix=f"edit {path.name}"), path.name)
    report = env.doctor(stack, env.project_dir)
    missing = [check for check in report.checks if not check.ok]
    if not missing:
        return
    if len(missing) == 1:
        (check,) = missing
        raise UsageError(f"{purpose} of stack '{stack}' needs {check.name}: {check.detail}; {check.fix}")
    for check in missing:
        sink.step(f"✗ {check.name}: {check.detail}; {check.fix}", warning=True)
    names = ", ".join(check.name for check in missing)
    raise UsageError(
        f"{purpose} of stack '{stack}' needs {len(missing)} missing prerequisites (listed above): {names}; "
        f"fix them, then `python cli.py doctor --stack {stack}` checks again"
    )


def prepare(
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
    if needs_region and preflight.aws_region(context.region) is None:
        raise UsageError(f"no AWS region for stack '{stack}': set aws:region in {path.name} (or AWS_REGION)")
    state_in_s3 = (context.backend.backend_url or "").startswith("s3://")
    if needs_aws or state_in_s3:
        preflight.require_aws_credentials(purpose)
    return context


def _validate_config(context: StackContext) -> None:
    validate_stack_config(context.name, context.config, context.source)


def validate_stack_config(stack: str, config: Mapping[str, Any], source: str) -> Any:
    """The program's own schema first (so a bad key fails here, not mid-update), then the CLI's keys.

    Returns the program's settings (`infra.settings.StackSettings`).
    """
    from infra.settings import load_settings

    settings = load_settings(stack, program_view(config))
    fleet_of(config, source)
    limits_of(config, source)
    try:
        cert_rotation.parse_generations(config.get(CERT_GENERATIONS_KEY))
        cert_rotation.parse_record(config.get(ROTATION_KEY))
    except cert_rotation.RotationError as exc:
        raise UsageError(f"{exc}; edit {source}") from None
    return settings


def fleet_of(config: Mapping[str, Any], source: str) -> FleetSettings:
    raw = decode_value(config.get(FLEET_KEY))
    if raw is None:
        return FleetSettings()
    try:
        return FleetSettings.model_validate(raw)
    except ValidationError as exc:
        message = describe_validation_error(exc, FLEET_KEY, f"edit {source}", model=FleetSettings)
        raise UsageError(message) from None


def limits_of(config: Mapping[str, Any], source: str) -> ScaleLimits:
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


def needs_confirmation(context: StackContext) -> bool:
    """prod asks before every update unless its file says otherwise; any stack can opt in."""
    raw = context.config.get(CONFIRM_KEY)
    if raw is None:
        return context.name == "prod"
    return str(raw).lower() in ("true", "1", "yes")


def open_stack(context: StackContext, *, create: bool) -> StackPort:
    try:
        return context.env.open_stack(context.name, context.env.project_dir, context.backend, create)
    except StackMissingError:
        where = context.backend.backend_url or "the backend you are logged in to"
        raise UsageError(
            f"stack '{context.name}' does not exist in {where} yet; create it with "
            f"`python cli.py up --stack {context.name}`"
        ) from None
    except StackBusyError:
        raise busy(context.name) from None
    except UpdateFailedError as exc:
        raise OperationFailed(f"could not open stack '{context.name}': {exc}") from None


def busy(stack: str) -> OperationFailed:
    return OperationFailed(
        f"stack '{stack}' is locked by another update; wait for it to finish, or if that run was "
        f"interrupted, release the lock with `pulumi cancel --stack {stack}`"
    )


def apply_stack_config(context: StackContext, port: StackPort) -> dict[str, Any]:
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


def ordered_outputs(outputs: Mapping[str, OutputValue]) -> dict[str, Any]:
    """Output values with secrets masked, Grafana's URL first (what a user opens first), then Prometheus'.

    The settings the last update ran with (`stackSettings`, for the cost change) are for the CLI, not
    for people: left out.
    """
    from infra.settings import SETTINGS_OUTPUT

    def rank(key: str) -> tuple[int, int, str]:
        lowered = key.lower()
        service = 0 if "grafana" in lowered else 1 if "prometheus" in lowered else 2
        return service, 0 if "url" in lowered else 1, lowered

    return {
        key: SECRET_MASK if item.secret else item.value
        for key, item in sorted(outputs.items(), key=lambda item: rank(item[0]))
        if key != SETTINGS_OUTPUT
    }


def outputs_of(port: StackPort) -> dict[str, Any]:
    try:
        return ordered_outputs(port.outputs())
    except UpdateFailedError as exc:
        raise OperationFailed(f"could not read outputs of stack '{port.name}': {exc}") from None
