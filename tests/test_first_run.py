"""A first run installs what the command needs, and says so: scripts/ensure-deps.sh and cli.py.

The local stack runs on the project's dependencies alone; the cloud stacks also need the `cloud`
group (Pulumi), the tests every group. The wrapper's decisions are checked with a fake `uv` and
`apt-get` on PATH; cli.py without the cloud group runs in a real environment synced without it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from support_dockerfile import REPO
from support_image_imports import _imports, _module_file

import cli

UV = Path(sys.executable).with_name("uv")
ENSURE_DEPS = REPO / "scripts" / "ensure-deps.sh"
# What runs `up --stack local`, the simulator and `dashboards`: it must not reach a group's package.
LOCAL_PACKAGES = ("local_stack", "cli_render", "factory_core", "simulator")
# What the fake uv answers to --dry-run: uv's own wording.
PLAN = """Using CPython 3.11.7 interpreter at: /usr/bin/python3
Would download 2 packages
Would install 2 packages
 + pydantic==2.14.4
 + pulumi-aws==7.51.1
"""
FAKE_UV = """#!/usr/bin/env bash
printf 'uv %s\\n' "$*" >> "$CALLS"
if [[ " $* " == *" --dry-run "* ]]; then printf '%s' "$PLAN" >&2; exit 0; fi
mkdir -p .venv/bin && cp "$(dirname "$0")/fake-python" .venv/bin/python
"""
FAKE_PYTHON = """#!/usr/bin/env bash
printf 'python %s\\n' "$*" >> "$CALLS"
"""
FAKE_APT = """#!/usr/bin/env bash
printf 'apt-get %s\\n' "$*" >> "$CALLS"
if [[ " $* " == *" --print-uris "* ]]; then
  echo "'http://deb.debian.org/pool/m/mosquitto.deb' mosquitto.deb 2500000 SHA256:00"
  echo "'http://deb.debian.org/pool/p/prometheus.deb' prometheus.deb 30000000 SHA256:00"
fi
"""
SUDO = """#!/usr/bin/env bash
exec "$@"
"""


def set_for(*args: str, cwd: Path = REPO) -> str:
    command = 'source "$0" && python_set_for "$@"'
    done = subprocess.run(
        ["bash", "-c", command, str(ENSURE_DEPS), *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def stack_defaults() -> dict[str, str | None]:
    """Each cli.py command and the default of its --stack (None: it has no --stack)."""
    group = typer.main.get_command(cli.app)
    defaults: dict[str, str | None] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        stacks = [param.default for param in command.params if "--stack" in getattr(param, "opts", ())]
        defaults[name] = stacks[0] if stacks else None
    return defaults


def test_each_command_gets_the_set_its_default_stack_needs() -> None:
    defaults = stack_defaults()
    assert {"up", "preview", "bootstrap", "dashboards", "verify"} <= defaults.keys()
    for name, default in defaults.items():
        expected = "cloud" if default in cli.CLOUD_STACKS else "local"
        assert set_for(name) == expected, (name, default)
        if default is not None:
            assert set_for(name, "--stack", "local") == "local", name
            for spelling in (["--stack", "dev"], ["-s", "prod"], ["--stack=dev"], ["-sprod"]):
                assert set_for(name, *spelling) == "cloud", (name, spelling)


def test_tests_need_everything_and_help_or_an_explicit_archive_needs_only_the_local_set() -> None:
    assert set_for("test", "-x", "-q") == "all"
    assert set_for("preview", "--help") == "local"
    assert set_for() == "local"
    assert set_for("verify", "--stack", "dev", "--archive", "s3://bucket/raw") == "local"
    for verb in ("query", "report", "score"):  # cli.py reads an explicit archive with DuckDB or boto3
        assert set_for(verb, "--stack", "dev", "--archive=s3://bucket/raw") == "local", verb
    assert set_for("logs", "broker", "-n", "5") == "local"


def test_a_stack_is_a_cloud_stack_when_its_file_exists_as_cli_decides(tmp_path: Path) -> None:
    shutil.copy2(ENSURE_DEPS, tmp_path / "ensure-deps.sh")
    assert set_for("up", "--stack", "staging", cwd=tmp_path) == "local"  # cli.py: unknown stack
    (tmp_path / "Pulumi.staging.yaml").write_text("config: {}\n")
    assert set_for("up", "--stack", "staging", cwd=tmp_path) == "cloud"


def test_cli_names_the_command_the_wrapper_runs_for_the_cloud_group() -> None:
    flags = subprocess.run(
        ["bash", "-c", 'source "$0" && echo "${UV_SYNC_FLAGS[cloud]}"', str(ENSURE_DEPS)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    wrapper_runs = f"uv sync --frozen {flags} --compile-bytecode"
    assert wrapper_runs == cli.INSTALL_CLOUD_GROUP


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A copy of the wrapper and the lock, with `uv` and `apt-get` fakes that log their calls."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("iotfactory", "scripts/ensure-deps.sh", "pyproject.toml", "uv.lock"):
        shutil.copy2(REPO / name, root / name)
    fakes = tmp_path / "bin"
    fakes.mkdir()
    scripts = {"uv": FAKE_UV, "apt-get": FAKE_APT, "fake-python": FAKE_PYTHON, "sudo": SUDO}
    for name, script in scripts.items():
        (fakes / name).write_text(script)
        (fakes / name).chmod(0o755)
    environment = dict(os.environ)
    environment["PATH"] = f"{fakes}{os.pathsep}{environment['PATH']}"
    environment["CALLS"] = str(tmp_path / "calls")
    environment["PLAN"] = PLAN
    yield root, environment


def run_wrapper(project: tuple[Path, dict[str, str]], *args: str) -> tuple[list[str], str]:
    """(the uv and python calls it made, its stderr)."""
    root, environment = project
    calls = Path(environment["CALLS"])
    calls.unlink(missing_ok=True)
    done = subprocess.run(
        ["./iotfactory", *args], cwd=root, env=environment, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines() if calls.exists() else [], done.stderr


def syncs(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith("uv sync") and "--dry-run" not in call]


def test_up_local_installs_the_local_set_only_and_announces_it(project: tuple[Path, dict[str, str]]) -> None:
    calls, stderr = run_wrapper(project, "up", "--stack", "local")
    (sync,) = syncs(calls)
    assert "--no-default-groups" in sync and "--group" not in sync and "--inexact" in sync, sync
    assert calls[-1] == "python cli.py up --stack local"
    start, end = stderr.splitlines()[-2:]
    # Sizes come from uv.lock's wheels for this machine: pydantic's and pulumi-aws's.
    size = re.search(r": 2 packages, ~(\d+) MB of wheels, 2 to download \(uv sync", start)
    what = "the Python packages of the local stack and the simulator"
    assert start.startswith(f"installing {what}: ") and size, start
    assert int(size[1]) >= 10, start  # the pulumi-aws wheel alone is 13 MB
    assert re.fullmatch(rf"installed {what} in \d+ s", end), end


def test_each_set_is_synced_once_and_a_larger_one_covers_the_smaller(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, _ = project
    run_wrapper(project, "up", "--stack", "local")
    calls, stderr = run_wrapper(project, "status")
    assert syncs(calls) == [] and stderr == ""
    calls, _ = run_wrapper(project, "preview")  # --stack defaults to dev
    (sync,) = syncs(calls)
    assert "--no-default-groups --group cloud" in sync and "--inexact" in sync, sync
    assert syncs(run_wrapper(project, "up", "--stack", "local")[0]) == []
    calls, _ = run_wrapper(project, "test", "-q")
    (sync,) = syncs(calls)
    assert "--all-groups" in sync and "--inexact" not in sync, sync
    assert calls[-1] == "python -m pytest -n 3 --dist loadfile -q"  # in parallel, a file per worker
    assert syncs(run_wrapper(project, "preview", "--stack", "prod")[0]) == []
    # A new lock makes every set stale again.
    stamp = (root / ".venv" / ".synced").stat().st_mtime
    os.utime(root / "uv.lock", (stamp + 10, stamp + 10))
    (sync,) = syncs(run_wrapper(project, "up")[0])
    assert "--group" not in sync and "--no-default-groups" in sync, sync


def test_apt_steps_announce_size_and_time(project: tuple[Path, dict[str, str]]) -> None:
    root, environment = project
    packages = subprocess.run(
        ["bash", "-c", 'source "$0" && echo "${APT_PACKAGES[*]}"', str(ENSURE_DEPS)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert packages.startswith("mosquitto mosquitto-clients prometheus "), packages
    command = 'source scripts/ensure-deps.sh && install_system_packages mosquitto prometheus'
    done = subprocess.run(
        ["bash", "-c", command], cwd=root, env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "installing the apt package lists: apt-get update, for mosquitto prometheus..."
    assert re.fullmatch(r"installed the apt package lists in \d+ s", lines[1]), lines[1]
    assert lines[2] == f"installing {packages}: apt-get, 33 MB to download..."
    assert re.fullmatch(rf"installed {packages} in \d+ s", lines[3]), lines[3]
    calls = Path(environment["CALLS"]).read_text().splitlines()
    assert calls[-1] == f"apt-get install -y --no-install-recommends -qq {packages}"


def cloud_group() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    group = pyproject["dependency-groups"]["cloud"]
    return [re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0] for requirement in group]


def local_set() -> set[str]:
    """Distribution names of the project's dependencies without any group, as uv.lock resolves them."""
    exported = subprocess.run(
        [str(UV), "export", "--frozen", "--no-default-groups", "--no-emit-project", "--no-hashes",
         "--format", "requirements-txt"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    return {normalized(line.split("==")[0]) for line in exported.splitlines() if "==" in line}


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_the_local_set_is_what_the_local_code_imports_and_holds_no_cloud_package() -> None:
    """Every import the local stack, the CLI's renderers and the simulator can reach, lazy ones too."""
    first_party = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} | {"cli"}
    queue = [
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for package in LOCAL_PACKAGES
        for path in (REPO / package).rglob("*.py")
    ]
    reached: set[Path] = set()
    third_party: dict[str, str] = {}
    while queue:
        path = _module_file(REPO, queue.pop())
        if path is None or path in reached:
            continue
        reached.add(path)
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for name, _ in _imports(path, module, is_package=path.name == "__init__.py"):
            top = name.split(".")[0]
            if top in first_party:
                parts = name.split(".")
                queue.extend(".".join(parts[: end + 1]) for end in range(len(parts)))
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, module)
    packages = {path.relative_to(REPO).parts[0] for path in reached}
    assert packages.isdisjoint({"automation", "infra", "cli.py"}), packages
    owners = importlib.metadata.packages_distributions()
    needed = {
        normalized(owner): module for top, module in third_party.items() for owner in owners.get(top, [top])
    }
    local = local_set()
    assert not needed.keys() - local, {name: needed[name] for name in needed.keys() - local}
    assert local.isdisjoint(normalized(name) for name in cloud_group())


@pytest.fixture(scope="module")
def local_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real environment synced from uv.lock the way `./iotfactory up --stack local` syncs it."""
    venv = tmp_path_factory.mktemp("local-set") / "venv"
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    subprocess.run(
        [str(UV), "sync", "--frozen", "--no-default-groups", "--quiet"],
        cwd=REPO, env=environment, check=True, capture_output=True, text=True,
    )
    return venv / "bin" / "python"


def test_without_the_cloud_group_a_cloud_verb_says_how_to_install_it(local_only_python: Path) -> None:
    listing = "import importlib.metadata as m; print('\\n'.join(d.name for d in m.distributions()))"
    installed = subprocess.run(
        [str(local_only_python), "-c", listing], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {normalized(name) for name in installed}.isdisjoint(normalized(name) for name in cloud_group())
    for args in (["preview", "--stack", "dev"], ["up", "--stack", "prod", "--json"], ["bootstrap"]):
        done = subprocess.run(
            [str(local_only_python), str(REPO / "cli.py"), *args], cwd=REPO, capture_output=True, text=True,
            check=False,
        )
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout)
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: stack ") and "pulumi-aws" in line, line
        assert cli.INSTALL_CLOUD_GROUP in line, line
    # The local verbs need nothing more: a usage error from the verb itself, not from the check.
    done = subprocess.run(
        [str(local_only_python), str(REPO / "cli.py"), "scale", "-n", "0", "--stack", "nosuch"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2 and "unknown stack 'nosuch'" in done.stderr, done.stderr
