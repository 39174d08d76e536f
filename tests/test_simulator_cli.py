"""`python -m simulator` as a user runs it: every bad input ends with one line, exit 2, no traceback."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Broker, Pki

from local_stack.certificate_authority import CertificateAuthority
from local_stack.ports import free_port

PROJECT = Path(__file__).resolve().parent.parent


def simulator(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def connection_flags(pki: Pki, port: int, *, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return [
        "--endpoint",
        "127.0.0.1",
        "--port",
        str(port),
        "--ca",
        str(pki.ca.ca_cert_path),
        "--cert",
        str(cert or pki.device.cert_path),
        "--key",
        str(key or pki.device.key_path),
        "--metrics-port",
        "0",
    ]


def test_dry_run_is_byte_identical_and_never_connects() -> None:
    args = (
        "--dry-run",
        "--seed",
        "7",
        "--duration",
        "120",
        "--lines",
        "1",
        "--machines",
        "cnc_mill=2,conveyor=1",
    )
    first, second = simulator(*args), simulator(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert len(first.stdout.splitlines()) >= 3 * 120


def test_dry_run_reads_a_pulumi_stack_file(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.local.yaml"
    stack.write_text(
        "config:\n  aws:region: eu-west-1\n  iotfactory:fleet:\n    seed: 3\n    lines_per_site: 1\n"
        "    machines_per_line: {air_compressor: 1}\n"
    )
    result = simulator("--dry-run", "--config", str(stack), "--duration", "5")
    assert result.returncode == 0, result.stderr
    assert '"type":"air_compressor"' in result.stdout
    assert "cnc_mill" not in result.stdout


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("seed: 1\nlines_per_site: 3\nmachines_per_line: {cnc_mill: 40}\n")
    result = simulator("--check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "120 machines" in result.stdout and "2 connection(s)" in result.stdout


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("machines_per_line: {lathe: 2}\n", ("machines_per_line.lathe", "cnc_mill")),
        ("publish_interval_s: -1\n", ("publish_interval_s", "greater than 0")),
        ("qos: 2\n", ("qos",)),
        ("colour: blue\n", ("unknown setting 'colour'",)),
        ("seed: [1\n", ("cannot parse",)),
    ],
)
def test_check_config_rejects_bad_files(tmp_path: Path, yaml_text: str, fragments: tuple[str, ...]) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml_text)
    assert_one_line_usage_error(simulator("--check-config", str(config)), str(config), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--machines", "lathe=2"), ("unknown machine type 'lathe'",)),
        (("--publish-interval", "-0.5"), ("publish_interval_s", "greater than 0")),
        (("--speed", "0"), ("speed",)),
        (("--engine", "turbo"), ("--engine",)),
        (("--duration", "-3"), ("--duration",)),
        (("--seed", "abc"), ("--seed",)),
        (("--config", "/nonexistent/fleet.yaml"), ("does not exist",)),
    ],
)
def test_bad_flags_are_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_usage_error(simulator("--dry-run", *args), *fragments)


def test_environment_json_overrides_file_and_flags_override_both(tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("lines_per_site: 4\nmachines_per_line: {cnc_mill: 1}\n")
    env = {"FACTORY_CONFIG_JSON": '{"lines_per_site": 2}'}
    result = simulator("--check-config", str(config), env=env)
    assert "2 line(s) x 1 machines = 2 machines" in result.stdout, result.stderr
    result = simulator("--check-config", str(config), "--lines", "3", env=env)
    assert "3 line(s) x 1 machines = 3 machines" in result.stdout, result.stderr
    bad = simulator("--check-config", str(config), env={"FACTORY_CONFIG_JSON": "{not json"})
    assert_one_line_usage_error(bad, "FACTORY_CONFIG_JSON")


def test_missing_certificate_file(pki: Pki) -> None:
    result = simulator(*connection_flags(pki, 8883, cert=pki.directory / "nope.pem"), "--duration", "1")
    assert_one_line_usage_error(result, "nope.pem", "--cert")


def test_certificate_and_key_that_do_not_match(pki: Pki) -> None:
    result = simulator(*connection_flags(pki, 8883, key=pki.reader.key_path), "--duration", "1")
    assert_one_line_usage_error(result, "do not match")


def test_expired_certificate(pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = pki.ca.issue_client(
        "site-00",
        pki.directory / "expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    result = simulator(
        *connection_flags(pki, 8883, cert=expired.cert_path, key=expired.key_path), "--duration", "1"
    )
    assert_one_line_usage_error(result, "expired", "rotate-certs")


def test_check_config_validates_certificates_too(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("seed: 1\n")
    good = simulator("--check-config", str(config), *connection_flags(pki, 8883))
    assert good.returncode == 0, good.stderr
    assert "certificate CN=g1-site-00-c00" in good.stdout
    bad = simulator("--check-config", str(config), *connection_flags(pki, 8883, key=pki.reader.key_path))
    assert_one_line_usage_error(bad, "do not match")


def test_pem_content_from_the_environment(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text("seed: 1\n")
    env = {
        "FACTORY_ENDPOINT": "127.0.0.1",
        "FACTORY_CA_FILE": "/nonexistent/overridden-by-pem.pem",
        "FACTORY_CA_PEM": pki.ca.ca_cert_path.read_text(),
        "FACTORY_CERT_PEM": pki.device.cert_path.read_text().replace("\n", "\\n"),
        "FACTORY_KEY_PEM": pki.device.key_path.read_text(),
    }
    result = simulator("--check-config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "CN=g1-site-00-c00" in result.stdout


@pytest.mark.parametrize("engine", ["fleet", "sdk"])
def test_unreachable_endpoint_names_host_and_port(pki: Pki, engine: str) -> None:
    port = free_port()  # nothing listens there
    result = simulator(*connection_flags(pki, port), "--engine", engine, "--duration", "1")
    assert_one_line_usage_error(result, f"127.0.0.1:{port}", "connection refused")


@pytest.mark.parametrize("engine", ["fleet", "sdk"])
def test_certificate_from_another_ca_is_refused(broker: Broker, tmp_path: Path, engine: str) -> None:
    stranger = CertificateAuthority.create(tmp_path / "other-ca").issue_client("site-00", tmp_path / "other")
    flags = connection_flags(broker.pki, broker.port, cert=stranger.cert_path, key=stranger.key_path)
    result = simulator(*flags, "--engine", engine, "--duration", "1")
    assert_one_line_usage_error(result, f"127.0.0.1:{broker.port}", "certificate")


def test_metrics_port_in_use(broker: Broker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = connection_flags(broker.pki, broker.port)[:-2]
        result = simulator(
            *flags, "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--duration", "1"
        )
    assert_one_line_usage_error(result, f"127.0.0.1:{port}", "--metrics-port")
