"""Monitoring history that survives a roll: Prometheus' TSDB and Grafana's database on EFS.

One encrypted file system (a customer managed KMS key with yearly rotation), one access point per
container that enforces that container's user and its own root directory, a mount target in every
task subnet behind a security group that admits NFS (2049) only from the monitoring task's group,
and a file system policy that admits only the monitoring task role, only through those access
points, only over TLS. AWS Backup's default plan covers it when `backup` is set (production).

The monitoring task mounts the access points with `transitEncryption: ENABLED` and IAM
authorization (`HistoryVolumes.task_definition_volume`), and its task role may mount and write that
file system through those access points only (`HistoryVolumes.task_role_statements`).

One writer at a time: Prometheus' TSDB and Grafana's SQLite database are not safe with two
processes on one directory, so a monitoring service on EFS stops its old task before starting the
new one (`infra/components/monitoring.py`); the policy pack checks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam

NFS_PORT = 2049
# The monitoring task's data volumes: task storage, or an access point each on EFS.
PROMETHEUS_VOLUME = "prometheus-data"
GRAFANA_VOLUME = "grafana-data"
# Prometheus 2.x (the image's v2.55) takes a lock file in its data directory; on NFS a lock of a task
# that was killed outlives it by the lease time and keeps the next task from starting. With history
# on EFS the deployment guarantees one writer instead (stop before start), so no lock file.
PROMETHEUS_NO_LOCKFILE = "--storage.tsdb.no-lockfile"
# Grafana applies GF_SECURITY_ADMIN_PASSWORD only when it creates its database; with the database on
# EFS a rotated secret would never reach it. So the container resets the admin password from the
# secret before starting (through stdin: never on a command line), if there is a database to reset.
GRAFANA_ENTRYPOINT = (
    'if [ -s "$GF_PATHS_DATA/grafana.db" ]; then '
    'printf %s "$GF_SECURITY_ADMIN_PASSWORD" | grafana cli --homepath "$GF_PATHS_HOME" '
    '--config "$GF_PATHS_CONFIG" admin reset-admin-password --password-from-stdin >/dev/null '
    '|| echo "grafana: could not set the admin password from its secret; the previous one stays" >&2; '
    "fi; exec /run.sh"
)


@dataclass(frozen=True)
class HistoryUser:
    volume: str
    uid: int
    gid: int
    directory: str


@dataclass(frozen=True)
class MonitoringHistoryArgs:
    account: iam.AccountContext
    name_prefix: str  # e.g. iotfactory-prod
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]  # the monitoring task's subnets: one mount target each
    monitoring_security_group_id: pulumi.Input[str]
    users: tuple[HistoryUser, ...]
    backup: bool
    key_deletion_days: int = 30  # 7..30: how long a deleted key can be recovered


@dataclass(frozen=True)
class HistoryVolumes:
    """What the monitoring task needs to mount the history: file system and access point per volume."""

    file_system_id: pulumi.Output[str]
    file_system_arn: pulumi.Output[str]
    access_point_ids: Mapping[str, pulumi.Output[str]]  # task volume -> access point id
    access_point_arns: Mapping[str, pulumi.Output[str]]
    mount_targets: tuple[pulumi.Resource, ...]  # a task can mount only once these exist

    def task_definition_volume(self, volume: str) -> dict[str, object]:
        """The ECS volume: through its access point, TLS in transit, the task role's IAM identity."""
        return {
            "name": volume,
            "efs_volume_configuration": {
                "file_system_id": self.file_system_id,
                "transit_encryption": "ENABLED",
                "authorization_config": {"access_point_id": self.access_point_ids[volume], "iam": "ENABLED"},
            },
        }

    def task_role_statements(self) -> list[iam.PolicyStatement]:
        return [
            iam.allow(
                ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                [self.file_system_arn],
                condition={
                    "StringEquals": {
                        "elasticfilesystem:AccessPointArn": list(self.access_point_arns.values())
                    }
                },
                sid="MountHistoryThroughItsAccessPoints",
            )
        ]


def data_volumes(history: HistoryVolumes | None) -> list[str | dict[str, object]]:
    """Prometheus' and Grafana's data volumes: task storage, or their EFS access points."""
    if history is None:
        return [PROMETHEUS_VOLUME, GRAFANA_VOLUME]
    return [history.task_definition_volume(PROMETHEUS_VOLUME), history.task_definition_volume(GRAFANA_VOLUME)]


class MonitoringHistory(pulumi.ComponentResource):
    """KMS key, file system, backup policy, security group, mount targets and access points."""

    def __init__(
        self, name: str, args: MonitoringHistoryArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:monitoring_history:MonitoringHistory", name, None, opts)
        if not args.subnet_ids:
            raise ValueError("the monitoring history needs the task subnets for its mount targets")
        if not 7 <= args.key_deletion_days <= 30:
            raise ValueError(f"KMS keys are deleted after 7..30 days (got {args.key_deletion_days})")
        child = pulumi.ResourceOptions(parent=self)
        self._account = args.account
        self._name = name

        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"{args.name_prefix}: encrypts the monitoring history (EFS)",
            enable_key_rotation=True,
            deletion_window_in_days=args.key_deletion_days,
            opts=child,
        )
        aws.kms.Alias(
            f"{name}-key",
            name=f"alias/{args.name_prefix}-monitoring-history",
            target_key_id=self.key.key_id,
            opts=child,
        )
        self.file_system = aws.efs.FileSystem(
            name,
            creation_token=f"{args.name_prefix}-monitoring-history",
            encrypted=True,
            kms_key_id=self.key.arn,
            performance_mode="generalPurpose",
            throughput_mode="bursting",  # no per-GB charge; the TSDB writes little
            tags={"Name": f"{args.name_prefix}-monitoring-history"},
            opts=child,
        )
        aws.efs.BackupPolicy(
            name,
            file_system_id=self.file_system.id,
            backup_policy={"status": "ENABLED" if args.backup else "DISABLED"},
            opts=child,
        )

        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-nfs",
            vpc_id=args.vpc_id,
            description="Monitoring history (EFS): NFS from the monitoring task only",
            tags={"Name": f"{name}-nfs"},
            opts=child,
        )
        nfs = {"ip_protocol": "tcp", "from_port": NFS_PORT, "to_port": NFS_PORT, "opts": child}
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-nfs-in",
            security_group_id=self.security_group.id,
            referenced_security_group_id=args.monitoring_security_group_id,
            description=f"NFS {NFS_PORT} from the monitoring task",
            **nfs,
        )
        # The monitoring task's group has no default egress: it may reach exactly this group on NFS.
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-nfs-out",
            security_group_id=args.monitoring_security_group_id,
            referenced_security_group_id=self.security_group.id,
            description=f"NFS {NFS_PORT} to the monitoring history",
            **nfs,
        )
        mount_targets = tuple(
            aws.efs.MountTarget(
                f"{name}-mount-{index}",
                file_system_id=self.file_system.id,
                subnet_id=subnet_id,
                security_groups=[self.security_group.id],
                opts=child,
            )
            for index, subnet_id in enumerate(args.subnet_ids)
        )
        access_points = {
            user.volume: aws.efs.AccessPoint(
                f"{name}-{user.volume}",
                file_system_id=self.file_system.id,
                # Every file operation through it runs as this user, whatever the client says.
                posix_user={"uid": user.uid, "gid": user.gid},
                root_directory={
                    "path": user.directory,
                    "creation_info": {"owner_uid": user.uid, "owner_gid": user.gid, "permissions": "0750"},
                },
                tags={"Name": f"{name}-{user.volume}"},
                opts=child,
            )
            for user in args.users
        }
        self.volumes = HistoryVolumes(
            file_system_id=self.file_system.id,
            file_system_arn=self.file_system.arn,
            access_point_ids={volume: point.id for volume, point in access_points.items()},
            access_point_arns={volume: point.arn for volume, point in access_points.items()},
            mount_targets=mount_targets,
        )
        self.register_outputs({"fileSystemId": self.file_system.id, "keyArn": self.key.arn})

    def admit(self, task_role_arn: pulumi.Input[str]) -> aws.efs.FileSystemPolicy:
        """The file system policy: only this role, only through the access points, only over TLS.

        Separate from the constructor because the role belongs to the monitoring service, which needs
        the access points first.
        """
        file_system_arn = self.file_system.arn
        return aws.efs.FileSystemPolicy(
            self._name,
            file_system_id=self.file_system.id,
            policy=iam.document(
                {
                    "Sid": "DenyWithoutTls",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": "*",
                    "Resource": file_system_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
                {
                    "Sid": "MonitoringTaskThroughItsAccessPoints",
                    "Effect": "Allow",
                    "Principal": {"AWS": task_role_arn},
                    "Action": ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"],
                    "Resource": file_system_arn,
                    "Condition": {
                        "StringEquals": {
                            "elasticfilesystem:AccessPointArn": list(self.volumes.access_point_arns.values())
                        }
                    },
                },
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
