"""iotfactory: one entrypoint for the factory simulator's stacks (local, dev, prod).

Exit codes: 0 ok, 1 the operation failed, 2 usage or config error.
`--stack local` runs everything on this machine; `dev`/`prod` drive AWS through the Pulumi
Automation API. Heavy imports (Pulumi, pulumi_aws, boto3) happen inside the commands that need
them so that `--help` stays instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

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
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _operations(stack: str) -> ModuleType:
    """The module that implements the verbs for this stack (same function names on both)."""
    if stack == "local":
        from local_stack import operations
    elif stack in CLOUD_STACKS or (PROJECT_DIR / f"Pulumi.{stack}.yaml").exists():
        from automation import operations
    else:
        from factory_core.stack_file import known_stacks

        known = ", ".join(known_stacks(PROJECT_DIR))
        raise _fail(f"unknown stack '{stack}'; stacks that exist: {known}", 2)
    return operations


def _run(stack: str | None, verb: str, call: Callable[[ModuleType], Any]) -> None:
    from factory_core.errors import OperationFailed, UsageError

    try:
        ops = _operations(stack) if stack is not None else None
        if ops is not None and not hasattr(ops, verb):
            raise UsageError(f"'{verb}' is not available on stack '{stack}'")
        result = call(ops)
    except UsageError as exc:
        raise _fail(str(exc), 2) from None
    except OperationFailed as exc:
        raise _fail(str(exc), 1) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    if isinstance(result, int) and result != 0:
        raise typer.Exit(result)


@app.command()
def up(
    stack: StackOpt = "local",
    detach: Annotated[bool, typer.Option("--detach", "-d", help="local: run in the background.")] = False,
    yes: YesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Create or update the stack and start the pipeline."""
    _run(stack, "up", lambda ops: ops.up(stack, detach=detach, yes=yes, json_output=json_output))


@app.command()
def preview(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """Show what `up` would change."""
    _run(stack, "preview", lambda ops: ops.preview(stack, json_output=json_output))


@app.command()
def destroy(stack: StackOpt = "local", yes: YesOpt = False, json_output: JsonOpt = False) -> None:
    """Stop and delete everything the stack created (asks first unless --yes)."""
    if not yes:
        if not sys.stdin.isatty():
            raise _fail(f"destroy needs confirmation; re-run with --yes to destroy stack '{stack}'", 2)
        typer.confirm(f"Destroy stack '{stack}' and everything it created?", abort=True)
    _run(stack, "destroy", lambda ops: ops.destroy(stack, json_output=json_output))


@app.command()
def stop(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """local: stop a running stack and keep its state (archive, logs, certificates)."""
    _run(stack, "stop", lambda ops: ops.stop(stack, json_output=json_output))


@app.command()
def outputs(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """Print where everything is: URLs, endpoint, archive, cluster."""
    _run(stack, "outputs", lambda ops: ops.outputs(stack, json_output=json_output))


@app.command()
def status(stack: StackOpt = "local", json_output: JsonOpt = False) -> None:
    """Show whether the stack runs and how the pipeline is doing."""
    _run(stack, "status", lambda ops: ops.status(stack, json_output=json_output))


@app.command()
def scale(
    simulators: Annotated[int, typer.Option("--simulators", "-n", help="Simulator processes/tasks.")],
    stack: StackOpt = "local",
    json_output: JsonOpt = False,
) -> None:
    """Change the number of simulators and record it in the stack's config."""
    _run(stack, "scale", lambda ops: ops.scale(stack, simulators, json_output=json_output))


@app.command("rotate-certs")
def rotate_certs(
    stack: StackOpt = "local",
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Undo an interrupted rotation instead of resuming it.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Issue new device certificates, move every simulator onto them, then revoke the old ones."""
    _run(
        stack, "rotate_certs", lambda ops: ops.rotate_certs(stack, rollback=rollback, json_output=json_output)
    )


@app.command()
def verify(
    stack: StackOpt = "local",
    json_output: JsonOpt = False,
) -> None:
    """Reconcile the archive against what was published: gaps, duplicates, latency."""
    _run(stack, "verify", lambda ops: ops.verify(stack, json_output=json_output))


@app.command()
def logs(
    stack: StackOpt = "local",
    service: Annotated[
        str | None, typer.Argument(help="broker, rule-runner, prometheus, grafana or simulator-NN.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines from the end of each log.")] = 20,
) -> None:
    """Print the logs of the stack's services."""
    _run(stack, "logs", lambda ops: ops.logs(stack, service=service, follow=follow, lines=lines))


@app.command()
def bootstrap(stack: StackOpt = "dev", json_output: JsonOpt = False) -> None:
    """Create the Pulumi state bucket and secrets KMS key a team needs before the first `up`."""
    _run(stack, "bootstrap", lambda ops: ops.bootstrap(stack, json_output=json_output))


@app.command()
def dashboards(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dashboard JSON into.")],
) -> None:
    """Write the generated Grafana dashboards so they can be imported into any Grafana."""

    def write(_: None) -> None:
        from observability.dashboards import write_dashboards

        for path in write_dashboards(out):
            typer.echo(str(path))

    _run(None, "dashboards", write)


if __name__ == "__main__":
    app()
