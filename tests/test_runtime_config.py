"""Config loading in-process: precedence, Pulumi stack files, PEM from the environment, cert checks."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from conftest import Pki

from factory_core.errors import UsageError
from factory_core.fleet import Engine, MachineType
from simulator.config_loader import load_run_config, parse_machines, read_fleet_file
from simulator.connection_settings import ConnectionSettings, materialize_pem_env, validate_connection


def test_defaults_without_any_input() -> None:
    config = load_run_config([], {})
    assert config.fleet.qos == 1 and config.fleet.engine == Engine.FLEET
    assert config.connection.port == 8883 and config.connection.metrics_port == 9100
    assert config.site_index == 0 and config.duration_s is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text("seed: 1\nqos: 0\nlines_per_site: 4\nfaults: {failure_rate_scale: 0.5}\n")
    env = {
        "FACTORY_CONFIG_JSON": '{"seed": 2, "faults": {"timescale": "demo"}}',
        "FACTORY_SITE_INDEX": "7",
        "FACTORY_METRICS_PORT": "9555",
        "FACTORY_ENDPOINT": "env-host",
        "FACTORY_PORT": "443",
    }
    config = load_run_config(["--config", str(config_file), "--seed", "3", "--endpoint", "flag-host"], env)
    assert config.fleet.seed == 3  # flag over env over file
    assert config.fleet.qos == 0 and config.fleet.lines_per_site == 4  # file
    assert config.fleet.faults.failure_rate_scale == 0.5  # nested keys merge
    assert config.fleet.faults.timescale == "demo"
    assert config.site_index == 7 and config.connection.metrics_port == 9555
    assert config.connection.endpoint == "flag-host" and config.connection.port == 443
    assert config.sources == (str(config_file), "FACTORY_CONFIG_JSON", "flags")


def test_pulumi_stack_file_uses_the_fleet_key(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text("config:\n  aws:region: us-east-1\n  iotfactory:fleet:\n    lines_per_site: 5\n")
    assert read_fleet_file(stack) == {"lines_per_site": 5}
    assert load_run_config(["--config", str(stack)], {}).fleet.lines_per_site == 5


@pytest.mark.parametrize("qos", ["0", "1"])
def test_every_numeric_flag_takes_the_text_a_shell_passes(qos: str) -> None:
    config = load_run_config(
        ["--qos", qos, "--seed", "7", "--lines", "3", "--window", "9", "--publish-interval", "0.5"], {}
    )
    assert (config.fleet.qos, config.fleet.seed, config.fleet.lines_per_site) == (int(qos), 7, 3)
    assert (config.fleet.inflight_window, config.fleet.publish_interval_s) == (9, 0.5)
    with pytest.raises(UsageError, match="qos"):
        load_run_config(["--qos", "\u00b9"], {})


def test_machines_flag() -> None:
    assert parse_machines("cnc_mill=2, conveyor=1") == {"cnc_mill": 2, "conveyor": 1}
    config = load_run_config(["--machines", "air_compressor=3", "--lines", "2"], {})
    assert config.fleet.machines_per_line == {MachineType.AIR_COMPRESSOR: 3}
    assert config.fleet.machines_per_site == 6
    for bad in ("lathe=1", "cnc_mill", "cnc_mill=two", ""):
        with pytest.raises(UsageError):
            parse_machines(bad)


def test_validation_error_names_key_value_and_source(tmp_path: Path) -> None:
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text("inflight_window: 500\n")
    with pytest.raises(UsageError) as caught:
        load_run_config(["--config", str(config_file)], {})
    message = str(caught.value)
    assert "inflight_window" in message and "500" in message and str(config_file) in message
    assert "\n" not in message


def test_pem_environment_is_written_private_and_beats_file_paths(pki: Pki) -> None:
    env = {
        "FACTORY_CA_FILE": "/nonexistent.pem",
        "FACTORY_CA_PEM": pki.ca.ca_cert_path.read_text(),
        "FACTORY_CERT_PEM": pki.device.cert_path.read_text(),
        "FACTORY_KEY_PEM": pki.device.key_path.read_text().replace("\n", "\\n"),
        "FACTORY_ENDPOINT": "127.0.0.1",
    }
    config = load_run_config([], env)
    assert config.connection.ca_path is None
    connection = materialize_pem_env(config.connection, env)
    assert connection.key_path is not None and connection.ca_path is not None
    assert stat.S_IMODE(connection.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(connection.key_path.parent.stat().st_mode) == 0o700
    assert connection.key_path.read_text() == pki.device.key_path.read_text()
    assert validate_connection(connection).subject.startswith("CN=g1-site-00-c00")
    flagged = load_run_config(["--cert", "/flag/cert.pem"], env)
    assert materialize_pem_env(flagged.connection, env).cert_path == Path("/flag/cert.pem")


def _settings(pki: Pki, **changes: object) -> ConnectionSettings:
    base = {
        "endpoint": "127.0.0.1",
        "ca_path": pki.ca.ca_cert_path,
        "cert_path": pki.device.cert_path,
        "key_path": pki.device.key_path,
    }
    return ConnectionSettings(**{**base, **changes})  # type: ignore[arg-type]


def test_certificate_checks(pki: Pki, tmp_path: Path) -> None:
    assert validate_connection(_settings(pki)).not_after > dt.datetime.now(dt.UTC)
    cases = {
        "no MQTT endpoint": _settings(pki, endpoint=None),
        "does not exist": _settings(pki, cert_path=tmp_path / "missing.pem"),
        "do not match": _settings(pki, key_path=pki.reader.key_path),
        "not a PEM certificate": _settings(pki, cert_path=pki.device.key_path),
        "not an unencrypted PEM private key": _settings(pki, key_path=pki.device.cert_path),
        "holds no PEM certificate": _settings(pki, ca_path=pki.device.key_path),
    }
    for fragment, settings in cases.items():
        with pytest.raises(UsageError, match=fragment):
            validate_connection(settings)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(UsageError, match="expired"):
        validate_connection(_settings(pki), now=later)
    future = pki.ca.issue_client(
        "site-00", tmp_path / "future", not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    )
    with pytest.raises(UsageError, match="not valid before"):
        validate_connection(_settings(pki, cert_path=future.cert_path, key_path=future.key_path))
