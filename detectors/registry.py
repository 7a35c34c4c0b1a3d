"""The detectors the monitor can run, by their stable id, and a factory that builds them from config.

The ids are known without importing any detector; a class is imported the first time it is looked up. A
detector module brings torch or scipy with it, which a command that only reads the database (``sentinel
alerts``) or a configuration check of detector ids must not pay for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

from detectors.base import Detector

__all__ = ["DETECTORS", "check_detector_id", "create_detector"]

# Detector id -> "module.Class". Each class is checked against its own ``id`` when it is imported.
_CLASS_PATHS: Final = {
    "vae_anomaly": "detectors.anomaly.vae.VAEAnomalyDetector",
    "latent_drift": "detectors.drift.latent.LatentDriftDetector",
    "feature_drift": "detectors.drift.feature.FeatureDriftDetector",
    "output_drift": "detectors.drift.output.OutputDriftDetector",
    "label_drift": "detectors.drift.label.LabelDriftDetector",
    "performance": "detectors.drift.performance.PerformanceDetector",
    "label_consistency": "detectors.security.label_consistency.LabelConsistencyDetector",
    "group_outcome": "detectors.security.group_outcome.GroupOutcomeDetector",
    "backdoor": "detectors.security.backdoor.BackdoorDetector",
    "evasion": "detectors.security.evasion.EvasionDetector",
    "extraction": "detectors.security.extraction.ExtractionDetector",
    "probing": "detectors.security.probing.ProbingDetector",
}


class _DetectorClasses(Mapping[str, type[Detector]]):
    """Detector classes by id, read-only. ``in``, ``len`` and iteration use the ids alone; looking up a
    value imports its module (once)."""

    def __init__(self, class_paths: Mapping[str, str]) -> None:
        self._class_paths = dict(class_paths)
        self._classes: dict[str, type[Detector]] = {}

    def __getitem__(self, detector_id: str) -> type[Detector]:
        loaded = self._classes.get(detector_id)
        if loaded is not None:
            return loaded
        module_name, _, class_name = self._class_paths[detector_id].rpartition(".")
        cls: type[Detector] = getattr(importlib.import_module(module_name), class_name)
        if cls.id != detector_id:  # the registry's key and the class's own id must never differ
            raise ImportError(f"{module_name}.{class_name} has id {cls.id!r}, registered as {detector_id!r}")
        self._classes[detector_id] = cls
        return cls

    def __contains__(self, detector_id: object) -> bool:
        return detector_id in self._class_paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._class_paths)

    def __len__(self) -> int:
        return len(self._class_paths)

    def __repr__(self) -> str:
        return f"DETECTORS({', '.join(self._class_paths)})"


DETECTORS: Mapping[str, type[Detector]] = _DetectorClasses(_CLASS_PATHS)
"""Detector classes by id (read-only; a class is imported when it is first looked up)."""


def check_detector_id(detector_id: str) -> None:
    """Raise ``ValueError`` listing the valid ids unless ``detector_id`` is one (imports no detector).

    >>> check_detector_id("vae_anomaly")
    >>> check_detector_id("nonsense")
    Traceback (most recent call last):
    ...
    ValueError: unknown detector id 'nonsense'; valid ids: backdoor, evasion, extraction, ...
    """
    if detector_id not in DETECTORS:
        raise ValueError(f"unknown detector id {detector_id!r}; valid ids: {', '.join(sorted(DETECTORS))}")


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
    check_detector_id(detector_id)
    cls = DETECTORS[detector_id]
    try:
        return cls(**params)
    except TypeError as error:
        raise TypeError(f"{detector_id}: {error}") from error
    except ValueError as error:
        raise ValueError(f"{detector_id}: {error}") from error
