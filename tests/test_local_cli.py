"""`python cli.py ... --stack local` as a user runs it: exit codes, one-line errors, a stack's whole life."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support_local_stack import cli_process as cli
from support_local_stack import write_local_stack_file

from local_stack.paths import CONFIG_ENV, PROJECT_DIR, STATE_DIR_ENV
from local_stack.processes import pid_alive, wait_gone
from local_stack.verify import verify_archive

CLI = str(PROJECT_DIR / "cli.py")


FLEET = {"seed": 5, "lines_per_site": 1, "publish_interval_s": 0.5}


def stack_file(directory: Path, simulators: int = 2, **local: object) -> Path:
    return write_local_stack_file(directory, simulators, FLEET, **local)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment[CONFIG_ENV] = str(stack_file(tmp_path))
    environment[STATE_DIR_ENV] = str(tmp_path / "state")
    return environment


def result_line(stdout: str) -> dict:
    """The result of a `--json` verb: the last line (progress events come before it)."""
    return json.loads(stdout.strip().splitlines()[-1])


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def bin_dir_with(tmp_path: Path, *programs: str) -> str:
    """A PATH holding only the named system programs: the others look uninstalled."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for program in programs:
        for candidate in ("/usr/sbin", "/usr/bin"):
            if os.access(f"{candidate}/{program}", os.X_OK):
                (folder / program).symlink_to(f"{candidate}/{program}")
    return str(folder)


def test_missing_mosquitto(env: dict[str, str], tmp_path: Path) -> None:
    env["PATH"] = bin_dir_with(tmp_path, "prometheus")
    assert_one_line_error(cli("up", "--stack", "local", "--detach", env=env), "mosquitto", "apt-get install")


def test_missing_prometheus(env: dict[str, str], tmp_path: Path) -> None:
    env["PATH"] = bin_dir_with(tmp_path, "mosquitto")
    assert_one_line_error(cli("up", "--stack", "local", env=env), "prometheus", "apt-get install prometheus")


def test_port_in_use(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env[CONFIG_ENV] = str(stack_file(tmp_path, brokerPort=port))
        result = cli("up", "--stack", "local", "--detach", env=env)
    assert_one_line_error(result, f"port {port}", "iotfactory:local.brokerPort")
    assert not (tmp_path / "state" / "state.json").exists()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("config:\n  iotfactory:local: {brokerPort: [\n", "not valid YAML"),
        ("config:\n  iotfactory:local: {scrapeIntervalS: -1}\n", "iotfactory:local.scrapeIntervalS"),
        (
            "config:\n  iotfactory:fleet: {machines_per_line: {robot: 2}}\n",
            "iotfactory:fleet.machines_per_line",
        ),
    ],
)
def test_malformed_config(env: dict[str, str], tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    env[CONFIG_ENV] = str(config)
    for verb in (("up", "--stack", "local"), ("scale", "--stack", "local", "--simulators", "2")):
        assert_one_line_error(cli(*verb, env=env), fragment, str(config))


def test_commands_on_a_stack_that_never_ran(env: dict[str, str]) -> None:
    status = cli("status", "--stack", "local", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is False
    assert_one_line_error(cli("outputs", "--stack", "local", env=env), "up --stack local")
    assert_one_line_error(cli("logs", "--stack", "local", env=env), "no logs")
    assert_one_line_error(cli("rotate-certs", "--stack", "local", env=env), "no device certificates")
    destroyed = cli("destroy", "--stack", "local", "--yes", env=env)
    assert destroyed.returncode == 0 and "nothing to destroy" in destroyed.stdout
    assert_one_line_error(cli("scale", "--stack", "local", "--simulators", "0", env=env), "1..50")


def test_destroy_refuses_a_folder_that_is_not_a_stack(env: dict[str, str], tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    env[STATE_DIR_ENV] = str(precious)
    assert_one_line_error(cli("destroy", "--stack", "local", "--yes", env=env), "refusing to delete")
    assert (precious / "thesis.txt").exists()


FAKE_GRAFANA = textwrap.dedent("""\
    #!{python}
    # Stands in for grafana-server: records what it was given and answers HTTP until SIGTERM.
    import http.server, json, os, signal, sys
    record = {{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("GF_")}}}}
    with open(os.environ["FAKE_GRAFANA_RECORD"], "w") as out:
        json.dump(record, out)
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["GF_SERVER_HTTP_PORT"])),
                                    http.server.SimpleHTTPRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
""")


@pytest.fixture
def detached_env(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PATH with a stand-in grafana-server; whatever the test starts is destroyed afterwards."""
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    grafana = fake_bin / "grafana-server"
    grafana.write_text(FAKE_GRAFANA.format(python=sys.executable))
    grafana.chmod(0o755)
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    env["FAKE_GRAFANA_RECORD"] = str(tmp_path / "grafana-record.json")
    try:
        yield env
    finally:
        cli("destroy", "--stack", "local", "--yes", env=env)


def test_detached_stack_lifecycle(detached_env: dict[str, str], tmp_path: Path) -> None:
    env = detached_env
    state = Path(env[STATE_DIR_ENV])
    started = cli("up", "--stack", "local", "--detach", "--json", env=env)
    assert started.returncode == 0, started.stderr
    report = result_line(started.stdout)
    outputs = report["outputs"]
    assert report["running"] and report["first_archived_after_s"] > 0
    assert outputs["broker_url"].startswith("mqtts://127.0.0.1:")
    assert outputs["grafana_url"].startswith("http://127.0.0.1:") and outputs["grafana_skipped"] is None
    assert Path(outputs["ca_certificate"]).is_file() and Path(outputs["archive"]).is_dir()

    again = cli("up", "--stack", "local", "--detach", env=env)
    assert_one_line_error(again, "already running", str(report["supervisor_pid"]))

    status = json.loads(cli("status", "--stack", "local", "--json", env=env).stdout)
    assert status["running"] and status["simulators"] == {"desired": 2, "up": 2}
    names = {service["name"] for service in status["services"]}
    assert names == {
        "broker", "rule-runner", "prometheus", "alertmanager", "grafana", "simulator-00", "simulator-01"
    }
    assert all(service["state"] == "running" for service in status["services"])
    pids = [status["supervisor_pid"], *(service["pid"] for service in status["services"])]

    human = cli("status", "--stack", "local", env=env)
    assert human.returncode == 0 and "simulators 2/2 up" in human.stdout and "msg/s" in human.stdout
    assert json.loads(cli("outputs", "--stack", "local", "--json", env=env).stdout)["outputs"] == outputs

    broker_log = cli("logs", "--stack", "local", "broker", "-n", "3", env=env)
    assert broker_log.returncode == 0 and len(broker_log.stdout.strip().splitlines()) == 3
    everything = cli("logs", "--stack", "local", "-n", "1", env=env)
    assert "==> simulator-01 <==" in everything.stdout and "==> rule-runner <==" in everything.stdout
    assert_one_line_error(cli("logs", "--stack", "local", "mosquitto", env=env), "broker", "simulator-00")
    # Grafana got the provisioning of the config bundle, on this stack's Prometheus.
    record = json.loads((tmp_path / "grafana-record.json").read_text())
    provisioning = Path(record["env"]["GF_PATHS_PROVISIONING"])
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == outputs["prometheus_url"]
    assert list((state / "grafana" / "dashboards").glob("*.json"))
    password_file = Path(outputs["grafana_password_file"])
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert record["env"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == str(password_file)
    assert record["env"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"

    follower = subprocess.Popen(
        [sys.executable, CLI, "logs", "--stack", "local", "-f", "-n", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT_DIR,
    )
    time.sleep(1.5)
    scaled = cli("scale", "--stack", "local", "--simulators", "3", env=env)
    time.sleep(1.0)
    follower.send_signal(signal.SIGINT)
    followed, _ = follower.communicate(timeout=10)
    assert follower.returncode == 0
    # `logs -f` picks up the new simulator's log and the broker's line about its connection.
    assert any(line.startswith("simulator-02 | plan: site-02") for line in followed.splitlines()), followed
    assert "as g1-site-02-c00" in followed
    assert scaled.returncode == 0, scaled.stderr
    assert "scaled from 2 to 3" in scaled.stdout
    assert yaml.safe_load(Path(env[CONFIG_ENV]).read_text())["config"]["iotfactory:simulatorCount"] == 3

    # Secrets stay secret: keys are private, and no output or log holds one.
    keys = list(state.rglob("*.key"))
    assert keys and all(key.stat().st_mode & 0o777 == 0o600 for key in keys)
    password = password_file.read_text()
    printed = started.stdout + human.stdout + everything.stdout + scaled.stdout
    logs = "".join(path.read_text(errors="replace") for path in (state / "logs").glob("*.log"))
    for text in (printed, logs):
        assert "PRIVATE KEY" not in text and password not in text

    assert_one_line_error(cli("destroy", "--stack", "local", env=env), "--yes")
    assert all(pid_alive(pid) for pid in pids)
    destroyed = cli("destroy", "--stack", "local", "--yes", env=env)
    assert destroyed.returncode == 0, destroyed.stderr
    assert not state.exists()
    assert wait_gone(pids, 5.0), [pid for pid in pids if pid_alive(pid)]


def test_foreground_up_stops_cleanly_on_ctrl_c(env: dict[str, str]) -> None:
    state = Path(env[STATE_DIR_ENV])
    process = subprocess.Popen(
        [sys.executable, CLI, "up", "--stack", "local"],
        env=env,
        cwd=PROJECT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        archived = 0.0
        while time.monotonic() < deadline and archived < 20:
            time.sleep(0.5)
            result = cli("status", "--stack", "local", "--json", env=env)
            status = json.loads(result.stdout) if result.returncode == 0 else {}
            archived = float(status.get("pipeline", {}).get("archived_total", 0))
        assert archived >= 20, status
        assert_one_line_error(cli("up", "--stack", "local", "--detach", env=env), "already running")
        pids = [service["pid"] for service in status["services"]]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "Ctrl-C stops everything cleanly" in out
    assert "stopping 2 simulator(s): draining" in out and "stopped; the archive" in out
    assert wait_gone(pids, 5.0)
    assert cli("status", "--stack", "local", "--json", env=env).returncode == 0
    from local_stack.archive import LocalArchive

    report = verify_archive(LocalArchive(state / "archive"))
    assert report.ok and report.missing == 0 and report.unique >= 20
    assert cli("verify", "--stack", "local", env=env).returncode == 0
