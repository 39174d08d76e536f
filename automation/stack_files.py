"""The backends file `bootstrap` writes: which state bucket and secrets key each cloud stack uses.

It holds no secrets and is meant to be committed, so every teammate and CI use the same backend.
Stack files themselves (`Pulumi.<stack>.yaml`) are read and written by `factory_core.stack_file`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from automation.stack_port import BackendSettings
from factory_core import stack_file

BACKENDS_FILE = Path("automation") / "backends.yaml"
_HEADER = (
    "# Written by `python cli.py bootstrap --stack <name>`: where each cloud stack keeps its Pulumi\n"
    "# state and which KMS key encrypts its secrets. No secrets here; commit it.\n"
)


def _read_backends(project_dir: Path) -> dict[str, Any]:
    path = project_dir / BACKENDS_FILE
    if not path.is_file():
        return {}
    document = stack_file.load_yaml_file(path, what="backends file", fix=f"fix {BACKENDS_FILE} or delete it")
    return document if isinstance(document, dict) else {}


def read_backend(project_dir: Path, stack: str) -> BackendSettings:
    """Backend for a stack: PULUMI_BACKEND_URL wins (CI), then the backends file, then the stack file."""
    stacks = _read_backends(project_dir).get("stacks")
    entry = stacks.get(stack) if isinstance(stacks, dict) else None
    recorded: dict[str, Any] = entry if isinstance(entry, dict) else {}
    url = os.environ.get("PULUMI_BACKEND_URL") or recorded.get("backend_url")
    provider = recorded.get("secrets_provider")
    path = stack_file.stack_path(project_dir, stack)
    if not provider and path.is_file():
        provider = stack_file.read_document(path).get(stack_file.SECRETS_PROVIDER_FIELD)
    return BackendSettings(
        backend_url=str(url) if url else None, secrets_provider=str(provider) if provider else None
    )


def write_backend(project_dir: Path, stack: str, settings: BackendSettings) -> Path:
    path = project_dir / BACKENDS_FILE
    document = _read_backends(project_dir)
    stacks = document.get("stacks") if isinstance(document.get("stacks"), dict) else {}
    entry = {"backend_url": settings.backend_url, "secrets_provider": settings.secrets_provider}
    stacks = {**stacks, stack: entry}
    document = {**document, "stacks": dict(sorted(stacks.items()))}
    stack_file.write_text_atomically(path, stack_file.render(document, _HEADER), fix=f"check {path.parent}")
    return path
