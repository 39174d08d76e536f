"""The supervisor's lock and state file: who runs a state folder, and what it last said about it.

One supervisor per state folder: it holds an exclusive `flock` on `supervisor.lock` for its whole
life, and the kernel releases it when the process dies, however it dies. `state.json` is the last
`StateDocument` it wrote (replaced atomically), read by the verbs when no supervisor answers.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from typing import IO

from pydantic import ValidationError

from factory_core.errors import UsageError
from local_stack.paths import StatePaths
from local_stack.status_document import StateDocument

LOCK_FILE = "supervisor.lock"
WRITE_INTERVAL_S = 1.0


class SupervisorLock:
    """The exclusive lock that proves this process supervises the state folder."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> None:
        self.paths.create()
        handle = (self.paths.root / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(already_running_message(self.paths)) from None
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def is_running(paths: StatePaths) -> bool:
    """True while a supervisor holds the state folder's lock (it is released when it dies)."""
    lock_path = paths.root / LOCK_FILE
    if not lock_path.exists():
        return False
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def read_state(paths: StatePaths) -> StateDocument | None:
    """The last state document, or None when there is none (or it cannot be read: one written by an
    older version counts as none, the next start writes a new one)."""
    try:
        return StateDocument.model_validate_json(paths.state_file.read_bytes())
    except (OSError, ValidationError):
        return None


def already_running_message(paths: StatePaths) -> str:
    state = read_state(paths)
    pid = state.supervisor_pid if state else "?"
    return (
        f"the local stack is already running (supervisor pid {pid}, state in {paths.root}); "
        "see `python cli.py status --stack local`, or stop it (keeping its archive) with Ctrl-C in "
        "its terminal or `python cli.py stop --stack local`"
    )


class StateWriter:
    """Writes the state file atomically, at most once a second unless forced (phase changes are)."""

    def __init__(self, paths: StatePaths, interval_s: float = WRITE_INTERVAL_S) -> None:
        self.paths = paths
        self.interval_s = interval_s
        self._written_at = float("-inf")

    def write(self, document: Callable[[], StateDocument], *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written_at < self.interval_s:
            return
        self._written_at = now
        temporary = self.paths.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(document().as_dict(), indent=2))
        temporary.replace(self.paths.state_file)
