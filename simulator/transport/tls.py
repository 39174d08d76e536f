"""Mutual-TLS client context and one-line explanations of why a connection could not be made."""

from __future__ import annotations

import socket
import ssl

from simulator.transport.publisher import TransportOptions

# AWS IoT Core accepts MQTT with client certificates on 443 only with this ALPN protocol.
AWS_IOT_ALPN_443 = "x-amzn-mqtt-ca"


def client_ssl_context(options: TransportOptions, client_id: str = "") -> ssl.SSLContext:
    """TLS 1.2+ with server verification and host-name check, the connection's client certificate.

    With one certificate for all connections one context is shared by every connection of the
    process (the chain and key are parsed once; TLS session state stays per socket); with a
    certificate per connection (`cert_dir`) each connection gets its own.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(options.ca_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert_path, key_path = options.credentials(client_id)
    context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    if options.port == 443:
        context.set_alpn_protocols([AWS_IOT_ALPN_443])
    return context


def describe_connect_error(error: BaseException, host: str, port: int) -> str:
    """Why connecting to host:port failed, and what to do about it, in one line."""
    where = f"{host}:{port}"
    if isinstance(error, ConnectionRefusedError):
        return (
            f"cannot connect to {where}: connection refused; check --endpoint/--port"
            " (FACTORY_ENDPOINT/FACTORY_PORT) and that the broker is running"
        )
    if isinstance(error, socket.timeout | TimeoutError):
        return (
            f"cannot connect to {where}: timed out; check --endpoint/--port and that a firewall"
            " or security group lets this host reach the broker"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {host}: {error.strerror}; check --endpoint (FACTORY_ENDPOINT)"
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS to {where} failed: the broker's certificate is not trusted ({error.verify_message});"
            " check --ca (FACTORY_CA_FILE) is the CA that signed the broker, and the endpoint name"
        )
    if isinstance(error, ssl.SSLError):
        reason = error.reason or str(error)
        return (
            f"TLS to {where} failed ({reason}): the broker rejected this client's certificate or"
            " protocol; check --cert/--key are a device certificate issued for this broker"
        )
    if isinstance(error, ConnectionError):
        return (
            f"{where} closed the connection before accepting it: the"
            " broker most likely rejected the client certificate (another CA, revoked, or expired);"
            " check --cert/--key"
        )
    if isinstance(error, OSError):
        return f"cannot connect to {where}: {error.strerror or error}; check --endpoint/--port"
    return f"cannot connect to {where}: {error}"


class ConnectRefused(ConnectionError):
    """The broker answered CONNACK with a refusal, or closed the socket before CONNACK."""
