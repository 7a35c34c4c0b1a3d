"""Dead letters: messages the intake could not accept, kept (cut to a maximum size) for inspection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, insert, select

from storage import models as orm
from storage.records import DeadLetter, DeadLetterIn
from storage.rows import record_from_row
from storage.session import EngineBound, check_limit
from storage.tables import DEAD_LETTERS

__all__ = ["DEFAULT_MAX_DEAD_LETTER_BYTES", "DeadLetterStore"]

DEFAULT_MAX_DEAD_LETTER_BYTES = 1 << 20  # 1 MiB


class DeadLetterStore(EngineBound):
    """Stores and lists dead letters; payloads longer than ``max_dead_letter_bytes`` are cut."""

    def __init__(self, engine: Engine, *, max_dead_letter_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES) -> None:
        """Wrap ``engine``; dead-letter payloads longer than ``max_dead_letter_bytes`` are cut."""
        super().__init__(engine)
        if max_dead_letter_bytes < 0:
            raise ValueError("max_dead_letter_bytes must be >= 0")
        self._max_dead_letter_bytes = max_dead_letter_bytes

    def add_dead_letters(self, rows: Sequence[DeadLetterIn]) -> None:
        """Store rejected messages in one transaction, cutting ``raw`` to the configured maximum."""
        if not rows:
            return
        limit = self._max_dead_letter_bytes
        values = [
            {
                "received_at": row.received_at,
                "topic": row.topic,
                "partition": row.partition,
                "offset": row.offset,
                "key": None if row.key is None else bytes(row.key),
                # A 50 MB poison message must not bloat the database; its exact size is kept.
                "raw": bytes(row.raw[:limit]),
                "size": len(row.raw),
                "truncated": len(row.raw) > limit,
                "reason": row.reason,
                "model": row.model,
            }
            for row in rows
        ]
        with self._transaction("storing dead letters", write=True) as session:
            session.execute(insert(DEAD_LETTERS), values)

    def dead_letters(
        self, limit: int = 100, *, model: str | None = None, since: datetime | None = None
    ) -> list[DeadLetter]:
        """The latest ``limit`` dead letters, newest first; only ``model``'s, or those received at or after
        ``since``, when given."""
        stmt = select(orm.DeadLetter)
        if model is not None:
            stmt = stmt.where(orm.DeadLetter.model == model)
        if since is not None:
            stmt = stmt.where(orm.DeadLetter.received_at >= since)
        newest_first = (orm.DeadLetter.received_at.desc(), orm.DeadLetter.id.desc())
        stmt = stmt.order_by(*newest_first).limit(check_limit(limit))
        with self._transaction("reading dead letters") as session:
            return [record_from_row(DeadLetter, d) for d in session.scalars(stmt)]
