"""A score report as a plain-text table (the CLI's human output; `--json` writes `to_dict()`)."""

from __future__ import annotations

from scoring.scorer import FAILURE_MODES_ROW, KindScore, ScoreReport


def duration(seconds: float | None) -> str:
    """3600 -> '1.0 h'; None -> '-'."""
    if seconds is None:
        return "-"
    sign, value = ("-" if seconds < 0 else ""), abs(seconds)
    for unit, size in (("d", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if value >= size:
            return f"{sign}{value / size:.1f} {unit}"
    return f"{sign}{value:.0f} s"


def _row(row: KindScore) -> str:
    lead = f"{duration(row.lead_before_trip_median_s)} / {duration(row.lead_before_trip_p10_s)}"
    delay = f"{duration(row.delay_after_visible_median_s)} / {duration(row.delay_after_visible_p90_s)}"
    return (
        f"{row.kind:22s} {row.labels:6d} {row.invisible:9d} {row.detected:8d} {row.false_alarms:8.1f} "
        f"{row.precision:9.2f} {row.recall:6.2f} {row.f1:5.2f}  {lead:>19s}  {delay:>19s}"
    )


def render_text(report: ScoreReport) -> str:
    header = (
        f"{'kind':22s} {'labels':>6s} {'invisible':>9s} {'detected':>8s} {'false':>8s} "
        f"{'precision':>9s} {'recall':>6s} {'F1':>5s}  {'lead before trip':>19s}  "
        f"{'delay after visible':>19s}"
    )
    lines = [
        header,
        f"{'':22s} {'':6s} {'':9s} {'':8s} {'alarms':>8s} {'':9s} {'':6s} {'':5s}  "
        f"{'median / p10':>19s}  {'median / p90':>19s}",
    ]
    for row in report.rows:
        if row.kind == FAILURE_MODES_ROW:
            lines.append("-" * len(header))
        lines.append(_row(row))
    accuracy = "-" if report.diagnosis_accuracy is None else f"{report.diagnosis_accuracy:.2f}"
    lines.append("")
    lines.append(
        f"{report.detections} detections, {report.false_alarms} false alarms "
        f"({report.false_alarms_per_machine_day:.2f} per machine-day over "
        f"{report.machine_days:.1f} machine-days), "
        f"{report.ignored} ignored (machine stopped or just restarted); NAB score {report.nab_score:.1f} "
        f"(standard profile, 0 = no detections, 100 = perfect); diagnosis accuracy {accuracy}"
    )
    if report.unknown_machines:
        unknown = ", ".join(report.unknown_machines[:5])
        lines.append(f"warning: detections for machines not in the ground truth: {unknown}")
    return "\n".join(lines)
