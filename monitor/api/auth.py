"""Bearer-token authorisation: ``read`` scope for GETs, ``admin`` for writes (admin tokens can also read).

With no token configured every request is allowed (the daemon then binds to loopback only, see
:func:`monitor.api.settings.check_exposure`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from enum import StrEnum

from fastapi import HTTPException, Request, status

from monitor.api.settings import ApiSettings

__all__ = ["Scope", "TokenChecker"]


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"


def _matches(presented: bytes, tokens: Sequence[str]) -> bool:
    """Whether ``presented`` equals one of ``tokens``, comparing against *every* token.

    ``hmac.compare_digest`` is constant-time per comparison; not stopping at the first match keeps the
    total time independent of which token (if any) matched.
    """
    found = False
    for token in tokens:
        found |= hmac.compare_digest(presented, token.encode())
    return found


class TokenChecker:
    """Decides what a request's bearer token allows (see :mod:`monitor.api.dependencies` for its use)."""

    def __init__(self, settings: ApiSettings) -> None:
        self._read = list(settings.read_tokens)
        self._admin = list(settings.admin_tokens)
        self.enabled = settings.auth_enabled

    def scope_of(self, authorization: str | None) -> Scope | None:
        """The scope a request's ``Authorization`` header grants (None: no valid token)."""
        if not authorization:
            return None
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            return None
        presented = token.strip().encode()
        is_admin = _matches(presented, self._admin)
        is_read = _matches(presented, self._read)
        if is_admin:
            return Scope.ADMIN
        return Scope.READ if is_read else None

    def check(self, request: Request, scope: Scope) -> None:
        """Let ``request`` through only with ``scope``: 401 for no or a bad token, 403 for a read token."""
        if not self.enabled:
            return
        granted = self.scope_of(request.headers.get("authorization"))
        if granted is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="sentinel"'},
            )
        if scope is Scope.ADMIN and granted is not Scope.ADMIN:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this endpoint needs an admin token")
