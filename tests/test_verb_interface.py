"""Local and cloud stacks as peers behind one verb interface, and cli.py as a thin shell around them.

A verb a kind of stack does not have fails as a user runs it: exit 2, one line naming the
alternative, before any tool, credential or stack file is needed. The layering is read from the
source: the stacks return results and never draw them; only cli.py reaches the renderer.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from automation.cloud_stack import CloudStack
from factory_core.verbs import StackVerbs
from local_stack.stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / "cli.py"

# (stack, verb and its flags, fragments the one line must hold: what to run instead)
UNAVAILABLE = [
    ("local", ["preview"], ["`preview` is for cloud stacks", "up --stack local"]),
    ("local", ["bootstrap"], ["`bootstrap` creates the S3 state bucket", "up --stack local"]),
    ("local", ["cost"], ["`cost` estimates AWS charges", "costs nothing", "try --stack dev"]),
    ("dev", ["verify"], ["not wired to cloud stacks", "verify --archive s3://", "outputs --stack dev"]),
    ("prod", ["logs"], ["logs to CloudWatch", "aws logs tail /iotfactory/prod/simulators --follow"]),
    ("dev", ["tail"], ["`tail` watches the local broker", "MQTT test client", "factory/simulator/#"]),
    (
        "dev",
        ["stop"],
        ["`stop` is for the local stack", "scale --stack dev --simulators 0", "destroy --stack dev"],
    ),
]


@pytest.fixture
def bare_environment(tmp_path: Path) -> dict[str, str]:
    """No Pulumi CLI, no AWS credentials, a local stack that never ran: the verb must not need them."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "PULUMI_"))}
    env["PATH"] = str(tmp_path / "empty-bin")
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    env["IOTFACTORY_STATE_DIR"] = str(tmp_path / "state")
    env["IOTFACTORY_LOCAL_CONFIG"] = str(tmp_path / "Pulumi.local.yaml")
    return env


@pytest.mark.parametrize("json_output", [False, True], ids=["rich", "json"])
@pytest.mark.parametrize(("stack", "verb", "fragments"), UNAVAILABLE, ids=lambda item: str(item))
def test_a_verb_the_stack_lacks_is_one_line_naming_the_alternative(
    bare_environment: dict[str, str], stack: str, verb: list[str], fragments: list[str], json_output: bool
) -> None:
    args = [sys.executable, str(CLI), *verb, "--stack", stack, *(["--json"] if json_output else [])]
    result = subprocess.run(args, env=bare_environment, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]
    assert not (Path(bare_environment["IOTFACTORY_STATE_DIR"])).exists()


def test_both_kinds_of_stack_answer_every_verb() -> None:
    verbs = set(StackVerbs.__abstractmethods__)
    expected = {"up", "preview", "status", "outputs", "scale", "rotate_certs", "verify", "logs", "tail"}
    assert expected | {"stop"} < verbs
    for implementation in (LocalStack(), CloudStack("dev")):
        assert isinstance(implementation, StackVerbs)
        assert all(callable(getattr(implementation, verb)) for verb in verbs)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_cli_py_parses_and_hands_off_but_draws_nothing_itself() -> None:
    source = CLI.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert not top_level(imported_modules(CLI)) & {"rich", "json", "orjson"}
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not called & {
        "Table",
        "add_row",
        "add_column",
        "Console",
        "print",
        "echo",
        "dumps",
        "Live",
        "Progress",
    }
    assert "exit_code_for" in called  # the one table of exit codes, applied in one place


def python_modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["local_stack", "automation"])
def test_the_stacks_return_results_and_never_draw_them(package: str) -> None:
    other = {"local_stack": "automation", "automation": "local_stack"}[package]
    for module in python_modules(package):
        imported = top_level(imported_modules(module))
        assert not imported & {"rich", "cli_render", "typer", "cli", other}, (module, imported)


def test_only_cli_py_reaches_the_renderer() -> None:
    for package in ("factory_core", "local_stack", "automation", "simulator", "infra", "observability"):
        for module in python_modules(package):
            assert "cli_render" not in top_level(imported_modules(module)), module
    for module in python_modules("cli_render"):
        assert not top_level(imported_modules(module)) & {"local_stack", "automation", "cli"}, module


def test_the_core_interface_stands_on_the_ground_floor() -> None:
    core = ("verbs.py", "verb_results.py", "progress_events.py", "archive_report.py", "score_report.py")
    for name in (*core, "errors.py"):
        imported = top_level(imported_modules(REPO / "factory_core" / name))
        standard = set(sys.stdlib_module_names) | {"__future__", "pydantic"}
        assert imported <= standard | {"factory_core"}, (name, imported)
