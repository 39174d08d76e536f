"""Connection planning: how one simulator process spreads its site's machines over MQTT connections.

The cloud CLI plans scale against the same numbers the simulator connects with, so this lives in
the core: `automation/` must not import the simulator's transport.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from factory_core.fleet import IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND, FleetSettings, site_id

__all__ = ["ConnectionPlan", "plan_connections"]


@dataclass(frozen=True)
class ConnectionPlan:
    """How one process spreads its site's machines over MQTT connections."""

    site: str
    machines: int
    messages_per_second: float  # telemetry at the planned schedule
    client_ids: tuple[str, ...]
    window: int
    max_publishes_per_connection: int
    max_rate: bool = False

    @property
    def connections(self) -> int:
        return len(self.client_ids)

    @property
    def per_connection_rate(self) -> float:
        return self.messages_per_second / self.connections

    def connection_for(self, machine_index: int) -> int:
        # Round-robin keeps every connection's load within one machine of the others, and one
        # machine always uses one connection, so its messages stay in order.
        return machine_index % self.connections

    def describe(self, engine: str, qos: int, endpoint: str) -> str:
        if self.max_rate:
            rate = "as fast as the broker acknowledges (--max-rate: local benchmarks only)"
        else:
            rate = (
                f"{self.messages_per_second:g} msg/s, {self.per_connection_rate:.1f} msg/s per connection"
                f" (limit {self.max_publishes_per_connection})"
            )
        return (
            f"plan: {self.site}: {self.machines} machines, {rate}, {self.connections} connection(s)"
            f" {self.client_ids[0]}..{self.client_ids[-1]}, window {self.window}, QoS {qos},"
            f" engine {engine}, endpoint {endpoint}"
        )

    def quota_warnings(self) -> list[str]:
        if not self.max_rate and self.messages_per_second > IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND:
            return [
                f"warning: {self.messages_per_second:g} msg/s from one process exceeds AWS IoT's default"
                f" account quota of {IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND} inbound publishes/s;"
                " raise the quota or lower the fleet"
            ]
        return []


def plan_connections(
    fleet: FleetSettings,
    site_index: int,
    client_id_prefix: str,
    *,
    connections: int | None = None,
    max_rate: bool = False,
) -> ConnectionPlan:
    """Enough connections that none exceeds `max_publishes_per_connection` (≤ the AWS 100/s)."""
    machines = fleet.machines_per_site
    rate = fleet.publishes_per_second_per_site
    count = connections or max(1, math.ceil(rate / fleet.max_publishes_per_connection))
    count = max(1, min(count, machines))
    site = site_id(site_index)
    return ConnectionPlan(
        site=site,
        machines=machines,
        messages_per_second=rate,
        client_ids=tuple(f"{client_id_prefix}{site}-c{index:02d}" for index in range(count)),
        window=fleet.inflight_window,
        max_publishes_per_connection=fleet.max_publishes_per_connection,
        max_rate=max_rate,
    )
