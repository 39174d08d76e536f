"""Child processes of the local stack: start in their own session, die with the supervisor, stop in order.

Each child gets its own session (so a Ctrl-C in the terminal reaches only the supervisor, which then
stops the children in the right order) and a parent-death signal (so a supervisor that is killed
outright never leaves orphans behind).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from factory_core.errors import UsageError
from local_stack.readiness import wait_until

_PR_SET_PDEATHSIG = 1
# Resolved once here: the pre-exec hook runs between fork and exec and must do as little as possible.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl

INSTALL_HINTS = {
    "mosquitto": "apt-get install mosquitto mosquitto-clients",
    "prometheus": "apt-get install prometheus",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
}


def _die_with_parent() -> None:
    # SIGTERM, not SIGKILL: a broker still saves its sessions, a simulator still drains.
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def require_binary(name: str) -> str:
    """Full path of a program the stack needs, or one line saying how to install it."""
    found = shutil.which(name)
    path_dirs = os.environ.get("PATH", "").split(os.pathsep)
    if found is None and "/usr/bin" in path_dirs:
        # Debian puts mosquitto in /usr/sbin, which a normal user's PATH lacks. A PATH without the
        # system folders at all is taken literally, so a binary can still be hidden on purpose.
        found = shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        hint = INSTALL_HINTS.get(name, f"install {name}")
        raise UsageError(f"{name} was not found on PATH; the local stack needs it: {hint}")
    return found


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def pid_alive(pid: int) -> bool:
    try:
        # A zombie still answers kill(0); it is gone for every purpose here.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    except ValueError:  # not a valid pid
        return False


def process_command_line(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except (psutil.Error, ValueError):
        return []


def wait_gone(pids: Sequence[int], timeout_s: float) -> bool:
    return wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout_s)


class ManagedProcess:
    """One service process: its command, log file, and lifecycle; output goes to its own log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_timeout_s = stop_timeout_s
        self.started_at: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def start(self, preexec: Callable[[], None] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=preexec or _die_with_parent,
            )
        self.started_at = time.time()
        self._terminated = False

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def signal(self, signum: int) -> None:
        if self.running() and self._process is not None:
            self._process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM once: a second one could land after the program restored the default handler
        at the end of its drain, and kill it before it wrote its checkpoint."""
        if not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group (a service may have children of its own)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM, wait for a clean exit, then SIGKILL what is left. Returns the exit code."""
        if self._process is None:
            return None
        self.terminate()
        code = self.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
        if code is None:
            self.kill()
            self._append_log(
                f"{self.name} did not stop within {timeout_s or self.stop_timeout_s:g} s; killed"
            )
        return self._process.returncode

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [line for line in text.strip().splitlines() if not line.startswith("--- ")][-lines:]
        return " | ".join(line.strip() for line in tail)

    def _append_log(self, message: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
