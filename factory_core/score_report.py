"""What `score` finds: a detector's detections against the labels of a run, per fault kind and overall.

The scorer that builds it is `scoring.scorer`; docs/model.md ("Scoring a detector") defines every
figure. Ratios are 0-1 (`_ratio`), durations seconds (`_s`), scores on the scale their name gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factory_core.verb_results import VerbResult

FAILURE_MODES_ROW, SENSOR_FAULTS_ROW, OVERALL_ROW = "failure modes", "sensor faults", "overall"


@dataclass(frozen=True)
class ScoreOptions:
    merge_s: float = 3_600.0  # false detections of one machine closer than this are one false alarm
    grace_s: float = 0.0  # detections this long after a machine restarts are ignored too
    tolerance_s: float = 60.0  # a sensor fault's window extends this far past its end (sampling)


@dataclass(frozen=True)
class KindScore:
    """Scores of one fault kind (or a group of kinds: failure modes, sensor faults, overall)."""

    kind: str
    labels: int  # windows that became visible (detectable_from set) before the machine stopped
    invisible: int  # windows that never did: detecting them counts, missing them does not
    detected: int  # visible windows with a detection
    precision_ratio: float
    recall_ratio: float
    f1_score: float  # 0-1
    lead_before_trip_median_s: float | None  # first detection to trip, windows that ended in a trip
    lead_before_trip_p10_s: float | None
    delay_after_visible_median_s: float | None  # first detection - detectable_from (< 0: earlier)
    delay_after_visible_p90_s: float | None


@dataclass(frozen=True)
class ScoreReport(VerbResult):
    """Per fault kind and overall. A false alarm without a failure mode counts, in the per-kind
    precision, for the failure modes of its machine's type in equal shares."""

    ground_truth: str  # where the labels came from: an archive, or "regenerated: ..."
    rows: tuple[KindScore, ...]
    nab_score: float  # NAB standard profile, normalised: 0 = no detections, 100 = perfect
    false_alarms: int
    false_alarms_per_machine_day: float
    observed_s: float  # machine-seconds of data the labels cover
    detections: int
    ignored: int  # while a machine was stopped (and grace_s after), or outside the observed time
    unknown_machines: tuple[str, ...]
    diagnosis_ratio: float | None  # of detections naming a fault, the share naming the right one
    options: ScoreOptions = field(default_factory=ScoreOptions)

    def row(self, kind: str) -> KindScore:
        return next(row for row in self.rows if row.kind == kind)
