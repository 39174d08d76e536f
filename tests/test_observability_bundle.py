"""Config bundles: what the cloud's config bucket and the local stack's folder hold, and that it is valid."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from observability import config_bundle as cb
from observability import grafana_provisioning
from observability.alert_rules import rules_for
from observability.dashboards import dashboards_for
from observability.prometheus_config import ARCHIVE_JOB, SIMULATOR_JOB

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
# One Cloud Map name per site, more than the 8 records Route 53 puts in one multivalue answer.
DNS_NAMES = [f"site-{index:02d}.dev.iotfactory.internal" for index in range(10)]


def _cloud(names: list[str] = DNS_NAMES) -> dict[str, str]:
    return cb.cloud_bundle(names, 9100, 15)


def _local(tmp_path: Path, alert_email: str | None = None) -> dict[str, str]:
    return cb.local_bundle(
        simulator_targets={"site-00": "127.0.0.1:9101", "site-01": "127.0.0.1:9102"},
        archive_targets={"rule-runner": "127.0.0.1:9200"},
        prometheus_url="http://127.0.0.1:9090", scrape_interval_s=15, grafana_dir=tmp_path / "grafana",
        alert_email=alert_email,
    )


def test_cloud_bundle_holds_every_file_prometheus_and_grafana_read() -> None:
    bundle = _cloud()
    dashboards = {f"{cb.DASHBOARDS_PREFIX}{uid}.json" for uid in dashboards_for("cloud")}
    assert set(bundle) == {
        "prometheus/prometheus.yml", "prometheus/rules/alerts.yml",
        "grafana/provisioning/datasources/prometheus.yml", "grafana/provisioning/dashboards/dashboards.yml",
        "grafana/provisioning/alerting/contact-points.yml", "grafana/provisioning/alerting/policies.yml",
        "alertmanager/alertmanager.yml", *dashboards,
    }
    assert all(isinstance(text, str) and text for text in bundle.values())


def test_cloud_prometheus_discovers_every_site_and_loads_its_rules() -> None:
    config = yaml.safe_load(_cloud()[cb.PROMETHEUS_CONFIG_KEY])
    (job,) = config["scrape_configs"]
    assert job["job_name"] == SIMULATOR_JOB
    (discovery,) = job["dns_sd_configs"]
    assert (discovery["names"], discovery["type"], discovery["port"]) == (DNS_NAMES, "A", 9100)
    assert {rule["target_label"] for rule in job["relabel_configs"]} == {"site", "instance"}
    # Relative to prometheus.yml, which the init container puts next to rules/.
    (rules,) = config["rule_files"]
    config_dir = Path(cb.container_path(cb.PROMETHEUS_CONFIG_KEY)).parent
    assert cb.container_path(cb.RULES_KEY) == str(config_dir / rules)


def test_cloud_grafana_reaches_prometheus_under_its_route_prefix() -> None:
    datasource, alertmanager = yaml.safe_load(_cloud()[cb.DATASOURCE_KEY])["datasources"]
    assert datasource["url"] == "http://localhost:9090/prometheus"
    # Alertmanager shares the task: Grafana shows its alerts and silences from localhost.
    assert (alertmanager["type"], alertmanager["url"]) == ("alertmanager", "http://localhost:9093")
    assert f"--web.route-prefix={cb.CLOUD_ROUTE_PREFIX}" in cb.CLOUD_PROMETHEUS_ARGS
    assert datasource["uid"] == grafana_provisioning.DATASOURCE_UID and datasource["isDefault"]
    assert datasource["jsonData"]["timeInterval"] == "15s"
    provider = yaml.safe_load(_cloud()[cb.DASHBOARD_PROVIDER_KEY])["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana-config/dashboards"
    assert cb.CLOUD_GRAFANA_ENVIRONMENT["GF_PATHS_PROVISIONING"] == "/etc/grafana-config/provisioning"


def test_cloud_grafana_mail_goes_to_the_injected_address_and_sends_no_project_rule_twice() -> None:
    bundle = _cloud()
    (point,) = yaml.safe_load(bundle[cb.CONTACT_POINTS_KEY])["contactPoints"]
    (receiver,) = point["receivers"]
    assert receiver["type"] == "email"
    assert receiver["settings"]["addresses"] == f"${grafana_provisioning.ALERT_EMAIL_ENV}"
    (policy,) = yaml.safe_load(bundle[cb.POLICIES_KEY])["policies"]
    assert policy["receiver"] == point["name"]
    assert {"GF_SMTP_HOST", "GF_SMTP_PASSWORD", grafana_provisioning.ALERT_EMAIL_ENV} <= set(
        cb.CLOUD_GRAFANA_SECRET_ENV)
    # The project's rules are e-mailed by Alertmanager; Grafana-managed twins would mail them again.
    assert cb.GRAFANA_RULES_KEY not in bundle
    config = yaml.safe_load(bundle[cb.PROMETHEUS_CONFIG_KEY])
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["localhost:9093"]}]}]


def test_local_bundle_names_targets_by_site_and_role_and_the_local_prometheus(tmp_path: Path) -> None:
    bundle = _local(tmp_path)
    config = yaml.safe_load(bundle[cb.PROMETHEUS_CONFIG_KEY])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in (SIMULATOR_JOB, ARCHIVE_JOB):
        (files,) = jobs[job]["file_sd_configs"]
        assert jobs[job]["honor_labels"] is True
        groups = json.loads(bundle["prometheus/" + files["files"][0]])
        targets = {group["labels"]["instance"]: group for group in groups}
        if job == SIMULATOR_JOB:
            # The port is only where to scrape: the series are named by the site, so a simulator
            # that comes back on another port continues its series.
            assert {name: group["targets"] for name, group in targets.items()} == {
                "site-00": ["127.0.0.1:9101"],
                "site-01": ["127.0.0.1:9102"],
            }
            assert all(group["labels"]["site"] == name for name, group in targets.items())
        else:
            assert targets["rule-runner"]["targets"] == ["127.0.0.1:9200"]
    (datasource,) = yaml.safe_load(bundle[cb.DATASOURCE_KEY])["datasources"]
    assert datasource["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load(bundle[cb.DASHBOARD_PROVIDER_KEY])["providers"][0]
    assert provider["options"]["path"] == str(tmp_path / "grafana" / "dashboards")
    assert "ArchiveLagging" in bundle[cb.RULES_KEY]
    dashboards = {key for key in bundle if key.startswith(cb.DASHBOARDS_PREFIX)}
    assert dashboards == {f"{cb.DASHBOARDS_PREFIX}{uid}.json" for uid in dashboards_for("local")}


def test_local_bundle_without_mail_settings_provisions_no_mail(tmp_path: Path) -> None:
    bundle = _local(tmp_path)
    assert not any(key.startswith("grafana/provisioning/alerting/") for key in bundle)
    with_mail = _local(tmp_path, alert_email="ops@example.com")
    (point,) = yaml.safe_load(with_mail[cb.CONTACT_POINTS_KEY])["contactPoints"]
    assert point["receivers"][0]["settings"]["addresses"] == "ops@example.com"
    assert cb.GRAFANA_RULES_KEY in with_mail and cb.POLICIES_KEY in with_mail


@needs_promtool
@pytest.mark.parametrize("which", ["cloud", "local"])
def test_written_bundle_passes_promtool_check_config(tmp_path: Path, which: str) -> None:
    bundle = _cloud() if which == "cloud" else _local(tmp_path)
    written = cb.write_bundle(bundle, tmp_path / "bundle")
    assert len(written) == len(bundle)
    config = tmp_path / "bundle" / cb.PROMETHEUS_CONFIG_KEY
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule file was found next to prometheus.yml and holds every rule of the target.
    assert f"SUCCESS: {len(rules_for(which))} rules found" in result.stdout + result.stderr
    for key in bundle:
        path = tmp_path / "bundle" / key
        if key.endswith(".json"):
            json.loads(path.read_text())
        else:
            yaml.safe_load(path.read_text())


def test_container_paths_follow_the_documented_layout() -> None:
    assert cb.container_path("prometheus/prometheus.yml") == "/etc/prometheus-config/prometheus.yml"
    assert cb.container_path("prometheus/rules/alerts.yml") == "/etc/prometheus-config/rules/alerts.yml"
    assert cb.container_path("grafana/dashboards/x.json") == "/etc/grafana-config/dashboards/x.json"
    with pytest.raises(ValueError, match="not a bundle key"):
        cb.container_path("etc/passwd")


def test_write_bundle_refuses_keys_outside_its_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        cb.write_bundle({"../evil.yml": "x"}, tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        cb.write_bundle({"/etc/evil.yml": "x"}, tmp_path)


def test_cloud_bundle_rejects_a_bad_dns_name() -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        cb.cloud_bundle([""], 9100, 15)
    with pytest.raises(ValueError, match="not the string"):
        cb.cloud_bundle(DNS_NAMES[0], 9100, 15)  # type: ignore[arg-type]


def test_adding_a_site_changes_only_the_prometheus_config() -> None:
    # The program hashes the bundle into the monitoring task definition: a new site rolls it.
    smaller, larger = _cloud(DNS_NAMES[:9]), _cloud(DNS_NAMES)
    changed = {key for key in larger if smaller.get(key) != larger[key]}
    assert changed == {cb.PROMETHEUS_CONFIG_KEY}
    assert set(smaller) == set(larger)
