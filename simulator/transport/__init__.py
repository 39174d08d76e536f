"""MQTT publishing engines behind one interface (`Publisher`); `make_publisher` picks one."""

from __future__ import annotations

from factory_core.connection_plan import ConnectionPlan
from factory_core.fleet import Engine
from simulator.transport.publisher import Publisher, TransportOptions


def make_publisher(engine: Engine, plan: ConnectionPlan, options: TransportOptions) -> Publisher:
    # Imported here so that a process using the fleet engine never imports AWSIoTPythonSDK. (The
    # sdk engine imports paho-mqtt through paho_fastpath, which holds its two peeks into the SDK.)
    if engine == Engine.SDK:
        from simulator.transport.sdk_engine import SdkPublisher

        return SdkPublisher(plan, options)
    from simulator.transport.fleet_engine import FleetPublisher

    return FleetPublisher(plan, options)
