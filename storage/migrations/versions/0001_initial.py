"""Initial schema.

Tables: models, references, detector states, windows, window results, events, pending labels,
anomalies, alerts and dead letters.
Hand-written to match :mod:`storage.models` exactly (tests/test_storage.py compares the two
on SQLite and PostgreSQL). Types are spelled with plain SQLAlchemy types, never imported from
``storage.models``, so that later edits to the models cannot silently change this revision.

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine[int]:
    # BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY auto-increments.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _model() -> sa.String:
    return sa.String(128)


def upgrade() -> None:
    """Create every table, constraint and index of the initial schema."""
    op.create_table(
        "models",
        sa.Column("name", _model(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("last_window_end", _time(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_models"),
    )
    op.create_table(
        "references",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.CheckConstraint("source IN ('file', 'warmup')", name="ck_references_source"),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_references_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_references"),
        sa.UniqueConstraint("model", "content_hash", name="uq_references_model_content_hash"),
    )
    op.create_table(
        "detector_states",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("reference_id", _id(), nullable=False),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_detector_states_model_models"),
        sa.ForeignKeyConstraint(
            ["reference_id"], ["references.id"], name="fk_detector_states_reference_id_references"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_detector_states"),
        sa.UniqueConstraint(
            "model",
            "detector",
            "reference_id",
            "params_hash",
            name="uq_detector_states_model_detector_reference_id_params_hash",
        ),
    )
    op.create_table(
        "windows",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("start", _time(), nullable=False),
        sa.Column("end", _time(), nullable=False),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("n_late", sa.Integer(), nullable=False),
        sa.Column("n_duplicates", sa.Integer(), nullable=False),
        sa.Column("n_labelled", sa.Integer(), nullable=False),
        sa.Column("closed_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_windows_model_models"),
        sa.PrimaryKeyConstraint("id", name="pk_windows"),
        sa.UniqueConstraint("model", "start", name="uq_windows_model_start"),
    )
    op.create_index("ix_windows_model_end", "windows", ["model", "end"])
    op.create_table(
        "window_results",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("window_id", _id(), nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("threat", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("statistic", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("n_events", sa.Integer(), nullable=False),
        sa.Column("evidence", _json(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("window_start", _time(), nullable=False),
        sa.Column("window_end", _time(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("updated_at", _time(), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'alert', 'skipped')", name="ck_window_results_status"),
        sa.ForeignKeyConstraint(
            ["window_id"], ["windows.id"], name="fk_window_results_window_id_windows", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_window_results"),
        sa.UniqueConstraint("window_id", "detector", name="uq_window_results_window_id_detector"),
    )
    op.create_index(
        "ix_window_results_model_detector_window_start",
        "window_results",
        ["model", "detector", "window_start"],
    )
    op.create_index("ix_window_results_window_start", "window_results", ["window_start"])
    op.create_table(
        "events",
        sa.Column("model", _model(), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("window_id", _id(), nullable=False),
        sa.Column("event_time", _time(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("predicted", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("labelled_at", _time(), nullable=True),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_events_model_models"),
        sa.ForeignKeyConstraint(["window_id"], ["windows.id"], name="fk_events_window_id_windows"),
        sa.PrimaryKeyConstraint("model", "event_id", name="pk_events"),
    )
    op.create_index("ix_events_window_id", "events", ["window_id"])
    op.create_table(
        "pending_labels",
        sa.Column("model", _model(), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("model", "event_id", name="pk_pending_labels"),
    )
    op.create_table(
        "anomalies",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("window_id", _id(), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(256), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("event_time", _time(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("features", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["window_id"], ["windows.id"], name="fk_anomalies_window_id_windows", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_anomalies"),
    )
    op.create_index("ix_anomalies_model_event_time", "anomalies", ["model", "event_time"])
    op.create_index("ix_anomalies_model_score", "anomalies", ["model", "score"])
    op.create_table(
        "alerts",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("model", _model(), nullable=False),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("threat", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("window_start", _time(), nullable=True),
        sa.Column("window_end", _time(), nullable=True),
        sa.Column("statistic", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("p_value", sa.Double(), nullable=True),
        sa.Column("details", _json(), nullable=False),
        sa.Column("first_seen", _time(), nullable=False),
        sa.Column("last_seen", _time(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("resolved_at", _time(), nullable=True),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name="ck_alerts_severity"),
        sa.CheckConstraint("state IN ('firing', 'resolved')", name="ck_alerts_state"),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_fingerprint", "alerts", ["fingerprint"])
    op.create_index("ix_alerts_model_last_seen", "alerts", ["model", "last_seen"])
    op.create_index("ix_alerts_state", "alerts", ["state"])
    op.create_table(
        "dead_letters",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("model", _model(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])


def downgrade() -> None:
    """Drop everything, children before parents."""
    op.drop_table("dead_letters")
    op.drop_table("alerts")
    op.drop_table("anomalies")
    op.drop_table("pending_labels")
    op.drop_table("events")
    op.drop_table("window_results")
    op.drop_table("windows")
    op.drop_table("detector_states")
    op.drop_table("references")
    op.drop_table("models")
