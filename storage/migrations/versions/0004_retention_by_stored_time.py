"""Retention counts from when Sentinel stored the data: an index on ``windows.closed_at``.

The retention job used to pick windows by ``end`` (event time), so the first run after a replay of old
history deleted every window just stored. It now picks them by ``closed_at``: when the pipeline closed and
stored the window, by its own clock (the wall clock, in a replay too). That column exists since 0001 and is
filled by every insert, so no column is added and no row changes; this revision only indexes it, so that each
purge batch finds its rows without scanning the table.

Dead letters already count from ``received_at`` (the pipeline's clock when the message came in, indexed since
0001) and resolved alerts from ``resolved_at`` (the alert engine's clock when it resolved them).

Why not a new ``stored_at`` column filled by the database's clock: SQLite cannot add a column whose default is
not a constant to a table with rows ("Cannot add a column with non-constant default"), and rebuilding
``windows`` instead is unsafe inside the migration's transaction, where foreign keys stay on: dropping the old
table deletes its rows first, which cascades to the results and anomalies and fails on the events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_windows_closed_at"


def upgrade() -> None:
    """Index the time retention selects windows by."""
    op.create_index(_INDEX, "windows", ["closed_at"])


def downgrade() -> None:
    """Drop the index (code at 0003 purges by ``end`` and has no use for it)."""
    op.drop_index(_INDEX, table_name="windows")
