"""The per-client attack indicators (evasion, extraction, probing) on real data, and their bounded state.

Traffic is built from scikit-learn's digits and breast_cancer: a logistic regression is trained on 30 % of the
data, the reference is its traffic on another 30 %, and 20 benign clients send the remaining, held-out 40 %
(each client its own random order, without repeats). One attacker is added per scenario.

A population-wide shift (``shift=4.0``: every benign input's 8 most variable features moved up by 4 reference
sd, the drift of ``sentinel demo``) must not make the per-client indicators name benign clients: they compare
each client with its peers in the window as well as with the reference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors.base import Batch, DetectionResult, NotFittedError, Status
from detectors.security._clients import ClientHistories
from detectors.security.evasion import EvasionDetector
from detectors.security.extraction import ExtractionDetector
from detectors.security.probing import ProbingDetector
from detectors.state import dump_state, load_state

ALPHA = 0.01 / 12  # the monitor's default significance split over the default detectors
N_BENIGN = 20
WINDOW = 60.0


@dataclass(frozen=True)
class Traffic:
    """A model, its reference traffic and a pool of held-out inputs for live clients."""

    classifier: Any
    classes: tuple[str, ...]
    names: tuple[str, ...]
    reference_x: np.ndarray
    live_x: np.ndarray
    std: np.ndarray

    def batch(self, x: np.ndarray, clients: Sequence[str | None], start: float, prefix: str) -> Batch:
        """Events for the rows of ``x`` (predictions from the classifier), spread over one window."""
        proba = self.classifier.predict_proba(x)
        return Batch(
            event_ids=[f"{prefix}{i}" for i in range(len(x))],
            features=[dict(zip(self.names, map(float, row), strict=True)) for row in x],
            predictions=[
                {
                    "label": self.classes[int(np.argmax(p))],
                    "scores": dict(zip(self.classes, map(float, p), strict=True)),
                }
                for p in proba
            ],
            client_ids=list(clients),
            timestamps=list(np.linspace(start, start + WINDOW - 1.0, len(x))),
        )

    def reference(self) -> Batch:
        return self.batch(self.reference_x, [], 0.0, "ref-")


def _traffic(name: str, seed: int = 0) -> Traffic:
    data = load_digits() if name == "digits" else load_breast_cancer()
    x, y = data.data.astype(np.float64), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.3 * len(y)), int(0.6 * len(y))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(
        x[order[:a]], y[order[:a]]
    )
    return Traffic(
        classifier=classifier,
        classes=tuple(str(c) for c in classifier.classes_),
        names=tuple(f"f{i}" for i in range(x.shape[1])),
        reference_x=x[order[a:b]],
        live_x=x[order[b:]],
        std=x[order[a:b]].std(axis=0),
    )


@pytest.fixture(scope="module")
def digits() -> Traffic:
    return _traffic("digits")


@pytest.fixture(scope="module")
def cancer() -> Traffic:
    return _traffic("breast_cancer")


class Clients:
    """20 benign clients, each sending the held-out pool in its own order, plus optional attacker rows."""

    def __init__(self, traffic: Traffic, seed: int = 1) -> None:
        self.traffic = traffic
        rng = np.random.default_rng(seed)
        self.orders = [rng.permutation(len(traffic.live_x)) for _ in range(N_BENIGN)]
        self.rng = rng

    def window(
        self,
        index: int,
        per_client: int,
        attacker: np.ndarray | None = None,
        name: str = "attacker",
        shift: float = 0.0,
        n_benign: int = N_BENIGN,
    ) -> Batch:
        """Window ``index``: ``per_client`` inputs of the first ``n_benign`` clients (moved by ``shift`` sd on
        the 8 most variable features when the population drifts), plus the attacker's rows as they are."""
        rows, clients = [], []
        for c, order in enumerate(self.orders[:n_benign]):
            chosen = order[(index * per_client) % len(order) :][:per_client]
            rows.append(_shifted(self.traffic, self.traffic.live_x[chosen], shift))
            clients += [f"benign-{c}"] * len(chosen)
        if attacker is not None:
            rows.append(attacker)
            clients += [name] * len(attacker)
        x = np.concatenate(rows)
        mixed = self.rng.permutation(len(x))  # clients interleave in time
        return self.traffic.batch(x[mixed], [clients[i] for i in mixed], index * WINDOW, f"w{index}-")


def _shifted(traffic: Traffic, x: np.ndarray, sd: float) -> np.ndarray:
    """A copy of ``x`` with its 8 most variable features moved up by ``sd`` reference standard deviations."""
    moved = np.argsort(-traffic.std)[:8]
    shifted = x.copy()
    shifted[:, moved] += sd * traffic.std[moved]
    return shifted


def _attacker_ids(window: Batch, name: str = "attacker") -> set[str]:
    return {e for e, c in zip(window.event_ids, window.client_ids, strict=True) if c == name}


def _named(result: DetectionResult) -> list[str]:
    return list(result.evidence.get("subjects", [])) if result.status is not Status.SKIPPED else []


def _round_trip(detector: Any) -> dict[str, Any]:
    return load_state(dump_state(detector.state_dict()))


# ---------------------------------------------------------------------------------------------- client store


def test_client_store_evicts_least_recent_truncates_and_expires() -> None:
    store = ClientHistories(2, max_clients=2, max_history=3, idle_expiry=100.0)
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    store.update("a", rows[:2], np.array([1.0]), last_seen=10.0)
    store.update("b", rows[:1], np.empty(0), last_seen=20.0)
    store.update("a", rows[2:], np.array([2.0, 3.0, 4.0]), last_seen=30.0)  # "a" is now the most recent
    history = store.get("a")
    assert history is not None and history.n_queries == 5
    assert history.queries.tolist() == rows[2:].tolist()  # only the last 3 queries are kept
    assert history.values.tolist() == [2.0, 3.0, 4.0]
    store.update("c", rows[:1], np.empty(0), last_seen=40.0)
    assert list(store) == ["a", "c"] and store.evicted == 1  # "b" was the least recently active

    restored = ClientHistories(2, max_clients=2, max_history=3, idle_expiry=100.0)
    restored.load_state_dict(load_state(dump_state(store.state_dict())))
    assert list(restored) == list(store)
    assert dump_state(restored.state_dict()) == dump_state(store.state_dict())

    assert store.expire(now=135.0) == 1  # "a" last seen at 30, more than 100 s before
    assert list(store) == ["c"]
    with pytest.raises(ValueError, match="beyond this store's max_clients=1"):
        ClientHistories(2, max_clients=1, max_history=3, idle_expiry=1.0).load_state_dict(
            restored.state_dict()
        )


# ---------------------------------------------------------------------------------------------- extraction


def _uniform_queries(traffic: Traffic, n: int, rng: np.random.Generator) -> np.ndarray:
    low, high = traffic.reference_x.min(axis=0), traffic.reference_x.max(axis=0)
    return rng.uniform(low, high, size=(n, len(low)))


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_extraction_catches_uniform_random_queries_within_500(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    traffic: Traffic = request.getfixturevalue(dataset)
    detector = ExtractionDetector(alpha=ALPHA).fit(traffic.reference())
    clients = Clients(traffic)
    rng = np.random.default_rng(2)
    caught_after = None
    for w in range(5):  # 100 attacker queries and 20 per benign client per window
        window = clients.window(w, 20, attacker=_uniform_queries(traffic, 100, rng))
        result = detector.evaluate(window)
        assert not [s for s in _named(result) if s != "attacker"]
        if result.status is Status.ALERT and caught_after is None:
            caught_after = (w + 1) * 100
            finding = result.evidence["findings"][0]
            assert result.evidence["subjects"] == ["attacker"] and finding["subject"] == "attacker"
            assert set(finding["event_ids"]) <= _attacker_ids(window) and finding["event_ids"]
            assert result.p_value == finding["p_value"] <= ALPHA
            assert result.statistic is not None and result.threshold is not None
            assert result.statistic >= result.threshold
            json.dumps(dict(result.evidence))
    assert caught_after is not None and caught_after <= 500


def test_extraction_stays_quiet_on_benign_clients_and_a_heavy_natural_client(digits: Traffic) -> None:
    # The heavy client replays natural held-out inputs at five times the benign rate: volume alone is no
    # evidence of theft (it shows as volume_z, but does not alert). This is also the "replay" attacker that
    # the detector, by design, cannot tell from an honest heavy user.
    detector = ExtractionDetector(alpha=ALPHA).fit(digits.reference())
    clients = Clients(digits, seed=3)
    heavy = np.random.default_rng(4).permutation(len(digits.live_x))
    tested = 0
    for w in range(6):
        replay = digits.live_x[heavy[w * 100 : (w + 1) * 100]]
        result = detector.evaluate(clients.window(w, 20, attacker=replay, name="heavy"))
        assert result.status is not Status.ALERT, result.evidence
        tested += result.status is Status.OK
    assert tested >= 4  # the clients were actually tested (not skipped) in most windows


def test_extraction_names_no_benign_client_after_a_population_shift(digits: Traffic) -> None:
    # The demo's timeline: clean traffic, two windows in which every client's inputs are moved +4 sd on 8
    # features, clean again, then a uniform-random extractor. The benign clients' histories still hold the
    # shifted queries, so their new queries lie further from their history than the reference's would: all
    # of them, not one of them.
    detector = ExtractionDetector(alpha=ALPHA).fit(digits.reference())
    clients = Clients(digits, seed=2)  # a draw in which the reference-only test named 1 to 5 benign clients
    rng = np.random.default_rng(15)
    shifted_with_peers = 0
    for w, (shift, attacked) in enumerate([(0.0, False)] * 2 + [(4.0, False)] * 2 + [(0.0, True)] * 4):
        attack = _uniform_queries(digits, 100, rng) if attacked else None
        result = detector.evaluate(clients.window(w, 20, attacker=attack, shift=shift))
        assert not [s for s in _named(result) if s != "attacker"], result.evidence["findings"]
        if attacked:
            assert result.status is Status.ALERT and result.evidence["subjects"] == ["attacker"]
            finding = result.evidence["findings"][0]
            assert finding["peer_p_value"] <= ALPHA and finding["reference_p_value"] <= ALPHA
            assert finding["peer_z"] > 3.0 and finding["signal"] == "distance"
        if result.status is not Status.SKIPPED:
            assert result.evidence["peer_comparison"] is True
            shifted_with_peers += result.evidence["clients_shifted_with_peers"]
    # Benign clients did fail the reference-only test (they would have been named without their peers).
    assert shifted_with_peers > 0


def test_extraction_judges_clients_against_the_reference_alone_when_few_are_tested(cancer: Traffic) -> None:
    detector = ExtractionDetector(alpha=ALPHA).fit(cancer.reference())
    rng = np.random.default_rng(16)
    clients = Clients(cancer)
    for w in range(2):  # 2 benign clients and the attacker: 3 clients tested
        result = detector.evaluate(
            clients.window(w, 30, attacker=_uniform_queries(cancer, 60, rng), n_benign=2)
        )
    assert result.status is Status.ALERT and result.evidence["subjects"] == ["attacker"]
    assert result.evidence["peer_comparison"] is False
    assert "only 3 clients with 50 query distances" in result.evidence["peer_comparison_note"]
    assert result.evidence["findings"][0]["peer_p_value"] is None


def test_extraction_state_round_trip_resumes_identically(cancer: Traffic) -> None:
    detector = ExtractionDetector(alpha=ALPHA).fit(cancer.reference())
    clients = Clients(cancer)
    rng = np.random.default_rng(5)
    windows = [clients.window(w, 15, attacker=_uniform_queries(cancer, 40, rng)) for w in range(3)]
    for window in windows[:2]:
        detector.evaluate(window)
    twin = ExtractionDetector(**detector.get_params()).load_state_dict(_round_trip(detector))
    assert twin.evaluate(windows[2]) == detector.evaluate(windows[2])
    assert dump_state(twin.state_dict()) == dump_state(detector.state_dict())
    assert len(detector.clients) == N_BENIGN + 1


def test_extraction_skips_windows_it_cannot_test(cancer: Traffic) -> None:
    detector = ExtractionDetector(alpha=ALPHA)
    window = Clients(cancer).window(0, 10)
    with pytest.raises(NotFittedError):
        detector.evaluate(window)
    detector.fit(cancer.reference())
    no_clients = Batch(event_ids=window.event_ids, features=window.features, timestamps=window.timestamps)
    assert detector.evaluate(no_clients).reason == "the window carries no client ids"
    no_times = Batch(event_ids=window.event_ids, features=window.features, client_ids=window.client_ids)
    assert "no timestamps" in (detector.evaluate(no_times).reason or "")
    first = detector.evaluate(window)  # 10 queries per client: not yet min_queries distances
    assert first.status is Status.SKIPPED and "no client has 50 query distances yet" in (first.reason or "")
    assert len(detector.clients) == N_BENIGN  # ... but the histories were learnt


def test_extraction_memory_stays_bounded_with_100000_distinct_clients(cancer: Traffic) -> None:
    detector = ExtractionDetector(alpha=ALPHA, max_clients=10_000, max_history=50, min_queries=10)
    detector.fit(cancer.reference())
    pool = cancer.live_x
    sizes = []
    for w in range(5):  # 20,000 new client ids per window, one query each
        n = 20_000
        rows = pool[np.arange(n) % len(pool)]
        clients = [f"c{w}-{i}" for i in range(n)]
        result = detector.evaluate(cancer.batch(rows, clients, w * WINDOW, f"m{w}-"))
        assert result.status is Status.SKIPPED  # nobody has 10 distances
        state = detector.state_dict()["clients"]
        sizes.append(len(dump_state(detector.state_dict())))
        assert len(detector.clients) == len(state["clients"]) <= 10_000
        assert state["queries"].shape[0] <= 10_000 * 50
    assert detector.clients.evicted == 90_000
    assert max(sizes) <= sizes[0] * 1.01  # no growth once full
    # The most recent clients are the ones kept.
    assert "c4-19999" in detector.clients and "c0-0" not in detector.clients


def test_extraction_forgets_idle_clients_by_event_time(cancer: Traffic) -> None:
    detector = ExtractionDetector(alpha=ALPHA, idle_expiry=300.0).fit(cancer.reference())
    clients = Clients(cancer)
    detector.evaluate(clients.window(0, 5))
    assert len(detector.clients) == N_BENIGN
    late = cancer.batch(cancer.live_x[:3], ["newcomer"] * 3, 10 * WINDOW, "late-")  # 10 minutes later
    detector.evaluate(late)
    assert list(detector.clients) == ["newcomer"] and detector.clients.expired == N_BENIGN


def test_extraction_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \(0.0, 0.5\)"):
        ExtractionDetector(alpha=0.7)
    with pytest.raises(ValueError, match="max_history must be >= 50"):
        ExtractionDetector(max_history=20)
    with pytest.raises(ValueError, match="min_peers must be >= 3"):
        ExtractionDetector(min_peers=1)


# ---------------------------------------------------------------------------------------------- probing


def _probing_attack(traffic: Traffic, rng: np.random.Generator) -> np.ndarray:
    """25 held-out records, each queried 40 times with a tiny perturbation (1 % of each feature's sd)."""
    records = traffic.live_x[rng.choice(len(traffic.live_x), 25, replace=False)]
    queries = np.repeat(records, 40, axis=0) + rng.normal(0.0, 0.01, (1000, records.shape[1])) * traffic.std
    return queries[rng.permutation(1000)]


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_probing_catches_near_duplicates_in_the_window_they_start(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    traffic: Traffic = request.getfixturevalue(dataset)
    detector = ProbingDetector(alpha=ALPHA).fit(traffic.reference())
    clients = Clients(traffic)
    for w in range(3):
        result = detector.evaluate(clients.window(w, 15))
        assert result.status is not Status.ALERT
    attack = _probing_attack(traffic, np.random.default_rng(6))
    window = clients.window(3, 15, attacker=attack[:250])  # the attack starts here, 250 of its 1,000 queries
    result = detector.evaluate(window)
    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["attacker"]
    finding = result.evidence["findings"][0]
    assert (
        finding["near_duplicates"] >= 100 and finding["mean_knn_distance"] < finding["benign_threshold"] * 2
    )
    assert set(finding["event_ids"]) <= _attacker_ids(window) and len(finding["event_ids"]) == 20
    json.dumps(dict(result.evidence))


def test_probing_stays_quiet_on_benign_clients(digits: Traffic) -> None:
    detector = ProbingDetector(alpha=ALPHA).fit(digits.reference())
    clients = Clients(digits, seed=7)
    for w in range(8):  # 160 queries per benign client
        result = detector.evaluate(clients.window(w, 20))
        assert result.status is not Status.ALERT, result.evidence


def test_probing_state_round_trip_resumes_identically(cancer: Traffic) -> None:
    detector = ProbingDetector(alpha=ALPHA).fit(cancer.reference())
    clients = Clients(cancer)
    attack = _probing_attack(cancer, np.random.default_rng(8))
    windows = [clients.window(w, 15, attacker=attack[w * 100 : (w + 1) * 100]) for w in range(3)]
    for window in windows[:2]:
        detector.evaluate(window)
    twin = ProbingDetector(**detector.get_params()).load_state_dict(_round_trip(detector))
    result = twin.evaluate(windows[2])
    assert result == detector.evaluate(windows[2])
    assert result.status is Status.ALERT  # the attacker's history from former windows counts


def test_probing_skips_windows_it_cannot_test(cancer: Traffic) -> None:
    detector = ProbingDetector(alpha=ALPHA).fit(cancer.reference())
    window = Clients(cancer).window(0, 5)
    no_clients = Batch(event_ids=window.event_ids, features=window.features, timestamps=window.timestamps)
    assert detector.evaluate(no_clients).reason == "the window carries no client ids"
    first = detector.evaluate(window)
    assert first.status is Status.SKIPPED and "no client has 10 earlier queries yet" in (first.reason or "")


# ---------------------------------------------------------------------------------------------- evasion


def _evasion_detector(traffic: Traffic) -> EvasionDetector:
    return EvasionDetector(alpha=ALPHA, vae={"max_epochs": 60}).fit(traffic.reference())


def _out_of_range(traffic: Traffic, n: int, rng: np.random.Generator, sd: float = 4.0) -> np.ndarray:
    """Held-out inputs with their 8 most variable features pushed up by ``sd`` reference sd."""
    return _shifted(traffic, traffic.live_x[rng.choice(len(traffic.live_x), n, replace=False)], sd)


@pytest.fixture(scope="module")
def evasion_digits(digits: Traffic) -> EvasionDetector:
    return _evasion_detector(digits)


@pytest.fixture(scope="module")
def evasion_cancer(cancer: Traffic) -> EvasionDetector:
    return _evasion_detector(cancer)


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_evasion_names_the_client_sending_out_of_range_inputs(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    traffic: Traffic = request.getfixturevalue(dataset)
    detector: EvasionDetector = request.getfixturevalue(f"evasion_{dataset}")
    window = Clients(traffic).window(0, 20, attacker=_out_of_range(traffic, 30, np.random.default_rng(9)))
    result = detector.evaluate(window)
    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["attacker"]
    assert result.evidence["peer_comparison"] is True
    finding = result.evidence["findings"][0]
    assert finding["suspicious"] <= finding["anomalous"] <= finding["queries"] == 30
    assert set(finding["event_ids"]) <= _attacker_ids(window) and finding["event_ids"]
    assert finding["p_value"] == max(finding["reference_p_value"], finding["peer_p_value"]) <= ALPHA
    assert result.p_value == finding["p_value"]
    assert finding["median_score"] > finding["peer_median_score"]
    json.dumps(dict(result.evidence))


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_evasion_names_no_client_when_the_whole_population_shifts(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    # The demo's drift: every client's inputs moved +4 sd on 8 features, exactly what the out-of-range
    # evader does. Against the reference alone every client is an evader; against its peers none stands out.
    traffic: Traffic = request.getfixturevalue(dataset)
    detector: EvasionDetector = request.getfixturevalue(f"evasion_{dataset}")
    clients = Clients(traffic, seed=12)
    for w in range(2):
        result = detector.evaluate(clients.window(w, 20, shift=4.0))
        assert result.status is Status.OK, result.evidence["subjects"]
        assert result.evidence["subjects"] == []
        # The shift is real: most clients fail the reference test, and the evidence says they moved together.
        assert result.evidence["clients_shifted_with_peers"] >= N_BENIGN // 2


@pytest.mark.parametrize("dataset", ["digits", "cancer"])
def test_evasion_still_catches_an_evader_further_out_than_a_drifted_population(
    dataset: str, request: pytest.FixtureRequest
) -> None:
    # The population is at +4 sd, the evader 1 sd further. (An evader moved exactly as the population is
    # not caught: nothing in its inputs tells it apart; see the module docstring of evasion.)
    traffic: Traffic = request.getfixturevalue(dataset)
    detector: EvasionDetector = request.getfixturevalue(f"evasion_{dataset}")
    evader = _out_of_range(traffic, 30, np.random.default_rng(13), sd=5.0)
    window = Clients(traffic, seed=12).window(0, 20, attacker=evader, shift=4.0)
    result = detector.evaluate(window)
    assert result.status is Status.ALERT
    assert result.evidence["subjects"] == ["attacker"]
    finding = result.evidence["findings"][0]
    assert set(finding["event_ids"]) <= _attacker_ids(window) and finding["event_ids"]
    assert finding["peer_p_value"] <= ALPHA and finding["reference_p_value"] <= ALPHA


def test_evasion_judges_clients_against_the_reference_alone_when_few_are_tested(
    evasion_digits: EvasionDetector, digits: Traffic
) -> None:
    # Three benign clients and the evader: too few to say what the population looks like.
    evader = _out_of_range(digits, 30, np.random.default_rng(14))
    result = evasion_digits.evaluate(Clients(digits).window(0, 20, attacker=evader, n_benign=3))
    assert result.status is Status.ALERT and result.evidence["subjects"] == ["attacker"]
    assert result.evidence["peer_comparison"] is False
    assert "only 4 clients with 10 events in the window (5 needed" in result.evidence["peer_comparison_note"]
    finding = result.evidence["findings"][0]
    assert finding["peer_p_value"] is None and finding["p_value"] == finding["reference_p_value"]


def test_evasion_stays_quiet_on_benign_clients(evasion_digits: EvasionDetector, digits: Traffic) -> None:
    clients = Clients(digits, seed=10)
    for w in range(5):
        result = evasion_digits.evaluate(clients.window(w, 30))
        assert result.status is Status.OK, result.evidence


def test_evasion_state_round_trip_gives_identical_results(
    evasion_digits: EvasionDetector, digits: Traffic
) -> None:
    window = Clients(digits).window(1, 20, attacker=_out_of_range(digits, 20, np.random.default_rng(11)))
    twin = EvasionDetector(**evasion_digits.get_params()).load_state_dict(_round_trip(evasion_digits))
    assert twin.evaluate(window) == evasion_digits.evaluate(window)
    assert dump_state(twin.state_dict()) == dump_state(evasion_digits.state_dict())


def test_evasion_skips_windows_it_cannot_test(evasion_digits: EvasionDetector, digits: Traffic) -> None:
    window = Clients(digits).window(0, 5)
    no_clients = Batch(event_ids=window.event_ids, features=window.features, predictions=window.predictions)
    assert evasion_digits.evaluate(no_clients).reason == "the window carries no client ids"
    no_scores = Batch(
        event_ids=window.event_ids,
        features=window.features,
        predictions=[{"label": p["label"]} for p in window.predictions],
        client_ids=window.client_ids,
    )
    assert evasion_digits.evaluate(no_scores).reason == "the window carries no prediction scores"
    assert "no client has 10 events" in (evasion_digits.evaluate(window).reason or "")


def test_evasion_needs_scores_in_the_reference(cancer: Traffic) -> None:
    reference = cancer.reference()
    unscored = Batch(event_ids=reference.event_ids, features=reference.features)
    with pytest.raises(ValueError, match="evasion: the reference needs predictions with class scores"):
        EvasionDetector(vae={"max_epochs": 5}).fit(unscored)
    with pytest.raises(ValueError, match=r"vae: quantile must be in"):
        EvasionDetector(vae={"quantile": 2.0})
    with pytest.raises(ValueError, match="min_peers must be >= 3"):
        EvasionDetector(min_peers=2)
