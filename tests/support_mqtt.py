"""Test helpers for talking to a mutual-TLS broker: a paho client, and the flags our MQTT programs take."""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from conftest import Broker

from local_stack.certificate_authority import IssuedCertificate


def tls_client(
    ca_file: Path, cert: IssuedCertificate | None, client_id: str, *, clean_session: bool = True
) -> mqtt.Client:
    """A paho MQTT 3.1.1 client that trusts `ca_file` and, unless `cert` is None, presents `cert`."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    client.tls_set_context(context)
    return client


def broker_flags(broker: Broker, cert: IssuedCertificate, *, ca_file: Path | None = None) -> list[str]:
    """`--endpoint --port --ca --cert --key` for the simulator or the rule runner (`ca_file`: trust
    another CA than the broker's)."""
    return [
        "--endpoint",
        broker.host,
        "--port",
        str(broker.port),
        "--ca",
        str(ca_file or broker.pki.ca.ca_cert_path),
        "--cert",
        str(cert.cert_path),
        "--key",
        str(cert.key_path),
    ]
