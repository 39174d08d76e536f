"""Errors every part of the product raises, their exit codes, and the one way to word them as one line.

Config problems come from two places: a parser (YAML, JSON, bytes that are not UTF-8) and a schema
(pydantic). `describe_parse_error` and `describe_validation_error` turn each into the one-line form

    config <key>.<path>: <problem> (got <value>); <fix>

so every reader of config (stack files, the simulator's layers, the Pulumi program) says the same
thing the same way. Nothing here imports a YAML library: parser errors are read by their attributes.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

# A repr longer than this is cut: a hostile value must not turn one line into a megabyte.
_MAX_SHOWN = 80
# `scheme://user:password@host` anywhere in a value: the password never reaches a message.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")
_DUPLICATE_KEY = re.compile(r'^found duplicate key "(?P<key>.*?)" with value', re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
# The pydantic error type (PydanticCustomError) of a value that may carry a credential: never shown.
SECRET_VALUE_ERROR = "secret_value"


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped, so it prints as one line."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class _OneLineError(Exception):
    def __str__(self) -> str:
        return one_line(super().__str__())


class UsageError(_OneLineError):
    """Bad input: config, flags, certificates, files. Printed as one line; exit code 2.

    The message names what is wrong and how to fix it, e.g.
    "config iotfactory:fleet.qos: Input should be 0 or 1 (got 2); edit Pulumi.local.yaml".
    """


class OperationFailed(_OneLineError):
    """The input was fine but the work failed (a broker died, an update failed). Exit code 1."""


class VerbUnavailable(UsageError):
    """A verb this kind of stack does not have. The one line says so and names what to run instead."""


class ExitCode(IntEnum):
    """The process exit codes of `cli.py`: the one table; cli.py is the only place that applies it."""

    OK = 0
    FAILED = 1  # OperationFailed, or a result that reports failure (verify found loss)
    USAGE = 2  # UsageError (bad input, config, an unavailable verb, confirmation missing)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM (128 + SIGINT, as shells report it)


# Most specific first: VerbUnavailable is a UsageError.
_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (OperationFailed, ExitCode.FAILED),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
)


def exit_code_for(error: BaseException) -> ExitCode | None:
    """The exit code for an error a verb raised, or None for an error that is a bug (let it show)."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return None


def exit_code_for_result(failed: bool, *, usage: bool = False) -> ExitCode:
    """A verb that returned a result: 0, or 1 when the result itself reports failure (2 when that
    failure is a gap the user must fill first, as `doctor` reports)."""
    if not failed:
        return ExitCode.OK
    return ExitCode.USAGE if usage else ExitCode.FAILED


def redact(text: str) -> str:
    """`text` without the user:password part of any URL in it."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def shown(value: Any) -> str:
    """A value as a message shows it: repr, credentials removed, one line, at most ~80 characters."""
    text = one_line(redact(repr(value)))
    return text if len(text) <= _MAX_SHOWN else f"{text[: _MAX_SHOWN - 3]}..."


def config_key(prefix: str, location: Iterable[int | str]) -> str:
    """`iotfactory:fleet` + ('faults', 'scheduled', 0) -> `iotfactory:fleet.faults.scheduled[0]`."""
    key = prefix
    for part in location:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key


def _leaf(location: Sequence[int | str]) -> str:
    names = [str(part) for part in location if not isinstance(part, int)]
    return names[-1] if names else ""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in get_args(annotation) for model in _models_in(argument)]


def _names_at(model: type[BaseModel] | None, location: Sequence[int | str]) -> list[str]:
    """The keys `model` allows at `location` (aliases first): what "did you mean" chooses from."""
    current = model
    for part in location:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {field.alias or name: field for name, field in current.model_fields.items()}
        fields |= dict(current.model_fields)
        field = fields.get(str(part))
        found = _models_in(field.annotation) if field is not None else []
        current = found[0] if found else None
    if current is None:
        return []
    return [field.alias or name for name, field in current.model_fields.items()]


def _describe_one(error: Mapping[str, Any], prefix: str, model: type[BaseModel] | None) -> str:
    location = [part for part in error["loc"] if part != "[key]"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        # A check across fields names its field first ("domainName: required when ..."): point there.
        named = re.match(r"^([A-Za-z_][\w:]*): (.*)$", message)
        if named:
            location, message = [named[1]], named[2]
    key = config_key(prefix, location) or "config"
    if error["type"] == "missing":
        return f"config {key} is required"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # models; dataclasses
        close = difflib.get_close_matches(_leaf(location), _names_at(model, location[:-1]), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"config {key}: unknown key (unknown setting '{_leaf(location)}'{hint})"
    got = error.get("input")
    if error["type"] == SECRET_VALUE_ERROR or isinstance(got, dict | list) or got is None:
        return f"config {key}: {message}"
    value = shown(got)
    return f"config {key}: {message}" + ("" if value in message else f" (got {value})")


def describe_validation_error(
    error: ValidationError,
    prefix: str,
    fix: str,
    *,
    model: type[BaseModel] | None = None,
    most: int = 3,
) -> str:
    """One line for a pydantic error: the first problem of up to `most` keys, then how to fix it.

    `prefix` is the config key the validated value sits under (`iotfactory:local`; "" when the keys
    are already whole). `model` is the schema that was validated, for "did you mean".
    """
    first_per_key: dict[Any, Mapping[str, Any]] = {}
    for item in error.errors(include_url=False):
        first_per_key.setdefault(tuple(item["loc"][:1]), item)
    problems = [_describe_one(item, prefix, model) for item in first_per_key.values()]
    shown_problems = problems[:most]
    more = error.error_count() - len(shown_problems)
    suffix = f" (+{more} more)" if more > 0 else ""
    return "; ".join(shown_problems) + f"{suffix}; {fix}"


def describe_parse_error(source: str, error: BaseException, fix: str) -> str:
    """One line for text that could not be parsed: bad bytes, bad YAML, bad JSON, too deep.

    Only the parser's problem and line are used, never its snippet of the text: the snippet could
    hold a secret written on that line.
    """
    where = ""
    if isinstance(error, UnicodeDecodeError):
        byte = error.object[error.start : error.start + 1].hex()
        what = f"not UTF-8 text (byte 0x{byte} at offset {error.start}); save it as UTF-8"
    elif isinstance(error, RecursionError) or type(error).__name__ == "MaxDepthExceededError":
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = "nested too deeply (config needs a handful of levels)"
    elif isinstance(error, json.JSONDecodeError):
        what = f"not valid JSON ({one_line(error.msg)} at char {error.pos})"
    else:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None)
        if problem is None and type(error).__name__ == "ReaderError":
            # ruamel's ReaderError: a character YAML does not allow (NUL, other control characters).
            character = getattr(error, "character", None)
            code = f"#x{character:04x}" if isinstance(character, int) else shown(character)
            problem = f"character {code} at offset {getattr(error, 'position', '?')} is not allowed"
        where = f" line {mark.line + 1}" if mark is not None else ""
        duplicate = _DUPLICATE_KEY.match(str(problem or ""))
        if duplicate:
            # The parser's wording quotes both values; either could be a secret.
            what = f"duplicate key {shown(duplicate['key'])}; a key may appear once per mapping, delete one"
        else:
            what = f"not valid YAML ({one_line(str(problem or error or 'unknown problem'))})"
    return f"cannot parse {source}{where}: {what}; {fix}"
