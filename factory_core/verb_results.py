"""What the verbs return: frozen dataclasses, one per answer, the same for rich output and `--json`.

The JSON document of a result is its fields, mechanically (`cli_render.json_style`), so the field
names here ARE the JSON keys: snake_case, counts as `int`, durations as `float` named `_s`, rates
`_per_s`, timestamps as `datetime` (written ISO 8601 UTC). A value derived from other fields that
belongs in the document is a field computed in `__post_init__` (`init=False`), never a property.
tests/test_json_style.py walks every class here and fails on a key or a float that breaks this.
The local stack's results follow the same rules in `factory_core/local_results.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VerbResult:
    """Base of every result. `failed` (not part of the document) makes cli.py exit 1."""

    @property
    def failed(self) -> bool:
        return False

    @property
    def failed_as_usage(self) -> bool:
        """A failure that is the user's to fix before anything can run (exit 2, as `doctor` on a gap)."""
        return False


# -- both kinds of stack -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationOutcome(VerbResult):
    stack: str
    generation: str  # the generation in use now
    from_generation: str
    to_generation: str
    rolled_back: bool
    finished: bool
    steps: tuple[str, ...]


# -- cloud stacks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateOutcome(VerbResult):
    """A Pulumi operation (up, preview, destroy; scale runs an up): resource counts and outputs.

    `outputs` keeps Pulumi's output names (rich output shows them as `pulumi stack output` does);
    `--json` writes them in snake_case like every key. Secret outputs are masked.
    """

    stack: str
    operation: str
    resource_changes: dict[str, int]
    outputs: dict[str, Any]
    cost_change: CostChange | None = None  # up and scale: the monthly estimate before and after


def describe_changes(changes: dict[str, int]) -> str:
    """Resource counts as words: "1 to create, 2 to update" (what did not change is left out)."""
    moved = {op: n for op, n in changes.items() if n and op != "same"}
    if not moved:
        return "no changes"
    return ", ".join(f"{n} to {op}" for op, n in sorted(moved.items()))


@dataclass(frozen=True)
class CloudOutputs(VerbResult):
    stack: str
    outputs: dict[str, Any]  # Pulumi's names, Grafana's URL first; secrets masked


@dataclass(frozen=True)
class CloudService:
    """An ECS service's live counts, from describe_services."""

    name: str
    desired: int
    running: int
    pending: int
    rollout: str  # COMPLETED, IN_PROGRESS, FAILED, or MISSING
    steady: bool


@dataclass(frozen=True)
class LastUpdate:
    kind: str
    result: str
    started: dt.datetime | None
    ended: dt.datetime | None


@dataclass(frozen=True)
class CloudStatus(VerbResult):
    stack: str
    backend: str
    secrets_provider: str
    last_update: LastUpdate | None
    simulators: int | None  # None: the program's default
    certificate_generation: str
    certificate_generations: tuple[dict[str, str], ...]
    rotation: dict[str, str] | None
    outputs: dict[str, Any]
    services: tuple[CloudService, ...]
    services_note: str | None  # why live service state is not shown


@dataclass(frozen=True)
class BootstrapResult(VerbResult):
    stack: str
    backend_url: str
    secrets_provider: str
    bucket: str
    kms_key_arn: str
    kms_alias: str
    backends_file: str
    stack_file: str
    changes: tuple[str, ...]  # empty: everything was already in place
    ci_policy_file: str = ""  # the CI role's inline policy for this state and key (generated)


# -- operating a stack: prerequisites and drift (both kinds of stack) ------------------------------


@dataclass(frozen=True)
class PrerequisiteCheck:
    """One thing a stack needs before `up`: whether it is there, what was found, how to fix it."""

    name: str  # "Pulumi CLI", "AWS credentials", ...
    ok: bool
    detail: str  # what was found ("3.272.0 at /usr/local/bin/pulumi")
    fix: str | None = None  # when not ok: what to run or set


@dataclass(frozen=True)
class DoctorReport(VerbResult):
    """`doctor`: every prerequisite of a stack, checked together. Anything missing exits 2."""

    stack: str
    checks: tuple[PrerequisiteCheck, ...]
    missing: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "missing", sum(1 for check in self.checks if not check.ok))

    @property
    def failed(self) -> bool:
        return self.missing > 0

    @property
    def failed_as_usage(self) -> bool:
        return self.failed


@dataclass(frozen=True)
class DriftItem:
    """A resource whose state and reality (or state and this checkout) disagree."""

    op: str  # what `up` (or a refresh) would do: update, create, delete, replace
    type: str  # aws:ecs/service:Service
    name: str
    properties: tuple[str, ...]  # the properties that differ, when the engine names them


@dataclass(frozen=True)
class DriftReport(VerbResult):
    """`drift`: changes made outside Pulumi, and changes in this checkout not deployed yet. Any: exit 1."""

    stack: str
    changed_outside: tuple[DriftItem, ...]  # refresh preview: the cloud differs from the state
    not_deployed: tuple[DriftItem, ...]  # preview: the program or config differs from the state
    drifted: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drifted", bool(self.changed_outside or self.not_deployed))

    @property
    def failed(self) -> bool:
        return self.drifted


# -- cost (cloud stacks) -----------------------------------------------------------------------------
# The cost model (automation/cost_model.py) builds these directly, so `cost --json` is its output.


@dataclass(frozen=True)
class TrafficProfile:
    """One simulator's traffic per second, measured from the model, and the sizes that decide its price."""

    telemetry_per_s: float
    ground_truth_per_s: float
    payload_bytes_per_message: float  # mean
    topic_bytes_per_message: float  # mean
    iot_units_per_message: float  # 5 KB increments of payload + topic (IoT messaging)
    rule_units_per_message: float  # 5 KB increments of the payload (rules triggered, actions executed)
    firehose_units_per_message: float  # 5 KB increments of payload + separator (Firehose record)
    gzip_ratio: float  # compressed / uncompressed JSON lines, as Firehose writes them
    sampled_messages: int = 0
    sampled_s: float = 0.0
    messages_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages_per_s", self.telemetry_per_s + self.ground_truth_per_s)


@dataclass(frozen=True)
class CostLine:
    """One billable thing a month: what, how much, what it costs, and how the quantity was computed."""

    service: str  # "AWS IoT Core"
    item: str  # "messaging"
    quantity_per_month: float
    unit: str
    monthly_usd: float
    scales_with: str  # messages (the variable part), simulators, or stack (the stack itself)
    detail: str


@dataclass(frozen=True)
class CostEstimate:
    stack: str
    region: str
    archive_mode: str
    simulators: int
    messages_per_month: float  # telemetry + ground truth
    ground_truth_per_month: float
    line_items: tuple[CostLine, ...]
    total_usd: float
    variable_usd: float  # the lines that scale with messages
    usd_per_million: float | None  # total / millions of messages (None without messages)
    variable_usd_per_million: float | None
    storage_steady_from_month: int
    prices_pinned_on: str


@dataclass(frozen=True)
class ArchiveModeCost:
    """One archive mode's figures for the same fleet."""

    archive_mode: str
    total_usd: float
    variable_usd: float
    usd_per_million: float | None
    variable_usd_per_million: float | None
    configured: bool  # the mode the stack's settings select


@dataclass(frozen=True)
class PriceProvenance:
    region: str
    pinned_on: str
    how: str
    sources: dict[str, str]  # figure -> pricing page URL or Price List SKU


@dataclass(frozen=True)
class CostResult(VerbResult):
    """`cost`: the stack's monthly estimate per line, and the same fleet in every archive mode."""

    stack: str
    estimate: CostEstimate
    archive_modes: tuple[ArchiveModeCost, ...]
    traffic: TrafficProfile  # one simulator
    prices: PriceProvenance
    assumptions: tuple[str, ...]
    not_counted: tuple[str, ...]
    refresh: str | None = None  # what --refresh-prices did
    # The same fleet per archive mode, per million messages: everything, and the variable part only.
    per_million_by_archive_mode_usd: dict[str, float | None] = field(init=False)
    variable_per_million_by_archive_mode_usd: dict[str, float | None] = field(init=False)

    def __post_init__(self) -> None:
        rows = self.archive_modes
        total = {row.archive_mode: row.usd_per_million for row in rows}
        variable = {row.archive_mode: row.variable_usd_per_million for row in rows}
        object.__setattr__(self, "per_million_by_archive_mode_usd", total)
        object.__setattr__(self, "variable_per_million_by_archive_mode_usd", variable)


@dataclass(frozen=True)
class CostChange:
    """What `scale` or `up` changes in the monthly estimate; before is None for a stack not yet deployed."""

    stack: str
    before_usd: float | None
    after_usd: float
    delta_usd: float
    prices_pinned_on: str
    simulators_before: int | None
    simulators_after: int

    def describe(self) -> str:
        sign = "+" if self.delta_usd >= 0 else "-"
        before = "nothing" if self.before_usd is None else f"${self.before_usd:,.2f}"
        return (
            f"monthly estimate {before} -> ${self.after_usd:,.2f} ({sign}${abs(self.delta_usd):,.2f}; "
            f"prices pinned {self.prices_pinned_on}; `python cli.py cost --stack {self.stack}` itemises it)"
        )


# -- not tied to a stack -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardsResult(VerbResult):
    files: tuple[str, ...]


# -- archive analytics (query, report) ---------------------------------------------------------------


@dataclass(frozen=True)
class QueryColumn:
    name: str
    type: str  # as the engine names it: DuckDB's (BIGINT, TIMESTAMP_MS) or Athena's (bigint, timestamp)


@dataclass(frozen=True)
class QueryResult(VerbResult):
    """`query`: SQL over the archive's views. Rows are arrays in column order (names may repeat)."""

    stack: str
    engine: str  # duckdb | athena
    source: str  # the archive read, or the Athena workgroup and database
    columns: tuple[QueryColumn, ...]
    rows: tuple[tuple[Any, ...], ...]  # empty when the rows went to `out_file`
    row_count: int
    out_file: str | None
    elapsed_s: float
    query_id: str | None = None  # Athena's query execution id
    scanned_bytes: int | None = None  # what Athena scanned (and bills)


@dataclass(frozen=True)
class ReportSection:
    title: str
    available: bool
    note: str | None  # where the data came from, or why the section is empty


@dataclass(frozen=True)
class ReportResult(VerbResult):
    """`report`: one self-contained HTML file."""

    stack: str
    out_file: str
    size_bytes: int
    source: str  # the archive read
    machines: tuple[str, ...]  # machines whose signals are drawn
    sections: tuple[ReportSection, ...]
    time_from: dt.datetime | None
    time_to: dt.datetime | None
