"""The running local stack's identities: `tail` and its `mosquitto_sub` equivalent, a site that
tries to write another site's machines, and what `status` shows of the broker's refusals.

One stack serves the module (starting one costs seconds); the cross-site attempt is reconciled
with `verify` after a clean stop at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from support_local_stack import admitted_device, write_local_stack_file
from support_mqtt import tls_client

from factory_core.fleet import telemetry_topic
from factory_core.mqtt_wire import PUBLISH_QOS1, connect_packet, fixed_header, topic_field
from local_stack.archive import LocalArchive
from local_stack.certificate_authority import CA_CERT_FILE, IssuedCertificate
from local_stack.control import request
from local_stack.paths import CONFIG_ENV, PROJECT_DIR, STATE_DIR_ENV, StatePaths
from local_stack.verify import verify_archive

pytestmark = pytest.mark.integration

CLI = str(PROJECT_DIR / "cli.py")
DOCS = PROJECT_DIR / "docs" / "local-stack.md"
FLEET = {"seed": 17, "lines_per_site": 1, "publish_interval_s": 0.25}


@dataclass
class Stack:
    env: dict[str, str]
    paths: StatePaths

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, CLI, *args], env=self.env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=timeout, cwd=PROJECT_DIR,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, CLI, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, cwd=PROJECT_DIR,
        )

    @property
    def port(self) -> int:
        return int(request(self.paths, "outputs", timeout_s=10)["broker_port"])

    def broker_log(self) -> str:
        return (self.paths.logs_dir / "broker.log").read_text(errors="replace")

    def device(self, common_name: str, site: str) -> IssuedCertificate:
        """A device certificate the broker admits as one of `site`'s (as `scale` admits one)."""
        return admitted_device(self.paths, self.port, common_name, site, self.paths.root / "test-devices")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("identity-stack")
    env = dict(os.environ)
    env[CONFIG_ENV] = str(write_local_stack_file(root, 2, FLEET))
    env[STATE_DIR_ENV] = str(root / "state")
    running = Stack(env, StatePaths(root / "state"))
    started = running.cli("up", "--stack", "local", "--detach", "--json")
    assert started.returncode == 0, started.stderr
    try:
        yield running
    finally:
        running.cli("destroy", "--stack", "local", "--yes")


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_tail_streams_readable_messages_and_filters_them(stack: Stack) -> None:
    shown = stack.cli("tail", "--stack", "local", "--count", "3")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 message(s) on factory/simulator/")
    line_shape = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} site-0[01]/line-01/site-0[01]-line-01-\w+-\d\d #\d+ ")
    assert all(line_shape.match(line) for line in lines[:3]), lines

    filtered = stack.cli(
        "tail", "--stack", "local", "--site", "site-01", "--kind", "telemetry", "-n", "5", "--json"
    )
    assert filtered.returncode == 0, filtered.stderr
    *messages, result = _events(filtered.stdout)
    assert [m["event"] for m in messages] == ["message"] * 5
    assert all(m["site"] == "site-01" and m["payload_kind"] == "telemetry" for m in messages)
    assert all(m["payload"]["site"] == "site-01" for m in messages)
    assert all(m["topic"].startswith("factory/simulator/site-01/") for m in messages)
    assert result["event"] == "result" and result["messages"] == 5
    assert result["topic_filters"] == ["factory/simulator/site-01/+/+"]

    machine = messages[0]["machine"]
    one = stack.cli("tail", "--stack", "local", "--machine", machine, "-n", "2", "--json")
    *messages, result = _events(one.stdout)
    assert {m["machine"] for m in messages} == {machine}
    assert result["topic_filters"] == [
        f"factory/simulator/site-01/line-01/{machine}",
        f"factory/simulator/ground-truth/site-01/line-01/{machine}",
    ]

    bad = stack.cli("tail", "--stack", "local", "--site", "factory/#")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --site"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1


def test_tails_get_identities_of_their_own_and_end_cleanly_on_ctrl_c(stack: Stack) -> None:
    first = stack.popen("tail", "--stack", "local", "--json")
    second = stack.popen("tail", "--stack", "local", "--json", "-n", "40")
    try:
        assert first.stdout is not None
        assert json.loads(first.stdout.readline())["event"] == "message"
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert len(_events(out)) == 41
    finally:
        first.send_signal(signal.SIGINT)
        rest, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert "Traceback" not in err
    results = [_events(rest)[-1], _events(out)[-1]]
    assert all(result["event"] == "result" for result in results)
    identities = {result["identity"] for result in results}
    assert len(identities) == 2 and all(re.fullmatch(r"observer-[0-9a-f]{8}", name) for name in identities)
    log = stack.broker_log()
    for name in identities:
        # Neither closed the other, and each identity was deleted again when its `tail` ended.
        assert f"Client {name} already connected" not in log
        assert f"deleteClient | username={name}" in log
    assert not list((stack.paths.certs_dir / "observers").glob("*"))


def test_the_documented_mosquitto_sub_command_works(stack: Stack) -> None:
    text = DOCS.read_text()
    block = text.split("<!-- tail-equivalent: run by tests/test_local_stack_identity.py -->", 1)[1]
    command = block.split("```", 2)[1].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[0] == "mosquitto_sub"
    argv = [arg.replace(".factory/local", str(stack.paths.root)) for arg in argv]
    argv[argv.index("-p") + 1] = str(stack.port)
    shown = subprocess.run([*argv, "-C", "3", "-W", "30"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        topic, payload = line.split(" ", 1)
        assert topic.startswith("factory/simulator/")
        assert json.loads(payload)["site"] in ("site-00", "site-01")


def _oversize_publish(stack: Stack, cert: IssuedCertificate) -> None:
    context = ssl.create_default_context(cafile=str(stack.paths.ca_dir / CA_CERT_FILE))
    context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    with (
        socket.create_connection(("127.0.0.1", stack.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(connect_packet("big", 30, clean_session=True))
        assert tls.recv(4)[:1] == b"\x20"
        topic = topic_field("factory/simulator/site-01/line-01/x")
        tls.sendall(fixed_header(PUBLISH_QOS1, 50_000_000) + topic + b"\x00\x01")
        try:
            for _ in range(200):
                tls.sendall(b"\x00" * 65536)
        except OSError:
            return
    raise AssertionError("the broker took 13 MB of a 50 MB publish without cutting the client")


def test_a_site_writes_only_its_own_machines_and_status_shows_refusals(stack: Stack) -> None:
    tailed = stack.cli(
        "tail", "--stack", "local", "--site", "site-00", "--kind", "telemetry", "-n", "1", "--json"
    )
    victim = _events(tailed.stdout)[0]["payload"]  # a real site-00 telemetry payload
    marker_seq = 900_000
    intruder = stack.device("intruder-site-01", "site-01")
    client = tls_client(stack.paths.ca_dir / CA_CERT_FILE, intruder, victim["machine"])
    client.connect("127.0.0.1", stack.port)
    client.loop_start()
    forged = {**victim, "seq": marker_seq}
    own = {**victim, "site": "site-01", "seq": marker_seq}  # its own site, site-00's machine id
    another_type = "conveyor" if victim["type"] != "conveyor" else "cnc_mill"  # the tail's pick varies
    other_type = victim["machine"].replace(victim["type"], another_type).replace("site-00", "site-01")
    typed = {**own, "machine": other_type}
    attempts = [
        # Straight into site-00's stream: the broker refuses the topic (3.1.1: a normal PUBACK).
        (telemetry_topic("site-00", victim["line"], victim["machine"]), forged),
        # Site-00's payload on its own topics: the topic does not match the payload.
        (telemetry_topic("site-01", victim["line"], victim["machine"]), forged),
        # Its own site in payload and topic, but site-00's machine id, or one of another type.
        (telemetry_topic("site-01", own["line"], own["machine"]), own),
        (telemetry_topic("site-01", typed["line"], typed["machine"]), typed),
    ]
    try:
        for topic, payload in attempts:
            client.publish(topic, orjson.dumps(payload), qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()

    _oversize_publish(stack, intruder)
    deadline = time.monotonic() + 10
    shown = ""
    while "cut for an oversize packet" not in shown and time.monotonic() < deadline:
        time.sleep(0.2)
        shown = " ".join(stack.cli("status", "--stack", "local").stdout.split())  # rich wraps at 80
    assert "broker refused: 1 client(s) cut for an oversize packet" in shown
    assert "`python cli.py logs broker`" in shown
    document = _events(stack.cli("status", "--stack", "local", "--json").stdout)[-1]
    assert document["broker_refusals"]["oversize_disconnects"] == 1

    assert stack.cli("stop", "--stack", "local").returncode == 0
    report = verify_archive(LocalArchive(stack.paths.default_archive_dir))
    assert report.quarantined.get("topic_mismatch") == 1
    assert report.quarantined.get("machine_mismatch") == 2
    # Nothing of the intruder's reached any stream: no marker seq, no site-01 stream of a site-00 machine.
    assert all(stream.last_seq < marker_seq for stream in report.streams)
    assert all(stream.machine.startswith(stream.site + "-") for stream in report.streams)
    assert report.missing == 0 and report.duplicates == 0
