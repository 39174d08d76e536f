"""Grafana on the local stack, provisioned from the config bundle (datasources, dashboards): the
installed `grafana-server` when there is one, else the official image when a Docker engine answers."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from local_stack import grafana_container
from local_stack.ports import HOST
from local_stack.processes import ManagedProcess
from simulator.private_files import write_private

SKIPPED_SHORT = (
    "skipped (no grafana-server on PATH, no Docker engine); dashboards: python cli.py dashboards --out DIR"
)
SKIPPED_HINT = (
    "grafana-server is not on PATH and no Docker engine answers, Grafana skipped; install Grafana OSS "
    "(https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/) or Docker and run up "
    "again, or import the dashboards into any Grafana: python cli.py dashboards --out DIR"
)
_HOME_CANDIDATES = ("/usr/share/grafana", "/usr/local/share/grafana", "/opt/homebrew/share/grafana")


@dataclass(frozen=True)
class GrafanaInstall:
    argv_prefix: tuple[str, ...]  # the binary, and `server` for the single-binary CLI
    home: str | None


@dataclass(frozen=True)
class GrafanaInDocker:
    docker: str  # the docker CLI; an engine answered it


GrafanaRuntime = GrafanaInstall | GrafanaInDocker


def find_install() -> GrafanaInstall | None:
    """`grafana-server`, or the newer single `grafana` binary; None when neither is on PATH."""
    home = next((path for path in _HOME_CANDIDATES if os.path.isdir(path)), None)
    legacy = shutil.which("grafana-server")
    if legacy:
        return GrafanaInstall((legacy,), home)
    single = shutil.which("grafana")
    if single:
        return GrafanaInstall((single, "server"), home)
    return None


def find_runtime() -> GrafanaRuntime | None:
    """An installed Grafana first; else Docker when its engine answers; else None (Grafana skipped)."""
    install = find_install()
    if install is not None:
        return install
    docker = grafana_container.find_engine()
    return GrafanaInDocker(docker) if docker else None


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def password_file(directory: Path) -> Path:
    return directory / "admin-password"


def _ensure_password(directory: Path) -> Path:
    secret = password_file(directory)
    if not secret.exists():
        # Generated once per stack and kept 0600; `outputs` points at the file, never prints it.
        write_private(secret, secrets.token_urlsafe(18).encode())
    return secret


def _settings(directory: Path, port: int) -> dict[str, str]:
    """Grafana's settings, the same for an installed Grafana and the container (same paths)."""
    return {
        "GF_PATHS_DATA": str(directory / "data"),
        "GF_PATHS_LOGS": str(directory / "log"),
        "GF_PATHS_PLUGINS": str(directory / "plugins"),
        "GF_PATHS_PROVISIONING": str(directory / "provisioning"),
        "GF_SERVER_HTTP_ADDR": HOST,
        "GF_SERVER_HTTP_PORT": str(port),
        "GF_SECURITY_ADMIN_USER": "admin",
        "GF_SECURITY_ADMIN_PASSWORD__FILE": str(_ensure_password(directory)),
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_ANALYTICS_REPORTING_ENABLED": "false",
        "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
        "GF_LOG_MODE": "console",
    }


def container_name(directory: Path) -> str:
    """The container of the stack whose Grafana folder is `directory`."""
    return grafana_container.container_name(directory.parent)


def process(runtime: GrafanaRuntime, directory: Path, port: int, log_path: Path) -> ManagedProcess:
    """Grafana reading the provisioning that `prometheus.write_config` put under `directory`."""
    settings = _settings(directory, port)
    if isinstance(runtime, GrafanaInDocker):
        return _container(runtime, directory, settings, log_path)
    environment = dict(os.environ)
    environment.update(settings)
    argv = list(runtime.argv_prefix)
    if runtime.home:
        argv += ["--homepath", runtime.home]
    # Same as GF_PATHS_DATA, but on the command line, where `destroy` recognises its own process.
    argv.append(f"cfg:default.paths.data={directory / 'data'}")
    return ManagedProcess("grafana", argv, log_path, env=environment, stop_timeout_s=20.0)


def _container(
    runtime: GrafanaInDocker, directory: Path, settings: dict[str, str], log_path: Path
) -> ManagedProcess:
    writable = [directory / "data", directory / "log", directory / "plugins"]
    for folder in writable:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    read_only = [directory / "provisioning", directory / "dashboards", password_file(directory)]
    name = container_name(directory)
    argv = grafana_container.run_argv(runtime.docker, name, settings, read_only, writable)
    return grafana_container.GrafanaContainer(runtime.docker, name, argv, log_path)
