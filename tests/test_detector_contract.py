"""The contract every registered detector must honour, and the state format they are saved in.

The conformance test runs once per entry of :data:`detectors.DETECTORS`, on load_breast_cancer split
with a seeded permutation into a reference and a disjoint clean window, with features, a classifier's
predictions (label and scores) and the true labels, so that every detector has the data it uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detectors import DETECTORS, Batch, DetectionResult, Detector, NotFittedError, Status, create_detector
from detectors.state import dump_state, load_state

# Parameters that only make the contract run faster; the detector's defaults apply otherwise.
_FAST_PARAMS: dict[str, dict[str, Any]] = {
    "vae_anomaly": {"max_epochs": 50},
    "backdoor": {"vae": {"max_epochs": 50}},
    "evasion": {"vae": {"max_epochs": 50}},
}

_SPLIT_SEED = 20_240_603

# Parameters of the stored-state fixture: a tiny VAE and few reference neighbours keep its files small.
_TINY_VAE = {"hidden_dim": 8, "latent_dim": 2, "max_epochs": 5}
STORED_STATE_PARAMS: dict[str, dict[str, Any]] = {
    "vae_anomaly": _TINY_VAE,
    "backdoor": {"vae": _TINY_VAE},
    "evasion": {"vae": _TINY_VAE},
    "latent_drift": {"vae": _TINY_VAE, "max_reference": 100},
    "label_consistency": {"max_reference": 100},
}

_STORED_STATES = Path(__file__).parent / "fixtures" / "detector_states"


def _cancer_batches() -> tuple[Batch, Batch]:
    """A 369-event reference and a disjoint 200-event clean window, with every Batch column filled.

    The predictions come from a logistic regression: out-of-fold (5-fold) for the reference events, from
    the model fitted on the whole reference for the window, so that no prediction is made on an event the
    model was trained on (in-sample predictions would make the reference look better than any window).
    """
    data = load_breast_cancer()
    names = [name.replace(" ", "_") for name in data.feature_names]
    classes = [str(name) for name in data.target_names]
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(data.data))
    reference_ids, window_ids = order[:369], order[369:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    proba = np.empty((len(data.data), len(classes)))
    proba[reference_ids] = cross_val_predict(
        model, data.data[reference_ids], data.target[reference_ids], cv=5, method="predict_proba"
    )
    proba[window_ids] = model.fit(data.data[reference_ids], data.target[reference_ids]).predict_proba(
        data.data[window_ids]
    )

    def batch(ids: np.ndarray) -> Batch:
        return Batch(
            event_ids=[f"e{i}" for i in ids],
            features=[dict(zip(names, map(float, data.data[i]), strict=True)) for i in ids],
            predictions=[
                {
                    "label": classes[int(np.argmax(proba[i]))],
                    "scores": dict(zip(classes, map(float, proba[i]), strict=True)),
                }
                for i in ids
            ],
            labels=[str(data.target_names[data.target[i]]) for i in ids],
            client_ids=[f"client{i % 7}" for i in ids],
            timestamps=[1_700_000_000.0 + float(i) for i in ids],
        )

    return batch(reference_ids), batch(window_ids)


def shifted_window(window: Batch) -> Batch:
    """The window with something for every detector to find: eight features scaled by 1.6, 30 % of the
    labels and 25 % of the predictions flipped, 60 events from one client, and a group attribute."""
    rng = np.random.default_rng(7)
    moved = list(window.features[0])[:8]
    flipped = {"benign": "malignant", "malignant": "benign"}
    predictions = []
    for prediction, flip in zip(window.predictions, rng.random(len(window)) < 0.25, strict=True):
        scores = {cls: 1.0 - score for cls, score in prediction["scores"].items()}
        predictions.append(
            {"label": max(scores, key=scores.__getitem__), "scores": scores} if flip else prediction
        )
    return dataclasses.replace(
        window,
        features=[{k: v * 1.6 if k in moved else v for k, v in f.items()} for f in window.features],
        labels=[
            flipped[str(label)] if flip else label
            for label, flip in zip(window.labels, rng.random(len(window)) < 0.3, strict=True)
        ],
        predictions=predictions,
        client_ids=["attacker" if i < 60 else client for i, client in enumerate(window.client_ids)],
        groups=[{"region": "a" if i % 3 else "b"} for i in range(len(window))],
    )


def result_document(result: DetectionResult) -> Any:
    """A result as the JSON document it is stored as (floats exact: JSON keeps their shortest repr)."""
    return json.loads(json.dumps(dataclasses.asdict(result), allow_nan=True))


@pytest.fixture(scope="module")
def cancer() -> tuple[Batch, Batch]:
    return _cancer_batches()


@pytest.mark.parametrize("detector_id", sorted(DETECTORS))
def test_detector_conformance(detector_id: str, cancer: tuple[Batch, Batch]) -> None:
    cls = DETECTORS[detector_id]
    reference, window = cancer
    assert cls.id == detector_id

    # get_params round-trips through JSON and the constructor.
    params = create_detector(detector_id, _FAST_PARAMS.get(detector_id, {})).get_params()
    assert json.loads(json.dumps(params)) == params
    detector = cls(**json.loads(json.dumps(params)))
    assert detector.get_params() == params
    assert isinstance(detector, Detector)

    # Nothing works before fit.
    assert not detector.fitted
    with pytest.raises(NotFittedError):
        detector.evaluate(window)
    with pytest.raises(NotFittedError):
        detector.state_dict()

    assert detector.fit(reference) is detector
    assert detector.fitted
    # A stateful detector learns while it evaluates: its twin starts from the state before this window.
    fitted_state = load_state(dump_state(detector.state_dict()))
    result = detector.evaluate(window)
    assert result.detector == cls.id
    assert result.threat is cls.threat
    assert result.n_events == len(window)
    assert result.status is not Status.ALERT  # a clean window
    assert result.status is Status.SKIPPED or result.reason is None
    json.dumps(dict(result.evidence))  # evidence is stored as JSON by the monitor

    # The state survives dump_state/load_state, and a twin built from params + state evaluates identically
    # (and, if stateful, ends in the same learned state).
    state = load_state(dump_state(detector.state_dict()))
    twin = cls(**params)
    assert twin.load_state_dict(fitted_state if cls.stateful else state) is twin
    assert twin.fitted
    assert twin.evaluate(window) == result
    assert dump_state(twin.state_dict()) == dump_state(detector.state_dict())


def test_create_detector_errors_name_the_detector() -> None:
    with pytest.raises(ValueError, match=r"unknown detector id 'nope'; valid ids: .*vae_anomaly"):
        create_detector("nope", {})
    with pytest.raises(TypeError, match=r"^vae_anomaly: .*unexpected keyword argument 'colour'"):
        create_detector("vae_anomaly", {"colour": "red"})
    with pytest.raises(ValueError, match=r"^vae_anomaly: alpha must be in"):
        create_detector("vae_anomaly", {"alpha": 2.0})


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        DETECTORS["other"] = DETECTORS["vae_anomaly"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------- state format


def _assert_same(actual: Any, expected: Any) -> None:
    """Equality that also requires arrays to be bit-identical with the same dtype and shape."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected)
        for key in expected:
            _assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_same(a, e)
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual)
    else:
        assert type(actual) is type(expected) and actual == expected


def test_state_round_trip_keeps_arrays_and_json_values() -> None:
    state = {
        "weights": {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "fortran": np.asfortranarray(np.eye(3)),
            "b": np.array([True, False]),
            "scalar": np.array(2.5, dtype=np.float16),
            "empty": np.empty((0, 5), dtype=np.int64),
            "text": np.array(["a", "bc"]),
        },
        # Keys that must not collide as archive entry names.
        "a/b": {"c~d": np.array([-0.0, math.inf, math.nan])},
        "a": {"b": np.array([1, 2], dtype=np.uint8)},
        "a%2Fb": np.array([3]),
        "n\x00": np.array([4]),  # zip would cut a raw name at the NUL
        "n": np.array([5]),
        "n.npy": np.array([6]),  # np.load would look this up as "n"
        "list": [np.array([1.5]), {"x": None}, 3, "s", [True, 1e-300]],
        "threshold": 0.1 + 0.2,
        "nan": math.nan,
        "none": None,
        "": "empty key",
        "unicode": "Größe ✓",
    }
    restored = load_state(dump_state(state))
    _assert_same(restored, state)


def test_state_converts_tuples_and_numpy_scalars() -> None:
    restored = load_state(
        dump_state({"t": (1, 2), "f": np.float32(0.5), "i": np.int64(3), "b": np.bool_(True)})
    )
    assert restored == {"t": [1, 2], "f": 0.5, "i": 3, "b": True}


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"a": {"b": object()}}, r"state\['a'\]\['b'\] has a value of type object"),
        ({"a": [1, {"c": {1, 2}}]}, r"state\['a'\]\[1\]\['c'\] has a value of type set"),
        ({"a": {1: 2}}, r"state\['a'\] has a key 1 of type int"),
        ({"arr": np.array([None, 1])}, r"state\['arr'\] is a numpy array of dtype object"),
    ],
)
def test_state_rejects_unserialisable_values_naming_the_path(state: dict[str, Any], path: str) -> None:
    with pytest.raises(TypeError, match=path):
        dump_state(state)


def test_load_state_rejects_foreign_bytes() -> None:
    with pytest.raises(ValueError, match="not a saved detector state"):
        load_state(b"definitely not an archive")
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(3))
    with pytest.raises(ValueError, match="JSON entry is missing"):
        load_state(buffer.getvalue())


def test_load_state_never_unpickles() -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, json=np.frombuffer(b'{"format": "sentinel-state/1"}', dtype=np.uint8), x=np.array([{}]))
    with pytest.raises(ValueError):
        load_state(buffer.getvalue())


_json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
_values = st.recursive(
    _json_leaves | _arrays,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _values, max_size=4))
def test_state_round_trip_property(state: dict[str, Any]) -> None:
    _assert_same(load_state(dump_state(state)), state)


def test_detectors_sharing_one_window_get_the_results_they_get_alone(cancer: tuple[Batch, Batch]) -> None:
    # The pipeline hands one Batch to every detector, which keeps its encoded feature matrix for the next
    # detector with an equal schema (Batch.encoded). Sharing must change nothing: no detector may see
    # another's work, and the shared matrix must survive each of them unchanged.
    reference, window = cancer
    reference = dataclasses.replace(reference)  # a Batch with no cached encodings
    states: dict[str, dict[str, Any]] = {}
    for detector_id in sorted(DETECTORS):
        fitted = create_detector(detector_id, _FAST_PARAMS.get(detector_id, {})).fit(reference)
        states[detector_id] = load_state(dump_state(fitted.state_dict()))

    def restored(detector_id: str) -> Detector:
        params = _FAST_PARAMS.get(detector_id, {})
        return create_detector(detector_id, params).load_state_dict(states[detector_id])

    alone = {d: restored(d).evaluate(dataclasses.replace(window)) for d in sorted(DETECTORS)}
    shared_window = dataclasses.replace(window)
    shared = {d: restored(d).evaluate(shared_window) for d in sorted(DETECTORS)}
    assert shared == alone
    assert shared_window._encodings, "no detector used the window's shared encoding"
    for schema, matrix in shared_window._encodings.items():
        assert np.array_equal(matrix, schema.encode(window.features))


# ---------------------------------------------------------------------------------------------- stored states


@pytest.mark.parametrize("detector_id", sorted(DETECTORS))
def test_states_stored_by_earlier_code_load_and_evaluate_identically(
    detector_id: str, cancer: tuple[Batch, Batch]
) -> None:
    # A deployed daemon reloads the detector states it stored instead of refitting: the bytes written by
    # the code before the detector plumbing was shared (tests/fixtures/detector_states/generate.py) must
    # load, give the same results and, when saved again, the same bytes.
    expected = json.loads((_STORED_STATES / "expected.json").read_text(encoding="utf-8"))[detector_id]
    stored = (_STORED_STATES / f"{detector_id}.state").read_bytes()
    detector = create_detector(detector_id, STORED_STATE_PARAMS.get(detector_id, {}))
    assert detector.get_params() == expected["params"]
    detector.load_state_dict(load_state(stored))
    assert dump_state(detector.state_dict()) == stored
    _, clean = cancer
    for name, window in {"clean": clean, "shifted": shifted_window(clean)}.items():
        result = detector.evaluate(dataclasses.replace(window))
        assert result_document(result) == expected["results"][name], name
    assert hashlib.sha256(dump_state(detector.state_dict())).hexdigest() == expected["final_state_sha256"]
