"""Alertmanager's config: valid for `amtool`, routed by severity, inhibition built on the rules'
scope, no secret in it; and a real Alertmanager (the process the local stack starts) that groups,
inhibits a site's machine alerts while the site is down, and keeps silenced alerts quiet."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support_alerting import (
    WebhookReceiver,
    add_silence,
    post_alert,
    wait_state,
    webhook_receiver,
)

from local_stack import alertmanager
from local_stack.ports import free_port, wait_for_port
from observability import alertmanager_config as amc
from observability.alert_rules import ALERT_RULES, SCOPE_LABEL
from observability.prometheus_config import SITE_LABEL

AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="apt-get install prometheus-alertmanager")
SMTP = amc.SmtpChannel(
    smarthost="smtp.example.com:587",
    from_address="alerts@example.com",
    to_addresses=("ops@example.com", "oncall@example.com"),
    username="alerts@example.com",
    password_file="/secrets/smtp-password",
)
SNS = amc.SnsChannel("arn:aws:sns:eu-west-1:123456789012:iotfactory-dev-alerts", "eu-west-1")
EVERYTHING = amc.Channels(email=SMTP, webhook_url="http://127.0.0.1:5001/alerts", sns=SNS)


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30, check=False)


def _written(tmp_path: Path, channels: amc.Channels) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(amc.render_alertmanager_config(channels))
    return path


@needs_amtool
@pytest.mark.parametrize(
    "channels",
    [amc.Channels(), amc.Channels(webhook_url="http://127.0.0.1:5001/alerts"), EVERYTHING],
    ids=["no-channel", "webhook", "email-webhook-sns"],
)
def test_rendered_config_passes_amtool_check_config(tmp_path: Path, channels: amc.Channels) -> None:
    result = _amtool("check-config", str(_written(tmp_path, channels)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and f"{len(amc.INHIBITIONS)} inhibit rules" in result.stdout


@needs_amtool
def test_severity_picks_the_receiver_and_each_receiver_its_channels(tmp_path: Path) -> None:
    config_file = _written(tmp_path, EVERYTHING)
    for labels, expected in (
        (["severity=critical", "alertname=MachineOverheating"], "iotfactory-critical"),
        (["severity=warning", "alertname=MachineInFault"], "iotfactory-warning"),
        (["alertname=SomethingElse"], amc.DEFAULT_RECEIVER),
    ):
        routed = _amtool("config", "routes", "test", f"--config.file={config_file}", *labels)
        assert routed.stdout.strip() == expected, routed.stdout + routed.stderr
    receivers = {r["name"]: r for r in yaml.safe_load(config_file.read_text())["receivers"]}
    critical, warning = receivers["iotfactory-critical"], receivers["iotfactory-warning"]
    assert set(critical) == {"name", "email_configs", "webhook_configs", "sns_configs"}
    assert set(warning) == {"name", "webhook_configs"}
    assert critical["sns_configs"][0]["topic_arn"] == SNS.topic_arn
    assert critical["email_configs"][0]["to"] == "ops@example.com, oncall@example.com"


def test_grouping_and_inhibition_follow_the_rules_labels() -> None:
    document = yaml.safe_load(amc.render_alertmanager_config(amc.Channels()))
    assert document["route"]["group_by"] == ["alertname", SITE_LABEL]
    site_rule, fleet_rule = document["inhibit_rules"]
    assert site_rule == {
        "source_matchers": ['scope="site"'], "target_matchers": ['scope="machine"'], "equal": [SITE_LABEL]
    }
    assert fleet_rule == {"source_matchers": ['scope="fleet"'], "target_matchers": ['scope=~"site|machine"']}
    # Every rule has a scope label; inhibition per site needs `site` on machine and site alerts:
    # their metrics carry it (SimulatorDown's `up` gets it from the target, see prometheus_config).
    for rule in ALERT_RULES:
        assert rule.labels[SCOPE_LABEL] == rule.scope
        if rule.scope in ("machine", "site") and rule.alert != "SimulatorDown":
            assert all(SITE_LABEL in metric.labels for metric in rule.metrics), rule.alert


def test_an_inhibition_on_a_scope_no_rule_has_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amc, "INHIBITIONS", (("line", ("machine",), ("site",)),))
    with pytest.raises(ValueError, match="line"):
        amc.render_alertmanager_config(amc.Channels())


def test_no_secret_in_the_config_only_the_password_file() -> None:
    text = amc.render_alertmanager_config(EVERYTHING)
    document = yaml.safe_load(text)
    (email,) = next(r for r in document["receivers"] if r["name"] == "iotfactory-critical")["email_configs"]
    assert email["auth_password_file"] == "/secrets/smtp-password"
    assert "auth_password" not in email and "password:" not in text.replace("auth_password_file:", "")


def test_timing_scales_for_tests_and_keeps_whole_milliseconds() -> None:
    fast = amc.Timing().scaled(0.001)
    route = yaml.safe_load(amc.render_alertmanager_config(amc.Channels(timing=fast)))["route"]
    timing = (route["group_wait"], route["group_interval"], route["repeat_interval"])
    assert timing == ("30ms", "300ms", "14400ms")
    with pytest.raises(ValueError):
        amc.Timing().scaled(0)


# -- a real Alertmanager --------------------------------------------------------------------------

FAST = amc.Timing(group_wait_s=0.2, group_interval_s=0.5, repeat_interval_s=1.0)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, WebhookReceiver]]:
    if shutil.which(alertmanager.BINARY) is None:
        pytest.skip("needs prometheus-alertmanager")
    with webhook_receiver() as receiver:
        config_file = _written(tmp_path, amc.Channels(webhook_url=receiver.url, timing=FAST))
        port = free_port()
        process = alertmanager.process(config_file, tmp_path / "data", port, tmp_path / "alertmanager.log")
        process.start()
        try:
            assert wait_for_port(port, timeout_s=20), process.log_tail(5)
            yield alertmanager.url(port), receiver
        finally:
            process.stop()


@pytest.mark.integration
def test_a_site_that_is_down_does_not_also_page_for_its_machines(
    running: tuple[str, WebhookReceiver],
) -> None:
    url, receiver = running
    down = {"alertname": "SimulatorDown", "severity": "critical", "scope": "site", "site": "site-07"}
    hot = {"alertname": "MachineOverheating", "severity": "critical", "scope": "machine", "type": "cnc_mill"}
    post_alert(url, down)
    post_alert(url, {**hot, "site": "site-07", "machine": "site-07-line-01-cnc_mill-01"})
    post_alert(url, {**hot, "site": "site-08", "machine": "site-08-line-01-cnc_mill-01"})
    receiver.wait_for(10, "the site that is down", alertname="SimulatorDown", site="site-07")
    receiver.wait_for(10, "a machine of a site that is up", alertname="MachineOverheating", site="site-08")
    wait_state(url, lambda states: bool(states) and all(s["inhibitedBy"] for s in states), "inhibited",
               alertname="MachineOverheating", site="site-07")
    # Until site-08's group has been repeated twice more, site-07's machine would have been sent too.
    seen = len(receiver.matching(alertname="MachineOverheating", site="site-08"))
    receiver.wait_for_count(seen + 2, 10, alertname="MachineOverheating", site="site-08")
    assert not receiver.matching(alertname="MachineOverheating", site="site-07")


@pytest.mark.integration
def test_a_silence_keeps_the_next_notifications_away(running: tuple[str, WebhookReceiver]) -> None:
    url, receiver = running
    noisy = {"alertname": "MachineInFault", "severity": "warning", "scope": "machine", "site": "site-03",
             "machine": "site-03-line-02-conveyor-01"}
    canary = {"alertname": "MachineInFault", "severity": "warning", "scope": "machine", "site": "site-04",
              "machine": "site-04-line-01-conveyor-01"}
    post_alert(url, noisy)
    post_alert(url, canary)
    receiver.wait_for_count(2, 10, machine=noisy["machine"])  # repeated while it fires
    silence = add_silence(url, {"alertname": "MachineInFault", "site": "site-03"})
    wait_state(url, lambda states: bool(states) and all(silence in s["silencedBy"] for s in states),
               "silenced", machine=noisy["machine"])
    # A notification already on its way when the silence was added lands before the canary's next.
    next_canary = len(receiver.matching(machine=canary["machine"])) + 1
    receiver.wait_for_count(next_canary, 10, machine=canary["machine"])
    before = len(receiver.matching(machine=noisy["machine"]))
    seen = len(receiver.matching(machine=canary["machine"]))
    # The canary's group is repeated on the same schedule the silenced one would be.
    receiver.wait_for_count(seen + 3, 15, machine=canary["machine"])
    assert len(receiver.matching(machine=noisy["machine"])) == before


# -- the cloud's config and the container that completes it ------------------------------------------


def _cloud_config() -> str:
    from observability import config_bundle as cb

    channels = cb.cloud_alert_channels(
        smtp_host="email-smtp.eu-west-1.amazonaws.com:587",
        smtp_from="factory-alerts@example.com",
        smtp_to=["plant@example.com"],
        webhook_url="https://hooks.example.com/iotfactory",
        sns_region="eu-west-1",
    )
    bundle = cb.cloud_bundle(["site-00.dev.iotfactory.internal"], 9100, 15, alert_channels=channels)
    return bundle[cb.ALERTMANAGER_CONFIG_KEY]


def test_cloud_config_holds_placeholders_not_secrets() -> None:
    from observability import config_bundle as cb

    text = _cloud_config()
    assert all(placeholder in text for placeholder in cb.CLOUD_ALERTMANAGER_PLACEHOLDERS)
    (email,) = next(
        r for r in yaml.safe_load(text)["receivers"] if r["name"] == "iotfactory-critical"
    )["email_configs"]
    assert email["auth_password_file"] == cb.CLOUD_SMTP_PASSWORD_FILE


@needs_amtool
def test_cloud_container_fills_in_the_secret_parts_and_alertmanager_accepts_them(tmp_path: Path) -> None:
    from infra.components import alertmanager_task
    from observability import config_bundle as cb

    config_dir, run_dir = tmp_path / "config", tmp_path / "run"
    config_dir.mkdir()
    run_dir.mkdir()
    (config_dir / alertmanager_task.CONFIG_FILE).write_text(_cloud_config())
    password_file = run_dir / "smtp-password"
    script = alertmanager_task.startup_script(
        str(config_dir), str(run_dir), cb.CLOUD_ALERTMANAGER_PLACEHOLDERS, str(password_file)
    )
    assert "exec /bin/alertmanager " in script
    # Everything the container does, except starting Alertmanager (the image's binary).
    checked = script.replace("exec /bin/alertmanager ", "exec true ")
    topic = "arn:aws:sns:eu-west-1:123456789012:iotfactory-prod-alerts"
    env = {"PATH": "/usr/bin:/bin", "SMTP_USERNAME": "AKIAEXAMPLE123", "SMTP_PASSWORD": "s3cret&|pass",
           "SNS_TOPIC_ARN": topic}
    done = subprocess.run(["/bin/sh", "-c", checked], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    result = run_dir / alertmanager_task.CONFIG_FILE
    text = result.read_text()
    assert "@" + "SMTP_USERNAME@" not in text and "AKIAEXAMPLE123" in text and topic in text
    assert "s3cret" not in text
    assert password_file.read_text() == "s3cret&|pass" and password_file.stat().st_mode & 0o777 == 0o600
    assert _amtool("check-config", str(result)).returncode == 0

    env["SMTP_USERNAME"] = "user|rm -rf"
    refused = subprocess.run(["/bin/sh", "-c", checked], env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "SMTP_USERNAME holds characters" in refused.stderr
