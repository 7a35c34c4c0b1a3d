"""``GET /v1/dead-letters``: the messages the intake refused, with the reason and their raw bytes."""

from __future__ import annotations

import base64

from fastapi import APIRouter

from monitor.api.dependencies import READ, READ_ERRORS, StoreDep
from monitor.api.params import Limit
from monitor.api.schemas import DeadLetterList, DeadLetterOut
from storage import DeadLetter

__all__ = ["router"]

PREVIEW_CHARS = 2000  # of a dead letter's payload shown as text; the full bytes are in raw_base64

router = APIRouter(tags=["results"])


@router.get("/v1/dead-letters", response_model=DeadLetterList, dependencies=READ, responses=READ_ERRORS)
def list_dead_letters(store: StoreDep, limit: Limit = 100) -> DeadLetterList:
    """Rejected messages, newest first, with their reasons and raw bytes (base64)."""
    return DeadLetterList(items=[_dead_letter_out(d) for d in store.dead_letters(limit=limit)])


def _dead_letter_out(letter: DeadLetter) -> DeadLetterOut:
    """The stored letter with its bytes as base64, and the payload as text when it is UTF-8."""
    return DeadLetterOut.of(
        letter,
        key_base64=None if letter.key is None else base64.b64encode(letter.key).decode(),
        raw_base64=base64.b64encode(letter.raw).decode(),
        preview=_preview(letter.raw),
    )


def _preview(raw: bytes) -> str | None:
    try:
        return bytes(raw).decode("utf-8")[:PREVIEW_CHARS]
    except UnicodeDecodeError:
        return None
