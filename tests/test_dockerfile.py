"""simulator/Dockerfile: hadolint-clean, pinned, non-root, healthy, secret-free, Pulumi-free.

No Docker daemon here, so the image is not built; what can be checked without one is: the lint,
the instructions themselves, the dependency export the builder runs (same uv command, same lock),
and the CA-bundle step's script against this machine's Debian ca-certificates.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.connection_settings import DEFAULT_METRICS_PORT

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "simulator" / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")
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


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", "", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    completed = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_multi_stage_on_one_pinned_slim_base() -> None:
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    assert len(set(bases)) == 1, "builder and runtime must use the same base"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", bases[0]), bases[0]


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert int(user) >= 1000


def test_healthcheck_hits_the_metrics_endpoint_on_the_exporter_port() -> None:
    stage = final_stage()
    (healthcheck,) = [args for keyword, args in stage if keyword == "HEALTHCHECK"]
    assert "/metrics" in healthcheck and "FACTORY_METRICS_PORT" in healthcheck
    assert f"'{DEFAULT_METRICS_PORT}'" in healthcheck
    env = " ".join(args for keyword, args in stage if keyword == "ENV")
    assert f"FACTORY_METRICS_PORT={DEFAULT_METRICS_PORT}" in env
    assert [args for keyword, args in stage if keyword == "EXPOSE"] == [str(DEFAULT_METRICS_PORT)]
    # The command itself is valid Python.
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "healthcheck", "exec")


def test_entrypoint_is_the_simulator_module() -> None:
    entrypoints = [args for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["python", "-m", "simulator"]


def test_no_secrets_are_baked_in() -> None:
    for keyword, args in instructions():
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + args) or [args.split("=")[0]]
            for name in names:
                assert not SECRET_NAME.search(name), f"{keyword} {name} looks like a secret"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.(pem|key|crt|p12)\b", args), f"{keyword} {args} copies key material"
            assert "http" not in args, "no downloads at build time"
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for pattern in ("**/*.pem", "**/*.key", "**/.env"):
        assert pattern in ignored
    assert "*" in [line.strip() for line in ignored], "the build context is an allowlist"


def uv_export_command() -> list[str]:
    (run,) = [args for keyword, args in instructions() if keyword == "RUN" and "uv export" in args]
    words = shlex.split(run.split("&&")[0])
    return [word for word in words if word not in ("--output-file", "requirements.txt")]


@pytest.fixture(scope="module")
def image_requirements() -> set[str]:
    uv = shutil.which("uv")
    assert uv, "uv is needed to read the lock (it is the project's installer)"
    command = uv_export_command()
    completed = subprocess.run(
        [uv, *command[1:], "--no-hashes"], cwd=REPO, capture_output=True, text=True, check=True
    )
    names = set()
    for line in completed.stdout.splitlines():
        if line and not line.startswith((" ", "#", "-")):
            names.add(re.split(r"[=<>; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_image_dependencies_exclude_the_platform_tooling(image_requirements: set[str]) -> None:
    assert image_requirements.isdisjoint(PLATFORM_ONLY), image_requirements & PLATFORM_ONLY
    assert not any(name.startswith("pulumi") for name in image_requirements)


FIRST_PARTY = {"simulator", "factory_core"}


def simulator_third_party_imports() -> set[str]:
    modules = set()
    for path in [*(REPO / "simulator").rglob("*.py"), *(REPO / "factory_core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {name for name in modules if name not in sys.stdlib_module_names and name not in FIRST_PARTY}


def test_image_dependencies_cover_every_simulator_import(image_requirements: set[str]) -> None:
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in simulator_third_party_imports():
        names = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if names.isdisjoint(image_requirements):
            missing[module] = names
    assert not missing, f"the simulator imports packages the image does not install: {missing}"


def test_the_ca_bundle_step_accepts_this_debians_amazon_roots() -> None:
    (run,) = [args for keyword, args in instructions() if keyword == "RUN" and "Amazon_Root_CA_1" in args]
    (check,) = [part.strip() for part in run.split("&&") if part.strip().startswith("python -c")]
    words = shlex.split(check)
    script, paths = words[2], words[3:]
    if not all(Path(path).is_file() for path in paths):
        pytest.fail(f"this machine lacks {paths}; install ca-certificates")
    ok = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    wrong = subprocess.run(
        [sys.executable, "-c", script, paths[0]], capture_output=True, text=True, check=False
    )
    assert wrong.returncode != 0 and "unexpected Amazon root CA fingerprints" in wrong.stderr
