"""Docs that cannot go stale: every command, path and sample error in README.md and docs/ is checked.

- Every `cli.py` command parses: its verb exists and each flag is one of that verb's options;
  `python -m module ...` commands use only flags the module's `--help` lists.
- Every repository path named in inline code or a link exists (a `file.py:NAME` also names NAME).
- Every sample `error: ...` line is printed by a real run: the `$ command` shown above it, or a
  reproduction registered in `REPRODUCTIONS` below.
- The local commands run for real, in the order a user would run them, against a real local
  stack (tests/test_docs_local_run.py).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docs_commands import (
    PLACEHOLDER_ONLY,
    REPO,
    Command,
    commands,
    repository_paths,
    sample_errors,
    sample_pattern,
)
from docs_reproductions import REPRODUCTIONS, run

ALL_COMMANDS = commands()
CLI_COMMANDS = [command for command in ALL_COMMANDS if command.cli_arguments() is not None]
MODULE_COMMANDS = [command for command in ALL_COMMANDS if command.module_arguments() is not None]
# Files a verb writes, which the docs name but the repository does not hold.
WRITTEN_BY_VERBS = {"automation/backends.yaml": "bootstrap"}


def _ids(items: list[Command]) -> list[str]:
    return [command.where for command in items]


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    first_two = [command.text.split("#")[0].split() for command in ALL_COMMANDS[:2]]
    assert first_two == [["./iotfactory", "up", "--stack", "local"], ["./iotfactory", "test"]]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "./iotfactory test" in ci, "CI must run the README's test command"


@functools.cache
def _verb_help(verb: str) -> tuple[int, str]:
    completed = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), verb, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed.returncode, completed.stdout


def _mentions(usage: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage) is not None


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=_ids(CLI_COMMANDS))
def test_every_documented_cli_command_parses(command: Command) -> None:
    arguments = command.cli_arguments() or []
    if arguments[:1] == ["test"]:  # ./iotfactory test: pytest's own arguments follow
        return
    assert arguments, f"{command.where}: `{command.text}` names no verb"
    code, usage = _verb_help(arguments[0])
    assert code == 0, f"{command.where}: `{arguments[0]}` is not a verb of cli.py: {command.text}"
    for word in arguments[1:]:
        flag = word.strip("[]").split("=", 1)[0]
        if flag.startswith("-") and flag != "-":
            assert _mentions(usage, flag), f"{command.where}: `{arguments[0]}` has no option {flag}"


@functools.cache
def _module_help(module: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, f"python -m {module} --help failed: {completed.stderr[-500:]}"
    return completed.stdout


@pytest.mark.parametrize("command", MODULE_COMMANDS, ids=_ids(MODULE_COMMANDS))
def test_every_documented_module_command_uses_real_flags(command: Command) -> None:
    module, arguments = command.module_arguments() or ("", [])
    assert (REPO / module.replace(".", "/")).with_suffix(".py").is_file() or (
        REPO / module.replace(".", "/") / "__main__.py"
    ).is_file(), f"{command.where}: no module {module}"
    usage = _module_help(module)
    for word in arguments:
        flag = word.strip("[]").split("=", 1)[0]
        if flag.startswith("--"):
            assert _mentions(usage, flag), (
                f"{command.where}: python -m {module} has no option {flag}"
            )


def test_documented_test_globs_match_files() -> None:
    for command in ALL_COMMANDS:
        words = command.words
        if words and words[0].endswith("pytest"):
            for pattern in (word for word in words[1:] if not word.startswith("-")):
                assert list(REPO.glob(pattern)), f"{command.where}: {pattern} matches no file"


def test_documented_paths_exist() -> None:
    missing = []
    for where, path in repository_paths():
        name, _, symbol = path.partition(":")
        if name in WRITTEN_BY_VERBS:
            continue
        target = REPO / name
        if not target.exists():
            missing.append(f"{where}: {name}")
        elif symbol and target.is_file() and symbol not in target.read_text(encoding="utf-8"):
            missing.append(f"{where}: {name} has no {symbol}")
    assert not missing, "documents name paths that do not exist:\n" + "\n".join(missing)


def _shown_command(where: str) -> Command | None:
    """The `$ command` whose sample output holds the documented line at `where`, if any."""
    document, line = where.rsplit(":", 1)
    for command in ALL_COMMANDS:
        same_document = str(command.document.relative_to(REPO)) == document
        if same_document and 0 < int(line) - command.line <= len(command.output):
            return command
    return None


SAMPLES = [(where, sample) for where, sample in sample_errors() if not PLACEHOLDER_ONLY.match(sample)]


@pytest.mark.parametrize(("where", "sample"), SAMPLES, ids=[where for where, _ in SAMPLES])
def test_documented_sample_errors_are_what_users_see(
    where: str, sample: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = _shown_command(where)
    if shown is not None and shown.cli_arguments() is not None:
        # Without the Pulumi CLI on PATH, as the docs' examples assume.
        no_pulumi = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
        actual = run(["cli.py", *(shown.cli_arguments() or [])], tmp_path, env=no_pulumi)
    else:
        reproduce = next((make for prefix, make in REPRODUCTIONS.items() if sample.startswith(prefix)), None)
        assert reproduce is not None, (
            f"{where}: no way to produce the documented `{sample[:60]}…`; show the command above it "
            "or register a reproduction in tests/docs_reproductions.py"
        )
        actual = reproduce(tmp_path, monkeypatch)
    assert sample_pattern(sample).match(actual), f"{where}: documented\n  {sample}\nbut users see\n  {actual}"
