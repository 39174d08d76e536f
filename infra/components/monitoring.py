"""The monitoring service: one Fargate task with Prometheus and Grafana behind the ALB, and
Alertmanager beside them (reached on localhost only).

The task's first container (`config-init`, the AWS CLI image) syncs the config bundle from the
config bucket into shared volumes and exits; Prometheus and Grafana start only after it
succeeded and read their config from those volumes. The bundle's sha256 is in the task
definition, so changing a dashboard or a rule and running `up` rolls the service without an
image rebuild. Where each part of the bundle is mounted, and the Prometheus flags and Grafana
settings that point at it, come from `observability.config_bundle` (`ConfigLayout`).

With `history` (`infra/components/monitoring_history.py`), Prometheus' TSDB and Grafana's database
are EFS volumes instead of task storage, so a roll keeps them; the service then stops its old task
before starting the new one (one writer per database). Grafana sets its admin password from the
secret at every start, so a rotated secret applies on the next roll even with a kept database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra import iam
from infra.components import alertmanager_task, fargate
from infra.components.alerting import AlertTopic
from infra.components.firewall import GRAFANA_PORT, PROMETHEUS_PORT
from infra.components.loadbalancer import PROMETHEUS_PATH
from infra.components.monitoring_history import (
    GRAFANA_ENTRYPOINT,
    GRAFANA_VOLUME,
    PROMETHEUS_NO_LOCKFILE,
    PROMETHEUS_VOLUME,
    HistoryVolumes,
    data_volumes,
)
from infra.settings import PROMETHEUS_RETENTION_DAYS

CONFIG_PREFIX = "monitoring/"  # where the bundle lives in the config bucket
PROMETHEUS_CONFIG_KEY = "prometheus/prometheus.yml"
PROMETHEUS_DATA = "/prometheus"
GRAFANA_DATA = "/var/lib/grafana"
PROMETHEUS_UID = "65534"  # "nobody", the user the Prometheus image runs as
GRAFANA_UID = "472"  # the user the Grafana image runs as
INIT_CONTAINER = "config-init"
PROMETHEUS_CONTAINER = "prometheus"
GRAFANA_CONTAINER = "grafana"
PROMETHEUS_RETENTION = f"{PROMETHEUS_RETENTION_DAYS}d"
_CONTENT_TYPES = {".yml": "application/yaml", ".yaml": "application/yaml", ".json": "application/json"}


def bundle_sha256(files: Mapping[str, str]) -> str:
    """One digest over every (key, content) of the bundle, independent of dict order."""
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + hashlib.sha256(files[key].encode()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class ConfigLayout:
    """Where the bundle is mounted in the task, and the settings that make the services read it there."""

    directories: Mapping[str, str]  # bundle key prefix ("prometheus/") -> directory in the containers
    prometheus_args: tuple[str, ...]  # e.g. --config.file=..., --web.route-prefix=/prometheus/
    grafana_environment: Mapping[str, str]  # e.g. GF_PATHS_PROVISIONING
    alert_email_env: str  # variable the provisioned e-mail contact point takes its recipients from
    # Alertmanager: placeholder in its config -> environment variable the container fills it from,
    # the task-local folder it writes the result and the SMTP password file to.
    alertmanager_placeholders: Mapping[str, str] = field(default_factory=dict)
    alertmanager_run_dir: str = "/run/alertmanager"
    smtp_password_file: str = "/run/alertmanager/smtp-password"

    def volume(self, prefix: str) -> str:
        return f"{prefix.strip('/')}-config"

    def directory_of(self, key: str) -> str:
        for prefix, directory in self.directories.items():
            if key.startswith(prefix):
                return directory
        raise ValueError(f"bundle key {key!r} is under none of {sorted(self.directories)}")


@dataclass(frozen=True)
class SmtpSecret:
    """Grafana's alert e-mail: credentials from an existing secret {"username", "password"}."""

    secret_arn: pulumi.Input[str]
    host: str  # host:port
    from_address: str
    to_addresses: str  # comma-separated recipients


@dataclass(frozen=True)
class MonitoringServiceArgs:
    account: iam.AccountContext
    cluster_arn: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    assign_public_ip: bool
    config_bucket_name: pulumi.Input[str]
    config_files: Mapping[str, str]  # bundle: relative path -> content
    layout: ConfigLayout
    prometheus_target_group_arn: pulumi.Input[str]
    grafana_target_group_arn: pulumi.Input[str]
    base_url: pulumi.Input[str]  # e.g. https://grafana.example.com, no trailing slash
    https: bool
    prometheus_image: str
    grafana_image: str
    config_init_image: str
    alertmanager_image: str
    cpu: int
    memory: int
    log_group_name: str
    log_retention_days: int
    family: str
    smtp: SmtpSecret | None = None
    alert_topic: AlertTopic | None = None  # Alertmanager publishes critical alerts there
    secret_recovery_days: int = 7
    depends_on: tuple[pulumi.Resource, ...] = ()  # e.g. the listener rules the target groups hang off
    # More for the execution role (e.g. pulling through the image cache) and what it needs to exist.
    execution_statements: tuple[iam.PolicyStatement, ...] = ()
    image_sources: tuple[pulumi.Resource, ...] = ()  # e.g. the pull-through cache rules
    history: HistoryVolumes | None = None  # Prometheus' TSDB and Grafana's database on EFS


class MonitoringService(pulumi.ComponentResource):
    """Config objects, admin password secret, log group, roles, task definition and ECS service."""

    def __init__(
        self, name: str, args: MonitoringServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:monitoring:MonitoringService", name, None, opts)
        if not args.config_files:
            raise ValueError(
                "the monitoring config bundle is empty; observability.config_bundle produced nothing"
            )
        if PROMETHEUS_CONFIG_KEY not in args.config_files:
            raise ValueError(f"the monitoring config bundle has no {PROMETHEUS_CONFIG_KEY}")
        for key in args.config_files:
            args.layout.directory_of(key)  # every file must land somewhere a container reads
        child = pulumi.ResourceOptions(parent=self)
        account = args.account
        self.config_sha256 = bundle_sha256(args.config_files)

        config_objects = [
            aws.s3.BucketObjectv2(
                f"{name}-config-{key}",
                bucket=args.config_bucket_name,
                key=f"{CONFIG_PREFIX}{key}",
                content=content,
                content_type=_content_type(key),
                server_side_encryption="AES256",
                opts=child,
            )
            for key, content in sorted(args.config_files.items())
        ]

        password = random.RandomPassword(f"{name}-grafana-admin", length=32, special=False, opts=child)
        self.admin_secret = aws.secretsmanager.Secret(
            f"{name}-grafana-admin",
            description="Grafana admin password (user: admin)",
            recovery_window_in_days=args.secret_recovery_days,
            opts=child,
        )
        admin_version = aws.secretsmanager.SecretVersion(
            f"{name}-grafana-admin",
            secret_id=self.admin_secret.id,
            secret_string=password.result,
            opts=child,
        )

        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", name=args.log_group_name, retention_in_days=args.log_retention_days, opts=child
        )
        execution_role = fargate.execution_role(
            name, "ECS agent for the monitoring task: write its logs, read its secrets", child
        )
        readable_secrets: list[pulumi.Input[str]] = [self.admin_secret.arn]
        if args.smtp:
            readable_secrets.append(args.smtp.secret_arn)
        execution_policy = aws.iam.RolePolicy(
            f"{name}-execution",
            role=execution_role.id,
            policy=iam.document(
                *fargate.log_writer_statements(account, self.log_group.name, "monitoring/*"),
                iam.allow(["secretsmanager:GetSecretValue"], readable_secrets),
                *args.execution_statements,
            ),
            opts=child,
        )
        task_role = fargate.task_role(
            name, "Monitoring task: read its config bundle from the config bucket", account, child
        )
        task_policy = aws.iam.RolePolicy(
            f"{name}-task",
            role=task_role.id,
            policy=iam.document(
                iam.allow(
                    ["s3:ListBucket"],
                    [account.s3_arn(args.config_bucket_name)],
                    condition={"StringLike": {"s3:prefix": [CONFIG_PREFIX, f"{CONFIG_PREFIX}*"]}},
                ),
                iam.allow(["s3:GetObject"], [account.s3_arn(args.config_bucket_name, f"{CONFIG_PREFIX}*")]),
                *(args.alert_topic.publisher_statements() if args.alert_topic else ()),
                *(args.history.task_role_statements() if args.history else ()),
            ),
            opts=child,
        )
        if args.alert_topic:
            args.alert_topic.allow_only_publisher(task_role.arn)

        containers = pulumi.Output.all(
            base_url=args.base_url,
            bucket=args.config_bucket_name,
            log_group=self.log_group.name,
            admin_secret=self.admin_secret.arn,
            smtp_secret=args.smtp.secret_arn if args.smtp else "",
            alert_topic=args.alert_topic.topic_arn if args.alert_topic else "",
        ).apply(lambda values: self._containers(args, values))
        self.task_definition = fargate.task_definition(
            name,
            family=args.family,
            cpu=args.cpu,
            memory=args.memory,
            execution_role=execution_role,
            task_role=task_role,
            volumes=[
                *(args.layout.volume(prefix) for prefix in sorted(args.layout.directories)),
                *data_volumes(args.history),
                "grafana-tmp",
                "init-tmp",
                alertmanager_task.DATA_VOLUME,
                alertmanager_task.RUN_VOLUME,
            ],
            containers=containers,
            # A task must not start before its secret has a value and its roles hold their policies.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[admin_version, execution_policy, task_policy, *args.image_sources],
            ),
        )
        self.service = aws.ecs.Service(
            f"{name}-service",
            name="monitoring",
            cluster=args.cluster_arn,
            task_definition=self.task_definition.arn,
            desired_count=1,
            launch_type="FARGATE",
            platform_version="LATEST",
            # Without history: start the new task before stopping the old one, so Grafana and Prometheus
            # stay reachable. With history on EFS: stop first, never two writers on one database.
            deployment_minimum_healthy_percent=0 if args.history else 100,
            deployment_maximum_percent=100 if args.history else 200,
            deployment_circuit_breaker={"enable": True, "rollback": True},
            health_check_grace_period_seconds=120,
            network_configuration=fargate.awsvpc_network(
                args.subnet_ids, args.security_group_id, args.assign_public_ip
            ),
            load_balancers=[
                {
                    "target_group_arn": args.prometheus_target_group_arn,
                    "container_name": PROMETHEUS_CONTAINER,
                    "container_port": PROMETHEUS_PORT,
                },
                {
                    "target_group_arn": args.grafana_target_group_arn,
                    "container_name": GRAFANA_CONTAINER,
                    "container_port": GRAFANA_PORT,
                },
            ],
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            wait_for_steady_state=True,
            # New tasks must find the bundle they were defined for.
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    *config_objects,
                    *args.depends_on,
                    *(args.history.mount_targets if args.history else ()),
                ],
            ),
        )
        self.service_name: pulumi.Output[str] = self.service.name
        self.task_role_arn: pulumi.Output[str] = task_role.arn
        self.register_outputs(
            {
                "serviceName": self.service_name,
                "configSha256": self.config_sha256,
                "adminSecretArn": self.admin_secret.arn,
                "logGroup": self.log_group.name,
            }
        )

    def _containers(self, args: MonitoringServiceArgs, values: dict[str, str]) -> list[dict[str, object]]:
        base_url = values["base_url"].rstrip("/")

        log_configuration = fargate.awslogs(values["log_group"], args.account.region, "monitoring")
        layout = args.layout
        sync = [
            f'aws s3 sync "s3://$CONFIG_BUCKET/{CONFIG_PREFIX}{prefix}" /mnt/{layout.volume(prefix)}/ '
            "--delete --no-progress --only-show-errors"
            for prefix in sorted(layout.directories)
        ]
        prometheus_config_dir = layout.directory_of(PROMETHEUS_CONFIG_KEY)
        prometheus_config_name = PROMETHEUS_CONFIG_KEY.removeprefix("prometheus/")
        # Root only to hand the fresh volumes to the users of the other containers; it exits first.
        init_script = " && ".join(
            [
                "set -eu",
                *sync,
                f"test -s /mnt/{layout.volume('prometheus/')}/{prometheus_config_name}",
                *(f"chmod -R a+rX /mnt/{layout.volume(prefix)}" for prefix in sorted(layout.directories)),
                # EFS access points own their directories already (and refuse a chown).
                *(
                    ()
                    if args.history
                    else (
                        f"chown -R {PROMETHEUS_UID}:{PROMETHEUS_UID} /mnt/prometheus-data",
                        f"chown -R {GRAFANA_UID}:0 /mnt/grafana-data",
                    )
                ),
                "chmod 1777 /mnt/grafana-tmp",
                *(
                    f"chown -R {alertmanager_task.UID}:{alertmanager_task.UID} /mnt/{volume}"
                    for volume in (alertmanager_task.DATA_VOLUME, alertmanager_task.RUN_VOLUME)
                ),
                'echo "config bundle sha256 $CONFIG_SHA256 synced"',
            ]
        )
        init = {
            "name": INIT_CONTAINER,
            "image": args.config_init_image,
            "essential": False,
            "user": "0",
            "readonlyRootFilesystem": True,
            "entryPoint": ["/bin/sh", "-c"],
            "command": [init_script],
            "environment": fargate.environment(
                {
                    "CONFIG_BUCKET": values["bucket"],
                    "CONFIG_SHA256": self.config_sha256,
                    "AWS_REGION": args.account.region,
                    "HOME": "/tmp",
                }
            ),
            "mountPoints": [
                *(
                    fargate.mount(volume, f"/mnt/{volume}")
                    for volume in (
                        *(layout.volume(prefix) for prefix in sorted(layout.directories)),
                        *(() if args.history else (PROMETHEUS_VOLUME, GRAFANA_VOLUME)),
                        "grafana-tmp",
                        alertmanager_task.DATA_VOLUME,
                        alertmanager_task.RUN_VOLUME,
                    )
                ),
                fargate.mount("init-tmp", "/tmp"),
            ],
            # Keeps CHOWN/FOWNER/DAC_OVERRIDE for the volume hand-over; everything else dropped.
            "linuxParameters": {
                "initProcessEnabled": True,
                "capabilities": {
                    "drop": [
                        "AUDIT_WRITE",
                        "FSETID",
                        "KILL",
                        "MKNOD",
                        "NET_BIND_SERVICE",
                        "NET_RAW",
                        "SETFCAP",
                        "SETGID",
                        "SETPCAP",
                        "SETUID",
                        "SYS_CHROOT",
                    ]
                },
            },
            "logConfiguration": log_configuration,
        }
        prometheus = {
            "name": PROMETHEUS_CONTAINER,
            "image": args.prometheus_image,
            "essential": True,
            "user": f"{PROMETHEUS_UID}:{PROMETHEUS_UID}",
            "readonlyRootFilesystem": True,
            "command": prometheus_command(
                layout.prometheus_args,
                (
                    f"--config.file={prometheus_config_dir}/{prometheus_config_name}",
                    f"--storage.tsdb.path={PROMETHEUS_DATA}",
                    f"--storage.tsdb.retention.time={PROMETHEUS_RETENTION}",
                    f"--web.listen-address=:{PROMETHEUS_PORT}",
                    f"--web.route-prefix={PROMETHEUS_PATH}/",
                    f"--web.external-url={base_url}{PROMETHEUS_PATH}/",
                    *((PROMETHEUS_NO_LOCKFILE,) if args.history else ()),
                ),
            ),
            "portMappings": [{"containerPort": PROMETHEUS_PORT, "protocol": "tcp"}],
            "dependsOn": [{"containerName": INIT_CONTAINER, "condition": "SUCCESS"}],
            "mountPoints": [
                fargate.mount(layout.volume("prometheus/"), prometheus_config_dir, read_only=True),
                fargate.mount(PROMETHEUS_VOLUME, PROMETHEUS_DATA),
            ],
            "healthCheck": fargate.health_check(
                _http_probe(f"http://127.0.0.1:{PROMETHEUS_PORT}{PROMETHEUS_PATH}/-/healthy"),
                interval=15,
                start_period=30,
            ),
            "linuxParameters": fargate.HARDENED_LINUX,
            "logConfiguration": log_configuration,
        }
        grafana_env = {
            **layout.grafana_environment,
            "GF_PATHS_DATA": GRAFANA_DATA,
            "GF_SERVER_ROOT_URL": f"{base_url}/",
            "GF_SECURITY_ADMIN_USER": "admin",
            "GF_SECURITY_COOKIE_SECURE": "true" if args.https else "false",
            "GF_SECURITY_DISABLE_GRAVATAR": "true",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_LOG_MODE": "console",
            "GF_SMTP_ENABLED": "true" if args.smtp else "false",
            # The provisioned e-mail contact point reads its recipients from here; without SMTP
            # nothing is sent, but the contact point still needs a syntactically valid address.
            layout.alert_email_env: args.smtp.to_addresses
            if args.smtp
            else "alerts-disabled@example.invalid",
            "CONFIG_SHA256": self.config_sha256,
        }
        secrets = [{"name": "GF_SECURITY_ADMIN_PASSWORD", "valueFrom": values["admin_secret"]}]
        if args.smtp:
            grafana_env |= {
                "GF_SMTP_HOST": args.smtp.host,
                "GF_SMTP_FROM_ADDRESS": args.smtp.from_address,
                "GF_SMTP_STARTTLS_POLICY": "MandatoryStartTLS",
            }
            secrets += [
                {"name": "GF_SMTP_USER", "valueFrom": f"{values['smtp_secret']}:username::"},
                {"name": "GF_SMTP_PASSWORD", "valueFrom": f"{values['smtp_secret']}:password::"},
            ]
        grafana = {
            "name": GRAFANA_CONTAINER,
            "image": args.grafana_image,
            "essential": True,
            "user": f"{GRAFANA_UID}:0",
            "readonlyRootFilesystem": True,
            "entryPoint": ["/bin/sh", "-c"],
            "command": [GRAFANA_ENTRYPOINT],
            "environment": fargate.environment(grafana_env),
            "secrets": secrets,
            "portMappings": [{"containerPort": GRAFANA_PORT, "protocol": "tcp"}],
            "dependsOn": [
                {"containerName": INIT_CONTAINER, "condition": "SUCCESS"},
                {"containerName": PROMETHEUS_CONTAINER, "condition": "START"},
            ],
            "mountPoints": [
                fargate.mount(layout.volume("grafana/"), layout.directory_of("grafana/"), read_only=True),
                fargate.mount(GRAFANA_VOLUME, GRAFANA_DATA),
                fargate.mount("grafana-tmp", "/tmp"),
            ],
            "healthCheck": fargate.health_check(
                _http_probe(f"http://127.0.0.1:{GRAFANA_PORT}/api/health"), interval=15, start_period=60
            ),
            "linuxParameters": fargate.HARDENED_LINUX,
            "logConfiguration": log_configuration,
        }
        return [init, prometheus, grafana, self._alertmanager(args, values, log_configuration)]

    def _alertmanager(
        self, args: MonitoringServiceArgs, values: dict[str, str], log_configuration: dict[str, object]
    ) -> dict[str, object]:
        layout = args.layout
        secrets = []
        if args.smtp:
            secrets = [
                {"name": "SMTP_USERNAME", "valueFrom": f"{values['smtp_secret']}:username::"},
                {"name": "SMTP_PASSWORD", "valueFrom": f"{values['smtp_secret']}:password::"},
            ]
        environment = {"AWS_REGION": args.account.region, "CONFIG_SHA256": self.config_sha256}
        if values["alert_topic"]:
            environment["SNS_TOPIC_ARN"] = values["alert_topic"]
        return alertmanager_task.container(
            image=args.alertmanager_image,
            config_volume=layout.volume("alertmanager/"),
            config_dir=layout.directory_of("alertmanager/"),
            run_dir=layout.alertmanager_run_dir,
            script=alertmanager_task.startup_script(
                layout.directory_of("alertmanager/"),
                layout.alertmanager_run_dir,
                layout.alertmanager_placeholders,
                layout.smtp_password_file,
            ),
            environment=environment,
            secrets=secrets,
            log_configuration=log_configuration,
            depends_on=[{"containerName": INIT_CONTAINER, "condition": "SUCCESS"}],
        )


def prometheus_command(required: tuple[str, ...], defaults: tuple[str, ...]) -> list[str]:
    """`required` flags (from the bundle's layout) plus each default whose flag they do not set.

    Prometheus refuses a flag given twice, so a default never repeats a required flag.
    """
    given = {flag.split("=", 1)[0] for flag in required}
    return [*required, *(flag for flag in defaults if flag.split("=", 1)[0] not in given)]


def _http_probe(url: str) -> list[str]:
    return ["wget", "-q", "-O", "/dev/null", url]


def _content_type(key: str) -> str:
    suffix = key[key.rfind(".") :] if "." in key else ""
    return _CONTENT_TYPES.get(suffix, "text/plain")
