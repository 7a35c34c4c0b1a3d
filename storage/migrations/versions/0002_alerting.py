"""Alerting: result revisions, alert lifecycle state, cursor, subscriptions, silences, webhook outbox.

* ``window_results.revision`` (and the ``counters`` row that hands it out): the commit order of result
  writes, which the alert engine follows with its cursor (``alert_cursors``). Results stored before this
  revision keep 0 and are never turned into alerts: upgrading must not page anyone about old history.
* ``alerts.subject``, ``clean_streak``, ``streak_window`` and a partial unique index (one firing alert per
  fingerprint).
* ``subscriptions``, ``silences``, ``deliveries`` (the outbox) and ``delivery_attempts``.

Hand-written to match :mod:`storage.models` (tests/test_storage.py compares them on both backends); types
are spelled with plain SQLAlchemy types, never imported from ``storage.models``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    # BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY auto-increments.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the alerting columns and tables, and seed the revision counter and the engine's cursor."""
    # ADD COLUMN with a constant default is native on both backends: no table rebuild on SQLite.
    with op.batch_alter_table("window_results") as batch:
        batch.add_column(sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False))
    op.create_index("ix_window_results_revision", "window_results", ["revision"])

    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("subject", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("clean_streak", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("streak_window", _time(), nullable=True))
    op.create_index(
        "uq_alerts_fingerprint_firing",
        "alerts",
        ["fingerprint"],
        unique=True,
        sqlite_where=sa.text("state = 'firing'"),
        postgresql_where=sa.text("state = 'firing'"),
    )

    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_counters"),
    )
    op.bulk_insert(counters, [{"name": "window_results", "value": 0}])

    cursors = op.create_table(
        "alert_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_alert_cursors"),
    )
    op.bulk_insert(cursors, [{"name": "alert_engine", "revision": 0, "updated_at": datetime.now(UTC)}])

    op.create_table(
        "subscriptions",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("models", _json(), nullable=False),
        sa.Column("detectors", _json(), nullable=False),
        sa.Column("threats", _json(), nullable=False),
        sa.Column("min_severity", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.Column("deleted_at", _time(), nullable=True),
        sa.CheckConstraint("format IN ('native', 'slack', 'alertmanager')", name="ck_subscriptions_format"),
        sa.CheckConstraint("source IN ('config', 'api')", name="ck_subscriptions_source"),
        sa.CheckConstraint(
            "min_severity IN ('info', 'warning', 'critical')", name="ck_subscriptions_min_severity"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
    )
    op.create_index(
        "uq_subscriptions_name_active",
        "subscriptions",
        ["name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )

    op.create_table(
        "silences",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("detector", sa.String(64), nullable=True),
        sa.Column("starts_at", _time(), nullable=False),
        sa.Column("ends_at", _time(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.CheckConstraint(
            "fingerprint IS NOT NULL OR model IS NOT NULL OR detector IS NOT NULL", name="ck_silences_matcher"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_silences"),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])

    op.create_table(
        "deliveries",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("alert_id", _id(), nullable=False),
        sa.Column("subscription_id", _id(), nullable=True),
        sa.Column("topic", sa.String(255), nullable=True),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _time(), nullable=False),
        sa.Column("claimed_until", _time(), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("finished_at", _time(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("channel IN ('webhook', 'kafka')", name="ck_deliveries_channel"),
        sa.CheckConstraint("status IN ('firing', 'resolved')", name="ck_deliveries_status"),
        sa.CheckConstraint(
            "reason IN ('firing', 'escalated', 'repeat', 'resolved')", name="ck_deliveries_reason"
        ),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name="ck_deliveries_severity"),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="ck_deliveries_state"),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name="fk_deliveries_alert_id_alerts", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"], ["subscriptions.id"], name="fk_deliveries_subscription_id_subscriptions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("uuid", name="uq_deliveries_uuid"),
    )
    op.create_index("ix_deliveries_state_next_attempt_at", "deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_deliveries_alert_id_target_id", "deliveries", ["alert_id", "target", "id"])

    op.create_table(
        "delivery_attempts",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", _id(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", _time(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('delivered', 'retry', 'failed')", name="ck_delivery_attempts_outcome"
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name="fk_delivery_attempts_delivery_id_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_attempts"),
    )
    op.create_index("ix_delivery_attempts_delivery_id", "delivery_attempts", ["delivery_id"])


def downgrade() -> None:
    """Drop the alerting tables and columns, children before parents."""
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")
    op.drop_table("silences")
    op.drop_table("subscriptions")
    op.drop_table("alert_cursors")
    op.drop_table("counters")
    op.drop_index("uq_alerts_fingerprint_firing", table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("streak_window")
        batch.drop_column("clean_streak")
        batch.drop_column("subject")
    op.drop_index("ix_window_results_revision", table_name="window_results")
    with op.batch_alter_table("window_results") as batch:
        batch.drop_column("revision")
