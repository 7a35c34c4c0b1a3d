"""The detectors the monitor can run, by their stable id, and a factory that builds them from config."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from detectors.anomaly import VAEAnomalyDetector
from detectors.base import Detector
from detectors.drift import FeatureDriftDetector, LabelDriftDetector, OutputDriftDetector, PerformanceDetector
from detectors.drift.latent import LatentDriftDetector
from detectors.security import (
    BackdoorDetector,
    EvasionDetector,
    ExtractionDetector,
    GroupOutcomeDetector,
    LabelConsistencyDetector,
    ProbingDetector,
)

__all__ = ["DETECTORS", "create_detector"]

DETECTORS: Mapping[str, type[Detector]] = MappingProxyType(
    {  # keyed by the class's own id, so the two cannot differ
        cls.id: cls
        for cls in (
            VAEAnomalyDetector,
            LatentDriftDetector,
            FeatureDriftDetector,
            OutputDriftDetector,
            LabelDriftDetector,
            PerformanceDetector,
            LabelConsistencyDetector,
            GroupOutcomeDetector,
            BackdoorDetector,
            EvasionDetector,
            ExtractionDetector,
            ProbingDetector,
        )
    }
)
"""Detector classes by id (read-only)."""


def create_detector(detector_id: str, params: Mapping[str, Any]) -> Detector:
    """Build an unfitted detector from its id and constructor parameters.

    Parameters
    ----------
    detector_id
        A key of :data:`DETECTORS`, e.g. ``"vae_anomaly"``.
    params
        Keyword arguments of the detector's constructor (as returned by ``get_params``; omitted ones take
        their defaults).

    Returns
    -------
    Detector
        The new, unfitted detector.

    Raises
    ------
    ValueError
        For an unknown id (the message lists the valid ones) or a parameter out of range.
    TypeError
        For an unknown parameter or one of the wrong type.

    Both errors from the constructor are re-raised with the detector id prefixed, so that a message in
    the logs says which configured detector is wrong.
    """
    cls = DETECTORS.get(detector_id)
    if cls is None:
        raise ValueError(f"unknown detector id {detector_id!r}; valid ids: {', '.join(sorted(DETECTORS))}")
    try:
        return cls(**params)
    except TypeError as error:
        raise TypeError(f"{detector_id}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{detector_id}: {error}") from error
