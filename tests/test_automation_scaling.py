"""Scale plans: bounds, the account publish quota, connections per simulator."""

from __future__ import annotations

import pytest

from automation.scaling import BoundsError, QuotaVerdict, ScaleLimits, plan_scale
from factory_core.connection_plan import plan_connections
from factory_core.fleet import IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION, FleetSettings


def fleet(machines_per_line: int, interval_s: float = 1.0, cap: int = 80) -> FleetSettings:
    return FleetSettings(
        lines_per_site=2,
        machines_per_line={"cnc_mill": machines_per_line},
        publish_interval_s=interval_s,
        max_publishes_per_connection=cap,
    )


def test_rate_is_per_site_rate_times_simulators() -> None:
    plan = plan_scale(10, FleetSettings(), ScaleLimits())
    assert plan.publishes_per_second == FleetSettings().publishes_per_second_per_site * 10
    assert plan.verdict is QuotaVerdict.OK


def test_connections_follow_the_simulators_own_plan() -> None:
    settings = fleet(1000, interval_s=0.5)  # 4,000 msg/s per simulator
    plan = plan_scale(3, settings, ScaleLimits(account_publishes_per_second=1_000_000))
    per_simulator = plan_connections(settings, 0, "x").connections
    assert plan.connections == 3 * per_simulator == 3 * 50
    assert plan.publishes_per_second_per_connection <= IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION


@pytest.mark.parametrize(
    ("count", "verdict"),
    [
        (8, QuotaVerdict.OK),
        (9, QuotaVerdict.NEAR_QUOTA),
        (10, QuotaVerdict.NEAR_QUOTA),
        (11, QuotaVerdict.OVER_QUOTA),
    ],
)
def test_verdict_against_the_default_account_quota(count: int, verdict: QuotaVerdict) -> None:
    plan = plan_scale(count, fleet(1000), ScaleLimits())  # 2,000 msg/s per simulator
    assert plan.verdict is verdict
    assert plan.max_simulators_within_quota == 10


def test_over_quota_explains_the_throttle_and_the_way_out() -> None:
    text = plan_scale(11, fleet(1000), ScaleLimits()).explanation()
    assert "22,000 msg/s" in text and "110.0% of the account's 20,000 publishes/s" in text
    assert "throttle" in text and "at most 10 simulators" in text
    assert "iotfactory:iotPublishQuotaPerSecond" in text


def test_a_raised_quota_moves_the_limit() -> None:
    plan = plan_scale(11, fleet(1000), ScaleLimits(account_publishes_per_second=100_000))
    assert plan.verdict is QuotaVerdict.OK and plan.max_simulators_within_quota == 50


def test_large_fleets_get_a_connect_rate_note() -> None:
    plan = plan_scale(30, fleet(1000), ScaleLimits(account_publishes_per_second=1_000_000))
    assert plan.connections == 30 * 25
    assert "500 connects/s" in (plan.connect_note() or "")
    assert plan_scale(2, FleetSettings(), ScaleLimits()).connect_note() is None


@pytest.mark.parametrize("count", [-1, 3, 9])
def test_bounds(count: int) -> None:
    with pytest.raises(BoundsError, match=f"--simulators {count} is outside this stack's bounds 4..8"):
        plan_scale(count, FleetSettings(), ScaleLimits(min_simulators=4, max_simulators=8))


def test_zero_simulators_pauses_the_fleet() -> None:
    plan = plan_scale(0, FleetSettings(), ScaleLimits())
    assert plan.publishes_per_second == 0 and plan.connections == 0 and plan.verdict is QuotaVerdict.OK
