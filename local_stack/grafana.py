"""Grafana on the local stack, when installed, provisioned from the config bundle (datasource, dashboards)."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from local_stack.ports import HOST
from local_stack.processes import ManagedProcess
from simulator.private_files import write_private

SKIPPED_SHORT = "skipped (grafana-server not on PATH); dashboards: python cli.py dashboards --out DIR"
SKIPPED_HINT = (
    "grafana-server is not on PATH, Grafana skipped; install Grafana OSS "
    "(https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/) and run up again, "
    "or import the dashboards into any Grafana: python cli.py dashboards --out DIR"
)
_HOME_CANDIDATES = ("/usr/share/grafana", "/usr/local/share/grafana", "/opt/homebrew/share/grafana")


@dataclass(frozen=True)
class GrafanaInstall:
    argv_prefix: tuple[str, ...]  # the binary, and `server` for the single-binary CLI
    home: str | None


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


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def password_file(directory: Path) -> Path:
    return directory / "admin-password"


def process(install: GrafanaInstall, directory: Path, port: int, log_path: Path) -> ManagedProcess:
    """Grafana reading the provisioning that `prometheus.write_config` put under `directory`."""
    provisioning = directory / "provisioning"
    secret = password_file(directory)
    if not secret.exists():
        # Generated once per stack and kept 0600; `outputs` points at the file, never prints it.
        write_private(secret, secrets.token_urlsafe(18).encode())
    environment = dict(os.environ)
    environment.update(
        {
            "GF_PATHS_DATA": str(directory / "data"),
            "GF_PATHS_LOGS": str(directory / "log"),
            "GF_PATHS_PLUGINS": str(directory / "plugins"),
            "GF_PATHS_PROVISIONING": str(provisioning),
            "GF_SERVER_HTTP_ADDR": HOST,
            "GF_SERVER_HTTP_PORT": str(port),
            "GF_SECURITY_ADMIN_USER": "admin",
            "GF_SECURITY_ADMIN_PASSWORD__FILE": str(secret),
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_LOG_MODE": "console",
        }
    )
    argv = list(install.argv_prefix)
    if install.home:
        argv += ["--homepath", install.home]
    # Same as GF_PATHS_DATA, but on the command line, where `destroy` recognises its own process.
    argv.append(f"cfg:default.paths.data={directory / 'data'}")
    return ManagedProcess("grafana", argv, log_path, env=environment, stop_timeout_s=20.0)
