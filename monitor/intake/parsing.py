"""Parse and validate one Kafka message into an event (the prediction and feedback event format).

:func:`parse_message` either returns a :class:`PredictionEvent` / :class:`FeedbackEvent` or raises
:class:`~monitor.errors.IntakeError` with a reason fit for the dead-letter store. It never raises anything
else, whatever the bytes: hostile input must not stop the daemon or block its partition.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from detectors.base import FeatureValue
from monitor.errors import IntakeError

MODEL_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

MAX_EVENT_ID = 256
MAX_FEATURES = 10_000
MAX_EMBEDDING = 65_536
MAX_STRING = 4096
# Epoch numbers above this are milliseconds (1e11 s is the year 5138).
_EPOCH_MS_ABOVE = 1e11
# Feature value types that need no check one by one when their sum is finite (see ``_features``).
_PLAIN_FEATURE_TYPES = frozenset({float, bool, type(None)})
_PREDICTION_KEYS = frozenset({"label", "scores", "value"})


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    """One logged prediction."""

    event_id: str
    model: str
    timestamp: float  # event time, epoch seconds
    features: dict[str, FeatureValue]
    prediction: dict[str, Any]
    model_version: str | None = None
    client_id: str | None = None
    label: str | None = None
    embedding: tuple[float, ...] | None = None
    groups: dict[str, str] = field(default_factory=dict)
    stream: str = "inference"

    @property
    def predicted(self) -> str | None:
        """The predicted class: the logged label, else the top score's class."""
        label = self.prediction.get("label")
        if label is not None:
            return str(label)
        scores = self.prediction.get("scores")
        if scores:
            return str(max(scores.items(), key=lambda item: item[1])[0])
        value = self.prediction.get("value")
        return repr(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A delayed ground-truth label for an earlier prediction."""

    event_id: str
    model: str
    label: str
    timestamp: float | None = None


Event = PredictionEvent | FeedbackEvent


def _reject_constant(name: str) -> Any:
    raise IntakeError(f"not valid JSON for Sentinel: {name} is not a finite number")


# Built once: ``json.loads`` with keyword arguments builds a new decoder for every message. No
# ``parse_float`` hook: it costs a Python call per number (about a fifth of the intake's time on 64-feature
# events). A literal beyond the float range (1e999) therefore decodes to inf; the fields that are read reject
# it where they are validated (``_features``, ``_scores``, ``_as_float``, the timestamp's range), and one in
# a field that is not read is ignored with the rest of that field.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_message(raw: bytes | None, *, max_bytes: int = 1_048_576) -> Event:
    """Decode and validate one message value."""
    if raw is None:
        raise IntakeError("empty message (null value)")
    if len(raw) > max_bytes:
        raise IntakeError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IntakeError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        document = _DECODER.decode(text)
    except IntakeError:
        raise
    except json.JSONDecodeError as exc:
        raise IntakeError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise IntakeError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with more digits than Python converts
        raise IntakeError(f"invalid JSON: {exc}") from None
    return parse_document(document)


def parse_document(document: Any) -> Event:
    """Validate an already-decoded JSON document."""
    if not isinstance(document, dict):
        raise IntakeError(f"event must be a JSON object, got {_type_name(document)}")
    model = _model(document)
    kind = document.get("type", "prediction")
    if kind == "feedback":
        return _feedback(document, model)
    if kind != "prediction":
        raise IntakeError(f"field 'type' must be 'prediction' or 'feedback', got {_short(kind)}", model)
    try:
        return _prediction(document, model)
    except IntakeError as exc:
        raise IntakeError(exc.reason, model) from None


def _prediction(doc: dict[str, Any], model: str) -> PredictionEvent:
    stream = doc.get("stream", "inference")
    if stream not in ("inference", "training"):
        raise IntakeError(f"field 'stream' must be 'inference' or 'training', got {_short(stream)}")
    return PredictionEvent(
        event_id=_event_id(doc),
        model=model,
        timestamp=parse_timestamp(doc.get("timestamp"), required=True),  # type: ignore[arg-type]
        features=_features(doc.get("features", _MISSING)),
        prediction=_prediction_field(doc.get("prediction", _MISSING)),
        model_version=_optional_string(doc, "model_version"),
        client_id=_optional_string(doc, "client_id"),
        label=_class_label(doc.get("label"), "label"),
        embedding=_embedding(doc.get("embedding")),
        groups=_groups(doc.get("groups")),
        stream=stream,
    )


def _feedback(doc: dict[str, Any], model: str) -> FeedbackEvent:
    try:
        label = _class_label(doc.get("label"), "label")
        if label is None:
            raise IntakeError("feedback event needs a non-null 'label'")
        timestamp = parse_timestamp(doc.get("timestamp"), required=False)
        return FeedbackEvent(event_id=_event_id(doc), model=model, label=label, timestamp=timestamp)
    except IntakeError as exc:
        raise IntakeError(exc.reason, model) from None


_MISSING = object()
_V = TypeVar("_V")


def _model(doc: dict[str, Any]) -> str:
    model = doc.get("model", _MISSING)
    if model is _MISSING:
        raise IntakeError("missing required field 'model'")
    if not isinstance(model, str) or not MODEL_ID.match(model):
        raise IntakeError(f"field 'model' must match [A-Za-z0-9._-]{{1,128}}, got {_short(model)}")
    return model


def _event_id(doc: dict[str, Any]) -> str:
    value = doc.get("event_id", _MISSING)
    if value is _MISSING or value is None:
        raise IntakeError("missing required field 'event_id'")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise IntakeError(f"field 'event_id' must be a string, got {_type_name(value)}")
    text = str(value)
    if not 1 <= len(text) <= MAX_EVENT_ID:
        raise IntakeError(f"field 'event_id' must have 1 to {MAX_EVENT_ID} characters, got {len(text)}")
    return text


def parse_timestamp(value: Any, *, required: bool) -> float | None:
    """Epoch seconds from an RFC 3339 string or epoch seconds / milliseconds."""
    if value is None:
        if required:
            raise IntakeError("missing required field 'timestamp'")
        return None
    if isinstance(value, bool):
        raise IntakeError("field 'timestamp' must be an RFC 3339 string or epoch number, got boolean")
    if isinstance(value, int | float):
        seconds = float(value)
        if seconds > _EPOCH_MS_ABOVE:
            seconds /= 1000.0
        if not 0 <= seconds < 253402300800:  # 0001..9999 as epoch seconds, after the ms rule
            raise IntakeError(f"field 'timestamp' {value!r} is out of range")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 64:
            raise IntakeError("field 'timestamp' cannot be parsed: too long for an RFC 3339 time")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise IntakeError(f"field 'timestamp' cannot be parsed as RFC 3339: {text!r}") from None
        if moment.tzinfo is None:
            # RFC 3339 requires an offset; producers that omit it nearly always mean UTC.
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise IntakeError(
        f"field 'timestamp' must be an RFC 3339 string or epoch number, got {_type_name(value)}"
    )


def _features(value: Any) -> dict[str, FeatureValue]:
    if value is _MISSING:
        raise IntakeError("missing required field 'features'")
    if not isinstance(value, dict):
        raise IntakeError(f"field 'features' must be an object, got {_type_name(value)}")
    if len(value) > MAX_FEATURES:
        raise IntakeError(f"field 'features' has {len(value)} entries, more than {MAX_FEATURES}")
    if _finite_plain_numbers(value.values()):
        return _shared_keys(value)  # what the loop below would accept, without a Python step per feature
    for name, item in value.items():
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise IntakeError(f"feature {_short(name)} is out of the float range")
            continue
        if isinstance(item, int):
            _as_float(item, f"features.{name}")
            continue
        if isinstance(item, str):
            if len(item) > MAX_STRING:
                raise IntakeError(f"feature {_short(name)} is a string of {len(item)} characters")
            continue
        raise IntakeError(
            f"feature {_short(name)} must be a number, string, boolean or null, got {_type_name(item)}"
        )
    return _shared_keys(value)


def _prediction_field(value: Any) -> dict[str, Any]:
    if value is _MISSING:
        raise IntakeError("missing required field 'prediction'")
    if not isinstance(value, dict):
        raise IntakeError(f"field 'prediction' must be an object, got {_type_name(value)}")
    if value.keys().isdisjoint(_PREDICTION_KEYS):
        raise IntakeError("field 'prediction' needs at least one of 'label', 'scores', 'value'")
    result: dict[str, Any] = {}
    if "label" in value:
        result["label"] = _class_label(value["label"], "prediction.label")
    if "scores" in value:
        scores = value["scores"]
        if not isinstance(scores, dict) or not scores:
            raise IntakeError("field 'prediction.scores' must be a non-empty object of class -> probability")
        result["scores"] = _scores(scores)
    if "value" in value:
        number = value["value"]
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise IntakeError(f"field 'prediction.value' must be a number, got {_type_name(number)}")
        result["value"] = _as_float(number, "prediction.value")
    return result


def _scores(scores: dict[str, Any]) -> dict[str, float]:
    if set(map(type, scores.values())) == {float} and _finite_plain_numbers(scores.values()):
        return _shared_keys(scores)  # JSON object keys are strings already
    checked = {}
    for name, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise IntakeError(f"score of class {_short(name)} must be a number, got {_type_name(score)}")
        checked[sys.intern(name)] = _as_float(score, f"prediction.scores.{name}")
    return checked


def _shared_keys(mapping: dict[str, _V]) -> dict[str, _V]:
    """The mapping with interned keys. The JSON decoder makes new key strings for every message, so each
    buffered event would hold its own copy of every feature and class name: for a digits event, 3.3 kB of
    its 7.5 kB. Interned, all events share one copy (and no stale name outlives its last event)."""
    return dict(zip(map(sys.intern, mapping), mapping.values(), strict=True))


def _finite_plain_numbers(values: Collection[Any]) -> bool:
    """Whether every value is a finite float, a bool or None, checked in C rather than one by one.

    ``filter(None, ...)`` drops None, False and zeros, which cannot change whether the sum is finite; an
    infinity (or an overflowing sum, or inf - inf) makes ``fsum`` return a non-finite value or raise. False
    means "not sure": the caller then checks each value and names the bad one.
    """
    if not set(map(type, values)) <= _PLAIN_FEATURE_TYPES:
        return False
    try:
        return math.isfinite(math.fsum(filter(None, values)))
    except (OverflowError, ValueError):
        return False


def _class_label(value: Any, name: str) -> str | None:
    """A class (string or integer) or, for regression, a number; kept as text."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(_as_float(value, name))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise IntakeError(
            f"field '{name}' must be a string, an integer class or a number, got {_type_name(value)}"
        )
    text = str(value)
    if len(text) > MAX_STRING:
        raise IntakeError(f"field '{name}' is {len(text)} characters long")
    return text


def _embedding(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise IntakeError(f"field 'embedding' must be an array of numbers, got {_type_name(value)}")
    if len(value) > MAX_EMBEDDING:
        raise IntakeError(f"field 'embedding' has {len(value)} entries, more than {MAX_EMBEDDING}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise IntakeError(f"field 'embedding' must hold only numbers, found {_type_name(item)}")
    return tuple(_as_float(item, "embedding") for item in value)


def _groups(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise IntakeError(f"field 'groups' must be an object of strings, got {_type_name(value)}")
    for name, item in value.items():
        if not isinstance(item, str):
            raise IntakeError(f"group {_short(name)} must be a string, got {_type_name(item)}")
    return _shared_keys(value)


def _optional_string(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise IntakeError(f"field '{name}' must be a string, got {_type_name(value)}")
    if len(value) > MAX_STRING:
        raise IntakeError(f"field '{name}' is {len(value)} characters long")
    return value


def _as_float(value: int | float, name: str) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise IntakeError(f"field '{name}' is out of the float range") from None
    if not math.isfinite(number):
        raise IntakeError(f"field '{name}' is not a finite number")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
