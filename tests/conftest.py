"""Shared fixtures: a local CA with device certificates, and a real mutual-TLS Mosquitto broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from local_stack.certificate_authority import CertificateAuthority, IssuedCertificate
from local_stack.mosquitto import RULE_RUNNER_IDENTITY, BrokerConfig, MosquittoProcess
from local_stack.ports import free_port


@dataclass
class Pki:
    ca: CertificateAuthority
    server: IssuedCertificate
    device: IssuedCertificate  # CN site-00: may publish under factory/simulator/site-00/
    reader: IssuedCertificate  # the rule runner's identity: may read factory/simulator/#
    directory: Path

    def device_cert(self, common_name: str) -> IssuedCertificate:
        return self.ca.issue_client(common_name, self.directory / "devices")


@dataclass
class Broker:
    host: str
    port: int
    pki: Pki
    process: MosquittoProcess

    def restart(self) -> None:
        self.process.stop()
        self.process.start()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create(tmp_path / "ca")
    server = ca.issue_server("broker", tmp_path / "broker")
    device = ca.issue_client("site-00", tmp_path / "devices")
    reader = ca.issue_client(RULE_RUNNER_IDENTITY, tmp_path / "devices")
    return Pki(ca, server, device, reader, tmp_path)


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    port = free_port()
    config = BrokerConfig(
        port=port,
        data_dir=tmp_path / "mosquitto",
        ca_file=pki.ca.ca_cert_path,
        cert_file=pki.server.cert_path,
        key_file=pki.server.key_path,
        crl_file=pki.ca.crl_path,
        acl_file=tmp_path / "mosquitto" / "acl",
    )
    process = MosquittoProcess(config, tmp_path / "mosquitto.log")
    process.start()
    try:
        yield Broker("127.0.0.1", port, pki, process)
    finally:
        process.stop()
