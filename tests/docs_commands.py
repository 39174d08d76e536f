"""What README.md and docs/*.md show a user: shell commands, repository paths and sample errors.

The docs test (tests/test_docs_commands.py) runs or parses every command found here, so a renamed
verb, flag, path or message fails a test instead of misleading a reader.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "text"}
# Programs whose command lines we recognise; anything else in a block is output or prose.
_PROGRAMS = (
    "python cli.py",
    ".venv/bin/python cli.py",
    "./iotfactory",
    "python -m",
    ".venv/bin/python -m",
    ".venv/bin/pytest",
    ".venv/bin/ruff",
    "mosquitto_sub",
    "mosquitto_pub",
)
CLOUD_STACKS = ("dev", "prod")


@dataclass(frozen=True)
class Command:
    """One documented command line (continuations joined, prompt and trailing comment removed)."""

    document: Path
    line: int
    text: str
    # Lines of the same block that follow this command up to the next command: its sample output.
    output: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"

    @property
    def words(self) -> list[str]:
        lexer = shlex.shlex(self.text, posix=True, punctuation_chars="|&;<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        return list(lexer)

    @property
    def is_synopsis(self) -> bool:
        """`verify [--json]`, `ARCHIVE`, `<site>`: a usage line to parse, not a command to run."""
        return any(
            word.startswith("[") or word.startswith("<") or (word.isupper() and len(word) > 1)
            for word in self.words
        )

    def cli_arguments(self) -> list[str] | None:
        """The arguments after `cli.py` (or `./iotfactory`), or None for other programs."""
        words = self.words
        for index, word in enumerate(words):
            if word.endswith("cli.py") or word == "./iotfactory":
                return _until_redirection(words[index + 1 :])
        return None

    def module_arguments(self) -> tuple[str, list[str]] | None:
        """(`module`, arguments) for `python -m module ...`."""
        words = self.words
        if "-m" not in words:
            return None
        index = words.index("-m")
        return words[index + 1], _until_redirection(words[index + 2 :])

    @property
    def stack(self) -> str | None:
        arguments = self.cli_arguments() or []
        for index, word in enumerate(arguments):
            if word in ("--stack", "-s") and index + 1 < len(arguments):
                return arguments[index + 1]
            if word.startswith("--stack="):
                return word.split("=", 1)[1]
        return None

    @property
    def is_cloud(self) -> bool:
        return self.stack in CLOUD_STACKS


def _until_redirection(words: list[str]) -> list[str]:
    for index, word in enumerate(words):
        if word in ("|", ">", ">>", "<", "&&", ";", "&"):
            return words[:index]
    return words


def _is_command(line: str) -> bool:
    return line.startswith(_PROGRAMS)


def _blocks(document: Path) -> Iterator[tuple[int, str, list[str]]]:
    text = document.read_text(encoding="utf-8")
    for match in _FENCE.finditer(text):
        language = match.group(1).strip().split(" ")[0]
        if language not in _SHELL_LANGUAGES:
            continue
        first_line = text.count("\n", 0, match.start(2)) + 1
        yield first_line, language, match.group(2).splitlines()


def commands(documents: tuple[Path, ...] = DOCUMENTS) -> list[Command]:
    found: list[Command] = []
    for document in documents:
        for first_line, _language, lines in _blocks(document):
            index = 0
            while index < len(lines):
                line = lines[index].strip().removeprefix("$ ")
                start = index
                if not _is_command(line):
                    index += 1
                    continue
                while line.endswith("\\") and index + 1 < len(lines):
                    index += 1
                    line = line[:-1].rstrip() + " " + lines[index].strip()
                index += 1
                output: list[str] = []
                while index < len(lines) and not _is_command(lines[index].strip().removeprefix("$ ")):
                    output.append(lines[index])
                    index += 1
                found.append(Command(document, first_line + start, line, tuple(output)))
    return found


_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_TOP_LEVEL = ("automation/", "bench/", "cli.py", "docs/", "factory_core/", "infra/", "local_stack/",
              "observability/", "scripts/", "simulator/", "tests/", ".ci/", ".github/")


def repository_paths(documents: tuple[Path, ...] = DOCUMENTS) -> list[tuple[str, str]]:
    """(`where`, path) for every repository path a document names in inline code or a link."""
    found: list[tuple[str, str]] = []
    for document in documents:
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{document.relative_to(REPO)}:{number}"
            for link in _LINK.findall(line):
                if "://" not in link and not link.startswith("mailto:"):
                    found.append((where, str((document.parent / link).resolve().relative_to(REPO))))
            for code in _INLINE_CODE.findall(line):
                candidate = code.split(" ")[0].split("::")[0].rstrip(".,;:")
                if candidate.startswith(_TOP_LEVEL) and not any(c in candidate for c in "<>*{}$"):
                    found.append((where, candidate))
    return found


_INLINE_ERROR = re.compile(r"`(error: [^`\n]+)`")


def sample_errors(documents: tuple[Path, ...] = DOCUMENTS) -> list[tuple[str, str]]:
    """(`where`, line) for every `error: ...` line a document shows, in blocks or inline code."""
    found: list[tuple[str, str]] = []
    for document in documents:
        inside_block = False
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{document.relative_to(REPO)}:{number}"
            if line.startswith("```"):
                inside_block = not inside_block
            elif inside_block and line.strip().startswith("error: "):
                found.append((where, line.strip()))
            elif not inside_block:
                found.extend((where, sample.strip()) for sample in _INLINE_ERROR.findall(line))
    return found


# `error: <what is wrong and how to fix it>` describes the form of an error, it is no sample of one.
PLACEHOLDER_ONLY = re.compile(r"^error: <[^>]+>$")


def sample_pattern(sample: str) -> re.Pattern[str]:
    """A documented line as a pattern: `...`, `…` and `<placeholder>` stand for anything."""
    parts = re.split(r"(\.\.\.|…|<[a-z][a-z0-9 _-]*>)", sample)
    pieces = [".+?" if part in ("...", "…") or part.startswith("<") else re.escape(part) for part in parts]
    return re.compile("".join(pieces) + r"\s*$")
