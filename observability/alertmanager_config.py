"""Alertmanager's configuration, for the local stack and the cloud, rendered from one definition.

Prometheus sends every alert of `observability/alert_rules.py` to Alertmanager, which routes it by
its `severity` label (`SEVERITY_CHANNELS`) to the channels a stack has configured: e-mail over
SMTP, a webhook, and (cloud) an SNS topic. Alerts are grouped per alert name and site; a site-level
alert (the site's simulator is down) holds back that site's machine alerts, and a fleet-level one
(no simulator scraped at all) holds back every site and machine alert (`INHIBITIONS`, built on the
rules' `scope` label). Silences are Alertmanager's own (API, `amtool silence add`, Grafana).

Secrets never enter this file: the SMTP password is read from `smtp.password_file` by Alertmanager
itself (`auth_password_file`), and the cloud's SMTP user name is a placeholder the container
replaces at start (`SMTP_USERNAME_PLACEHOLDER`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from observability.alert_rules import ALERT_RULES, SCOPE_LABEL, Scope, Severity
from observability.prometheus_config import SITE_LABEL, format_duration

Channel = Literal["email", "webhook", "sns"]
# Which channels each severity reaches. A page (critical) goes everywhere; a warning only to the
# webhook, where a chat or ticket system can pick it up without waking anyone.
SEVERITY_CHANNELS: Mapping[Severity, tuple[Channel, ...]] = {
    "critical": ("email", "webhook", "sns"),
    "warning": ("webhook",),
}
DEFAULT_RECEIVER = "iotfactory-default"  # alerts without a known severity: the webhook, if any
GROUP_BY = ("alertname", SITE_LABEL)
# (source scope, target scopes, labels that must be equal): while a source alert fires, matching
# target alerts are not sent. Machine alerts of a site whose simulator is down would only repeat it.
INHIBITIONS: tuple[tuple[Scope, tuple[Scope, ...], tuple[str, ...]], ...] = (
    ("site", ("machine",), (SITE_LABEL,)),
    ("fleet", ("site", "machine"), ()),
)
# The cloud container writes the SMTP user name (from Secrets Manager) over this at start:
# Alertmanager reads the password from a file but has no such option for the user name.
SMTP_USERNAME_PLACEHOLDER = "@SMTP_USERNAME@"
SNS_SUBJECT = '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} {{ .CommonLabels.site }}'


@dataclass(frozen=True)
class Timing:
    """How long Alertmanager waits before the first notification of a group, between updates of a
    group, and before repeating an unchanged one. Tests shrink them with `scaled`."""

    group_wait_s: float = 30.0
    group_interval_s: float = 300.0
    repeat_interval_s: float = 4 * 3600.0

    def scaled(self, factor: float) -> Timing:
        if factor <= 0:
            raise ValueError("the timing factor must be > 0")
        # Alertmanager takes whole milliseconds, and a repeat interval of 0 is refused.
        return Timing(*(max(0.001, value * factor) for value in (
            self.group_wait_s, self.group_interval_s, self.repeat_interval_s
        )))


@dataclass(frozen=True)
class SmtpChannel:
    smarthost: str  # host:port
    from_address: str
    to_addresses: tuple[str, ...]
    username: str | None = None
    password_file: str | None = None  # read by Alertmanager; never the password itself
    require_tls: bool = True


@dataclass(frozen=True)
class SnsChannel:
    topic_arn: str
    region: str


@dataclass(frozen=True)
class Channels:
    """The notification channels a stack has; any may be absent (then its receivers skip it)."""

    email: SmtpChannel | None = None
    webhook_url: str | None = None
    sns: SnsChannel | None = None
    timing: Timing = field(default_factory=Timing)


def receiver_name(severity: Severity) -> str:
    return f"iotfactory-{severity}"


def _matcher(label: str, values: tuple[str, ...]) -> str:
    if len(values) == 1:
        return f'{label}="{values[0]}"'
    return f'{label}=~"{"|".join(values)}"'


def _email(channel: SmtpChannel) -> dict[str, Any]:
    config: dict[str, Any] = {
        "to": ", ".join(channel.to_addresses),
        "from": channel.from_address,
        "smarthost": channel.smarthost,
        "require_tls": channel.require_tls,
        "send_resolved": True,
    }
    if channel.username:
        config["auth_username"] = channel.username
    if channel.password_file:
        config["auth_password_file"] = channel.password_file
    return config


def _receiver(name: str, wanted: tuple[Channel, ...], channels: Channels) -> dict[str, Any]:
    receiver: dict[str, Any] = {"name": name}
    if "email" in wanted and channels.email is not None:
        receiver["email_configs"] = [_email(channels.email)]
    if "webhook" in wanted and channels.webhook_url:
        receiver["webhook_configs"] = [{"url": channels.webhook_url, "send_resolved": True}]
    if "sns" in wanted and channels.sns is not None:
        receiver["sns_configs"] = [{
            "topic_arn": channels.sns.topic_arn,
            # Credentials from the AWS default chain: the monitoring task's role.
            "sigv4": {"region": channels.sns.region},
            "subject": SNS_SUBJECT,
            "send_resolved": True,
        }]
    return receiver


def _inhibit_rules() -> list[dict[str, Any]]:
    used = {rule.scope for rule in ALERT_RULES}
    rules = []
    for source, targets, equal in INHIBITIONS:
        unknown = ({source, *targets}) - used
        if unknown:  # a scope no rule has would make the inhibition silently do nothing
            raise ValueError(f"inhibition names scopes no alert rule has: {sorted(unknown)}")
        rule: dict[str, Any] = {
            "source_matchers": [_matcher(SCOPE_LABEL, (source,))],
            "target_matchers": [_matcher(SCOPE_LABEL, targets)],
        }
        if equal:
            rule["equal"] = list(equal)
        rules.append(rule)
    return rules


def render_alertmanager_config(channels: Channels) -> str:
    """alertmanager.yml: routes by severity, grouping per alert and site, inhibition, receivers."""
    timing = channels.timing
    route = {
        "receiver": DEFAULT_RECEIVER,
        "group_by": list(GROUP_BY),
        "group_wait": format_duration(timing.group_wait_s),
        "group_interval": format_duration(timing.group_interval_s),
        "repeat_interval": format_duration(timing.repeat_interval_s),
        "routes": [
            {"matchers": [_matcher("severity", (severity,))], "receiver": receiver_name(severity)}
            for severity in SEVERITY_CHANNELS
        ],
    }
    receivers = [_receiver(DEFAULT_RECEIVER, ("webhook",), channels)] + [
        _receiver(receiver_name(severity), wanted, channels) for severity, wanted in SEVERITY_CHANNELS.items()
    ]
    document = {"route": route, "inhibit_rules": _inhibit_rules(), "receivers": receivers}
    header = "# Generated by observability/alertmanager_config.py; do not edit by hand.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)
