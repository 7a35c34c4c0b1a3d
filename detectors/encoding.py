"""Turning feature dicts into a numeric matrix, with the encoding learned from the reference.

Prediction events carry their features as dicts (name -> float | int | bool | str | None). Detectors that
work on vectors (the VAE, later drift tests on its latent space) need one fixed numeric layout.
:class:`FeatureSchema` learns that layout from the reference events and applies it to any later event:

* a **numeric** feature (every non-missing reference value is an int, float or bool) becomes two columns:
  the value standardised with the reference mean and standard deviation (0, i.e. the mean, where
  missing), and a missing indicator (1.0 where missing);
* a **categorical** feature (some non-missing reference value is a str) becomes a one-hot block: one
  column per reference category, one for "other" (unseen categories, categories beyond
  ``max_categories`` and values of the wrong type) and one for "missing".

A value is missing when it is None, NaN, infinite (for a numeric feature) or when the key is absent.
Features are laid out in sorted name order, so the layout only depends on the reference's content.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from detectors.base import FeatureValue

__all__ = ["FeatureKind", "FeatureSchema"]

FeatureKind = Literal["numeric", "categorical"]

# Types accepted as numbers. bool is a subclass of int; numpy scalars are accepted too because callers
# often build feature dicts from numpy rows.
_NUMBER_TYPES: tuple[type, ...] = (int, float, np.integer, np.floating, np.bool_)

# Standardised values are clipped to this magnitude: a wild input (1e300) must give a large but finite
# float32 value, not inf, or the networks downstream would produce NaN scores.
_CLIP = 1e6

_MAX_REPR = 60

# Value types for which ``np.array(column, dtype=float64)`` is exactly the encoding (fast path).
_PLAIN_NUMBER_TYPES = frozenset({float, int, bool, type(None)})


def _is_missing(value: Any) -> bool:
    """Whether a raw feature value counts as missing (None or NaN)."""
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _short_repr(value: Any) -> str:
    """``repr(value)`` cut to a readable length for messages."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _to_float(value: Any) -> float:
    """One numeric value as float, NaN where it is missing or not a number (slow path of ``encode``)."""
    if not isinstance(value, _NUMBER_TYPES):
        return math.nan
    number: Any = value  # the isinstance check above guarantees float() accepts it
    try:
        return float(number)
    except OverflowError:  # an int too large for a float
        return math.inf if number > 0 else -math.inf


def _gather(features: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[tuple[Any, ...]]:
    """The values of ``names`` as columns (one tuple per name, None where a key is absent).

    ``itemgetter`` fetches a whole row in one C call, and ``zip(*rows)`` transposes in C: about ten
    times faster than one ``dict.get`` per value, which matters for 10,000-event windows. Events lacking
    a key fall back to ``get``.
    """
    if not names:
        return []
    if len(features) == 0:
        return [() for _ in names]
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    if len(names) == 1:
        only = names[0]

        def getter(event: Mapping[str, Any]) -> tuple[Any, ...]:
            return (event[only],)

    else:
        getter = itemgetter(*names)
    try:
        rows = list(map(getter, features))  # the common case: every event has every feature
    except KeyError:
        rows = []
        for event in features:
            try:
                rows.append(getter(event))
            except KeyError:
                rows.append(tuple(event.get(name) for name in names))
    return list(zip(*rows, strict=True))


def _numeric_column(column: Sequence[Any]) -> np.ndarray:
    """A column of raw values as float64, NaN where missing or not a number (str, objects)."""
    if set(map(type, column)) <= _PLAIN_NUMBER_TYPES:
        try:
            # numpy turns None into NaN and bools into 0/1 by itself.
            return np.array(column, dtype=np.float64)
        except OverflowError:
            pass
    # Slow path, for strings (numpy would silently parse "1.5"), numpy scalars and huge ints.
    return np.array([_to_float(v) for v in column], dtype=np.float64)


class FeatureSchema:
    """The numeric encoding of feature dicts, learned from reference events.

    Build it with :meth:`fit` (from reference feature dicts) or :meth:`from_state` (from a saved
    :meth:`state_dict`); the constructor takes the learned parameters directly.

    Parameters
    ----------
    numeric
        For each numeric feature, its reference ``(mean, std)``; ``std`` must be finite and positive.
    categorical
        For each categorical feature, its reference categories (distinct strings, kept in sorted order).

    Raises
    ------
    ValueError
        If a name is both numeric and categorical, or a statistic or category list is invalid.
    """

    def __init__(
        self,
        *,
        numeric: Mapping[str, tuple[float, float]] | None = None,
        categorical: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        numeric = dict(numeric or {})
        categorical = {name: list(cats) for name, cats in (categorical or {}).items()}
        both = sorted(set(numeric) & set(categorical))
        if both:
            raise ValueError(f"features {both} are declared both numeric and categorical")
        for name, (mean, std) in numeric.items():
            if not math.isfinite(mean) or not (math.isfinite(std) and std > 0):
                raise ValueError(
                    f"feature {name!r}: need a finite mean and a finite std > 0, got {mean}, {std}"
                )
        for name, cats in categorical.items():
            if not all(isinstance(c, str) for c in cats) or len(set(cats)) != len(cats):
                raise ValueError(f"feature {name!r}: categories must be distinct strings")
        self._names: tuple[str, ...] = tuple(sorted([*numeric, *categorical]))
        self._kinds: dict[str, FeatureKind] = {
            name: ("numeric" if name in numeric else "categorical") for name in self._names
        }
        self._numeric = {name: (float(m), float(s)) for name, (m, s) in numeric.items()}
        # For the fast path of ``validate``: the names whose values only need to be finite numbers.
        self._numeric_names = frozenset(numeric)
        self._categories = {name: sorted(cats) for name, cats in categorical.items()}
        self._category_index = {
            name: {cat: i for i, cat in enumerate(cats)} for name, cats in self._categories.items()
        }
        # Column offset of each feature's block, in name order.
        self._offsets: dict[str, int] = {}
        columns: list[str] = []
        for name in self._names:
            self._offsets[name] = len(columns)
            if self._kinds[name] == "numeric":
                columns += [name, f"{name}:missing"]
            else:
                columns += [f"{name}={cat}" for cat in self._categories[name]]
                columns += [f"{name}:other", f"{name}:missing"]
        self._columns = tuple(columns)

    # ------------------------------------------------------------------ learning

    @classmethod
    def fit(
        cls, features: Sequence[Mapping[str, FeatureValue]], *, max_categories: int = 50
    ) -> FeatureSchema:
        """Learn the schema from reference feature dicts.

        Parameters
        ----------
        features
            One dict per reference event. The schema covers the union of their keys.
        max_categories
            Most categories kept per categorical feature: the most frequent ones (ties broken by name);
            the rest are encoded in the feature's "other" column.

        Returns
        -------
        FeatureSchema
            The fitted schema.

        Raises
        ------
        ValueError
            If ``features`` is empty, ``max_categories < 1``, or a reference value has an unsupported
            type (anything but int, float, bool, str and None).
        """
        if isinstance(max_categories, bool) or not isinstance(max_categories, int) or max_categories < 1:
            raise ValueError(f"max_categories must be an int >= 1, got {max_categories!r}")
        if len(features) == 0:
            raise ValueError("cannot fit a feature schema on zero events")
        names = sorted({name for event in features for name in event})
        numeric: dict[str, tuple[float, float]] = {}
        categorical: dict[str, list[str]] = {}
        for name, column in zip(names, _gather(features, names), strict=True):
            types = set(map(type, column)) - {type(None)}
            for kind in types:
                if not issubclass(kind, (*_NUMBER_TYPES, str)):
                    value = next(v for v in column if type(v) is kind)
                    raise ValueError(
                        f"feature {name!r} has a value of unsupported type {kind.__name__} "
                        f"in the reference: {_short_repr(value)}"
                    )
            if any(issubclass(kind, str) for kind in types):
                # Numbers mixed into a categorical feature are not categories: they encode as "other".
                counts = Counter(v for v in column if isinstance(v, str))
                ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                categorical[name] = sorted(cat for cat, _ in ranked[:max_categories])
                continue
            values = _numeric_column(column)
            values = values[np.isfinite(values)]
            if values.size == 0:
                numeric[name] = (0.0, 1.0)  # always missing: the column only ever holds 0
                continue
            mean = float(values.mean())
            std = float(values.std())
            # A constant feature (or an overflowing one) keeps unit scale, so its column stays finite.
            numeric[name] = (
                mean if math.isfinite(mean) else 0.0,
                std if math.isfinite(std) and std > 0 else 1.0,
            )
        return cls(numeric=numeric, categorical=categorical)

    # ------------------------------------------------------------------ description

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names, sorted; the order of the encoded blocks."""
        return self._names

    @property
    def kinds(self) -> dict[str, FeatureKind]:
        """Each feature's kind, ``"numeric"`` or ``"categorical"``."""
        return dict(self._kinds)

    @property
    def dim(self) -> int:
        """Width of the encoded matrix."""
        return len(self._columns)

    @property
    def columns(self) -> tuple[str, ...]:
        """A readable name per encoded column (``amount``, ``amount:missing``, ``colour=red``, ...)."""
        return self._columns

    def categories(self, name: str) -> list[str]:
        """The reference categories of a categorical feature."""
        return list(self._categories[name])

    def numeric_stats(self, name: str) -> tuple[float, float]:
        """The reference ``(mean, std)`` of a numeric feature."""
        return self._numeric[name]

    # ------------------------------------------------------------------ applying

    def encode(self, features: Sequence[Mapping[str, FeatureValue]]) -> np.ndarray:
        """Encode feature dicts into a float32 matrix.

        Never fails on data: missing keys and None/NaN are "missing", unseen categories go to "other",
        keys outside the schema are ignored, and values of the wrong type are treated as missing
        (numeric feature) or "other" (categorical feature). Use :meth:`validate` to reject such events.

        Parameters
        ----------
        features
            One dict per event.

        Returns
        -------
        np.ndarray
            Shape ``(len(features), dim)``, dtype float32.
        """
        n = len(features)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        if self._encode_numeric_fast(features, out):
            return out
        rows = np.arange(n)
        for name, column in zip(self._names, _gather(features, self._names), strict=True):
            offset = self._offsets[name]
            if self._kinds[name] == "numeric":
                mean, std = self._numeric[name]
                values = _numeric_column(column)
                missing = ~np.isfinite(values)
                standardised = np.clip((values - mean) / std, -_CLIP, _CLIP)
                standardised[missing] = 0.0
                out[:, offset] = standardised
                out[:, offset + 1] = missing
                continue
            index = self._category_index[name]
            other, missing_code = len(index), len(index) + 1
            codes: np.ndarray | None = None
            if set(map(type, column)) <= {str, type(None)}:
                # Fast path: one C-level dict lookup per value, None mapped to the missing column.
                lookup: dict[str | None, int] = {None: missing_code}
                lookup.update(index)
                codes = np.fromiter(map(lookup.get, column, repeat(other)), dtype=np.intp, count=n)
            else:
                codes = np.fromiter(
                    (
                        index.get(v, other)
                        if isinstance(v, str)
                        else missing_code
                        if _is_missing(v)
                        else other
                        for v in column
                    ),
                    dtype=np.intp,
                    count=n,
                )
            out[rows, offset + codes] = 1.0
        return out

    def _encode_numeric_fast(self, features: Sequence[Mapping[str, FeatureValue]], out: np.ndarray) -> bool:
        """Fill ``out`` in one pass when every feature is numeric and present with a plain value.

        Most models log numbers only, and every VAE-based detector encodes each window again: building the
        whole matrix with one ``np.array`` over the rows instead of one per feature took 0.17-0.28 s instead
        of 0.31-0.41 s for 10,000 x 64 on the (loaded) benchmark machine, with the same values. False
        (``out`` untouched) when the schema has a categorical feature, an event lacks a key, or a value is
        not a plain number or None; the caller then takes the general path.
        """
        if len(self._numeric) != len(self._names) or not self._names:
            return False
        getter = itemgetter(*self._names)
        try:
            rows = list(map(getter, features))
        except KeyError:
            return False
        if len(self._names) == 1:
            rows = [(value,) for value in rows]
        if not set(map(type, chain.from_iterable(rows))) <= _PLAIN_NUMBER_TYPES:
            return False
        try:
            values = np.array(rows, dtype=np.float64)  # None becomes NaN, bools 0/1, as per feature
        except OverflowError:  # an int beyond the float range: the per-feature path maps it to inf
            return False
        means = np.array([self._numeric[name][0] for name in self._names])
        stds = np.array([self._numeric[name][1] for name in self._names])
        missing = ~np.isfinite(values)
        standardised = np.clip((values - means) / stds, -_CLIP, _CLIP)
        standardised[missing] = 0.0
        # A numeric-only layout alternates (value, missing indicator) per feature, in name order.
        out[:, 0::2] = standardised
        out[:, 1::2] = missing
        return True

    def validate(self, features: Mapping[str, FeatureValue]) -> str | None:
        """Check one event's features against the schema.

        Parameters
        ----------
        features
            The event's feature dict.

        Returns
        -------
        str or None
            None if the event fits (missing and null values always fit, bools fit numeric features,
            unseen categories fit categorical ones); otherwise the first problem, in words.
        """
        if self._fits_numeric_fast(features):
            return None
        for name, value in features.items():
            if not isinstance(name, str):
                return f"feature name {_short_repr(name)} is not a str"
            kind = self._kinds.get(name)
            if kind is None:
                return f"unknown feature {name!r} (not in the reference schema)"
            if _is_missing(value):
                continue
            if kind == "numeric":
                if not isinstance(value, _NUMBER_TYPES):
                    return (
                        f"feature {name!r} is numeric in the reference, "
                        f"got {type(value).__name__} {_short_repr(value)}"
                    )
                if not math.isfinite(_to_float(value)):
                    return f"feature {name!r} is not finite: {_short_repr(value)}"
            elif not isinstance(value, str):
                return (
                    f"feature {name!r} is categorical in the reference, "
                    f"got {type(value).__name__} {_short_repr(value)}"
                )
        return None

    def _fits_numeric_fast(self, features: Mapping[str, FeatureValue]) -> bool:
        """True if every feature is a known numeric one holding a finite plain number or None.

        The intake validates every event, so this is on the hot path: the check runs in C (a key-set
        comparison, a set of value types, one ``fsum``) instead of a Python loop over the features, about
        five times faster for 64 features. False means "not sure": the caller's per-feature loop then
        decides and words the problem. ``filter(None, ...)`` drops None and zeros, which cannot change
        whether the sum is finite; a NaN, an infinity, an int beyond the float range or an overflowing sum
        makes ``fsum`` return a non-finite value or raise, and sends the event to the loop.
        """
        values = features.values()
        if not (features.keys() <= self._numeric_names and set(map(type, values)) <= _PLAIN_NUMBER_TYPES):
            return False
        try:
            return math.isfinite(math.fsum(filter(None, values)))  # type: ignore[arg-type]
        except (OverflowError, ValueError):
            return False

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The schema as numpy arrays and JSON values (see :mod:`detectors.state`)."""
        numeric = [name for name in self._names if self._kinds[name] == "numeric"]
        return {
            "numeric": numeric,
            "mean": np.array([self._numeric[name][0] for name in numeric], dtype=np.float64),
            "std": np.array([self._numeric[name][1] for name in numeric], dtype=np.float64),
            "categorical": {
                name: list(self._categories[name]) for name in self._names if name not in numeric
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureSchema:
        """Rebuild a schema from :meth:`state_dict`.

        Raises
        ------
        ValueError
            If the state is malformed.
        """
        try:
            numeric = [str(name) for name in state["numeric"]]
            mean = np.asarray(state["mean"], dtype=np.float64)
            std = np.asarray(state["std"], dtype=np.float64)
            categorical = {str(name): list(cats) for name, cats in dict(state["categorical"]).items()}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed feature schema state: {error!r}") from error
        if mean.shape != (len(numeric),) or std.shape != (len(numeric),):
            raise ValueError(
                f"malformed feature schema state: {len(numeric)} numeric features but mean/std of shapes "
                f"{mean.shape}/{std.shape}"
            )
        return cls(
            numeric={name: (float(m), float(s)) for name, m, s in zip(numeric, mean, std, strict=True)},
            categorical=categorical,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureSchema):
            return NotImplemented
        return self._numeric == other._numeric and self._categories == other._categories

    def __hash__(self) -> int:
        # Consistent with __eq__, so that equal schemas share one encoding of a window (Batch.encoded).
        return hash(
            (
                tuple(sorted(self._numeric.items())),
                tuple((name, tuple(cats)) for name, cats in sorted(self._categories.items())),
            )
        )

    def __repr__(self) -> str:
        n_numeric = sum(kind == "numeric" for kind in self._kinds.values())
        return (
            f"FeatureSchema({n_numeric} numeric, {len(self._names) - n_numeric} categorical features, "
            f"dim={self.dim})"
        )
