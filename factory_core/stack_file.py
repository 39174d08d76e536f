"""The one reader and writer of `Pulumi.<stack>.yaml`: where stack files are, what they hold, editing them.

Reading is safe against hostile bytes: binary data, UTF-16, nesting thousands deep, aliases that
expand to billions of nodes, duplicate keys, keys that are not text, megabytes of anything. The
result is plain Python data (dict, list, str, int, float, bool, None) or a one-line `UsageError`
naming the file, the line and the fix. Edits go through ruamel.yaml's round-trip mode, so the user's
comments, key order and quoting survive; every write is parsed again and compared with what was
meant before it atomically replaces the file.

Every `iotfactory:*` config key is spelled here, once.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory_core.errors import UsageError, describe_parse_error, shown

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

# ruamel.yaml is imported where it is used (~0.1 s): the key names below are needed by code, such as
# the Pulumi program, that never reads a file.

NAMESPACE = "iotfactory"
LOCAL_STACK = "local"  # not a Pulumi stack: `Pulumi.local.yaml` configures the local pipeline

# --- config keys -------------------------------------------------------------------------------
REGION_KEY = "aws:region"
FLEET_KEY = "iotfactory:fleet"  # factory_core.fleet.FleetSettings, on every stack
SIMULATOR_COUNT_KEY = "iotfactory:simulatorCount"
LOCAL_KEY = "iotfactory:local"  # the local stack's ports, archive, broker (local_stack.stack_config)
CERT_GENERATIONS_KEY = "iotfactory:certGenerations"  # factory_core.cert_rotation
ROTATION_KEY = "iotfactory:rotation"  # progress record of a certificate rotation
# Read by the CLI only; the program accepts and ignores them.
MIN_SIMULATORS_KEY = "iotfactory:minSimulators"
MAX_SIMULATORS_KEY = "iotfactory:maxSimulators"
PUBLISH_QUOTA_KEY = "iotfactory:iotPublishQuotaPerSecond"
CONFIRM_KEY = "iotfactory:confirmUpdates"
CLI_ONLY_KEYS = (MIN_SIMULATORS_KEY, MAX_SIMULATORS_KEY, PUBLISH_QUOTA_KEY, CONFIRM_KEY, ROTATION_KEY)
# Read by the Pulumi program (infra.settings.StackSettings), with the two above.
OWNER_KEY = "iotfactory:owner"
PRODUCTION_KEY = "iotfactory:production"
ARCHIVE_MODE_KEY = "iotfactory:archiveMode"
ALLOWED_CIDRS_KEY = "iotfactory:allowedCidrs"
CLIENT_ID_PREFIX_KEY = "iotfactory:clientIdPrefix"
NETWORK_KEY = "iotfactory:network"
CERTIFICATE_ARN_KEY = "iotfactory:certificateArn"
DOMAIN_NAME_KEY = "iotfactory:domainName"
LOG_RETENTION_DAYS_KEY = "iotfactory:logRetentionDays"
ARCHIVE_LIFECYCLE_KEY = "iotfactory:archiveLifecycle"
FIREHOSE_KEY = "iotfactory:firehose"
SIMULATOR_TASK_KEY = "iotfactory:simulatorTask"
MONITORING_TASK_KEY = "iotfactory:monitoringTask"
SCRAPE_INTERVAL_KEY = "iotfactory:scrapeIntervalS"
IMAGES_KEY = "iotfactory:images"
SIMULATOR_IMAGE_KEY = "iotfactory:simulatorImage"
SMTP_KEY = "iotfactory:smtp"
ALERTING_KEY = "iotfactory:alerting"  # Alertmanager's webhook and SNS subscriptions (cloud)
CONTAINER_INSIGHTS_KEY = "iotfactory:containerInsights"
ACCOUNT_ID_KEY = "iotfactory:accountId"
# Production defaults (issue 12): prod serves HTTPS unless this says otherwise, and pulls its
# third-party images through an ECR pull-through cache.
ALLOW_INSECURE_HTTP_KEY = "iotfactory:allowInsecureHttp"
IMAGE_CACHE_KEY = "iotfactory:imageCache"
# Production hardening (issue 14): the ALB's web ACL, monitoring history on EFS, secret rotation.
WAF_KEY = "iotfactory:waf"
MONITORING_HISTORY_KEY = "iotfactory:monitoringHistory"
SECRET_ROTATION_KEY = "iotfactory:secretRotation"

# Top-level fields of a stack file besides `config:` (Pulumi's own).
CONFIG_FIELD = "config"
SECRETS_PROVIDER_FIELD = "secretsprovider"
ENCRYPTION_SALT_FIELD = "encryptionsalt"  # present when a passphrase encrypts the stack's secrets

# Stack files are a few kilobytes; this bounds what a wrong path (a log, an image) costs to refuse.
MAX_FILE_BYTES = 1 << 20
# The deepest schema (fleet.faults.scheduled[i].field under config) is 6 levels.
MAX_NESTING = 64


# --- where stack files are ---------------------------------------------------------------------


def stack_path(project_dir: Path, stack: str) -> Path:
    return project_dir / f"Pulumi.{stack}.yaml"


def known_stacks(project_dir: Path) -> list[str]:
    """Stacks that exist as files (`Pulumi.<name>.yaml`), plus the local stack."""
    names = {path.name[len("Pulumi.") : -len(".yaml")] for path in project_dir.glob("Pulumi.*.yaml")}
    return sorted(names | {LOCAL_STACK})


def require_stack_file(project_dir: Path, stack: str) -> Path:
    path = stack_path(project_dir, stack)
    if not path.is_file():
        cloud = [name for name in known_stacks(project_dir) if name != LOCAL_STACK]
        known = ", ".join(cloud) or "none"
        raise UsageError(
            f"unknown stack '{stack}': no {path.name} in {project_dir}; stacks that exist: {known}, local"
        )
    return path


# --- reading -----------------------------------------------------------------------------------


@functools.cache
def _no_alias_composer() -> type:
    from ruamel.yaml.composer import Composer, ComposerError
    from ruamel.yaml.events import AliasEvent

    class NoAliasComposer(Composer):
        """Refuses anchors and aliases: a few aliased lines can stand for billions of nodes."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.parser.peek_event()
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ComposerError(
                    None, None, "anchors and aliases (&name, *name) are not supported; write the value out",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

    return NoAliasComposer


def _yaml(text: str = "") -> YAML:
    """A round-trip YAML that writes with the indentation `text` already uses."""
    from ruamel.yaml import YAML
    from ruamel.yaml.util import load_yaml_guess_indent

    yaml = YAML(typ="rt")
    yaml.Composer = _no_alias_composer()
    yaml.max_depth = MAX_NESTING
    yaml.allow_duplicate_keys = False
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long line the user wrote on one line
    mapping = min((len(m[1]) for m in re.finditer(r"^( +)[^ \-#\n]", text, re.MULTILINE)), default=2)
    sequence, offset = mapping + 2, 2
    if re.search(r"^ *- ", text, re.MULTILINE):
        _, guessed, block_offset = load_yaml_guess_indent(text)
        sequence, offset = guessed, block_offset or 0
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def read_text(path: Path, what: str, fix: str) -> str:
    """The file's text, refusing whatever is not a small UTF-8 text file, with one line saying why."""
    try:
        if not path.exists():
            raise UsageError(f"{what} {path} does not exist; {fix}")
        if path.is_dir():
            raise UsageError(f"{what} {path} is a folder, not a file; {fix}")
        if not path.is_file():
            raise UsageError(f"{what} {path} is not a regular file; {fix}")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise UsageError(f"cannot read {what} {path}: {error.strerror or error}; {fix}") from None
    if len(data) > MAX_FILE_BYTES:
        limit = MAX_FILE_BYTES // 1024
        raise UsageError(f"{what} {path} is larger than {limit} KiB: not a config file; {fix}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UsageError(f"{what} {path} is UTF-16 text; save it as UTF-8 and {fix}")
    if b"\x00" in data:
        raise UsageError(f"{what} {path} holds NUL bytes (binary data, or UTF-16/32 text); {fix}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(describe_parse_error(f"{what} {path}", error, fix)) from None


def _parse(text: str, source: str, fix: str) -> Any:
    try:
        return _yaml(text).load(text)
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        problem = str(error).split(":")[0]
        raise UsageError(f"cannot parse {source}: a value cannot be read ({problem}); {fix}") from None
    except Exception as error:  # ruamel raises assorted types on malformed bytes; each means unreadable
        raise UsageError(describe_parse_error(source, error, fix)) from None


def _plain(node: Any, source: str, fix: str) -> Any:
    """ruamel's round-trip tree as plain data; refuses keys that are not text and YAML-only types."""
    from ruamel.yaml.comments import TaggedScalar
    from ruamel.yaml.scalarbool import ScalarBoolean

    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, TaggedScalar) and tag == "tag:yaml.org,2002:str":
        return str(node.value)  # `!!str 12`: the one explicit tag that is plain config
    if tag is not None or isinstance(node, TaggedScalar):
        raise UsageError(f"{source}: tag {shown(tag)} is not supported in config; write a plain value; {fix}")
    if isinstance(node, Mapping):
        plain: dict[str, Any] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                line = node.lc.key(key)[0] + 1 if hasattr(node, "lc") else "?"
                raise UsageError(
                    f"{source} line {line}: key {shown(key)} is not text; quote it or rename it; {fix}"
                )
            plain[str(key)] = _plain(value, source, fix)
        return plain
    if isinstance(node, list):
        return [_plain(item, source, fix) for item in node]
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, ScalarBoolean):
        return bool(node)
    # ruamel's ScalarInt, ScalarFloat and the quoted-string types become the plain built-ins.
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, dt.date):
        return node.isoformat()  # Pulumi reads timestamps as text
    kind = type(node).__name__
    raise UsageError(f"{source}: a YAML {kind} value is not supported in config; write a plain value; {fix}")


def parse_yaml(text: str, source: str, fix: str) -> Any:
    """YAML text as plain data (see the module's doc for what is refused)."""
    return _plain(_parse(text, source, fix), source, fix)


def load_yaml_file(path: Path, *, what: str, fix: str) -> Any:
    """A YAML file as plain data: a stack file, or another small config file (the backends file)."""
    return parse_yaml(read_text(path, what, fix), f"{what} {path}", fix)


def read_document(path: Path, *, fix: str | None = None) -> dict[str, Any]:
    """A stack file as plain data: `config:` plus Pulumi's own fields (`secretsprovider`, ...)."""
    fix = fix or f"fix {path}"
    document = load_yaml_file(path, what="stack file", fix=fix)
    if document is None:
        return {}
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise UsageError(f"{path}: expected a mapping with a 'config:' section, not a {kind}; {fix}")
    return document


def read_config(path: Path, *, fix: str | None = None) -> dict[str, Any]:
    """The `config:` mapping of a stack file, plain values (secure values stay `{"secure": ...}`)."""
    config = read_document(path, fix=fix).get(CONFIG_FIELD)
    if config is not None and not isinstance(config, dict):
        raise UsageError(f"{path}: 'config:' must be a mapping of key: value; {fix or f'fix {path}'}")
    return config or {}


def refuse_unknown_keys(config: Mapping[str, Any], known: Iterable[str], user: str, fix: str) -> None:
    """Every `iotfactory:*` key must be one `user` reads: a misspelt key is refused, not ignored."""
    known = sorted(known)
    for key in config:
        if key.startswith(f"{NAMESPACE}:") and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(
                f"config {key}: not used by {user} ({key} is not a known setting there{hint}); "
                f"remove it or fix its spelling; {fix}"
            )


def whole_number(raw: Any, key: str, fix: str) -> int:
    """A count from config or the environment: ASCII digits only (str.isdigit() takes '²')."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]{1,18}(\.0*)?", raw.strip()):
        return int(raw.strip().split(".")[0])
    raise UsageError(f"config {key}: must be a whole number (got {shown(raw)}); {fix}")


# --- the program's view: what Pulumi hands a program --------------------------------------------


def is_secure(value: Any) -> bool:
    """A value Pulumi encrypted (`{secure: v1:...}`): only Pulumi can read it."""
    return isinstance(value, dict) and set(value) == {"secure"}


def program_view(config: Mapping[str, Any], *, secret_placeholder: str | None = None) -> dict[str, str]:
    """Stack-file config as Pulumi hands it to a program: strings, structured values as JSON text.

    Encrypted values are left out (the program reads them through Pulumi), or stand in as
    `secret_placeholder` where no Pulumi can decrypt them (offline runs).
    """
    view: dict[str, str] = {}
    for key, value in config.items():
        if is_secure(value):
            if secret_placeholder is not None:
                view[key] = secret_placeholder
        elif isinstance(value, list | dict):
            view[key] = json.dumps(value)
        elif isinstance(value, bool):
            view[key] = "true" if value else "false"
        else:
            view[key] = "" if value is None else str(value)
    return view


def qualified(key: str) -> str:
    """`simulatorCount` -> `iotfactory:simulatorCount`; keys with a namespace stay as they are."""
    return key if ":" in key else f"{NAMESPACE}:{key}"


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"duplicate key {shown(key)}; a key may appear once per object")
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, source: str, fix: str) -> Any:
    """Strict JSON (structured config values, FACTORY_CONFIG_JSON): no duplicate keys, no NaN."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, RecursionError) as error:
        raise UsageError(describe_parse_error(source, error, fix)) from None
    except ValueError as error:
        raise UsageError(f"cannot parse {source}: {error}; {fix}") from None


def decode_value(raw: Any) -> Any:
    """A config value as Python: Automation API strings holding JSON become lists/dicts (lenient)."""
    if isinstance(raw, str) and raw.strip()[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw
    return raw


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


# --- writing -----------------------------------------------------------------------------------


def render(data: Mapping[str, Any], header: str = "") -> str:
    """A new YAML document (a generated file, not a user's): block style, keys in the given order."""
    out = io.StringIO()
    _yaml().dump(_commented(data), out)
    return header + out.getvalue()


def _commented(value: Any) -> Any:
    from ruamel.yaml.comments import CommentedMap

    if isinstance(value, Mapping):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _commented(item)
        return mapping
    if isinstance(value, list | tuple):
        return [_commented(item) for item in value]
    return value


def write_text_atomically(path: Path, text: str, *, fix: str) -> None:
    """Replace `path` with `text` in one rename, keeping its mode; a reader never sees half a file."""
    expected = parse_yaml(text, str(path), fix)  # never write what this module could not read back
    if path.exists() and read_text(path, "file", fix) == text:
        return
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        if parse_yaml(Path(temporary).read_text(encoding="utf-8"), str(path), fix) != expected:
            raise UsageError(f"{path}: the new text did not read back the same; nothing was changed; {fix}")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _edit(path: Path, change: Callable[[CommentedMap], None], what: str) -> bool:
    """Apply `change` to the stack file's round-trip tree; write it if it changed. True if it did."""
    from ruamel.yaml.comments import CommentedMap

    fix = f"set {what} in {path} by hand"
    text = read_text(path, "stack file", fix)
    tree = _parse(text, f"stack file {path}", fix)
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, CommentedMap):
        raise UsageError(f"{path}: expected a mapping with a 'config:' section; {fix}")
    change(tree)
    meant = _plain(tree, str(path), fix)
    out = io.StringIO()
    _yaml(text).dump(tree, out)
    updated = out.getvalue()
    if updated == text:
        return False
    if parse_yaml(updated, str(path), fix) != meant:
        raise UsageError(f"{path}: could not record {what} without changing other values; {fix}")
    write_text_atomically(path, updated, fix=fix)
    return True


def set_config_values(path: Path, values: Mapping[str, Any], *, remove: Iterable[str] = ()) -> bool:
    """Set (or remove) `config:` keys, keeping every other line, comment and quote. True if it changed."""
    removed = tuple(remove)

    from ruamel.yaml.comments import CommentedMap

    def change(tree: CommentedMap) -> None:
        config = tree.get(CONFIG_FIELD)
        if config is None:
            config = tree[CONFIG_FIELD] = CommentedMap()
        if not isinstance(config, CommentedMap):
            raise UsageError(f"{path}: 'config:' must be a mapping of key: value; fix it first")
        for key, value in values.items():
            if key in config:
                if _plain(config[key], str(path), "") != value:
                    config[key] = _commented(value)
            else:
                config.insert(0, key, _commented(value))  # next to the keys people read first
        for key in removed:
            config.pop(key, None)

    return _edit(path, change, ", ".join([*values, *removed]))


def encryption_of(path: Path) -> str | None:
    """How the stack's secrets are encrypted: its `secretsprovider`, "passphrase", or None (not yet)."""
    document = read_document(path)
    provider = document.get(SECRETS_PROVIDER_FIELD)
    if provider:
        return str(provider)
    return "passphrase" if ENCRYPTION_SALT_FIELD in document else None


def check_secrets_provider(path: Path, provider: str) -> str | None:
    """The stack file's current provider; refuses one that differs from `provider`.

    Switching a stack that already encrypts with another provider (or a passphrase) would leave
    its `encryptedkey` undecryptable: that needs `pulumi stack change-secrets-provider`.
    """
    current = encryption_of(path)
    if current not in (None, provider):
        raise UsageError(
            f"{path.name} already uses secrets provider {current}; to move it to {provider} run "
            f"`pulumi stack change-secrets-provider {provider}` (it re-encrypts the stack's secrets)"
        )
    return current


def set_secrets_provider(path: Path, provider: str) -> bool:
    """Put `secretsprovider:` first in the stack file, keeping its comments. True if it changed."""
    if check_secrets_provider(path, provider) == provider:
        return False

    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    def change(tree: CommentedMap) -> None:
        header = tree.ca.comment[1] if tree.ca.comment and len(tree.ca.comment) > 1 else None
        tree.insert(0, SECRETS_PROVIDER_FIELD, provider)
        if header:
            # The file's opening comment stays under the new first line instead of above it.
            tree.ca.comment[1] = None
            text = "".join(token.value for token in header)
            comment = CommentToken("\n" + text, CommentMark(0), None)
            tree.ca.items[SECRETS_PROVIDER_FIELD] = [None, None, comment, None]

    return _edit(path, change, SECRETS_PROVIDER_FIELD)


def config_int(values: Mapping[str, Any], key: str, default: int, source: str) -> int:
    """`values[key]` as a whole number (absent or empty: `default`); a bad value names `source` to edit."""
    raw = values.get(qualified(key))
    if raw is None or raw == "":
        return default
    return whole_number(raw, qualified(key), f"edit {source}")
