"""Detectors of drift and integrity threats: changes between the reference and a window.

* :class:`FeatureDriftDetector` (``feature_drift``) — per-feature tests, multiple-testing corrected;
* :class:`OutputDriftDetector` (``output_drift``) — predicted classes, confidences, scores, values;
* :class:`LabelDriftDetector` (``label_drift``) — the mix of ground-truth labels;
* :class:`PerformanceDetector` (``performance``) — accuracy or error erosion on labelled events.
"""

from detectors.drift.feature import FeatureDriftDetector
from detectors.drift.label import LabelDriftDetector
from detectors.drift.output import OutputDriftDetector
from detectors.drift.performance import PerformanceDetector

__all__ = ["FeatureDriftDetector", "LabelDriftDetector", "OutputDriftDetector", "PerformanceDetector"]
