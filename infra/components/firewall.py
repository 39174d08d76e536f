"""Security groups: the internet reaches only the load balancer, which reaches only Grafana and Prometheus.

Every rule is its own resource (`aws.vpc.SecurityGroupIngressRule` / `EgressRule`), so groups can
reference each other without cycles and a rule change never replaces a group.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

GRAFANA_PORT = 3000
PROMETHEUS_PORT = 9090
HTTPS_PORT = 443
MQTT_TLS_PORT = 8883


@dataclass(frozen=True)
class FirewallArgs:
    vpc_id: pulumi.Input[str]
    allowed_cidrs: tuple[str, ...]  # who may reach the load balancer
    listener_ports: tuple[int, ...]  # 80, plus 443 when HTTPS is configured
    metrics_port: int  # simulators' Prometheus exporter
    smtp_port: int | None = None  # Grafana's alert e-mail, when configured


class Firewall(pulumi.ComponentResource):
    """Three groups: load balancer, monitoring task, simulator tasks. No SSH anywhere."""

    def __init__(self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:firewall:Firewall", name, None, opts)
        if not args.allowed_cidrs:
            raise ValueError("iotfactory:allowedCidrs: at least one CIDR must be allowed to reach the ALB")
        self._child = pulumi.ResourceOptions(parent=self)

        self.load_balancer = self._group(
            f"{name}-alb", args.vpc_id, "Load balancer: HTTP(S) from allowed CIDRs"
        )
        self.monitoring = self._group(f"{name}-monitoring", args.vpc_id, "Prometheus and Grafana task")
        self.simulators = self._group(f"{name}-simulators", args.vpc_id, "Simulator tasks")

        for port in args.listener_ports:
            for index, cidr in enumerate(args.allowed_cidrs):
                family = "cidr_ipv6" if ipaddress.ip_network(cidr).version == 6 else "cidr_ipv4"
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-alb-in-{port}-{index}",
                    security_group_id=self.load_balancer.id,
                    **self._tcp_port(port, f"listener {port} from {cidr}"),
                    **{family: cidr},
                )
        for port in (GRAFANA_PORT, PROMETHEUS_PORT):
            self._between(
                f"{name}-alb-to-monitoring-{port}",
                self.load_balancer,
                self.monitoring,
                port,
                "ALB to monitoring",
            )
        self._between(
            f"{name}-prometheus-scrape",
            self.monitoring,
            self.simulators,
            args.metrics_port,
            "Prometheus scrape",
        )

        # Outbound: AWS APIs, image registries and S3 over HTTPS; the simulators also MQTT over TLS.
        self._egress_anywhere(f"{name}-monitoring-https", self.monitoring, HTTPS_PORT)
        if args.smtp_port is not None:
            self._egress_anywhere(f"{name}-monitoring-smtp", self.monitoring, args.smtp_port)
        self._egress_anywhere(f"{name}-simulators-https", self.simulators, HTTPS_PORT)
        self._egress_anywhere(f"{name}-simulators-mqtt", self.simulators, MQTT_TLS_PORT)

        self.load_balancer_id: pulumi.Output[str] = self.load_balancer.id
        self.monitoring_id: pulumi.Output[str] = self.monitoring.id
        self.simulators_id: pulumi.Output[str] = self.simulators.id
        self.register_outputs(
            {
                "loadBalancerGroupId": self.load_balancer_id,
                "monitoringGroupId": self.monitoring_id,
                "simulatorsGroupId": self.simulators_id,
            }
        )

    def _group(self, name: str, vpc_id: pulumi.Input[str], description: str) -> aws.ec2.SecurityGroup:
        # No inline rules: the provider then also removes AWS's default allow-all egress rule.
        return aws.ec2.SecurityGroup(
            name, vpc_id=vpc_id, description=description, tags={"Name": name}, opts=self._child
        )

    def _tcp_port(self, port: int, description: str) -> dict[str, object]:
        """What every rule here shares: one TCP port, a description, parented to the firewall."""
        return {
            "ip_protocol": "tcp",
            "from_port": port,
            "to_port": port,
            "description": description,
            "opts": self._child,
        }

    def _between(
        self,
        name: str,
        source: aws.ec2.SecurityGroup,
        target: aws.ec2.SecurityGroup,
        port: int,
        purpose: str,
    ) -> None:
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-out",
            security_group_id=source.id,
            referenced_security_group_id=target.id,
            **self._tcp_port(port, f"{purpose} on {port}"),
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-in",
            security_group_id=target.id,
            referenced_security_group_id=source.id,
            **self._tcp_port(port, f"{purpose} on {port}"),
        )

    def _egress_anywhere(self, name: str, group: aws.ec2.SecurityGroup, port: int) -> None:
        aws.vpc.SecurityGroupEgressRule(
            name,
            security_group_id=group.id,
            cidr_ipv4="0.0.0.0/0",
            **self._tcp_port(port, f"tcp {port} to the internet"),
        )
