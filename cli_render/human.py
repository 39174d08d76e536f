"""Every verb's result drawn for people: one function per result type, looked up in `RENDERERS`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli_render import query_view
from cli_render.cost_view import render_cost
from cli_render.local_views import status_renderable, where_table
from cli_render.score_view import render_score
from cli_render.verify_view import render_report
from factory_core.archive_report import VerifyReport
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
from factory_core.score_report import ScoreReport
from factory_core.verb_results import (
    BootstrapResult,
    CloudOutputs,
    CloudStatus,
    CostResult,
    DashboardsResult,
    DoctorReport,
    DriftReport,
    QueryResult,
    ReportResult,
    RotationOutcome,
    UpdateOutcome,
    VerbResult,
    describe_changes,
)

# Outputs `status` shows besides every `...Url`.
STATUS_OUTPUTS = ("iotDataEndpoint", "archiveBucket", "clusterName")


def _say(console: Console, message: str) -> None:
    console.print(Text(message), soft_wrap=True)


def _value(value: Any) -> Text:
    # Text, not a string: rich would read "[secret]" (the mask) as markup and print nothing.
    return Text(value if isinstance(value, str) else json.dumps(value))


# -- local stack -------------------------------------------------------------------------------------


def local_up(result: LocalUpResult, console: Console) -> None:
    if not result.detached or result.outputs is None:
        return  # the foreground run has shown everything while it ran
    console.print(where_table(result.outputs))
    _say(
        console,
        f"pipeline up: first message archived {result.first_archived_after_s or 0:.1f} s after `up`; "
        f"supervisor pid {result.supervisor_pid}",
    )
    _say(
        console,
        "next: `python cli.py status --stack local`, `logs --stack local -f`, `verify --stack local`; "
        "`stop --stack local` stops it and keeps the archive, certificates and logs",
    )


def local_status(result: LocalStatus, console: Console) -> None:
    if result.phase == "absent":
        _say(console, "the local stack has not been started; run `python cli.py up --stack local`")
    elif result.running:
        uptime = int(result.uptime_s or 0)
        _say(
            console,
            f"local stack: {result.phase} (supervisor pid {result.supervisor_pid}, "
            f"up {uptime // 60} min {uptime % 60} s, certificates {result.generation})",
        )
        console.print(status_renderable(result))
    else:
        error = f": {result.error}" if result.error else ""
        _say(
            console, f"local stack: not running (last run {result.phase}{error}); state in {result.state_dir}"
        )


def local_outputs(result: LocalOutputsResult, console: Console) -> None:
    console.print(where_table(result.outputs))
    if result.prometheus_links:
        _say(
            console,
            "Grafana does not run; the main panels in Prometheus (all of them: "
            "docs/observability-reference.md):",
        )
        for link in result.prometheus_links:
            _say(console, f"  {link.title}: {link.url}")
    if not result.running:
        _say(console, "(not running: these are the addresses of its last run)")


def local_stop(result: LocalStopResult, console: Console) -> None:
    _say(
        console,
        f"stopped; state kept in {result.state_dir}" if result.stopped else "the local stack is not running",
    )


def local_destroy(result: LocalDestroyResult, console: Console) -> None:
    if not result.destroyed:
        _say(console, f"nothing to destroy: {result.state_dir} does not exist")
        return
    _say(
        console,
        f"destroyed: deleted {result.state_dir}: {result.deleted_text}; "
        f"the config in {result.config_file} is kept",
    )


def local_scale(result: LocalScaleResult, console: Console) -> None:
    if result.running:
        _say(console, f"scaled from {result.before} to {result.simulators} simulators")
        return
    _say(
        console,
        f"the local stack is not running; recorded iotfactory:simulatorCount: {result.simulators} in "
        f"{result.config_file} for the next `up`",
    )


def logs(result: LogsResult, console: Console) -> None:
    """The lines themselves went out as they were read."""


def tail(result: TailResult, console: Console) -> None:
    """The messages went out as they came; this is the line after Ctrl-C."""
    filters = ", ".join(result.topic_filters)
    _say(console, f"{result.messages} message(s) on {filters} (watched as {result.identity})")


def rotation(result: RotationOutcome, console: Console) -> None:
    done = "rolled back" if result.rolled_back else "rotated"
    _say(console, f"certificates {done}: stack '{result.stack}' uses generation {result.generation}")


def verify(result: VerifyReport, console: Console) -> None:
    render_report(result, console)


# -- cloud stacks ------------------------------------------------------------------------------------


def _outputs_table(console: Console, stack: str, outputs: Mapping[str, Any]) -> None:
    if not outputs:
        _say(console, f"stack '{stack}' has no outputs yet")
        return
    table = Table(title=f"stack {stack}", show_header=True, header_style="bold")
    table.add_column("output")
    table.add_column("value", overflow="fold")
    for key, value in outputs.items():
        table.add_row(key, _value(value))
    console.print(table)


def update(result: UpdateOutcome, console: Console) -> None:
    _say(console, f"{result.operation} of '{result.stack}' done: {describe_changes(result.resource_changes)}")
    if result.operation == "up":
        _outputs_table(console, result.stack, result.outputs)


def cloud_outputs(result: CloudOutputs, console: Console) -> None:
    _outputs_table(console, result.stack, result.outputs)


def cloud_status(result: CloudStatus, console: Console) -> None:
    table = Table(title=f"stack {result.stack}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("backend", Text(result.backend))
    last = result.last_update
    table.add_row(
        "last update",
        "never"
        if last is None
        else f"{last.kind} {last.result} (started {last.started}, ended {last.ended})",
    )
    table.add_row("simulators", "program default" if result.simulators is None else str(result.simulators))
    rotation = result.rotation
    table.add_row(
        "certificates",
        result.certificate_generation
        + (
            ""
            if rotation is None
            else f" (rotation {rotation.get('from')} -> {rotation.get('to')}: {rotation.get('step')})"
        ),
    )
    for service in result.services:
        state = "steady" if service.steady else service.rollout.lower()
        table.add_row(
            f"service {service.name}",
            f"{service.running}/{service.desired} running, {service.pending} pending, {state}",
        )
    if result.services_note:
        table.add_row("services", Text(result.services_note))
    for key, value in result.outputs.items():
        if key.endswith("Url") or key in STATUS_OUTPUTS:
            table.add_row(key, _value(value))
    console.print(table)


def bootstrap(result: BootstrapResult, console: Console) -> None:
    for change in result.changes or ("nothing to change: the state backend is already set up",):
        _say(console, f"• {change}")
    _say(console, f"state backend:    pulumi login '{result.backend_url}'")
    _say(console, f"secrets provider: {result.secrets_provider}")
    if result.ci_policy_file:
        _say(console, f"CI role policy:   {result.ci_policy_file} (state and secrets; see docs/cloud.md, CI)")
    _say(
        console,
        f"recorded in {result.backends_file} and {result.stack_file}; the cloud verbs use them. "
        f"Next: python cli.py up --stack {result.stack}",
    )


def doctor(result: DoctorReport, console: Console) -> None:
    for check in result.checks:
        mark = Text("✓ ", style="green") if check.ok else Text("✗ ", style="red")
        line = Text.assemble(mark, (check.name, "bold"), f": {check.detail}")
        if not check.ok and check.fix:
            line.append(f"\n    fix: {check.fix}", style="yellow")
        console.print(line, soft_wrap=True)
    if result.missing:
        total = len(result.checks)
        _say(console, f"{result.missing} of {total} prerequisites of stack '{result.stack}' missing")
    else:
        _say(console, f"stack '{result.stack}': every prerequisite is in place")


def drift(result: DriftReport, console: Console) -> None:
    sections = (
        ("changed outside Pulumi (refresh would record it; `up` puts it back)", result.changed_outside),
        ("in this checkout but not deployed (`up` would apply it)", result.not_deployed),
    )
    for title, items in sections:
        if not items:
            continue
        _say(console, f"{title}:")
        for item in items:
            properties = f" [{', '.join(item.properties)}]" if item.properties else ""
            _say(console, f"  {item.op:<8} {item.type} {item.name}{properties}")
    if result.drifted:
        _say(console, f"stack '{result.stack}' has drifted; see docs/cloud.md, Drift, for what to do")
    else:
        _say(console, f"stack '{result.stack}': no drift (AWS, the state and this checkout agree)")


def dashboards(result: DashboardsResult, console: Console) -> None:
    for path in result.files:
        _say(console, path)


RENDERERS: dict[type[VerbResult], Callable[[Any, Console], None]] = {
    LocalUpResult: local_up,
    LocalStatus: local_status,
    LocalOutputsResult: local_outputs,
    LocalStopResult: local_stop,
    LocalDestroyResult: local_destroy,
    LocalScaleResult: local_scale,
    LogsResult: logs,
    TailResult: tail,
    RotationOutcome: rotation,
    VerifyReport: verify,
    ScoreReport: render_score,
    UpdateOutcome: update,
    CloudOutputs: cloud_outputs,
    CloudStatus: cloud_status,
    BootstrapResult: bootstrap,
    DashboardsResult: dashboards,
    DoctorReport: doctor,
    DriftReport: drift,
    CostResult: render_cost,
    QueryResult: query_view.render_query,
    ReportResult: query_view.render_report,
}


def render(result: VerbResult, console: Console) -> None:
    RENDERERS[type(result)](result, console)
