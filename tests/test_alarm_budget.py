"""The alarm budget: one significance level split across detectors, and the k-of-n persistence rule."""

from __future__ import annotations

import pytest

from detectors.base import DetectionResult, Status, Threat
from monitor.config import AppConfig, ModelSettings
from monitor.evaluation import PersistenceHistory
from tests.helpers import only_detectors


def test_significance_is_split_across_enabled_detectors() -> None:
    settings = ModelSettings.model_validate(
        {
            "significance": 0.012,
            "detectors": only_detectors(
                vae_anomaly={"quantile": 0.995}, feature_drift={}, output_drift={"alpha": 0.05}
            ),
        }
    )
    assert settings.enabled_detectors == ["vae_anomaly", "feature_drift", "output_drift"]
    assert settings.detector_params("vae_anomaly") == {"quantile": 0.995, "alpha": pytest.approx(0.004)}
    assert settings.detector_params("output_drift")["alpha"] == 0.05  # set explicitly: kept


def test_false_switches_a_default_detector_off() -> None:
    config = AppConfig.model_validate(
        {
            "defaults": {"detectors": only_detectors(vae_anomaly={}, feature_drift={})},
            "models": {"m": {"detectors": {"feature_drift": False}}},
        }
    )
    settings = config.model_settings("m")
    assert settings.enabled_detectors == ["vae_anomaly"]
    assert settings.detector_params("vae_anomaly")["alpha"] == 0.01


def test_alpha_is_part_of_the_fitted_state_key() -> None:
    one = ModelSettings.model_validate({"detectors": only_detectors(vae_anomaly={})})
    two = ModelSettings.model_validate({"detectors": only_detectors(vae_anomaly={}, feature_drift={})})
    # A different split is a different detector: its stored state must not be reused.
    assert one.params_hash("vae_anomaly") != two.params_hash("vae_anomaly")


def result(status: Status, p: float | None = 0.001) -> DetectionResult:
    return DetectionResult("vae_anomaly", Threat.ROBUSTNESS, status, 200, statistic=0.1, p_value=p)


def persistence(k: int, n: int, immediate_p: float = 1e-6) -> PersistenceHistory:
    settings = ModelSettings.model_validate(
        {
            "persistence": {"k": k, "n": n},
            "immediate_p": immediate_p,
            "detectors": only_detectors(vae_anomaly={}),
        }
    )
    return PersistenceHistory.for_model(settings)


def test_two_of_three_failing_windows_alert() -> None:
    state = persistence(2, 3)
    outcomes = [
        state.judge(result(s))
        for s in (Status.ALERT, Status.OK, Status.ALERT, Status.OK, Status.OK, Status.ALERT)
    ]
    expected = [Status.OK, Status.OK, Status.ALERT, Status.OK, Status.OK, Status.OK]
    assert [o.status for o in outcomes] == expected
    first = outcomes[0]
    assert first.evidence["raw_status"] == "alert"
    assert first.evidence["persistence"] == "1 of the last 1 windows failed; alerts at 2 of 3"


def test_overwhelming_evidence_alerts_at_once() -> None:
    state = persistence(3, 3, immediate_p=1e-6)
    assert state.judge(result(Status.ALERT, p=1e-9)).status is Status.ALERT  # at once
    assert state.judge(result(Status.ALERT, p=1e-3)).status is Status.OK  # 2 of 3 so far
    assert state.judge(result(Status.ALERT, p=1e-3)).status is Status.ALERT  # 3 of 3


def test_skipped_windows_do_not_count() -> None:
    state = persistence(2, 2)
    state.judge(result(Status.ALERT))
    skipped = state.judge(DetectionResult("vae_anomaly", Threat.ROBUSTNESS, Status.SKIPPED, 3))
    assert skipped.status is Status.SKIPPED
    assert state.judge(result(Status.ALERT)).status is Status.ALERT
