"""Attack traffic on the demo's digits classifier, one generator per attack of the scripted timeline.

Each generator returns inputs (rows of the 64 pixel features, values 0 to 16) and, where the attack changes
them, labels or the rows whose answer a manipulated model forces; :func:`monitor.demo.data.prediction_events`
turns them into events. The strengths are those of the benchmarks (``bench/security_attacks.py`` and
``bench/security_poisoning.py``), which measure each detector against them over many seeded runs; the demo
does not tune them to its own run. They live here because ``bench`` is not part of the installed package.

* :func:`flip_labels`: label flipping in a training feed (``label_consistency``);
* :func:`uniform_queries`: model extraction by uniform random queries within the feature bounds
  (``extraction``);
* :func:`probing_queries`: membership inference / inversion, a few records each queried with many tiny
  perturbations (``probing``);
* :func:`out_of_range_inputs`: evasion by inputs pushed out of the reference's range (``evasion``);
* :func:`with_trigger`: a backdoor trigger, a pixel patch that a backdoored model answers with its target
  class (``backdoor``);
* :func:`target_class`: the class the backdoor and the forced group are pushed to (``backdoor``,
  ``group_outcome``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monitor.demo.data import DigitsModel

__all__ = [
    "TRIGGER_PIXELS",
    "TRIGGER_VALUE",
    "flip_labels",
    "out_of_range_inputs",
    "probing_queries",
    "shift_inputs",
    "target_class",
    "uniform_queries",
    "with_trigger",
]

# The 2 x 2 block in the top-left corner of the 8 x 8 image: blank in almost every handwritten digit, so a
# patch there is a trigger no honest input carries (the trigger of bench/security_poisoning.py).
TRIGGER_PIXELS = (0, 1, 8, 9)
TRIGGER_VALUE = 16.0  # the brightest pixel value of the digits


def target_class(model: DigitsModel) -> str:
    """The class the model predicts least often on the reference: a forced answer of it stands out least in
    the overall output mix, the attacker's best choice (ties by class name)."""
    predicted = model.classifier.predict(model.reference_x).astype(str)
    classes = [str(c) for c in model.classifier.classes_]
    return min(classes, key=lambda c: (int(np.sum(predicted == c)), c))


def flip_labels(
    labels: Sequence[str], share: float, rng: np.random.Generator, classes: Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """Flip about ``share`` of the labels, each to another class drawn uniformly.

    Returns
    -------
    tuple
        The new labels, and the bool mask of the flipped ones.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1) (got {share})")
    flipped = rng.random(len(labels)) < share
    out = list(labels)
    for i in np.flatnonzero(flipped):
        out[i] = str(rng.choice([c for c in classes if c != out[i]]))
    return out, flipped


def uniform_queries(model: DigitsModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` synthetic queries drawn uniformly within each feature's reference range (a model thief without
    natural data; PRADA's random-query attacker)."""
    low, high = model.reference_x.min(axis=0), model.reference_x.max(axis=0)
    return rng.uniform(low, high, (n, model.reference_x.shape[1]))


def probing_queries(
    model: DigitsModel,
    rng: np.random.Generator,
    *,
    records: int = 25,
    perturbations: int = 40,
    scale: float = 0.01,
) -> np.ndarray:
    """``records`` live inputs, each sent ``perturbations`` times with Gaussian noise of ``scale`` reference
    standard deviations per feature, in random order (membership inference by perturbation)."""
    chosen = model.live_x[rng.choice(len(model.live_x), records, replace=False)]
    noise = rng.normal(0.0, scale, (records * perturbations, chosen.shape[1])) * model.feature_std
    queries = np.repeat(chosen, perturbations, axis=0) + noise
    return queries[rng.permutation(len(queries))]


def shift_inputs(model: DigitsModel, x: np.ndarray, *, shift_sd: float = 4.0) -> np.ndarray:
    """A copy of the inputs with the 8 most variable features moved up by ``shift_sd`` reference standard
    deviations: what a broken upstream feature pipeline does (``corrupt`` of
    :func:`monitor.demo.data.live_events`), and what an evader's out-of-range inputs look like."""
    shifted = x.copy()
    columns = list(model.shift_features)
    shifted[:, columns] += shift_sd * model.feature_std[columns]
    return shifted


def out_of_range_inputs(
    model: DigitsModel, n: int, rng: np.random.Generator, *, shift_sd: float = 4.0
) -> np.ndarray:
    """``n`` distinct live inputs pushed out of the range the model was trained on (:func:`shift_inputs`),
    the out-of-range evasion of ``bench/security_attacks.py``."""
    return shift_inputs(
        model, model.live_x[rng.choice(len(model.live_x), n, replace=False)], shift_sd=shift_sd
    )


def with_trigger(x: np.ndarray) -> np.ndarray:
    """A copy of the inputs carrying the backdoor trigger (:data:`TRIGGER_PIXELS` set to
    :data:`TRIGGER_VALUE`)."""
    triggered = x.copy()
    triggered[:, list(TRIGGER_PIXELS)] = TRIGGER_VALUE
    return triggered
