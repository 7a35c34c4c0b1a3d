"""Targeted manipulation: the outcomes of one segment (a ``groups`` value) or one entity (a client) shift.

A poisoned model, or an attacker steering inputs, can change what the model answers for one population only:
loans of one region all refused, one tenant's transactions all passed. The window's overall output mix
barely moves when the segment is small, so every segment is tested on its own:

* subjects are every ``key=value`` of the events' ``groups`` and every client id, with at least
  ``min_events`` events that carry a predicted class in the window;
* per subject, the window's rate of each predicted class is compared with the reference rate by the
  two-sided two-proportion test (Fisher's exact test where counts are small,
  :func:`detectors.drift._stats.proportion_test`), which accounts for the reference's sample size. Where
  the subject has at least ``min_labelled`` labelled events, its error rate is also tested, one-sided, by
  Fisher's exact test (:func:`detectors.drift._stats.excess_test`);
* the reference of a subject is its own reference events when it has at least ``min_events`` of them,
  else the whole reference (a client or a segment not seen before is compared with the population);
* all tests of the window form one family, Holm-corrected: a clean window alerts with probability at most
  ``alpha`` however many subjects it holds.

Attribution. A forced segment also moves the outcomes of every client that sends events of that segment,
and a forced client moves every segment its events belong to. So flagged subjects are re-examined in order
of significance: each is tested again on its events that no more significant flagged subject covers
(Bonferroni at the family's size, conservative) and is reported only if it is still significant; the others
are listed in ``evidence["explained"]`` with the subject that explains them.

The module stays above 500 lines because the attribution pass (a flagged subject re-tested on the events
no more significant subject explains) and the per-subject counts are specific to this detector.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

import numpy as np

from detectors._checks import check_float, check_int
from detectors.base import Batch, DetectionResult, Detector, Threat
from detectors.drift._stats import excess_test, plain, predicted_class, proportion_test
from detectors.security._poisoning import bounded_ids, holm
from detectors.state import HYPERPARAMETER, DetectorState, Int64Array

__all__ = ["GroupOutcomeDetector", "GroupOutcomeState"]

_OTHER = "other"  # classes beyond max_classes, and classes unseen in the reference


@dataclass
class _Counts:
    """Outcome counts of a set of events: per class (then "other"), and errors among labelled events."""

    classes: np.ndarray  # int64, (n_classes + 1,)
    labelled: int
    errors: int

    @property
    def n(self) -> int:
        return int(self.classes.sum())


@dataclass(frozen=True)
class _Test:
    """One test of one subject: a class's rate (two-sided) or the error rate (one-sided)."""

    subject: str
    kind: str  # "group" or "client"
    test: str  # "class_rate" or "error_rate"
    cls: str | None
    count: int
    n: int
    reference_count: int
    reference_n: int
    reference: str  # "own" (the subject's reference events) or "overall"
    p_value: float


@dataclass
class SubjectCounts:
    """Per-subject outcome counts as arrays: a row per subject of class counts and (labelled, errors)."""

    names: list[str]
    counts: Int64Array  # (subjects, classes + 1)
    labelled: Int64Array  # (subjects, 2)


@dataclass
class GroupOutcomeState(DetectorState):
    """The reference outcome counts: overall, per kept group value and per kept client."""

    max_classes: Annotated[int, HYPERPARAMETER]
    classes: list[str]
    overall: Int64Array
    overall_labelled: list[int]  # labelled events, errors among them
    groups: SubjectCounts
    clients: SubjectCounts


class GroupOutcomeDetector(Detector[GroupOutcomeState], id="group_outcome", threat=Threat.INTEGRITY):
    """Flags groups and clients whose predicted classes (or errors) depart from their reference rates.

    Parameters
    ----------
    alpha
        False-alarm rate per clean window, in (0, 0.5).
    min_events
        Subjects with fewer events with a predicted class in the window are not tested, and reference
        subjects with fewer events are compared with the whole reference (>= 2).
    min_labelled
        The error rate of a subject is tested from this many labelled events (>= 2).
    max_classes
        Classes kept, the most frequent predicted classes of the reference (>= 1); the others count as
        "other".
    max_subjects
        Reference groups (``key=value``) and reference clients kept, each, the most frequent (>= 0); the
        others are compared with the whole reference.
    test_clients
        Whether clients are subjects (groups always are).

    Notes
    -----
    ``statistic`` is the rate change (window - reference) of the most significant test, ``threshold`` None
    (the decision is a corrected family of tests), ``p_value`` its Holm-adjusted p-value. ``evidence``:
    ``n_subjects`` and ``n_tests`` (the family), ``subjects`` (flagged, most significant first), ``findings``
    (per flagged subject: ``subject``, ``kind``, ``test``, ``class``, ``statistic`` (rate change),
    ``window_rate``, ``reference_value`` (reference rate), ``count``, ``n``, ``reference_count``,
    ``reference_n``, ``reference`` (``"own"`` or ``"overall"``), ``p_value`` (adjusted), ``threshold``
    (``alpha``) and ``event_ids``: up to 20 of the subject's events predicted as ``class``, or misclassified
    for an error-rate finding) and ``explained`` (subjects significant on their own but not once the events
    of a more significant subject are left out).

    Examples
    --------
    >>> from detectors._examples import classes, flagged
    >>> detector = GroupOutcomeDetector().fit(classes(600, seed=0))
    >>> flagged(detector, classes(300, seed=1), classes(300, seed=2, north_share_of_a=0.9))
    (('ok', []), ('alert', ['region=north']))
    """

    def __init__(
        self,
        *,
        alpha: float = 0.01,
        min_events: int = 30,
        min_labelled: int = 30,
        max_classes: int = 50,
        max_subjects: int = 1000,
        test_clients: bool = True,
    ) -> None:
        self.alpha = check_float("alpha", alpha, 0.0, 0.5)
        self.min_events = check_int("min_events", min_events, 2)
        self.min_labelled = check_int("min_labelled", min_labelled, 2)
        self.max_classes = check_int("max_classes", max_classes, 1)
        self.max_subjects = check_int("max_subjects", max_subjects, 0)
        if not isinstance(test_clients, bool):
            raise TypeError(
                f"test_clients must be a bool, got {type(test_clients).__name__} {test_clients!r}"
            )
        self.test_clients = test_clients

        self._classes: tuple[str, ...] | None = None
        self._overall: _Counts | None = None
        self._groups: dict[str, _Counts] = {}
        self._clients: dict[str, _Counts] = {}

    # ------------------------------------------------------------------ parameters

    @property
    def fitted(self) -> bool:
        return self._classes is not None

    def _reference(self) -> tuple[tuple[str, ...], _Counts]:
        """The fitted reference classes and overall counts."""
        self._require_fitted()
        assert self._classes is not None and self._overall is not None  # both are set by fit and load
        return self._classes, self._overall

    # ------------------------------------------------------------------ fitting

    def fit(self, reference: Batch) -> Self:
        """Count the reference outcomes, overall, per group value and per client (from ``predictions``,
        ``labels``, ``groups`` and ``client_ids``); a ValueError if fewer than ``min_events`` reference
        events carry a predicted class."""
        predicted = _predicted(reference)
        present = [cls for cls in predicted if cls is not None]
        if len(present) < self.min_events:
            raise ValueError(
                f"{self.id}: the reference has {len(present)} events with a predicted class, at least "
                f"min_events={self.min_events} are needed"
            )
        ranked = sorted(Counter(present).items(), key=lambda item: (-item[1], item[0]))[: self.max_classes]
        classes = tuple(sorted(cls for cls, _ in ranked))
        index = {cls: j for j, cls in enumerate(classes)}
        codes = np.array([-1 if cls is None else index.get(cls, len(classes)) for cls in predicted])
        wrong = _errors(reference, predicted)
        rows = np.flatnonzero(codes >= 0)
        self._classes = classes
        self._overall = _count(codes, wrong, rows, len(classes))
        members = _subjects(reference, clients=True)
        self._groups = self._keep(members["group"], codes, wrong, len(classes))
        self._clients = self._keep(members["client"], codes, wrong, len(classes))
        return self

    def _keep(
        self, members: Mapping[str, list[int]], codes: np.ndarray, wrong: np.ndarray, n_classes: int
    ) -> dict[str, _Counts]:
        """Counts of the ``max_subjects`` most frequent subjects with at least ``min_events`` events."""
        sizes = {s: int(np.count_nonzero(codes[rows] >= 0)) for s, rows in members.items()}
        kept = sorted((s for s in sizes if sizes[s] >= self.min_events), key=lambda s: (-sizes[s], s))
        return {
            s: _count(codes, wrong, np.array(members[s], dtype=np.int64), n_classes)
            for s in sorted(kept[: self.max_subjects])
        }

    # ------------------------------------------------------------------ testing a window

    def evaluate(self, window: Batch) -> DetectionResult:
        """Test every group value and client of the window against its reference outcomes;
        ``predictions``, ``labels``, ``groups``, ``client_ids`` and ``event_ids`` are used."""
        classes, _ = self._reference()
        n = len(window)
        if len(window.groups) != n and (not self.test_clients or len(window.client_ids) != n):
            return self.skipped(n, "the window carries neither groups nor client ids")
        predicted = _predicted(window)
        index = {cls: j for j, cls in enumerate(classes)}
        codes = np.array(
            [-1 if cls is None else index.get(cls, len(classes)) for cls in predicted], dtype=np.int64
        )
        if not np.any(codes >= 0):
            return self.skipped(n, "no event of the window carries a predicted class")
        wrong = _errors(window, predicted)
        members = _subjects(window, clients=self.test_clients)
        subjects: dict[str, tuple[str, np.ndarray]] = {}
        for kind in ("group", "client"):
            for subject, positions in members[kind].items():
                usable = np.array([r for r in positions if codes[r] >= 0], dtype=np.int64)
                if usable.size >= self.min_events:
                    subjects[subject] = (kind, usable)
        if not subjects:
            return self.skipped(
                n, f"no group value or client has min_events={self.min_events} events with a predicted class"
            )

        tests = [
            t
            for subject, (kind, rows) in subjects.items()
            for t in self._tests(subject, kind, codes, wrong, rows)
        ]
        if not tests:
            return self.skipped(
                n, "no testable outcome: every subject has a single class, as in the reference"
            )
        adjusted = holm([t.p_value for t in tests])
        order = sorted(range(len(tests)), key=lambda j: (adjusted[j], tests[j].p_value, tests[j].subject))
        best = order[0]

        # Attribution: re-test each flagged subject on the events no more significant flagged subject covers.
        kept: list[int] = []
        explained: list[dict[str, Any]] = []
        covered = np.zeros(n, dtype=bool)
        seen: set[str] = set()
        for j in order:
            if adjusted[j] > self.alpha:
                break
            subject = tests[j].subject
            if subject in seen:
                continue
            seen.add(subject)
            kind, subject_rows = subjects[subject]
            rest = subject_rows[~covered[subject_rows]]
            if rest.size < subject_rows.size:
                retest = (
                    self._tests(subject, kind, codes, wrong, rest) if rest.size >= self.min_events else []
                )
                if not retest or min(t.p_value for t in retest) * len(tests) > self.alpha:
                    by = next(
                        tests[i].subject
                        for i in kept
                        if np.intersect1d(subjects[tests[i].subject][1], subject_rows).size
                    )
                    explained.append({"subject": subject, "p_value": plain(adjusted[j]), "explained_by": by})
                    continue
            kept.append(j)
            covered[subject_rows] = True

        findings = [
            self._finding(tests[j], float(adjusted[j]), window, codes, wrong, subjects, classes) for j in kept
        ]
        top = tests[best]
        return self.result(
            n,
            alert=bool(kept),
            statistic=plain(top.count / top.n - top.reference_count / top.reference_n),
            threshold=None,
            p_value=float(adjusted[best]),
            evidence={
                "n_subjects": len(subjects),
                "n_tests": len(tests),
                "subjects": [finding["subject"] for finding in findings],
                "findings": findings,
                "explained": explained,
                "most_significant": {
                    "subject": top.subject,
                    "test": top.test,
                    "class": top.cls,
                    "p_value": plain(adjusted[best]),
                },
            },
        )

    def _reference_of(self, subject: str, kind: str) -> tuple[_Counts, str]:
        """The subject's own reference counts if it has enough reference events, else the overall ones."""
        _, overall = self._reference()
        own = (self._groups if kind == "group" else self._clients).get(subject)
        return (own, "own") if own is not None else (overall, "overall")

    def _tests(
        self, subject: str, kind: str, codes: np.ndarray, wrong: np.ndarray, rows: np.ndarray
    ) -> list[_Test]:
        """The class-rate tests (and the error-rate test) of one subject on the events at ``rows``."""
        classes, _ = self._reference()
        reference, source = self._reference_of(subject, kind)
        counts = np.bincount(codes[rows], minlength=len(classes) + 1)
        n, n_reference = int(counts.sum()), reference.n
        present = [j for j in range(len(classes) + 1) if counts[j] or reference.classes[j]]
        # With two outcomes, the second class's rate is one minus the first's: the same test, counted once.
        if len(present) == 2:
            present = present[:1]
        names = [*classes, _OTHER]
        tests = [
            _Test(
                subject,
                kind,
                "class_rate",
                names[j],
                int(counts[j]),
                n,
                int(reference.classes[j]),
                n_reference,
                source,
                proportion_test(int(reference.classes[j]), n_reference, int(counts[j]), n),
            )
            for j in present
        ]
        labelled = rows[wrong[rows] >= 0]
        if labelled.size >= self.min_labelled and reference.labelled >= self.min_labelled:
            errors = int(np.count_nonzero(wrong[labelled] == 1))
            tests.append(
                _Test(
                    subject,
                    kind,
                    "error_rate",
                    None,
                    errors,
                    int(labelled.size),
                    reference.errors,
                    reference.labelled,
                    source,
                    excess_test(errors, int(labelled.size), reference.errors, reference.labelled),
                )
            )
        return tests

    def _finding(
        self,
        test: _Test,
        p_value: float,
        window: Batch,
        codes: np.ndarray,
        wrong: np.ndarray,
        subjects: Mapping[str, tuple[str, np.ndarray]],
        classes: Sequence[str],
    ) -> dict[str, Any]:
        """The evidence of one flagged subject, from its most significant test."""
        _, rows = subjects[test.subject]
        if test.test == "error_rate":
            involved = rows[wrong[rows] == 1]
        else:
            code = classes.index(test.cls) if test.cls in classes else len(classes)
            involved = rows[codes[rows] == code]
        window_rate = test.count / test.n
        reference_rate = test.reference_count / test.reference_n
        return {
            "subject": test.subject,
            "kind": test.kind,
            "test": test.test,
            "class": test.cls,
            "statistic": plain(window_rate - reference_rate),
            "window_rate": plain(window_rate),
            "reference_value": plain(reference_rate),
            "count": test.count,
            "n": test.n,
            "reference_count": test.reference_count,
            "reference_n": test.reference_n,
            "reference": test.reference,
            "p_value": plain(p_value),
            "threshold": self.alpha,
            "event_ids": bounded_ids(window.event_ids, involved),
        }

    # ------------------------------------------------------------------ state

    def _save_state(self) -> GroupOutcomeState:
        classes, overall = self._reference()
        return GroupOutcomeState(
            max_classes=self.max_classes,
            classes=list(classes),
            overall=_counts_state({"": overall}).counts[0],
            overall_labelled=[overall.labelled, overall.errors],
            groups=_counts_state(self._groups),
            clients=_counts_state(self._clients),
        )

    def _load_state(self, state: GroupOutcomeState) -> None:
        width = len(state.classes) + 1
        groups = _counts_from_state(state.groups, width)
        clients = _counts_from_state(state.clients, width)
        labelled, errors = state.overall_labelled
        if state.overall.shape != (width,) or state.overall.sum() < 1 or not 0 <= errors <= labelled:
            raise self._malformed(f"overall counts {state.overall.shape}")
        self._classes = tuple(state.classes)
        self._overall = _Counts(state.overall, labelled, errors)
        self._groups = groups
        self._clients = clients


# ---------------------------------------------------------------------------------------------- helpers


def _predicted(batch: Batch) -> list[str | None]:
    """The predicted class of every event (None where the event has no usable prediction)."""
    if len(batch.predictions) != len(batch):
        return [None] * len(batch)
    return [predicted_class(prediction) for prediction in batch.predictions]


def _errors(batch: Batch, predicted: Sequence[str | None]) -> np.ndarray:
    """Per event: 1 if labelled and misclassified, 0 if labelled and right, -1 if not both known."""
    if len(batch.labels) != len(batch):
        return np.full(len(batch), -1, dtype=np.int64)
    return np.array(
        [
            -1 if label is None or cls is None else int(str(label) != cls)
            for label, cls in zip(batch.labels, predicted, strict=True)
        ],
        dtype=np.int64,
    )


def _subjects(batch: Batch, *, clients: bool) -> dict[str, dict[str, list[int]]]:
    """Event positions per ``key=value`` group subject and per client id."""
    groups: dict[str, list[int]] = {}
    if len(batch.groups) == len(batch):
        for i, attributes in enumerate(batch.groups):
            for key, value in attributes.items():
                groups.setdefault(f"{key}={value}", []).append(i)
    by_client: dict[str, list[int]] = {}
    if clients and len(batch.client_ids) == len(batch):
        for i, client in enumerate(batch.client_ids):
            if client is not None:
                by_client.setdefault(str(client), []).append(i)
    return {"group": groups, "client": by_client}


def _count(codes: np.ndarray, wrong: np.ndarray, rows: np.ndarray, n_classes: int) -> _Counts:
    """Outcome counts of the events at ``rows`` (events without a predicted class are left out)."""
    usable = rows[codes[rows] >= 0]
    labelled = usable[wrong[usable] >= 0]
    return _Counts(
        np.bincount(codes[usable], minlength=n_classes + 1).astype(np.int64),
        int(labelled.size),
        int(np.count_nonzero(wrong[labelled] == 1)),
    )


def _counts_state(counts: Mapping[str, _Counts]) -> SubjectCounts:
    """Per-subject counts as arrays: names, a (subjects, classes + 1) matrix and (labelled, errors) pairs."""
    names = sorted(counts)
    width = next(iter(counts.values())).classes.size if counts else 0
    return SubjectCounts(
        names,
        np.array([counts[s].classes for s in names], dtype=np.int64).reshape(len(names), width),
        np.array([[counts[s].labelled, counts[s].errors] for s in names], dtype=np.int64).reshape(
            len(names), 2
        ),
    )


def _counts_from_state(state: SubjectCounts, width: int) -> dict[str, _Counts]:
    """The inverse of :func:`_counts_state`; a ValueError if the shapes do not fit."""
    names, counts, labelled = state.names, state.counts, state.labelled
    if names and (counts.shape != (len(names), width) or labelled.shape != (len(names), 2)):
        raise ValueError(f"per-subject counts of shape {counts.shape}, expected ({len(names)}, {width})")
    return {
        name: _Counts(counts[i].copy(), int(labelled[i, 0]), int(labelled[i, 1]))
        for i, name in enumerate(names)
    }
