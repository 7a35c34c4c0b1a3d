"""Sentinel's detectors: pure algorithms behind one interface (see :mod:`detectors.base`)."""

from detectors.base import Batch, DetectionResult, Detector, EventScore, NotFittedError, Status, Threat
from detectors.registry import DETECTORS, create_detector

__all__ = [
    "DETECTORS",
    "Batch",
    "DetectionResult",
    "Detector",
    "EventScore",
    "NotFittedError",
    "Status",
    "Threat",
    "create_detector",
]
