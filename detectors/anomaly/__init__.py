"""Detectors of anomalous events (robustness threat): inputs unlike anything in the reference."""

from detectors.anomaly.vae import VAEAnomalyDetector

__all__ = ["VAEAnomalyDetector"]
