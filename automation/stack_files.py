"""The files a cloud stack is defined by: `Pulumi.<stack>.yaml` and the backends file `bootstrap` writes.

Read without Pulumi, so preflight checks and error messages work on a machine without the CLI.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from automation.stack_port import BackendSettings
from factory_core.errors import UsageError

PROJECT_NAMESPACE = "iotfactory"
LOCAL_STACK = "local"
BACKENDS_FILE = Path("automation") / "backends.yaml"
_SECRETS_PROVIDER_LINE = re.compile(r"^secretsprovider:\s*(?P<value>.*?)\s*$", re.MULTILINE)


def stack_file(project_dir: Path, stack: str) -> Path:
    return project_dir / f"Pulumi.{stack}.yaml"


def known_stacks(project_dir: Path) -> list[str]:
    """Stacks that exist as files (`Pulumi.<name>.yaml`), plus the local stack."""
    names = {path.name[len("Pulumi.") : -len(".yaml")] for path in project_dir.glob("Pulumi.*.yaml")}
    return sorted(names | {LOCAL_STACK})


def require_stack_file(project_dir: Path, stack: str) -> Path:
    path = stack_file(project_dir, stack)
    if not path.is_file():
        cloud = [name for name in known_stacks(project_dir) if name != LOCAL_STACK]
        known = ", ".join(cloud) or "none"
        raise UsageError(
            f"unknown stack '{stack}': no {path.name} in {project_dir}; stacks that exist: {known}, local"
        )
    return path


def read_stack_document(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path.name}{where}: not valid YAML; fix the file") from None
    if not isinstance(document, dict):
        raise UsageError(f"{path.name}: expected a mapping with a 'config:' section")
    return document


def read_stack_config(path: Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file, values as YAML parsed them (secure values stay wrapped)."""
    config = read_stack_document(path).get("config") or {}
    if not isinstance(config, dict):
        raise UsageError(f"{path.name}: 'config:' must be a mapping of key: value")
    return {str(key): value for key, value in config.items()}


def qualified(key: str) -> str:
    """`simulatorCount` -> `iotfactory:simulatorCount`; keys with a namespace stay as they are."""
    return key if ":" in key else f"{PROJECT_NAMESPACE}:{key}"


def decode_value(raw: Any) -> Any:
    """A config value as Python: Automation API strings holding JSON become lists/dicts/numbers."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    return raw


def config_int(values: Mapping[str, Any], key: str, default: int, source: str) -> int:
    raw = values.get(qualified(key))
    if raw is None or raw == "":
        return default
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = float(raw)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise UsageError(
            f"config {qualified(key)}: must be a whole number (got {raw!r}); edit {source}"
        ) from None


def same_value(file_value: Any, stack_value: str | None) -> bool:
    """Whether a stack-file value and the Automation API's string for it mean the same thing."""
    if stack_value is None:
        return False
    decoded = decode_value(stack_value)
    if isinstance(file_value, list | dict):
        return decoded == file_value
    if isinstance(file_value, bool):
        return str(stack_value).lower() == str(file_value).lower()
    return str(file_value) == str(stack_value)


def is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


# The backends file: which state bucket and secrets key each stack uses. It holds no secrets and is
# meant to be committed, so every teammate and CI use the same backend.


def read_backend(project_dir: Path, stack: str) -> BackendSettings:
    """Backend for a stack: PULUMI_BACKEND_URL wins (CI), then the backends file, then the stack file."""
    recorded: dict[str, Any] = {}
    path = project_dir / BACKENDS_FILE
    if path.is_file():
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entry = document.get("stacks", {}).get(stack) if isinstance(document, dict) else None
        recorded = entry if isinstance(entry, dict) else {}
    url = os.environ.get("PULUMI_BACKEND_URL") or recorded.get("backend_url")
    provider = recorded.get("secrets_provider") or secrets_provider_of(stack_file(project_dir, stack))
    return BackendSettings(backend_url=url or None, secrets_provider=provider or None)


def write_backend(project_dir: Path, stack: str, settings: BackendSettings) -> Path:
    path = project_dir / BACKENDS_FILE
    document: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        document = loaded if isinstance(loaded, dict) else {}
    stacks = document.setdefault("stacks", {})
    stacks[stack] = {"backend_url": settings.backend_url, "secrets_provider": settings.secrets_provider}
    header = (
        "# Written by `python cli.py bootstrap --stack <name>`: where each cloud stack keeps its Pulumi\n"
        "# state and which KMS key encrypts its secrets. No secrets here; commit it.\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def secrets_provider_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    match = _SECRETS_PROVIDER_LINE.search(path.read_text(encoding="utf-8"))
    return match["value"].strip("'\"") if match else None


def check_secrets_provider(path: Path, provider: str) -> str | None:
    """The stack file's current provider; refuses one that differs from `provider`.

    Switching a stack that already encrypts with another provider (or a passphrase) would leave
    its `encryptedkey` undecryptable: that needs `pulumi stack change-secrets-provider`.
    """
    text = path.read_text(encoding="utf-8")
    current = secrets_provider_of(path)
    if current is None and re.search(r"^encryptionsalt:", text, re.MULTILINE):
        current = "passphrase"
    if current not in (None, provider):
        raise UsageError(
            f"{path.name} already uses secrets provider {current}; to move it to {provider} run "
            f"`pulumi stack change-secrets-provider {provider}` (it re-encrypts the stack's secrets)"
        )
    return current


def set_secrets_provider(path: Path, provider: str) -> bool:
    """Put `secretsprovider:` at the top of the stack file, keeping its comments. True if it changed."""
    if check_secrets_provider(path, provider) == provider:
        return False
    path.write_text(f"secretsprovider: {provider}\n{path.read_text(encoding='utf-8')}", encoding="utf-8")
    return True
