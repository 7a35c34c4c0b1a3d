"""Indicators of data poisoning and of attacks on a deployed model (the ML-security threats).

Poisoning: ``label_consistency`` (label flipping), ``group_outcome`` (targeted outcomes), ``backdoor``
(anomalous inputs concentrated on one class). Attacks, per client: ``evasion``, ``extraction`` (model
stealing, PRADA), ``probing`` (membership inference / inversion). Each is a module of its own.
"""

from detectors.security.backdoor import BackdoorDetector
from detectors.security.evasion import EvasionDetector
from detectors.security.extraction import ExtractionDetector
from detectors.security.group_outcome import GroupOutcomeDetector
from detectors.security.label_consistency import LabelConsistencyDetector
from detectors.security.probing import ProbingDetector

__all__ = [
    "BackdoorDetector",
    "EvasionDetector",
    "ExtractionDetector",
    "GroupOutcomeDetector",
    "LabelConsistencyDetector",
    "ProbingDetector",
]
