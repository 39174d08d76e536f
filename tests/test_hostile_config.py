"""Hostile config and environment: every bad input is refused with exit 2 and one line, whatever its bytes.

The corpus is generated here: broken encodings, nesting thousands deep, aliases that would expand
to billions of nodes, duplicate keys, digits that are not ASCII, credentials in URLs, intervals
Prometheus cannot take, ports out of range, paths that are files or hold line breaks. Each file is
given to the real CLI (`up` and `scale` with IOTFACTORY_LOCAL_CONFIG pointing at it) and, when the
simulator reads the broken part, to `python -m simulator --check-config`. Nothing may start: PATH
hides mosquitto and Prometheus, and the state folder must not appear. The cloud verbs read the
same files through the same reader before they need the Pulumi CLI.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support_cloud import isolate_from_real_aws
from typer.testing import CliRunner

import cli
from automation import stack_context
from automation.recording_stack import RecordingStack
from automation.stack_context import CloudEnv

PROJECT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-Sup3rSecret"
GOOD_FLEET = "  iotfactory:fleet:\n    seed: 1\n    lines_per_site: 1\n"
# Enough subprocesses in flight to overlap their start-up, few enough for a shared 2-core machine.
WORKERS = 4


READER, FLEET, LOCAL = "reader", "fleet", "local"


@dataclass(frozen=True)
class BadFile:
    name: str
    content: bytes | Callable[[Path], None]
    fragment: str = ""  # must appear in the error line besides the file's path
    # Who refuses it: the stack-file reader (every consumer), the fleet schema (every consumer of
    # the fleet, the simulator too), or the local stack's schema (only the CLI reads that part).
    level: str = READER

    @property
    def simulator_reads_it(self) -> bool:
        return self.level in (READER, FLEET)

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.yaml"
        if callable(self.content):
            self.content(path)
        else:
            path.write_bytes(self.content)
        return path


def _config(body: str) -> bytes:
    return f"config:\n{body}".encode()


def _local(body: str) -> bytes:
    return _config(GOOD_FLEET + "  iotfactory:local:\n" + body)


def _billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return ("\n".join(lines) + "\nconfig: {iotfactory:fleet: {seed: *a9}}\n").encode()


def _deep_block(depth: int) -> bytes:
    nested = b"".join(b"  " * level + b"  k:\n" for level in range(depth))
    return b"config:\n" + nested + b"  " * depth + b"  x: 1\n"


CORPUS = [
    BadFile("binary", random.Random(7).randbytes(4096), "NUL bytes"),
    BadFile("utf16-bom", ("\ufeff" + GOOD_FLEET).encode("utf-16-le"), "UTF-16"),
    BadFile("utf16-no-bom", _config(GOOD_FLEET).decode().encode("utf-16-le"), "NUL bytes"),
    BadFile("latin1", "config:\n  iotfactory:fleet: {seed: 1}  # café\n".encode("latin-1"), "not UTF-8"),
    BadFile("control-character", b"config:\n  iotfactory:fleet: {seed: \x07}\n", "not allowed"),
    BadFile("deep-flow", b"config: " + b"[" * 5000, "nested too deeply"),
    BadFile("deep-block", _deep_block(300), "nested too deeply"),
    BadFile("billion-laughs", _billion_laughs(), "aliases"),
    BadFile(
        "duplicate-count",
        _config(GOOD_FLEET + "  iotfactory:simulatorCount: 2\n  iotfactory:simulatorCount: 40\n"),
        "duplicate key 'iotfactory:simulatorCount'",
    ),
    BadFile("duplicate-fleet-key", _config("  iotfactory:fleet:\n    seed: 1\n    seed: 2\n"), "line 4"),
    BadFile("number-key", _config("  iotfactory:fleet:\n    1: 2\n"), "key 1 is not text"),
    BadFile("complex-key", _config("  ? [a, b]\n  : 1\n"), "is not text"),
    BadFile("python-tag", _config("  iotfactory:fleet: !!python/object/apply:os.system [ls]\n"), "tag"),
    BadFile("two-documents", b"config: {}\n---\nconfig: {}\n", "another document"),
    BadFile("a-list", b"- config\n- fleet\n", "not a list"),
    BadFile("huge", b"# " + b"x" * (2 << 20) + b"\nconfig: {}\n", "larger than"),
    BadFile("long-integer", _config("  iotfactory:fleet:\n    seed: " + "9" * 5000 + "\n"), "cannot be read"),
    BadFile(
        "seed-superscript",
        _config("  iotfactory:fleet:\n    seed: '²'\n"),
        "seed: Input should be a valid integer",
        FLEET,
    ),
    BadFile("speed-nan", _config("  iotfactory:fleet:\n    speed: .nan\n"), "speed", FLEET),
    BadFile(
        "interval-inf",
        _config("  iotfactory:fleet:\n    publish_interval_s: .inf\n"),
        "publish_interval_s",
        FLEET,
    ),
    BadFile("fleet-list", _config("  iotfactory:fleet: [1, 2]\n"), "iotfactory:fleet", FLEET),
    BadFile("fifo", lambda path: os.mkfifo(path), "not a regular file"),
    BadFile("folder", lambda path: path.mkdir(), "is a folder"),
    # Parts only the CLI reads: the simulator is given the fleet section alone.
    BadFile("count-superscript", _config("  iotfactory:simulatorCount: '²'\n"), "whole number", LOCAL),
    BadFile(
        "count-arabic-digits", _config("  iotfactory:simulatorCount: '\u0661\u0662'\n"), "whole number", LOCAL
    ),
    BadFile("count-bool", _config("  iotfactory:simulatorCount: true\n"), "whole number", LOCAL),
    BadFile("count-too-many", _config("  iotfactory:simulatorCount: 51\n"), "1..50", LOCAL),
    BadFile("port-too-high", _local("    brokerPort: 70000\n"), "brokerPort", LOCAL),
    BadFile("port-negative", _local("    grafanaPort: -1\n"), "grafanaPort", LOCAL),
    BadFile(
        "port-fullwidth", _local("    prometheusPort: '\uff19\uff10\uff19\uff10'\n"), "prometheusPort", LOCAL
    ),
    BadFile("scrape-below-resolution", _local("    scrapeIntervalS: 0.0004\n"), "scrapeIntervalS", LOCAL),
    BadFile("scrape-not-whole-ms", _local("    scrapeIntervalS: 1.0005\n"), "whole milliseconds", LOCAL),
    BadFile("scrape-nan", _local("    scrapeIntervalS: .nan\n"), "scrapeIntervalS", LOCAL),
    BadFile(
        "retention-fullwidth", _local("    prometheusRetention: '\uff17d'\n"), "prometheusRetention", LOCAL
    ),
    BadFile(
        "s3-credentials",
        _local(f"    archive:\n      s3: {{endpoint: 'http://AKIA:{SECRET}@127.0.0.1:9000', bucket: abc}}\n"),
        "AWS_ACCESS_KEY_ID",
        LOCAL,
    ),
    BadFile(
        "s3-credentials-bad-port",
        _local(f"    archive:\n      s3: {{endpoint: 'http://user:{SECRET}@host:99999', bucket: abc}}\n"),
        "archive.s3.endpoint",
        LOCAL,
    ),
    BadFile(
        "s3-credentials-duplicated",
        _local(
            f"    archive:\n      s3:\n        endpoint: http://a:{SECRET}@h\n        endpoint: http://a:{SECRET}@h\n"
        ),
        "duplicate key 'endpoint'",
    ),
    BadFile("archive-nul", _local('    archive: {folder: "a\\0b"}\n'), "NUL", LOCAL),
    BadFile("unknown-key", _config("  iotfactory:simulatorCnt: 3\n"), "did you mean", LOCAL),
    BadFile("config-a-list", b"config: [a, b]\n", "must be a mapping", LOCAL),
]


# `scale` reads the file like `up` does, then writes it: these show it writes nothing when refused.
SCALE_TOO = {"duplicate-count", "utf16-bom", "billion-laughs", "count-superscript", "s3-credentials", "huge"}


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    label: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def _run(argv: list[str], env: dict[str, str], label: str) -> Outcome:
    completed = subprocess.run(
        argv,
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
        errors="backslashreplace",
    )
    return Outcome(completed.returncode, completed.stdout, completed.stderr, label)


def _assert_refused(outcome: Outcome, *fragments: str) -> str:
    context = f"{outcome.label}: rc={outcome.returncode} stdout={outcome.stdout!r} stderr={outcome.stderr!r}"
    assert outcome.returncode == 2, context
    assert "Traceback" not in outcome.stderr + outcome.stdout, context
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), context
    assert SECRET not in outcome.stderr + outcome.stdout, context
    for fragment in fragments:
        assert fragment in lines[0], context
    return lines[0]


def _base_env(tmp_path: Path) -> dict[str, str]:
    """No FACTORY_* from the caller, and a PATH on which mosquitto and Prometheus do not exist."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "IOTFACTORY_"))}
    empty_bin = tmp_path / "no-binaries"
    empty_bin.mkdir(exist_ok=True)
    environment["PATH"] = str(empty_bin)
    environment["IOTFACTORY_STATE_DIR"] = str(tmp_path / "state")
    return environment


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(PROJECT / "cli.py"), *args]


def _simulator(*args: str) -> list[str]:
    return [sys.executable, "-m", "simulator", *args]


def test_every_bad_config_file_is_refused_in_one_line_and_left_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = {bad.name: bad.write(folder) for bad in CORPUS}
    before = {name: path.read_bytes() for name, path in files.items() if path.is_file()}
    jobs: list[tuple[BadFile, list[str], dict[str, str]]] = []
    for bad in CORPUS:
        env = {**_base_env(tmp_path), "IOTFACTORY_LOCAL_CONFIG": str(files[bad.name])}
        jobs.append((bad, _cli("up", "--stack", "local"), env))
        if bad.name in SCALE_TOO:
            jobs.append((bad, _cli("scale", "--stack", "local", "--simulators", "3"), env))
        if bad.simulator_reads_it:
            jobs.append((bad, _simulator("--check-config", str(files[bad.name])), _base_env(tmp_path)))
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda job: _run(job[1], job[2], f"{job[0].name}: {job[1][2:4]}"), jobs))
    for (bad, _, _), outcome in zip(jobs, outcomes, strict=True):
        line = _assert_refused(outcome, bad.fragment)
        assert str(files[bad.name]) in line, outcome.label
    assert {name: path.read_bytes() for name, path in files.items() if path.is_file()} == before
    assert not (tmp_path / "state").exists(), "a refused config must not create the state folder"


def test_the_local_only_cases_leave_the_fleet_section_valid() -> None:
    """What the simulator is not given (LOCAL cases) is broken outside the fleet section only."""
    assert sum(bad.simulator_reads_it for bad in CORPUS) >= 20
    for bad in CORPUS:
        if bad.level == LOCAL:
            content = bad.content if isinstance(bad.content, bytes) else b""
            assert GOOD_FLEET.encode() in content or b"iotfactory:fleet" not in content, bad.name


BAD_SIMULATOR_ENV = [
    ({"FACTORY_PORT": "²"}, "FACTORY_PORT"),
    ({"FACTORY_PORT": "\u0661\u0662"}, "FACTORY_PORT"),
    ({"FACTORY_PORT": "70000"}, "FACTORY_PORT"),
    ({"FACTORY_SITE_INDEX": "100"}, "FACTORY_SITE_INDEX"),
    ({"FACTORY_SITE_INDEX": "-1"}, "FACTORY_SITE_INDEX"),
    ({"FACTORY_SITE_INDEX": "7.5"}, "FACTORY_SITE_INDEX"),
    ({"FACTORY_METRICS_PORT": "65536"}, "FACTORY_METRICS_PORT"),
    ({"FACTORY_ENDPOINT": "mqtts://broker:8883"}, "FACTORY_ENDPOINT"),
    ({"FACTORY_ENDPOINT": "two words"}, "FACTORY_ENDPOINT"),
    ({"FACTORY_METRICS_HOST": "::1::"}, "FACTORY_METRICS_HOST"),
    ({"FACTORY_CLIENT_ID_PREFIX": "a b/#"}, "FACTORY_CLIENT_ID_PREFIX"),
    ({"FACTORY_CONFIG_JSON": '{"seed": 1, "seed": 2}'}, "duplicate key 'seed'"),
    ({"FACTORY_CONFIG_JSON": '{"speed": NaN}'}, "FACTORY_CONFIG_JSON"),
    ({"FACTORY_CONFIG_JSON": "[" * 100_000}, "nested too deeply"),
    ({"FACTORY_CONFIG_JSON": "[1, 2]"}, "JSON object"),
    ({"FACTORY_CONFIG_JSON": '{"colour": "blue"}'}, "unknown setting 'colour'"),
    ({"FACTORY_CONFIG_JSON": '{"lines_per_site": "²"}'}, "lines_per_site"),
    (
        {
            "FACTORY_ENDPOINT": "127.0.0.1",
            "FACTORY_CA_PEM": "garbage",
            "FACTORY_CERT_PEM": "garbage",
            "FACTORY_KEY_PEM": SECRET,
        },
        "CA file",
    ),
]


def test_every_bad_simulator_variable_is_refused_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "fleet.yaml"
    good.write_text("seed: 1\nlines_per_site: 1\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(random.Random(3).randbytes(512))
    cases = [
        *BAD_SIMULATOR_ENV,
        ({"FACTORY_STATE_FILE": str(folder)}, "FACTORY_STATE_FILE"),
        ({"FACTORY_CONFIG_FILE": str(garbage)}, str(garbage)),
    ]
    jobs = []
    for variables, fragment in cases:
        args = (
            ["--dry-run", "--duration", "1"]
            if "FACTORY_CONFIG_FILE" in variables
            else ["--check-config", str(good)]
        )
        jobs.append((fragment, _simulator(*args), {**_base_env(tmp_path), **variables}))
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda job: _run(job[1], job[2], f"{job[0]}: {job[2]}"[:200]), jobs))
    for (fragment, _, _), outcome in zip(jobs, outcomes, strict=True):
        _assert_refused(outcome, fragment)


def test_every_bad_cli_variable_is_refused_in_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    good_config = tmp_path / "Pulumi.local.yaml"
    good_config.write_bytes(_config(GOOD_FLEET))
    cases = [
        ({"IOTFACTORY_STATE_DIR": str(a_file)}, "is a file"),
        ({"IOTFACTORY_STATE_DIR": str(a_file / "below")}, "which is a file"),
        ({"IOTFACTORY_STATE_DIR": f"{tmp_path}/x\nlistener 1883 0.0.0.0"}, "control characters"),
        ({"IOTFACTORY_STATE_DIR": "   "}, "blank"),
        ({"IOTFACTORY_LOCAL_CONFIG": str(tmp_path)}, "is a folder"),
        ({"IOTFACTORY_LOCAL_CONFIG": f"{good_config}\n"}, "control characters"),
    ]
    jobs = []
    for variables, fragment in cases:
        env = {**_base_env(tmp_path), "IOTFACTORY_LOCAL_CONFIG": str(good_config), **variables}
        jobs.append((fragment, _cli("up", "--stack", "local"), env))
        if "IOTFACTORY_STATE_DIR" in variables:
            jobs.append((fragment, _cli("status", "--stack", "local"), env))
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = list(pool.map(lambda job: _run(job[1], job[2], f"{job[0]}: {job[1][2]}"), jobs))
    for (fragment, _, _), outcome in zip(jobs, outcomes, strict=True):
        _assert_refused(outcome, fragment)
    assert a_file.read_text() == "not a folder\n"


# --- the cloud verbs read the same files the same way, before they need the Pulumi CLI -----------

CLOUD_CORPUS = [bad for bad in CORPUS if bad.level in (READER, FLEET) and isinstance(bad.content, bytes)]


@pytest.fixture
def cloud_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: iotfactory\nruntime: python\nmain: infra/\n")
    # No `pulumi` on PATH: a broken stack file must be reported as such, not as a missing CLI.
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries"))
    isolate_from_real_aws(monkeypatch, tmp_path)
    stand_in = RecordingStack("dev")

    def env() -> CloudEnv:
        return CloudEnv(project_dir=project, open_stack=stand_in.opener())

    monkeypatch.setattr(stack_context, "cloud_env", env)
    return project


@pytest.mark.parametrize("bad", CLOUD_CORPUS, ids=[bad.name for bad in CLOUD_CORPUS])
def test_cloud_verbs_refuse_a_hostile_stack_file_before_anything_else(
    cloud_project: Path, bad: BadFile
) -> None:
    path = cloud_project / "Pulumi.dev.yaml"
    path.write_bytes(bad.content if isinstance(bad.content, bytes) else b"")
    # status only reads the file; the verbs that run the program validate its config first.
    verbs = ("preview", "up", "status", "scale") if bad.level == READER else ("preview", "up", "scale")
    for verb in verbs:
        args = [verb, "--stack", "dev", *(["--simulators", "3"] if verb == "scale" else [])]
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 2, (verb, result.output, result.exception)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and "Pulumi.dev.yaml" in lines[0], (verb, result.stderr)
        assert "Pulumi CLI" not in lines[0] and SECRET not in result.output, lines[0]
        if bad.level == READER:
            assert bad.fragment in lines[0], lines[0]
    assert path.read_bytes() == bad.content
