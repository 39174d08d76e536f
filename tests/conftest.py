"""Shared fixtures: a local CA with device certificates, and a real mutual-TLS Mosquitto broker.

The broker runs the local stack's configuration: the certificate's CN is the client id, rights come
from the dynamic-security plugin (devices publish their own site, readers and observers read).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from local_stack.certificate_authority import CertificateAuthority, IssuedCertificate
from local_stack.dynamic_security import BrokerAccess, DynsecAdmin
from local_stack.identities import (
    ADMIN_IDENTITY,
    OBSERVER_IDENTITY,
    RULE_RUNNER_IDENTITY,
    device_identity,
)
from local_stack.mosquitto import BrokerConfig, MosquittoProcess
from local_stack.ports import free_port

DEVICE_SITE = "site-00"


@dataclass
class Pki:
    ca: CertificateAuthority
    server: IssuedCertificate
    device: IssuedCertificate  # CN g1-site-00-c00: may publish under factory/simulator/site-00/
    reader: IssuedCertificate  # the rule runner's identity: may read factory/simulator/#
    observer: IssuedCertificate  # read-only, like `tail`
    admin: IssuedCertificate  # the dynamic-security administrator
    directory: Path

    def device_cert(self, common_name: str) -> IssuedCertificate:
        """A certificate of this CA that the broker does not know yet (see `Broker.device`)."""
        return self.ca.issue_client(common_name, self.directory / "devices")


@dataclass
class Broker:
    host: str
    port: int
    pki: Pki
    process: MosquittoProcess
    # Device CN -> site: what the broker admits, also after a restart (see `access`).
    devices: dict[str, str] = field(default_factory=dict)

    def access(self) -> BrokerAccess:
        return BrokerAccess(devices=dict(self.devices))

    def restart(self) -> None:
        self.process.stop()
        self.process.start()

    def admin(self) -> DynsecAdmin:
        pki = self.pki
        return DynsecAdmin(self.host, self.port, pki.ca.ca_cert_path, pki.admin.cert_path, pki.admin.key_path)

    def device(self, site_index: int, connection: int = 0, generation: str = "g1") -> IssuedCertificate:
        """A device certificate of one simulator connection, admitted to its site's group."""
        cert = self.pki.device_cert(device_identity(generation, site_index, connection))
        self._admit({cert.common_name: f"site-{site_index:02d}"})
        return cert

    def device_dir(self, site_index: int = 0, connections: int = 16, generation: str = "g1") -> Path:
        """A simulator's `--cert-dir`: one admitted certificate per connection, as the local stack
        issues them (pass `--client-id-prefix <generation>-`)."""
        folder = self.pki.directory / "cert-dirs" / generation / f"site-{site_index:02d}"
        names = [device_identity(generation, site_index, n) for n in range(connections)]
        for name in names:
            if not (folder / f"{name}.pem").exists():
                self.pki.ca.issue_client(name, folder)
        self._admit(dict.fromkeys(names, f"site-{site_index:02d}"))
        return folder

    def _admit(self, identities: dict[str, str]) -> None:
        self.admin().admit(identities)
        self.devices.update(identities)

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority.create(tmp_path / "ca")
    server = ca.issue_server("broker", tmp_path / "broker")
    devices = tmp_path / "devices"
    device = ca.issue_client(device_identity("g1", 0, 0), devices)
    reader = ca.issue_client(RULE_RUNNER_IDENTITY, devices)
    observer = ca.issue_client(OBSERVER_IDENTITY, devices)
    admin = ca.issue_client(ADMIN_IDENTITY, devices)
    return Pki(ca, server, device, reader, observer, admin, tmp_path)


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
    )
    devices = {pki.device.common_name: DEVICE_SITE}
    process = MosquittoProcess(
        config, tmp_path / "mosquitto.log", access=lambda: BrokerAccess(devices=dict(devices))
    )
    process.start()
    try:
        yield Broker("127.0.0.1", port, pki, process, devices)
    finally:
        process.stop()
