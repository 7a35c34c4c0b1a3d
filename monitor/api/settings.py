"""Configuration of the HTTP API: the ``api`` section of the YAML file (and ``SENTINEL_API__…``).

Example::

    api:
      host: 0.0.0.0
      port: 8080
      read_tokens: [dashboards-token]
      admin_tokens: [ops-token]

With no token configured the API is open, so the daemon then refuses to bind anywhere but loopback
unless ``allow_unauthenticated_remote: true`` says that is intended (see :func:`check_exposure`).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field

from monitor.errors import ConfigError
from monitor.settings_base import StrictSettings

__all__ = ["ApiSettings", "check_exposure", "is_loopback"]

# Surrounding whitespace would never match a header value (it is stripped there), so refuse it here.
Token = Annotated[str, Field(min_length=1, pattern=r"^\S+$")]


class ApiSettings(StrictSettings):
    """Where the API listens and who may use it (tokens are compared in constant time)."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    read_tokens: list[Token] = Field(default_factory=list, repr=False)
    admin_tokens: list[Token] = Field(default_factory=list, repr=False)
    allow_unauthenticated_remote: bool = False
    enabled: bool = True

    @property
    def auth_enabled(self) -> bool:
        """Whether requests to ``/v1`` need a bearer token."""
        return bool(self.read_tokens or self.admin_tokens)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name other than localhost may resolve to anything


def check_exposure(settings: ApiSettings) -> None:
    """Refuse (ConfigError) an API without tokens on a non-loopback address unless explicitly allowed."""
    if settings.auth_enabled or settings.allow_unauthenticated_remote or is_loopback(settings.host):
        return
    raise ConfigError(
        [
            (
                "api.host",
                f"{settings.host!r} is reachable from other machines but no api.read_tokens or "
                "api.admin_tokens are configured; configure tokens, bind to 127.0.0.1, or set "
                "api.allow_unauthenticated_remote: true",
            )
        ]
    )
