"""Every metric the project exports, defined once.

The exporter registers these, the dashboards and alert rules are generated from them and the README's
metric table is rendered from them, so a renamed metric breaks a test instead of a dashboard.
Names use Prometheus base units; `display_scale` and `grafana_unit` turn them back into the
engineering units a plant engineer reads (mm/s, rpm, kW, bar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram"]

MACHINE_LABELS = ("site", "line", "machine", "type")
LINE_LABELS = ("site", "line", "type")
SIMULATOR_LABELS = ("site",)


@dataclass(frozen=True)
class MetricDef:
    name: str  # exposition name; counters include `_total`
    kind: MetricKind
    help: str
    labels: tuple[str, ...]
    grafana_unit: str = "none"
    display_scale: float = 1.0  # multiply by this for the dashboard unit
    buckets: tuple[float, ...] | None = None
    signal: str | None = None  # payload signal key this gauge mirrors, if any
    payload_unit: str | None = None  # unit of that signal in the JSON payload

    @property
    def sample_name(self) -> str:
        """Name to query for a rate or a value (histograms: the `_bucket` series)."""
        return f"{self.name}_bucket" if self.kind == "histogram" else self.name


# Machine signals. `display_scale` converts the base unit back to the payload's engineering unit.
MACHINE_SIGNALS: tuple[MetricDef, ...] = (
    MetricDef("factory_machine_temperature_celsius", "gauge", "Machine temperature.",
              MACHINE_LABELS, "celsius", 1.0, signal="temperature", payload_unit="°C"),
    MetricDef("factory_machine_vibration_rms_meters_per_second", "gauge",
              "Vibration velocity RMS (ISO 10816).", MACHINE_LABELS, "none", 1000.0,
              signal="vibration_rms", payload_unit="mm/s"),
    MetricDef("factory_machine_speed_hertz", "gauge", "Spindle, motor or belt drive speed.",
              MACHINE_LABELS, "rotrpm", 60.0, signal="speed", payload_unit="rpm"),
    MetricDef("factory_machine_power_watts", "gauge", "Electrical power drawn.",
              MACHINE_LABELS, "kwatt", 0.001, signal="power", payload_unit="kW"),
    MetricDef("factory_machine_pressure_pascals", "gauge",
              "Hydraulic or air pressure (presses and compressors only).",
              MACHINE_LABELS, "pressurebar", 1e-5, signal="pressure", payload_unit="bar"),
    MetricDef("factory_machine_cycle_time_seconds", "gauge",
              "Duration of the last production cycle (mills and presses only).",
              MACHINE_LABELS, "s", 1.0, signal="cycle_time", payload_unit="s"),
    MetricDef("factory_machine_health_ratio", "gauge",
              "Simulated ground-truth health, 1 = new, 0 = failed.",
              MACHINE_LABELS, "percentunit", 1.0),
)

MACHINE_STATES = ("running", "idle", "setup", "fault", "maintenance")

MACHINE_STATE = MetricDef(
    "factory_machine_state", "gauge",
    "1 for the state the machine is in, 0 for the others.",
    (*MACHINE_LABELS, "state"),
)
PARTS_GOOD = MetricDef("factory_machine_parts_good_total", "counter", "Good parts produced.",
                       MACHINE_LABELS, "short")
PARTS_REJECTED = MetricDef("factory_machine_parts_rejected_total", "counter", "Rejected parts.",
                           MACHINE_LABELS, "short")
# Ideal cycle time and planned time are what OEE's performance and availability need downstream.
IDEAL_CYCLE_TIME = MetricDef("factory_machine_ideal_cycle_time_seconds", "gauge",
                             "Ideal (nameplate) cycle time of one part.", MACHINE_LABELS, "s")
STATE_SECONDS = MetricDef("factory_machine_state_seconds_total", "counter",
                          "Simulated seconds spent in each state.", (*MACHINE_LABELS, "state"), "s")
ACTIVE_FAULTS = MetricDef("factory_machine_active_faults", "gauge",
                          "Injected faults currently active (ground truth).",
                          (*MACHINE_LABELS, "fault"), "short")

# Per-line aggregates: what remains when `max_machine_series` is exceeded.
LINE_MACHINES = MetricDef("factory_line_machines", "gauge", "Machines on the line in each state.",
                          (*LINE_LABELS, "state"), "short")
LINE_PARTS_GOOD = MetricDef("factory_line_parts_good_total", "counter", "Good parts of the line.",
                            LINE_LABELS, "short")
LINE_PARTS_REJECTED = MetricDef("factory_line_parts_rejected_total", "counter",
                                "Rejected parts of the line.", LINE_LABELS, "short")
LINE_TEMPERATURE_MAX = MetricDef("factory_line_temperature_max_celsius", "gauge",
                                 "Hottest machine of the line.", LINE_LABELS, "celsius")
LINE_VIBRATION_MAX = MetricDef("factory_line_vibration_rms_max_meters_per_second", "gauge",
                               "Highest vibration RMS of the line.", LINE_LABELS, "none", 1000.0)

# Transport health of one simulator process.
PUBACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

MESSAGES_PUBLISHED = MetricDef("simulator_messages_published_total", "counter",
                               "Messages handed to the broker (QoS 1: acknowledged).",
                               (*SIMULATOR_LABELS, "kind"), "short")
PUBLISH_FAILURES = MetricDef("simulator_publish_failures_total", "counter",
                             "Publishes that failed or were dropped.",
                             (*SIMULATOR_LABELS, "reason"), "short")
PUBACK_LATENCY = MetricDef("simulator_puback_latency_seconds", "histogram",
                           "Publish to PUBACK latency (QoS 1).", SIMULATOR_LABELS, "s",
                           buckets=PUBACK_BUCKETS)
CONNECTIONS_UP = MetricDef("simulator_connections_up", "gauge", "MQTT connections established.",
                           SIMULATOR_LABELS, "short")
CONNECTIONS_PLANNED = MetricDef("simulator_connections", "gauge", "MQTT connections planned.",
                                SIMULATOR_LABELS, "short")
RECONNECTS = MetricDef("simulator_reconnects_total", "counter", "Reconnections after a drop.",
                       SIMULATOR_LABELS, "short")
INFLIGHT = MetricDef("simulator_inflight_messages", "gauge",
                     "QoS 1 messages sent and not yet acknowledged.", SIMULATOR_LABELS, "short")
QUEUED = MetricDef("simulator_queued_messages", "gauge",
                   "Messages waiting in the offline queue or send window.", SIMULATOR_LABELS, "short")
SCHEDULER_LAG = MetricDef("simulator_scheduler_lag_seconds", "histogram",
                          "How late a sample was generated against its schedule.", SIMULATOR_LABELS,
                          "s", buckets=LAG_BUCKETS)
MACHINES_SIMULATED = MetricDef("simulator_machines", "gauge", "Machines this process simulates.",
                               SIMULATOR_LABELS, "short")
FASTPATH_ENABLED = MetricDef("simulator_transport_fastpath_enabled", "gauge",
                             "1 when the fleet engine frames PUBLISH packets and reads PUBACKs itself; "
                             "0 when it publishes through plain paho (its start-up self-test failed) "
                             "or another engine runs.", SIMULATOR_LABELS, "short")
SIMULATED_TIME = MetricDef("simulator_simulated_time_seconds", "gauge",
                           "Simulated clock, seconds since the start of the run.",
                           SIMULATOR_LABELS, "s")

# Cold path (local stack's rule runner; the cloud has the topic rule's own CloudWatch metrics).
ARCHIVED = MetricDef("archive_messages_archived_total", "counter", "Messages written to the archive.",
                     ("kind",), "short")
QUARANTINED = MetricDef("archive_messages_quarantined_total", "counter",
                        "Messages quarantined (not JSON, or failing the schema).", ("reason",), "short")
ARCHIVE_LAG = MetricDef("archive_lag_seconds", "gauge",
                        "Age of the newest archived message's timestamp when it was written; while "
                        "writes fail, the age of the oldest message waiting to be written.", (), "s")
ARCHIVE_BATCHES = MetricDef("archive_batches_written_total", "counter", "Batch objects written.",
                            (), "short")
ARCHIVE_WRITE_ERRORS = MetricDef("archive_write_errors_total", "counter",
                                 "Batch writes the archive refused; each is retried, its messages stay "
                                 "unacknowledged in the broker until written.", (), "short")

MACHINE_METRICS: tuple[MetricDef, ...] = (
    *MACHINE_SIGNALS, MACHINE_STATE, PARTS_GOOD, PARTS_REJECTED, IDEAL_CYCLE_TIME, STATE_SECONDS,
    ACTIVE_FAULTS,
)
LINE_METRICS: tuple[MetricDef, ...] = (
    LINE_MACHINES, LINE_PARTS_GOOD, LINE_PARTS_REJECTED, LINE_TEMPERATURE_MAX, LINE_VIBRATION_MAX,
)
TRANSPORT_METRICS: tuple[MetricDef, ...] = (
    MESSAGES_PUBLISHED, PUBLISH_FAILURES, PUBACK_LATENCY, CONNECTIONS_UP, CONNECTIONS_PLANNED,
    RECONNECTS, INFLIGHT, QUEUED, SCHEDULER_LAG, MACHINES_SIMULATED, SIMULATED_TIME, FASTPATH_ENABLED,
)
SIMULATOR_METRICS: tuple[MetricDef, ...] = (*MACHINE_METRICS, *LINE_METRICS, *TRANSPORT_METRICS)
ARCHIVE_METRICS: tuple[MetricDef, ...] = (
    ARCHIVED, QUARANTINED, ARCHIVE_LAG, ARCHIVE_BATCHES, ARCHIVE_WRITE_ERRORS,
)
ALL_METRICS: tuple[MetricDef, ...] = (*SIMULATOR_METRICS, *ARCHIVE_METRICS)


def by_name(name: str) -> MetricDef:
    for metric in ALL_METRICS:
        if metric.name == name:
            return metric
    raise KeyError(name)
