"""docs/cloud.md shows what the CLI really prints when operations go wrong, and how to recover.

Every block marked `<!-- reproduced: NAME -->` holds a `$ python cli.py ...` command and the lines it
prints. Each is run here in the situation the text describes (tests/support_operations.py: a machine
without the tools, an interrupted update, an ECS rollback, a stale checkout, drift), and every
documented line must be a line of the real output, in the documented order (lines the block leaves
out, such as progress bars, may come in between; `...` stands for anything, as in the docs test).
The blocks are `shell-session`, so tests/test_docs_commands.py does not run their commands
without that situation; it checks their `error:` lines through tests/docs_reproductions.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from docs_commands import sample_pattern
from support_operations import SCENARIOS, run_scenario

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "cloud.md"
_BLOCK = re.compile(r"<!-- reproduced: (?P<name>[\w-]+) -->\n```shell-session\n(?P<body>.*?)```", re.DOTALL)


def documented() -> dict[str, tuple[list[str], list[str]]]:
    """name -> (the command's arguments after `cli.py`, the output lines shown)."""
    blocks = {}
    for match in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        command, *output = match["body"].rstrip("\n").splitlines()
        assert command.startswith("$ python cli.py "), command
        blocks[match["name"]] = (shlex.split(command.removeprefix("$ python cli.py ")), output)
    return blocks


def test_every_reproduced_block_has_a_scenario() -> None:
    assert DOC.read_text(encoding="utf-8").count("<!-- reproduced: ") == len(documented())
    assert set(documented()) == set(SCENARIOS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_documented_lines_are_what_the_cli_prints(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arguments, expected = documented()[name]
    result = run_scenario(name, arguments, tmp_path, monkeypatch)
    printed = [line.rstrip() for line in result.output.splitlines()]
    position = 0
    for line in expected:
        pattern = sample_pattern(line)
        found = next(
            (index for index in range(position, len(printed)) if pattern.match(printed[index])), None
        )
        assert found is not None, f"{DOC.name} [{name}] shows a line the CLI does not print:\n{line}"
        position = found + 1
    errors = [line for line in expected if line.startswith("error: ")]
    printed_errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(printed_errors)
    assert all(sample_pattern(doc).match(real) for doc, real in zip(errors, printed_errors, strict=True))
