"""Grafana in Docker for users without a Grafana install: the `docker run` the stack builds, when it
chooses Docker, and the container's life with the stack — driven by a stand-in `docker` executable
(tests/fake_docker.py), since no Docker engine exists on these machines."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support_local_stack import write_local_stack_file

from local_stack import grafana, grafana_container
from local_stack.paths import CONFIG_ENV, PROJECT_DIR, STATE_DIR_ENV
from local_stack.readiness import wait_until

FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")
CLI = str(PROJECT_DIR / "cli.py")
FLEET = {"seed": 5, "lines_per_site": 1, "publish_interval_s": 0.5}

pytestmark = pytest.mark.skipif(
    grafana.find_install() is not None, reason="a real Grafana is installed: the stack would use it"
)


def _docker_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "docker-bin"
    folder.mkdir(exist_ok=True)
    docker = folder / "docker"
    docker.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
    docker.chmod(0o755)
    return folder


def _calls(state: Path) -> list[list[str]]:
    path = state / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "docker-state"
    monkeypatch.setenv("PATH", f"{_docker_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    return state


def test_grafana_runs_in_docker_only_when_an_engine_answers(
    fake_docker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = grafana.find_runtime()
    assert isinstance(runtime, grafana.GrafanaInDocker) and runtime.docker == shutil.which("docker")
    assert _calls(fake_docker) == [["info", "--format", "{{.ServerVersion}}"]]
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")  # the CLI is there, the engine is not
    assert grafana.find_runtime() is None


def test_docker_run_command_line(fake_docker: Path, tmp_path: Path) -> None:
    directory = tmp_path / "state" / "grafana"
    docker = shutil.which("docker")
    assert docker is not None
    process = grafana.process(grafana.GrafanaInDocker(docker), directory, 3456, tmp_path / "grafana.log")
    argv = process.argv
    assert argv[:3] == [docker, "run", "--rm"]
    name = argv[argv.index("--name") + 1]
    assert name == grafana_container.container_name(tmp_path / "state") == grafana.container_name(directory)
    assert re.fullmatch(r"iotfactory-grafana-[0-9a-f]{12}", name)
    assert argv[argv.index("--network") + 1] == "host"
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert {"--read-only", "no-new-privileges"} <= set(argv) and argv[argv.index("--cap-drop") + 1] == "ALL"
    volumes = {argv[i + 1] for i, flag in enumerate(argv) if flag == "--volume"}
    assert volumes == {
        f"{directory / 'provisioning'}:{directory / 'provisioning'}:ro",
        f"{directory / 'dashboards'}:{directory / 'dashboards'}:ro",
        f"{grafana.password_file(directory)}:{grafana.password_file(directory)}:ro",
        *(f"{directory / part}:{directory / part}" for part in ("data", "log", "plugins")),
    }
    env = dict(argv[i + 1].split("=", 1) for i, flag in enumerate(argv) if flag == "--env")
    assert (env["GF_SERVER_HTTP_ADDR"], env["GF_SERVER_HTTP_PORT"]) == ("127.0.0.1", "3456")
    assert env["GF_PATHS_PROVISIONING"] == str(directory / "provisioning")
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == str(grafana.password_file(directory))
    password = grafana.password_file(directory).read_text()
    # The file is mounted; the secret is never on a command line.
    assert password and password not in " ".join(argv)
    assert grafana.password_file(directory).stat().st_mode & 0o777 == 0o600
    assert argv[-1] == grafana_container.IMAGE
    assert re.fullmatch(r"docker\.io/grafana/grafana-oss:[0-9.]+@sha256:[0-9a-f]{64}", argv[-1])


# -- the container's life with the stack ------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, CLI, *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=150, cwd=PROJECT_DIR)


@pytest.fixture
def stack_env(tmp_path: Path, fake_docker: Path) -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env[CONFIG_ENV] = str(write_local_stack_file(tmp_path, 1, FLEET))
    env[STATE_DIR_ENV] = str(tmp_path / "state")
    try:
        yield env
    finally:
        cli("destroy", "--stack", "local", "--yes", env=env)


def _grafana_service(env: dict[str, str]) -> dict:
    status = json.loads(cli("status", "--stack", "local", "--json", env=env).stdout)
    return next(service for service in status["services"] if service["name"] == "grafana")


@pytest.mark.integration
def test_grafana_container_lives_and_dies_with_the_stack(
    stack_env: dict[str, str], fake_docker: Path
) -> None:
    env = stack_env
    started = cli("up", "--stack", "local", "--detach", "--json", env=env)
    assert started.returncode == 0, started.stderr
    outputs = json.loads(started.stdout.strip().splitlines()[-1])["outputs"]
    name = grafana_container.container_name(Path(env[STATE_DIR_ENV]))
    assert outputs["grafana_container"] == name and outputs["grafana_skipped"] is None
    assert outputs["grafana_url"].startswith("http://127.0.0.1:")
    (run,) = [call for call in _calls(fake_docker) if call[0] == "run"]
    assert run[run.index("--name") + 1] == name
    env_flags = dict(run[i + 1].split("=", 1) for i, flag in enumerate(run) if flag == "--env")
    assert outputs["grafana_url"].endswith(f":{env_flags['GF_SERVER_HTTP_PORT']}")
    # Grafana's datasources are this stack's Prometheus and Alertmanager, in the mounted folder.
    provisioning = Path(env_flags["GF_PATHS_PROVISIONING"])
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["url"] for s in sources] == [outputs["prometheus_url"], outputs["alertmanager_url"]]

    service = _grafana_service(env)
    assert service["state"] == "running" and service["kind"] == "grafana"
    logs = cli("logs", "--stack", "local", "grafana", "-n", "20", env=env)
    assert logs.returncode == 0 and "HTTP Server Listen" in logs.stdout

    # The client killed outright leaves its container behind; the restart removes it by name first.
    os.kill(service["pid"], signal.SIGKILL)
    def restarted() -> bool:
        service = _grafana_service(env)
        return service["restarts"] == 1 and service["state"] == "running"

    assert wait_until(restarted, 30, poll_s=0.25), _grafana_service(env)
    calls = [call[:1] + call[-1:] for call in _calls(fake_docker)]
    later = calls[calls.index(["run", grafana_container.IMAGE]) + 1 :]
    assert ["rm", name] in later and later.index(["rm", name]) < later.index(["run", grafana_container.IMAGE])

    stopped = cli("stop", "--stack", "local", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not list((fake_docker / "containers").glob("*.json"))  # nothing left running
    again = json.loads(cli("outputs", "--stack", "local", "--json", env=env).stdout)["outputs"]
    assert again["grafana_container"] == name  # the last run's, on a stopped stack
