"""Webhook subscriptions, with their secrets sealed (AES-GCM, :mod:`storage.crypto`) before they are stored.

A secret is never stored in plain text and never returned by the listing calls, whose records carry
``has_secret`` instead. Only a claimed :class:`~storage.alert_store.records.DeliveryJob` holds the sealed
secret, which the delivery worker opens (with :attr:`SubscriptionStore.secret_box`) just before it signs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import models as orm
from storage.alert_store.vocabulary import FORMATS, SEVERITIES, one_of
from storage.crypto import SECRET_KEY_ENV, SECRET_KEY_SETTING, SecretBox, SecretKeyError, resolve_box
from storage.errors import StorageError
from storage.records import require_aware
from storage.rows import record_from_row
from storage.session import EngineBound, check_name
from storage.tables import SUBSCRIPTIONS

__all__ = ["SubscriptionIn", "SubscriptionRecord", "SubscriptionStore", "active_subscriptions"]


# Bounds on what one subscription may hold: a request body is not a way to fill the database.
MAX_SECRET_CHARS = 1024
MAX_FILTER_ENTRIES = 1000
MAX_FILTER_CHARS = 256


@dataclass(frozen=True, slots=True)
class SubscriptionIn:
    """A webhook subscription to create. Empty filter lists match everything."""

    name: str
    url: str
    secret: str | None = field(default=None, repr=False)
    format: str = "native"
    models: Sequence[str] = ()
    detectors: Sequence[str] = ()
    threats: Sequence[str] = ()
    min_severity: str = "info"

    def __post_init__(self) -> None:
        check_name(self.name, "name", 128)
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be an http:// or https:// URL")
        one_of(self.format, FORMATS, "format")
        one_of(self.min_severity, SEVERITIES, "min_severity")
        if self.secret is not None and not self.secret:
            raise ValueError("secret must be non-empty when given")
        if self.secret is not None and len(self.secret) > MAX_SECRET_CHARS:
            raise ValueError(f"secret must be at most {MAX_SECRET_CHARS} characters")
        if len(self.url) > 2048:
            raise ValueError("url must be at most 2048 characters")
        for what in ("models", "detectors", "threats"):
            values = getattr(self, what)
            if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{what} must be a list of non-empty strings")
            if len(values) > MAX_FILTER_ENTRIES or any(len(v) > MAX_FILTER_CHARS for v in values):
                raise ValueError(
                    f"{what} must hold at most {MAX_FILTER_ENTRIES} entries of at most {MAX_FILTER_CHARS} "
                    "characters"
                )


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A stored subscription. The secret itself is never part of it: ``has_secret`` tells if one is set."""

    id: int
    name: str
    url: str
    format: str
    models: tuple[str, ...]
    detectors: tuple[str, ...]
    threats: tuple[str, ...]
    min_severity: str
    source: str  # "config" | "api"
    has_secret: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (lists for the filters)."""
        values = asdict(self)
        for key in ("models", "detectors", "threats"):
            values[key] = list(values[key])
        return values


class SubscriptionStore(EngineBound):
    """Subscriptions made through the API or kept in step with the configuration, and their secrets' key.

    Parameters
    ----------
    engine
        The database.
    secret_key
        Base64 of the 32-byte key that seals webhook secrets (``alerting.secret_key``). Default: the
        environment, else the key file beside a SQLite database (see :func:`storage.crypto.resolve_box`).
        Only needed, and only looked up, when a secret is written or a delivery is signed.
    """

    def __init__(self, engine: Engine, *, secret_key: str | bytes | SecretBox | None = None) -> None:
        super().__init__(engine)
        self._secret_key = secret_key
        self._box: SecretBox | None = secret_key if isinstance(secret_key, SecretBox) else None

    @property
    def secret_box(self) -> SecretBox:
        """The key that seals and opens subscription secrets; :class:`SecretKeyError` names the setting when
        there is none (PostgreSQL without ``alerting.secret_key``)."""
        if self._box is None:
            configured = None if isinstance(self._secret_key, SecretBox) else self._secret_key
            box = resolve_box(self._engine, configured)
            if box is None:
                raise SecretKeyError(
                    f"webhook secrets are stored encrypted and no key is configured for this "
                    f"{self._engine.dialect.name} database: set {SECRET_KEY_SETTING} (environment "
                    f"{SECRET_KEY_ENV}) to base64 of 32 random bytes, the same on every replica"
                )
            self._box = box
        return self._box

    def create_subscription(
        self, subscription: SubscriptionIn, now: datetime, *, source: str = "api"
    ) -> SubscriptionRecord:
        """Create a subscription; raises ValueError if an active one has the same name, and
        :class:`~storage.crypto.SecretKeyError` (a ValueError) if it has a secret and no key is configured."""
        require_aware(now, "now")
        one_of(source, ("config", "api"), "source")
        values = self._sealed_values(subscription)
        try:
            with self._transaction("creating a subscription", write=True) as session:
                new_id = session.execute(
                    insert(SUBSCRIPTIONS)
                    .values(**values, source=source, created_at=now, updated_at=now)
                    .returning(SUBSCRIPTIONS.c.id)
                ).scalar_one()
                return _subscription_record(session.get_one(orm.Subscription, int(new_id)))
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise ValueError(f"a subscription named {subscription.name!r} exists already") from None
            raise

    def subscriptions(self, *, include_deleted: bool = False) -> list[SubscriptionRecord]:
        """Subscriptions in id order (secrets masked: ``has_secret``)."""
        with self._transaction("reading subscriptions") as session:
            return _subscriptions(session, include_deleted=include_deleted)

    def subscription(self, subscription_id: int) -> SubscriptionRecord | None:
        """One subscription (deleted ones too), or None."""
        with self._transaction("reading a subscription") as session:
            row = session.get(orm.Subscription, subscription_id)
            return None if row is None else _subscription_record(row)

    def delete_subscription(self, subscription_id: int, now: datetime) -> bool:
        """Delete a subscription (kept, marked deleted, for the delivery history); False if none was active.

        Its pending deliveries are given up by the worker when it next claims them.
        """
        require_aware(now, "now")
        with self._transaction("deleting a subscription", write=True) as session:
            done = session.execute(
                update(SUBSCRIPTIONS)
                .where(SUBSCRIPTIONS.c.id == subscription_id, SUBSCRIPTIONS.c.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def sync_config_subscriptions(
        self, subscriptions: Sequence[SubscriptionIn], now: datetime
    ) -> list[SubscriptionRecord]:
        """Make the active ``config`` subscriptions exactly ``subscriptions`` (matched by name).

        Changed ones are updated in place (their id, and so their notification log, stays); ones no longer
        configured are deleted; ``api`` subscriptions are left alone, but a configured name that an ``api``
        subscription already uses is refused (ValueError).
        """
        require_aware(now, "now")
        names = [s.name for s in subscriptions]
        if len(set(names)) != len(names):
            raise ValueError("configured subscription names must be unique")
        with self._transaction("syncing configured subscriptions", write=True) as session:
            active = {
                row.name: row
                for row in session.scalars(
                    select(orm.Subscription).where(orm.Subscription.deleted_at.is_(None)).with_for_update()
                )
            }
            for sub in subscriptions:
                row = active.get(sub.name)
                if row is not None and row.source != "config":
                    raise ValueError(f"subscription name {sub.name!r} is taken by an API subscription")
                values = self._sealed_values(sub, row.secret if row is not None else None)
                if row is None:
                    session.execute(
                        insert(SUBSCRIPTIONS).values(
                            **values, source="config", created_at=now, updated_at=now
                        )
                    )
                elif any(getattr(row, k) != v for k, v in values.items()):
                    session.execute(
                        update(SUBSCRIPTIONS)
                        .where(SUBSCRIPTIONS.c.id == row.id)
                        .values(**values, updated_at=now)
                    )
            gone = [row.id for name, row in active.items() if row.source == "config" and name not in names]
            if gone:
                session.execute(
                    update(SUBSCRIPTIONS)
                    .where(SUBSCRIPTIONS.c.id.in_(gone))
                    .values(deleted_at=now, updated_at=now)
                )
            # The rows loaded above are in the session's identity map, and the UPDATEs made them stale.
            session.expire_all()
            return _subscriptions(session, include_deleted=False)

    def _sealed_values(self, sub: SubscriptionIn, stored: str | None = None) -> dict[str, Any]:
        """The row values of ``sub`` with its secret sealed; ``stored`` (the row's sealed secret) is kept when
        it holds the same secret, so that an unchanged configured subscription is not rewritten."""
        if sub.secret is None:
            return _subscription_values(sub, None)
        box = self.secret_box
        if stored is not None and box.matches(stored, sub.secret):
            return _subscription_values(sub, stored)
        return _subscription_values(sub, box.seal(sub.secret))


def active_subscriptions(session: Session) -> list[SubscriptionRecord]:
    """The subscriptions not deleted, in id order, read in ``session`` (the alert engine's transaction)."""
    return _subscriptions(session, include_deleted=False)


def _subscriptions(session: Session, *, include_deleted: bool) -> list[SubscriptionRecord]:
    stmt = select(orm.Subscription).order_by(orm.Subscription.id)
    if not include_deleted:
        stmt = stmt.where(orm.Subscription.deleted_at.is_(None))
    return [_subscription_record(s) for s in session.scalars(stmt)]


def _subscription_values(sub: SubscriptionIn, sealed_secret: str | None) -> dict[str, Any]:
    return {
        "name": sub.name,
        "url": sub.url,
        "secret": sealed_secret,
        "format": sub.format,
        "models": list(sub.models),
        "detectors": list(sub.detectors),
        "threats": list(sub.threats),
        "min_severity": sub.min_severity,
    }


def _subscription_record(s: orm.Subscription) -> SubscriptionRecord:
    return record_from_row(
        SubscriptionRecord,
        s,
        models=tuple(s.models),
        detectors=tuple(s.detectors),
        threats=tuple(s.threats),
        has_secret=bool(s.secret),
    )
