"""Grafana in a Docker container, for local users who have a Docker engine but no Grafana install.

The supervisor runs `docker run` attached (not `-d`) as the service's process: its output is the
container's log stream, written to `logs/grafana.log` like every other service's; SIGTERM to it is
passed on to the container (`docker run` proxies signals when not on a terminal), and the
parent-death signal every child gets reaches the container the same way. `--rm` removes the
container when it exits; a container left behind by a client that was killed outright is removed
by name (`docker rm -f`) before the next start and on `stop`/`destroy`. The name is derived from
the state folder, so two stacks on one machine never touch each other's container.

Networking: `--network host`. Prometheus and Alertmanager listen on 127.0.0.1 only, which a
container on Docker's bridge cannot reach (host-gateway leads to the bridge address, not to the
host's loopback), and Grafana itself must also listen on 127.0.0.1 only. In the host's network
namespace both hold with the same provisioning files a native Grafana reads. (Linux only, as the
local stack is; Docker Desktop's host networking is that of its VM.)

Never run against a real engine on the machines this project is built on (none exists there): the
tests drive a stand-in `docker` executable that records its arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from local_stack.processes import ManagedProcess

# grafana/grafana-oss 12.1.0, the manifest-list digest as pinned by public projects (not pulled
# here: no engine). Docker uses the digest and ignores the tag, which only says what it is.
IMAGE = (
    "docker.io/grafana/grafana-oss:12.1.0@sha256:11c2e6c7993917ea89292b942e3428f73907b2809d554154bfb8b4ceb2301cc8"
)
DOCKER = "docker"
ENGINE_CHECK_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0
STOP_GRACE_S = 15  # `docker stop --time`: Grafana shuts down in a second or two
# The first start pulls the image (a few hundred MB); readiness allows for that.
FIRST_START_TIMEOUT_S = 300.0


def find_engine() -> str | None:
    """The `docker` CLI if it is on PATH and an engine answers it (`docker info`), else None."""
    docker = shutil.which(DOCKER)
    if docker is None:
        return None
    try:
        answered = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=ENGINE_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if answered.returncode == 0 else None


def container_name(state_root: Path) -> str:
    digest = hashlib.sha256(str(state_root).encode()).hexdigest()[:12]
    return f"iotfactory-grafana-{digest}"


def run_argv(
    docker: str, name: str, environment: dict[str, str], read_only: list[Path], writable: list[Path]
) -> list[str]:
    """`docker run` for Grafana: host network, our uid, the given folders at the same paths inside."""
    argv = [
        docker, "run", "--rm", "--name", name,
        "--network", "host",
        # Files it writes under the state folder belong to the user, as a native Grafana's would.
        "--user", f"{os.getuid()}:{os.getgid()}",
        "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--pull", "missing",
        "--label", "org.iotfactory.service=grafana",
    ]
    # Mounted where the provisioning files (written for a native Grafana) expect them.
    for path in read_only:
        argv += ["--volume", f"{path}:{path}:ro"]
    for path in writable:
        argv += ["--volume", f"{path}:{path}"]
    for key, value in sorted(environment.items()):
        argv += ["--env", f"{key}={value}"]
    argv.append(IMAGE)
    return argv


def exists(docker: str, name: str) -> bool:
    try:
        found = subprocess.run(
            [docker, "inspect", "--type", "container", "--format", "{{.Id}}", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return found.returncode == 0


def remove(docker: str, name: str) -> bool:
    """`docker rm -f NAME` if such a container exists; True if one was removed."""
    if not exists(docker, name):
        return False
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            [docker, "rm", "--force", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    return True


def remove_leftover(state_root: Path) -> bool:
    """After a stop or a killed supervisor: this stack's container, if an engine answers and it exists."""
    docker = shutil.which(DOCKER)
    return docker is not None and remove(docker, container_name(state_root))


class GrafanaContainer(ManagedProcess):
    """The attached `docker run` client as the service's process, plus cleanup of the container."""

    def __init__(self, docker: str, name: str, argv: list[str], log_path: Path) -> None:
        super().__init__("grafana", argv, log_path, stop_timeout_s=STOP_GRACE_S + 10.0)
        self.docker = docker
        self.container = name

    def start(self, preexec: Callable[[], None] | None = None) -> None:
        # A container of this name can only be a leftover (of a client killed outright); `run`
        # would refuse the name.
        remove(self.docker, self.container)
        super().start(preexec)

    def stop(self, timeout_s: float | None = None) -> int | None:
        if self.running():
            # SIGTERM reaches the container through the client; `docker stop` makes sure of it.
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [self.docker, "stop", "--time", str(STOP_GRACE_S), self.container],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=STOP_GRACE_S + COMMAND_TIMEOUT_S,
                    check=False,
                )
        code = super().stop(timeout_s)
        remove(self.docker, self.container)
        return code

    def kill(self) -> None:
        super().kill()
        remove(self.docker, self.container)
