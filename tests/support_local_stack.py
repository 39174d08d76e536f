"""Test helper: a `Pulumi.local.yaml` whose every port is ephemeral, so local stacks never collide."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typer.testing import CliRunner, Result

from factory_core import stack_file

if TYPE_CHECKING:
    from local_stack.certificate_authority import IssuedCertificate
    from local_stack.paths import StatePaths


def every_port_free() -> dict[str, int]:
    """Every port key of `iotfactory:local` at 0 (any free port), read from the schema itself."""
    from local_stack.stack_config import LocalSettings

    return {
        field.alias or name: 0
        for name, field in LocalSettings.model_fields.items()
        if name.endswith(("_port", "_port_base"))
    }


def write_local_stack_file(
    directory: Path, simulators: int, fleet: Mapping[str, Any], *, header: str = "", **local: Any
) -> Path:
    """`directory/Pulumi.local.yaml` with this fleet; `local` overrides the `iotfactory:local` keys."""
    document = {
        stack_file.CONFIG_FIELD: {
            stack_file.FLEET_KEY: dict(fleet),
            stack_file.SIMULATOR_COUNT_KEY: simulators,
            stack_file.LOCAL_KEY: {**every_port_free(), "scrapeIntervalS": 1, **local},
        }
    }
    path = directory / "Pulumi.local.yaml"
    path.write_text(stack_file.render(document, header))
    return path


def run_cli(*args: str) -> Result:
    """`python cli.py ARGS` in this process (as a user runs it, minus the interpreter start)."""
    import cli

    return CliRunner().invoke(cli.app, list(args))


def cli_process(*args: str, env: dict[str, str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """`python cli.py ARGS` in a process of its own, as a user runs it; stdin is closed (never asks)."""
    from local_stack.paths import PROJECT_DIR

    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "cli.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        cwd=PROJECT_DIR,
    )


def admitted_device(
    paths: StatePaths, broker_port: int, common_name: str, site: str, directory: Path
) -> IssuedCertificate:
    """A device certificate a running local stack's broker admits as one of `site`'s, as `scale`
    admits one: issued by the stack's CA and added to the site's group by its administrator."""
    from local_stack.certificate_authority import CA_CERT_FILE, CertificateAuthority
    from local_stack.dynamic_security import DynsecAdmin
    from local_stack.identities import ADMIN_IDENTITY

    cert = CertificateAuthority.load(paths.ca_dir).issue_client(common_name, directory)
    admin = paths.certs_dir
    DynsecAdmin(
        "127.0.0.1",
        broker_port,
        paths.ca_dir / CA_CERT_FILE,
        admin / f"{ADMIN_IDENTITY}.pem",
        admin / f"{ADMIN_IDENTITY}.key",
    ).admit({common_name: site})
    return cert
