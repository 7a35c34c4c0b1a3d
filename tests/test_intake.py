"""Intake: every kind of bad message is rejected with a clear reason; good ones parse exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from monitor.errors import IntakeError
from monitor.intake.parsing import FeedbackEvent, PredictionEvent, parse_message


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "model": "fraud-scorer",
        "timestamp": "2026-11-28T10:31:17.120Z",
        "client_id": "api-key-42",
        "features": {"amount": 12.5, "country": "DE", "age": 41, "vip": True, "note": None},
        "prediction": {"label": "fraud", "scores": {"fraud": 0.91, "ok": 0.09}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def raw(document: Any) -> bytes:
    return json.dumps(document).encode()


def with_feature(literal: bytes) -> bytes:
    """An event whose feature ``a`` is the raw JSON ``literal`` (json.dumps cannot write NaN and such)."""
    head = b'{"event_id": "e", "model": "m", "timestamp": 1, "features": {"a": '
    return head + literal + b'}, "prediction": {"value": 1}}'


def reason_for(message: bytes, **kwargs: Any) -> str:
    with pytest.raises(IntakeError) as exc:
        parse_message(message, **kwargs)
    return exc.value.reason


def test_contract_example_parses() -> None:
    parsed = parse_message(
        raw(
            event(
                model_version="2026-11-01",
                label=None,
                embedding=[0.12, -0.4, 0.9],
                groups={"region": "EU"},
                stream="training",
            )
        )
    )
    assert isinstance(parsed, PredictionEvent)
    assert parsed.timestamp == pytest.approx(1795861877.12)
    assert parsed.features["country"] == "DE"
    assert parsed.embedding == (0.12, -0.4, 0.9)
    assert parsed.groups == {"region": "EU"}
    assert parsed.stream == "training"
    assert parsed.predicted == "fraud"


def test_predicted_class_from_scores_when_no_label() -> None:
    parsed = parse_message(raw(event(prediction={"scores": {"a": 0.2, "b": 0.8}})))
    assert isinstance(parsed, PredictionEvent)
    assert parsed.predicted == "b"


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (1795861877, 1795861877.0),
        (1795861877120, 1795861877.12),
        ("2026-11-28T10:31:17+01:00", 1795858277.0),
        ("2026-11-28T10:31:17", 1795861877.0),  # no offset: taken as UTC
    ],
)
def test_timestamp_forms(stamp: Any, expected: float) -> None:
    parsed = parse_message(raw(event(timestamp=stamp)))
    assert parsed.timestamp == pytest.approx(expected)


def test_integer_class_labels_become_strings() -> None:
    parsed = parse_message(raw(event(prediction={"label": 3}, label=7)))
    assert isinstance(parsed, PredictionEvent)
    assert (parsed.predicted, parsed.label) == ("3", "7")


def test_feedback_event() -> None:
    parsed = parse_message(
        raw({"type": "feedback", "event_id": "e-1", "model": "m", "label": "ok", "timestamp": 1795861877})
    )
    assert parsed == FeedbackEvent(event_id="e-1", model="m", label="ok", timestamp=1795861877.0)
    assert "non-null 'label'" in reason_for(raw({"type": "feedback", "event_id": "e", "model": "m"}))


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "invalid JSON"),
        (raw(event(event_id=...)), "missing required field 'event_id'"),
        (raw(event(event_id=None)), "missing required field 'event_id'"),
        (raw(event(event_id={"a": 1})), "'event_id' must be a string"),
        (raw(event(event_id="x" * 300)), "1 to 256 characters"),
        (raw(event(model=...)), "missing required field 'model'"),
        (raw(event(model="no spaces allowed")), "must match"),
        (raw(event(features=[1, 2, 3])), "'features' must be an object, got array"),
        (raw(event(features="x")), "'features' must be an object, got string"),
        (raw(event(features={"a": [1]})), "feature 'a' must be a number, string, boolean or null, got array"),
        (raw(event(features={"a": {"b": 1}})), "got object"),
        (raw(event(features=...)), "missing required field 'features'"),
        (raw(event(prediction=...)), "missing required field 'prediction'"),
        (raw(event(prediction={})), "at least one of"),
        (raw(event(prediction={"scores": {"a": "high"}})), "must be a number"),
        (raw(event(timestamp="yesterday-ish")), "cannot be parsed as RFC 3339"),
        (raw(event(timestamp=...)), "missing required field 'timestamp'"),
        (raw(event(timestamp=True)), "got boolean"),
        (raw(event(timestamp=-5)), "out of range"),
        (raw(event(type="query")), "'type' must be 'prediction' or 'feedback'"),
        (raw(event(stream="batch")), "'stream' must be 'inference' or 'training'"),
        (raw(event(embedding=[1, "x"])), "only numbers"),
        (raw(event(groups={"region": 5})), "must be a string"),
        (with_feature(b"NaN"), "NaN is not a finite number"),
        (with_feature(b"Infinity"), "Infinity is not a finite number"),
        (
            with_feature(b"1e999"),
            "out of the float range",
        ),
        (
            b'{"event_id": "e", "model": "m", "timestamp": 1, "features": {"a": '
            + b"9" * 400
            + b'}, "prediction": {"value": 1}}',
            "out of the float range",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_messages_have_clear_reasons(message: bytes, fragment: str) -> None:
    assert fragment in reason_for(message)


def test_numbers_beyond_the_float_range_are_refused_where_they_are_read() -> None:
    # A class score written as a huge integer: rejected with a reason, never an OverflowError.
    huge_score = raw(event(prediction={"scores": {"a": 10**400, "b": 0.5}}))
    assert "out of the float range" in reason_for(huge_score)
    # A huge literal in a field Sentinel does not read (an extra key) does not matter: the event is accepted.
    extra = raw(event()).replace(b'"model"', b'"vendor_debug": 1e999, "model"', 1)
    assert isinstance(parse_message(extra), PredictionEvent)


def test_oversized_message() -> None:
    big = raw(event(features={f"f{i}": "x" * 1000 for i in range(5000)}))
    assert len(big) > 4_000_000
    assert "exceeds the limit of 1048576 bytes" in reason_for(big)


def test_reason_keeps_the_model_when_known() -> None:
    with pytest.raises(IntakeError) as exc:
        parse_message(raw(event(features=5)))
    assert exc.value.model == "fraud-scorer"


def test_null_message() -> None:
    assert "null value" in reason_for(None)  # type: ignore[arg-type]


def test_buffered_events_share_one_copy_of_each_name() -> None:
    # A window buffers up to max_window_sample events per model; the JSON decoder makes new key strings for
    # every message, which for a 64-feature event would be half of what it holds in memory.
    first = parse_message(raw(event(groups={"region": "eu"})))
    second = parse_message(raw(event(event_id="e-2", groups={"region": "us"})))
    assert isinstance(first, PredictionEvent) and isinstance(second, PredictionEvent)
    assert first.features == event()["features"]  # unchanged, order included
    assert list(first.features) == list(event()["features"])
    for a, b in [
        (first.features, second.features),
        (first.prediction["scores"], second.prediction["scores"]),
        (first.groups, second.groups),
    ]:
        assert all(x is y for x, y in zip(a, b, strict=True))
    # Also where a value needs the per-value check (an integer score):
    third = parse_message(raw(event(prediction={"scores": {"fraud": 1, "ok": 0}})))
    assert isinstance(third, PredictionEvent)
    assert all(x is y for x, y in zip(first.prediction["scores"], third.prediction["scores"], strict=True))
