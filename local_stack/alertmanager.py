"""Debian's Alertmanager on the local stack: its process, its address, its channels, a silence command.

Prometheus sends it every alert; it routes them as `observability/alertmanager_config.py` says, to
the channels `iotfactory:local.alerting` configures (a webhook, e-mail). The SMTP password is never
in the stack file: Alertmanager reads it from `smtp_password_file(...)`, a 0600 file the user
creates under the state folder.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from factory_core.errors import UsageError
from local_stack.ports import HOST
from local_stack.processes import ManagedProcess, require_binary
from local_stack.stack_config import AlertingSettings
from observability.alertmanager_config import Channels, SmtpChannel

BINARY = "prometheus-alertmanager"
SMTP_PASSWORD_FILE = "smtp-password"
CONFIG_FILE = "alertmanager.yml"  # where the bundle's `alertmanager/alertmanager.yml` lands locally


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def config_file(directory: Path) -> Path:
    return directory / CONFIG_FILE


def smtp_password_file(directory: Path) -> Path:
    return directory / SMTP_PASSWORD_FILE


def silence_command(port: int) -> str:
    """A runnable example: silence one site's alerts for two hours (amtool comes with the package)."""
    return shlex.join([
        "amtool", f"--alertmanager.url={url(port)}", "silence", "add",
        "site=site-00", "--duration=2h", "--comment=maintenance on site-00",
    ])


def channels(settings: AlertingSettings, directory: Path) -> Channels:
    """Where alerts go, from `iotfactory:local.alerting`; refuses an SMTP password file others can read."""
    email = settings.email
    if email is None:
        return Channels(webhook_url=settings.webhook_url)
    password_file: Path | None = None
    if email.username:
        password_file = smtp_password_file(directory)
        _check_private(password_file)
    return Channels(
        email=SmtpChannel(
            smarthost=email.smarthost,
            from_address=email.from_address,
            to_addresses=tuple(email.to),
            username=email.username,
            password_file=str(password_file) if password_file else None,
            require_tls=email.require_tls,
        ),
        webhook_url=settings.webhook_url,
    )


def _check_private(path: Path) -> None:
    create = (
        f"create it readable by you only: (umask 077; mkdir -p {shlex.quote(str(path.parent))} && "
        f"cat > {shlex.quote(str(path))}), type the password, Ctrl-D"
    )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(
            f"iotfactory:local.alerting.email.username is set but the SMTP password file {path} does not "
            f"exist; {create}"
        ) from None
    if not stat.S_ISREG(mode) or mode & 0o077 or path.stat().st_uid != os.getuid():
        raise UsageError(
            f"the SMTP password file {path} must be a file of yours that nobody else can read "
            f"(mode 0600); chmod 600 {shlex.quote(str(path))}"
        )


def process(config_file: Path, data_dir: Path, port: int, log_path: Path) -> ManagedProcess:
    binary = require_binary(BINARY)
    argv = [
        binary,
        f"--config.file={config_file}",
        f"--storage.path={data_dir}",
        f"--web.listen-address={HOST}:{port}",
        # One Alertmanager, no cluster: the default would listen for peers on 0.0.0.0:9094.
        "--cluster.listen-address=",
        "--log.level=info",
    ]
    return ManagedProcess("alertmanager", argv, log_path, stop_timeout_s=20.0)
