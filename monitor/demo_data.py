"""Prediction traffic of a real model on real data: scikit-learn's handwritten digits.

A logistic-regression classifier is trained on one part of the digits; its predictions on a second,
disjoint part form the reference, and on a third part the live traffic. ``corrupt`` shifts the inputs the
way a broken upstream feature pipeline would (several features off by 4 reference standard deviations).
Used by ``sentinel demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DigitsModel:
    classifier: Any
    reference_x: np.ndarray
    reference_y: np.ndarray
    live_x: np.ndarray
    live_y: np.ndarray
    feature_names: tuple[str, ...]
    shift_features: tuple[int, ...]  # the features that ``corrupt`` moves: the 8 most variable ones
    feature_std: np.ndarray


@functools.lru_cache(maxsize=1)
def digits_model(seed: int = 0) -> DigitsModel:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    train, reference, live = order[:500], order[500:1300], order[1300:]
    classifier = LogisticRegression(max_iter=3000).fit(data.data[train], data.target[train])
    std = data.data[reference].std(axis=0)
    shift = tuple(int(i) for i in np.argsort(-std)[:8])
    return DigitsModel(
        classifier=classifier,
        reference_x=data.data[reference],
        reference_y=data.target[reference],
        live_x=data.data[live],
        live_y=data.target[live],
        feature_names=tuple(f"px{i}" for i in range(data.data.shape[1])),
        shift_features=shift,
        feature_std=std,
    )


def _events(
    model_id: str,
    x: np.ndarray,
    y: np.ndarray,
    timestamps: Sequence[float],
    id_prefix: str,
    clients: Sequence[str | None],
) -> list[dict[str, Any]]:
    model = digits_model()
    probabilities = model.classifier.predict_proba(x)
    classes = [str(c) for c in model.classifier.classes_]
    events = []
    for i in range(len(x)):
        scores = {c: round(float(p), 5) for c, p in zip(classes, probabilities[i], strict=True)}
        events.append(
            {
                "type": "prediction",
                "event_id": f"{id_prefix}{i}",
                "model": model_id,
                "model_version": "digits-logreg-1",
                "timestamp": datetime.fromtimestamp(timestamps[i], UTC).isoformat().replace("+00:00", "Z"),
                "client_id": clients[i % len(clients)],
                "features": {name: float(v) for name, v in zip(model.feature_names, x[i], strict=True)},
                "prediction": {"label": classes[int(np.argmax(probabilities[i]))], "scores": scores},
                "label": str(int(y[i])),
            }
        )
    return events


def reference_events(model_id: str, *, start: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    """The reference part as events (one per second from ``start``)."""
    model = digits_model()
    n = len(model.reference_y)
    return _events(
        model_id,
        model.reference_x,
        model.reference_y,
        [start + i for i in range(n)],
        f"{model_id}-ref-",
        ["reference"],
    )


def live_events(
    model_id: str,
    n: int,
    *,
    start: float,
    spacing: float,
    id_prefix: str,
    corrupt: bool = False,
    seed: int = 0,
    clients: Sequence[str | None] = ("client-a", "client-b", "client-c"),
) -> list[dict[str, Any]]:
    """``n`` live events drawn (with replacement) from the live part, ``spacing`` seconds apart."""
    model = digits_model()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(model.live_y), size=n)
    x = model.live_x[rows].copy()
    if corrupt:
        columns = list(model.shift_features)
        x[:, columns] += 4.0 * model.feature_std[columns]
    return _events(
        model_id, x, model.live_y[rows], [start + i * spacing for i in range(n)], id_prefix, clients
    )


def iter_jsonl(events: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    import json

    for event in events:
        yield json.dumps(event, separators=(",", ":")).encode("utf-8")
