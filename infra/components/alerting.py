"""The alert topic: an SNS topic Alertmanager publishes critical alerts to, for e-mail and https
subscribers, encrypted with its own KMS key; only the monitoring task's role may publish to it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam

SNS_PUBLISH = "sns:Publish"
# What a publisher needs on the topic's key: SNS encrypts each message with a data key.
KMS_PUBLISHER_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


@dataclass(frozen=True)
class Subscriber:
    protocol: str  # email | https
    endpoint: str


@dataclass(frozen=True)
class AlertTopicArgs:
    account: iam.AccountContext
    topic_name: str
    subscribers: tuple[Subscriber, ...]
    key_deletion_days: int = 30


class AlertTopic(pulumi.ComponentResource):
    """KMS key, encrypted topic and its subscriptions; `allow_only_publisher` adds the topic policy."""

    def __init__(self, name: str, args: AlertTopicArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:alerting:AlertTopic", name, None, opts)
        if not args.subscribers:
            raise ValueError("iotfactory:alerting.snsSubscriptions is empty: the topic needs a subscriber")
        if not 7 <= args.key_deletion_days <= 30:
            raise ValueError("key_deletion_days must be 7..30 (KMS's pending-deletion window)")
        self._name = name
        self._account = args.account
        child = pulumi.ResourceOptions(parent=self)
        self.key = aws.kms.Key(
            f"{name}-key",
            description=f"Encrypts the {args.topic_name} SNS topic (alert notifications)",
            enable_key_rotation=True,
            deletion_window_in_days=args.key_deletion_days,
            # The account's IAM decides who uses it; the publisher's grant is scoped to SNS below.
            policy=iam.document(
                {
                    "Sid": "AccountIamDecides",
                    "Effect": "Allow",
                    "Principal": {"AWS": pulumi.Output.concat("arn:", args.account.partition, ":iam::",
                                                              args.account.account_id, ":root")},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ),
            opts=child,
        )
        self.topic = aws.sns.Topic(
            f"{name}-topic", name=args.topic_name, kms_master_key_id=self.key.arn, opts=child
        )
        for index, subscriber in enumerate(args.subscribers):
            aws.sns.TopicSubscription(
                f"{name}-subscription-{index}",
                topic=self.topic.arn,
                protocol=subscriber.protocol,
                endpoint=subscriber.endpoint,
                # https endpoints confirm themselves; e-mail recipients click the link SNS sends.
                endpoint_auto_confirms=subscriber.protocol == "https",
                opts=child,
            )
        self.topic_arn: pulumi.Output[str] = self.topic.arn
        self.key_arn: pulumi.Output[str] = self.key.arn
        self.register_outputs({"topicArn": self.topic_arn, "keyArn": self.key_arn})

    def publisher_statements(self) -> list[iam.PolicyStatement]:
        """What the publisher's role needs: publish to this topic, and the key only through SNS."""
        return [
            iam.allow([SNS_PUBLISH], [self.topic_arn]),
            iam.allow(
                list(KMS_PUBLISHER_ACTIONS),
                [self.key_arn],
                condition={"StringEquals": {"kms:ViaService": f"sns.{self._account.region}.amazonaws.com"}},
            ),
        ]

    def allow_only_publisher(self, role_arn: pulumi.Input[str]) -> aws.sns.TopicPolicy:
        """The topic policy: that role may publish, and no other principal can, whatever its IAM says."""
        return aws.sns.TopicPolicy(
            f"{self._name}-policy",
            arn=self.topic_arn,
            policy=iam.document(
                {
                    "Sid": "MonitoringTaskPublishes",
                    "Effect": "Allow",
                    "Principal": {"AWS": role_arn},
                    "Action": SNS_PUBLISH,
                    "Resource": self.topic_arn,
                },
                {
                    "Sid": "NobodyElsePublishes",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": SNS_PUBLISH,
                    "Resource": self.topic_arn,
                    "Condition": {"ArnNotEquals": {"aws:PrincipalArn": role_arn}},
                },
                {
                    "Sid": "TlsOnly",
                    "Effect": "Deny",
                    "Principal": {"AWS": "*"},
                    "Action": SNS_PUBLISH,
                    "Resource": self.topic_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
