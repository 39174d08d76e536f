"""The verbs every kind of stack answers: one typed interface, implemented by the local stack
(`local_stack.stack.LocalStack`) and the cloud stacks (`automation.cloud_stack.CloudStack`).

A verb takes a typed request and a `ProgressSink`, reports progress only through the sink, and
returns a result object (`factory_core.verb_results`). It never prints and never builds rich
objects or JSON: `cli.py` hands the result to `cli_render`, which draws it with rich or writes it
as JSON. Errors are `factory_core.errors` exceptions; cli.py maps them to exit codes once.
A verb a kind of stack does not have raises `VerbUnavailable` naming the alternative.

Adding a verb (say `drift`) touches exactly these places:
1. here: a `DriftRequest` dataclass and an abstract `drift(self, request, sink)` on `StackVerbs`;
   its result type in `factory_core/verb_results.py` (`local_results.py` if only the local stack
   has it; events, if any, in `progress_events.py`);
2. `local_stack/stack.py` and `automation/cloud_stack.py`: implement it, or raise
   `VerbUnavailable` with the alternative (`StackVerbs` is abstract: forgetting one fails at once);
3. `cli_render/human.py`: one function drawing the result, registered in `RENDERERS`
   (`--json` needs nothing: the document is the result's fields);
4. `cli.py`: a command of a few lines that parses the flags and calls `_run_verb`.
(`cost` was added this way: `CostRequest`, `CostResult`, `cli_render/cost_view.py`.)
A result that means failure overrides `VerbResult.failed` (exit 1, as `verify` does on loss).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from factory_core.archive_report import VerifyReport
from factory_core.errors import UsageError
from factory_core.local_results import (
    LocalDestroyResult,
    LocalOutputsResult,
    LocalScaleResult,
    LocalStatus,
    LocalStopResult,
    LocalUpResult,
    LogsResult,
    TailResult,
)
from factory_core.progress_events import ProgressEvent
from factory_core.score_report import ScoreReport
from factory_core.verb_results import (
    BootstrapResult,
    CloudOutputs,
    CloudStatus,
    CostResult,
    DoctorReport,
    DriftReport,
    QueryResult,
    ReportResult,
    RotationOutcome,
    UpdateOutcome,
)

# What each verb returns, per kind of stack (the interface in factory_core.verbs names these).
UpResult = LocalUpResult | UpdateOutcome
StatusResult = LocalStatus | CloudStatus
OutputsResult = LocalOutputsResult | CloudOutputs
ScaleResult = LocalScaleResult | UpdateOutcome
DestroyResult = LocalDestroyResult | UpdateOutcome


# -- requests ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpRequest:
    detach: bool = False  # local: run in the background
    yes: bool = False  # do not ask before changing a stack that asks (prod)
    allow_revert: bool = False  # cloud: apply a stack file that would undo what is deployed


@dataclass(frozen=True)
class PreviewRequest:
    pass


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class OutputsRequest:
    pass


@dataclass(frozen=True)
class ScaleRequest:
    simulators: int


@dataclass(frozen=True)
class RotateRequest:
    rollback: bool = False  # undo an interrupted rotation instead of finishing it


@dataclass(frozen=True)
class VerifyRequest:
    archive: str | None = None  # folder, file:// or s3:// URL; None: the stack's own archive
    endpoint_url: str | None = None  # S3-compatible endpoint for an s3:// archive
    window: bool = False  # the archive is a time window: no gap before a stream's first seq


@dataclass(frozen=True)
class ScoreRequest:
    """Score a detector's output against a run's labels (docs/model.md, "Scoring a detector")."""

    detections: str  # CSV or JSON lines: machine, timestamp, optional failure_mode, optional score
    archive: str | None = None  # folder, file:// or s3:// URL; None: the stack's own archive
    endpoint_url: str | None = None  # S3-compatible endpoint for an s3:// archive
    regenerate: bool = False  # labels from the model (same config, seed and start) instead of an archive
    config: str | None = None  # with regenerate: a fleet settings file instead of the stack's
    duration_s: float | None = None  # with regenerate: the simulated seconds the run covered
    start: str | None = None  # with regenerate: the run's start, ISO 8601 (default: the dry run's)
    sites: tuple[int, ...] = ()  # with regenerate: these sites (default: every site of the stack)
    threshold: float | None = None  # leave out detections scoring below this
    merge_s: float = 3_600.0  # false detections of one machine closer than this are one false alarm
    grace_s: float = 0.0  # ignore detections this long after a machine restarts
    tolerance_s: float = 60.0  # a sensor fault's window extends this far past its end


@dataclass(frozen=True)
class QueryRequest:
    """SQL over the archive's views (docs/cold-path.md, "Querying the archive")."""

    sql: str
    out: str | None = None  # write the rows to this .csv or .parquet file instead of printing them
    archive: str | None = None  # folder, file:// or s3:// URL; None: the stack's own archive
    endpoint_url: str | None = None  # S3-compatible endpoint for an s3:// archive
    timeout_s: float = 600.0  # Athena: give up (and cancel the query) after this long


@dataclass(frozen=True)
class ReportRequest:
    """One self-contained HTML report of what the factory did (docs/cold-path.md, "The report")."""

    out: str
    time_from: str | None = None  # ISO 8601 (UTC unless it says otherwise); None: the archive's start
    time_to: str | None = None  # None: the archive's end
    machines: tuple[str, ...] = ()  # machines whose signals to draw; none: one of each type
    detections: str | None = None  # a detector's output (as `score` reads it) to overlay
    archive: str | None = None  # folder, file:// or s3:// URL; None: the stack's own archive
    endpoint_url: str | None = None  # S3-compatible endpoint for an s3:// archive
    prometheus_url: str | None = None  # None: the stack's Prometheus, when it runs


@dataclass(frozen=True)
class LogsRequest:
    service: str | None = None  # None: every service
    follow: bool = False
    lines: int = 20  # from the end of each log


@dataclass(frozen=True)
class TailRequest:
    site: str | None = None  # site-NN; None: every site
    machine: str | None = None  # a machine id (it names its site and line)
    kind: str | None = None  # telemetry | ground_truth; None: both
    count: int | None = None  # stop after this many messages; None: until Ctrl-C


@dataclass(frozen=True)
class StopRequest:
    pass


@dataclass(frozen=True)
class DestroyRequest:
    yes: bool = False


@dataclass(frozen=True)
class BootstrapRequest:
    pass


@dataclass(frozen=True)
class DoctorRequest:
    pass


@dataclass(frozen=True)
class DriftRequest:
    pass


@dataclass(frozen=True)
class CostRequest:
    simulators: int | None = None  # price another fleet size instead of the stack's
    refresh_prices: bool = False  # re-read the region's price table from the AWS Price List API first


# -- progress ----------------------------------------------------------------------------------------


class ProgressSink(Protocol):
    """How a running verb talks to the person (or program) that started it. The renderer implements it.

    Safe to call from any thread (Pulumi reports engine events on its own thread).
    """

    def step(self, message: str, *, warning: bool = False) -> None:
        """A step people should see ("starting the broker", "resuming rotation g1 -> g2")."""

    def event(self, event: ProgressEvent) -> None:
        """A structured event: a Pulumi resource, a scale plan, a log line."""

    def operation(self, name: str) -> AbstractContextManager[None]:
        """Around a long operation (a Pulumi update): events inside it belong to it (a progress bar)."""
        ...

    def watch(self, run: Callable[[], None], sample: Callable[[], LocalStatus]) -> None:
        """Call `run` (blocks until the stack stops) while showing `sample()` live, or now and then."""

    def can_ask(self) -> bool:
        """Whether a person can answer `confirm` (a terminal, not --json)."""
        ...

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question (only after `can_ask`); False means no."""
        ...


class QuietSink:
    """A sink for callers that want only the result (scripts, tests, benchmarks): never asks."""

    def step(self, message: str, *, warning: bool = False) -> None:
        pass

    def event(self, event: ProgressEvent) -> None:
        pass

    def operation(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def watch(self, run: Callable[[], None], sample: Callable[[], LocalStatus]) -> None:
        run()

    def can_ask(self) -> bool:
        return False

    def confirm(self, question: str) -> bool:
        return False


def require_answerable(sink: ProgressSink, *, yes: bool, what: str) -> bool:
    """True when the verb must ask before going on; refuses at once when nobody can answer.

    `what` names the change, e.g. "updating stack 'prod'" or "destroying stack 'local'".
    """
    if yes:
        return False
    if not sink.can_ask():
        raise UsageError(f"{what} needs confirmation; re-run with --yes")
    return True


def require_confirmation(sink: ProgressSink, question: str, *, what: str) -> None:
    """Ask; a "no" is a usage error that says nothing was changed."""
    if not sink.confirm(question):
        raise UsageError(f"{what} declined; nothing was changed")


# -- the interface -----------------------------------------------------------------------------------


class StackVerbs(ABC):
    """One kind of stack's verbs. Each returns a result; none prints. See the module docstring."""

    name: str  # the stack: local, dev, prod, ...

    @abstractmethod
    def up(self, request: UpRequest, sink: ProgressSink) -> UpResult:
        """Create or update the stack and start the pipeline."""

    @abstractmethod
    def preview(self, request: PreviewRequest, sink: ProgressSink) -> UpdateOutcome:
        """What `up` would change."""

    @abstractmethod
    def status(self, request: StatusRequest, sink: ProgressSink) -> StatusResult:
        """Whether the stack runs and how the pipeline is doing."""

    @abstractmethod
    def outputs(self, request: OutputsRequest, sink: ProgressSink) -> OutputsResult:
        """Where everything is."""

    @abstractmethod
    def scale(self, request: ScaleRequest, sink: ProgressSink) -> ScaleResult:
        """Change the number of simulators and record it in the stack file."""

    @abstractmethod
    def rotate_certs(self, request: RotateRequest, sink: ProgressSink) -> RotationOutcome:
        """New device certificates, simulators moved onto them, the old ones revoked."""

    @abstractmethod
    def verify(self, request: VerifyRequest, sink: ProgressSink) -> VerifyReport:
        """Reconcile the archive: gaps, duplicates, latency."""

    @abstractmethod
    def score(self, request: ScoreRequest, sink: ProgressSink) -> ScoreReport:
        """A detector's detections against the labels of the stack's run (archived or regenerated)."""

    @abstractmethod
    def query(self, request: QueryRequest, sink: ProgressSink) -> QueryResult:
        """SQL over the archive's views: DuckDB locally, Athena in the cloud."""

    @abstractmethod
    def report(self, request: ReportRequest, sink: ProgressSink) -> ReportResult:
        """An HTML report of what the factory did, from the archive (and Prometheus when it runs)."""

    @abstractmethod
    def logs(self, request: LogsRequest, sink: ProgressSink) -> LogsResult:
        """The services' logs, as `LogLine` events."""

    @abstractmethod
    def tail(self, request: TailRequest, sink: ProgressSink) -> TailResult:
        """Live messages as `TailMessage` events, until Ctrl-C or `count` of them."""

    @abstractmethod
    def stop(self, request: StopRequest, sink: ProgressSink) -> LocalStopResult:
        """Stop the stack and keep its state."""

    @abstractmethod
    def destroy(self, request: DestroyRequest, sink: ProgressSink) -> DestroyResult:
        """Delete everything the stack created (asks first unless `yes`)."""

    @abstractmethod
    def bootstrap(self, request: BootstrapRequest, sink: ProgressSink) -> BootstrapResult:
        """Create what the stack's state needs before its first `up`."""

    @abstractmethod
    def doctor(self, request: DoctorRequest, sink: ProgressSink) -> DoctorReport:
        """Every prerequisite of the stack, checked together, each missing one with its fix."""

    @abstractmethod
    def drift(self, request: DriftRequest, sink: ProgressSink) -> DriftReport:
        """What differs between the deployed stack, reality, and this checkout."""

    @abstractmethod
    def cost(self, request: CostRequest, sink: ProgressSink) -> CostResult:
        """The stack's monthly AWS estimate, per line and per archive mode, from its config alone."""
