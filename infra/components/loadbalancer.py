"""The public entry point: an ALB that serves Grafana at `/` and Prometheus at `/prometheus/`.

HTTP on 80; with `certificateArn`, HTTPS on 443 (TLS 1.2 and 1.3 only) and 80 redirects to it.
Routing is by path on the serving listener: priority 90 `/prometheus/*` -> Prometheus:9090,
priority 100 `/*` -> Grafana:3000, anything else a fixed 404.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.firewall import GRAFANA_PORT, PROMETHEUS_PORT

HTTP_PORT = 80
HTTPS_PORT = 443
# TLS 1.3 plus TLS 1.2 with forward-secret AEAD ciphers only.
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
PROMETHEUS_PATH = "/prometheus"
PROMETHEUS_RULE_PRIORITY = 90
GRAFANA_RULE_PRIORITY = 100
PROMETHEUS_HEALTH_PATH = "/prometheus/-/healthy"
GRAFANA_HEALTH_PATH = "/api/health"


@dataclass(frozen=True)
class PublicLoadBalancerArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    certificate_arn: str | None
    domain_name: str | None
    deletion_protection: bool


def listener_ports(certificate_arn: str | None) -> tuple[int, ...]:
    """Ports the ALB listens on (and the internet may reach): 80, plus 443 with a certificate."""
    return (HTTP_PORT, HTTPS_PORT) if certificate_arn else (HTTP_PORT,)


class PublicLoadBalancer(pulumi.ComponentResource):
    """ALB, the Grafana and Prometheus target groups (type ip), listeners and path rules."""

    def __init__(
        self, name: str, args: PublicLoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:loadbalancer:PublicLoadBalancer", name, None, opts)
        if args.certificate_arn and not args.domain_name:
            raise ValueError("iotfactory:domainName is required with iotfactory:certificateArn")
        child = pulumi.ResourceOptions(parent=self)

        self.load_balancer = aws.lb.LoadBalancer(
            name,
            load_balancer_type="application",
            internal=False,
            subnets=args.subnet_ids,
            security_groups=[args.security_group_id],
            drop_invalid_header_fields=True,
            desync_mitigation_mode="strictest",
            enable_deletion_protection=args.deletion_protection,
            opts=child,
        )
        self.prometheus_targets = self._target_group(
            f"{name}-prometheus", args, PROMETHEUS_PORT, PROMETHEUS_HEALTH_PATH
        )
        self.grafana_targets = self._target_group(f"{name}-grafana", args, GRAFANA_PORT, GRAFANA_HEALTH_PATH)

        not_found = [
            {
                "type": "fixed-response",
                "fixed_response": {
                    "content_type": "text/plain",
                    "message_body": "not found",
                    "status_code": "404",
                },
            }
        ]
        if args.certificate_arn:
            self.http_listener = aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=self.load_balancer.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=[
                    {
                        "type": "redirect",
                        "redirect": {"port": str(HTTPS_PORT), "protocol": "HTTPS", "status_code": "HTTP_301"},
                    }
                ],
                opts=child,
            )
            serving = aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=self.load_balancer.arn,
                port=HTTPS_PORT,
                protocol="HTTPS",
                ssl_policy=TLS_POLICY,
                certificate_arn=args.certificate_arn,
                default_actions=not_found,
                opts=child,
            )
            self.base_url: pulumi.Output[str] = pulumi.Output.from_input(f"https://{args.domain_name}")
        else:
            serving = aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=self.load_balancer.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=not_found,
                opts=child,
            )
            self.http_listener = serving
            self.base_url = pulumi.Output.concat("http://", self.load_balancer.dns_name)
        self.serving_listener = serving

        self.rules = [
            aws.lb.ListenerRule(
                f"{name}-prometheus",
                listener_arn=serving.arn,
                priority=PROMETHEUS_RULE_PRIORITY,
                conditions=[{"path_pattern": {"values": [PROMETHEUS_PATH, f"{PROMETHEUS_PATH}/*"]}}],
                actions=[{"type": "forward", "target_group_arn": self.prometheus_targets.arn}],
                opts=child,
            ),
            aws.lb.ListenerRule(
                f"{name}-grafana",
                listener_arn=serving.arn,
                priority=GRAFANA_RULE_PRIORITY,
                conditions=[{"path_pattern": {"values": ["/*"]}}],
                actions=[{"type": "forward", "target_group_arn": self.grafana_targets.arn}],
                opts=child,
            ),
        ]
        self.dns_name: pulumi.Output[str] = self.load_balancer.dns_name
        self.grafana_url: pulumi.Output[str] = pulumi.Output.concat(self.base_url, "/")
        self.prometheus_url: pulumi.Output[str] = pulumi.Output.concat(self.base_url, PROMETHEUS_PATH, "/")
        self.register_outputs(
            {"dnsName": self.dns_name, "grafanaUrl": self.grafana_url, "prometheusUrl": self.prometheus_url}
        )

    def _target_group(
        self, name: str, args: PublicLoadBalancerArgs, port: int, health_path: str
    ) -> aws.lb.TargetGroup:
        return aws.lb.TargetGroup(
            name,
            vpc_id=args.vpc_id,
            target_type="ip",  # Fargate tasks register by their awsvpc IP
            protocol="HTTP",
            port=port,
            deregistration_delay=30,
            health_check={
                "enabled": True,
                "path": health_path,
                "protocol": "HTTP",
                "matcher": "200",
                "interval": 15,
                "timeout": 5,
                "healthy_threshold": 2,
                "unhealthy_threshold": 3,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
