"""The ECS cluster the services run in, and the Cloud Map name Prometheus discovers simulators by."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

SIMULATORS_SERVICE = "simulators"
# Route 53 answers a multivalue query with at most 8 records: Prometheus, resolving one name, sees
# at most this many simulator tasks per DNS refresh.
DNS_MULTIVALUE_ANSWER_LIMIT = 8


@dataclass(frozen=True)
class ContainerPlatformArgs:
    cluster_name: str
    vpc_id: pulumi.Input[str]
    namespace: str  # private DNS zone, e.g. "dev.iotfactory.internal"
    container_insights: bool


class ContainerPlatform(pulumi.ComponentResource):
    """ECS cluster, private DNS namespace and the `simulators` discovery service (A records)."""

    def __init__(
        self, name: str, args: ContainerPlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:cluster:ContainerPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.cluster = aws.ecs.Cluster(
            name,
            name=args.cluster_name,
            settings=[
                {"name": "containerInsights", "value": "enabled" if args.container_insights else "disabled"}
            ],
            opts=child,
        )
        namespace = aws.servicediscovery.PrivateDnsNamespace(
            f"{name}-namespace",
            name=args.namespace,
            vpc=args.vpc_id,
            description="Service discovery for the factory simulator platform",
            opts=child,
        )
        self.discovery_service = aws.servicediscovery.Service(
            f"{name}-simulators",
            name=SIMULATORS_SERVICE,
            namespace_id=namespace.id,
            dns_config={
                "namespace_id": namespace.id,
                # One A record per running simulator task (awsvpc: the task's own IP).
                "dns_records": [{"type": "A", "ttl": 10}],
                "routing_policy": "MULTIVALUE",
            },
            # ECS reports task health to Cloud Map; stopped tasks leave DNS at once.
            health_check_custom_config={"failure_threshold": 1},
            force_destroy=True,
            opts=child,
        )
        self.cluster_name: pulumi.Output[str] = self.cluster.name
        self.cluster_arn: pulumi.Output[str] = self.cluster.arn
        self.discovery_dns_name = f"{SIMULATORS_SERVICE}.{args.namespace}"
        self.register_outputs({"clusterName": self.cluster_name, "discoveryDnsName": self.discovery_dns_name})
