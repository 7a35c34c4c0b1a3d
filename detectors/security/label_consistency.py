"""Label flipping: labelled events whose label their nearest reference neighbours contradict.

An attacker who can write labels into the data that feeds retraining (``stream == "training"``) or into the
feedback of live traffic flips some of them. A flipped label sits among reference events of another class:
almost none of its ``k`` nearest reference neighbours share it. Clean labels are contradicted too where
classes overlap, but mostly narrowly (four of ten neighbours agree, six do not); a flipped label is
contradicted outright. So an event counts as *contradicted* when at most ``max_agreeing`` of its ``k``
neighbours share its label, which keeps most flips and drops most honest borderline labels (with
``max_agreeing`` ``None``, an event counts when the plurality of its neighbours votes for another label, the
classic k-NN disagreement). The decision compares the window's contradicted share with the reference's own:

1. ``fit`` encodes the reference (standardised features through :class:`~detectors.encoding.FeatureSchema`,
   or the logged embeddings, standardised per dimension, when every labelled reference event has one of
   the same length), keeps at most ``max_reference`` labelled events (seeded subsample) and looks up each
   one's ``k`` nearest *other* reference events (leave-one-out): ``c`` of the ``m`` reference labels are
   contradicted. A window event and its reference neighbours are in the same position as a reference event
   and the other ``m - 1``, so ``c / m`` estimates the clean window's rate without bias: on 500 fresh
   breast_cancer splits the plurality rule's reference share averaged 4.8 %, its clean windows' 4.7 %.
   (Cross-fitting, K folds each judged by the other folds, judges with fewer neighbours and overstates the
   rate, 6.1 % with K = 2 and 5.1 % with K = 5: more conservative, less powerful.)
2. ``evaluate`` looks up every labelled window event's ``k`` nearest *reference* events (never the window's
   own events, which an attacker controls), separately per ``stream``.
3. Per stream, ``d`` contradicted events among ``n`` labelled events are tested one-sided against the
   reference's rate. The reference rate is an estimate from ``m`` events, so ``d`` is compared with the
   beta-binomial predictive ``BetaBinomial(n, c + 1, m - c + 1)`` rather than with a binomial at ``c / m``
   (which treats the estimate as exact and raises false alarms for small references; see
   :mod:`detectors.anomaly.vae`).
   The streams' p-values are Holm-corrected.

Subjects are the flagged streams, ``"stream=training"`` or ``"stream=inference"``: the alert of a poisoned
training feed keeps one fingerprint while the attack lasts, whatever classes the attacker flips from window to
window. The class pairs an investigator needs (given label -> neighbours' label, with counts and the count the
reference rate of that pair predicts) and the contradicted event ids are in each finding.

The module stays above 500 lines because the neighbour search (:func:`_k_smallest`, a partial sort that
replaced the costliest step of large windows), the vote and the per-pair evidence serve this detector alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self

import numpy as np

from detectors._checks import check_choice, check_float, check_int
from detectors.base import Batch, DetectionResult, Detector, Threat, as_float_array
from detectors.drift._stats import plain
from detectors.encoding import FeatureSchema
from detectors.security._poisoning import beta_binomial_sf, bounded_ids, holm
from detectors.state import HYPERPARAMETER, DetectorState, Float64Array, Int64Array

__all__ = ["LabelConsistencyDetector", "LabelConsistencyState"]

_SPACES = ("auto", "features", "embedding")

# Default stream of an event whose stream is not logged: live traffic.
_DEFAULT_STREAM = "inference"

# Window events are compared with the reference in chunks, bounding the (chunk, n_reference) distance matrix.
_CHUNK = 2048

# Separates the given label and the neighbours' label in the keys of the stored pair counts.
_PAIR_SEPARATOR = "->"

# Class pairs reported per finding.
_TOP_PAIRS = 10


def _neighbour_codes(
    points: np.ndarray, reference: np.ndarray, reference_codes: np.ndarray, k: int, *, leave_one_out: bool
) -> np.ndarray:
    """The label codes of each point's ``k`` nearest reference points, nearest first: ``(n_points, k)``.

    Ties in distance go to the lower reference index (``argsort`` is stable), so the result is
    deterministic. With ``leave_one_out``, ``points`` is ``reference`` itself and each point's own row is
    excluded.
    """
    codes = np.empty((points.shape[0], k), dtype=np.int64)
    squared_reference = np.einsum("ij,ij->i", reference, reference)
    for start in range(0, points.shape[0], _CHUNK):
        chunk = points[start : start + _CHUNK]
        distances = (
            np.einsum("ij,ij->i", chunk, chunk)[:, None]
            + squared_reference[None, :]
            - 2.0 * chunk @ reference.T
        )
        if leave_one_out:
            rows = np.arange(chunk.shape[0])
            distances[rows, start + rows] = np.inf
        codes[start : start + chunk.shape[0]] = reference_codes[_k_smallest(distances, k)]
    return codes


def _k_smallest(distances: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the ``k`` smallest values, smallest first, ties to the lower index: exactly
    ``np.argsort(distances, axis=1, kind="stable")[:, :k]``, without sorting whole rows.

    A full sort of every row was the largest cost of a 10,000-event window (bench/perf_detectors.py). Here
    ``argpartition`` finds each row's k-th value; the row's values up to it are taken in index order and
    sorted stably, which is the stable sort's answer whenever exactly k values are that small. Rows with a tie
    at the k-th value (more than k) take the full stable sort.
    """
    n_rows, n_columns = distances.shape
    if k >= n_columns:
        return np.argsort(distances, axis=1, kind="stable")[:, :k]
    kth = np.partition(distances, k - 1, axis=1)[:, k - 1]
    within = distances <= kth[:, None]
    exact = within.sum(axis=1) == k
    nearest = np.empty((n_rows, k), dtype=np.int64)
    if exact.any():
        columns = np.nonzero(within[exact])[1].reshape(-1, k)  # in index order within each row
        order = np.argsort(np.take_along_axis(distances[exact], columns, axis=1), axis=1, kind="stable")
        nearest[exact] = np.take_along_axis(columns, order, axis=1)
    if not exact.all():
        nearest[~exact] = np.argsort(distances[~exact], axis=1, kind="stable")[:, :k]
    return nearest


def _plurality(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """The plurality label of each row of neighbour codes (nearest first).

    Ties between labels go to the tied label whose nearest member is closest, so the vote is deterministic.
    """
    n = codes.shape[0]
    counts = np.zeros((n, max(n_classes, 1)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), codes.shape[1]), codes.ravel()), 1)
    tied = counts == counts.max(axis=1, keepdims=True)
    # Among tied labels, the one met first in the nearest-first neighbour list.
    first_tied = np.argmax(tied[np.arange(n)[:, None], codes], axis=1)
    return codes[np.arange(n), first_tied]


@dataclass
class LabelConsistencyState(DetectorState):
    """The reference neighbours (encoded), their labels, and the reference's own contradicted counts."""

    version: ClassVar[int] = 2
    space: str  # the resolved space: "features" or "embedding"
    k: Annotated[int, HYPERPARAMETER]
    max_agreeing: Annotated[int | None, HYPERPARAMETER]
    schema: dict[str, Any] | None  # FeatureSchema.state_dict() in the features space
    mean: Float64Array  # embedding standardisation (empty in the features space)
    std: Float64Array
    points: Float64Array
    classes: list[str]
    codes: Int64Array
    disagreements: int
    pair_counts: dict[str, int]  # "given->voted" -> contradicted reference labels


class LabelConsistencyDetector(
    Detector[LabelConsistencyState], id="label_consistency", threat=Threat.INTEGRITY
):
    """Flags streams whose labels disagree with their nearest reference neighbours more than the reference's.

    Parameters
    ----------
    alpha
        False-alarm rate per clean window, in (0, 0.5).
    k
        Neighbours looked up per event (>= 1).
    max_agreeing
        An event is contradicted when at most this many of its ``k`` neighbours share its label, in
        ``[0, k - 1]``; ``None``: when the plurality of its neighbours votes for another label.
    min_labelled
        A stream with fewer labelled events in a window is not tested (>= 1); ``fit`` needs ``k + 1``
        labelled reference events at least.
    max_reference
        Labelled reference events kept as neighbours, a seeded subsample beyond that (>= 2).
    space
        ``"auto"`` (embeddings when every labelled reference event has one, else features), ``"features"``
        or ``"embedding"``.
    seed
        Seed of the reference subsample (>= 0).

    Notes
    -----
    ``statistic`` is the contradicted share of the most significant stream, ``threshold`` the share at which
    that stream would alert (None if none), ``p_value`` its Holm-adjusted p-value. ``evidence``:
    ``reference_share`` (``c / m``), ``n_reference``, ``space``, ``k``, ``max_agreeing``, ``streams`` (per
    tested stream: labelled events, ``disagreements`` (contradicted events), share, p-value), ``subjects``
    (flagged streams, most significant first) and ``findings`` (per flagged stream: ``subject``,
    ``statistic`` (share), ``p_value``, ``threshold``, ``reference_value`` (reference share),
    ``n_labelled``, ``disagreements`` (contradicted events), ``expected`` (count the reference share
    predicts), ``pairs`` (given -> plurality label, ``count`` and ``expected``, largest excess first) and
    ``event_ids`` (up to 20 contradicted events, those whose pair has the largest excess first)).

    Examples
    --------
    >>> from detectors._examples import flagged, mislabelled
    >>> detector = LabelConsistencyDetector().fit(mislabelled(400, seed=0))
    >>> flagged(detector, mislabelled(200, seed=1), mislabelled(200, seed=2, flipped=0.1))  # 10% flipped
    (('ok', []), ('alert', ['stream=inference']))
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        k: int = 10,
        max_agreeing: int | None = 1,
        min_labelled: int = 30,
        max_reference: int = 2000,
        space: str = "auto",
        seed: int = 0,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.k = check_int("k", k, 1)
        if max_agreeing is not None:
            if isinstance(max_agreeing, bool) or not isinstance(max_agreeing, int):
                raise TypeError(f"max_agreeing must be an int or None, got {type(max_agreeing).__name__}")
            if not 0 <= max_agreeing <= self.k - 1:
                raise ValueError(
                    f"max_agreeing must be in [0, k - 1] = [0, {self.k - 1}], got {max_agreeing}"
                )
        self.max_agreeing = max_agreeing
        self.min_labelled = check_int("min_labelled", min_labelled, 1)
        self.max_reference = check_int("max_reference", max_reference, 2)
        self.space = check_choice("space", space, _SPACES)
        self.seed = check_int("seed", seed, 0)

        self._space: str | None = None  # the resolved space
        self._schema: FeatureSchema | None = None
        self._mean = np.empty(0, dtype=np.float64)  # embedding standardisation
        self._std = np.empty(0, dtype=np.float64)
        self._points = np.empty((0, 0), dtype=np.float64)  # the reference neighbours
        self._classes: tuple[str, ...] = ()
        self._codes = np.empty(0, dtype=np.int64)  # class index of each reference neighbour
        self._disagreements = 0  # c: leave-one-out contradicted labels among the neighbours
        self._pair_counts: dict[str, int] = {}  # "given->voted" -> count of contradicted, leave-one-out

    # ------------------------------------------------------------------ parameters

    @property
    def fitted(self) -> bool:
        return self._space is not None

    @property
    def reference_share(self) -> float:
        """The leave-one-out contradicted share of the reference labels."""
        self._require_fitted()
        return self._disagreements / self._codes.size

    @property
    def resolved_space(self) -> str:
        """``"features"`` or ``"embedding"``, as decided at ``fit``."""
        self._require_fitted()
        return str(self._space)

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Keep the labelled reference events as neighbours and measure their own contradicted rate, from
        the reference's ``labels`` and ``features`` (or ``embeddings``). A ValueError if the reference has
        fewer than ``k + 1`` labelled events, or ``space="embedding"`` and a labelled reference event has no
        embedding (or embeddings of different lengths)."""
        labelled = [i for i, label in enumerate(reference.labels) if label is not None]
        if len(labelled) < self.k + 1:
            raise ValueError(
                f"{self.id}: the reference has {len(labelled)} labelled events, at least "
                f"k + 1 = {self.k + 1} are needed"
            )
        if len(labelled) > self.max_reference:
            rng = np.random.default_rng(self.seed)
            labelled = sorted(int(i) for i in rng.choice(labelled, self.max_reference, replace=False))
        embeddings_usable = _all_embeddings(reference, labelled)
        if self.space == "embedding" and not embeddings_usable:
            raise ValueError(
                f"{self.id}: space='embedding' but some labelled reference events have no embedding "
                "(or embeddings of different lengths)"
            )
        space = (
            "embedding"
            if self.space == "embedding" or (self.space == "auto" and embeddings_usable)
            else "features"
        )
        self._schema = None
        if space == "embedding":
            raw = as_float_array([reference.embeddings[i] for i in labelled])  # type: ignore[misc]
            self._mean = raw.mean(axis=0)
            std = raw.std(axis=0)
            # A constant dimension carries no distance information; dividing by 1 keeps it harmlessly zero.
            self._std = np.where(std > 0, std, 1.0)
            points = (raw - self._mean) / self._std
        else:
            if len(reference.features) != len(reference):
                raise ValueError(f"{self.id}: the reference has no features")
            features = [reference.features[i] for i in labelled]
            self._schema = FeatureSchema.fit(features)
            points = self._schema.encode(features).astype(np.float64)
            self._mean = np.empty(0, dtype=np.float64)
            self._std = np.empty(0, dtype=np.float64)
        labels = [str(reference.labels[i]) for i in labelled]
        self._classes = tuple(sorted(set(labels)))
        index = {cls: j for j, cls in enumerate(self._classes)}
        self._codes = np.array([index[label] for label in labels], dtype=np.int64)
        self._points = points
        neighbours = _neighbour_codes(points, points, self._codes, self.k, leave_one_out=True)
        votes = _plurality(neighbours, len(self._classes))
        wrong = np.flatnonzero(self._contradicted(neighbours, votes, self._codes))
        self._disagreements = int(wrong.size)
        pairs = Counter(
            f"{self._classes[self._codes[i]]}{_PAIR_SEPARATOR}{self._classes[votes[i]]}" for i in wrong
        )
        self._pair_counts = dict(sorted(pairs.items()))
        self._space = space
        return self

    def _contradicted(self, neighbours: np.ndarray, votes: np.ndarray, given: np.ndarray) -> np.ndarray:
        """Whether each event's label (code ``given``, -1 if unseen in the reference) is contradicted."""
        if self.max_agreeing is None:
            return np.asarray(votes != given)
        return np.asarray((neighbours == given[:, None]).sum(axis=1) <= self.max_agreeing)

    # ------------------------------------------------------------------ testing a window

    def _encode(self, window: Batch, rows: Sequence[int]) -> np.ndarray | None:
        """The window's labelled events in the neighbours' space; None if the space's input is missing."""
        if self._space == "embedding":
            if not _all_embeddings(window, rows):
                return None
            raw = as_float_array([window.embeddings[i] for i in rows])  # type: ignore[misc]
            if raw.shape[1] != self._mean.size:
                return None
            return (raw - self._mean) / self._std
        if self._schema is None or len(window.features) != len(window):
            return None
        return window.encoded(self._schema)[np.asarray(rows, dtype=np.intp)].astype(np.float64)

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test, per stream, whether the window's labels disagree with their neighbours too often;
        ``labels``, ``streams``, ``event_ids`` and ``features`` (or ``embeddings``) are used."""
        space = self.resolved_space
        n = len(window)
        labelled = [i for i, label in enumerate(window.labels) if label is not None]
        if len(labelled) < self.min_labelled:
            return self.skipped(n, f"too few labelled events: {len(labelled)} < {self.min_labelled}")
        points = self._encode(window, labelled)
        if points is None:
            what = "an embedding of the reference's length" if space == "embedding" else "features"
            return self.skipped(n, f"some labelled events lack {what}, which the neighbour vote needs")
        neighbours = _neighbour_codes(points, self._points, self._codes, self.k, leave_one_out=False)
        votes = _plurality(neighbours, len(self._classes))
        index = {cls: j for j, cls in enumerate(self._classes)}
        given = [str(window.labels[i]) for i in labelled]
        # A label unseen in the reference (code -1) is shared by no neighbour: it is always contradicted.
        given_codes = np.array([index.get(label, -1) for label in given], dtype=np.int64)
        disagree = self._contradicted(neighbours, votes, given_codes)

        by_stream: dict[str, list[int]] = {}
        for position, row in enumerate(labelled):
            stream = str(window.streams[row]) if len(window.streams) == n else _DEFAULT_STREAM
            by_stream.setdefault(stream, []).append(position)
        tested = {
            stream: rows for stream, rows in sorted(by_stream.items()) if len(rows) >= self.min_labelled
        }
        if not tested:
            found = ", ".join(f"{stream}: {len(rows)}" for stream, rows in sorted(by_stream.items()))
            return self.skipped(
                n, f"no stream has min_labelled={self.min_labelled} labelled events ({found})"
            )

        m = self._codes.size
        c = self._disagreements
        streams = list(tested)
        counts = [int(disagree[tested[s]].sum()) for s in streams]
        sizes = [len(tested[s]) for s in streams]
        raw_p = [beta_binomial_sf(d, size, c, m) for d, size in zip(counts, sizes, strict=True)]
        adjusted = holm(raw_p)
        order = sorted(range(len(streams)), key=lambda j: (adjusted[j], raw_p[j], streams[j]))
        flagged = [j for j in order if adjusted[j] <= self.alpha]
        best = order[0]
        # Holm's first step is Bonferroni: the most significant stream alerts iff raw p <= alpha / #streams.
        critical = _critical_count(sizes[best], c, m, self.alpha / len(streams))

        findings = []
        for j in flagged:
            positions = tested[streams[j]]
            findings.append(
                self._finding(
                    f"stream={streams[j]}",
                    window,
                    [labelled[p] for p in positions],
                    [given[p] for p in positions],
                    votes[positions],
                    disagree[positions],
                    float(adjusted[j]),
                    _critical_count(sizes[j], c, m, self.alpha / len(streams)),
                )
            )
        reference_share = c / m
        return self.result(
            n,
            alert=bool(flagged),
            statistic=counts[best] / sizes[best],
            threshold=None if critical is None else critical / sizes[best],
            p_value=float(adjusted[best]),
            evidence={
                "reference_share": plain(reference_share),
                "n_reference": m,
                "space": space,
                "k": self.k,
                "max_agreeing": self.max_agreeing,
                "streams": {
                    streams[j]: {
                        "n_labelled": sizes[j],
                        "disagreements": counts[j],
                        "share": plain(counts[j] / sizes[j]),
                        "p_value": plain(adjusted[j]),
                    }
                    for j in order
                },
                "subjects": [finding["subject"] for finding in findings],
                "findings": findings,
            },
        )

    def _finding(
        self,
        subject: str,
        window: Batch,
        rows: Sequence[int],
        given: Sequence[str],
        votes: np.ndarray,
        disagree: np.ndarray,
        p_value: float,
        critical: int | None,
    ) -> dict[str, Any]:
        """The evidence of one flagged stream: its share, the class pairs involved and the suspicious ids."""
        m = self._codes.size
        n_labelled = len(rows)
        wrong = np.flatnonzero(disagree)
        pairs: dict[str, list[int]] = {}
        for i in wrong:
            pairs.setdefault(f"{given[i]}{_PAIR_SEPARATOR}{self._classes[votes[i]]}", []).append(int(i))
        expected = {pair: n_labelled * self._pair_counts.get(pair, 0) / m for pair in pairs}
        ranked = sorted(pairs, key=lambda pair: (-(len(pairs[pair]) - expected[pair]), pair))
        suspicious = [rows[i] for pair in ranked for i in pairs[pair]]
        return {
            "subject": subject,
            "statistic": plain(wrong.size / n_labelled),
            "p_value": plain(p_value),
            "threshold": None if critical is None else plain(critical / n_labelled),
            "reference_value": plain(self._disagreements / m),
            "n_labelled": n_labelled,
            "disagreements": int(wrong.size),
            "expected": plain(n_labelled * self._disagreements / m),
            "pairs": [
                {"pair": pair, "count": len(pairs[pair]), "expected": plain(expected[pair])}
                for pair in ranked[:_TOP_PAIRS]
            ],
            "event_ids": bounded_ids(window.event_ids, suspicious),
        }

    # ------------------------------------------------------------------ state

    def _save_state(self) -> LabelConsistencyState:
        return LabelConsistencyState(
            space=self.resolved_space,
            k=self.k,
            max_agreeing=self.max_agreeing,
            schema=None if self._schema is None else self._schema.state_dict(),
            mean=self._mean,
            std=self._std,
            points=self._points,
            classes=list(self._classes),
            codes=self._codes,
            disagreements=self._disagreements,
            pair_counts=dict(self._pair_counts),
        )

    def _load_state(self, state: LabelConsistencyState) -> None:
        space, points, codes = state.space, state.points, state.codes
        if space not in ("features", "embedding") or (self.space != "auto" and space != self.space):
            raise ValueError(
                f"{self.id}: the state is for space {space!r}, this detector has space={self.space!r}"
            )
        schema = None if state.schema is None else FeatureSchema.from_state(state.schema)
        if (
            points.ndim != 2
            or codes.shape != (points.shape[0],)
            or codes.size <= self.k
            or (codes.size and not 0 <= codes.min() <= codes.max() < len(state.classes))
            or not 0 <= state.disagreements <= codes.size
            or (space == "features") != (schema is not None)
            or (space == "embedding" and not (state.mean.shape == state.std.shape == (points.shape[1],)))
        ):
            raise self._malformed("inconsistent neighbours, labels or encoding")
        self._space = space
        self._schema = schema
        self._mean = state.mean
        self._std = state.std
        self._points = points
        self._classes = tuple(state.classes)
        self._codes = codes
        self._disagreements = state.disagreements
        self._pair_counts = state.pair_counts


def _all_embeddings(batch: Batch, rows: Sequence[int]) -> bool:
    """Whether every event at ``rows`` has a non-empty embedding, all of one length."""
    if len(batch.embeddings) != len(batch) or not rows:
        return False
    lengths = set()
    for i in rows:
        embedding = batch.embeddings[i]
        if embedding is None or len(embedding) == 0:
            return False
        lengths.add(len(embedding))
    return len(lengths) == 1


def _critical_count(n: int, successes: int, trials: int, level: float) -> int | None:
    """Smallest disagreement count among ``n`` whose beta-binomial tail is ``<= level`` (None: none is)."""
    if beta_binomial_sf(n, n, successes, trials) > level:
        return None
    low, high = 0, n  # sf(high) <= level; the tail decreases with the count
    while high - low > 1:
        middle = (low + high) // 2
        if beta_binomial_sf(middle, n, successes, trials) <= level:
            high = middle
        else:
            low = middle
    return high if beta_binomial_sf(low, n, successes, trials) > level else low
