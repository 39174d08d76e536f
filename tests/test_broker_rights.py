"""The pieces behind the broker's identities, without a broker: the rights file, the refusal counter,
and the subscriptions `tail` asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory_core.errors import UsageError
from factory_core.local_results import BrokerRefusals
from factory_core.verbs import TailRequest
from local_stack.broker_log import BrokerLogCounter
from local_stack.dynamic_security import BrokerAccess
from local_stack.tail import describe, topic_filters


def test_the_rights_file_denies_by_default_and_lists_members_in_their_groups() -> None:
    document = BrokerAccess(devices={"g1-site-00-c00": "site-00", "g1-site-00-c01": "site-00"}).document()
    assert not any(document["defaultACLAccess"].values())
    # Membership lives in the groups: a `groups` key on a client is ignored when the file is loaded.
    assert all(set(client) == {"username"} for client in document["clients"])
    groups = {group["groupname"]: group for group in document["groups"]}
    assert [c["username"] for c in groups["site-00"]["clients"]] == ["g1-site-00-c00", "g1-site-00-c01"]
    assert groups["site-99"]["clients"] == []  # every site has its group before it exists
    assert [c["username"] for c in groups["readers"]["clients"]] == ["rule-runner"]
    assert [c["username"] for c in groups["admins"]["clients"]] == ["iotfactory-admin"]
    roles = {role["rolename"]: role["acls"] for role in document["roles"]}
    assert {(acl["acltype"], acl["topic"]) for acl in roles["device-site-00"]} == {
        ("publishClientSend", "factory/simulator/site-00/#"),
        ("publishClientSend", "factory/simulator/ground-truth/site-00/#"),
    }
    assert all(acl["acltype"] != "publishClientSend" for acl in roles["readers"] + roles["observers"])
    with pytest.raises(ValueError, match="not a site id"):
        BrokerAccess(devices={"x": "readers"}).document()


def test_the_refusal_counter_reads_only_new_complete_lines(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_text("2026: Client a disconnected due to oversize packet.\n")  # an earlier run's
    counter = BrokerLogCounter(log)
    assert counter.counts() == BrokerRefusals()
    with log.open("a") as handle:
        handle.write("2026: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed\n")
        handle.write("2026: Client g1-site-00-c00 been disconnected by administrative action.\n")
        handle.write("2026: Client g1-site-00-c00 already connected, closing old connection.\n")
        handle.write("2026: Client b disconnected due to oversize pa")
    assert counter.counts() == BrokerRefusals(tls_refusals=1, sessions_cut=1, takeovers=1)
    with log.open("a") as handle:
        handle.write("cket.\n")
    assert counter.counts().oversize_disconnects == 1
    log.write_text("")  # replaced (a new file)
    log.write_text("2026: Client c disconnected due to oversize packet.\n")
    assert counter.counts().oversize_disconnects == 2


def test_tail_subscribes_to_exactly_what_was_asked() -> None:
    assert topic_filters(TailRequest()) == ("factory/simulator/+/+/+", "factory/simulator/ground-truth/+/+/+")
    assert topic_filters(TailRequest(site="site-03", kind="ground_truth")) == (
        "factory/simulator/ground-truth/site-03/+/+",
    )
    machine = "site-03-line-02-conveyor-01"
    assert topic_filters(TailRequest(machine=machine, kind="telemetry")) == (
        f"factory/simulator/site-03/line-02/{machine}",
    )
    for bad, fragment in [
        (TailRequest(site="#"), "--site"),
        (TailRequest(site="site-00/+"), "--site"),
        (TailRequest(machine="site-03/#"), "--machine"),
        (TailRequest(site="site-00", machine=machine), "not one of site-00's"),
        (TailRequest(kind="events"), "--kind"),
        (TailRequest(count=0), "--count"),
    ]:
        with pytest.raises(UsageError, match=fragment):
            topic_filters(bad)


def test_tail_describes_what_it_cannot_decode() -> None:
    message = describe("factory/simulator/site-00/line-01/m", b"\xff not json")
    assert (message.site, message.line, message.machine, message.payload_kind) == (
        "site-00", "line-01", "m", "telemetry"
    )
    assert message.payload is None and message.excerpt is not None and "not json" in message.excerpt
    odd = describe("factory/simulator/x", b"[1]")
    assert odd.payload_kind is None and odd.site is None and odd.excerpt == "[1]"
