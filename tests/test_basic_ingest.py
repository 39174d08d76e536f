"""Basic Ingest (archive mode basic-ingest): the topic names, the simulator's prefix setting, the local
broker's ACL, and the local stack end to end with real Mosquitto (which has no rules engine)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from support_local_stack import admitted_device, run_cli, write_local_stack_file
from support_mqtt import tls_client

from factory_core import stack_file
from factory_core.archive_modes import (
    archive_rule_name,
    basic_ingest_prefix,
    ingest_prefix,
    strip_basic_ingest,
)
from factory_core.errors import UsageError
from factory_core.fleet import telemetry_topic
from local_stack import stack_config
from local_stack.archive import LocalArchive
from local_stack.certificate_authority import CA_CERT_FILE
from local_stack.control import ControlClient, request
from local_stack.dynamic_security import OBSERVERS_GROUP, READERS_GROUP, BrokerAccess, site_role
from local_stack.paths import CONFIG_ENV, STATE_DIR_ENV, StatePaths
from local_stack.processes import pid_alive
from local_stack.readiness import wait_until
from local_stack.state_file import read_state
from local_stack.verify import verify_archive
from simulator.config_loader import load_run_config

LOCAL_RULE = "iotfactory_local_archive"
LOCAL_PREFIX = f"$aws/rules/{LOCAL_RULE}/"


def test_topic_names() -> None:
    assert archive_rule_name("iotfactory", "prod") == "iotfactory_prod_archive"
    assert archive_rule_name("iotfactory", "my-dev.2") == "iotfactory_my_dev_2_archive"
    assert ingest_prefix("basic-ingest", "r1") == basic_ingest_prefix("r1") == "$aws/rules/r1/"
    assert ingest_prefix("batched", "r1") == ingest_prefix("direct", "r1") == ""
    topic = telemetry_topic("site-00", "line-01", "m")
    assert strip_basic_ingest(f"$aws/rules/r1/{topic}") == ("r1", topic)
    assert strip_basic_ingest(topic) == (None, topic)
    with pytest.raises(ValueError, match="not a topic rule name"):
        basic_ingest_prefix("bad/name")


def test_the_simulator_takes_its_prefix_from_the_environment_or_a_flag() -> None:
    from_env = load_run_config([], {"FACTORY_TOPIC_PREFIX": LOCAL_PREFIX})
    assert from_env.connection.topic_prefix == LOCAL_PREFIX
    assert (
        load_run_config(["--topic-prefix", "$aws/rules/r2/"], {}).connection.topic_prefix == "$aws/rules/r2/"
    )
    assert load_run_config([], {}).connection.topic_prefix == ""
    for wrong in ("factory/", "$aws/rules/r1", "$aws/things/t/shadow/", "$aws/rules/a b/"):
        with pytest.raises(UsageError) as caught:
            load_run_config([], {"FACTORY_TOPIC_PREFIX": wrong})
        assert "topic_prefix" in str(caught.value) and "FACTORY_TOPIC_PREFIX" in str(caught.value)


def test_the_local_rights_mirror_the_cloud_policy_behind_the_prefix() -> None:
    def acls(prefix: str) -> dict[str, list[tuple[str, str]]]:
        roles = BrokerAccess(publish_prefix=prefix).document()["roles"]
        return {role["rolename"]: [(acl["acltype"], acl["topic"]) for acl in role["acls"]] for role in roles}

    plain, prefixed = acls(""), acls(LOCAL_PREFIX)
    assert ("publishClientSend", "factory/simulator/site-00/#") in plain[site_role("site-00")]
    assert prefixed[site_role("site-00")] == [
        ("publishClientSend", f"{LOCAL_PREFIX}factory/simulator/site-00/#"),
        ("publishClientSend", f"{LOCAL_PREFIX}factory/simulator/ground-truth/site-00/#"),
    ]
    assert ("subscribePattern", f"{LOCAL_PREFIX}factory/simulator/#") in prefixed[READERS_GROUP]
    assert ("subscribePattern", "factory/simulator/#") not in prefixed[READERS_GROUP]
    # Observers (`tail`) watch where the devices write.
    assert prefixed[OBSERVERS_GROUP] == prefixed[READERS_GROUP]


def test_the_local_stack_file_takes_the_cloud_archive_modes(tmp_path: Path) -> None:
    path = write_local_stack_file(tmp_path, 1, {"seed": 1})
    assert stack_config.load(path).archive_mode == "batched" and stack_config.load(path).topic_prefix == ""
    set_archive_mode(path, "basic-ingest")
    loaded = stack_config.load(path)
    assert (loaded.archive_mode, loaded.topic_prefix) == ("basic-ingest", LOCAL_PREFIX)
    set_archive_mode(path, "weekly")
    with pytest.raises(
        UsageError, match="iotfactory:archiveMode: must be one of direct, batched, basic-ingest"
    ):
        stack_config.load(path)


def set_archive_mode(path: Path, mode: str) -> None:
    document = yaml.safe_load(path.read_text())
    document[stack_file.CONFIG_FIELD][stack_file.ARCHIVE_MODE_KEY] = mode
    path.write_text(stack_file.render(document, "# basic ingest test\n"))


# --- end to end ------------------------------------------------------------------------------------


class Listener:
    """A client of the running stack that counts (topic, machine) of what it receives on a filter."""

    def __init__(self, ca_file: Path, cert: Any, client_id: str, port: int, topic_filter: str) -> None:
        self.received: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = tls_client(ca_file, cert, client_id)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((message.topic, orjson.loads(message.payload).get("machine", "")))

    def topics(self) -> list[str]:
        with self.lock:
            return [topic for topic, _ in self.received]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.integration
def test_local_stack_in_basic_ingest_mode_archives_through_the_rules_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_local_stack_file(tmp_path, 1, {"seed": 5, "lines_per_site": 1, "publish_interval_s": 0.25})
    set_archive_mode(config, "basic-ingest")
    state = tmp_path / "state"
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    paths = StatePaths(state)
    pids: list[int] = []
    assert run_cli("up", "--stack", "local", "--detach", "--yes", "--json").exit_code == 0
    try:
        recorded = read_state(paths)
        assert recorded is not None
        pids = [recorded.supervisor_pid, *recorded.pids]
        port = int(request(paths, "outputs", timeout_s=10)["broker_port"])
        ca_file = paths.ca_dir / CA_CERT_FILE
        control = ControlClient(paths, timeout_s=30.0)
        # Two read-only identities lent as `tail` borrows them (one certificate per connection).
        readers = [control.lend_observer() for _ in range(2)]
        lent = [SimpleNamespace(cert_path=Path(g.cert), key_path=Path(g.key)) for g in readers]
        # `#` never matches a `$` topic (MQTT 3.1.1, 4.7.2): only the explicit filter sees the fleet.
        rules_topic = Listener(ca_file, lent[0], "test-rules", port, f"{LOCAL_PREFIX}factory/simulator/#")
        wildcard = Listener(ca_file, lent[1], "test-wildcard", port, "#")
        arrived = wait_until(lambda: len(rules_topic.topics()) > 20, 30)
        assert arrived, "no simulator messages on the rule's topic"
        assert all(
            topic.startswith(f"{LOCAL_PREFIX}factory/simulator/site-00/") or "ground-truth" in topic
            for topic in rules_topic.topics()
        )

        # The ACL, as the cloud policy: site-00 may publish behind the prefix on its own site only.
        device_cert = admitted_device(paths, port, "test-device-site-00", "site-00", tmp_path / "device")
        device = tls_client(ca_file, device_cert, "test-site-00")
        device.connect("127.0.0.1", port)
        device.loop_start()
        own = f"{LOCAL_PREFIX}{telemetry_topic('site-00', 'line-99', 'acl-own')}"
        other = f"{LOCAL_PREFIX}{telemetry_topic('site-01', 'line-99', 'acl-other')}"
        for topic, machine in ((other, "acl-other"), (own, "acl-own")):
            device.publish(topic, json.dumps({"machine": machine}), qos=1).wait_for_publish(10)
        assert wait_until(lambda: own in rules_topic.topics(), 10), "the device's own publish did not arrive"
        assert other not in rules_topic.topics()  # published before `own`, on one connection: refused
        device.loop_stop()
        device.disconnect()
        assert wildcard.topics() == []
        rules_topic.stop()
        wildcard.stop()

        assert run_cli("stop", "--stack", "local", "--json").exit_code == 0
        report = verify_archive(LocalArchive(paths.default_archive_dir))
        # The rule runner archived the stripped topics: every simulator message passes the topic check
        # (only the test's own hand-made payload is quarantined: it is not a valid telemetry document).
        assert report.missing == 0 and report.messages > 20
        assert report.quarantined_total == 1
    finally:
        run_cli("stop", "--stack", "local", "--json")
        leftovers = [pid for pid in pids if pid_alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes outlived the stack: {leftovers}"
