"""Tests of the data-poisoning indicators (``label_consistency``, ``group_outcome``, ``backdoor``) on digits.

load_digits is split once, with a seeded permutation, into three disjoint parts: 500 events train a
logistic regression, 600 are the reference (the model's predictions and the true labels), and the held-out
rest supplies the windows. Attacks are applied to held-out events: labels flipped, one region's or one
client's predicted class forced, a trigger (the 2 x 2 top-left pixel block set to 16) whose events the
backdoored model answers with the target class.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors.base import Batch, Detector, NotFittedError, Status, Threat
from detectors.security.backdoor import BackdoorDetector
from detectors.security.group_outcome import GroupOutcomeDetector
from detectors.security.label_consistency import LabelConsistencyDetector
from detectors.state import dump_state, load_state

_SEED = 20_241_128
_ALPHA = 0.01
_TRIGGER = (0, 1, 8, 9)  # the top-left 2 x 2 block of the 8 x 8 image


class Digits:
    """The split, the classifier and a builder of windows."""

    def __init__(self) -> None:
        data = load_digits()
        self.x, self.y = data.data.astype(float), data.target
        order = np.random.default_rng(_SEED).permutation(len(self.y))
        train, self.reference_rows, self.live_rows = order[:500], order[500:1100], order[1100:]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        self.model.fit(self.x[train], self.y[train])
        self.classes = [str(c) for c in self.model.classes_]
        predicted = self.model.predict(self.x[self.reference_rows])
        # The attacks force the class the model predicts least often: its rate moves most when forced.
        self.target = min(self.classes, key=lambda c: (int(np.sum(predicted == int(c))), c))

    def batch(
        self,
        rows: np.ndarray,
        prefix: str,
        *,
        x: np.ndarray | None = None,
        labels: Sequence[int] | None = None,
        forced: np.ndarray | None = None,
        clients: Sequence[str | None] | None = None,
        regions: Sequence[str] | None = None,
        stream: str = "inference",
        embeddings: bool = False,
    ) -> Batch:
        x = self.x[rows] if x is None else x
        labels = self.y[rows] if labels is None else labels
        proba = self.model.predict_proba(x)
        predictions = [
            {
                "label": self.target if forced is not None and forced[i] else self.classes[int(np.argmax(p))],
                "scores": dict(zip(self.classes, map(float, p), strict=True)),
            }
            for i, p in enumerate(proba)
        ]
        n = len(rows)
        return Batch(
            event_ids=[f"{prefix}{i}" for i in range(n)],
            features=[{f"px{j}": float(v) for j, v in enumerate(row)} for row in x],
            predictions=predictions,
            labels=[str(int(v)) for v in labels],
            client_ids=list(clients) if clients is not None else [f"client-{i % 20}" for i in range(n)],
            timestamps=[1_700_000_000.0 + i for i in range(n)],
            embeddings=[list(map(float, row)) for row in self.model.decision_function(x)]
            if embeddings
            else (),
            groups=[{"region": r} for r in regions]
            if regions is not None
            else [{"region": f"r{i % 4}"} for i in range(n)],
            streams=[stream] * n,
        )

    def reference(self, **kwargs: Any) -> Batch:
        return self.batch(self.reference_rows, "ref-", **kwargs)

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``n`` held-out rows, without replacement."""
        return np.random.default_rng(seed).choice(self.live_rows, size=n, replace=False)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


def _round_trip(detector: Detector, window: Batch) -> None:
    """A twin restored from params and the dumped state evaluates exactly like the original."""
    result = detector.evaluate(window)
    twin = type(detector)(**json.loads(json.dumps(detector.get_params())))
    twin.load_state_dict(load_state(dump_state(detector.state_dict())))
    assert twin.evaluate(window) == result
    assert dump_state(twin.state_dict()) == dump_state(detector.state_dict())


def _flip(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels with ``share`` of them flipped to another class at random, and the flipped positions."""
    rng = np.random.default_rng(seed)
    flipped = np.flatnonzero(rng.random(labels.size) < share)
    out = labels.copy()
    for i in flipped:
        out[i] = rng.choice([c for c in range(10) if c != labels[i]])
    return out, flipped


# ------------------------------------------------------------------------------------- label_consistency


@pytest.fixture(scope="module")
def consistency(digits: Digits) -> LabelConsistencyDetector:
    return LabelConsistencyDetector(alpha=_ALPHA).fit(digits.reference(stream="training"))


def test_label_flips_in_training_feed_alert_with_flipped_events(
    digits: Digits, consistency: LabelConsistencyDetector
) -> None:
    rows = digits.draw(300, seed=1)
    labels, flipped = _flip(digits.y[rows], 0.10, seed=2)
    window = digits.batch(rows, "w-", labels=labels, stream="training")

    result = consistency.evaluate(window)

    assert result.status is Status.ALERT
    assert result.threat is Threat.INTEGRITY
    assert result.p_value is not None and result.p_value <= _ALPHA
    assert result.evidence["subjects"] == ["stream=training"]
    finding = result.evidence["findings"][0]
    assert finding["statistic"] > 2 * finding["reference_value"]
    # The suspicious events reported are overwhelmingly the flipped ones; every reported pair is real.
    flipped_ids = {f"w-{i}" for i in flipped}
    assert 0 < len(finding["event_ids"]) <= 20
    assert sum(e in flipped_ids for e in finding["event_ids"]) >= 0.8 * len(finding["event_ids"])
    given_pairs = {f"{labels[i]}->" for i in flipped}
    assert any(pair["pair"].split(">")[0] + ">" in given_pairs for pair in finding["pairs"])
    json.dumps(dict(result.evidence))


def test_clean_training_feed_of_same_volume_passes(
    digits: Digits, consistency: LabelConsistencyDetector
) -> None:
    for seed in range(3, 8):
        result = consistency.evaluate(
            digits.batch(digits.draw(300, seed=seed), f"c{seed}-", stream="training")
        )
        assert result.status is Status.OK, result.evidence
        assert result.evidence["subjects"] == []


def test_only_the_poisoned_stream_is_named(digits: Digits, consistency: LabelConsistencyDetector) -> None:
    rows = digits.draw(400, seed=9)
    labels, _ = _flip(digits.y[rows], 0.20, seed=10)
    training = digits.batch(rows[:200], "t-", labels=labels[:200], stream="training")
    live = digits.batch(rows[200:], "i-", stream="inference")
    window = Batch(
        event_ids=[*training.event_ids, *live.event_ids],
        features=[*training.features, *live.features],
        labels=[*training.labels, *live.labels],
        streams=[*training.streams, *live.streams],
    )
    result = consistency.evaluate(window)
    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["stream=training"]
    assert set(result.evidence["streams"]) == {"training", "inference"}


def test_label_consistency_uses_embeddings_when_every_event_has_one(digits: Digits) -> None:
    detector = LabelConsistencyDetector(alpha=_ALPHA).fit(digits.reference(embeddings=True))
    assert detector.resolved_space == "embedding"
    rows = digits.draw(300, seed=11)
    assert detector.evaluate(digits.batch(rows, "c-", embeddings=True)).status is Status.OK
    labels, _ = _flip(digits.y[rows], 0.10, seed=12)
    assert detector.evaluate(digits.batch(rows, "w-", labels=labels, embeddings=True)).status is Status.ALERT
    # Without embeddings the neighbour vote cannot be taken in that space.
    skipped = detector.evaluate(digits.batch(rows, "n-"))
    assert skipped.status is Status.SKIPPED and "embedding" in (skipped.reason or "")


def test_label_consistency_state_round_trip(digits: Digits, consistency: LabelConsistencyDetector) -> None:
    rows = digits.draw(300, seed=13)
    labels, _ = _flip(digits.y[rows], 0.10, seed=14)
    _round_trip(consistency, digits.batch(rows, "w-", labels=labels, stream="training"))


def test_label_consistency_skips_and_validates(digits: Digits, consistency: LabelConsistencyDetector) -> None:
    rows = digits.draw(100, seed=15)
    unlabelled = Batch(event_ids=[f"u{i}" for i in rows], features=digits.batch(rows, "u").features)
    result = consistency.evaluate(unlabelled)
    assert result.status is Status.SKIPPED and "labelled" in (result.reason or "")
    with pytest.raises(NotFittedError):
        LabelConsistencyDetector().evaluate(unlabelled)
    with pytest.raises(ValueError, match=r"k must be >= 1"):
        LabelConsistencyDetector(k=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0.0, 0.5\)"):
        LabelConsistencyDetector(alpha=0.7)
    with pytest.raises(ValueError, match=r"max_agreeing must be in \[0, k - 1\] = \[0, 9\]"):
        LabelConsistencyDetector(k=10, max_agreeing=10)
    # A state counted with another contradiction rule would mis-state the reference rate.
    with pytest.raises(ValueError, match=r"max_agreeing=1"):
        LabelConsistencyDetector(max_agreeing=None).load_state_dict(consistency.state_dict())


def test_outright_contradictions_separate_flips_from_borderline_labels(
    digits: Digits, consistency: LabelConsistencyDetector
) -> None:
    # The plurality rule also counts honest labels among mixed neighbours; flips are contradicted outright,
    # so counting only outright contradictions lowers the clean rate and keeps most of the flips.
    plurality = LabelConsistencyDetector(alpha=_ALPHA, max_agreeing=None).fit(digits.reference())
    assert consistency.reference_share < 0.5 * plurality.reference_share
    rows = digits.draw(300, seed=16)
    labels, flipped = _flip(digits.y[rows], 0.10, seed=17)
    window = digits.batch(rows, "w-", labels=labels, stream="training")
    strict, loose = consistency.evaluate(window), plurality.evaluate(window)
    assert strict.status is Status.ALERT and loose.status is Status.ALERT
    strict_excess = strict.evidence["findings"][0]["disagreements"] - 300 * consistency.reference_share
    assert strict_excess >= 0.8 * flipped.size
    assert strict.p_value is not None and loose.p_value is not None and strict.p_value < loose.p_value


def _breast_cancer_split(seed: int) -> tuple[Batch, np.ndarray, np.ndarray]:
    """A fresh split of breast_cancer: a reference of 30 % and the rest (features, labels) for windows."""
    data = load_breast_cancer()
    x, y = data.data.astype(float), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    reference, rest = order[: int(0.3 * len(y))], order[int(0.3 * len(y)) :]
    return _labelled_batch(x[reference], y[reference], "ref-"), x[rest], y[rest]


def _labelled_batch(x: np.ndarray, y: np.ndarray, prefix: str) -> Batch:
    return Batch(
        event_ids=[f"{prefix}{i}" for i in range(len(y))],
        features=[{f"f{j}": float(v) for j, v in enumerate(row)} for row in x],
        labels=[str(int(v)) for v in y],
        streams=["training"] * len(y),
    )


def test_label_consistency_is_calibrated_and_catches_flips_on_fresh_breast_cancer_splits() -> None:
    # breast_cancer's reference holds 170 labelled events: the reference rate is uncertain, and each trial
    # draws a new split, so the clean windows are independent (windows from one split's small pool are not).
    false_alarms, caught, trials = 0, 0, 40
    for trial in range(trials):
        reference, x, y = _breast_cancer_split(seed=100 + trial)
        detector = LabelConsistencyDetector(alpha=_ALPHA).fit(reference)
        rng = np.random.default_rng(trial)
        rows = rng.choice(len(y), 200, replace=False)
        false_alarms += detector.evaluate(_labelled_batch(x[rows], y[rows], "c-")).status is Status.ALERT
        rows = rng.choice(len(y), 200, replace=False)
        flipped = y[rows].copy()
        flips = rng.random(200) < 0.10
        flipped[flips] = 1 - flipped[flips]
        caught += detector.evaluate(_labelled_batch(x[rows], flipped, "a-")).status is Status.ALERT
    # At alpha 0.01, three or more false alarms in 40 independent windows has probability 0.008.
    assert false_alarms <= 2
    assert caught >= 0.8 * trials


# ---------------------------------------------------------------------------------------------- group_outcome


@pytest.fixture(scope="module")
def outcome(digits: Digits) -> GroupOutcomeDetector:
    return GroupOutcomeDetector(alpha=_ALPHA).fit(digits.reference())


def _regions_and_clients(n: int, seed: int, n_clients: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    regions = [f"r{i}" for i in rng.integers(0, 4, n)]
    clients = [f"benign-{i}" for i in rng.integers(0, n_clients, n)]
    return regions, clients


def test_forced_region_is_named_alone(digits: Digits, outcome: GroupOutcomeDetector) -> None:
    rows = digits.draw(500, seed=21)
    # Five clients with about 100 events each: every client is tested, and each sends r3 events too.
    regions, clients = _regions_and_clients(500, seed=22, n_clients=5)
    forced = np.array([r == "r3" for r in regions])
    result = outcome.evaluate(digits.batch(rows, "w-", forced=forced, regions=regions, clients=clients))

    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["region=r3"]
    finding = result.evidence["findings"][0]
    assert finding["class"] == digits.target and finding["test"] == "class_rate"
    assert finding["window_rate"] > finding["reference_value"] + 0.5
    assert finding["reference"] == "own"
    assert all(forced[int(e.split("-")[1])] for e in finding["event_ids"])
    # Every client sends r3 events, so each client's own outcome mix moved too (significant on its own);
    # the forced region explains them: they are listed as explained, not named.
    explained = result.evidence["explained"]
    assert {item["subject"] for item in explained} == {f"benign-{i}" for i in range(5)}
    assert all(item["explained_by"] == "region=r3" for item in explained)


def test_forced_client_is_named_alone(digits: Digits, outcome: GroupOutcomeDetector) -> None:
    rows = digits.draw(400, seed=23)
    regions, clients = _regions_and_clients(400, seed=24, n_clients=5)
    attacker = np.random.default_rng(25).choice(400, 40, replace=False)
    for i in attacker:
        clients[i] = "attacker-7"
    forced = np.isin(np.arange(400), attacker)
    result = outcome.evaluate(digits.batch(rows, "w-", forced=forced, regions=regions, clients=clients))

    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["attacker-7"]
    finding = result.evidence["findings"][0]
    assert finding["kind"] == "client" and finding["reference"] == "overall"
    assert finding["count"] == 40 and finding["n"] == 40


def test_clean_windows_name_no_group_or_client(digits: Digits, outcome: GroupOutcomeDetector) -> None:
    for seed in range(30, 35):
        regions, clients = _regions_and_clients(400, seed=seed, n_clients=5)
        window = digits.batch(digits.draw(400, seed=seed), f"c{seed}-", regions=regions, clients=clients)
        result = outcome.evaluate(window)
        assert result.status is Status.OK, result.evidence
        assert result.evidence["subjects"] == []


def test_group_outcome_state_round_trip(digits: Digits, outcome: GroupOutcomeDetector) -> None:
    rows = digits.draw(400, seed=36)
    regions, clients = _regions_and_clients(400, seed=37, n_clients=5)
    forced = np.array([r == "r1" for r in regions])
    _round_trip(outcome, digits.batch(rows, "w-", forced=forced, regions=regions, clients=clients))


def test_group_outcome_skips(digits: Digits, outcome: GroupOutcomeDetector) -> None:
    rows = digits.draw(100, seed=38)
    full = digits.batch(rows, "s-")
    bare = Batch(event_ids=full.event_ids, features=full.features, predictions=full.predictions)
    result = outcome.evaluate(bare)
    assert result.status is Status.SKIPPED and "groups" in (result.reason or "")
    small = digits.batch(rows[:20], "t-")
    result = outcome.evaluate(small)
    assert result.status is Status.SKIPPED and "min_events" in (result.reason or "")
    with pytest.raises(ValueError, match=r"min_events must be >= 2"):
        GroupOutcomeDetector(min_events=1)


# ---------------------------------------------------------------------------------------------- backdoor


@pytest.fixture(scope="module")
def backdoor(digits: Digits) -> BackdoorDetector:
    return BackdoorDetector(alpha=_ALPHA, vae={"max_epochs": 60}).fit(digits.reference())


def _triggered(digits: Digits, n: int, share: float, seed: int) -> tuple[Batch, np.ndarray]:
    rows = digits.draw(n, seed=seed)
    x = digits.x[rows].copy()
    triggered = np.random.default_rng(seed + 1).random(n) < share
    x[np.ix_(triggered, _TRIGGER)] = 16.0
    return digits.batch(rows, "w-", x=x, forced=triggered), triggered


def test_trigger_concentrated_on_target_class_alerts(digits: Digits, backdoor: BackdoorDetector) -> None:
    window, triggered = _triggered(digits, 300, 0.07, seed=41)
    result = backdoor.evaluate(window)

    assert result.status is Status.ALERT
    assert result.threat is Threat.BACKDOOR
    assert result.evidence["subjects"] == [f"class={digits.target}"]
    finding = result.evidence["findings"][0]
    assert finding["anomalous"] > 3 * finding["expected"]
    triggered_ids = {f"w-{i}" for i in np.flatnonzero(triggered)}
    assert set(finding["event_ids"]) <= triggered_ids
    assert len(finding["event_ids"]) >= min(20, 0.8 * len(triggered_ids))
    assert {e.event_id for e in result.event_scores} <= triggered_ids


def test_backdoor_clean_windows_pass(digits: Digits, backdoor: BackdoorDetector) -> None:
    for seed in range(42, 47):
        result = backdoor.evaluate(digits.batch(digits.draw(300, seed=seed), f"c{seed}-"))
        assert result.status is Status.OK, result.evidence
        assert result.evidence["subjects"] == []


def test_backdoor_spectral_evidence_with_embeddings(digits: Digits, backdoor: BackdoorDetector) -> None:
    rows = digits.draw(300, seed=48)
    x = digits.x[rows].copy()
    triggered = np.random.default_rng(49).random(300) < 0.07
    x[np.ix_(triggered, _TRIGGER)] = 16.0
    result = backdoor.evaluate(digits.batch(rows, "w-", x=x, forced=triggered, embeddings=True))
    spectral = result.evidence["findings"][0]["spectral"]
    assert spectral["top_event_ids"] and spectral["overlap_with_anomalous"] >= 0


def test_backdoor_state_round_trip(digits: Digits, backdoor: BackdoorDetector) -> None:
    window, _ = _triggered(digits, 300, 0.07, seed=50)
    _round_trip(backdoor, window)
    state = backdoor.state_dict()
    assert "weights" in state["vae"]  # the inner VAE's state is saved under "vae"


def test_backdoor_skips_and_validates(digits: Digits, backdoor: BackdoorDetector) -> None:
    small = digits.batch(digits.draw(30, seed=51), "s-")
    result = backdoor.evaluate(small)
    assert result.status is Status.SKIPPED and "too few events" in (result.reason or "")
    full = digits.batch(digits.draw(100, seed=52), "p-")
    no_predictions = Batch(event_ids=full.event_ids, features=full.features)
    result = backdoor.evaluate(no_predictions)
    assert result.status is Status.SKIPPED and "predicted class" in (result.reason or "")
    assert BackdoorDetector(seed=3).get_params()["vae"]["seed"] == 3
    assert BackdoorDetector(seed=3, vae={"seed": 5}).get_params()["vae"]["seed"] == 5
    with pytest.raises(ValueError, match=r"vae: latent_dim must be >= 1"):
        BackdoorDetector(vae={"latent_dim": 0})


def test_k_nearest_selection_equals_a_stable_full_sort_even_with_ties() -> None:
    from detectors.security.label_consistency import _k_smallest

    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m, k = int(rng.integers(1, 60)), int(rng.integers(1, 80)), int(rng.integers(1, 15))
        distances = rng.integers(0, 6, size=(n, m)).astype(float)  # small integers: many ties
        distances[rng.random((n, m)) < 0.1] = np.inf  # as leave-one-out marks a point's own row
        expected = np.argsort(distances, axis=1, kind="stable")[:, :k]
        assert np.array_equal(_k_smallest(distances, k), expected)
