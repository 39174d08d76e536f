"""Fleet settings: the one schema shared by the simulator, the local stack and the Pulumi program.

The same `FleetSettings` object is read from `Pulumi.<stack>.yaml` (`stack_file.FLEET_KEY`) for
dev/prod/local and from a plain YAML file given to `python -m simulator --config`. Keep this module
pure (pydantic only): the Pulumi program imports it, and the simulator image must not need Pulumi.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# AWS IoT Core limits the fleet is planned against (Service Quotas, not adjustable per connection).
IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION = 100
IOT_MAX_INFLIGHT_QOS1_PER_CLIENT = 100
IOT_DEFAULT_ACCOUNT_PUBLISHES_PER_SECOND = 20_000
# Largest payload AWS IoT Core accepts (128 KiB); the local broker and rule runner refuse larger too.
IOT_MAX_PAYLOAD_BYTES = 128 * 1024

# Simulator process i simulates site `site-<i:02d>`: ids, topics, client ids, certificate names and
# dashboards assume two digits, so there are at most 100 sites.
MAX_SITES = 100
SITE_INDEXES = range(MAX_SITES)


@dataclass(frozen=True)
class SimulatorCountLimit:
    """How many simulators a kind of stack runs, and why that many."""

    minimum: int
    maximum: int
    why: str

    def __contains__(self, count: object) -> bool:
        return isinstance(count, int) and self.minimum <= count <= self.maximum

    @property
    def range_text(self) -> str:
        return f"{self.minimum}..{self.maximum}"


# The one simulator-count limit, per kind of stack. The cloud runs one ECS service per site, so it
# goes as far as there are site ids, and down to 0 (the platform stays, the fleet is parked). The
# local stack runs each simulator as a Python process on this machine with its own metrics port
# (metricsPortBase + 1 + i); past 50 they no longer fit two cores, and it needs at least one to be
# a pipeline at all.
SIMULATOR_COUNT_LIMITS: dict[str, SimulatorCountLimit] = {
    "cloud": SimulatorCountLimit(0, MAX_SITES, "one ECS service per site, site ids have two digits"),
    "local": SimulatorCountLimit(1, 50, "each simulator is a process on this machine"),
}
CLOUD_SIMULATORS = SIMULATOR_COUNT_LIMITS["cloud"]
LOCAL_SIMULATORS = SIMULATOR_COUNT_LIMITS["local"]

TOPIC_ROOT = "factory/simulator"
GROUND_TRUTH_SEGMENT = "ground-truth"
# A cloud stack's topics live under TOPIC_ROOT/<stack>/: IoT topics are account- and region-wide,
# so dev's rule and certificates must never see prod's topics. The local stack has its own broker
# and keeps TOPIC_ROOT/<site>/... (no namespace segment).
TOPIC_NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


def _ascii_whole_number(value: object) -> object:
    """'1' from a flag or variable as 1; a Literal of ints takes no text, and '²' must not pass."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdecimal():
        return int(value.strip())
    return value


class MachineType(StrEnum):
    CNC_MILL = "cnc_mill"
    HYDRAULIC_PRESS = "hydraulic_press"
    CONVEYOR = "conveyor"
    AIR_COMPRESSOR = "air_compressor"


class Engine(StrEnum):
    FLEET = "fleet"  # paho-mqtt, all connections on one selector thread
    SDK = "sdk"  # AWSIoTPythonSDK, two threads per connection


class _Strict(BaseModel):
    # NaN and infinity pass `gt`/`le` checks in surprising ways; no setting here needs them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False)


# Failure modes belong to machine types: each has its own physics and signature in the model
# (simulator/model/failure_modes.py). Sensor faults corrupt one reading of any machine.
FAILURE_MODES: dict[MachineType, tuple[str, ...]] = {
    MachineType.CNC_MILL: ("spindle_bearing_wear", "tool_wear", "coolant_failure"),
    MachineType.HYDRAULIC_PRESS: ("seal_leakage", "pump_wear", "oil_overheating"),
    MachineType.CONVEYOR: ("belt_misalignment", "gearbox_wear", "motor_bearing_wear"),
    MachineType.AIR_COMPRESSOR: ("airend_wear", "cooler_fouling", "inlet_filter_clogging", "air_leak"),
}
SENSOR_FAULTS: tuple[str, ...] = ("stuck", "drift", "spike", "noise_burst", "dropout")
FaultKind = Literal[
    "spindle_bearing_wear", "tool_wear", "coolant_failure",
    "seal_leakage", "pump_wear", "oil_overheating",
    "belt_misalignment", "gearbox_wear", "motor_bearing_wear",
    "airend_wear", "cooler_fouling", "inlet_filter_clogging", "air_leak",
    "stuck", "drift", "spike", "noise_burst", "dropout",
]
Timescale = Literal["realistic", "demo"]
MaintenancePolicy = Literal["condition_based", "preventive", "run_to_failure"]


def machine_type_of(machine: str) -> MachineType | None:
    """The type named in a machine id (`site-00-line-01-cnc_mill-01` -> cnc_mill), if it names one."""
    parts = machine.split("-")
    if len(parts) != 6:
        return None
    try:
        return MachineType(parts[4])
    except ValueError:
        return None


class ScheduledFault(_Strict):
    """A fault injected at a fixed simulated time, e.g. to make an alert fire in a test.

    A failure mode starts with `severity` as its damage (0-1) and keeps developing from there; a
    sensor fault corrupts one reading with that strength. `duration_s` ends the fault early
    (reason `cleared`); without it a failure mode lasts until maintenance ends it.
    """

    machine: Annotated[str, Field(min_length=1, description="machine id, e.g. site-00-line-01-cnc_mill-01")]
    fault: FaultKind
    at_s: Annotated[float, Field(ge=0, description="simulated seconds after start")]
    severity: Annotated[float, Field(gt=0, le=1)] = 0.8
    duration_s: Annotated[float | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _mode_fits_machine(self) -> ScheduledFault:
        machine_type = machine_type_of(self.machine)
        if machine_type is not None and self.fault not in (*FAILURE_MODES[machine_type], *SENSOR_FAULTS):
            modes = ", ".join(FAILURE_MODES[machine_type])
            raise ValueError(
                f"fault {self.fault!r} does not occur on {machine_type.value} machines; "
                f"use one of its failure modes ({modes}) or a sensor fault ({', '.join(SENSOR_FAULTS)})"
            )
        return self


class FaultSettings(_Strict):
    """Failure modes, their maintenance and sensor faults.

    `timescale` picks how fast machines degrade: `realistic` (days to weeks from onset to failure,
    hundreds to thousands of running hours between failures) or `demo` (the same physics 720x
    faster, so a local run shows a labelled fault within minutes). `maintenance` picks the policy
    that ends failure modes: `condition_based` (planned repair at ISO 10816 zone C or an alarm
    temperature, plus scheduled preventive maintenance), `preventive` (scheduled only) or
    `run_to_failure`. `failure_rate_scale` multiplies every failure mode's onset rate (0 turns
    random failure modes off); `sensor_fault_per_hour` is per machine per simulated hour.
    """

    timescale: Timescale = "realistic"
    maintenance: MaintenancePolicy = "condition_based"
    failure_rate_scale: Annotated[float, Field(ge=0, le=1_000)] = 1.0
    sensor_fault_per_hour: Annotated[float, Field(ge=0)] = 0.01
    scheduled: list[ScheduledFault] = Field(default_factory=list)


class FleetSettings(_Strict):
    """What one simulator process (one ECS task, one local process) simulates: one site.

    Simulator process `i` simulates site `site-<i:02d>`; `simulator_count` processes make the fleet.
    Each machine draws from its own random stream derived from (seed, machine id), so adding a
    machine or a site never changes another machine's data.
    """

    seed: int = 42
    lines_per_site: Annotated[int, Field(ge=1, le=100)] = 2
    machines_per_line: dict[MachineType, Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=lambda: {
            MachineType.CNC_MILL: 2,
            MachineType.HYDRAULIC_PRESS: 1,
            MachineType.CONVEYOR: 1,
            MachineType.AIR_COMPRESSOR: 1,
        }
    )
    # Wall-clock seconds between two samples of one machine; each sample advances the machine by
    # publish_interval_s * speed simulated seconds. So --speed changes the physics, not the
    # publish rate, and the quota plan holds at any speed.
    publish_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    speed: Annotated[float, Field(gt=0, le=100_000)] = 1.0
    qos: Annotated[Literal[0, 1], BeforeValidator(_ascii_whole_number)] = 1
    engine: Engine = Engine.FLEET
    max_publishes_per_connection: Annotated[
        int, Field(ge=1, le=IOT_MAX_PUBLISHES_PER_SECOND_PER_CONNECTION)
    ] = 80
    inflight_window: Annotated[int, Field(ge=1, le=IOT_MAX_INFLIGHT_QOS1_PER_CLIENT)] = 20
    offline_queue_limit: Annotated[int, Field(ge=0)] = 100_000
    max_machine_series: Annotated[int, Field(ge=0)] = 2_000
    faults: FaultSettings = Field(default_factory=FaultSettings)
    # Set by the Pulumi program to the cloud stack's name (topics under factory/simulator/<stack>/);
    # None on the local stack. Not a user setting: the program refuses it in a stack file.
    topic_namespace: Annotated[str | None, Field(pattern=TOPIC_NAMESPACE_PATTERN)] = None

    @model_validator(mode="after")
    def _has_machines(self) -> FleetSettings:
        if sum(self.machines_per_line.values()) == 0:
            raise ValueError("machines_per_line: at least one machine is needed; e.g. {cnc_mill: 2}")
        return self

    @property
    def machines_per_site(self) -> int:
        return self.lines_per_site * sum(self.machines_per_line.values())

    @property
    def publishes_per_second_per_site(self) -> float:
        """Telemetry rate of one simulator process at speed 1 (ground-truth events are rare)."""
        return self.machines_per_site / self.publish_interval_s


def site_id(simulator_index: int) -> str:
    return f"site-{simulator_index:02d}"


def topic_prefix(namespace: str | None = None) -> str:
    """Where a stack's topics live: factory/simulator (local) or factory/simulator/<stack> (cloud)."""
    return TOPIC_ROOT if namespace is None else f"{TOPIC_ROOT}/{namespace}"


def site_topic_prefixes(site: str, namespace: str | None = None) -> tuple[str, str]:
    """The two prefixes one site publishes under: its telemetry and its ground truth (with a '/')."""
    prefix = topic_prefix(namespace)
    return f"{prefix}/{site}/", f"{prefix}/{GROUND_TRUTH_SEGMENT}/{site}/"


def telemetry_topic(site: str, line: str, machine: str, namespace: str | None = None) -> str:
    return f"{site_topic_prefixes(site, namespace)[0]}{line}/{machine}"


def ground_truth_topic(site: str, line: str, machine: str, namespace: str | None = None) -> str:
    return f"{site_topic_prefixes(site, namespace)[1]}{line}/{machine}"
