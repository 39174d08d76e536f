"""The one JSON style of every `--json` (documented in docs/json-output.md), written mechanically.

A result or event becomes a document from its dataclass fields: keys snake_case (mapping keys
that arrive in camelCase, such as Pulumi output names, are converted), counts as integers,
durations as floats named `_s`, timestamps ISO 8601 in UTC with a `Z`. Every line on stdout is
one JSON object with an `event` key; the verb's result is the last line, `"event": "result"`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
import threading
import typing
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from enum import Enum
from functools import cache
from pathlib import PurePath
from types import UnionType
from typing import IO, Any

import orjson

from cli_render.status_samples import run_with_status_samples
from factory_core.local_results import LocalStatus
from factory_core.progress_events import Note, ProgressEvent
from factory_core.verb_results import VerbResult

RESULT_EVENT = "result"
_CAMEL_CASE = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+$")
_HUMP = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake_key(key: str) -> str:
    """`grafanaUrl` -> `grafana_url`; keys that are not camelCase identifiers stay as they are."""
    if not _CAMEL_CASE.match(key):
        return key
    return _HUMP.sub(r"_\1", key).lower()


def _is_int(hint: Any) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
    return int in options and float not in options and bool not in options


@cache
def _count_fields(cls: type) -> dict[str, str]:
    """Fields that hold counts: "one" for `int` (or `int | None`), "each" for `dict[str, int]`."""
    hints = typing.get_type_hints(cls)
    kinds: dict[str, str] = {}
    for item in dataclasses.fields(cls):
        hint = hints[item.name]
        if _is_int(hint):
            kinds[item.name] = "one"
        elif typing.get_origin(hint) is dict and _is_int(typing.get_args(hint)[1]):
            kinds[item.name] = "each"
    return kinds


def _count(where: str, value: Any) -> Any:
    # A whole float is a count that came through a float (Prometheus samples); anything else is a bug.
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError(f"{where} is a count, got {value!r}")
        return int(value)
    return value


def _field_value(value: Any, name: str, kind: str | None) -> Any:
    raw = getattr(value, name)
    where = f"{type(value).__name__}.{name}"
    if kind == "one":
        return _count(where, raw)
    if kind == "each" and raw is not None:
        return {key: _count(where, item) for key, item in raw.items()}
    return raw


def to_document(value: Any) -> Any:
    """A result, event or any value inside one as plain JSON types, following the style above."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        counts = _count_fields(type(value))
        return {
            item.name: to_document(_field_value(value, item.name, counts.get(item.name)))
            for item in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {snake_key(str(key)): to_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_document(item) for item in value]
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, Enum):
        return to_document(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"no JSON form for {type(value).__name__}")


def event_document(event: ProgressEvent) -> dict[str, Any]:
    return {"event": event.kind, **to_document(event)}


def result_document(result: VerbResult) -> dict[str, Any]:
    return {"event": RESULT_EVENT, **to_document(result)}


def dumps(document: Mapping[str, Any]) -> bytes:
    return orjson.dumps(document)


STATUS_EVERY_S = 10.0  # foreground `up --json`: one status event this often


class JsonSink:
    """`--json`: every event is one JSON line on stdout as it happens; nothing is ever asked."""

    def __init__(self, stream: Callable[[], IO[str]] | None = None) -> None:
        self._stream = stream or (lambda: sys.stdout)  # looked up per write: tests swap sys.stdout
        self._lock = threading.Lock()

    def emit(self, document: Mapping[str, Any]) -> None:
        line = dumps(document).decode() + "\n"
        with self._lock:
            stream = self._stream()
            stream.write(line)
            stream.flush()

    def step(self, message: str, *, warning: bool = False) -> None:
        self.event(Note(message, "warning" if warning else "info"))

    def event(self, event: ProgressEvent) -> None:
        self.emit(event_document(event))

    def result(self, result: VerbResult) -> None:
        self.emit(result_document(result))

    def operation(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def watch(self, run: Callable[[], None], sample: Callable[[], LocalStatus]) -> None:
        run_with_status_samples(run, sample, self.event, every_s=STATUS_EVERY_S, thread_name="status-events")

    def can_ask(self) -> bool:
        return False

    def confirm(self, question: str) -> bool:
        return False
