"""What the detectors of labelled events share: a ``task`` hyper-parameter (``"auto"``, ``"classification"``
or ``"regression"``) that ``fit`` resolves once, from the reference, and that decides every later test."""

from __future__ import annotations

from detectors.base import Batch, Detector, StateT
from detectors.drift._stats import infer_task

__all__ = ["LabelledTaskDetector"]


class LabelledTaskDetector(Detector[StateT]):
    """Base class of a detector whose test depends on whether the labels are classes or values.

    A subclass stores ``task`` in ``__init__``, sets ``_task = None`` there, and sets ``_task`` to
    :meth:`_resolve_task`'s answer at the end of ``fit`` (and when it loads a state): fitted means resolved.
    """

    task: str
    _task: str | None

    @property
    def resolved_task(self) -> str:
        """``"classification"`` or ``"regression"``, as decided at ``fit``."""
        self._require_fitted()
        return str(self._task)

    @property
    def fitted(self) -> bool:
        return self._task is not None

    def _resolve_task(self, reference: Batch) -> str:
        """``task``; for ``task="auto"`` the one the reference's labels and predictions suggest."""
        return self.task if self.task != "auto" else infer_task(reference.labels, reference.predictions)
