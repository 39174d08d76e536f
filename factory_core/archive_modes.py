"""How telemetry reaches the archive: the archive modes, the topic rule's name, and Basic Ingest topics.

- `direct`: devices publish to `factory/simulator/...`; the rule writes one S3 object per message.
- `batched`: the same topics; the rule feeds Kinesis Data Firehose, which writes GZIP JSON lines.
- `basic-ingest`: devices publish to the rule's Basic Ingest topic, `$aws/rules/<rule>/factory/
  simulator/...`, which AWS IoT hands straight to that rule without the message broker (no
  messaging charge, no subscribers); the rule and Firehose are as in `batched`. The rule's SQL
  still reads `factory/simulator/#`: AWS strips the prefix before the rule sees the topic.

The Pulumi program (IoT policies, the rule), the simulator (`--topic-prefix`) and the local stack
(broker ACL, rule runner) read these names here. Pure: no I/O, no third-party imports.
"""

from __future__ import annotations

import re
from typing import Literal

from factory_core.fleet import TOPIC_ROOT

ArchiveMode = Literal["direct", "batched", "basic-ingest"]
ARCHIVE_MODES: tuple[ArchiveMode, ...] = ("direct", "batched", "basic-ingest")
BASIC_INGEST = "basic-ingest"

# AWS IoT's reserved prefix for Basic Ingest; MQTT `#`/`+` filters never match topics starting with
# `$` (MQTT 3.1.1 section 4.7.2), so a subscriber has to name it explicitly.
BASIC_INGEST_ROOT = "$aws/rules"
RULE_NAME_PATTERN = r"[A-Za-z0-9_]{1,128}"  # AWS IoT topic rule names
# A simulator's topic prefix: empty, or exactly one rule's Basic Ingest prefix.
TOPIC_PREFIX_PATTERN = rf"^(\$aws/rules/{RULE_NAME_PATTERN}/)?$"
_PREFIXED = re.compile(rf"^\$aws/rules/({RULE_NAME_PATTERN})/(.+)$")


def uses_firehose(mode: ArchiveMode) -> bool:
    """Whether the rule feeds Firehose (batched objects) rather than writing one object per message."""
    return mode != "direct"


def archive_rule_name(project: str, stack: str) -> str:
    """The archive topic rule of a stack: `<project>_<stack>_archive`, only [A-Za-z0-9_]."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{project}_{stack}_archive")


def basic_ingest_prefix(rule_name: str) -> str:
    """`$aws/rules/<rule>/`: prepended to a device's usual topic, it addresses that rule directly."""
    if not re.fullmatch(RULE_NAME_PATTERN, rule_name):
        raise ValueError(f"not a topic rule name: {rule_name!r} (letters, digits and _ only)")
    return f"{BASIC_INGEST_ROOT}/{rule_name}/"


def ingest_prefix(mode: ArchiveMode, rule_name: str) -> str:
    """What devices put before their topics in this archive mode ("" unless Basic Ingest)."""
    return basic_ingest_prefix(rule_name) if mode == BASIC_INGEST else ""


def archive_topic_filter(prefix: str) -> str:
    """What the archive subscribes to (locally; the cloud rule's SQL reads the same without prefix)."""
    return f"{prefix}{TOPIC_ROOT}/#"


def strip_basic_ingest(topic: str) -> tuple[str | None, str]:
    """(rule name, the topic the rule sees) of a Basic Ingest topic; (None, topic) for any other."""
    match = _PREFIXED.match(topic)
    if match is None:
        return None, topic
    return match.group(1), match.group(2)
