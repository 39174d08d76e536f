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
from infra.components import fargate
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
    topic_prefix: str = ""  # Basic Ingest: `$aws/rules/<rule>/` before every topic (FACTORY_TOPIC_PREFIX)


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
        # What `rotate-certs` checks in ECS before it deactivates a generation: per site, the
        # service, the task definition its tasks must run, and that definition's certificate generation.
        self.site_deployments: dict[str, dict[str, pulumi.Input[str]]] = {
            shard.site: {
                "serviceName": shard.service.name,
                "taskDefinitionArn": shard.task_definition.arn,
                "certGeneration": args.serving_generation,
            }
            for shard in self.shards
        }
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

        execution_role = fargate.execution_role(
            name, f"ECS agent for simulator {site}: pull the image, write logs, read its certificate", child
        )
        statements = [
            *fargate.log_writer_statements(account, log_group.name, f"{site}/*"),
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
        execution_policy = aws.iam.RolePolicy(
            f"{name}-execution", role=execution_role.id, policy=iam.document(*statements), opts=child
        )
        # The simulator talks MQTT with its certificate and calls no AWS API: its task role has no policy.
        task_role = fargate.task_role(
            name,
            f"Simulator {site} task: no AWS permissions (AWS IoT authenticates its certificate)",
            account,
            child,
        )

        container = pulumi.Output.all(
            image=args.image_ref,
            endpoint=args.iot_endpoint,
            log_group=log_group.name,
            secret=identity.serving_secret_arn,
            site=site,
            region=account.region,
        ).apply(lambda values: [_tmp_init(values), _container(values, index, identity, args)])
        self.task_definition = fargate.task_definition(
            name,
            family=f"{args.family_prefix}-{site}",
            cpu=args.cpu,
            memory=args.memory,
            execution_role=execution_role,
            task_role=task_role,
            volumes=[TMP_VOLUME],
            containers=container,
            # A task must not start before its certificate works and its role may read it: the secret
            # has its value, the certificate is attached to the thing and the policy, the role its policy.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[execution_policy, *identity.ready[args.serving_generation]]
            ),
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
            network_configuration=fargate.awsvpc_network(
                args.subnet_ids, args.security_group_id, args.assign_public_ip
            ),
            # The site's own discovery name: it resolves to this service's one task only.
            service_registries={"registry_arn": args.discovery_service_arns[site]},
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            # `up` returns once the shard runs its new task: the rotation contract relies on it.
            wait_for_steady_state=True,
            tags={"Site": site, "CertGeneration": args.serving_generation},
            opts=child,
        )
        self.site = site
        self.register_outputs({"serviceName": self.service.name, "site": site})


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
        "mountPoints": [fargate.mount(TMP_VOLUME, "/tmp")],
        "linuxParameters": fargate.HARDENED_LINUX,
        "logConfiguration": fargate.awslogs(values["log_group"], values["region"], values["site"]),
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
    if args.topic_prefix:  # only then: other stacks' task definitions stay as they were
        environment["FACTORY_TOPIC_PREFIX"] = args.topic_prefix
    return {
        "name": CONTAINER,
        "image": values["image"],
        "essential": True,
        "user": SIMULATOR_USER,
        "readonlyRootFilesystem": True,
        "stopTimeout": STOP_TIMEOUT_S,
        "environment": fargate.environment(environment),
        # ECS reads the JSON keys of the shard's secret at task start; the key stays out of the definition.
        "secrets": [
            {"name": "FACTORY_CERT_PEM", "valueFrom": f"{secret}:{CERTIFICATE_PEM_KEY}::"},
            {"name": "FACTORY_KEY_PEM", "valueFrom": f"{secret}:{PRIVATE_KEY_PEM_KEY}::"},
        ],
        "portMappings": [{"containerPort": METRICS_PORT, "protocol": "tcp"}],
        "dependsOn": [{"containerName": TMP_INIT_CONTAINER, "condition": "SUCCESS"}],
        # The certificate files are written to a private folder under /tmp (root filesystem is read-only).
        "mountPoints": [fargate.mount(TMP_VOLUME, "/tmp")],
        # The same probe as the image's HEALTHCHECK.
        "healthCheck": fargate.health_check(
            [
                "python",
                "-c",
                "import urllib.request; "
                f"urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=4).read(1)",
            ],
            interval=30,
            start_period=60,
        ),
        "linuxParameters": fargate.HARDENED_LINUX,
        "logConfiguration": fargate.awslogs(values["log_group"], args.account.region, identity.site),
    }
