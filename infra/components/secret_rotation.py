"""Rotation of one Secrets Manager secret: its own Lambda function, role, log group and schedule.

The function is `infra/rotation_lambda/handler.py` (packaged as the only file of an `AssetArchive`),
told by `ROTATION_KIND` which secret it rotates. Each secret gets its own function and role, so a
role can touch exactly one secret: read, stage and write that secret's versions; roll the monitoring
service (whose containers read the secret when they start); and, for SES SMTP credentials, manage
the access keys of exactly one IAM user. Secrets Manager may invoke the function for that secret
only (the permission's source ARN). The function runs outside the VPC: it needs AWS APIs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from infra import iam

HANDLER_FILE = Path(__file__).resolve().parent.parent / "rotation_lambda" / "handler.py"
RUNTIME = "python3.12"
# The four steps take a few AWS calls each; IAM key creation is the slowest.
TIMEOUT_S = 30
SECRETS_MANAGER = "secretsmanager.amazonaws.com"
LAMBDA = "lambda.amazonaws.com"


@dataclass(frozen=True)
class SesUser:
    """The IAM user whose access key is the SES SMTP credential, and the SES region it is used in."""

    name: str
    region: str


@dataclass(frozen=True)
class SecretRotationArgs:
    account: iam.AccountContext
    kind: str  # ROTATION_KIND of the handler: grafana-admin | ses-smtp
    function_name: str  # also the log group's name: /aws/lambda/<function_name>
    secret_arn: pulumi.Input[str]
    schedule: str  # Secrets Manager schedule expression, e.g. rate(30 days)
    monitoring_cluster: pulumi.Input[str]
    monitoring_service: pulumi.Input[str]
    log_retention_days: int
    ses_user: SesUser | None = None  # ses-smtp only


class SecretRotation(pulumi.ComponentResource):
    """Role, log group, function, invoke permission and rotation schedule of one secret."""

    def __init__(
        self, name: str, args: SecretRotationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iotfactory:secret_rotation:SecretRotation", name, None, opts)
        if (args.kind == "ses-smtp") != (args.ses_user is not None):
            raise ValueError(
                "an SES SMTP rotation needs the IAM user (iotfactory:smtp.sesIamUser), and only it"
            )
        child = pulumi.ResourceOptions(parent=self)
        account = args.account

        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/aws/lambda/{args.function_name}",
            retention_in_days=args.log_retention_days,
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-role",
            description=f"Rotates one secret ({args.kind}): its versions and a monitoring roll only",
            assume_role_policy=iam.service_trust(LAMBDA),
            opts=child,
        )
        statements = [
            iam.allow(
                [
                    "secretsmanager:DescribeSecret",
                    "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue",
                    "secretsmanager:UpdateSecretVersionStage",
                ],
                [args.secret_arn],
                sid="ThisSecretOnly",
            ),
            iam.allow(
                ["ecs:UpdateService"],
                [
                    pulumi.Output.concat(
                        account.arn("ecs", "service/"), args.monitoring_cluster, "/", args.monitoring_service
                    )
                ],
                sid="RollTheMonitoringService",
            ),
            iam.allow(
                ["logs:CreateLogStream", "logs:PutLogEvents"], [account.log_group_arn(self.log_group.name)]
            ),
        ]
        if args.ses_user is not None:
            statements.append(
                iam.allow(
                    ["iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys"],
                    [account.arn("iam", f"user/{args.ses_user.name}", regional=False)],
                    sid="KeysOfTheSmtpUserOnly",
                )
            )
        policy = aws.iam.RolePolicy(
            f"{name}-role", role=role.id, policy=iam.document(*statements), opts=child
        )

        environment = {
            "ROTATION_KIND": args.kind,
            "MONITORING_CLUSTER": args.monitoring_cluster,
            "MONITORING_SERVICE": args.monitoring_service,
        }
        if args.ses_user is not None:
            environment |= {"SES_IAM_USER": args.ses_user.name, "SES_REGION": args.ses_user.region}
        self.function = aws.lambda_.Function(
            name,
            name=args.function_name,
            description=f"Secrets Manager rotation: {args.kind}",
            runtime=RUNTIME,
            architectures=["arm64"],
            handler="handler.lambda_handler",
            code=pulumi.AssetArchive({"handler.py": pulumi.FileAsset(str(HANDLER_FILE))}),
            role=role.arn,
            timeout=TIMEOUT_S,
            memory_size=128,
            environment={"variables": environment},
            logging_config={"log_format": "Text", "log_group": self.log_group.name},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, self.log_group]),
        )
        permission = aws.lambda_.Permission(
            f"{name}-invoke",
            action="lambda:InvokeFunction",
            function=self.function.name,
            principal=SECRETS_MANAGER,
            source_arn=args.secret_arn,  # this secret's rotations only
            source_account=account.account_id,
            opts=child,
        )
        self.rotation = aws.secretsmanager.SecretRotation(
            name,
            secret_id=args.secret_arn,
            rotation_lambda_arn=self.function.arn,
            rotation_rules={"schedule_expression": args.schedule},
            # The first rotation waits for the schedule: `up` must not roll the service it is creating.
            rotate_immediately=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]),
        )
        self.register_outputs({"functionName": self.function.name, "logGroup": self.log_group.name})
