"""Scoring a detector against the simulator's labels: `score(ground_truth, detections)`.

Ground truth comes from a stack's archive (`sources.from_archive`) or from the model again with the
same seed and config (`sources.regenerated`); detections from CSV or JSON lines
(`detections.read_detections`). See docs/model.md, "Scoring a detector".
"""

from scoring.detections import Detection, parse_detections, read_detections, write_detections
from scoring.labels import GroundTruth, Label, ground_truth_from_events
from scoring.scorer import score
from scoring.sources import from_archive, regenerated

__all__ = [
    "Detection",
    "GroundTruth",
    "Label",
    "from_archive",
    "ground_truth_from_events",
    "parse_detections",
    "read_detections",
    "regenerated",
    "score",
    "write_detections",
]
