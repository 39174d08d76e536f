"""iotfactory: one entrypoint for the factory simulator's stacks (local, dev, prod).

`--stack local` runs everything on this machine (`local_stack.stack.LocalStack`); `dev`/`prod`
drive AWS through the Pulumi Automation API (`automation.cloud_stack.CloudStack`). Both implement
`factory_core.verbs.StackVerbs`; this file parses flags, picks the implementation, and hands the
result to `cli_render` (rich, or JSON with `--json`: docs/json-output.md). Exit codes come from
the one table in `factory_core.errors` (0 ok, 1 failed, 2 usage or config, 130 interrupted).
Every import past Typer happens inside the commands, so `--help` stays instant.
"""

# No `from __future__ import annotations` here: Typer would eval every verb's string annotations
# twice on each start (~15 ms of `--help`); only the few names imported for type checking are quoted.
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from factory_core.verb_results import VerbResult
    from factory_core.verbs import ProgressSink, StackVerbs

PROJECT_DIR = Path(__file__).resolve().parent
CLOUD_STACKS = ("dev", "prod")
# What scripts/ensure-deps.sh runs for a cloud verb (tests/test_first_run.py keeps the two equal).
INSTALL_CLOUD_GROUP = "uv sync --frozen --inexact --no-default-groups --group cloud --compile-bytecode"

app = typer.Typer(
    name="iotfactory",
    help="Factory telemetry simulator and its platform. Start with: python cli.py up --stack local",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich-formatted help imports markdown-it and doubles `--help` time.
    rich_markup_mode=None,
)

StackOpt = Annotated[
    str,
    typer.Option("--stack", "-s", help="local (this machine, no cloud), dev or prod (AWS)."),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines on stdout (docs/json-output.md).")]


def _stack_verbs(stack: str) -> "StackVerbs":
    """The implementation of the verbs for this stack."""
    from factory_core.errors import UsageError

    if stack == "local":
        from local_stack.stack import LocalStack

        return LocalStack()
    if stack in CLOUD_STACKS or (PROJECT_DIR / f"Pulumi.{stack}.yaml").exists():
        _require_cloud_packages(stack)
        from automation.cloud_stack import CloudStack

        return CloudStack(stack)
    from factory_core.stack_file import known_stacks

    known = ", ".join(known_stacks(PROJECT_DIR))
    raise UsageError(f"unknown stack '{stack}'; stacks that exist: {known}")


def _require_cloud_packages(stack: str) -> None:
    """A cloud stack needs pyproject.toml's `cloud` group, which ./iotfactory installs only when needed."""
    import importlib.metadata
    import re
    import tomllib

    from factory_core.errors import UsageError

    group = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["dependency-groups"]["cloud"]
    missing = []
    for requirement in group:
        name = re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise UsageError(
            f"stack '{stack}' needs the cloud packages ({', '.join(missing)}), which are not installed; "
            f"install them with: {INSTALL_CLOUD_GROUP} (./iotfactory does it by itself)"
        )


def _render(
    json_output: bool, produce: "Callable[[ProgressSink], VerbResult]", *, csv_output: bool = False
) -> None:
    """Run a verb, draw its result, and exit with the code the one table in factory_core.errors gives."""
    from cli_render import Renderer
    from factory_core.errors import exit_code_for, exit_code_for_result

    renderer: Renderer = Renderer(json_output=json_output, csv_output=csv_output)
    try:
        result = produce(renderer.sink)
    except BaseException as error:
        code = exit_code_for(error)
        if code is None:
            raise
        renderer.error(error)
        raise typer.Exit(int(code)) from None
    renderer.result(result)
    raise typer.Exit(int(exit_code_for_result(result.failed, usage=result.failed_as_usage)))


def _run_verb(
    stack: str,
    json_output: bool,
    call: "Callable[[StackVerbs, ProgressSink], VerbResult]",
    *,
    csv_output: bool = False,
) -> None:
    _render(json_output, lambda sink: call(_stack_verbs(stack), sink), csv_output=csv_output)


@app.command()
def up(
    stack: StackOpt = "local",
    detach: Annotated[bool, typer.Option("--detach", "-d", help="local: run in the background.")] = False,
    yes: YesOpt = False,
    allow_revert: Annotated[
        bool,
        typer.Option(
            "--allow-revert", help="cloud: apply a stack file whose simulators or certificates are older."
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Create or update the stack and start the pipeline."""
    from factory_core.verbs import UpRequest

    request = UpRequest(detach=detach, yes=yes, allow_revert=allow_revert)
    _run_verb(stack, json_output, lambda verbs, sink: verbs.up(request, sink))


@app.command()
def preview(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """Show what `up` would change (cloud stacks)."""
    from factory_core.verbs import PreviewRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.preview(PreviewRequest(), sink))


@app.command()
def destroy(stack: StackOpt = "local", yes: YesOpt = False, json_output: JsonOpt = False) -> None:
    """Stop and delete everything the stack created (asks first unless --yes)."""
    from factory_core.verbs import DestroyRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.destroy(DestroyRequest(yes=yes), sink))


@app.command()
def stop(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """local: stop a running stack and keep its state (archive, logs, certificates)."""
    from factory_core.verbs import StopRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.stop(StopRequest(), sink))


@app.command()
def outputs(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """Print where everything is: URLs, endpoint, archive, cluster."""
    from factory_core.verbs import OutputsRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.outputs(OutputsRequest(), sink))


@app.command()
def status(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """Show whether the stack runs and how the pipeline is doing."""
    from factory_core.verbs import StatusRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.status(StatusRequest(), sink))


@app.command()
def scale(
    simulators: Annotated[int, typer.Option("--simulators", "-n", help="Simulator processes/tasks.")],
    stack: StackOpt = "local",
    json_output: JsonOpt = False,
) -> None:
    """Change the number of simulators and record it in the stack's config."""
    from factory_core.verbs import ScaleRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.scale(ScaleRequest(simulators), sink))


@app.command("rotate-certs")
def rotate_certs(
    stack: StackOpt = "local",
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Undo an interrupted rotation instead of resuming it.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Issue new device certificates, move every simulator onto them, then revoke the old ones."""
    from factory_core.verbs import RotateRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.rotate_certs(RotateRequest(rollback), sink))


@app.command()
def verify(
    stack: StackOpt = "local",
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            help="Reconcile this archive instead of the stack's: a folder, file:///path or s3://BUCKET[/PREFIX].",
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--s3-endpoint-url", help="S3-compatible endpoint for --archive (moto, MinIO)."),
    ] = None,
    window: Annotated[
        bool,
        typer.Option("--window", help="The archive is a time window: no gap before a stream's first seq."),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Reconcile the archive against what was published: gaps, duplicates, latency (exit 1 on loss)."""
    from factory_core.verbs import VerifyRequest

    request = VerifyRequest(archive=archive, endpoint_url=endpoint_url, window=window)
    # An explicit archive is read the same way whatever the stack: with the local tools.
    _run_verb("local" if archive else stack, json_output, lambda verbs, sink: verbs.verify(request, sink))


ArchiveOpt = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Read this archive instead of the stack's: a folder, file:///path or s3://BUCKET[/PREFIX].",
    ),
]
EndpointOpt = Annotated[
    str | None, typer.Option("--s3-endpoint-url", help="S3-compatible endpoint for --archive (moto, MinIO).")
]


class QueryFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


@app.command()
def query(
    sql: Annotated[
        str,
        typer.Argument(
            help="SQL over the views telemetry, ground_truth, ground_truth_events, states and "
            "archive_records (docs/cold-path.md). DuckDB on the local stack, Athena on cloud stacks."
        ),
    ],
    stack: StackOpt = "local",
    output_format: Annotated[
        QueryFormat, typer.Option("--format", "-f", help="table, csv, or json (docs/json-output.md).")
    ] = QueryFormat.TABLE,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the rows to a .csv or .parquet file.")
    ] = None,
    archive: ArchiveOpt = None,
    endpoint_url: EndpointOpt = None,
) -> None:
    """Run SQL over the archive: the same views on every stack."""
    from factory_core.verbs import QueryRequest

    request = QueryRequest(
        sql, out=None if out is None else str(out), archive=archive, endpoint_url=endpoint_url
    )
    # An explicit archive is read the same way whatever the stack: with the local tools (DuckDB).
    _run_verb(
        "local" if archive else stack,
        output_format is QueryFormat.JSON,
        lambda verbs, sink: verbs.query(request, sink),
        csv_output=output_format is QueryFormat.CSV,
    )


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")],
    stack: StackOpt = "local",
    time_from: Annotated[
        str | None, typer.Option("--from", help="Start, ISO 8601 (UTC unless it names a zone).")
    ] = None,
    time_to: Annotated[str | None, typer.Option("--to", help="End, ISO 8601.")] = None,
    machine: Annotated[
        list[str] | None,
        typer.Option("--machine", "-m", help="Draw this machine's signals (repeatable)."),
    ] = None,
    detections: Annotated[
        Path | None,
        typer.Option("--detections", help="A detector's output (as `score` reads it) to overlay."),
    ] = None,
    archive: ArchiveOpt = None,
    endpoint_url: EndpointOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Write one self-contained HTML report: pipeline, OEE per line, states, signals and faults."""
    from factory_core.verbs import ReportRequest

    request = ReportRequest(
        out=str(out),
        time_from=time_from,
        time_to=time_to,
        machines=tuple(machine or ()),
        detections=None if detections is None else str(detections),
        archive=archive,
        endpoint_url=endpoint_url,
    )
    _run_verb("local" if archive else stack, json_output, lambda verbs, sink: verbs.report(request, sink))


@app.command()
def score(
    detections: Annotated[
        Path, typer.Argument(help="CSV (machine,timestamp[,failure_mode][,score]) or JSON lines.")
    ],
    stack: StackOpt = "local",
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive", help="Labels from this archive: a folder, file:///path, s3://BUCKET[/PREFIX]."
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--s3-endpoint-url", help="S3-compatible endpoint for --archive.")
    ] = None,
    regenerate: Annotated[
        bool, typer.Option("--regenerate", help="Labels from the model again: same config, seed and start.")
    ] = False,
    config: Annotated[
        str | None, typer.Option("--config", help="With --regenerate: this fleet file, not the stack's.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="With --regenerate: simulated seconds of the run.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--start", help="With --regenerate: the run's start (default: the dry run's)."),
    ] = None,
    site: Annotated[
        list[int] | None, typer.Option("--site-index", help="With --regenerate: only this site (repeatable).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Leave out detections scoring below this.")
    ] = None,
    merge: Annotated[
        float, typer.Option("--merge-s", help="False detections this close: one alarm.")
    ] = 3600.0,
    grace: Annotated[
        float, typer.Option("--grace-s", help="Ignore detections this long after repairs.")
    ] = 0.0,
    tolerance: Annotated[
        float, typer.Option("--tolerance-s", help="Sensor-fault windows extend this far past their end.")
    ] = 60.0,
    json_output: JsonOpt = False,
) -> None:
    """Score a detector against a run's labels: precision, recall, F1, lead time, false alarms."""
    from factory_core.verbs import ScoreRequest

    request = ScoreRequest(
        detections=str(detections),
        archive=archive,
        endpoint_url=endpoint_url,
        regenerate=regenerate,
        config=config,
        duration_s=duration,
        start=start,
        sites=tuple(site or ()),
        threshold=threshold,
        merge_s=merge,
        grace_s=grace,
        tolerance_s=tolerance,
    )
    # An explicit archive or config file is read the same way whatever the stack: with the local tools.
    explicit = archive is not None or config is not None
    _run_verb("local" if explicit else stack, json_output, lambda verbs, sink: verbs.score(request, sink))


@app.command()
def logs(
    stack: StackOpt = "local",
    service: Annotated[
        str | None, typer.Argument(help="broker, rule-runner, prometheus, grafana or simulator-NN.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end of each log.")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """Print the logs of the stack's services (--json: one line per log line, with its service)."""
    from factory_core.verbs import LogsRequest

    request = LogsRequest(service=service, follow=follow, lines=lines)
    _run_verb(stack, json_output, lambda verbs, sink: verbs.logs(request, sink))


@app.command()
def tail(
    stack: StackOpt = "local",
    site: Annotated[str | None, typer.Option("--site", help="Only this site, e.g. site-00.")] = None,
    machine: Annotated[
        str | None, typer.Option("--machine", help="Only this machine, e.g. site-00-line-01-cnc_mill-01.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="telemetry or ground_truth (default: both).")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="Stop after this many messages (default: Ctrl-C).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Show live messages as they reach the broker (local; read-only identity of its own)."""
    from factory_core.verbs import TailRequest

    request = TailRequest(site=site, machine=machine, kind=kind, count=count)
    _run_verb(stack, json_output, lambda verbs, sink: verbs.tail(request, sink))


@app.command()
def cost(
    stack: StackOpt = "dev",
    simulators: Annotated[
        int | None, typer.Option("--simulators", "-n", help="Estimate for this many simulators instead.")
    ] = None,
    refresh_prices: Annotated[
        bool,
        typer.Option("--refresh-prices", help="Re-read the price table from the AWS Price List API first."),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Estimate the stack's monthly AWS bill from its config, per line and per archive mode."""
    from factory_core.verbs import CostRequest

    request = CostRequest(simulators=simulators, refresh_prices=refresh_prices)
    _run_verb(stack, json_output, lambda verbs, sink: verbs.cost(request, sink))


@app.command()
def bootstrap(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """Create the Pulumi state bucket and secrets KMS key a team needs before the first `up` (cloud)."""
    from factory_core.verbs import BootstrapRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.bootstrap(BootstrapRequest(), sink))


@app.command()
def doctor(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """Check every prerequisite of the stack at once, each missing one with its fix (exit 2 if any)."""
    from factory_core.verbs import DoctorRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.doctor(DoctorRequest(), sink))


@app.command()
def drift(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """cloud: compare the deployed stack with AWS and with this checkout (exit 1 on drift)."""
    from factory_core.verbs import DriftRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.drift(DriftRequest(), sink))


@app.command()
def dashboards(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dashboard JSON into.")],
    json_output: JsonOpt = False,
) -> None:
    """Write the generated Grafana dashboards so they can be imported into any Grafana."""

    def write(_sink: "ProgressSink") -> "VerbResult":
        from factory_core.verb_results import DashboardsResult
        from observability.dashboards import write_dashboards

        return DashboardsResult(tuple(str(path) for path in write_dashboards(out)))

    _render(json_output, write)


if __name__ == "__main__":
    app()
