"""Where the simulator connects and with which certificates; checked with `cryptography` before use.

Two ways to give certificates:
- one certificate and key for every connection (`--cert`/`--key`, or in a container PEM text in the
  environment, which the platform reads from Secrets Manager; it is written to a private temporary
  folder, 0700, files 0600, removed at exit, never logged). AWS IoT lets one certificate connect
  under every client id its policy allows.
- a folder with one certificate per connection, `<client id>.pem` and `<client id>.key`
  (`--cert-dir`): what the local broker needs, where a certificate's CN *is* its one client id.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from factory_core.errors import UsageError
from simulator.private_files import write_private

DEFAULT_MQTT_PORT = 8883
DEFAULT_METRICS_PORT = 9100
DEFAULT_CLIENT_ID_PREFIX = "iotfactory-"
# AWS IoT accepts keep-alive between 30 and 1200 s.
DEFAULT_KEEPALIVE_S = 60


@dataclass(frozen=True)
class ConnectionSettings:
    endpoint: str | None = None
    port: int = DEFAULT_MQTT_PORT
    ca_path: Path | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    cert_dir: Path | None = None  # one `<client id>.pem`/`.key` per connection instead of cert/key
    client_id_prefix: str = DEFAULT_CLIENT_ID_PREFIX
    metrics_host: str = "0.0.0.0"  # the Prometheus sidecar scrapes over the task's network
    metrics_port: int = DEFAULT_METRICS_PORT  # 0 turns the exporter off
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    connections: int | None = None  # None: planned from the fleet and the per-connection quota
    topic_prefix: str = ""  # Basic Ingest: `$aws/rules/<rule>/` before every topic

    @property
    def where(self) -> str:
        return f"{self.endpoint}:{self.port}"


@dataclass(frozen=True)
class CredentialReport:
    subject: str
    not_after: dt.datetime


def materialize_pem_env(settings: ConnectionSettings, environ: dict[str, str]) -> ConnectionSettings:
    """Write FACTORY_CERT_PEM / FACTORY_KEY_PEM / FACTORY_CA_PEM to private files for unset paths."""
    pems = {
        "cert_path": environ.get("FACTORY_CERT_PEM"),
        "key_path": environ.get("FACTORY_KEY_PEM"),
        "ca_path": environ.get("FACTORY_CA_PEM"),
    }
    if not any(pems.values()):
        return settings
    directory = Path(tempfile.mkdtemp(prefix="iotfactory-creds-"))  # mkdtemp makes it 0700
    atexit.register(shutil.rmtree, directory, True)
    updates: dict[str, Path] = {}
    for field_name, text in pems.items():
        if not text or getattr(settings, field_name) is not None:
            continue
        path = directory / field_name.replace("_path", ".pem")
        # Secrets Manager and some CI systems turn newlines into literal "\n".
        write_private(path, (text.replace("\\n", "\n").strip() + "\n").encode())
        updates[field_name] = path
    return replace(settings, **updates)  # type: ignore[arg-type]


def _require_file(path: Path | None, what: str, flag: str, env: str) -> Path:
    if path is None:
        raise UsageError(f"no {what} given; pass {flag} FILE or set {env}")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist; pass {flag} FILE or set {env}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path} is not readable by this user; fix its permissions")
    return path


def credential_files(cert_dir: Path, client_id: str) -> tuple[Path, Path]:
    """The certificate and key of one connection in a `--cert-dir` folder."""
    return cert_dir / f"{client_id}.pem", cert_dir / f"{client_id}.key"


def validate_connection(
    settings: ConnectionSettings, client_ids: Sequence[str] = (), now: dt.datetime | None = None
) -> CredentialReport:
    """Check everything that can be checked without the network; raise UsageError naming the fix.

    `client_ids`: the planned connections, whose certificates a `cert_dir` must hold.
    The CA file is the trust anchor for the *broker's* certificate. On AWS IoT the device
    certificate is issued by a different CA than the one that signed the endpoint (Amazon Root
    CA 1), so the client certificate is deliberately not verified against it here.
    """
    if not settings.endpoint:
        raise UsageError(
            "no MQTT endpoint given; pass --endpoint HOST or set FACTORY_ENDPOINT"
            " (AWS: the account's iot:Data-ATS endpoint)"
        )
    if not 1 <= settings.port <= 65535:
        raise UsageError(f"--port {settings.port} is not a TCP port; use 1-65535 (AWS IoT: 8883 or 443)")
    ca_path = _require_file(settings.ca_path, "CA certificate", "--ca", "FACTORY_CA_FILE or FACTORY_CA_PEM")
    now = now or dt.datetime.now(dt.UTC)
    _check_ca(ca_path, now)
    if settings.cert_dir is None:
        cert_path = _require_file(
            settings.cert_path, "client certificate", "--cert", "FACTORY_CERT_FILE or FACTORY_CERT_PEM"
        )
        key_path = _require_file(
            settings.key_path, "private key", "--key", "FACTORY_KEY_FILE or FACTORY_KEY_PEM"
        )
        cert = _check_pair(cert_path, key_path, now)
        return CredentialReport(subject=cert.subject.rfc4514_string(), not_after=cert.not_valid_after_utc)
    if settings.cert_path is not None or settings.key_path is not None:
        raise UsageError(
            "pass either --cert/--key (one certificate for every connection) or --cert-dir (one per"
            " connection), not both"
        )
    if not settings.cert_dir.is_dir():
        raise UsageError(
            f"--cert-dir {settings.cert_dir} is not a folder; pass the folder holding <client id>.pem"
            " and <client id>.key for every connection (FACTORY_CERT_DIR)"
        )
    certs = []
    for client_id in client_ids:
        cert_path, key_path = credential_files(settings.cert_dir, client_id)
        flag = f"--cert-dir (connection {client_id})"
        _require_file(cert_path, "client certificate", flag, "FACTORY_CERT_DIR")
        _require_file(key_path, "private key", flag, "FACTORY_CERT_DIR")
        certs.append(_check_pair(cert_path, key_path, now))
    first = certs[0].subject.rfc4514_string() if certs else f"none yet in {settings.cert_dir}"
    more = f" and {len(certs) - 1} more" if len(certs) > 1 else ""
    return CredentialReport(
        subject=first + more,
        not_after=min((cert.not_valid_after_utc for cert in certs), default=now),
    )


def _check_ca(ca_path: Path, now: dt.datetime) -> None:
    try:
        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except ValueError:
        raise UsageError(
            f"CA file {ca_path} holds no PEM certificate; pass the CA's .pem with --ca"
        ) from None
    if not cas:
        raise UsageError(f"CA file {ca_path} holds no certificate; pass the CA's .pem with --ca")
    for ca in cas:
        if ca.not_valid_after_utc <= now:
            raise UsageError(
                f"CA certificate in {ca_path} ({ca.subject.rfc4514_string()}) expired on"
                f" {ca.not_valid_after_utc:%Y-%m-%d}; get the current CA bundle"
            )


def _check_pair(cert_path: Path, key_path: Path, now: dt.datetime) -> x509.Certificate:
    """A client certificate and its key: readable, matching, valid now."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise UsageError(
            f"client certificate {cert_path} is not a PEM certificate; pass the device's .pem with --cert"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"private key {key_path} is not an unencrypted PEM private key; pass the device's key with --key"
        ) from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise UsageError(
            f"certificate {cert_path} and key {key_path} do not match (different public keys);"
            " pass the key that was issued with this certificate"
        )
    subject = cert.subject.rfc4514_string()
    if cert.not_valid_after_utc <= now:
        raise UsageError(
            f"certificate {cert_path} ({subject}) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z;"
            " issue a new one (iotfactory rotate-certs)"
        )
    if cert.not_valid_before_utc > now:
        raise UsageError(
            f"certificate {cert_path} ({subject}) is not valid before"
            f" {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z; check this host's clock"
        )
    return cert
