"""The simulator's certificates: one per connection (`--cert-dir`), and no message over AWS IoT's
128 KiB payload limit ever sent (a broker that refuses it would see it again after every reconnect)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Pki
from test_simulator_cli import assert_one_line_usage_error, simulator

from factory_core.connection_plan import plan_connections
from factory_core.fleet import IOT_MAX_PAYLOAD_BYTES, Engine, FleetSettings
from simulator.transport import make_publisher
from simulator.transport.publisher import TransportOptions


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    kind: str = "telemetry"


def _cert_dir(pki: Pki, folder: Path, client_ids: tuple[str, ...]) -> Path:
    for client_id in client_ids:
        pki.ca.issue_client(client_id, folder)
    return folder


@pytest.mark.parametrize("engine", [Engine.FLEET, Engine.SDK])
def test_an_oversize_message_is_dropped_counted_and_said_once(
    pki: Pki, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = plan_connections(FleetSettings(), 0, "g1-")
    folder = _cert_dir(pki, pki.directory / "c", plan.client_ids)
    options = TransportOptions("127.0.0.1", 1, pki.ca.ca_cert_path, None, None, cert_dir=folder)
    publisher = make_publisher(engine, plan, options)  # never started: what is accepted stays queued
    topic = "factory/simulator/site-00/line-01/site-00-line-01-cnc_mill-01"
    try:
        publisher.submit(0, Message(topic, b"x" * IOT_MAX_PAYLOAD_BYTES))
        for size in (IOT_MAX_PAYLOAD_BYTES + 1, 200_000):
            publisher.submit(0, Message(topic, b"x" * size))
        assert publisher.queued(0) == 1  # the one at the limit
        assert publisher.snapshot().failures == {"payload_too_large": 2}
    finally:
        publisher.close()
    said = [line for line in capsys.readouterr().err.splitlines() if "payload limit" in line]
    assert len(said) <= 1  # once per process (an earlier test in this process may have said it)


def test_the_fleet_engine_loads_each_connections_own_certificate(pki: Pki, tmp_path: Path) -> None:
    plan = plan_connections(FleetSettings(), 0, "g1-", connections=3)
    folder = _cert_dir(pki, tmp_path / "certs", plan.client_ids)
    options = TransportOptions("127.0.0.1", 1, pki.ca.ca_cert_path, None, None, cert_dir=folder)
    pair = (folder / "g1-site-00-c02.pem", folder / "g1-site-00-c02.key")
    assert options.credentials("g1-site-00-c02") == pair
    publisher = make_publisher(Engine.FLEET, plan, options)
    try:
        contexts = publisher._contexts  # type: ignore[attr-defined]
        assert len(contexts) == 3 and len({id(context) for context in contexts}) == 3
    finally:
        publisher.close()


def _flags(pki: Pki, *extra: str) -> list[str]:
    ca = str(pki.ca.ca_cert_path)
    return ["--endpoint", "127.0.0.1", "--port", "1", "--ca", ca, "--metrics-port", "0", *extra]


def test_cert_dir_is_checked_for_every_planned_connection(pki: Pki, tmp_path: Path) -> None:
    folder = _cert_dir(pki, tmp_path / "certs", ("g1-site-00-c00", "g1-site-00-c01"))
    config = tmp_path / "fleet.yaml"
    config.write_text("lines_per_site: 1\n")
    checked = simulator("--check-config", str(config), *_flags(pki, "--cert-dir", str(folder),
                        "--client-id-prefix", "g1-", "--connections", "2"))
    assert checked.returncode == 0, checked.stderr
    assert "certificate CN=g1-site-00-c00,O=iotfactory and 1 more" in checked.stdout

    missing = simulator("--check-config", str(config), *_flags(pki, "--cert-dir", str(folder),
                        "--client-id-prefix", "g1-", "--connections", "3"))
    assert_one_line_usage_error(missing, "g1-site-00-c02.pem", "does not exist", "--cert-dir")

    both = simulator("--check-config", str(config), *_flags(pki, "--cert-dir", str(folder),
                     "--cert", str(pki.device.cert_path), "--key", str(pki.device.key_path)))
    assert_one_line_usage_error(both, "--cert/--key", "--cert-dir", "not both")

    not_a_folder = simulator("--check-config", str(config), *_flags(pki, "--cert-dir", str(config)))
    assert_one_line_usage_error(not_a_folder, "--cert-dir", "is not a folder")

    from_environment = simulator(
        "--check-config", str(config), *_flags(pki, "--client-id-prefix", "g1-", "--connections", "2"),
        env={"FACTORY_CERT_DIR": str(folder)},
    )
    assert from_environment.returncode == 0, from_environment.stderr


def test_a_connection_whose_key_is_not_its_certificates_is_refused(pki: Pki, tmp_path: Path) -> None:
    folder = _cert_dir(pki, tmp_path / "certs", ("g1-site-00-c00", "g1-site-00-c01"))
    (folder / "g1-site-00-c01.key").write_bytes((folder / "g1-site-00-c00.key").read_bytes())
    config = tmp_path / "fleet.yaml"
    config.write_text("lines_per_site: 1\n")
    result: subprocess.CompletedProcess[str] = simulator(
        "--check-config", str(config),
        *_flags(pki, "--cert-dir", str(folder), "--client-id-prefix", "g1-", "--connections", "2"),
    )
    assert_one_line_usage_error(result, "g1-site-00-c01.pem", "do not match")
