"""Webhook subscriptions: list and read them (read scope), create and delete them (admin scope).

A subscription's URL passes the SSRF guard before it is stored (and again at each delivery); its secret
is sealed at rest and never returned (``has_secret`` says whether one is set).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status

from monitor.alerting.webhook_guard import WebhookGuard
from monitor.api.dependencies import ADMIN, ADMIN_ERRORS, READ, READ_ERRORS, AlertStoreDep, GuardDep
from monitor.api.errors import body_error
from monitor.api.params import DbId
from monitor.api.schemas import ErrorOut, SubscriptionCreate, SubscriptionList, SubscriptionOut
from storage import SubscriptionIn
from storage.crypto import SecretKeyError

__all__ = ["router"]

log = logging.getLogger("sentinel.api")

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "no such active subscription"}
}

router = APIRouter(tags=["subscriptions"])


@router.get("/v1/subscriptions", response_model=SubscriptionList, dependencies=READ, responses=READ_ERRORS)
def list_subscriptions(alert_store: AlertStoreDep) -> SubscriptionList:
    """The active webhook subscriptions (secrets never shown)."""
    return SubscriptionList(items=[SubscriptionOut.of(s) for s in alert_store.subscriptions()])


@router.post(
    "/v1/subscriptions",
    response_model=SubscriptionOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=ADMIN,
    responses={**ADMIN_ERRORS, 409: {"model": ErrorOut, "description": "the name is taken"}},
)
def create_subscription(
    body: SubscriptionCreate, alert_store: AlertStoreDep, guard: GuardDep
) -> SubscriptionOut:
    """Create a webhook subscription (admin)."""
    wanted = _checked_subscription(body, guard)
    try:
        created = alert_store.create_subscription(wanted, datetime.now(UTC))
    except SecretKeyError as exc:  # no key to seal secrets with (PostgreSQL without alerting.secret_key)
        log.error("cannot store a subscription secret: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from None
    except ValueError as exc:  # an active subscription has that name
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return SubscriptionOut.of(created)


@router.get(
    "/v1/subscriptions/{subscription_id}",
    response_model=SubscriptionOut,
    dependencies=READ,
    responses={**READ_ERRORS, **_NOT_FOUND},
)
def get_subscription(subscription_id: DbId, alert_store: AlertStoreDep) -> SubscriptionOut:
    """One active subscription (secret never shown)."""
    found = alert_store.subscription(subscription_id)
    if found is None or found.deleted_at is not None:
        raise _not_found(subscription_id)
    return SubscriptionOut.of(found)


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=ADMIN,
    responses={**ADMIN_ERRORS, **_NOT_FOUND},
)
def delete_subscription(subscription_id: DbId, alert_store: AlertStoreDep) -> Response:
    """Delete a subscription (admin); its pending deliveries are given up."""
    if not alert_store.delete_subscription(subscription_id, datetime.now(UTC)):
        raise _not_found(subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _checked_subscription(body: SubscriptionCreate, guard: WebhookGuard) -> SubscriptionIn:
    """The subscription to store; a 422 on the body when the URL is unsafe or a field is refused."""
    try:
        guard.check(body.url, unresolved_ok=True)
        return SubscriptionIn(
            name=body.name or f"api-{uuid.uuid4().hex[:12]}",
            url=body.url,
            secret=body.secret,
            format=body.format,
            models=tuple(body.models),
            detectors=tuple(body.detectors),
            threats=tuple(body.threats),
            min_severity=body.min_severity,
        )
    except ValueError as exc:
        raise body_error(exc) from None


def _not_found(subscription_id: int) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND, detail=f"no active subscription with id {subscription_id}"
    )
