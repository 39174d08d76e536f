"""Where the local stack keeps its files: one config file and one state folder (default `.factory/local/`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from factory_core.errors import UsageError, shown

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_ENV = "IOTFACTORY_LOCAL_CONFIG"
STATE_DIR_ENV = "IOTFACTORY_STATE_DIR"
DEFAULT_CONFIG_FILE = PROJECT_DIR / "Pulumi.local.yaml"
DEFAULT_STATE_DIR = PROJECT_DIR / ".factory" / "local"
# `destroy` deletes only a folder carrying this file, so a mistyped IOTFACTORY_STATE_DIR=$HOME
# can never be wiped.
MARKER_FILE = ".iotfactory-local-stack"
# sun_path is 108 bytes on Linux; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100

BROKER = "broker"
RULE_RUNNER = "rule-runner"
PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
GRAFANA = "grafana"
SUPERVISOR = "supervisor"
SIMULATOR_PREFIX = "simulator-"


def simulator_service(index: int) -> str:
    return f"{SIMULATOR_PREFIX}{index:02d}"


def simulator_index(service: str) -> int | None:
    if not service.startswith(SIMULATOR_PREFIX):
        return None
    suffix = service[len(SIMULATOR_PREFIX) :]
    return int(suffix) if suffix.isdigit() else None


def _path_from_environment(name: str) -> Path | None:
    """The path in $name, or None when unset or empty; refuses text no file name should hold.

    A line break in a path would end up inside the broker's and Prometheus' config files.
    """
    value = os.environ.get(name, "")
    if not value:
        return None
    if not value.strip() or any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise UsageError(
            f"{name}={shown(value)} is not a usable path (blank, or holds control characters);"
            f" set {name} to a plain path or unset it"
        )
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, or ~user unknown
        raise UsageError(f"{name}={shown(value)} cannot be resolved ({error}); fix {name}") from None


def config_path() -> Path:
    """The stack file: $IOTFACTORY_LOCAL_CONFIG, else `Pulumi.local.yaml` next to the other stack files."""
    return _path_from_environment(CONFIG_ENV) or DEFAULT_CONFIG_FILE


def state_root() -> Path:
    """The state folder: $IOTFACTORY_STATE_DIR, else `.factory/local/`; refuses a path that is a file."""
    root = _path_from_environment(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    # The folder may not exist yet (`up` creates it), but nothing on its way may be a file.
    for folder in (root, *root.parents):
        if folder.exists() and not folder.is_dir():
            where = "is a file" if folder == root else f"lies under {folder}, which is a file"
            raise UsageError(
                f"state folder {root} {where}, not a folder; set {STATE_DIR_ENV} to a folder"
                " (it is created if missing)"
            )
        if folder.exists():
            break
    return root


@dataclass(frozen=True)
class StatePaths:
    """Every file and folder of one local stack, under one root."""

    root: Path

    @classmethod
    def from_environment(cls) -> StatePaths:
        return cls(state_root())

    @property
    def marker(self) -> Path:
        return self.root / MARKER_FILE

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def certs_dir(self) -> Path:
        return self.root / "certs"

    @property
    def broker_dir(self) -> Path:
        return self.root / "mosquitto"

    @property
    def default_archive_dir(self) -> Path:
        return self.root / "archive"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    @property
    def prometheus_data_dir(self) -> Path:
        return self.prometheus_dir / "data"

    @property
    def alertmanager_dir(self) -> Path:
        return self.root / "alertmanager"

    @property
    def alertmanager_data_dir(self) -> Path:
        return self.alertmanager_dir / "data"

    @property
    def grafana_dir(self) -> Path:
        return self.root / "grafana"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def simulators_dir(self) -> Path:
        return self.root / "simulators"

    @property
    def fleet_config(self) -> Path:
        """Snapshot of the fleet settings the running simulators were started with."""
        return self.simulators_dir / "fleet.yaml"

    @property
    def state_file(self) -> Path:
        """Runtime state written by the supervisor: pids, ports, phase."""
        return self.root / "state.json"

    @property
    def pki_file(self) -> Path:
        """Certificate generations, serials per site, and the rotation record."""
        return self.root / "pki.json"

    @property
    def control_socket(self) -> Path:
        """Unix socket of the supervisor; moved under /tmp when the state path is too long for one."""
        preferred = self.root / "control.sock"
        if len(str(preferred)) <= _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path("/tmp") / f"iotfactory-{os.getuid()}" / f"{digest}.sock"

    def log(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"

    def simulator_state(self, index: int) -> Path:
        """The simulator's model checkpoint: a restarted simulator resumes `seq` from it."""
        return self.simulators_dir / f"{simulator_service(index)}.checkpoint"

    def exists(self) -> bool:
        return self.marker.is_file()

    def create(self) -> None:
        # Keys live below; nobody else on the machine needs to read any of it.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        for folder in (
            self.ca_dir,
            self.certs_dir,
            self.broker_dir,
            self.prometheus_dir,
            self.alertmanager_dir,
            self.logs_dir,
            self.simulators_dir,
        ):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.marker.exists():
            self.marker.write_text(
                "State of the iotfactory local stack; `python cli.py destroy --stack local` "
                "deletes this folder.\n"
            )
