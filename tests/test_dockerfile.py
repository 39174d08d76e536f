"""simulator/Dockerfile: hadolint-clean, pinned, non-root, healthy, secret-free, Pulumi-free.

No Docker daemon here, so the image is not built; what can be checked without one is: the lint,
the instructions themselves (read with BuildKit's parser, tests/support_dockerfile.py), the
dependency export the builder runs (same uv command, same lock), the CA-bundle step's script
against this machine's Debian ca-certificates, and the build context against Docker's documented
`.dockerignore` rules. tests/test_image_assembly.py assembles and runs the image itself.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest
import support_dockerfile as df
from support_image import BuildContext

from simulator.connection_settings import DEFAULT_METRICS_PORT

REPO = df.REPO
DOCKERFILE = df.DOCKERFILE
HADOLINT = Path(sys.executable).with_name("hadolint")
UV = Path(sys.executable).with_name("uv")
PLATFORM_ONLY = {
    "pulumi",
    "pulumi-aws",
    "pulumi-docker",
    "pulumi-random",
    "boto3",
    "botocore",
    "typer",
    "rich",
}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|PRIVATE|_KEY\b|CREDENTIAL)", re.IGNORECASE)


def instructions() -> list[dockerfile.Command]:
    return [command for stage in df.parse_stages() for command in stage.instructions]


def test_hadolint_passes() -> None:
    completed = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_multi_stage_on_one_pinned_slim_base() -> None:
    bases = [stage.base for stage in df.parse_stages()]
    assert len(bases) >= 2
    assert len(set(bases)) == 1, "builder and runtime must use the same base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", bases[0]), bases[0]


def test_runs_as_a_non_root_user() -> None:
    uid, gid = df.user(df.final_stage())
    assert uid >= 1000 and gid >= 1000


def test_healthcheck_hits_the_metrics_endpoint_on_the_exporter_port() -> None:
    stage = df.final_stage()
    healthcheck = df.healthcheck(stage)
    assert healthcheck is not None
    assert healthcheck.argv[:2] == ("python", "-c")
    script = healthcheck.argv[2]
    compile(script, "healthcheck", "exec")
    assert "/metrics" in script and "FACTORY_METRICS_PORT" in script
    assert f"'{DEFAULT_METRICS_PORT}'" in script
    env: dict[str, str] = {}
    for command in stage.all("ENV"):
        env.update(df.env_pairs(command, env))
    assert env["FACTORY_METRICS_PORT"] == str(DEFAULT_METRICS_PORT)
    assert [command.value for command in stage.all("EXPOSE")] == [(str(DEFAULT_METRICS_PORT),)]
    assert healthcheck.timeout_s < healthcheck.interval_s


def test_entrypoint_is_the_simulator_module() -> None:
    assert df.entrypoint(df.final_stage()) == ("python", "-m", "simulator")


def test_no_secrets_are_baked_in() -> None:
    for command in instructions():
        if command.cmd == "ENV":
            names = command.value[::2]
        elif command.cmd == "ARG":
            names = tuple(value.split("=")[0] for value in command.value)
        else:
            names = ()
        for name in names:
            assert not SECRET_NAME.search(name), f"{command.cmd} {name} looks like a secret"
        if command.cmd in ("COPY", "ADD"):
            words = " ".join(command.value)
            assert not re.search(r"\.(pem|key|crt|p12)\b", words), f"{command.original} copies key material"
            assert "http" not in words, "no downloads at build time"
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in ("**/*.pem", "**/*.key", "**/.env"):
        assert pattern in ignored
    assert "*" in [line.strip() for line in ignored], "the build context is an allowlist"


def test_the_builder_gets_the_uv_this_environment_tests_with() -> None:
    """The export's output depends on uv's version: the dev group pins the Dockerfile's."""
    pins = [
        word.partition("==")[2]
        for stage in df.parse_stages()
        for run in stage.all("RUN")
        for words in df.shell_commands(run)
        if words[:2] == ["pip", "install"]
        for word in words
        if word.startswith("uv==")
    ]
    version = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True).stdout
    assert pins == [version.split()[1]]


@pytest.fixture(scope="module")
def image_requirements() -> set[str]:
    words = df.export_command()
    output = words.index("--output-file")
    command = [*words[1:output], *words[output + 2 :], "--no-hashes"]
    completed = subprocess.run([str(UV), *command], cwd=REPO, capture_output=True, text=True, check=True)
    names = set()
    for line in completed.stdout.splitlines():
        if line and not line.startswith((" ", "#", "-")):
            names.add(re.split(r"[=<>; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_image_dependencies_exclude_the_platform_tooling(image_requirements: set[str]) -> None:
    assert image_requirements.isdisjoint(PLATFORM_ONLY), image_requirements & PLATFORM_ONLY
    assert not any(name.startswith("pulumi") for name in image_requirements)
    assert {name.lower() for name in df.pruned_packages()} >= PLATFORM_ONLY - {"botocore"}


def test_the_ca_bundle_step_accepts_this_debians_amazon_roots() -> None:
    (words,) = [
        words
        for run in df.final_stage().all("RUN")
        for words in df.shell_commands(run)
        if words[:2] == ["python", "-c"] and "Amazon_Root_CA_1" in " ".join(words)
    ]
    script, paths = words[2], words[3:]
    if not all(Path(path).is_file() for path in paths):
        pytest.fail(f"this machine lacks {paths}; install ca-certificates")
    ok = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        [sys.executable, "-c", script, paths[0]], capture_output=True, text=True, check=False
    )
    assert wrong.returncode != 0 and "unexpected Amazon root CA fingerprints" in wrong.stderr


# --- the build context: Docker's documented .dockerignore rules --------------------------------------

# (ignore file, path, sent?) from Docker's documentation of .dockerignore, plus where it differs
# from .gitignore: patterns are anchored at the context root, a folder pattern takes its contents,
# an exception can re-include a file inside an excluded folder, and matching is case-sensitive.
DOCUMENTED = "# comment\n*/temp*\n*/*/temp*\ntemp?\n"
IGNORE_RULES = [
    (DOCUMENTED, "somedir/temporary.txt", False),
    (DOCUMENTED, "somedir/temp", False),
    (DOCUMENTED, "somedir/temp/inside.txt", False),
    (DOCUMENTED, "somedir/subdir/temporary.txt", False),
    (DOCUMENTED, "tempa", False),
    (DOCUMENTED, "temporary.txt", True),
    (DOCUMENTED, "a/b/c/temp", True),
    (DOCUMENTED, "# comment", True),
    ("**/*.go\n", "main.go", False),
    ("**/*.go\n", "a/b/c.go", False),
    ("*.md\n!README.md\n", "README.md", True),
    ("*.md\n!README.md\n", "CHANGES.md", False),
    ("*.md\n!README.md\n", "docs/guide.md", True),
    ("*.md\n!README*.md\nREADME-secret.md\n", "README-secret.md", False),
    ("*.md\n!README*.md\nREADME-secret.md\n", "README-other.md", True),
    ("*.md\nREADME-secret.md\n!README*.md\n", "README-secret.md", True),
    ("/foo/bar\n", "foo/bar", False),
    ("foo/bar\n", "foo/bar/baz.txt", False),
    ("foo/bar\n", "x/foo/bar", True),
    (" ./foo/../bar/ \n", "bar", False),
    (".\n", "anything", True),
    ("*\n!a/b/keep.txt\n", "a/b/keep.txt", True),
    ("*\n!a/b/keep.txt\n", "a/b/other.txt", False),
    ("**/*.pem\n", "KEY.PEM", True),
]


@pytest.mark.parametrize(("ignore", "path", "sent"), IGNORE_RULES)
def test_the_build_context_follows_dockers_ignore_rules(
    tmp_path: Path, ignore: str, path: str, sent: bool
) -> None:
    (tmp_path / ".dockerignore").write_text(ignore)
    assert BuildContext(tmp_path, tmp_path / "Dockerfile").sends(path) is sent


def test_a_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*\n")
    (tmp_path / "Dockerfile.dockerignore").write_text("secret.txt\n")
    context = BuildContext(tmp_path, tmp_path / "Dockerfile")
    assert context.sends("app.py") and not context.sends("secret.txt")


def test_the_repository_sends_the_simulator_and_its_core_but_no_keys_or_dockerfile() -> None:
    context = BuildContext(REPO, DOCKERFILE)
    for path in ("uv.lock", "pyproject.toml", "simulator/runner.py", "factory_core/fleet.py"):
        assert context.sends(path), path
    for path in (
        "tests/conftest.py",
        "infra/__main__.py",
        "local_stack/ports.py",
        ".venv/bin/python",
        "simulator/Dockerfile",
        "simulator/certs/device.pem",
        "factory_core/__pycache__/fleet.cpython-311.pyc",
        "simulator/model/__pycache__/notes.txt",
        "simulator/.env",
    ):
        assert not context.sends(path), path


# --- the parser helpers (tests/support_dockerfile.py) -------------------------------------------------


def stage_of(tmp_path: Path, text: str) -> df.Stage:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return df.final_stage(path)


def test_env_sees_the_environment_from_before_its_instruction(tmp_path: Path) -> None:
    stage = stage_of(tmp_path, 'FROM python:3.11\nENV A=1\nENV A=2 B=$A C="${A} x" D=/x:$PATH\n')
    env = {"PATH": "/bin"}
    for command in stage.all("ENV"):
        env.update(df.env_pairs(command, env))
    assert env == {"PATH": "/bin", "A": "2", "B": "1", "C": "1 x", "D": "/x:/bin"}


def test_run_lines_split_at_and_and_keep_quoted_text(tmp_path: Path) -> None:
    stage = stage_of(tmp_path, 'FROM python:3.11\nRUN a -x \\\n    && b "c && d" > f\nRUN ["e", "f g"]\n')
    first, second = stage.all("RUN")
    assert df.shell_commands(first) == [["a", "-x"], ["b", "c && d", ">", "f"]]
    assert df.uses_shell_syntax(df.shell_commands(first)[1])
    assert df.shell_commands(second) == [["e", "f g"]]


def test_healthcheck_entrypoint_user_and_stop_signal(tmp_path: Path) -> None:
    stage = stage_of(
        tmp_path,
        "FROM python:3.11 AS app\nUSER 1000:2000\nHEALTHCHECK --timeout=1m30s CMD curl -f http://x\n"
        'ENTRYPOINT ["run"]\nCMD ["--flag"]\nSTOPSIGNAL SIGINT\n',
    )
    assert stage.name == "app" and df.user(stage) == (1000, 2000)
    assert df.healthcheck(stage) == df.HealthCheck(
        argv=("/bin/sh", "-c", "curl -f http://x"), interval_s=30, timeout_s=90, start_period_s=0, retries=3
    )
    assert df.entrypoint(stage) == ("run", "--flag")
    assert df.stop_signal(stage) == signal.SIGINT
    assert df.healthcheck(stage_of(tmp_path, "FROM python:3.11\nHEALTHCHECK NONE\n")) is None
    assert df.stop_signal(stage_of(tmp_path, "FROM python:3.11\nSTOPSIGNAL 15\n")) == signal.SIGTERM


def test_what_the_helpers_do_not_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(df.DockerfileError, match="numeric"):
        df.user(stage_of(tmp_path, "FROM python:3.11\nUSER app\n"))
    with pytest.raises(df.DockerfileError, match="duration"):
        df.duration_s("15 seconds")
    with pytest.raises(df.DockerfileError, match="not an official python image"):
        df.python_version("debian:12")
    assert df.duration_s("500ms") == 0.5 and df.python_version(df.final_stage().base) == (3, 11)
