"""What must exist before the broker's clients start: the service identities' certificates (broker,
rule runner, observer, dynamic-security administrator), and the archive's persistent session."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from factory_core.errors import OperationFailed
from factory_core.fleet import TOPIC_ROOT
from local_stack.certificate_authority import CertificateAuthority, IssuedCertificate
from local_stack.identities import ADMIN_IDENTITY, OBSERVER_IDENTITY, RULE_RUNNER_IDENTITY
from local_stack.ports import HOST

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

SERVER_IDENTITY = "broker"


@dataclass(frozen=True)
class ServiceCertificates:
    server: IssuedCertificate
    reader: IssuedCertificate  # the rule runner
    observer: IssuedCertificate  # read-only, for `mosquitto_sub` (docs/local-stack.md)
    admin: IssuedCertificate  # the supervisor's dynamic-security administrator


def service_certificates(ca: CertificateAuthority, certs: Path) -> ServiceCertificates:
    """The service identities' certificates, issued once and reused across runs."""
    issued = []
    for name, issue in (
        (SERVER_IDENTITY, lambda: ca.issue_server(SERVER_IDENTITY, certs)),
        (RULE_RUNNER_IDENTITY, lambda: ca.issue_client(RULE_RUNNER_IDENTITY, certs)),
        (OBSERVER_IDENTITY, lambda: ca.issue_client(OBSERVER_IDENTITY, certs)),
        (ADMIN_IDENTITY, lambda: ca.issue_client(ADMIN_IDENTITY, certs)),
    ):
        cert_path, key_path = certs / f"{name}.pem", certs / f"{name}.key"
        if cert_path.exists() and key_path.exists() and _signed_by(cert_path, ca):
            issued.append(IssuedCertificate(cert_path, key_path, 0, name, ca.cert.not_valid_after_utc))
        else:
            issued.append(issue())
    return ServiceCertificates(*issued)


def _signed_by(cert_path: Path, ca: CertificateAuthority) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def ensure_archive_session(
    broker_port: int,
    ca_file: Path,
    reader: IssuedCertificate,
    timeout_s: float = 10.0,
    topic_filter: str = f"{TOPIC_ROOT}/#",
) -> None:
    """Create (or keep) the rule runner's persistent session: clean session off, QoS 1 subscription.

    Same client id and identity as the rule runner, so when it connects the broker resumes this
    session and delivers what it queued meanwhile. The subscription is made even on a kept session
    (MQTT replaces an identical one without interrupting it), so a session from a run in another
    archive mode also gets this mode's topic filter.
    """
    # Imported here: only the supervisor needs paho, not every verb that imports this package.
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=RULE_RUNNER_IDENTITY,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(reader.cert_path), str(reader.key_path))
    client.tls_set_context(context)
    subscribed = threading.Event()
    refused: list[str] = []

    def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
        else:
            c.subscribe(topic_filter, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: subscribed.set()
    try:
        client.connect(HOST, broker_port, keepalive=30)
        client.loop_start()
        if not subscribed.wait(timeout_s) or refused:
            raise OperationFailed(
                f"could not create the archive's session on the broker ({', '.join(refused) or 'no answer'});"
                " see the broker log"
            )
    except (OSError, ssl.SSLError) as error:
        raise OperationFailed(f"could not reach the broker on {HOST}:{broker_port}: {error}") from None
    finally:
        client.disconnect()
        client.loop_stop()
