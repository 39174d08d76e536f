"""`doctor` for a cloud stack: every prerequisite of `up`, checked together, each missing one with its fix.

Also run before `up` and `preview`, so a fresh account learns everything it lacks at once instead
of one failure per attempt (Pulumi CLI, then credentials, then the backend, then Docker, then a
secret the program reads at preview time). The checks only read; nothing is created.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from automation import preflight
from automation.scaling import ScaleLimits
from automation.stack_files import read_backend
from factory_core.errors import UsageError
from factory_core.stack_file import read_config, require_stack_file
from factory_core.verb_results import DoctorReport, PrerequisiteCheck

# The CLI the Automation API drives must be at least the SDK's version from uv.lock: the SDK asks
# for flags and JSON shapes (e.g. `config set-all --json` with structured values) of its own release.
MINIMUM_PULUMI_CLI = metadata.version("pulumi")
IOT_SERVICE_CODE = "iotcore"  # Service Quotas' code for AWS IoT Core
SMTP_SECRET_KEYS = '{"username", "password"}'
CACHE_SECRET_KEYS = '{"username", "accessToken"}'  # what ECR's Docker Hub cache rule reads
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def _run_pulumi_version(path: str) -> str:
    completed = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30, check=False)
    return completed.stdout.strip() or completed.stderr.strip()


def _docker_server_version() -> str | None:
    """The Docker daemon's version, or None when no daemon answers."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        completed = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = completed.stdout.strip()
    return version if completed.returncode == 0 and version else None


def _aws_session(region: str | None) -> Any:
    import boto3

    return boto3.session.Session(region_name=region)


@dataclass(frozen=True)
class DoctorTools:
    """What the checks touch outside the process; tests swap in recorded or mocked ones."""

    pulumi_version: Callable[[str], str] = _run_pulumi_version
    docker_version: Callable[[], str | None] = _docker_server_version
    aws_session: Callable[[str | None], Any] = _aws_session


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def check_pulumi(tools: DoctorTools) -> PrerequisiteCheck:
    path = shutil.which("pulumi")
    if path is None:
        return PrerequisiteCheck("Pulumi CLI", False, "not found on PATH", preflight.PULUMI_INSTALL_HINT)
    found = _version_tuple(tools.pulumi_version(path))
    wanted = _version_tuple(MINIMUM_PULUMI_CLI)
    if found is None or wanted is None or found < wanted:
        shown = ".".join(map(str, found)) if found else "an unknown version"
        return PrerequisiteCheck(
            "Pulumi CLI",
            False,
            f"{shown} at {path}; this code needs {MINIMUM_PULUMI_CLI} or newer",
            f"install Pulumi {MINIMUM_PULUMI_CLI} (`curl -fsSL https://get.pulumi.com | sh -s -- --version "
            f"{MINIMUM_PULUMI_CLI}`)",
        )
    return PrerequisiteCheck("Pulumi CLI", True, f"{'.'.join(map(str, found))} at {path}")


@dataclass
class _Stack:
    """What the checks read about the stack (from its file; the program's settings when they validate)."""

    name: str
    file: Path
    config: dict[str, Any]
    settings: Any  # infra.settings.StackSettings, or None when the config does not validate
    region: str | None


def _load(stack: str, project_dir: Path) -> tuple[_Stack | None, list[PrerequisiteCheck]]:
    try:
        path = require_stack_file(project_dir, stack)
        config = read_config(path, fix=f"edit {path.name}")
    except UsageError as exc:
        return None, [PrerequisiteCheck("stack file", False, "cannot be read", str(exc))]
    from automation.stack_context import validate_stack_config

    region = preflight.aws_region(str(config["aws:region"]) if config.get("aws:region") else None)
    try:
        settings = validate_stack_config(stack, config, path.name)
    except UsageError as exc:
        check = PrerequisiteCheck("stack config", False, "does not validate", str(exc))
        return _Stack(stack, path, config, None, region), [check]
    return _Stack(stack, path, config, settings, region), [PrerequisiteCheck("stack config", True, path.name)]


def cloud_doctor(stack: str, project_dir: Path, tools: DoctorTools | None = None) -> DoctorReport:
    tools = tools or DoctorTools()
    loaded, checks = _load(stack, project_dir)
    checks.append(check_pulumi(tools))
    if loaded is None:
        return DoctorReport(stack, tuple(checks))
    checks.append(_docker(loaded, tools))
    if loaded.region is None:
        checks.append(
            PrerequisiteCheck(
                "AWS region", False, "none", f"set aws:region in {loaded.file.name} (or AWS_REGION)"
            )
        )
        return DoctorReport(stack, tuple(checks))
    session = tools.aws_session(loaded.region)
    account = _account(loaded, session, checks)
    if account is not None:
        checks += list(_aws_checks(loaded, session, project_dir))
    return DoctorReport(stack, tuple(checks))


def _docker(loaded: _Stack, tools: DoctorTools) -> PrerequisiteCheck:
    if loaded.settings is not None and loaded.settings.simulator_image:
        return PrerequisiteCheck(
            "Docker", True, f"not needed: prebuilt image {loaded.settings.simulator_image}"
        )
    version = tools.docker_version()
    if version is None:
        return PrerequisiteCheck(
            "Docker",
            False,
            "no Docker daemon answers (up builds simulator/Dockerfile)",
            "start Docker (`docker info` must work), or set iotfactory:simulatorImage to an image pushed "
            f"by digest (<repo>@sha256:...) in {loaded.file.name}",
        )
    return PrerequisiteCheck("Docker", True, f"daemon {version}")


def _client_error(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', exc)}"


def _account(loaded: _Stack, session: Any, checks: list[PrerequisiteCheck]) -> str | None:
    from botocore.exceptions import BotoCoreError, ClientError

    fix = (
        "run `aws sso login` or `aws configure`, or set AWS_PROFILE (in CI: assume a role with OIDC); "
        "the checks of the backend, secrets, certificate and quotas run once credentials work"
    )
    try:
        identity = session.client("sts").get_caller_identity()
    except (BotoCoreError, ClientError) as exc:
        detail = "none found" if "credentials" in str(exc).lower() else _client_error(exc)
        checks.append(PrerequisiteCheck("AWS credentials", False, detail, fix))
        return None
    account = str(identity["Account"])
    checks.append(PrerequisiteCheck("AWS credentials", True, str(identity.get("Arn", account))))
    pinned = loaded.settings.account_id if loaded.settings is not None else None
    if pinned is not None and pinned != account:
        checks.append(
            PrerequisiteCheck(
                "AWS account",
                False,
                f"the credentials are for {account}, the stack is pinned to {pinned} (iotfactory:accountId)",
                f"use credentials for {pinned} (e.g. another AWS_PROFILE), or correct iotfactory:accountId "
                f"in {loaded.file.name}",
            )
        )
    else:
        pin = f"pinned to {pinned}" if pinned else "any account (iotfactory:accountId not set)"
        checks.append(PrerequisiteCheck("AWS account", True, f"{account}, {pin}"))
    return account


def _aws_checks(loaded: _Stack, session: Any, project_dir: Path) -> Iterator[PrerequisiteCheck]:
    from botocore.exceptions import BotoCoreError, ClientError

    probes: list[tuple[str, Callable[[], PrerequisiteCheck]]] = [
        ("state backend", lambda: _state_backend(loaded, session, project_dir)),
        ("secrets key", lambda: _secrets_key(loaded, session, project_dir)),
    ]
    settings = loaded.settings
    if settings is not None:
        if settings.smtp is not None:
            smtp = settings.smtp.secret_name
            probes.append(("SMTP secret", lambda: _secret(session, "SMTP secret", smtp, SMTP_SECRET_KEYS)))
        if settings.image_cache.enabled and settings.image_cache.docker_hub_secret_name:
            cache = settings.image_cache.docker_hub_secret_name
            probes.append(
                (
                    "image cache secret",
                    lambda: _secret(session, "image cache secret", cache, CACHE_SECRET_KEYS),
                )
            )
        if settings.certificate_arn is not None:
            probes.append(("HTTPS certificate", lambda: _certificate(loaded, session)))
        probes.append(("IoT publish quota", lambda: _iot_quota(loaded, session)))
    for name, probe in probes:
        try:
            yield probe()
        except (BotoCoreError, ClientError) as exc:
            yield PrerequisiteCheck(name, False, _client_error(exc), "check the AWS profile's permissions")


def _missing(exc: Exception, *codes: str) -> bool:
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in codes


def pulumi_login() -> str | None:
    """The backend `pulumi login` selected on this machine (Pulumi keeps it in its credentials file)."""
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    try:
        current = json.loads((home / "credentials.json").read_text(encoding="utf-8")).get("current")
    except (OSError, ValueError, AttributeError):
        return None
    return str(current) if current else None


def _state_backend(loaded: _Stack, session: Any, project_dir: Path) -> PrerequisiteCheck:
    from botocore.exceptions import ClientError

    bootstrap = f"run `python cli.py bootstrap --stack {loaded.name}`"
    url = read_backend(project_dir, loaded.name).backend_url
    if not url and (login := pulumi_login()):
        if not login.startswith("s3://"):
            return PrerequisiteCheck("state backend", True, f"{login} (your `pulumi login`: not checked)")
        url = login
    if not url:
        return PrerequisiteCheck(
            "state backend",
            False,
            "none recorded (automation/backends.yaml, PULUMI_BACKEND_URL) and no `pulumi login`",
            bootstrap,
        )
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        return PrerequisiteCheck("state backend", True, f"{url} (not an S3 backend: not checked)")
    try:
        session.client("s3").head_bucket(Bucket=parsed.netloc)
    except ClientError as exc:
        return PrerequisiteCheck(
            "state backend", False, f"bucket {parsed.netloc}: {_client_error(exc)}", bootstrap
        )
    return PrerequisiteCheck("state backend", True, url)


def _secrets_key(loaded: _Stack, session: Any, project_dir: Path) -> PrerequisiteCheck:
    from botocore.exceptions import ClientError

    bootstrap = f"run `python cli.py bootstrap --stack {loaded.name}`"
    backend = read_backend(project_dir, loaded.name)
    provider = backend.secrets_provider
    login = backend.backend_url or pulumi_login() or ""
    if not provider and login and not login.startswith(("s3://", "file://")):
        return PrerequisiteCheck("secrets key", True, f"the default of {login}")
    passphrase = os.environ.get("PULUMI_CONFIG_PASSPHRASE") or os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if not provider and passphrase:
        return PrerequisiteCheck("secrets key", True, "a passphrase (PULUMI_CONFIG_PASSPHRASE)")
    if not provider or not provider.startswith("awskms://"):
        return PrerequisiteCheck("secrets key", False, f"secrets provider {provider or 'none'}", bootstrap)
    parsed = urlparse(provider)
    key_id = parsed.netloc + parsed.path
    region = (parse_qs(parsed.query).get("region") or [loaded.region])[0]
    try:
        key = session.client("kms", region_name=region).describe_key(KeyId=key_id)["KeyMetadata"]
    except ClientError as exc:
        return PrerequisiteCheck("secrets key", False, f"{key_id}: {_client_error(exc)}", bootstrap)
    if key.get("KeyState") != "Enabled":
        return PrerequisiteCheck(
            "secrets key",
            False,
            f"{key_id} is {key.get('KeyState')}",
            f"enable {key['KeyId']}, then {bootstrap}",
        )
    return PrerequisiteCheck("secrets key", True, f"{key_id} ({key['Arn']})")


def _secret(session: Any, what: str, name: str, holding: str) -> PrerequisiteCheck:
    from botocore.exceptions import ClientError

    create = (
        f"create it: `aws secretsmanager create-secret --name {name} --secret-string '...'` holding {holding}"
    )
    try:
        secret = session.client("secretsmanager").describe_secret(SecretId=name)
    except ClientError as exc:
        if _missing(exc, "ResourceNotFoundException"):
            return PrerequisiteCheck(what, False, f"{name} does not exist", create)
        raise
    if secret.get("DeletedDate"):
        return PrerequisiteCheck(
            what,
            False,
            f"{name} is scheduled for deletion",
            f"`aws secretsmanager restore-secret --secret-id {name}`",
        )
    current = any("AWSCURRENT" in stages for stages in (secret.get("VersionIdsToStages") or {}).values())
    if not current:
        return PrerequisiteCheck(what, False, f"{name} has no value", f"put its value: {holding}")
    return PrerequisiteCheck(what, True, name)


def covers(names: list[str], domain: str) -> bool:
    """Whether a certificate for these names (wildcards one level deep) is valid for `domain`."""
    return any(
        name.lower() == domain.lower()
        or (
            name.startswith("*.")
            and domain.count(".") == name.count(".")
            and fnmatch.fnmatch(domain.lower(), name.lower())
        )
        for name in names
    )


def _certificate(loaded: _Stack, session: Any) -> PrerequisiteCheck:
    from botocore.exceptions import ClientError

    settings = loaded.settings
    arn, domain = settings.certificate_arn, settings.domain_name
    request = (
        f"request one in {loaded.region}: `aws acm request-certificate --domain-name {domain} "
        "--validation-method DNS`, create its DNS validation record, then set iotfactory:certificateArn "
        f"in {loaded.file.name}"
    )
    if arn.split(":")[3] != loaded.region:
        return PrerequisiteCheck(
            "HTTPS certificate", False, f"{arn} is in another region than the ALB", request
        )
    try:
        certificate = session.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]
    except ClientError as exc:
        if _missing(exc, "ResourceNotFoundException", "ValidationException"):
            return PrerequisiteCheck("HTTPS certificate", False, f"{arn} does not exist", request)
        raise
    status = certificate.get("Status")
    if status != "ISSUED":
        fix = (
            "complete its DNS validation (`aws acm describe-certificate` shows the record)"
            if status == "PENDING_VALIDATION"
            else request
        )
        return PrerequisiteCheck("HTTPS certificate", False, f"{arn} is {status}", fix)
    names = [certificate.get("DomainName", ""), *certificate.get("SubjectAlternativeNames", [])]
    if not covers(names, domain):
        return PrerequisiteCheck(
            "HTTPS certificate",
            False,
            f"{arn} does not cover {domain} (it names {', '.join(sorted(set(names)))})",
            request,
        )
    return PrerequisiteCheck("HTTPS certificate", True, f"{arn} covers {domain}")


def _find_publish_quota(quotas: Any) -> float | None:
    for page in quotas:
        for quota in page.get("Quotas", []):
            name = str(quota.get("QuotaName", "")).lower()
            if "publish" in name and "inbound" in name and "connection" not in name:
                return float(quota["Value"])
    return None


def _iot_quota(loaded: _Stack, session: Any) -> PrerequisiteCheck:
    from automation.scaling import plan_scale
    from automation.stack_context import fleet_of, limits_of

    client = session.client("service-quotas")
    applied = _find_publish_quota(
        client.get_paginator("list_service_quotas").paginate(ServiceCode=IOT_SERVICE_CODE)
    )
    if applied is None:
        defaults = client.get_paginator("list_aws_default_service_quotas").paginate(
            ServiceCode=IOT_SERVICE_CODE
        )
        applied = _find_publish_quota(defaults)
    settings = loaded.settings
    limits = limits_of(loaded.config, loaded.file.name)
    fleet = fleet_of(loaded.config, loaded.file.name)
    account_quota = int(applied) if applied is not None else limits.account_publishes_per_second
    plan = plan_scale(
        settings.simulator_count,
        fleet,
        ScaleLimits(
            settings.simulator_count, max(settings.simulator_count, limits.max_simulators), account_quota
        ),
    )
    source = (
        "Service Quotas" if applied is not None else "the documented default (not found in Service Quotas)"
    )
    raise_it = (
        "raise 'Inbound publish requests' for AWS IoT Core in Service Quotas, or run fewer simulators "
        f"(`python cli.py scale --stack {loaded.name} -n {plan.max_simulators_within_quota}`)"
    )
    if plan.publishes_per_second > account_quota:
        return PrerequisiteCheck("IoT publish quota", False, f"{plan.explanation()} ({source})", raise_it)
    if applied is not None and limits.account_publishes_per_second > account_quota:
        return PrerequisiteCheck(
            "IoT publish quota",
            False,
            f"iotfactory:iotPublishQuotaPerSecond says {limits.account_publishes_per_second:,} but the "
            f"account's quota is {account_quota:,}/s",
            f"set it to {account_quota} in {loaded.file.name}, or raise the quota first",
        )
    return PrerequisiteCheck(
        "IoT publish quota",
        True,
        f"{plan.publishes_per_second:,.0f} of {account_quota:,} publishes/s for {settings.simulator_count} "
        f"simulators ({source})",
    )
