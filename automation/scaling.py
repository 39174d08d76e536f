"""What a fleet of N simulators asks of AWS IoT Core, and whether the account's quotas allow it.

Pure: the numbers come from `FleetSettings` and the documented IoT Core quotas in
`factory_core.fleet`, so `scale` explains a throttle before it happens instead of after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from factory_core.connection_plan import plan_connections
from factory_core.fleet import (
    CLOUD_SIMULATORS,
    IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND,
    IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION,
    FleetSettings,
)
from factory_core.stack_file import PUBLISH_QUOTA_KEY

# A stack's own bounds (iotfactory:minSimulators/maxSimulators) default to these; they narrow the
# fleet schema's limit (factory_core.fleet.CLOUD_SIMULATORS), which `scale` never exceeds.
DEFAULT_MIN_SIMULATORS = CLOUD_SIMULATORS.minimum
DEFAULT_MAX_SIMULATORS = 50
# AWS IoT Core accepts 500 CONNECT requests/s per account; a larger fleet must stagger its connects.
IOT_DEFAULT_ACCOUNT_CONNECTS_PER_SECOND = 500
# Above this share of the account quota a scale is allowed but flagged: other workloads in the
# same account and region draw from the same quota.
NEAR_QUOTA_RATIO = 0.8


class QuotaVerdict(StrEnum):
    """What a planned fleet asks of the account's IoT Core publish quota."""

    OK = "ok"
    NEAR_QUOTA = "near-quota"
    OVER_QUOTA = "over-quota"


@dataclass(frozen=True)
class ScaleLimits:
    min_simulators: int = DEFAULT_MIN_SIMULATORS
    max_simulators: int = DEFAULT_MAX_SIMULATORS
    account_publishes_per_second: int = IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND


@dataclass(frozen=True)
class ScalePlan:
    simulators: int
    publishes_per_second: float
    connections: int
    publishes_per_second_per_connection: float
    account_publishes_per_second: int
    max_simulators_within_quota: int
    verdict: QuotaVerdict

    @property
    def quota_share(self) -> float:
        return self.publishes_per_second / self.account_publishes_per_second

    def explanation(self) -> str:
        rate = (
            f"{self.simulators} simulators publish {self.publishes_per_second:,.0f} msg/s over "
            f"{self.connections:,} connections "
            f"(≤ {self.publishes_per_second_per_connection:,.0f} msg/s each; AWS allows "
            f"{IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION}/s per connection)"
        )
        quota = f"{self.quota_share:.1%} of the account's {self.account_publishes_per_second:,} publishes/s"
        if self.verdict is QuotaVerdict.OVER_QUOTA:
            return (
                f"{rate}: {quota}; AWS IoT Core would throttle the excess (messages rejected, the "
                f"simulators' lag grows). Use at most {self.max_simulators_within_quota} simulators, or "
                "raise the 'Inbound publish requests' quota in Service Quotas and set "
                f"{PUBLISH_QUOTA_KEY} to the new value"
            )
        if self.verdict is QuotaVerdict.NEAR_QUOTA:
            return f"{rate}: {quota}; other workloads in this account and region share that quota"
        return f"{rate}: {quota}"

    def connect_note(self) -> str | None:
        if self.connections <= IOT_DEFAULT_ACCOUNT_CONNECTS_PER_SECOND:
            return None
        seconds = math.ceil(self.connections / IOT_DEFAULT_ACCOUNT_CONNECTS_PER_SECOND)
        return (
            f"{self.connections:,} connections exceed the "
            f"{IOT_DEFAULT_ACCOUNT_CONNECTS_PER_SECOND} connects/s account quota: "
            f"a cold start needs at least {seconds} s of staggered connects"
        )


class BoundsError(ValueError):
    """N is outside the stack's configured bounds."""


def connections_per_simulator(fleet: FleetSettings) -> int:
    """How many MQTT connections one simulator opens (the simulator's own connection plan)."""
    return plan_connections(fleet, 0, "").connections


def plan_scale(simulators: int, fleet: FleetSettings, limits: ScaleLimits) -> ScalePlan:
    if not limits.min_simulators <= simulators <= limits.max_simulators:
        raise BoundsError(
            f"--simulators {simulators} is outside this stack's bounds "
            f"{limits.min_simulators}..{limits.max_simulators}"
        )
    if simulators not in CLOUD_SIMULATORS:
        raise BoundsError(
            f"--simulators {simulators} is outside {CLOUD_SIMULATORS.range_text}, what a cloud stack runs"
            f" ({CLOUD_SIMULATORS.why})"
        )
    per_simulator = fleet.publishes_per_second_per_site
    per_connection_count = connections_per_simulator(fleet)
    rate = per_simulator * simulators
    within_quota = math.floor(limits.account_publishes_per_second / per_simulator)
    if rate > limits.account_publishes_per_second:
        verdict = QuotaVerdict.OVER_QUOTA
    elif rate > NEAR_QUOTA_RATIO * limits.account_publishes_per_second:
        verdict = QuotaVerdict.NEAR_QUOTA
    else:
        verdict = QuotaVerdict.OK
    return ScalePlan(
        simulators=simulators,
        publishes_per_second=rate,
        connections=per_connection_count * simulators,
        publishes_per_second_per_connection=per_simulator / per_connection_count,
        account_publishes_per_second=limits.account_publishes_per_second,
        max_simulators_within_quota=min(within_quota, limits.max_simulators),
        verdict=verdict,
    )
