"""iotfactory: one entrypoint for the factory simulator's stacks (local, dev, prod).

`--stack local` runs everything on this machine (`local_stack.stack.LocalStack`); `dev`/`prod`
drive AWS through the Pulumi Automation API (`automation.cloud_stack.CloudStack`). Both implement
`factory_core.verbs.StackVerbs`; this file parses flags, picks the implementation, and hands the
result to `cli_render` (rich, or JSON with `--json`: docs/json-output.md). Exit codes come from
the one table in `factory_core.errors` (0 ok, 1 failed, 2 usage or config, 130 interrupted).
Every import past Typer happens inside the commands, so `--help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cli_render import Renderer
    from factory_core.verb_results import VerbResult
    from factory_core.verbs import ProgressSink, StackVerbs

PROJECT_DIR = Path(__file__).resolve().parent
CLOUD_STACKS = ("dev", "prod")

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


def _stack_verbs(stack: str) -> StackVerbs:
    """The implementation of the verbs for this stack."""
    from factory_core.errors import UsageError

    if stack == "local":
        from local_stack.stack import LocalStack

        return LocalStack()
    if stack in CLOUD_STACKS or (PROJECT_DIR / f"Pulumi.{stack}.yaml").exists():
        from automation.cloud_stack import CloudStack

        return CloudStack(stack)
    from factory_core.stack_file import known_stacks

    known = ", ".join(known_stacks(PROJECT_DIR))
    raise UsageError(f"unknown stack '{stack}'; stacks that exist: {known}")


def _render(json_output: bool, produce: Callable[[ProgressSink], VerbResult]) -> None:
    """Run a verb, draw its result, and exit with the code the one table in factory_core.errors gives."""
    from cli_render import Renderer
    from factory_core.errors import exit_code_for, exit_code_for_result

    renderer: Renderer = Renderer(json_output=json_output)
    try:
        result = produce(renderer.sink)
    except BaseException as error:
        code = exit_code_for(error)
        if code is None:
            raise
        renderer.error(error)
        raise typer.Exit(int(code)) from None
    renderer.result(result)
    raise typer.Exit(int(exit_code_for_result(result.failed)))


def _run_verb(stack: str, json_output: bool, call: Callable[[StackVerbs, ProgressSink], VerbResult]) -> None:
    _render(json_output, lambda sink: call(_stack_verbs(stack), sink))


@app.command()
def up(
    stack: StackOpt = "local",
    detach: Annotated[bool, typer.Option("--detach", "-d", help="local: run in the background.")] = False,
    yes: YesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Create or update the stack and start the pipeline."""
    from factory_core.verbs import UpRequest

    _run_verb(stack, json_output, lambda verbs, sink: verbs.up(UpRequest(detach=detach, yes=yes), sink))


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
def dashboards(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dashboard JSON into.")],
    json_output: JsonOpt = False,
) -> None:
    """Write the generated Grafana dashboards so they can be imported into any Grafana."""

    def write(_sink: ProgressSink) -> VerbResult:
        from factory_core.verb_results import DashboardsResult
        from observability.dashboards import write_dashboards

        return DashboardsResult(tuple(str(path) for path in write_dashboards(out)))

    _render(json_output, write)


if __name__ == "__main__":
    app()
