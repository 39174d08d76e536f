"""Writing secrets and private state: created 0600 from the first byte, replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` so that no other user can read it, not even for an instant.

    The file is written beside its target, flushed to disk and renamed over it, so a crash leaves
    either the old content or the new one, never half a key or half a checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    # O_CREAT's mode does not apply to a temp file left over from an earlier crash.
    os.chmod(tmp, 0o600)
    tmp.replace(path)
