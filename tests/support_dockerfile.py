"""simulator/Dockerfile read with BuildKit's own parser (the `dockerfile` package wraps its Go code).

The parser gives instructions, flags and JSON/shell forms; this module adds what the tests and the
image assembly need on top: stages, `ENV` values with `$VAR` expanded the way BuildKit does, a
`RUN`'s `&&` chain split into words, and the final stage's user, health check and entrypoint.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dockerfile

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "simulator" / "Dockerfile"
SHELL = ("/bin/sh", "-c")  # Docker's default SHELL for the shell form
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "(", ")"}


class DockerfileError(ValueError):
    """The Dockerfile uses something these helpers do not model; the message names it."""


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None
    base: str
    instructions: tuple[dockerfile.Command, ...]  # after its FROM

    def all(self, keyword: str) -> list[dockerfile.Command]:
        return [command for command in self.instructions if command.cmd == keyword]

    def last(self, keyword: str) -> dockerfile.Command | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def label(self) -> str:
        return self.name or f"stage {self.index}"


@dataclass(frozen=True)
class HealthCheck:
    argv: tuple[str, ...]
    interval_s: float
    timeout_s: float
    start_period_s: float
    retries: int


def parse_stages(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    current: list[dockerfile.Command] = []
    header: dockerfile.Command | None = None
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            if header is not None:
                stages.append(_stage(len(stages), header, current))
            header, current = command, []
        elif header is None:
            if command.cmd != "ARG":
                raise DockerfileError(f"{path}: {command.original!r} comes before the first FROM")
        else:
            current.append(command)
    if header is None:
        raise DockerfileError(f"{path} has no FROM")
    stages.append(_stage(len(stages), header, current))
    return stages


def _stage(index: int, header: dockerfile.Command, commands: list[dockerfile.Command]) -> Stage:
    words = header.value
    name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
    return Stage(index, name, words[0], tuple(commands))


def final_stage(path: Path = DOCKERFILE) -> Stage:
    return parse_stages(path)[-1]


def stage_by_reference(stages: Sequence[Stage], reference: str) -> Stage:
    """The stage a `COPY --from=` names (by name or index)."""
    for stage in stages:
        if reference in (stage.name, str(stage.index)):
            return stage
    raise DockerfileError(f"COPY --from={reference}: no such stage (image references are not modelled)")


def flag(command: dockerfile.Command, name: str) -> str | None:
    for item in command.flags:
        key, _, value = item.partition("=")
        if key == f"--{name}":
            return value
    return None


def expand(word: str, environment: Mapping[str, str]) -> str:
    """`$VAR` / `${VAR}` from the stage's environment (unset: empty), then quotes removed."""
    if "'" in word and "$" in word:
        raise DockerfileError(f"{word!r}: single-quoted variables are not modelled")
    substituted = _VARIABLE.sub(lambda m: environment.get(m["braced"] or m["plain"], ""), word)
    return " ".join(shlex.split(substituted)) if any(q in substituted for q in "\"'") else substituted


def env_pairs(command: dockerfile.Command, environment: Mapping[str, str]) -> dict[str, str]:
    """An `ENV`'s pairs; every value sees the environment from before this instruction (BuildKit)."""
    values = command.value
    return {values[i]: expand(values[i + 1], environment) for i in range(0, len(values), 2)}


def shell_commands(command: dockerfile.Command) -> list[list[str]]:
    """A `RUN`'s commands: the exec form as one, the shell form split at `&&` into words."""
    if command.json:
        return [list(command.value)]
    lexer = shlex.shlex(command.value[0], posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def uses_shell_syntax(words: Sequence[str]) -> bool:
    return any(word in _SHELL_OPERATORS or "$" in word for word in words)


def exec_form(command: dockerfile.Command) -> tuple[str, ...]:
    return tuple(command.value) if command.json else (*SHELL, " ".join(command.value))


def entrypoint(stage: Stage) -> tuple[str, ...]:
    """What the container runs: ENTRYPOINT (+ CMD as its arguments in the exec form)."""
    entry = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    if entry is None:
        if cmd is None:
            raise DockerfileError(f"{stage.label} has neither ENTRYPOINT nor CMD")
        return exec_form(cmd)
    arguments = tuple(cmd.value) if entry.json and cmd is not None and cmd.json else ()
    return (*exec_form(entry), *arguments)


def user(stage: Stage) -> tuple[int, int]:
    command = stage.last("USER")
    if command is None:
        raise DockerfileError(f"{stage.label} sets no USER: the container would run as root")
    uid, _, gid = command.value[0].partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise DockerfileError(f"USER {command.value[0]}: only numeric uid:gid is modelled")
    return int(uid), int(gid or uid)


def duration_s(text: str) -> float:
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise DockerfileError(f"{text!r} is not a duration like 15s or 1m30s")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def healthcheck(stage: Stage) -> HealthCheck | None:
    command = stage.last("HEALTHCHECK")
    if command is None or command.value[0].upper() == "NONE":
        return None
    if command.value[0].upper() != "CMD":
        raise DockerfileError(f"{command.original!r}: expected HEALTHCHECK [OPTIONS] CMD ...")
    argv = tuple(command.value[1:]) if command.json else (*SHELL, " ".join(command.value[1:]))
    options = {item.partition("=")[0]: item.partition("=")[2] for item in command.flags}
    return HealthCheck(
        argv=argv,
        # Docker's defaults for the options left out.
        interval_s=duration_s(options.get("--interval", "30s")),
        timeout_s=duration_s(options.get("--timeout", "30s")),
        start_period_s=duration_s(options.get("--start-period", "0s")),
        retries=int(options.get("--retries", "3")),
    )


def stop_signal(stage: Stage) -> signal.Signals:
    command = stage.last("STOPSIGNAL")
    name = command.value[0] if command else "SIGTERM"
    return signal.Signals(int(name)) if name.isdigit() else signal.Signals[name.upper()]


def python_version(base: str) -> tuple[int, int]:
    """major.minor of an official `python:X.Y...` base image."""
    match = re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)", base)
    if not match:
        raise DockerfileError(f"base image {base} is not an official python image")
    return int(match[1]), int(match[2])


def export_command(path: Path = DOCKERFILE) -> list[str]:
    """The builder's `uv export ...` words, exactly as its RUN line has them."""
    found = [
        words
        for stage in parse_stages(path)
        for run in stage.all("RUN")
        for words in shell_commands(run)
        if words[:2] == ["uv", "export"]
    ]
    if len(found) != 1:
        raise DockerfileError(f"{path}: expected one `uv export` in a RUN line, found {len(found)}")
    return found[0]


def export_output(path: Path = DOCKERFILE) -> tuple[str, str]:
    """(stage, image path) of the requirements file the builder's `uv export --output-file` writes."""
    for stage in parse_stages(path):
        workdir = "/"
        for command in stage.instructions:
            if command.cmd == "WORKDIR":
                workdir = os.path.join(workdir, command.value[0])
            for words in shell_commands(command) if command.cmd == "RUN" else []:
                if words[:2] == ["uv", "export"] and "--output-file" in words:
                    output = words[words.index("--output-file") + 1]
                    return stage.label, os.path.normpath(os.path.join(workdir, output))
    raise DockerfileError(f"{path}: no `uv export --output-file` in any RUN line")


def pruned_packages(path: Path = DOCKERFILE) -> list[str]:
    words = export_command(path)
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--prune"]
