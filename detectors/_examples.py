"""Toy batches for the detectors' docstring examples (private: not part of the public interface).

Each function builds one batch from its own ``seed``, so that an example reads as "fit on a reference,
evaluate a clean window, evaluate a shifted one" without a page of set-up. The data are small and made up on
purpose: the examples show how a detector is called and what it reports; the benchmarks measure how well
it detects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors.base import Batch, Detector

__all__ = ["TINY_VAE", "classes", "flagged", "gaussian", "joined", "mislabelled", "statuses"]

TINY_VAE: dict[str, Any] = {"hidden_dim": 8, "latent_dim": 2, "max_epochs": 20}
"""Parameters of a VAE small enough to train in a doctest (for the detectors that hold one inside)."""


def _event_ids(n: int) -> list[str]:
    return [f"e{i}" for i in range(n)]


def gaussian(
    n: int,
    *,
    seed: int,
    dim: int = 4,
    loc: float | Sequence[float] = 0.0,
    scale: float | Sequence[float] = 1.0,
    clients: int | str = 0,
    confidence: float | None = None,
) -> Batch:
    """``n`` events with normal features ``x0``, ``x1``, ... and the model's answers to them.

    Parameters
    ----------
    n
        Events.
    seed
        Seed of the features and confidences.
    dim
        Features per event.
    loc, scale
        Mean and standard deviation of the features: one for all, or one per feature.
    clients
        Who sends the events: a count ``k`` gives clients ``c0`` ... ``c{k-1}`` in turn, a string one client
        for every event, 0 no client ids.
    confidence
        The score of every predicted class; None draws each uniformly from [0.5, 1).

    Returns
    -------
    Batch
        Features, event times 0, 1, ... (seconds), client ids as asked, and predictions: class ``"a"`` when
        ``x0 > 0``, else ``"b"``, with scores for both classes.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, scale, size=(n, dim))
    top = rng.uniform(0.5, 1.0, n) if confidence is None else np.full(n, confidence)
    predictions: list[dict[str, Any]] = []
    for row, score in zip(x, top, strict=True):
        label, other = ("a", "b") if row[0] > 0 else ("b", "a")
        predictions.append({"label": label, "scores": {label: float(score), other: 1.0 - float(score)}})
    client_ids: list[str | None]
    if isinstance(clients, str):
        client_ids = [clients] * n
    else:
        client_ids = [f"c{i % clients}" for i in range(n)] if clients else []
    return Batch(
        event_ids=_event_ids(n),
        features=[{f"x{j}": float(v) for j, v in enumerate(row)} for row in x],
        predictions=predictions,
        client_ids=client_ids,
        timestamps=[float(i) for i in range(n)],
    )


def classes(
    n: int,
    *,
    seed: int,
    share_of_a: float = 0.5,
    accuracy: float = 1.0,
    north_share_of_a: float | None = None,
) -> Batch:
    """``n`` labelled and predicted events of two classes, ``"a"`` and ``"b"``, in two regions (no features).

    Parameters
    ----------
    n
        Events.
    seed
        Seed of the regions, labels and errors.
    share_of_a
        Probability that an event's true label is ``"a"``.
    accuracy
        Probability that the predicted class is the true label.
    north_share_of_a
        ``share_of_a`` in the ``region=north`` group (half the events); None: the same as elsewhere.

    Returns
    -------
    Batch
        ``labels``, ``predictions`` (a class each) and ``groups`` (``{"region": "north"}`` or ``"south"``).
    """
    rng = np.random.default_rng(seed)
    north = rng.random(n) < 0.5
    share = np.where(north, share_of_a if north_share_of_a is None else north_share_of_a, share_of_a)
    truth = np.where(rng.random(n) < share, "a", "b")
    right = rng.random(n) < accuracy
    predicted = np.where(right, truth, np.where(truth == "a", "b", "a"))
    return Batch(
        event_ids=_event_ids(n),
        features=[],
        labels=[str(label) for label in truth],
        predictions=[{"label": str(label)} for label in predicted],
        groups=[{"region": "north" if in_north else "south"} for in_north in north],
    )


def mislabelled(n: int, *, seed: int, flipped: float = 0.0) -> Batch:
    """``n`` labelled events of two well separated classes, a share ``flipped`` of them given the other label.

    The features ``x0`` and ``x1`` are normal around (3, 3) for class ``"a"`` and (-3, -3) for ``"b"``.
    """
    rng = np.random.default_rng(seed)
    truth = rng.choice(["a", "b"], n)
    x = rng.normal(size=(n, 2)) + np.where(truth == "a", 3.0, -3.0)[:, None]
    flip = rng.random(n) < flipped
    labels = np.where(flip, np.where(truth == "a", "b", "a"), truth)
    return Batch(
        event_ids=_event_ids(n),
        features=[{"x0": float(u), "x1": float(v)} for u, v in x],
        labels=[str(label) for label in labels],
    )


def joined(*batches: Batch) -> Batch:
    """The events of ``batches`` in one window, in order, renumbered: event ids ``e0``, ... and event times
    0, 1, ... (e.g. an attacker's events followed by the benign traffic of the same window)."""
    n = sum(len(batch) for batch in batches)
    return Batch(
        event_ids=_event_ids(n),
        features=[f for batch in batches for f in batch.features],
        predictions=[p for batch in batches for p in batch.predictions],
        client_ids=[c for batch in batches for c in batch.client_ids],
        timestamps=[float(i) for i in range(n)],
    )


def statuses(detector: Detector[Any], *windows: Batch) -> tuple[str, ...]:
    """The detector's status (``"ok"``, ``"alert"`` or ``"skipped"``) on each window, in order."""
    return tuple(detector.evaluate(window).status.value for window in windows)


def flagged(detector: Detector[Any], *windows: Batch) -> tuple[tuple[str, list[str]], ...]:
    """The detector's status on each window, in order, with the subjects it flags there
    (``evidence["subjects"]``; [] when it flags none)."""
    results = [detector.evaluate(window) for window in windows]
    return tuple((result.status.value, list(result.evidence.get("subjects", []))) for result in results)
