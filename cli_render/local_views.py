"""The local stack drawn with rich: the pipeline line, the services table, the live view, "where is what"."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from factory_core.local_results import (
    BrokerRefusals,
    LocalOutputs,
    LocalService,
    LocalStatus,
    PipelineStatus,
    SimulatorCounts,
)


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def pipeline_line(pipeline: PipelineStatus | None, simulators: SimulatorCounts | None) -> Text:
    text = Text()
    counts = simulators or SimulatorCounts(0, 0)
    text.append(f"simulators {counts.up}/{counts.desired} up", style="bold")
    if pipeline is None:
        return text
    lag = pipeline.lag_s
    errors = pipeline.errors_total
    text.append(f"   published {_rate(pipeline.published_per_s)} msg/s")
    text.append(f"   archived {_rate(pipeline.archived_per_s)} msg/s")
    text.append(f"   lag {max(0.0, lag):.1f} s" if lag is not None else "   lag -")
    text.append(f"   errors {errors:,}", style="red" if errors else None)
    if pipeline.archive_write_errors_total:
        text.append(f" ({pipeline.archive_write_errors_total:,} archive writes failed)", style="red")
    if pipeline.unanswered:
        text.append(f"   not answering: {', '.join(pipeline.unanswered)}", style="red")
    text.append(
        f"   (total: {pipeline.published_total:,} published,"
        f" {pipeline.archived_total:,} archived,"
        f" {pipeline.quarantined_total:,} quarantined)",
        style="dim",
    )
    return text


def services_table(services: Iterable[LocalService]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("service", "state", "pid", "port", "restarts", "certificate"):
        table.add_column(column)
    for service in services:
        state = service.state
        style = "green" if state == "running" else ("yellow" if state in ("starting", "stopping") else "red")
        table.add_row(
            service.name,
            Text(state, style=style),
            str(service.pid or "-"),
            str(service.port or "-"),
            str(service.restarts),
            service.generation or "-",
        )
    return table


def refusals_line(refusals: BrokerRefusals | None) -> Text | None:
    """What only the broker's log knows, when there is anything: counts and where to read more."""
    if refusals is None:
        return None
    counts = [
        (refusals.oversize_disconnects, "client(s) cut for an oversize packet"),
        (refusals.tls_refusals, "connection(s) refused in TLS (revoked, foreign or no certificate)"),
        (refusals.sessions_cut, "session(s) of deleted identities closed"),
        (refusals.takeovers, "connection(s) replaced by a second one with the same certificate"),
    ]
    shown = [f"{count:,} {what}" for count, what in counts if count]
    if not shown:
        return None
    return Text(f"broker refused: {'; '.join(shown)} - `python cli.py logs broker`", style="yellow")


def status_renderable(status: LocalStatus) -> RenderableType:
    parts: list[RenderableType] = [pipeline_line(status.pipeline, status.simulators)]
    refusals = refusals_line(status.broker_refusals)
    if refusals is not None:
        parts.append(refusals)
    rotation = status.rotation
    if rotation:
        parts.append(
            Text(
                f"certificate rotation {rotation.get('from')} -> {rotation.get('to')} "
                f"at step {rotation.get('step')}",
                style="yellow",
            )
        )
    parts.append(services_table(status.services))
    events = list(status.events)[-5:]
    if events:
        parts.append(Text("recent: " + " | ".join(events), style="dim"))
    return Group(*parts)


def where_table(outputs: LocalOutputs) -> Table:
    """The block `up` prints and `outputs` shows: where every piece of the stack is."""
    rows: list[tuple[str, object]] = [
        ("Broker (MQTT over mTLS)", outputs.broker_url),
        ("CA certificate", outputs.ca_certificate),
        ("Prometheus", outputs.prometheus_url),
        ("Alertmanager", outputs.alertmanager_url),
        ("Grafana", outputs.grafana_url or outputs.grafana_skipped or "-"),
        ("Archive", outputs.archive),
        ("Logs", outputs.logs_dir),
        ("State", outputs.state_dir),
        ("Config", outputs.config_file),
        (
            "Simulators",
            f"{outputs.simulator_count} (certificate generation {outputs.certificate_generation})",
        ),
    ]
    if outputs.grafana_url and outputs.grafana_password_file:
        rows.insert(5, ("Grafana login", f"admin / password in {outputs.grafana_password_file}"))
    if outputs.grafana_container:
        rows.insert(5, ("Grafana container", outputs.grafana_container))
    if outputs.silence_command:
        rows.insert(4, ("Silence alerts", outputs.silence_command))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, Text(str(value) if value is not None else "-"))
    return table
