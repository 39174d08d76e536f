"""The VPC: public subnets in two or more AZs, and optionally private task subnets behind NAT."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# Subnet blocks are carved from the VPC 4 bits smaller (/16 -> /20): public i at block i,
# private i at block 8 + i, so adding an AZ never renumbers an existing subnet.
SUBNET_EXTRA_BITS = 4
PRIVATE_BLOCK_OFFSET = 8


@dataclass(frozen=True)
class NetworkArgs:
    vpc_cidr: str
    availability_zones: int
    private_subnets: bool
    region: str


def subnet_cidrs(vpc_cidr: str, availability_zones: int) -> tuple[list[str], list[str]]:
    """(public, private) CIDR blocks, one of each per availability zone."""
    if availability_zones < 2:
        raise ValueError("a load balancer needs subnets in at least two availability zones")
    if availability_zones > PRIVATE_BLOCK_OFFSET:
        raise ValueError(f"at most {PRIVATE_BLOCK_OFFSET} availability zones")
    blocks = list(ipaddress.ip_network(vpc_cidr).subnets(prefixlen_diff=SUBNET_EXTRA_BITS))
    public = [str(blocks[index]) for index in range(availability_zones)]
    private = [str(blocks[PRIVATE_BLOCK_OFFSET + index]) for index in range(availability_zones)]
    return public, private


class Network(pulumi.ComponentResource):
    """VPC with DNS (Cloud Map needs it), locked default security group and an S3 gateway endpoint."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        public_cidrs, private_cidrs = subnet_cidrs(args.vpc_cidr, args.availability_zones)

        zones = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self)
        )
        self.vpc = aws.ec2.Vpc(
            name,
            cidr_block=args.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": name},
            opts=child,
        )
        # Nothing may use the default group: managing it without rules removes its allow-all rules.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=self.vpc.id, opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, opts=child)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
            tags={"Name": f"{name}-public"},
            opts=child,
        )
        route_table_ids: list[pulumi.Output[str]] = [public_routes.id]
        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        for index, cidr in enumerate(public_cidrs):
            zone = zones.names.apply(lambda names, i=index: _zone(names, i))
            subnet = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=self.vpc.id,
                cidr_block=cidr,
                availability_zone=zone,
                map_public_ip_on_launch=False,  # tasks ask for a public IP explicitly when they need one
                tags={"Name": f"{name}-public-{index}", "Tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}", subnet_id=subnet.id, route_table_id=public_routes.id, opts=child
            )
            self.public_subnets.append(subnet)
            if not args.private_subnets:
                continue
            # One NAT gateway per AZ so losing an AZ does not cut the other AZs off the internet.
            address = aws.ec2.Eip(f"{name}-nat-{index}", domain="vpc", opts=child)
            nat = aws.ec2.NatGateway(
                f"{name}-nat-{index}",
                allocation_id=address.id,
                subnet_id=subnet.id,
                tags={"Name": f"{name}-nat-{index}"},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
            )
            private_routes = aws.ec2.RouteTable(
                f"{name}-private-{index}",
                vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                tags={"Name": f"{name}-private-{index}"},
                opts=child,
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=self.vpc.id,
                cidr_block=private_cidrs[index],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{name}-private-{index}", "Tier": "private"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=private.id, route_table_id=private_routes.id, opts=child
            )
            route_table_ids.append(private_routes.id)
            self.private_subnets.append(private)

        # S3 traffic (config sync, archive) stays on the AWS network and off the NAT bill.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=self.vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=route_table_ids,
            opts=child,
        )

        self.vpc_id: pulumi.Output[str] = self.vpc.id
        self.public_subnet_ids: list[pulumi.Output[str]] = [subnet.id for subnet in self.public_subnets]
        task_subnets = self.private_subnets if args.private_subnets else self.public_subnets
        self.task_subnet_ids: list[pulumi.Output[str]] = [subnet.id for subnet in task_subnets]
        # Tasks in public subnets need a public IP to reach ECR, Secrets Manager and AWS IoT.
        self.tasks_need_public_ip = not args.private_subnets
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "publicSubnetIds": self.public_subnet_ids,
                "taskSubnetIds": self.task_subnet_ids,
            }
        )


def _zone(names: list[str], index: int) -> str:
    if index >= len(names):
        raise ValueError(
            f"iotfactory:network.availabilityZones asks for {index + 1} zones but the region has {len(names)}"
        )
    return names[index]
