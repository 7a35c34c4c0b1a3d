"""Silences: matchers that mute the notifications of the alerts they match for a while (the alerts stay)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from storage import models as orm
from storage.records import require_aware
from storage.rows import record_from_row, record_values
from storage.session import EngineBound
from storage.tables import SILENCES

__all__ = ["SilenceIn", "SilenceRecord", "SilenceStore", "active_silences"]


@dataclass(frozen=True, slots=True)
class SilenceIn:
    """Mute the alerts that match every given matcher (at least one), from ``starts_at`` until ``ends_at``."""

    ends_at: datetime
    fingerprint: str | None = None
    model: str | None = None
    detector: str | None = None
    starts_at: datetime | None = None  # None: from creation
    comment: str = ""
    created_by: str | None = None

    def __post_init__(self) -> None:
        require_aware(self.ends_at, "SilenceIn.ends_at")
        if self.starts_at is not None:
            require_aware(self.starts_at, "SilenceIn.starts_at")
            if self.ends_at <= self.starts_at:
                raise ValueError("a silence must end after it starts")
        if self.fingerprint is None and self.model is None and self.detector is None:
            raise ValueError("a silence needs at least one of fingerprint, model, detector")


@dataclass(frozen=True, slots=True)
class SilenceRecord:
    """A stored silence."""

    id: int
    fingerprint: str | None
    model: str | None
    detector: str | None
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


class SilenceStore(EngineBound):
    """Creates, lists and deletes silences."""

    def create_silence(self, silence: SilenceIn, now: datetime) -> SilenceRecord:
        """Create a silence (starting at ``now`` unless ``starts_at`` is given)."""
        require_aware(now, "now")
        starts = silence.starts_at or now
        if silence.ends_at <= starts:
            raise ValueError("a silence must end after it starts")
        with self._transaction("creating a silence", write=True) as session:
            new_id = session.execute(
                insert(SILENCES)
                .values({**record_values(silence), "starts_at": starts, "created_at": now})
                .returning(SILENCES.c.id)
            ).scalar_one()
            return record_from_row(SilenceRecord, session.get_one(orm.Silence, int(new_id)))

    def silences(self, *, active_at: datetime | None = None) -> list[SilenceRecord]:
        """All silences in id order, or only those in force at ``active_at``."""
        with self._transaction("reading silences") as session:
            if active_at is not None:
                return active_silences(session, active_at)
            stmt = select(orm.Silence).order_by(orm.Silence.id)
            return [record_from_row(SilenceRecord, s) for s in session.scalars(stmt)]

    def delete_silence(self, silence_id: int) -> bool:
        """Delete a silence; False if there was none with that id."""
        with self._transaction("deleting a silence", write=True) as session:
            done = session.execute(delete(SILENCES).where(SILENCES.c.id == silence_id))
            return bool(done.rowcount)  # type: ignore[attr-defined]


def active_silences(session: Session, now: datetime) -> list[SilenceRecord]:
    """The silences in force at ``now`` (``starts_at <= now < ends_at``), in id order, read in ``session``."""
    require_aware(now, "now")
    stmt = (
        select(orm.Silence)
        .where(orm.Silence.starts_at <= now, orm.Silence.ends_at > now)
        .order_by(orm.Silence.id)
    )
    return [record_from_row(SilenceRecord, s) for s in session.scalars(stmt)]
