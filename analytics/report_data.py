"""What the report shows, as data: SQL over the views (written in the views' dialect) and Prometheus.

OEE is defined as on the dashboards (observability/dashboards/factory_overview.py), over the
machines that make parts (an ideal cycle time above 0):
availability = running seconds / planned seconds (every state but `maintenance`),
performance = sum of (parts made * ideal cycle time) / running seconds,
quality = good parts / all parts; OEE = availability * performance * quality, summed per line.
The dashboards take state seconds and part counters from Prometheus; here they come from the
archive (`states` and the telemetry part counters), over the report's window.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from analytics.archive_db import ArchiveDatabase
from analytics.tables import QueryTable
from factory_core import archive_views
from factory_core import metric_catalog as catalog
from factory_core.fleet import FleetSettings, MachineType
from factory_core.payload_contract import SIGNALS

PROMETHEUS_TIMEOUT_S = 5.0
MAX_POINTS_PER_SIGNAL = 5_000  # beyond this, a machine's signals are averaged per minute (or hour)
MAX_LATENCIES = 200_000


@dataclass(frozen=True)
class Window:
    start: dt.datetime  # naive UTC, as the views return times
    end: dt.datetime

    def literal(self, moment: dt.datetime) -> str:
        return f"TIMESTAMP '{moment:%Y-%m-%d %H:%M:%S.%f}'"

    @property
    def t0(self) -> str:
        return self.literal(self.start)

    @property
    def t1(self) -> str:
        return self.literal(self.end)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


class ReportData:
    """The report's queries over one open `ArchiveDatabase`."""

    def __init__(self, database: ArchiveDatabase) -> None:
        self.database = database

    def sql(self, text: str) -> QueryTable:
        return self.database.query(archive_views.transpile(text, "duckdb"))

    def window(self, start: dt.datetime | None, end: dt.datetime | None) -> Window | None:
        """The telemetry's time span, narrowed to `start`/`end`; None when no telemetry is in it."""
        first, last = self.sql("SELECT min(ts), max(ts) FROM telemetry").rows[0]
        if first is None:
            return None
        window = Window(max(first, start or first), min(last, end or last))
        return window if window.start < window.end else None

    def machines(self, window: Window) -> list[dict[str, Any]]:
        return self.sql(
            f"""SELECT site, line, machine, type, count(*) AS samples FROM telemetry
                WHERE ts BETWEEN {window.t0} AND {window.t1}
                GROUP BY site, line, machine, type ORDER BY machine"""
        ).records()

    def states(self, window: Window) -> list[dict[str, Any]]:
        return self.sql(
            f"""SELECT machine, type, state, reason, greatest(start, {window.t0}) AS start,
                       least("end", {window.t1}) AS "end"
                FROM states WHERE start < {window.t1} AND "end" > {window.t0}
                ORDER BY machine, start"""
        ).records()

    def oee(self, window: Window, ideal_cycle_times: Mapping[str, float]) -> list[dict[str, Any]]:
        """Per line: running and planned seconds, ideal seconds of the parts made, good and rejected."""
        from observability.dashboards.factory_overview import PLANNED_STATES

        # The dashboards' planned time (`state!="maintenance"`), so both OEEs count the same losses.
        unplanned = PLANNED_STATES.removeprefix("!=")
        producing = {machine: seconds for machine, seconds in ideal_cycle_times.items() if seconds > 0}
        if not producing:
            return []
        values = ", ".join(f"('{name}', CAST({seconds!r} AS DOUBLE))" for name, seconds in producing.items())
        rows = self.sql(
            f"""WITH ideal (machine, ideal_cycle_time_s) AS (VALUES {values}),
            clipped AS (
              SELECT site, line, machine, state,
                     CAST(date_diff('millisecond', greatest(start, {window.t0}), least("end", {window.t1}))
                          AS DOUBLE) / 1000 AS seconds
              FROM states WHERE start < {window.t1} AND "end" > {window.t0}),
            times AS (
              SELECT site, line, machine,
                     sum(CASE WHEN state = 'running' THEN seconds ELSE 0 END) AS running_s,
                     sum(CASE WHEN state <> '{unplanned}' THEN seconds ELSE 0 END) AS planned_s
              FROM clipped GROUP BY site, line, machine),
            steps AS (
              SELECT machine, ts, parts_good, parts_rejected,
                     lag(parts_good) OVER (PARTITION BY machine ORDER BY ts) AS good_before,
                     lag(parts_rejected) OVER (PARTITION BY machine ORDER BY ts) AS rejected_before
              FROM telemetry WHERE ts <= {window.t1}),
            made AS (
              -- Counters count from the simulator's start: a drop is a restart, counting from 0.
              SELECT machine,
                     sum(CASE WHEN parts_good >= good_before THEN parts_good - good_before
                              ELSE parts_good END) AS good,
                     sum(CASE WHEN parts_rejected >= rejected_before THEN parts_rejected - rejected_before
                              ELSE parts_rejected END) AS rejected
              FROM steps WHERE ts > {window.t0} AND good_before IS NOT NULL GROUP BY machine)
            SELECT t.site, t.line, count(*) AS machines, sum(t.running_s) AS running_s,
                   sum(t.planned_s) AS planned_s,
                   sum((coalesce(m.good, 0) + coalesce(m.rejected, 0)) * i.ideal_cycle_time_s) AS ideal_s,
                   sum(coalesce(m.good, 0)) AS good, sum(coalesce(m.rejected, 0)) AS rejected
            FROM times AS t JOIN ideal AS i ON i.machine = t.machine
            LEFT JOIN made AS m ON m.machine = t.machine
            GROUP BY t.site, t.line ORDER BY t.site, t.line"""
        ).records()
        for row in rows:
            row.update(oee_parts(row))
        return rows

    def signals(self, machine: str, machine_type: str, window: Window, samples: int) -> QueryTable:
        names = [spec.name for spec in SIGNALS[MachineType(machine_type)]]
        where = f"machine = '{machine}' AND ts BETWEEN {window.t0} AND {window.t1}"
        if samples <= MAX_POINTS_PER_SIGNAL:
            return self.sql(f"SELECT ts, {', '.join(names)} FROM telemetry WHERE {where} ORDER BY ts")
        unit = "minute" if samples / 60 <= MAX_POINTS_PER_SIGNAL else "hour"
        averages = ", ".join(f"avg({name}) AS {name}" for name in names)
        return self.sql(
            f"""SELECT date_trunc('{unit}', ts) AS ts, {averages} FROM telemetry WHERE {where}
                GROUP BY date_trunc('{unit}', ts) ORDER BY 1"""
        )

    def faults(self, window: Window) -> list[dict[str, Any]]:
        return self.sql(
            f"""SELECT machine, type, fault, fault_class, signal, onset, detectable_from, "end",
                       end_reason, severity
                FROM ground_truth
                WHERE onset <= {window.t1} AND ("end" IS NULL OR "end" >= {window.t0})
                ORDER BY machine, onset"""
        ).records()

    def latencies(self, window: Window) -> tuple[list[float], int]:
        """Publish -> archive latency of telemetry in the window (seconds), and how many ran ahead."""
        self.database.create_arrivals()
        where = f"kind = 'telemetry' AND ts BETWEEN {window.t0} AND {window.t1}"
        ahead = self.database.query(
            f"SELECT count(*) FROM archive_arrivals WHERE {where} AND written_at < ts - INTERVAL 1 SECOND"
        ).rows[0][0]
        latencies = self.database.query(
            f"""SELECT epoch(written_at) - epoch(ts) AS latency_s FROM archive_arrivals
                WHERE {where} AND written_at >= ts - INTERVAL 1 SECOND
                USING SAMPLE {MAX_LATENCIES} ROWS"""
        ).column("latency_s")
        return [max(0.0, value) for value in latencies], int(ahead)

    def archived_per_second(self) -> tuple[list[dt.datetime], list[int], list[int]]:
        """From the archive alone: lines archived per second of write time, and telemetry published
        per second of payload time (the same clock only at speed 1)."""
        self.database.create_arrivals()
        archived = dict(
            self.database.query(
                "SELECT date_trunc('second', written_at), count(*) FROM archive_arrivals GROUP BY 1"
            ).rows
        )
        published = dict(
            self.database.query(
                "SELECT date_trunc('second', ts), count(*) FROM archive_arrivals GROUP BY 1"
            ).rows
        )
        if not archived:
            return [], [], []
        first, last = min(archived), max(archived)
        seconds = [first + dt.timedelta(seconds=i) for i in range(int((last - first).total_seconds()) + 1)]
        return seconds, [published.get(s, 0) for s in seconds], [archived.get(s, 0) for s in seconds]


def oee_parts(totals: Mapping[str, Any]) -> dict[str, float]:
    """Availability, performance, quality and their product (NaN where a part has no denominator)."""
    running_s, planned_s = float(totals["running_s"] or 0), float(totals["planned_s"] or 0)
    availability = running_s / planned_s if planned_s > 0 else math.nan
    performance = float(totals["ideal_s"] or 0) / running_s if running_s > 0 else math.nan
    made = int(totals["good"] or 0) + int(totals["rejected"] or 0)
    quality = int(totals["good"] or 0) / made if made > 0 else math.nan
    return {
        "availability": availability,
        "performance": performance,
        "quality": quality,
        "oee": availability * performance * quality,
    }


def ideal_cycle_times(fleet: FleetSettings, machines: Iterable[str]) -> dict[str, float]:
    """Each machine's ideal cycle time (0 for machines that make no parts), from the model.

    The archive does not carry it: the model draws it per machine from the fleet's seed, which is
    why the report needs the stack's fleet settings for performance (and so OEE).
    """
    from simulator.dry_run import DEFAULT_START_EPOCH_MS
    from simulator.model import SiteModel

    wanted = set(machines)
    sites = sorted({int(machine.split("-")[1]) for machine in wanted})
    found: dict[str, float] = {}
    for site in sites:
        model = SiteModel(fleet, site, DEFAULT_START_EPOCH_MS)
        for index, spec in enumerate(model.machines):
            if spec.machine_id in wanted:
                found[spec.machine_id] = model.view(index).ideal_cycle_time_s
    return found


# -- Prometheus ------------------------------------------------------------------------------------


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error; the message says which."""


def prometheus_range(url: str, expr: str, window: Window, step_s: float) -> list[tuple[dt.datetime, float]]:
    """One range query summed into one series: [(time, value)]."""
    query = urllib.parse.urlencode(
        {
            "query": expr,
            "start": window.start.replace(tzinfo=dt.UTC).timestamp(),
            "end": window.end.replace(tzinfo=dt.UTC).timestamp(),
            "step": f"{step_s:g}s",
        }
    )
    try:
        with urllib.request.urlopen(
            f"{url.rstrip('/')}/api/v1/query_range?{query}", timeout=PROMETHEUS_TIMEOUT_S
        ) as response:
            answer = json.load(response)
    except (OSError, ValueError) as error:
        raise PrometheusUnavailable(f"Prometheus at {url} did not answer ({error})") from None
    if answer.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus at {url}: {answer.get('error', 'query failed')}")
    series = answer["data"]["result"]
    if not series:
        return []
    return [
        (dt.datetime.fromtimestamp(float(at), dt.UTC).replace(tzinfo=None), float(value))
        for at, value in series[0]["values"]
    ]


def throughput_queries(window_s: float) -> dict[str, str]:
    """Published and archived messages per second, summed over every process (catalog names)."""
    from observability import promql

    rate_window = f"{max(30, int(window_s))}s"
    return {
        "published": promql.sum_by((), promql.rate(catalog.MESSAGES_PUBLISHED, rate_window)),
        "archived": promql.sum_by((), promql.rate(catalog.ARCHIVED, rate_window)),
    }
