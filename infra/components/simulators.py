"""The simulator fleet: one ECS service of one Fargate task per shard (site), each with its own identity.

Shard i runs site `site-<i:02d>` with the certificate of its own IoT thing, read from Secrets
Manager by its own execution role. A shard never runs two tasks at once (deployments stop the old
task before starting the new one): two tasks of one shard would share client IDs, and AWS IoT
disconnects the older connection of a duplicate client ID. Every task registers its IP in its
site's own Cloud Map service (`<site>.<namespace>`), where Prometheus discovers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.components.iot import CERTIFICATE_PEM_KEY, PRIVATE_KEY_PEM_KEY, ShardIdentity

CONTAINER = "simulator"
MQTT_PORT = 8883
METRICS_PORT = 9100
# The simulator drains its in-flight messages within 30 s of SIGTERM; ECS waits this long before SIGKILL.
STOP_TIMEOUT_S = 45
SIMULATOR_USER = "10001:10001"  # the image's `simulator` user
TMP_VOLUME = "tmp"
TMP_INIT_CONTAINER = "tmp-init"


@dataclass(frozen=True)
class SimulatorFleetArgs:
    account: iam.AccountContext
    cluster_arn: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    assign_public_ip: bool
    discovery_service_arns: Mapping[str, pulumi.Input[str]]  # site -> its Cloud Map service
    image_ref: pulumi.Input[str]  # `<repo>@sha256:...`
    pull_repository_arns: list[pulumi.Input[str]]  # ECR repositories the image may come from
    iot_endpoint: pulumi.Input[str]
    fleet_json: str  # FleetSettings as JSON (FACTORY_CONFIG_JSON)
    shards: Mapping[str, ShardIdentity]  # site -> identity, in shard order
    serving_generation: str
    cpu: int
    memory: int
    log_group_name: str
    log_retention_days: int
    family_prefix: str


class SimulatorFleet(pulumi.ComponentResource):
    """The fleet's log group and one `SimulatorShard` per site."""

    def __init__(
        self, name: str, args: SimulatorFleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:simulators:SimulatorFleet", name, None, opts)
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=args.log_group_name,
            retention_in_days=args.log_retention_days,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.shards = [
            SimulatorShard(
                f"{name}-{site}", index, identity, args, self.log_group, pulumi.ResourceOptions(parent=self)
            )
            for index, (site, identity) in enumerate(args.shards.items())
        ]
        self.service_names: list[pulumi.Output[str]] = [shard.service.name for shard in self.shards]
        self.register_outputs({"serviceNames": self.service_names, "logGroup": self.log_group.name})


class SimulatorShard(pulumi.ComponentResource):
    """One site: execution and task role, task definition, and the service of exactly one task."""

    def __init__(
        self,
        name: str,
        index: int,
        identity: ShardIdentity,
        args: SimulatorFleetArgs,
        log_group: aws.cloudwatch.LogGroup,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("iotfactory:simulators:SimulatorShard", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = args.account
        site = identity.site
        if identity.serving_secret_arn is None:
            raise ValueError(f"{site}: no certificate secret for generation {args.serving_generation}")
        if site not in args.discovery_service_arns:
            raise ValueError(f"{site}: no Cloud Map service to register its task in")

        execution_role = aws.iam.Role(
            f"{name}-execution",
            description=f"ECS agent for simulator {site}: pull the image, write logs, read its certificate",
            assume_role_policy=iam.service_trust(iam.ECS_TASKS),
            opts=child,
        )
        statements = [
            iam.allow(["logs:CreateLogStream"], [account.log_group_arn(log_group.name)]),
            iam.allow(["logs:PutLogEvents"], [account.log_stream_arn(log_group.name, f"{site}/*")]),
            # Every generation of this shard's key (a circuit-breaker rollback starts the previous one).
            iam.allow(["secretsmanager:GetSecretValue"], list(identity.secret_arns.values())),
        ]
        if args.pull_repository_arns:
            statements += [
                iam.wildcard_resource(["ecr:GetAuthorizationToken"]),
                iam.allow(
                    ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                    args.pull_repository_arns,
                ),
            ]
        aws.iam.RolePolicy(
            f"{name}-execution", role=execution_role.id, policy=iam.document(*statements), opts=child
        )
        # The simulator talks MQTT with its certificate and calls no AWS API: its task role has no policy.
        task_role = aws.iam.Role(
            f"{name}-task",
            description=f"Simulator {site} task: no AWS permissions (AWS IoT authenticates its certificate)",
            assume_role_policy=iam.service_trust(
                iam.ECS_TASKS, iam.same_account(account, account.arn("ecs", "*"))
            ),
            opts=child,
        )

        container = pulumi.Output.all(
            image=args.image_ref,
            endpoint=args.iot_endpoint,
            log_group=log_group.name,
            secret=identity.serving_secret_arn,
            site=site,
            region=account.region,
        ).apply(lambda values: [_tmp_init(values), _container(values, index, identity, args)])
        self.task_definition = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{args.family_prefix}-{site}",
            cpu=str(args.cpu),
            memory=str(args.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            volumes=[{"name": TMP_VOLUME}],
            container_definitions=pulumi.Output.json_dumps(container),
            opts=child,
        )
        self.service = aws.ecs.Service(
            f"{name}-service",
            name=f"simulator-{site}",
            cluster=args.cluster_arn,
            task_definition=self.task_definition.arn,
            desired_count=1,
            launch_type="FARGATE",
            platform_version="LATEST",
            # Stop the old task (it drains) before the new one connects with the same client IDs.
            deployment_minimum_healthy_percent=0,
            deployment_maximum_percent=100,
            deployment_circuit_breaker={"enable": True, "rollback": True},
            network_configuration={
                "subnets": args.subnet_ids,
                "security_groups": [args.security_group_id],
                "assign_public_ip": args.assign_public_ip,
            },
            # The site's own discovery name: it resolves to this service's one task only.
            service_registries={"registry_arn": args.discovery_service_arns[site]},
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            # `up` returns once the shard runs its new task: the rotation contract relies on it.
            wait_for_steady_state=True,
            tags={"Site": site, "CertGeneration": args.serving_generation},
            opts=child,
        )
        self.register_outputs({"serviceName": self.service.name, "site": site})


def _logging(values: Mapping[str, str], region: str, stream_prefix: str) -> dict[str, object]:
    return {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": values["log_group"],
            "awslogs-region": region,
            "awslogs-stream-prefix": stream_prefix,
            "mode": "non-blocking",
            "max-buffer-size": "4m",
        },
    }


def _tmp_init(values: Mapping[str, str]) -> dict[str, object]:
    """Makes the fresh /tmp volume (root-owned, 0755 on Fargate) writable for the simulator user.

    The root filesystem is read-only and the simulator writes its certificate files under /tmp,
    so /tmp must be a volume the simulator user can write. Root is needed only to chmod the volume
    it owns; every capability is dropped and the container exits before the simulator starts.
    """
    return {
        "name": TMP_INIT_CONTAINER,
        "image": values["image"],
        "essential": False,
        "user": "0",
        "readonlyRootFilesystem": True,
        "entryPoint": ["python", "-c", "import os; os.chmod('/tmp', 0o1777)"],
        "mountPoints": [{"sourceVolume": TMP_VOLUME, "containerPath": "/tmp", "readOnly": False}],
        "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
        "logConfiguration": _logging(values, values["region"], values["site"]),
    }


def _container(
    values: Mapping[str, str], index: int, identity: ShardIdentity, args: SimulatorFleetArgs
) -> dict[str, object]:
    secret = values["secret"]
    environment = {
        "FACTORY_ENDPOINT": values["endpoint"],
        "FACTORY_PORT": str(MQTT_PORT),
        "FACTORY_SITE_INDEX": str(index),
        "FACTORY_CLIENT_ID_PREFIX": identity.client_id_prefix,
        "FACTORY_METRICS_PORT": str(METRICS_PORT),
        "FACTORY_CONFIG_JSON": args.fleet_json,
        "FACTORY_CERT_GENERATION": args.serving_generation,
    }
    return {
        "name": CONTAINER,
        "image": values["image"],
        "essential": True,
        "user": SIMULATOR_USER,
        "readonlyRootFilesystem": True,
        "stopTimeout": STOP_TIMEOUT_S,
        "environment": [{"name": key, "value": value} for key, value in sorted(environment.items())],
        # ECS reads the JSON keys of the shard's secret at task start; the key stays out of the definition.
        "secrets": [
            {"name": "FACTORY_CERT_PEM", "valueFrom": f"{secret}:{CERTIFICATE_PEM_KEY}::"},
            {"name": "FACTORY_KEY_PEM", "valueFrom": f"{secret}:{PRIVATE_KEY_PEM_KEY}::"},
        ],
        "portMappings": [{"containerPort": METRICS_PORT, "protocol": "tcp"}],
        "dependsOn": [{"containerName": TMP_INIT_CONTAINER, "condition": "SUCCESS"}],
        # The certificate files are written to a private folder under /tmp (root filesystem is read-only).
        "mountPoints": [{"sourceVolume": TMP_VOLUME, "containerPath": "/tmp", "readOnly": False}],
        "healthCheck": {
            # The same probe as the image's HEALTHCHECK (ECS ignores HEALTHCHECK in images).
            "command": [
                "CMD",
                "python",
                "-c",
                "import urllib.request; "
                f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=4).read(1)",
            ],
            "interval": 30,
            "timeout": 5,
            "retries": 3,
            "startPeriod": 60,
        },
        "linuxParameters": {"initProcessEnabled": True, "capabilities": {"drop": ["ALL"]}},
        "logConfiguration": _logging(values, args.account.region, identity.site),
    }
