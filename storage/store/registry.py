"""The ``models`` table as the other writers use it: a model is registered on first use, and its row is the
lock that keeps one model's window writes and label writes from interleaving."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import models as orm
from storage.session import check_name
from storage.tables import MODELS, upsert

__all__ = ["ensure_model", "lock_model"]


def ensure_model(session: Session, name: str) -> None:
    """Register model ``name`` in this transaction (idempotent)."""
    check_name(name, "model", orm.MODEL_NAME_LENGTH)
    stmt = upsert(session, MODELS).values(name=name, created_at=orm.utcnow())
    session.execute(stmt.on_conflict_do_nothing(index_elements=[MODELS.c.name]))


def lock_model(session: Session, name: str, *, shared: bool) -> None:
    """Create the model's row if needed and lock it until commit (PostgreSQL; a no-op on SQLite).

    ``FOR UPDATE`` (``shared=False``) for a window write, ``FOR SHARE`` for a label: labels of one model may
    be written concurrently, but not while a window of that model is being stored.
    """
    ensure_model(session, name)
    session.execute(select(MODELS.c.name).where(MODELS.c.name == name).with_for_update(read=shared)).one()
