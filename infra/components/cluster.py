"""The ECS cluster the services run in, and the Cloud Map names Prometheus discovers simulators by."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# Each Cloud Map service's A record TTL: a replaced task's new IP is seen within this plus
# Prometheus's DNS refresh interval.
DNS_TTL_S = 10


def discovery_dns_name(site: str, namespace: str) -> str:
    """The DNS name of a site's simulator task: `<site>.<namespace>`, e.g. site-00.dev.iotfactory.internal."""
    return f"{site}.{namespace}"


@dataclass(frozen=True)
class ContainerPlatformArgs:
    cluster_name: str
    vpc_id: pulumi.Input[str]
    namespace: str  # private DNS zone, e.g. "dev.iotfactory.internal"
    container_insights: bool
    sites: tuple[str, ...]  # one Cloud Map service each


class ContainerPlatform(pulumi.ComponentResource):
    """ECS cluster, private DNS namespace and one discovery service (A record) per simulator site.

    One service per site rather than one for the fleet: Route 53 answers a multivalue query with
    at most 8 records, so a single name would show Prometheus a changing subset of a larger fleet.
    A site runs exactly one task, so its name always resolves to that task alone.
    """

    def __init__(
        self, name: str, args: ContainerPlatformArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:cluster:ContainerPlatform", name, None, opts)
        if len(set(args.sites)) != len(args.sites):
            raise ValueError(f"sites repeat: {list(args.sites)}; each site gets one discovery name")
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
        self.discovery_services: dict[str, aws.servicediscovery.Service] = {
            site: aws.servicediscovery.Service(
                f"{name}-{site}",
                name=site,
                namespace_id=namespace.id,
                description=f"Simulator {site}: the A record of its one ECS task (awsvpc: the task's IP)",
                dns_config={
                    "namespace_id": namespace.id,
                    "dns_records": [{"type": "A", "ttl": DNS_TTL_S}],
                    "routing_policy": "MULTIVALUE",
                },
                # ECS reports task health to Cloud Map; stopped tasks leave DNS at once.
                health_check_custom_config={"failure_threshold": 1},
                force_destroy=True,
                tags={"Site": site},
                opts=child,
            )
            for site in args.sites
        }
        self.discovery_dns_names: dict[str, str] = {
            site: discovery_dns_name(site, args.namespace) for site in args.sites
        }
        self.cluster_name: pulumi.Output[str] = self.cluster.name
        self.cluster_arn: pulumi.Output[str] = self.cluster.arn
        self.register_outputs(
            {"clusterName": self.cluster_name, "discoveryDnsNames": self.discovery_dns_names}
        )
