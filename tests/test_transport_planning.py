"""Connection planning against the AWS quotas, the quota governor, and the bounded offline queue."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import Pki

from factory_core.connection_plan import plan_connections
from factory_core.fleet import (
    IOT_MAX_INFLIGHT_QOS1_PER_CLIENT,
    IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION,
    Engine,
    FleetSettings,
)
from simulator.transport import make_publisher
from simulator.transport.publisher import TokenBucket, TransportOptions


@dataclass(frozen=True)
class Note:
    topic: str
    payload: bytes
    kind: str = "telemetry"


def test_ten_thousand_machines_get_125_connections_under_the_quota() -> None:
    fleet = FleetSettings(lines_per_site=10, machines_per_line={"conveyor": 1000})
    plan = plan_connections(fleet, 3, "iotfactory-")
    assert plan.machines == 10_000
    assert plan.connections == 125
    assert plan.per_connection_rate <= fleet.max_publishes_per_connection
    assert plan.per_connection_rate < IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION
    assert plan.window <= IOT_MAX_INFLIGHT_QOS1_PER_CLIENT
    assert plan.client_ids[0] == "iotfactory-site-03-c00"
    assert len(set(plan.client_ids)) == 125
    per_connection = [0] * plan.connections
    for machine in range(plan.machines):
        per_connection[plan.connection_for(machine)] += 1
    assert max(per_connection) - min(per_connection) <= 1
    assert "10000 machines" in plan.describe("fleet", 1, "broker:8883")


def test_small_fleets_use_one_connection_and_never_more_than_machines() -> None:
    assert plan_connections(FleetSettings(), 0, "p-").connections == 1
    tiny = FleetSettings(lines_per_site=1, machines_per_line={"cnc_mill": 2}, publish_interval_s=0.001)
    assert plan_connections(tiny, 0, "p-").connections == 2


def test_account_quota_warning() -> None:
    fleet = FleetSettings(lines_per_site=10, machines_per_line={"conveyor": 2500})
    (warning,) = plan_connections(fleet, 0, "p-").quota_warnings()
    assert "25000 msg/s" in warning and "quota" in warning


def test_governor_never_exceeds_its_rate() -> None:
    bucket = TokenBucket(rate=100.0, burst=20.0)
    start = bucket.updated
    sent = sum(1 for step in range(10_000) if bucket.take(start + step * 0.0001))  # one second
    assert 100 <= sent <= 120  # 100/s plus the initial burst


@pytest.mark.parametrize("engine", [Engine.FLEET, Engine.SDK])
def test_offline_queue_is_bounded_and_drops_the_oldest(pki: Pki, engine: Engine) -> None:
    plan = plan_connections(FleetSettings(), 0, "bound-")
    options = TransportOptions(
        endpoint="127.0.0.1",
        port=1,
        ca_path=pki.ca.ca_cert_path,
        cert_path=pki.device.cert_path,
        key_path=pki.device.key_path,
        queue_limit_per_connection=3,
    )
    publisher = make_publisher(engine, plan, options)  # never started: every message stays queued
    try:
        for number in range(10):
            publisher.submit(0, Note("factory/simulator/site-00/line-01/m", str(number).encode()))
        assert publisher.queued(0) == 3
        snapshot = publisher.snapshot()
        assert snapshot.failures == {"queue_full": 7}
        assert snapshot.queued == 3 and snapshot.connections_up == 0
    finally:
        publisher.close()
    assert publisher.snapshot().failures["shutdown"] == 3
