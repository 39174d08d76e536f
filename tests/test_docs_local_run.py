"""Every command README.md and docs/ show for this machine, run for real, in the order a user would.

A copy of `Pulumi.local.yaml` with every port set to 0 and a temporary state folder stand in for the
user's: the commands are the documented ones, word for word, but for `.factory/local` (the state
folder) and redirections into files (which land in the temporary folder). Commands that run until
Ctrl-C (`up` in the foreground, `logs -f`, `tail`) get SIGINT once they have shown they work.
Cloud commands are only parsed (tests/test_docs_commands.py); nothing here needs AWS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from docs_commands import DOCUMENTS, REPO, Command, commands
from support_local_stack import every_port_free

from factory_core import stack_file
from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV

# Verbs in the order of a stack's life; a documented command runs in its verb's slot.
LIFECYCLE = ("check", "up-detached", "look", "scale", "rotate-certs", "stop", "up", "destroy")
LOOKING_VERBS = {"status", "outputs", "logs", "verify", "tail", "query", "report", "score", "doctor",
                 "dashboards"}
FOLLOWERS = {"logs": "-f", "tail": ""}  # verbs that run until Ctrl-C (with this flag, if any)
# Not run here, and why.
NOT_RUN = {
    "test": "the test suite itself",
    "bootstrap": "needs AWS",
    "cost": "prices AWS; on the local stack it only refuses (tests/test_docs_commands.py reproduces that)",
}


@dataclass(frozen=True)
class Step:
    slot: int
    command: Command
    argv: list[str]
    follows: bool  # runs until interrupted


def _cli_step(command: Command, arguments: list[str]) -> Step | None:
    if not arguments or arguments[0] in NOT_RUN or command.is_cloud or command.is_synopsis:
        return None
    verb = arguments[0]
    if command.stack not in (None, "local"):
        return None
    if verb == "up":
        slot = "up-detached" if {"--detach", "-d"} & set(arguments) else "up"
    elif verb in LOOKING_VERBS:
        slot = "look"
    elif verb in LIFECYCLE:
        slot = verb
    else:
        pytest.fail(f"{command.where}: decide where `{verb}` runs in tests/test_docs_local_run.py")
    follows = (verb == "up" and slot == "up") or (
        verb in FOLLOWERS and (FOLLOWERS[verb] == "" or FOLLOWERS[verb] in arguments)
    )
    return Step(LIFECYCLE.index(slot), command, ["cli.py", *arguments], follows)


def _module_step(command: Command, module: str, arguments: list[str]) -> Step | None:
    if command.is_synopsis or command.is_cloud:
        return None
    if module == "observability.generate" and "--check" not in arguments:
        return None  # it rewrites tracked files; its --check form runs
    if module == "local_stack.rule_runner" or (module == "simulator" and "--endpoint" in arguments):
        return None  # long-running processes against files the docs name as examples
    return Step(0, command, ["-m", module, *arguments], False)


def documented_steps() -> list[Step]:
    steps: list[Step] = []
    for command in commands():
        arguments = command.cli_arguments()
        module = command.module_arguments()
        step = None
        if arguments is not None:
            step = _cli_step(command, arguments)
        elif module is not None:
            step = _module_step(command, *module)
        if step is not None:
            steps.append(step)
    return sorted(steps, key=lambda step: step.slot)


@dataclass
class Sandbox:
    root: Path
    env: dict[str, str]
    checked: bool = False

    @property
    def state(self) -> Path:
        return self.root / "state"

    def words(self, argv: list[str]) -> list[str]:
        """The documented words with the state folder and output paths moved into the sandbox."""
        moved = [word.replace(".factory/local", str(self.state)) for word in argv]
        return [str(self.root / word[2:]) if word.startswith("./") and word != "./iotfactory" else word
                for word in moved]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("docs-run")
    document = stack_file.read_document(REPO / "Pulumi.local.yaml")
    local = document["config"].setdefault("iotfactory:local", {})
    local.update({**every_port_free(), "scrapeIntervalS": 1})
    config = root / "Pulumi.local.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    env = {**os.environ, CONFIG_ENV: str(config), STATE_DIR_ENV: str(root / "state"), "NO_COLOR": "1",
           "COLUMNS": "200"}
    box = Sandbox(root, env)
    yield box
    subprocess.run([sys.executable, str(REPO / "cli.py"), "stop", "--stack", "local"], env=env,
                   capture_output=True, timeout=180, check=False, cwd=REPO)


def _program(argv: list[str]) -> list[str]:
    if argv[0] == "cli.py":
        return [sys.executable, str(REPO / "cli.py"), *argv[1:]]
    return [sys.executable, *argv]


def _running(sandbox: Sandbox) -> bool:
    status = subprocess.run([sys.executable, str(REPO / "cli.py"), "status", "--stack", "local", "--json"],
                            env=sandbox.env, capture_output=True, text=True, timeout=60, check=False,
                            cwd=REPO)
    lines = [json.loads(line) for line in status.stdout.splitlines() if line.startswith("{")]
    return bool(lines) and bool(lines[-1].get("running"))


def _follow(step: Step, sandbox: Sandbox) -> None:
    """Start a command that runs until Ctrl-C, wait until it shows it works, then Ctrl-C it."""
    process = subprocess.Popen(_program(sandbox.words(step.argv)), env=sandbox.env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if step.argv[1] == "up":
            # Its live view goes to a non-terminal as periodic lines; the stack answering is the sign.
            from local_stack.readiness import wait_until

            assert wait_until(lambda: _running(sandbox) or process.poll() is not None, 120, poll_s=1.0)
        else:
            first = process.stdout.readline()  # a follower prints as soon as it has something
            assert first, f"{step.command.where}: `{step.command.text}` printed nothing"
        assert process.poll() is None, f"{step.command.where}: exited early: {process.stderr.read()}"
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=180)
        assert process.returncode in (0, 130), f"{step.command.where}: exit {process.returncode}: {err}"
        assert "Traceback" not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


_STATE_PATH = re.compile(r"\.factory/local/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
_PROMETHEUS_URL = re.compile(r"http://127\.0\.0\.1:9490(/[A-Za-z0-9_./?=&-]*)")


def documented_state_paths() -> set[str]:
    """`.factory/local/...` paths the docs name: a user looks for them in a running stack."""
    return {match for document in DOCUMENTS for match in _STATE_PATH.findall(document.read_text())}


def documented_prometheus_pages() -> set[str]:
    """Pages of the local Prometheus the docs send a user to (`http://127.0.0.1:9490/...`)."""
    return {match for document in DOCUMENTS for match in _PROMETHEUS_URL.findall(document.read_text())}


def _check_what_the_docs_point_at(sandbox: Sandbox) -> None:
    for path in sorted(documented_state_paths()):
        assert (sandbox.state / path.removeprefix(".factory/local/")).exists(), (
            f"the docs name {path}, which a running local stack does not have"
        )
    outputs = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "outputs", "--stack", "local", "--json"],
        env=sandbox.env, capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
    )
    prometheus = json.loads(outputs.stdout.splitlines()[-1])["outputs"]["prometheus_url"].rstrip("/")
    for page in sorted(documented_prometheus_pages()):
        with urllib.request.urlopen(prometheus + page, timeout=10) as response:
            assert response.status == 200, f"the docs link Prometheus's {page}: {response.status}"


@pytest.mark.integration
def test_every_documented_local_command_runs(sandbox: Sandbox) -> None:
    steps = documented_steps()
    assert {LIFECYCLE[step.slot] for step in steps} >= {"up-detached", "look", "stop", "destroy"}
    for step in steps:
        if LIFECYCLE[step.slot] == "look" and not sandbox.checked:
            _check_what_the_docs_point_at(sandbox)
            sandbox.checked = True
        if step.follows:
            _follow(step, sandbox)
            continue
        completed = subprocess.run(_program(sandbox.words(step.argv)), env=sandbox.env, cwd=REPO,
                                   capture_output=True, text=True, timeout=300, check=False,
                                   stdin=subprocess.DEVNULL)
        assert completed.returncode == 0, (
            f"{step.command.where}: `{step.command.text}` exited {completed.returncode}: "
            f"{completed.stderr[-600:]}"
        )
        assert "Traceback" not in completed.stderr
