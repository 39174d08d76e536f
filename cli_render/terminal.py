"""The terminal the rich renderer draws on and asks through; tests swap `terminal` for a plain one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console


def _ask(question: str) -> bool:
    import typer

    return bool(typer.confirm(question, default=False))


@dataclass
class Terminal:
    console: Console = field(default_factory=lambda: Console(highlight=False))
    stdin_is_tty: Callable[[], bool] = field(default=lambda: sys.stdin.isatty())
    ask: Callable[[str], bool] = field(default=_ask)


terminal: Callable[[], Terminal] = Terminal
