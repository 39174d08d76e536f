"""factory_core.stack_file and factory_core.errors: one reader and writer of stack files, one wording."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from factory_core import stack_file
from factory_core.errors import (
    OperationFailed,
    UsageError,
    describe_validation_error,
    one_line,
    redact,
    shown,
)
from factory_core.fleet import CLOUD_SIMULATORS, LOCAL_SIMULATORS, MAX_SITES, SITE_INDEXES, FleetSettings

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted(REPO.glob("Pulumi.*.yaml"))
PACKAGES = ("factory_core", "simulator", "infra", "observability", "local_stack", "automation")


def _copy(tmp_path: Path, source: Path) -> Path:
    target = tmp_path / source.name
    target.write_bytes(source.read_bytes())
    return target


@pytest.mark.parametrize("source", COMMITTED, ids=[path.name for path in COMMITTED])
def test_an_edit_changes_one_line_of_each_committed_stack_file(tmp_path: Path, source: Path) -> None:
    path = _copy(tmp_path, source)
    original = path.read_text()
    assert stack_file.set_config_values(path, {stack_file.SIMULATOR_COUNT_KEY: 7})
    updated = path.read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), updated.splitlines(), strict=True) if a != b]
    assert [b for _, b in changed] == ["  iotfactory:simulatorCount: 7"]
    assert stack_file.read_config(path)[stack_file.SIMULATOR_COUNT_KEY] == 7
    assert not stack_file.set_config_values(path, {stack_file.SIMULATOR_COUNT_KEY: 7})


def test_edits_keep_comments_quotes_and_order_and_write_structures_in_block_style(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(
        "# header\n"
        "config:\n"
        "  aws:region: 'eu-west-1'   # quoted on purpose\n"
        '  iotfactory:owner: "team"\n'
        "  iotfactory:rotation: {from: g1, to: g2, step: added}\n"
    )
    generations = [{"name": "g1", "status": "INACTIVE"}, {"name": "g2", "status": "ACTIVE"}]
    stack_file.set_config_values(
        path, {stack_file.CERT_GENERATIONS_KEY: generations}, remove=[stack_file.ROTATION_KEY]
    )
    text = path.read_text()
    assert text.startswith("# header\nconfig:\n")
    assert "  aws:region: 'eu-west-1'   # quoted on purpose\n" in text
    assert '  iotfactory:owner: "team"\n' in text
    assert "iotfactory:rotation" not in text
    assert "    - name: g1\n      status: INACTIVE\n" in text
    assert stack_file.read_config(path)[stack_file.CERT_GENERATIONS_KEY] == generations


def test_the_secrets_provider_goes_first_and_the_header_comment_stays(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text("# who gets paged: platform\n\nconfig:\n  aws:region: eu-west-1\n")
    assert stack_file.set_secrets_provider(path, "awskms://alias/x")
    text = path.read_text()
    assert text.startswith("secretsprovider: awskms://alias/x\n# who gets paged: platform\n")
    assert stack_file.encryption_of(path) == "awskms://alias/x"
    assert not stack_file.set_secrets_provider(path, "awskms://alias/x")
    with pytest.raises(UsageError, match="change-secrets-provider"):
        stack_file.set_secrets_provider(path, "awskms://alias/other")


def test_a_broken_file_is_never_edited(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.local.yaml"
    broken = b"config:\n  iotfactory:simulatorCount: 2\n  iotfactory:simulatorCount: 3\n"
    path.write_bytes(broken)
    with pytest.raises(UsageError, match=r"line 3: duplicate key 'iotfactory:simulatorCount'"):
        stack_file.set_config_values(path, {stack_file.SIMULATOR_COUNT_KEY: 4})
    path.write_bytes(b"config: [1, 2]\n")
    with pytest.raises(UsageError, match="must be a mapping"):
        stack_file.set_config_values(path, {stack_file.SIMULATOR_COUNT_KEY: 4})
    assert path.read_bytes() == b"config: [1, 2]\n"
    assert not list(tmp_path.glob(".Pulumi.local.yaml.*")), "no temporary file is left behind"


def test_writes_keep_the_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.local.yaml"
    path.write_text("config:\n  iotfactory:simulatorCount: 2\n")
    path.chmod(0o640)
    stack_file.set_config_values(path, {stack_file.SIMULATOR_COUNT_KEY: 3})
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &x 1\nb: *x\n", "anchors and aliases"),
        ("a: 2026-01-01\nb: !!str 12\nc: 'x'\n", None),
        ("a: !!binary aGVsbG8=\n", "bytes value is not supported"),
        ("a: !custom {x: 1}\n", "tag '!custom'"),
        ("? [a]\n: 1\n", "is not text"),
    ],
)
def test_plain_data_only(text: str, expected: str | None) -> None:
    if expected is None:
        assert stack_file.parse_yaml(text, "f", "fix") == {"a": "2026-01-01", "b": "12", "c": "x"}
        return
    with pytest.raises(UsageError, match=re.escape(expected)):
        stack_file.parse_yaml(text, "f", "fix")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(2, 2), ("2", 2), (" 12 ", 12), (3.0, 3), ("4.0", 4), ("²", None), ("\u0661\u0662", None), (True, None)],
)
def test_whole_numbers_are_ascii_digits(raw: object, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(UsageError, match="must be a whole number"):
            stack_file.whole_number(raw, "iotfactory:simulatorCount", "fix it")
    else:
        assert stack_file.whole_number(raw, "iotfactory:simulatorCount", "fix it") == expected


def test_strict_json_refuses_duplicates_nan_and_depth() -> None:
    assert stack_file.parse_json('{"a": [1, {"b": 2}]}', "X", "fix") == {"a": [1, {"b": 2}]}
    for text, fragment in [
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        ('{"a": NaN}', "NaN"),
        ("[" * 50_000, "nested too deeply"),
        ("{not json", "not valid JSON"),
    ]:
        with pytest.raises(UsageError, match=re.escape(fragment)):
            stack_file.parse_json(text, "X", "fix")


def test_program_view_is_what_pulumi_hands_a_program() -> None:
    config = {
        "aws:region": "eu-west-1",
        "iotfactory:production": True,
        "iotfactory:fleet": {"qos": 1},
        "iotfactory:smtp": {"secure": "v1:abc"},
        "iotfactory:domainName": None,
    }
    view = stack_file.program_view(config)
    assert view == {
        "aws:region": "eu-west-1",
        "iotfactory:production": "true",
        "iotfactory:fleet": json.dumps({"qos": 1}),
        "iotfactory:domainName": "",
    }
    offline = stack_file.program_view(config, secret_placeholder="placeholder")
    assert offline["iotfactory:smtp"] == "placeholder"


def test_unknown_keys_are_refused_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match="did you mean iotfactory:simulatorCount"):
        stack_file.refuse_unknown_keys(
            {"iotfactory:simulatorcount": 2, "other:key": 1}, [stack_file.SIMULATOR_COUNT_KEY], "x", "fix"
        )


class _Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int
    url: str = ""


def test_the_one_validation_wording() -> None:
    with pytest.raises(ValidationError) as caught:
        _Endpoint.model_validate({"port": "²", "urk": "x", "extra": 1})
    message = describe_validation_error(caught.value, "iotfactory:local", "edit it", model=_Endpoint, most=2)
    assert message.startswith("config iotfactory:local.port: Input should be a valid integer")
    assert "(got '²')" in message
    assert "config iotfactory:local.urk: unknown key (unknown setting 'urk'; did you mean 'url'?)" in message
    assert message.endswith("(+1 more); edit it")


def test_messages_are_one_line_short_and_without_credentials() -> None:
    assert one_line("a\nb\rc\x00") == "a\\nb\\rc\\x00"
    assert str(UsageError("two\nlines")) == "two\\nlines"
    assert str(OperationFailed("x\ny")) == "x\\ny"
    assert (
        redact("see http://user:p@ss@host:9000/x and s3://k:s@b")
        == "see http://***@host:9000/x and s3://***@b"
    )
    assert len(shown("x" * 10_000)) <= 80


def test_one_simulator_count_limit_per_kind_of_stack() -> None:
    assert list(SITE_INDEXES) == list(range(MAX_SITES)) and CLOUD_SIMULATORS.maximum == MAX_SITES
    assert LOCAL_SIMULATORS.maximum <= CLOUD_SIMULATORS.maximum
    assert 0 in CLOUD_SIMULATORS and 0 not in LOCAL_SIMULATORS
    with pytest.raises(ValidationError):
        FleetSettings.model_validate({"speed": float("nan")})


def test_every_config_key_is_spelled_once() -> None:
    """A config key as a whole string literal appears in factory_core/stack_file.py only."""
    keys = {
        value
        for name, value in vars(stack_file).items()
        if name.endswith("_KEY") and isinstance(value, str) and value.startswith(f"{stack_file.NAMESPACE}:")
    }
    assert stack_file.FLEET_KEY in keys and len(keys) > 20
    spelled = re.compile(r"^iotfactory:[A-Za-z]+$")
    elsewhere = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "stack_file.py" and path.parent.name == "factory_core":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and spelled.match(node.value)
                ):
                    elsewhere.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value}")
    assert not elsewhere, elsewhere


def test_stack_files_are_read_and_edited_in_one_module() -> None:
    """No other module parses YAML config with PyYAML or edits a stack file's text with patterns."""
    offenders = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if "yaml.safe_load" in text or "YAMLError" in text or "yaml.load(" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders
