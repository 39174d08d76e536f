"""Stack configuration of the cloud stacks (dev, prod) read once into one validated, typed object.

`load_settings(stack, values)` is pure: it takes the stack's config as Pulumi hands it to a program
(`{"iotfactory:simulatorCount": "2", ...}`, structured values as JSON text, see
`factory_core.stack_file.program_view`) and raises `ConfigError` with a one-line message naming the
key (`iotfactory:fleet.qos: ...`). `settings_from_pulumi()` is the only place that touches the Pulumi
runtime; components never read config themselves. The field aliases are the config keys themselves,
as spelled once in `factory_core.stack_file`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from factory_core import stack_file as keys
from factory_core.archive_modes import ArchiveMode
from factory_core.cert_rotation import Generation, Generations, current_generation
from factory_core.errors import SECRET_VALUE_ERROR, UsageError, describe_validation_error
from factory_core.fleet import CLOUD_SIMULATORS, FleetSettings, site_id
from factory_core.stack_file import LOCAL_STACK, REGION_KEY
from infra.image_refs import needs_docker_hub_credentials

PROJECT = keys.NAMESPACE  # Pulumi's config namespace is the project's name

# Values CloudWatch Logs accepts for a log group's retention.
LOG_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)
# Fargate task sizes: cpu units -> allowed memory (MiB), per the ECS task-size table.
FARGATE_MEMORY_BY_CPU: dict[int, range] = {
    256: range(512, 2049, 512),
    512: range(1024, 4097, 1024),
    1024: range(2048, 8193, 1024),
    2048: range(4096, 16385, 1024),
    4096: range(8192, 30721, 1024),
}
# Keys the CLI (automation/) keeps in the same stack file; the program accepts and ignores them.
FOREIGN_KEYS = frozenset(keys.CLI_ONLY_KEYS)
# The stack output holding the settings an update ran with: `up` and `scale` price the change from them.
SETTINGS_OUTPUT = "stackSettings"
# How long Prometheus keeps samples (the monitoring task's flag; the cost model sizes EFS with it).
PROMETHEUS_RETENTION_DAYS = 15


class ConfigError(UsageError):
    """Stack config is missing or invalid; the message names the key and how to fix it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"not a CIDR block ({exc}); e.g. 203.0.113.0/24") from None


CidrBlock = Annotated[str, AfterValidator(_ip_network)]


class NetworkSettings(_Model):
    vpc_cidr: Annotated[CidrBlock, Field(alias="vpcCidr")] = "10.42.0.0/16"
    availability_zones: Annotated[int, Field(alias="availabilityZones", ge=2, le=6)] = 2
    # Tasks in private subnets reach AWS and the image registries through one NAT gateway per AZ.
    private_subnets: Annotated[bool, Field(alias="privateSubnets")] = False

    @field_validator("vpc_cidr")
    @classmethod
    def _room_for_subnets(cls, value: str) -> str:
        network = ipaddress.ip_network(value)
        if network.version != 4 or not 16 <= network.prefixlen <= 20:
            raise ValueError(f"must be an IPv4 block between /16 and /20 (got {value}); e.g. 10.42.0.0/16")
        return value


class ArchiveLifecycle(_Model):
    glacier_after_days: Annotated[int, Field(alias="glacierAfterDays", ge=1)]
    expire_after_days: Annotated[int, Field(alias="expireAfterDays", ge=2)]

    @model_validator(mode="after")
    def _expire_after_transition(self) -> ArchiveLifecycle:
        if self.expire_after_days <= self.glacier_after_days:
            raise ValueError(
                f"expireAfterDays ({self.expire_after_days}) must be greater than glacierAfterDays "
                f"({self.glacier_after_days})"
            )
        return self


class FirehoseBuffering(_Model):
    size_mb: Annotated[int, Field(alias="bufferSizeMb", ge=1, le=128)] = 64
    interval_s: Annotated[int, Field(alias="bufferIntervalS", ge=0, le=900)] = 300


class TaskSize(_Model):
    cpu: int
    memory: int

    @model_validator(mode="after")
    def _fargate_size(self) -> TaskSize:
        allowed = FARGATE_MEMORY_BY_CPU.get(self.cpu)
        if allowed is None:
            raise ValueError(f"cpu must be one of {sorted(FARGATE_MEMORY_BY_CPU)} (got {self.cpu})")
        if self.memory not in allowed:
            raise ValueError(
                f"Fargate cpu {self.cpu} takes memory {allowed.start}-{allowed.stop - 1} MiB in steps of "
                f"{allowed.step} (got {self.memory})"
            )
        return self


class SmtpSettings(_Model):
    # Existing Secrets Manager secret holding JSON {"username": ..., "password": ...}.
    secret_name: Annotated[str, Field(alias="secretName", min_length=1)]
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$")]  # host:port, e.g. email-smtp...:587
    from_address: Annotated[str, Field(alias="fromAddress", pattern=r"^[^@\s]+@[^@\s]+$")]
    # Alert recipients, comma-separated.
    to_addresses: Annotated[
        str, Field(alias="toAddresses", pattern=r"^[^@\s,]+@[^@\s,]+(,\s*[^@\s,]+@[^@\s,]+)*$")
    ]

    # SES SMTP credentials are an IAM user's access key; naming that user lets the rotation Lambda
    # issue new keys (iotfactory:secretRotation). Without it the SMTP secret is not rotated.
    ses_iam_user: Annotated[str | None, Field(alias="sesIamUser", pattern=r"^[\w+=,.@-]{1,64}$")] = None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def ses_region(self) -> str | None:
        """The SES region of an `email-smtp.<region>.amazonaws.com` host (the SMTP password depends on it)."""
        match = re.match(r"^email-smtp\.([a-z0-9-]+)\.amazonaws\.com:", self.host)
        return match.group(1) if match else None

    @model_validator(mode="after")
    def _ses_user_needs_ses(self) -> SmtpSettings:
        if self.ses_iam_user and self.ses_region is None:
            raise ValueError(
                "sesIamUser is for Amazon SES: host must be email-smtp.<region>.amazonaws.com:<port>"
                f" (got {self.host})"
            )
        return self


# --- production hardening: web ACL, monitoring history on EFS, secret rotation ----------------------


class WafSettings(_Model):
    """`iotfactory:waf`: a WAFv2 web ACL on the load balancer (on by default in production)."""

    enabled: bool | None = None  # None: the stack's `production`
    # Requests one client address may send in 5 minutes before it is blocked. A dashboard refreshing
    # 20 panels every 10 s sends ~600; several people behind one office address need more.
    rate_limit: Annotated[int, Field(alias="rateLimit", ge=10, le=2_000_000_000)] = 3_000


class MonitoringHistorySettings(_Model):
    """`iotfactory:monitoringHistory`: Prometheus' TSDB and Grafana's database on EFS."""

    efs: bool = True
    backup: bool | None = None  # AWS Backup's default plan for the file system; None: `production`


# What Secrets Manager takes as a rotation schedule: every N days or hours, or a cron expression.
_ROTATION_SCHEDULE = r"^(rate\(([1-9][0-9]{0,2}) days?\)|rate\(([4-9]|1[0-9]|2[0-3]) hours\)|cron\([^()]+\))$"


class SecretRotationSettings(_Model):
    """`iotfactory:secretRotation`: the Grafana admin password and SES SMTP credentials rotate on this."""

    enabled: bool = True
    schedule: Annotated[str, Field(pattern=_ROTATION_SCHEDULE)] = "rate(30 days)"


class SnsSubscription(_Model):
    """Who the alert topic delivers to; SNS asks each endpoint to confirm before it delivers."""

    protocol: Literal["email", "https"]
    endpoint: Annotated[str, Field(min_length=3, max_length=2048)]

    @model_validator(mode="after")
    def _endpoint_fits_protocol(self) -> SnsSubscription:
        if self.protocol == "email" and not re.fullmatch(r"[^@\s,]+@[^@\s,]+", self.endpoint):
            raise ValueError("endpoint: an e-mail subscription needs one address, e.g. oncall@example.com")
        if self.protocol == "https":
            _plain_https_url(self.endpoint)
        return self


def _plain_https_url(value: str) -> str:
    """An https URL without credentials in it (config is stored in plain text); never echoed."""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise PydanticCustomError(
            SECRET_VALUE_ERROR,
            "must be https://host/path without user:password@ (the value is not shown); e.g. "
            "https://alerts.example.com/hook",
        )
    return value


class AlertingSettings(_Model):
    """Alertmanager's channels besides e-mail (`iotfactory:smtp`): a webhook for every alert, and an
    SNS topic (created by the program, KMS-encrypted) for critical ones when it has subscriptions."""

    webhook_url: Annotated[str | None, Field(alias="webhookUrl", max_length=2048)] = None
    sns_subscriptions: Annotated[
        tuple[SnsSubscription, ...], Field(alias="snsSubscriptions", max_length=20)
    ] = ()

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else _plain_https_url(value)


class ContainerImages(_Model):
    """Third-party images of the monitoring task, pinned by version (override per stack)."""

    prometheus: str = "quay.io/prometheus/prometheus:v2.55.1"
    grafana: str = "docker.io/grafana/grafana-oss:11.4.0"
    config_init: Annotated[str, Field(alias="configInit")] = "public.ecr.aws/aws-cli/aws-cli:2.22.35"
    # Pinned by digest: the manifest list of prom/alertmanager v0.28.1 (the same image as
    # quay.io/prometheus/alertmanager); it reads the config the bundle renders for Debian's 0.25.
    alertmanager: str = (
        "docker.io/prom/alertmanager:v0.28.1"
        "@sha256:27c475db5fb156cab31d5c18a4251ac7ed567746a2483ff264516437a39b15ba"
    )


class ImageCacheSettings(_Model):
    """Third-party images through an ECR pull-through cache (default on in production).

    Docker Hub answers anonymous pulls from a NAT gateway's address with a low hourly limit, so a
    monitoring task that restarts in a bad hour would not start; the cache pulls once per tag.
    """

    enabled: bool
    # Docker Hub needs credentials for a cache rule: a secret named `ecr-pullthroughcache/...`
    # holding {"username", "accessToken"} (an ECR requirement).
    docker_hub_secret_name: Annotated[
        str | None, Field(alias="dockerHubSecretName", pattern=r"^ecr-pullthroughcache/[A-Za-z0-9/_+=.@-]+$")
    ] = None


class StackSettings(_Model):
    """Everything the program needs from `Pulumi.<stack>.yaml`; field aliases are the config keys."""

    stack: str
    region: Annotated[str, Field(alias=REGION_KEY, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    owner: Annotated[str, Field(alias=keys.OWNER_KEY, min_length=1, max_length=128)]
    simulator_count: Annotated[
        int, Field(alias=keys.SIMULATOR_COUNT_KEY, ge=CLOUD_SIMULATORS.minimum, le=CLOUD_SIMULATORS.maximum)
    ]
    archive_mode: Annotated[ArchiveMode, Field(alias=keys.ARCHIVE_MODE_KEY)]
    allowed_cidrs: Annotated[tuple[CidrBlock, ...], Field(alias=keys.ALLOWED_CIDRS_KEY, min_length=1)]
    fleet: Annotated[FleetSettings, Field(alias=keys.FLEET_KEY)] = FleetSettings()
    production: Annotated[bool, Field(alias=keys.PRODUCTION_KEY)] = False
    client_id_prefix: Annotated[
        str, Field(alias=keys.CLIENT_ID_PREFIX_KEY, pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    ]
    cert_generations: Annotated[Generations, Field(alias=keys.CERT_GENERATIONS_KEY)] = (Generation("g1"),)
    network: Annotated[NetworkSettings, Field(alias=keys.NETWORK_KEY)] = NetworkSettings()
    certificate_arn: Annotated[
        str | None,
        Field(
            alias=keys.CERTIFICATE_ARN_KEY, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/.+$"
        ),
    ] = None
    domain_name: Annotated[
        str | None, Field(alias=keys.DOMAIN_NAME_KEY, pattern=r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
    ] = None
    log_retention_days: Annotated[int, Field(alias=keys.LOG_RETENTION_DAYS_KEY)]
    archive_lifecycle: Annotated[ArchiveLifecycle, Field(alias=keys.ARCHIVE_LIFECYCLE_KEY)]
    firehose: Annotated[FirehoseBuffering, Field(alias=keys.FIREHOSE_KEY)] = FirehoseBuffering()
    simulator_task: Annotated[TaskSize, Field(alias=keys.SIMULATOR_TASK_KEY)] = TaskSize(cpu=256, memory=512)
    monitoring_task: Annotated[TaskSize, Field(alias=keys.MONITORING_TASK_KEY)] = TaskSize(
        cpu=512, memory=1024
    )
    scrape_interval_s: Annotated[int, Field(alias=keys.SCRAPE_INTERVAL_KEY, ge=5, le=300)] = 15
    images: Annotated[ContainerImages, Field(alias=keys.IMAGES_KEY)] = ContainerImages()
    # A pre-built simulator image (`<repo>@sha256:...`) instead of building simulator/Dockerfile.
    simulator_image: Annotated[
        str | None, Field(alias=keys.SIMULATOR_IMAGE_KEY, pattern=r"^[^\s@]+@sha256:[0-9a-f]{64}$")
    ] = None
    smtp: Annotated[SmtpSettings | None, Field(alias=keys.SMTP_KEY)] = None
    alerting: Annotated[AlertingSettings, Field(alias=keys.ALERTING_KEY)] = AlertingSettings()
    container_insights: Annotated[bool, Field(alias=keys.CONTAINER_INSIGHTS_KEY)]
    account_id: Annotated[str | None, Field(alias=keys.ACCOUNT_ID_KEY, pattern=r"^\d{12}$")] = None
    # -- production defaults (issue 12) --
    allow_insecure_http: Annotated[bool, Field(alias=keys.ALLOW_INSECURE_HTTP_KEY)] = False
    image_cache: Annotated[ImageCacheSettings, Field(alias=keys.IMAGE_CACHE_KEY)]
    waf: Annotated[WafSettings, Field(alias=keys.WAF_KEY)] = WafSettings()
    monitoring_history: Annotated[MonitoringHistorySettings, Field(alias=keys.MONITORING_HISTORY_KEY)] = (
        MonitoringHistorySettings()
    )
    secret_rotation: Annotated[SecretRotationSettings, Field(alias=keys.SECRET_ROTATION_KEY)] = (
        SecretRotationSettings()
    )

    @field_validator("log_retention_days")
    @classmethod
    def _known_retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch accepts one of {sorted(LOG_RETENTION_DAYS)} (got {value})")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> StackSettings:
        if self.certificate_arn and not self.domain_name:
            raise ValueError(
                f"{keys.DOMAIN_NAME_KEY}: required when certificateArn is set (the name the certificate"
                " is for; point its DNS record at the load balancer)"
            )
        if self.production:
            open_to_all = [cidr for cidr in self.allowed_cidrs if ipaddress.ip_network(cidr).prefixlen == 0]
            if open_to_all:
                raise ValueError(
                    f"{keys.ALLOWED_CIDRS_KEY}: {open_to_all[0]} opens Prometheus (no authentication) to"
                    " the internet on a production stack; list your office or VPN ranges"
                )
        _production_defaults(self)
        return self

    # Derived values: one definition each, used by the program and by its tests.

    @property
    def environment(self) -> str:
        return self.stack

    @property
    def name_prefix(self) -> str:
        return f"{PROJECT}-{self.stack}"

    @property
    def force_destroy(self) -> bool:
        """Buckets and the image repository may be emptied on destroy only outside production."""
        return not self.production

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site_id(index) for index in range(self.simulator_count))

    @property
    def serving_generation(self) -> Generation:
        """The generation the simulators run on: the newest (last listed) ACTIVE one."""
        return current_generation(self.cert_generations)

    @property
    def waf_enabled(self) -> bool:
        return self.production if self.waf.enabled is None else self.waf.enabled

    @property
    def efs_backup(self) -> bool:
        history = self.monitoring_history
        return history.efs and (self.production if history.backup is None else history.backup)

    @property
    def tags(self) -> dict[str, str]:
        return {"Project": PROJECT, "Environment": self.environment, "Owner": self.owner}

    @property
    def topic_namespace(self) -> str:
        """The stack's own topic namespace: factory/simulator/<stack>/... (factory_core.fleet)."""
        return self.stack

    @property
    def task_fleet(self) -> FleetSettings:
        """The fleet as the simulator tasks get it: the user's settings plus the stack's topic namespace."""
        return self.fleet.model_copy(update={"topic_namespace": self.topic_namespace})

    @property
    def https(self) -> bool:
        return self.certificate_arn is not None

    @property
    def ecr_registry(self) -> str | None:
        """This account's ECR registry host, known without AWS when the account is pinned."""
        if self.account_id is None:
            return None
        return f"{self.account_id}.dkr.ecr.{self.region}.amazonaws.com"


def _production_defaults(settings: StackSettings) -> None:
    """Checks a production stack must pass, and the image cache's own needs (one message per key)."""
    if settings.production and not settings.https and not settings.allow_insecure_http:
        raise ValueError(
            f"{keys.CERTIFICATE_ARN_KEY}: required on a production stack (Grafana's login must not travel"
            f" in clear text): set it and {keys.DOMAIN_NAME_KEY} to an ACM certificate in "
            f"{settings.region}, or set {keys.ALLOW_INSECURE_HTTP_KEY}: true to serve HTTP on purpose"
        )
    if settings.production and settings.account_id is None:
        raise ValueError(
            f"{keys.ACCOUNT_ID_KEY}: required on a production stack: the AWS provider is pinned to it, so"
            " credentials for another account fail before anything changes"
        )
    if settings.fleet.topic_namespace is not None:
        raise ValueError(
            f"{keys.FLEET_KEY}.topic_namespace: set by the program to the stack's name "
            f"({settings.stack!r}); remove it from the stack file"
        )
    if settings.image_cache.enabled:
        if settings.account_id is None:
            raise ValueError(
                f"{keys.IMAGE_CACHE_KEY}.enabled: the image cache needs {keys.ACCOUNT_ID_KEY} (the"
                " account whose ECR registry caches the images); set it, or set enabled: false"
            )
        on_docker_hub = needs_docker_hub_credentials(settings.images.model_dump(by_alias=True))
        if on_docker_hub and settings.image_cache.docker_hub_secret_name is None:
            raise ValueError(
                f"{keys.IMAGE_CACHE_KEY}.dockerHubSecretName: required because {keys.IMAGES_KEY}."
                f"{on_docker_hub[0]} is on Docker Hub, which caches only with credentials: create a "
                "secret named ecr-pullthroughcache/<name> holding {\"username\", \"accessToken\"} and name"
                " it here, or set enabled: false"
            )


def _per_stack_defaults(stack: str, production: bool) -> dict[str, Any]:
    return {
        keys.PRODUCTION_KEY: production,
        keys.CLIENT_ID_PREFIX_KEY: f"{PROJECT}-{stack}-",
        keys.LOG_RETENTION_DAYS_KEY: 30 if production else 3,
        keys.ARCHIVE_LIFECYCLE_KEY: (
            {"glacierAfterDays": 90, "expireAfterDays": 730}
            if production
            else {"glacierAfterDays": 30, "expireAfterDays": 120}
        ),
        keys.CONTAINER_INSIGHTS_KEY: production,
        keys.IMAGE_CACHE_KEY: {"enabled": production},
    }


def _program_keys() -> set[str]:
    return {field.alias for field in StackSettings.model_fields.values() if field.alias} | FOREIGN_KEYS


def load_settings(stack: str, values: Mapping[str, Any]) -> StackSettings:
    """Validate a cloud stack's config; raise ConfigError naming the first wrong key."""
    source = f"Pulumi.{stack}.yaml"
    fix = f"edit {source} (see docs/infra.md)"
    if stack == LOCAL_STACK:
        raise ConfigError(
            "stack 'local' is not a Pulumi stack; run the local pipeline with: python cli.py up --stack local"
        )
    try:
        keys.refuse_unknown_keys(values, _program_keys(), "the Pulumi program", fix)
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
    data: dict[str, Any] = {}
    for key, raw in values.items():
        if key == REGION_KEY or (key.startswith(f"{PROJECT}:") and key not in FOREIGN_KEYS):
            # Structured values reach the program as JSON text; scalars stay strings for pydantic.
            structured = isinstance(raw, str) and raw.lstrip()[:1] in ("{", "[")
            try:
                data[key] = keys.parse_json(raw, key, fix) if structured else raw
            except UsageError as exc:
                raise ConfigError(str(exc)) from None
    try:
        production = TypeAdapter(bool).validate_python(data.get(keys.PRODUCTION_KEY, stack == "prod"))
    except ValidationError:
        raise ConfigError(
            f"{keys.PRODUCTION_KEY}: must be true or false (got {data[keys.PRODUCTION_KEY]!r}); {fix}"
        ) from None
    cache = data.get(keys.IMAGE_CACHE_KEY)
    if isinstance(cache, dict):  # `enabled` defaults per stack even when other cache keys are set
        data[keys.IMAGE_CACHE_KEY] = {"enabled": production, **cache}
    merged = {**_per_stack_defaults(stack, production), **data, "stack": stack}
    try:
        return StackSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "", fix, model=StackSettings)) from None


def settings_from_pulumi() -> StackSettings:
    """The running stack's settings (inside a Pulumi program or under mocks)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    # Pulumi hands the whole stack config to the program through PULUMI_CONFIG; tests and the
    # Automation API inline programs set it with set_all_config. Both are merged, explicit last.
    values: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return load_settings(pulumi.get_stack(), values)
