"""Local certificate authority: issues the broker's and the devices' X.509 certificates and a CRL.

It stands in for AWS IoT Core's certificate registry on the local stack and in tests. Private keys
are written with mode 0600 and never printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from local_stack.identities import check_common_name
from simulator.private_files import write_private

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"


@dataclass(frozen=True)
class IssuedCertificate:
    cert_path: Path
    key_path: Path
    serial: int
    common_name: str
    not_after: dt.datetime


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotfactory"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A self-signed EC P-256 root that signs server and device certificates."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / CA_CERT_FILE

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_FILE

    @classmethod
    def create(
        cls, directory: Path, common_name: str = "iotfactory local CA", valid_days: int = 3650
    ) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(directory / CA_KEY_FILE, key)
        (directory / CA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        authority = cls(directory, cert, key)
        authority.write_crl()
        return authority

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY_FILE}: expected an EC private key")
        return cls(directory, cert, key)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        if (directory / CA_CERT_FILE).exists():
            return cls.load(directory)
        return cls.create(directory)

    def _issue(
        self,
        common_name: str,
        out_dir: Path,
        file_stem: str,
        extensions: list[tuple[x509.ExtensionType, bool]],
        not_before: dt.datetime | None,
        not_after: dt.datetime | None,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _utcnow()
        start = not_before or now - dt.timedelta(minutes=5)
        end = not_after or now + dt.timedelta(days=365)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_path = out_dir / f"{file_stem}.pem"
        key_path = out_dir / f"{file_stem}.key"
        _write_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCertificate(cert_path, key_path, cert.serial_number, common_name, end)

    def issue_server(
        self, name: str, out_dir: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> IssuedCertificate:
        """Server certificate; the SDK always checks the host name, so both names are SANs."""
        alt_names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        return self._issue(
            name,
            out_dir,
            name,
            [
                (x509.SubjectAlternativeName(alt_names), False),
                (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            ],
            None,
            None,
        )

    def issue_client(
        self,
        common_name: str,
        out_dir: Path,
        *,
        file_stem: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Device certificate: the broker takes the CN as the identity and client id (the thing name).

        A CN outside `identities.check_common_name` (e.g. holding `/`, `+` or `#`) is refused.
        """
        return self._issue(
            check_common_name(common_name),
            out_dir,
            file_stem or common_name,
            [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
            not_before,
            not_after,
        )

    def revoked_serials(self) -> set[int]:
        path = self.directory / REVOKED_FILE
        if not path.exists():
            return set()
        return {int(serial) for serial in json.loads(path.read_text())}

    def revoke(self, *serials: int) -> Path:
        """Add serials to the revocation list and rewrite the CRL; the broker needs a reload after."""
        return self._set_revoked(self.revoked_serials() | set(serials))

    def unrevoke(self, *serials: int) -> Path:
        """Take serials off the revocation list again (a rolled-back rotation); reload the broker."""
        return self._set_revoked(self.revoked_serials() - set(serials))

    def _set_revoked(self, revoked: set[int]) -> Path:
        (self.directory / REVOKED_FILE).write_text(json.dumps(sorted(str(s) for s in revoked)))
        return self.write_crl()

    def write_crl(self) -> Path:
        now = _utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=30))
        )
        for serial in sorted(self.revoked_serials()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        tmp = self.crl_path.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        # Mosquitto's user must read the CRL, which is public data.
        os.chmod(tmp, 0o644)
        tmp.replace(self.crl_path)
        return self.crl_path
