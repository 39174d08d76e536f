"""`doctor --stack local`: the local stack's prerequisites, all checked and listed together.

Each check is the one `up` itself runs (`processes.require_binary`, `lifecycle.preflight`), so the
two never disagree; `up` stops at the first problem, `doctor` shows them all.
"""

from __future__ import annotations

from collections.abc import Callable

from factory_core.errors import UsageError
from factory_core.verb_results import DoctorReport, PrerequisiteCheck
from local_stack import grafana, lifecycle
from local_stack.paths import StatePaths
from local_stack.processes import INSTALL_HINTS, require_binary
from local_stack.stack_config import StackConfig
from local_stack.state_file import is_running

STACK = "local"


def _binary(name: str) -> PrerequisiteCheck:
    try:
        return PrerequisiteCheck(name, True, require_binary(name))
    except UsageError:
        return PrerequisiteCheck(name, False, "not found on PATH", INSTALL_HINTS.get(name, f"install {name}"))


def local_doctor(load: Callable[[], tuple[StackConfig, StatePaths]]) -> DoctorReport:
    checks = [_binary("mosquitto"), _binary("prometheus")]
    install = grafana.find_install()
    checks.append(
        PrerequisiteCheck(
            "grafana",
            True,
            " ".join(install.argv_prefix)
            if install
            else "not installed (optional: the stack runs without dashboards)",
        )
    )
    try:
        config, paths = load()
    except UsageError as exc:
        checks.append(PrerequisiteCheck("stack file", False, "cannot be used", str(exc)))
        return DoctorReport(STACK, tuple(checks))
    checks.append(PrerequisiteCheck("stack file", True, str(config.path)))
    if is_running(paths):
        checks.append(PrerequisiteCheck("ports", True, "the stack is running and holds them"))
    elif all(check.ok for check in checks):
        # preflight checks the binaries first: only reached when they are there.
        try:
            lifecycle.preflight(config, paths)
            checks.append(PrerequisiteCheck("ports", True, "every configured port is free"))
        except UsageError as exc:
            checks.append(PrerequisiteCheck("ports", False, "a configured port is taken", str(exc)))
    return DoctorReport(STACK, tuple(checks))
