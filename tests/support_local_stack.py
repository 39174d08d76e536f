"""Test helper: a `Pulumi.local.yaml` whose every port is ephemeral, so local stacks never collide."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result


def write_local_stack_file(
    directory: Path, simulators: int, fleet: Mapping[str, Any], *, header: str = "", **local: Any
) -> Path:
    """`directory/Pulumi.local.yaml` with this fleet; `local` overrides the `iotfactory:local` keys."""
    document = {
        "config": {
            "iotfactory:fleet": dict(fleet),
            "iotfactory:simulatorCount": simulators,
            "iotfactory:local": {
                "brokerPort": 0,
                "prometheusPort": 0,
                "grafanaPort": 0,
                "metricsPortBase": 0,
                "scrapeIntervalS": 1,
                **local,
            },
        }
    }
    path = directory / "Pulumi.local.yaml"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


def run_cli(*args: str) -> Result:
    """`python cli.py ARGS` in this process (as a user runs it, minus the interpreter start)."""
    import cli

    return CliRunner().invoke(cli.app, list(args))
