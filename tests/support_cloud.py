"""Test helpers for the cloud verbs: no real AWS account can be reached, and output is plain text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console


def isolate_from_real_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static credentials; no metadata service, no ~/.aws files, no PULUMI_BACKEND_URL."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)


def plain_console() -> Console:
    """Wide and colourless, so assertions see whole lines without markup."""
    return Console(width=240, highlight=False, color_system=None)


def use_plain_terminal(
    monkeypatch: pytest.MonkeyPatch,
    tty: Callable[[], bool] = lambda: False,
    answer: Callable[[str], bool] = lambda _question: False,
) -> None:
    """The rich renderer draws on `plain_console()`, with this terminal and these answers."""
    from cli_render import terminal

    monkeypatch.setattr(
        terminal, "terminal", lambda: terminal.Terminal(console=plain_console(), stdin_is_tty=tty, ask=answer)
    )
