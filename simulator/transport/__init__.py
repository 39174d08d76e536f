"""MQTT publishing engines behind one interface (`Publisher`); `make_publisher` picks one."""

from __future__ import annotations

from simulator.settings import Engine
from simulator.transport.publisher import ConnectionPlan, Publisher, TransportOptions


def make_publisher(engine: Engine, plan: ConnectionPlan, options: TransportOptions) -> Publisher:
    # Imported here so that a process using one engine never imports the other's library.
    if engine == Engine.SDK:
        from simulator.transport.sdk_engine import SdkPublisher

        return SdkPublisher(plan, options)
    from simulator.transport.fleet_engine import FleetPublisher

    return FleetPublisher(plan, options)
