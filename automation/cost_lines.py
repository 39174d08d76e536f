"""The line items of a stack's monthly bill: one function per AWS service, each quantity explained.

`line_items(usage, features)` prices everything the Pulumi program creates for the stack's settings
(`automation/cost_model.py` adds them up). Every assumption beyond the settings is a named constant
here and is listed in `ASSUMPTIONS`, which `cost --json` and docs/infra.md show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from automation import cost_archive as archive
from automation.cost_archive import GIB, HOURS_PER_MONTH, SECONDS_PER_MONTH
from automation.cost_features import (
    ALERT_PUBLISHES_PER_MONTH,
    DASHBOARD_REQUESTS_PER_HOUR,
    GRAFANA_DATABASE_GB,
    PROMETHEUS_BYTES_PER_SAMPLE,
    PROMETHEUS_SERIES_PER_SIMULATOR,
    PlannedFeatures,
    planned_items,
)
from automation.cost_prices import PriceKey, PriceTable
from automation.cost_traffic import FIREHOSE_SEPARATOR_BYTES, METERING_INCREMENT_BYTES
from factory_core.archive_modes import ArchiveMode, uses_firehose
from factory_core.verb_results import CostLine, TrafficProfile
from infra.settings import PROMETHEUS_RETENTION_DAYS, StackSettings

Scale = Literal["messages", "simulators", "stack"]
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60

# --- assumptions (not in the settings; each one is listed in ASSUMPTIONS and in docs/infra.md) -----
# Bytes on the wire per MQTT PUBLISH beyond payload and topic: fixed header + lengths + packet id (7),
# one TLS 1.3 record (22), TCP/IPv4 headers (40). QoS 1 adds a PUBACK (4 + 22 + 40) the other way.
PUBLISH_OVERHEAD_BYTES = 7 + 22 + 40
PUBACK_BYTES = 4 + 22 + 40
# A handful of people watching Grafana: ~0.025 GB an hour through the ALB, i.e. 0.025 LCU.
DASHBOARD_GB_PER_HOUR = 0.025
# Log volume: the simulator logs a few lines per start (assume one start a day); Prometheus and Grafana
# at their default levels, a megabyte a day together.
SIMULATOR_LOG_BYTES_PER_DAY = 2_000
MONITORING_LOG_BYTES_PER_DAY = 1_000_000
# Container Insights (ECS, Fargate): custom metrics per dimension set (AWS's Container Insights metric
# table: cluster 12, per service 15, per task-definition family 10) and one ~1 KB performance event per
# task and per running container each minute.
INSIGHTS_CLUSTER_METRICS = 12
INSIGHTS_SERVICE_METRICS = 15
INSIGHTS_TASK_FAMILY_METRICS = 10
INSIGHTS_EVENT_BYTES = 1_000
SIMULATOR_RUNNING_CONTAINERS = 1  # tmp-init exits before the simulator starts
MONITORING_RUNNING_CONTAINERS = 2  # config-init exits before Prometheus and Grafana start

ASSUMPTIONS: tuple[str, ...] = (
    f"a month is {HOURS_PER_MONTH:g} hours; every task runs all month",
    f"MQTT over TLS: {PUBLISH_OVERHEAD_BYTES} bytes per PUBLISH and {PUBACK_BYTES} per PUBACK beyond "
    "payload and topic (NAT data processed)",
    f"dashboards: {DASHBOARD_GB_PER_HOUR} GB an hour through the load balancer (= LCUs)",
    f"logs: {SIMULATOR_LOG_BYTES_PER_DAY:,} bytes a day per simulator, "
    f"{MONITORING_LOG_BYTES_PER_DAY:,} a day for the monitoring task; log storage priced on ingested "
    "bytes (CloudWatch compresses, so an upper bound)",
    f"Container Insights: {INSIGHTS_CLUSTER_METRICS} cluster metrics, {INSIGHTS_SERVICE_METRICS} per "
    f"service, {INSIGHTS_TASK_FAMILY_METRICS} per task family; one {INSIGHTS_EVENT_BYTES:,}-byte event "
    "per task and per running container each minute",
    "Firehose GZIP compresses like zlib level 6 on the measured sample of JSON lines",
    "traffic (rates, payload and topic sizes, ground-truth events) measured from the simulator model",
    f"EFS (monitoring history): {PROMETHEUS_SERIES_PER_SIMULATOR} Prometheus series per simulator at "
    f"{PROMETHEUS_BYTES_PER_SAMPLE} bytes a sample for {PROMETHEUS_RETENTION_DAYS} days, plus "
    f"{GRAFANA_DATABASE_GB} GB of Grafana database",
    f"WAF: {DASHBOARD_REQUESTS_PER_HOUR:,} dashboard requests an hour inspected",
    f"alert topic: {ALERT_PUBLISHES_PER_MONTH} critical alerts a month published to SNS",
)


@dataclass(frozen=True)
class Usage:
    """The stack being priced: settings, prices, measured traffic, mode and fleet size."""

    settings: StackSettings
    prices: PriceTable
    traffic: TrafficProfile
    mode: ArchiveMode
    simulators: int
    connections_per_simulator: int

    @property
    def messages_per_s(self) -> float:
        return self.simulators * self.traffic.messages_per_s

    @property
    def messages(self) -> float:
        return self.messages_per_s * SECONDS_PER_MONTH

    @property
    def tasks(self) -> int:
        return self.simulators + 1  # the monitoring task

    def item(
        self, service: str, item: str, key: PriceKey, quantity: float, scales_with: Scale, detail: str
    ) -> CostLine:
        unit = self.prices.figure(key).unit
        return CostLine(service, item, quantity, unit, self.prices.cost(key, quantity), scales_with, detail)


def line_items(usage: Usage, features: PlannedFeatures) -> tuple[tuple[CostLine, ...], int]:
    """Every line item, and the month from which the archive's storage is at steady state."""
    storage_items, steady_month = _archive_items(usage)
    items = (
        *_iot_items(usage),
        *storage_items,
        *_compute_items(usage),
        *_network_items(usage),
        *_observability_items(usage),
        *_identity_items(usage),
        *planned_items(usage, features),
    )
    return items, steady_month


def _iot_items(usage: Usage) -> list[CostLine]:
    traffic, n, service = usage.traffic, usage.simulators, "AWS IoT Core"
    connections = n * usage.connections_per_simulator
    rate = (
        f"{n} simulators x ({traffic.telemetry_per_s:g} telemetry + {traffic.ground_truth_per_s:.4f} "
        f"ground-truth msg/s) x {SECONDS_PER_MONTH:,.0f} s"
    )
    rule_units = usage.messages * traffic.rule_units_per_message
    if usage.mode == "basic-ingest":
        messaging = usage.item(
            service,
            "messaging",
            PriceKey.IOT_MESSAGING,
            0.0,
            "messages",
            "Basic Ingest ($aws/rules/<rule>/...): no messaging charge",
        )
    else:
        messaging = usage.item(
            service,
            "messaging",
            PriceKey.IOT_MESSAGING,
            usage.messages * traffic.iot_units_per_message,
            "messages",
            f"{rate} x {traffic.iot_units_per_message:g} 5 KB increments (payload "
            f"{traffic.payload_bytes_per_message:.0f} B + topic {traffic.topic_bytes_per_message:.0f} B)",
        )
    return [
        usage.item(
            service,
            "connectivity",
            PriceKey.IOT_CONNECTIVITY,
            connections * MINUTES_PER_MONTH,
            "simulators",
            f"{connections} MQTT connections ({usage.connections_per_simulator} per simulator) x "
            f"{MINUTES_PER_MONTH:,.0f} min",
        ),
        messaging,
        usage.item(
            service,
            "rules triggered",
            PriceKey.IOT_RULES_TRIGGERED,
            rule_units,
            "messages",
            f"1 rule per message x {traffic.rule_units_per_message:g} 5 KB increments",
        ),
        usage.item(
            service,
            "actions executed",
            PriceKey.IOT_ACTIONS_EXECUTED,
            rule_units,
            "messages",
            "1 action per message (" + ("S3" if usage.mode == "direct" else "Firehose") + ")",
        ),
    ]


def _archive_items(usage: Usage) -> tuple[list[CostLine], int]:
    settings, traffic = usage.settings, usage.traffic
    writes = archive.archive_writes(
        usage.mode,
        usage.messages_per_s,
        traffic.payload_bytes_per_message,
        traffic.gzip_ratio,
        settings.firehose.size_mb,
        settings.firehose.interval_s,
        FIREHOSE_SEPARATOR_BYTES,
    )
    lifecycle = settings.archive_lifecycle
    storage = archive.archive_storage(writes, lifecycle.glacier_after_days, lifecycle.expire_after_days)
    month = f"steady state from month {storage.steady_from_month}"
    items: list[CostLine] = []
    if uses_firehose(usage.mode):
        record_bytes = traffic.payload_bytes_per_message + FIREHOSE_SEPARATOR_BYTES
        ingested_gb = usage.messages * traffic.firehose_units_per_message * METERING_INCREMENT_BYTES / GIB
        items.append(
            usage.item(
                "Amazon Data Firehose",
                "ingestion",
                PriceKey.FIREHOSE_INGESTION,
                ingested_gb,
                "messages",
                f"{traffic.firehose_units_per_message:g} x 5 KB per record (payload + newline "
                f"{record_bytes:.0f} B, rounded up to {METERING_INCREMENT_BYTES:,} B)",
            )
        )
        puts = "Firehose delivery: no messages, no objects"
        if writes.flush_period_s is not None:
            puts = (
                f"Firehose delivery: one GZIP object every {writes.flush_period_s:,.0f} s "
                f"(buffer {settings.firehose.size_mb} MiB / {settings.firehose.interval_s} s), "
                f"~{writes.object_bytes / 1024:,.0f} KiB each"
            )
    else:
        puts = "one object per message (rule S3 action)"
    items.append(
        usage.item(
            "Amazon S3", "PUT requests", PriceKey.S3_PUT_REQUESTS, writes.objects_per_month, "messages", puts
        )
    )
    stay = (
        f"Standard for {lifecycle.glacier_after_days} d, then Glacier until day {lifecycle.expire_after_days}"
        if storage.transitions
        else f"objects under 128 KiB are never transitioned: Standard until day {lifecycle.expire_after_days}"
    )
    items.append(
        usage.item(
            "Amazon S3",
            "Standard storage",
            PriceKey.S3_STANDARD_STORAGE,
            storage.standard_gb_months,
            "messages",
            f"{stay}; {month}",
        )
    )
    if storage.transitions:
        items.append(
            usage.item(
                "Amazon S3",
                "Glacier storage",
                PriceKey.S3_GLACIER_STORAGE,
                storage.glacier_gb_months,
                "messages",
                "Glacier Flexible Retrieval incl. 32 KiB index per object (+ early deletion under 90 d); "
                + month,
            )
        )
        items.append(
            usage.item(
                "Amazon S3",
                "lifecycle transitions",
                PriceKey.S3_GLACIER_TRANSITIONS,
                storage.transitions_per_month,
                "messages",
                "one transition request per object",
            )
        )
    return items, storage.steady_from_month


def _compute_items(usage: Usage) -> list[CostLine]:
    simulator, monitoring = usage.settings.simulator_task, usage.settings.monitoring_task
    n, hours, service = usage.simulators, HOURS_PER_MONTH, "AWS Fargate"
    return [
        usage.item(
            service,
            "simulators vCPU",
            PriceKey.FARGATE_VCPU,
            n * simulator.cpu / 1024 * hours,
            "simulators",
            f"{n} tasks x {simulator.cpu / 1024:g} vCPU x {hours:g} h",
        ),
        usage.item(
            service,
            "simulators memory",
            PriceKey.FARGATE_MEMORY,
            n * simulator.memory / 1024 * hours,
            "simulators",
            f"{n} tasks x {simulator.memory / 1024:g} GB x {hours:g} h",
        ),
        usage.item(
            service,
            "monitoring vCPU",
            PriceKey.FARGATE_VCPU,
            monitoring.cpu / 1024 * hours,
            "stack",
            f"1 task x {monitoring.cpu / 1024:g} vCPU x {hours:g} h",
        ),
        usage.item(
            service,
            "monitoring memory",
            PriceKey.FARGATE_MEMORY,
            monitoring.memory / 1024 * hours,
            "stack",
            f"1 task x {monitoring.memory / 1024:g} GB x {hours:g} h",
        ),
    ]


def _network_items(usage: Usage) -> list[CostLine]:
    zones, hours = usage.settings.network.availability_zones, HOURS_PER_MONTH
    items = [
        usage.item("Elastic Load Balancing", "ALB hours", PriceKey.ALB_HOURS, hours, "stack", "1 ALB"),
        usage.item(
            "Elastic Load Balancing",
            "ALB capacity units",
            PriceKey.ALB_LCU,
            DASHBOARD_GB_PER_HOUR * hours,
            "stack",
            f"~{DASHBOARD_GB_PER_HOUR} LCU (processed bytes of a few dashboard users)",
        ),
        usage.item(
            "Amazon VPC",
            "public IPv4 (ALB)",
            PriceKey.PUBLIC_IPV4,
            zones * hours,
            "stack",
            f"1 address per AZ x {zones} AZs",
        ),
    ]
    if not usage.settings.network.private_subnets:
        items.append(
            usage.item(
                "Amazon VPC",
                "public IPv4 (tasks)",
                PriceKey.PUBLIC_IPV4,
                usage.tasks * hours,
                "simulators",
                f"{usage.tasks} tasks in public subnets, 1 address each",
            )
        )
        return items
    traffic = usage.traffic
    publish = traffic.payload_bytes_per_message + traffic.topic_bytes_per_message + PUBLISH_OVERHEAD_BYTES
    ack = PUBACK_BYTES if usage.settings.fleet.qos == 1 else 0
    return [
        *items,
        usage.item(
            "Amazon VPC",
            "NAT gateway hours",
            PriceKey.NAT_HOURS,
            zones * hours,
            "stack",
            f"1 NAT gateway per AZ x {zones} AZs",
        ),
        usage.item(
            "Amazon VPC",
            "public IPv4 (NAT)",
            PriceKey.PUBLIC_IPV4,
            zones * hours,
            "stack",
            f"1 Elastic IP per NAT gateway x {zones}",
        ),
        usage.item(
            "Amazon VPC",
            "NAT data processed (MQTT)",
            PriceKey.NAT_DATA,
            usage.messages * (publish + ack) / GIB,
            "messages",
            f"{publish:.0f} B per PUBLISH (payload + topic + MQTT/TLS/TCP)"
            + (f" + {ack} B PUBACK" if ack else "")
            + " to IoT Core",
        ),
        usage.item(
            "Amazon VPC",
            "NAT data processed (logs)",
            PriceKey.NAT_DATA,
            _log_bytes_per_month(usage) / GIB,
            "simulators",
            "task logs to CloudWatch Logs",
        ),
    ]


def _log_bytes_per_month(usage: Usage) -> float:
    per_day = usage.simulators * SIMULATOR_LOG_BYTES_PER_DAY + MONITORING_LOG_BYTES_PER_DAY
    return per_day * archive.DAYS_PER_MONTH


def _observability_items(usage: Usage) -> list[CostLine]:
    retention = usage.settings.log_retention_days
    ingested_gb = _log_bytes_per_month(usage) / GIB
    items = [
        usage.item(
            "CloudWatch Logs",
            "ingestion",
            PriceKey.LOGS_INGESTION,
            ingested_gb,
            "simulators",
            "simulator and monitoring task logs",
        ),
        usage.item(
            "CloudWatch Logs",
            "storage",
            PriceKey.LOGS_STORAGE,
            ingested_gb / archive.DAYS_PER_MONTH * retention,
            "simulators",
            f"{retention}-day retention, steady state",
        ),
    ]
    if not usage.settings.container_insights:
        return items
    services = usage.tasks
    metrics = INSIGHTS_CLUSTER_METRICS + services * (INSIGHTS_SERVICE_METRICS + INSIGHTS_TASK_FAMILY_METRICS)
    events_per_minute = (
        usage.simulators * (1 + SIMULATOR_RUNNING_CONTAINERS) + 1 + MONITORING_RUNNING_CONTAINERS
    )
    events_gb = events_per_minute * MINUTES_PER_MONTH * INSIGHTS_EVENT_BYTES / GIB
    return [
        *items,
        usage.item(
            "CloudWatch",
            "Container Insights metrics",
            PriceKey.CLOUDWATCH_METRICS,
            metrics,
            "simulators",
            f"{INSIGHTS_CLUSTER_METRICS} + {services} services x "
            f"({INSIGHTS_SERVICE_METRICS} + {INSIGHTS_TASK_FAMILY_METRICS}) custom metrics",
        ),
        usage.item(
            "CloudWatch",
            "Container Insights events",
            PriceKey.LOGS_INGESTION,
            events_gb,
            "simulators",
            f"{events_per_minute} performance events a minute",
        ),
    ]


def _identity_items(usage: Usage) -> list[CostLine]:
    settings, n = usage.settings, usage.simulators
    generations = len(settings.cert_generations)
    secrets = n * generations + 1 + (1 if settings.smtp else 0)
    return [
        usage.item(
            "Secrets Manager",
            "secrets",
            PriceKey.SECRETS,
            secrets,
            "simulators",
            f"{n} sites x {generations} certificate generation(s) + Grafana admin"
            + (" + SMTP (existing)" if settings.smtp else ""),
        ),
        usage.item(
            "AWS Cloud Map",
            "registered instances",
            PriceKey.CLOUD_MAP_INSTANCES,
            n,
            "simulators",
            "one discovery name per site",
        ),
        usage.item(
            "Amazon Route 53",
            "private hosted zone",
            PriceKey.ROUTE53_PRIVATE_ZONE,
            1,
            "stack",
            f"{settings.stack}.iotfactory.internal (the Cloud Map namespace)",
        ),
    ]
