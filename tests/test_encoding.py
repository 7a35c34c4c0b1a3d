"""Tests of :class:`detectors.encoding.FeatureSchema`: layout, standardisation, missing values, validation."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris

from detectors.base import Batch, FeatureValue
from detectors.encoding import FeatureSchema
from detectors.state import dump_state, load_state


def _iris_features() -> list[dict[str, FeatureValue]]:
    """Iris with the species as a categorical feature: a small real mixed-type table."""
    iris = load_iris()
    names = [name.replace(" (cm)", "").replace(" ", "_") for name in iris.feature_names]
    species = [str(iris.target_names[t]) for t in iris.target]
    return [
        {**{name: float(v) for name, v in zip(names, row, strict=True)}, "species": s}
        for row, s in zip(iris.data, species, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- fitting


def test_kinds_names_and_layout_follow_the_reference() -> None:
    features = _iris_features()
    schema = FeatureSchema.fit(features)
    assert schema.names == ("petal_length", "petal_width", "sepal_length", "sepal_width", "species")
    assert schema.kinds == {
        "petal_length": "numeric",
        "petal_width": "numeric",
        "sepal_length": "numeric",
        "sepal_width": "numeric",
        "species": "categorical",
    }
    # 4 numeric x (value, missing) + 3 species + other + missing.
    assert schema.dim == 4 * 2 + 3 + 2
    assert schema.columns[-5:] == (
        "species=setosa",
        "species=versicolor",
        "species=virginica",
        "species:other",
        "species:missing",
    )
    encoded = schema.encode(features)
    assert encoded.dtype == np.float32
    assert encoded.shape == (150, schema.dim)
    # Standardised numeric columns have mean 0 and std 1 on the reference.
    values = encoded[:, [0, 2, 4, 6]].astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-5)
    assert not encoded[:, [1, 3, 5, 7]].any()  # nothing missing in iris
    # Each event has exactly one hot species column.
    np.testing.assert_array_equal(encoded[:, 8:].sum(axis=1), 1.0)


def test_numeric_standardisation_and_missing_indicator() -> None:
    schema = FeatureSchema.fit([{"a": 1.0}, {"a": 3}, {"a": None}, {}, {"a": math.nan}])
    assert schema.kinds == {"a": "numeric"}
    assert schema.numeric_stats("a") == (2.0, 1.0)  # missing values do not enter the statistics
    encoded = schema.encode([{"a": 3.0}, {"a": None}, {}, {"a": True}, {"a": math.nan}, {"a": math.inf}])
    np.testing.assert_array_equal(
        encoded,
        np.array([[1, 0], [0, 1], [0, 1], [-1, 0], [0, 1], [0, 1]], dtype=np.float32),
    )


def test_bools_are_numeric() -> None:
    schema = FeatureSchema.fit([{"flag": True}, {"flag": False}, {"flag": 1}])
    assert schema.kinds == {"flag": "numeric"}
    mean, std = schema.numeric_stats("flag")
    assert mean == pytest.approx(2 / 3)
    assert std == pytest.approx(math.sqrt(2) / 3)
    assert schema.validate({"flag": False}) is None


def test_constant_and_always_missing_features_get_unit_scale() -> None:
    schema = FeatureSchema.fit([{"c": 5.0, "gone": None}, {"c": 5.0}])
    assert schema.numeric_stats("c") == (5.0, 1.0)
    assert schema.numeric_stats("gone") == (0.0, 1.0)
    encoded = schema.encode([{"c": 7.0, "gone": 2.0}, {}])
    np.testing.assert_array_equal(encoded, np.array([[2, 0, 2, 0], [0, 1, 0, 1]], dtype=np.float32))


def test_categorical_one_hot_with_other_and_missing() -> None:
    schema = FeatureSchema.fit([{"colour": "red"}, {"colour": "blue"}, {"colour": "red"}, {"colour": None}])
    assert schema.kinds == {"colour": "categorical"}
    assert schema.categories("colour") == ["blue", "red"]
    assert schema.columns == ("colour=blue", "colour=red", "colour:other", "colour:missing")
    encoded = schema.encode(
        [{"colour": "red"}, {"colour": "green"}, {"colour": None}, {}, {"colour": 3}, {"colour": math.nan}]
    )
    np.testing.assert_array_equal(
        encoded,
        np.array(
            [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]],
            dtype=np.float32,
        ),
    )


def test_any_string_makes_a_feature_categorical_and_numbers_in_it_encode_as_other() -> None:
    schema = FeatureSchema.fit([{"x": "a"}, {"x": 1.0}, {"x": "b"}])
    assert schema.kinds == {"x": "categorical"}
    assert schema.categories("x") == ["a", "b"]
    np.testing.assert_array_equal(schema.encode([{"x": 1.0}]), [[0, 0, 1, 0]])


def test_max_categories_keeps_the_most_frequent() -> None:
    # Frequencies: a=3, b=2, c=2, d=1; with 2 kept, the b/c tie is broken by name.
    values = ["a", "a", "a", "b", "b", "c", "c", "d"]
    schema = FeatureSchema.fit([{"k": v} for v in values], max_categories=2)
    assert schema.categories("k") == ["a", "b"]
    encoded = schema.encode([{"k": "c"}, {"k": "d"}, {"k": "b"}])
    np.testing.assert_array_equal(encoded, [[0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0]])


def test_unknown_keys_and_wrong_types_do_not_crash_encode() -> None:
    schema = FeatureSchema.fit(_iris_features())
    encoded = schema.encode(
        [
            {"sepal_length": "abc", "species": "tulip", "extra": 1.0},
            {"petal_width": 10**400, "species": 4.2},
            {"sepal_width": 1e300},
            {},
        ]
    )
    assert np.isfinite(encoded).all()
    row = dict(zip(schema.columns, encoded[0], strict=True))
    assert row["sepal_length:missing"] == 1.0 and row["sepal_length"] == 0.0
    assert row["species:other"] == 1.0
    row = dict(zip(schema.columns, encoded[1], strict=True))
    assert row["petal_width:missing"] == 1.0  # an int too large for a float is not a usable value
    assert row["species:other"] == 1.0
    assert dict(zip(schema.columns, encoded[2], strict=True))["sepal_width"] > 1e5  # clipped, finite
    np.testing.assert_array_equal(encoded[3, [1, 3, 5, 7, -1]], 1.0)  # everything missing


def test_numpy_scalars_encode_like_python_numbers() -> None:
    digits = load_digits().data[:50]
    python = [{f"px{j}": float(v) for j, v in enumerate(row)} for row in digits]
    numpy_ = [{f"px{j}": np.float32(v) for j, v in enumerate(row)} for row in digits]
    schema = FeatureSchema.fit(python)
    np.testing.assert_array_equal(schema.encode(python), schema.encode(numpy_))  # type: ignore[arg-type]


def test_empty_inputs() -> None:
    with pytest.raises(ValueError, match="zero events"):
        FeatureSchema.fit([])
    schema = FeatureSchema.fit(_iris_features())
    assert schema.encode([]).shape == (0, schema.dim)


def test_unsupported_reference_types_are_rejected() -> None:
    bad: list[dict[str, Any]] = [{"x": 1.0}, {"x": [1, 2]}]
    with pytest.raises(ValueError, match="feature 'x' has a value of unsupported type list"):
        FeatureSchema.fit(bad)
    with pytest.raises(ValueError, match="max_categories"):
        FeatureSchema.fit([{"x": "a"}], max_categories=0)


def test_the_one_pass_numeric_encoding_equals_the_per_feature_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # All-numeric schemas take a one-pass path (its speed is measured in bench/perf_detectors.py); it must
    # give exactly what the general per-feature path gives, including missing values, NaN, inf, bools and
    # values far outside the reference range.
    digits = load_digits().data
    features: list[dict[str, FeatureValue]] = [
        {f"px{j}": float(v) for j, v in enumerate(row)} for row in np.resize(digits, (2_000, 64)).tolist()
    ]
    schema = FeatureSchema.fit(features[:1000])
    features[3]["px5"] = None
    features[4]["px6"] = math.nan
    features[5]["px7"] = math.inf
    features[6]["px8"] = True
    features[7]["px9"] = 1e300
    fast = schema.encode(features)
    monkeypatch.setattr(FeatureSchema, "_encode_numeric_fast", lambda self, features, out: False)
    general = schema.encode(features)
    assert fast.shape == (2_000, 128) and fast.dtype == general.dtype
    assert np.array_equal(fast, general)


# ---------------------------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"sepal_length": "abc"}, "feature 'sepal_length' is numeric in the reference, got str 'abc'"),
        ({"species": 3}, "feature 'species' is categorical in the reference, got int 3"),
        ({"species": True}, "feature 'species' is categorical in the reference, got bool True"),
        ({"foo": 1.0}, "unknown feature 'foo' (not in the reference schema)"),
        ({"petal_width": math.inf}, "feature 'petal_width' is not finite: inf"),
        ({"petal_width": [1.0]}, "feature 'petal_width' is numeric in the reference, got list [1.0]"),
    ],
)
def test_validate_reports_the_problem(event: dict[str, Any], reason: str) -> None:
    schema = FeatureSchema.fit(_iris_features())
    assert schema.validate(event) == reason


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"sepal_length": None, "species": None},
        {"sepal_length": math.nan},
        {"sepal_length": 5, "petal_width": True, "species": "tulip"},  # unseen categories fit the schema
        {"sepal_length": np.float64(5.1), "sepal_width": np.int64(3)},
    ],
)
def test_validate_accepts_missing_bools_and_unseen_categories(event: dict[str, Any]) -> None:
    schema = FeatureSchema.fit(_iris_features())
    assert schema.validate(event) is None


def test_validate_truncates_long_values() -> None:
    schema = FeatureSchema.fit(_iris_features())
    reason = schema.validate({"sepal_length": "x" * 1000})
    assert reason is not None and len(reason) < 150


# ---------------------------------------------------------------------------------------------- state


def test_state_round_trip_through_dump_state() -> None:
    features = _iris_features()
    features[3] = {**features[3], "note": None, "code": "x"}
    schema = FeatureSchema.fit(features)
    state = schema.state_dict()
    restored = FeatureSchema.from_state(load_state(dump_state(state)))
    assert restored == schema
    assert restored.columns == schema.columns
    probe: list[dict[str, FeatureValue]] = [
        *features,
        {"species": "tulip"},
        {"code": None, "sepal_length": 100.0},
    ]
    np.testing.assert_array_equal(restored.encode(probe), schema.encode(probe))


def test_from_state_rejects_malformed_state() -> None:
    state = FeatureSchema.fit(_iris_features()).state_dict()
    with pytest.raises(ValueError, match="mean/std"):
        FeatureSchema.from_state({**state, "mean": state["mean"][:2]})
    with pytest.raises(ValueError, match="malformed"):
        FeatureSchema.from_state({"numeric": []})
    with pytest.raises(ValueError, match="std > 0"):
        FeatureSchema.from_state({**state, "std": np.zeros_like(state["std"])})


# ---------------------------------------------------------------------------------- one encoding per window


def test_equal_schemas_share_one_encoding_of_a_batch() -> None:
    features = _iris_features()
    batch = Batch(event_ids=[str(i) for i in range(len(features))], features=features)
    first, second = FeatureSchema.fit(features), FeatureSchema.fit([dict(f) for f in features])
    assert first == second and hash(first) == hash(second)
    matrix = batch.encoded(first)
    assert batch.encoded(second) is matrix
    assert np.array_equal(matrix, first.encode(features))
    # Shared between detectors, so nobody may write into it.
    with pytest.raises(ValueError, match="read-only"):
        matrix[0, 0] = 1.0

    other = FeatureSchema.fit(features[:50])  # other means and categories: its own encoding
    assert other != first
    assert batch.encoded(other) is not matrix
    assert np.array_equal(batch.encoded(other), other.encode(features))
    # A copy of the batch (dataclasses.replace) starts without the cache, so no stale matrix follows it.
    assert dataclasses.replace(batch)._encodings == {}
