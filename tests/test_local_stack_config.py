"""The local stack's config file, paths and status arithmetic: pure, no processes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from factory_core import metric_catalog as catalog
from factory_core.errors import UsageError
from factory_core.fleet import FleetSettings
from local_stack import paths as paths_module
from local_stack import stack_config, status_view
from local_stack.paths import StatePaths
from local_stack.services import port_in_use_message
from simulator.config_loader import read_fleet_file

COMMITTED = paths_module.PROJECT_DIR / "Pulumi.local.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "Pulumi.local.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_committed_stack_file_is_valid_and_avoids_distro_ports() -> None:
    config = stack_config.load(COMMITTED)
    assert config.simulator_count == 2
    local = config.local
    ports = {local.broker_port, local.prometheus_port, local.grafana_port}
    # Debian's node exporter (9100) and its own prometheus/grafana services (9090/3000).
    assert not ports & {9100, 9090, 3000}
    assert not local.metrics_port_base <= 9100 <= local.metrics_port_base + 1 + stack_config.MAX_SIMULATORS
    assert local.broker_port == 8883  # AWS IoT Core's MQTT port
    assert local.scrape_interval_s == 15


def test_fleet_section_is_the_shared_schema_and_the_simulator_reads_it() -> None:
    config = stack_config.load(COMMITTED)
    assert isinstance(config.fleet, FleetSettings)
    assert FleetSettings.model_validate(read_fleet_file(COMMITTED)) == config.fleet


def test_every_stack_file_uses_the_same_fleet_schema() -> None:
    """Config parity: local, dev and prod describe their fleet with one schema."""
    stack_files = sorted(paths_module.PROJECT_DIR.glob("Pulumi.*.yaml"))
    fleets = {path.name: read_fleet_file(path) for path in stack_files}
    assert "Pulumi.local.yaml" in fleets and len(fleets) >= 2
    for name, fleet in fleets.items():
        assert fleet, f"{name} has no iotfactory:fleet"
        FleetSettings.model_validate(fleet)


def test_fleet_file_for_the_simulators_round_trips(tmp_path: Path) -> None:
    config = stack_config.load(COMMITTED)
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(stack_config.fleet_file_text(config))
    assert FleetSettings.model_validate(read_fleet_file(fleet_file)) == config.fleet
    assert "iotfactory:local" not in fleet_file.read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("config:\n  iotfactory:local:\n    brokerPort: 70000\n", "iotfactory:local.brokerPort"),
        ("config:\n  iotfactory:local:\n    brokrPort: 1883\n", "iotfactory:local.brokrPort: unknown key"),
        ("config:\n  iotfactory:fleet:\n    qos: 2\n", "iotfactory:fleet.qos"),
        ("config:\n  iotfactory:simulatorCount: 0\n", "iotfactory:simulatorCount: 0 is outside 1..50"),
        ("config:\n  iotfactory:simulatorCount: two\n", "iotfactory:simulatorCount: must be a whole number"),
        ("config:\n  iotfactory:local:\n    brokerPort: 9490\n", "brokerPort: port 9490 is used twice"),
        (
            "config:\n  iotfactory:local:\n"
            "    archive: {folder: a, s3: {endpoint: 'http://x', bucket: abc}}\n",
            "set either folder or s3",
        ),
        ("config:\n  iotfactory:fleets: {}\n", "iotfactory:fleets: not used by the local stack"),
        ("config:\n  iotfactory:fleet: [1, 2\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        stack_config.load(path)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_config_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="IOTFACTORY_LOCAL_CONFIG"):
        stack_config.load(tmp_path / "absent.yaml")


def test_recording_the_simulator_count_keeps_every_other_line(tmp_path: Path) -> None:
    original = COMMITTED.read_text()
    path = tmp_path / "Pulumi.local.yaml"
    path.write_text(original)
    assert stack_config.record_simulator_count(path, 4)
    updated = path.read_text()
    assert stack_config.load(path).simulator_count == 4
    changed = [(a, b) for a, b in zip(original.splitlines(), updated.splitlines(), strict=True) if a != b]
    assert changed == [("  iotfactory:simulatorCount: 2", "  iotfactory:simulatorCount: 4")]
    assert not stack_config.record_simulator_count(path, 4)


def test_recording_adds_the_key_with_the_files_indentation(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        # my comment
        config:    # the stack's settings
            iotfactory:fleet:
                seed: 3
            iotfactory:local:
                brokerPort: 0   # any free port
        """,
    )
    stack_config.record_simulator_count(path, 3)
    text = path.read_text()
    assert "    iotfactory:simulatorCount: 3\n" in text
    assert "# my comment" in text and "# any free port" in text
    document = yaml.safe_load(text)
    assert document["config"]["iotfactory:fleet"] == {"seed": 3}
    assert stack_config.load(path).simulator_count == 3


def test_recording_keeps_a_trailing_comment(tmp_path: Path) -> None:
    path = _write(tmp_path, "config:\n  iotfactory:simulatorCount: 2  # scaled by CI\n")
    stack_config.record_simulator_count(path, 5)
    assert path.read_text() == "config:\n  iotfactory:simulatorCount: 5  # scaled by CI\n"


def test_recording_refuses_a_count_out_of_bounds(tmp_path: Path) -> None:
    path = _write(tmp_path, "config:\n  iotfactory:simulatorCount: 2\n")
    with pytest.raises(UsageError, match=r"1\.\.50"):
        stack_config.record_simulator_count(path, 51)
    assert "simulatorCount: 2" in path.read_text()


def test_environment_overrides_config_and_state_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths_module.CONFIG_ENV, str(tmp_path / "stack.yaml"))
    monkeypatch.setenv(paths_module.STATE_DIR_ENV, str(tmp_path / "state"))
    assert paths_module.config_path() == tmp_path / "stack.yaml"
    assert StatePaths.from_environment().root == tmp_path / "state"
    monkeypatch.delenv(paths_module.CONFIG_ENV)
    monkeypatch.delenv(paths_module.STATE_DIR_ENV)
    assert paths_module.config_path() == COMMITTED
    assert StatePaths.from_environment().root == paths_module.PROJECT_DIR / ".factory" / "local"


def test_state_folder_is_private_and_marked(tmp_path: Path) -> None:
    state = StatePaths(tmp_path / "state")
    assert not state.exists()
    state.create()
    assert state.exists()
    assert state.root.stat().st_mode & 0o777 == 0o700
    assert ".factory/" in (paths_module.PROJECT_DIR / ".gitignore").read_text()


def test_control_socket_moves_to_tmp_when_the_path_is_too_long(tmp_path: Path) -> None:
    short = StatePaths(Path("/tmp/s"))
    assert short.control_socket == Path("/tmp/s/control.sock")
    deep = StatePaths(tmp_path / ("x" * 120))
    assert len(str(deep.control_socket)) < 100
    assert deep.control_socket != StatePaths(tmp_path / ("y" * 120)).control_socket


def test_port_in_use_message_names_the_config_key() -> None:
    message = port_in_use_message(9490, "prometheus", "prometheusPort", COMMITTED)
    assert "iotfactory:local.prometheusPort" in message and "9490" in message and str(COMMITTED) in message


def _exposition(published: float, archived: float) -> list[status_view.Sample]:
    return [
        status_view.Sample(
            catalog.MESSAGES_PUBLISHED.name, {"site": "site-00", "kind": "telemetry"}, published
        ),
        status_view.Sample(catalog.ARCHIVED.name, {"kind": "telemetry"}, archived),
    ]


def test_sampler_totals_survive_a_process_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([_exposition(100, 90), _exposition(150, 140), _exposition(20, 160), _exposition(70, 230)])
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: next(readings))
    sampler = status_view.PipelineSampler()
    first = sampler.sample({"simulator-00": 1}, now=0.0)
    assert first.published_total == 100
    second = sampler.sample({"simulator-00": 1}, now=1.0)
    assert second.published_total == 150 and second.published_per_s == pytest.approx(50)
    third = sampler.sample({"simulator-00": 1}, now=2.0)  # restarted: the counter began again at 0
    assert third.published_total == 170
    fourth = sampler.sample({"simulator-00": 1}, now=3.0)
    assert fourth.published_total == 220
    assert fourth.published_per_s == pytest.approx((220 - 100) / 3)
    assert fourth.exporters_up == 1


def test_sampler_counts_an_exporter_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: None)
    snapshot = status_view.PipelineSampler().sample({"simulator-00": 1, "rule-runner": 2}, now=0.0)
    assert (snapshot.exporters_up, snapshot.exporters_expected) == (0, 2)
    assert snapshot.scrape_failures_total == 2


ALERTING = """\
    config:
      iotfactory:local:
        alerting:
          webhookUrl: {webhook}
          email: {{smarthost: "smtp.example.com:587", from: alerts@example.com, to: [ops@example.com],
                  username: alerts@example.com}}
    """


def test_alerting_channels_come_from_the_stack_file_and_the_password_from_a_private_file(
    tmp_path: Path,
) -> None:
    from local_stack import alertmanager

    config = stack_config.load(_write(tmp_path, ALERTING.format(webhook="http://127.0.0.1:5001/alerts")))
    folder = tmp_path / "state" / "alertmanager"
    with pytest.raises(UsageError, match="does not exist; create it readable by you only"):
        alertmanager.channels(config.local.alerting, folder)
    folder.mkdir(parents=True)
    secret = alertmanager.smtp_password_file(folder)
    secret.write_text("hunter2")
    secret.chmod(0o644)
    with pytest.raises(UsageError, match="nobody else can read") as refused:
        alertmanager.channels(config.local.alerting, folder)
    assert "hunter2" not in str(refused.value)
    secret.chmod(0o600)
    channels = alertmanager.channels(config.local.alerting, folder)
    assert channels.webhook_url == "http://127.0.0.1:5001/alerts"
    assert channels.email is not None and channels.email.password_file == str(secret)
    assert channels.email.to_addresses == ("ops@example.com",)
    assert channels.email.username == "alerts@example.com"


def test_a_webhook_url_with_credentials_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = _write(tmp_path, ALERTING.format(webhook="https://bot:s3cret@hooks.example.com/x"))
    with pytest.raises(UsageError) as refused:
        stack_config.load(path)
    message = str(refused.value)
    assert "iotfactory:local.alerting.webhookUrl" in message and "s3cret" not in message
    assert len(message.splitlines()) == 1


def test_a_drained_process_adds_what_it_counted_after_the_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: _exposition(100, 90))
    sampler = status_view.PipelineSampler()
    snapshot = sampler.sample({"simulator-00": 1}, now=0.0)
    # It drained: 7 more published after that scrape; its final exposition says so.
    settled = sampler.settle("simulator-00", _exposition(107, 90), snapshot)
    assert settled.published_total == 107 and snapshot.published_total == 100
    # A process stopped and started again (a rotation) counts from zero once forgotten.
    sampler.forget("simulator-00")
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: _exposition(5, 110))
    assert sampler.sample({"simulator-00": 1}, now=1.0).published_total == 112


def test_lag_grows_while_nothing_is_archived(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own gauge only moves when it writes; by counts, the lag is how long ago the
    published count stood where the archive stands."""
    published = iter(range(0, 10_000, 100))
    gauge = status_view.Sample(catalog.ARCHIVE_LAG.name, {}, 0.4)
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: [*_exposition(next(published), 300), gauge])
    sampler = status_view.PipelineSampler()
    lags = [sampler.sample({"simulator-00": 1}, now=float(second)).lag_s for second in range(12)]
    # Caught up to 300 at second 3: gauge until the archive is 5 s behind, then the growing gap.
    assert lags[:8] == [0.4] * 8
    assert lags[8:] == [5.0, 6.0, 7.0, 8.0]
    monkeypatch.setattr(status_view, "scrape", lambda port, **_: None)  # the runner stopped (SIGSTOP)
    silent = sampler.sample({"simulator-00": 1, "rule-runner": 2}, now=12.0)
    assert silent.unanswered == ["simulator-00", "rule-runner"] and silent.scrape_failures_total == 2
    assert silent.lag_s == 9.0  # the totals stand; the lag still grows
