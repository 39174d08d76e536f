"""A WAFv2 web ACL in front of the load balancer: AWS managed rules, a per-address rate limit, logs.

Rules, in evaluation order (lowest priority first):

0. `AWSManagedRulesAmazonIpReputationList`: addresses Amazon's threat intelligence lists (bots,
   scanners), blocked before anything else looks at the request.
1. `AWSManagedRulesKnownBadInputsRuleSet`: request patterns known to exploit software (Log4j, ...).
2. `AWSManagedRulesCommonRuleSet`: the OWASP-style core rules. Its `SizeRestrictions_BODY` (8 KB)
   would block Grafana's own API: dashboard saves and `/api/ds/query` bodies of busy dashboards are
   larger, so that one rule only counts (it still shows in the metrics and the sampled requests).
3. A rate-based rule: one client address may send `rate_limit` requests in 5 minutes.

Anything no rule blocks is allowed. Logs go to a CloudWatch log group named `aws-waf-logs-...` (AWS
refuses any other name for WAF logging) with a retention, with the `authorization` and `cookie`
headers redacted: Grafana's session cookie must not end up in logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam

WAF_LOG_GROUP_PREFIX = "aws-waf-logs-"  # required by AWS WAF for a log destination
RATE_WINDOW_S = 300
MANAGED_RULE_GROUPS: tuple[str, ...] = (
    "AWSManagedRulesAmazonIpReputationList",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesCommonRuleSet",
)
# Managed rules that only count: Grafana's API bodies exceed the common rule set's 8 KB limit.
COUNTED_RULES: dict[str, tuple[str, ...]] = {"AWSManagedRulesCommonRuleSet": ("SizeRestrictions_BODY",)}
RATE_RULE = "rate-limit-per-address"
REDACTED_HEADERS = ("authorization", "cookie")


@dataclass(frozen=True)
class WebFirewallArgs:
    account: iam.AccountContext
    name_prefix: str  # e.g. iotfactory-prod
    load_balancer_arn: pulumi.Input[str]
    rate_limit: int  # requests per client address in 5 minutes
    log_retention_days: int


def _visibility(metric: str) -> dict[str, object]:
    return {"cloudwatch_metrics_enabled": True, "metric_name": metric, "sampled_requests_enabled": True}


def managed_rule(group: str, priority: int) -> dict[str, object]:
    statement: dict[str, object] = {"name": group, "vendor_name": "AWS"}
    counted = COUNTED_RULES.get(group, ())
    if counted:
        statement["rule_action_overrides"] = [
            {"name": rule, "action_to_use": {"count": {}}} for rule in counted
        ]
    return {
        "name": group,
        "priority": priority,
        "override_action": {"none": {}},  # the group's own actions (block) apply
        "statement": {"managed_rule_group_statement": statement},
        "visibility_config": _visibility(group),
    }


def rate_rule(limit: int, priority: int) -> dict[str, object]:
    return {
        "name": RATE_RULE,
        "priority": priority,
        "action": {"block": {}},
        "statement": {
            "rate_based_statement": {
                "limit": limit,
                "aggregate_key_type": "IP",
                "evaluation_window_sec": RATE_WINDOW_S,
            }
        },
        "visibility_config": _visibility(RATE_RULE),
    }


class WebFirewall(pulumi.ComponentResource):
    """Web ACL, its association with the ALB, and its log group with the delivery policy and logging."""

    def __init__(self, name: str, args: WebFirewallArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("iotfactory:waf:WebFirewall", name, None, opts)
        if not 10 <= args.rate_limit <= 2_000_000_000:
            raise ValueError(f"iotfactory:waf.rateLimit: AWS WAF takes 10..2e9 (got {args.rate_limit})")
        child = pulumi.ResourceOptions(parent=self)
        rules = [managed_rule(group, priority) for priority, group in enumerate(MANAGED_RULE_GROUPS)]
        rules.append(rate_rule(args.rate_limit, len(rules)))

        self.web_acl = aws.wafv2.WebAcl(
            name,
            name=f"{args.name_prefix}-web",
            description="Grafana and Prometheus behind the load balancer",
            scope="REGIONAL",
            default_action={"allow": {}},
            rules=rules,
            visibility_config=_visibility(f"{args.name_prefix}-web"),
            opts=child,
        )
        self.association = aws.wafv2.WebAclAssociation(
            name, resource_arn=args.load_balancer_arn, web_acl_arn=self.web_acl.arn, opts=child
        )
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"{WAF_LOG_GROUP_PREFIX}{args.name_prefix}",
            retention_in_days=args.log_retention_days,
            opts=child,
        )
        # WAF delivers through the log delivery service; this names exactly what it may write to.
        delivery = aws.cloudwatch.LogResourcePolicy(
            f"{name}-log-delivery",
            policy_name=f"{args.name_prefix}-waf-log-delivery",
            policy_document=iam.document(
                {
                    "Sid": "WafLogDelivery",
                    "Effect": "Allow",
                    "Principal": {"Service": "delivery.logs.amazonaws.com"},
                    "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": [pulumi.Output.concat(self.log_group.arn, ":*")],
                    "Condition": {
                        "StringEquals": {"aws:SourceAccount": args.account.account_id},
                        "ArnLike": {"aws:SourceArn": args.account.arn("logs", "*")},
                    },
                }
            ),
            opts=child,
        )
        self.logging = aws.wafv2.WebAclLoggingConfiguration(
            name,
            resource_arn=self.web_acl.arn,
            log_destination_configs=[self.log_group.arn],
            redacted_fields=[{"single_header": {"name": header}} for header in REDACTED_HEADERS],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[delivery]),
        )
        self.web_acl_arn: pulumi.Output[str] = self.web_acl.arn
        self.register_outputs({"webAclArn": self.web_acl_arn, "logGroup": self.log_group.name})
