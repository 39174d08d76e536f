"""Loopback port helpers: find a free port, tell whether one is taken or open, wait for one to open."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"  # every service of the local stack listens on loopback only


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = HOST, timeout_s: float = 10.0) -> bool:
    # Imported here: readiness (the one way to wait) imports this module for its probes.
    from local_stack.readiness import PortOpen, wait_until

    return wait_until(PortOpen(port, host), timeout_s)
