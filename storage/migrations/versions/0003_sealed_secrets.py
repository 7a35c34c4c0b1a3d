"""Webhook secrets at rest: seal the plain-text ``subscriptions.secret`` values with AES-GCM.

A data migration, no schema change: the column keeps its type and holds ``aesgcm1:...`` values from now on
(:mod:`storage.crypto`). The key is found as the store finds it: ``config.attributes["secret_key"]`` when
the caller passes one, else ``SENTINEL_ALERTING__SECRET_KEY``, else the key file beside a SQLite database
(created if needed). With plain-text secrets to seal and no key (PostgreSQL), the upgrade stops with an error
naming the setting, rather than leave secrets readable. The downgrade opens them again (0002 signs with the
stored value as it is).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from storage.crypto import SECRET_KEY_ENV, SECRET_KEY_SETTING, SecretBox, resolve_box

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUBSCRIPTIONS = sa.table("subscriptions", sa.column("id", sa.BigInteger()), sa.column("secret", sa.Text()))


def _box(action: str) -> SecretBox:
    connection = op.get_bind()
    box = resolve_box(connection.engine, context.config.attributes.get("secret_key"))
    if box is None:
        raise RuntimeError(
            f"cannot {action} webhook secrets: no key for this {connection.dialect.name} database; set "
            f"{SECRET_KEY_SETTING} (environment {SECRET_KEY_ENV}) to base64 of 32 random bytes, then migrate"
        )
    return box


def _rows(*, sealed: bool) -> list[tuple[int, str]]:
    found = op.get_bind().execute(
        sa.select(_SUBSCRIPTIONS.c.id, _SUBSCRIPTIONS.c.secret).where(_SUBSCRIPTIONS.c.secret.is_not(None))
    )
    return [(int(i), s) for i, s in found if SecretBox.is_sealed(s) == sealed]


def upgrade() -> None:
    """Seal every plain-text secret (a no-op, needing no key, when there is none)."""
    plain = _rows(sealed=False)
    if not plain:
        return
    box = _box("encrypt the stored")
    for row_id, secret in plain:
        op.get_bind().execute(
            sa.update(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == row_id).values(secret=box.seal(secret))
        )


def downgrade() -> None:
    """Open the sealed secrets again: revision 0002 reads them as plain text."""
    sealed = _rows(sealed=True)
    if not sealed:
        return
    box = _box("decrypt the stored")
    for row_id, secret in sealed:
        op.get_bind().execute(
            sa.update(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.id == row_id).values(secret=box.open(secret))
        )
