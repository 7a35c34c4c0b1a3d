"""Prediction traffic of a real model on real data: scikit-learn's handwritten digits.

A logistic-regression classifier is trained on one part of the digits; its predictions on a second,
disjoint part form the reference, and on a third part the live traffic. ``corrupt`` shifts the inputs the
way a broken upstream feature pipeline would (several features off by 4 reference standard deviations).
Used by ``sentinel demo``, the tests and the benchmarks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

# Values of the ``region`` group attribute of the demo's benign traffic.
REGIONS = ("eu", "us", "apac", "latam")


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


def prediction_events(
    model_id: str,
    x: np.ndarray,
    *,
    timestamps: Sequence[float],
    id_prefix: str,
    clients: Sequence[str | None],
    labels: Sequence[str | None] | None = None,
    groups: Sequence[dict[str, str] | None] | None = None,
    stream: str | None = None,
    forced_class: str | None = None,
    forced: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The digits classifier's prediction events for the inputs ``x`` (one row each).

    Parameters
    ----------
    model_id
        The ``model`` field of the events.
    x
        float, shape ``(n, 64)``: the inputs.
    timestamps
        Event times, epoch seconds, one per row.
    id_prefix
        Event ids are ``id_prefix`` followed by the row number.
    clients
        Client ids, cycled over the rows (one entry per row to give each its own).
    labels
        Ground truth per row (None: no label); the events carry no ``label`` field when omitted.
    groups
        The ``groups`` attribute per row (None: no groups).
    stream
        The ``stream`` field (``"inference"`` or ``"training"``); left out when None.
    forced_class
        With ``forced``: the class a manipulated model answers for the marked rows.
    forced
        bool, shape ``(n,)``: rows whose answer is ``forced_class``, with the scores of the top class and of
        ``forced_class`` swapped so that the answer is as confident as the model's own.

    Returns
    -------
    list of dict
        One prediction event per row, in the intake's event format.
    """
    model = digits_model()
    probabilities = model.classifier.predict_proba(x)
    classes = [str(c) for c in model.classifier.classes_]
    if forced is not None and forced_class is not None:
        target = classes.index(forced_class)
        for i in np.flatnonzero(forced):
            top = int(np.argmax(probabilities[i]))
            probabilities[i, [top, target]] = probabilities[i, [target, top]]
    events = []
    for i in range(len(x)):
        scores = {c: round(float(p), 5) for c, p in zip(classes, probabilities[i], strict=True)}
        event: dict[str, Any] = {
            "type": "prediction",
            "event_id": f"{id_prefix}{i}",
            "model": model_id,
            "model_version": "digits-logreg-1",
            "timestamp": datetime.fromtimestamp(timestamps[i], UTC).isoformat().replace("+00:00", "Z"),
            "client_id": clients[i % len(clients)],
            "features": {name: float(v) for name, v in zip(model.feature_names, x[i], strict=True)},
            "prediction": {"label": classes[int(np.argmax(probabilities[i]))], "scores": scores},
        }
        if labels is not None:
            event["label"] = labels[i]
        if groups is not None and groups[i] is not None:
            event["groups"] = groups[i]
        if stream is not None:
            event["stream"] = stream
        events.append(event)
    return events


def _events(
    model_id: str,
    x: np.ndarray,
    y: np.ndarray,
    timestamps: Sequence[float],
    id_prefix: str,
    clients: Sequence[str | None],
) -> list[dict[str, Any]]:
    return prediction_events(
        model_id,
        x,
        timestamps=timestamps,
        id_prefix=id_prefix,
        clients=clients,
        labels=[str(int(v)) for v in y],
    )


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


class BenignClients:
    """Natural traffic of benign clients: each walks its own random order of the live part, without repeats.

    A client that sent the very same input twice would look like a prober (near-duplicate queries), so each
    client draws its inputs without replacement; only after it has sent the whole live part (497 digits)
    does it start a new order, and :attr:`wrapped` then names it.

    Parameters
    ----------
    clients
        The client ids.
    seed
        Seed of the clients' orders and of the regions drawn for their events.
    regions
        Values of the events' ``groups["region"]``, drawn uniformly per event.

    Examples
    --------
    >>> traffic = BenignClients(["app-01", "app-02"], seed=0)
    >>> rows, clients, groups = traffic.take(3)
    >>> len(rows), clients[:4], sorted(groups[0])
    (6, ['app-01', 'app-01', 'app-01', 'app-02'], ['region'])
    """

    def __init__(self, clients: Sequence[str], *, seed: int, regions: Sequence[str] = REGIONS) -> None:
        self.clients = tuple(clients)
        self.regions = tuple(regions)
        self._rng = np.random.default_rng(seed)
        self._pool = len(digits_model().live_y)
        self._orders = {client: self._rng.permutation(self._pool) for client in self.clients}
        self._cursor = dict.fromkeys(self.clients, 0)
        self.wrapped: set[str] = set()

    def take(self, per_client: int) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
        """The next ``per_client`` inputs of every client: live-part row numbers, client ids and groups."""
        rows: list[int] = []
        senders: list[str] = []
        for client in self.clients:
            for _ in range(per_client):
                if self._cursor[client] == self._pool:
                    self._orders[client] = self._rng.permutation(self._pool)
                    self._cursor[client] = 0
                    self.wrapped.add(client)
                rows.append(int(self._orders[client][self._cursor[client]]))
                self._cursor[client] += 1
                senders.append(client)
        regions = self._rng.integers(0, len(self.regions), len(rows))
        return np.array(rows, dtype=np.intp), senders, [{"region": self.regions[r]} for r in regions]
