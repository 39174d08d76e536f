"""`logs` for the local stack: the tail of each service's log file, and following them as they grow."""

from __future__ import annotations

import os
import time
from pathlib import Path

from factory_core.errors import UsageError
from factory_core.local_results import LogsResult
from factory_core.progress_events import LogLine, LogSources
from factory_core.verbs import LogsRequest, ProgressSink
from local_stack.paths import (
    ALERTMANAGER,
    BROKER,
    GRAFANA,
    PROMETHEUS,
    RULE_RUNNER,
    SUPERVISOR,
    StatePaths,
    simulator_index,
)
from local_stack.status_document import STACK

SERVICE_ORDER = (SUPERVISOR, BROKER, RULE_RUNNER, PROMETHEUS, ALERTMANAGER, GRAFANA)
FOLLOW_POLL_S = 0.25


def log_services(paths: StatePaths) -> list[str]:
    """Services with a log file, in start order (simulators by index)."""
    found = [path.stem for path in paths.logs_dir.glob("*.log")] if paths.logs_dir.is_dir() else []

    def order(name: str) -> tuple[int, int, str]:
        index = simulator_index(name)
        if index is not None:
            return (len(SERVICE_ORDER), index, name)
        return (SERVICE_ORDER.index(name) if name in SERVICE_ORDER else len(SERVICE_ORDER) + 1, 0, name)

    return sorted(found, key=order)


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        # Read back far enough for `lines` lines of ordinary length, not the whole file.
        handle.seek(max(0, size - max(lines, 1) * 400 - 4096))
        text = handle.read().decode(errors="replace")
    return (text.splitlines()[-lines:] if lines > 0 else []), size


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines written since `offset`, and the offset after them."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [], offset
    if size < offset:  # truncated or replaced
        offset = 0
    if size == offset:
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    complete, newline, _rest = chunk.rpartition(b"\n")
    if not newline:
        return [], offset
    return complete.decode(errors="replace").split("\n"), offset + len(complete) + 1


def logs(paths: StatePaths, request: LogsRequest, sink: ProgressSink) -> LogsResult:
    known = log_services(paths)
    if not known:
        raise UsageError(
            f"no logs in {paths.logs_dir} yet; start the stack with `python cli.py up --stack local`"
        )
    if request.service is not None and request.service not in known:
        raise UsageError(f"no service {request.service!r}; services with logs: {', '.join(known)}")
    chosen = [request.service] if request.service else known
    sink.event(LogSources(tuple(chosen), request.follow))
    offsets: dict[str, int] = {}
    count = 0
    for name in chosen:
        tail, offsets[name] = _tail(paths.log(name), request.lines)
        for line in tail:
            sink.event(LogLine(name, line))
        count += len(tail)
    if request.follow:
        count += _follow(paths, chosen, offsets, sink, every_service=request.service is None)
    return LogsResult(stack=STACK, services=tuple(chosen), lines=count, followed=request.follow)


def _follow(
    paths: StatePaths, chosen: list[str], offsets: dict[str, int], sink: ProgressSink, *, every_service: bool
) -> int:
    """Print new lines as they are written until Ctrl-C; picks up simulators added by `scale`."""
    count = 0
    try:
        while True:
            for name in chosen:
                lines, offsets[name] = _new_lines(paths.log(name), offsets[name])
                for line in lines:
                    sink.event(LogLine(name, line))
                count += len(lines)
            if every_service:
                added = [name for name in log_services(paths) if name not in offsets]
                if added:
                    chosen.extend(added)
                    offsets.update(dict.fromkeys(added, 0))
                    sink.event(LogSources(tuple(chosen), True))
            time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return count
