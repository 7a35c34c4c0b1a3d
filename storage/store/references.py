"""Reference data sets and fitted detector state: what a restart needs to resume without refitting."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import models as orm
from storage.records import DetectorStateRow, ReferenceRecord
from storage.rows import record_from_row
from storage.session import EngineBound, check_name
from storage.store.registry import ensure_model
from storage.store.values import check_state_row
from storage.tables import DETECTOR_STATES, REFERENCES, upsert

__all__ = ["REFERENCE_SOURCES", "ReferenceStore", "upsert_detector_state"]

REFERENCE_SOURCES = frozenset({"file", "warmup"})


class ReferenceStore(EngineBound):
    """References (gzip JSONL payloads, one per content hash) and detector states (one per detector, reference
    and parameters)."""

    def save_reference(
        self, model: str, source: str, content_hash: str, payload: bytes, n_events: int
    ) -> int:
        """Store a reference data set; returns its id, the existing one if (model, content_hash) is stored."""
        if source not in REFERENCE_SOURCES:
            raise ValueError(f"reference source must be one of {sorted(REFERENCE_SOURCES)}, got {source!r}")
        check_name(content_hash, "content_hash", orm.HASH_LENGTH)
        with self._transaction("storing a reference", write=True) as session:
            ensure_model(session, model)
            stmt = (
                upsert(session, REFERENCES)
                .values(
                    model=model,
                    source=source,
                    content_hash=content_hash,
                    n_events=int(n_events),
                    payload=bytes(payload),
                    created_at=orm.utcnow(),
                )
                .on_conflict_do_nothing(index_elements=[REFERENCES.c.model, REFERENCES.c.content_hash])
                .returning(REFERENCES.c.id)
            )
            new_id = session.execute(stmt).scalar_one_or_none()
            if new_id is not None:
                return int(new_id)
            # Conflict: the row exists (committed, possibly by a concurrent caller just now).
            return int(
                session.execute(
                    select(REFERENCES.c.id).where(
                        REFERENCES.c.model == model, REFERENCES.c.content_hash == content_hash
                    )
                ).scalar_one()
            )

    def latest_reference(self, model: str) -> ReferenceRecord | None:
        """The most recently created reference of ``model``, or None."""
        stmt = (
            select(orm.Reference)
            .where(orm.Reference.model == model)
            .order_by(orm.Reference.created_at.desc(), orm.Reference.id.desc())
            .limit(1)
        )
        with self._transaction("reading the latest reference") as session:
            ref = session.scalars(stmt).first()
            return None if ref is None else record_from_row(ReferenceRecord, ref)

    def save_detector_state(
        self, model: str, detector: str, reference_id: int, params_hash: str, state: bytes
    ) -> None:
        """Store a fitted detector's state, replacing any state under the same key."""
        row = DetectorStateRow(detector, int(reference_id), params_hash, bytes(state))
        check_state_row(row)
        with self._transaction("storing detector state", write=True) as session:
            ensure_model(session, model)
            upsert_detector_state(session, model, row)

    def load_detector_state(
        self, model: str, detector: str, reference_id: int, params_hash: str
    ) -> bytes | None:
        """The stored state for exactly this key, or None."""
        stmt = select(orm.DetectorState.state).where(
            orm.DetectorState.model == model,
            orm.DetectorState.detector == detector,
            orm.DetectorState.reference_id == reference_id,
            orm.DetectorState.params_hash == params_hash,
        )
        with self._transaction("loading detector state") as session:
            return session.scalar(stmt)


def upsert_detector_state(session: Session, model: str, row: DetectorStateRow) -> None:
    """Write one detector state in ``session``, replacing the state stored under the same key."""
    stmt = upsert(session, DETECTOR_STATES).values(
        model=model,
        detector=row.detector,
        reference_id=row.reference_id,
        params_hash=row.params_hash,
        state=row.state,
        created_at=orm.utcnow(),
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[
                DETECTOR_STATES.c.model,
                DETECTOR_STATES.c.detector,
                DETECTOR_STATES.c.reference_id,
                DETECTOR_STATES.c.params_hash,
            ],
            set_={"state": stmt.excluded.state, "created_at": stmt.excluded.created_at},
        )
    )
