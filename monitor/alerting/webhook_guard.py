"""The SSRF guard for webhook URLs: :class:`WebhookGuard` refuses addresses inside the deployment's networks.

Whoever may create a subscription must not be able to make Sentinel send requests into the network it runs in
(a cloud metadata service, an admin port on loopback, a database on a private range). Before each attempt the
URL's host is resolved, every address is checked (private RFC 1918, loopback, link-local incl.
169.254.169.254, unique-local IPv6, unspecified, CGNAT, multicast, reserved: refused unless allowed in
``alerting.delivery``), and the request is sent to the address that was checked
(:meth:`WebhookTarget.pinned_url`), with the original ``Host`` header and TLS server name: a DNS answer that
changes between the check and the connection (rebinding) cannot redirect it.

The API checks a URL when a subscription is created (``unresolved_ok``: DNS may not know the name yet); the
delivery worker checks it again at every attempt.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from monitor.alerting.settings import DeliverySettings

__all__ = [
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "UnsafeWebhookUrl",
    "WebhookGuard",
    "WebhookTarget",
    "address_class",
    "resolve_host",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[IPAddress]]

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): someone's internal network
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))


class UnsafeWebhookUrl(ValueError):
    """A webhook URL that the SSRF guard refuses; the message says which address and why."""


def address_class(address: IPAddress) -> str | None:
    """Why a webhook may not be sent to ``address`` by default (None: a globally routable address).

    IPv4 addresses embedded in IPv6 (``::ffff:10.0.0.1``, 6to4 ``2002:a00:1::``) are judged as the IPv4
    address they carry, since that is where the packets end up.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return address_class(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address in _METADATA:
        return "the cloud metadata service"
    if address.is_link_local:
        return "link-local"
    if any(address in network for network in _RFC1918):
        return "private (RFC 1918)"
    if address in _UNIQUE_LOCAL:
        return "unique-local IPv6"
    if address in _SHARED:
        return "shared address space (RFC 6598)"
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        return "not globally routable (reserved or special-purpose)"
    return None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``), in the resolver's order, once each."""
    found: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"): the zone is not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL checked by :class:`WebhookGuard`: the address to connect to and how to present it."""

    url: httpx.URL
    address: IPAddress

    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address (the connection goes exactly there)."""
        return self.url.copy_with(host=str(self.address))

    @property
    def host_header(self) -> str:
        """The ``Host`` header of the original URL (with the port when the URL names one)."""
        return self.url.netloc.decode("ascii").rpartition("@")[2]


@dataclass(frozen=True)
class WebhookGuard:
    """Refuses webhook URLs whose host is, or resolves to, an address inside the deployment's networks.

    Parameters
    ----------
    allow_private
        Let every address through (development and test benches only).
    allowed_networks
        Networks let through although not globally routable, e.g. ``10.20.0.0/16`` for an internal receiver.
    resolve
        Host name to addresses; default :func:`resolve_host` (``socket.getaddrinfo``).

    Examples
    --------
    >>> guard = WebhookGuard(resolve=lambda host, port: [ipaddress.ip_address("169.254.169.254")])
    >>> try:
    ...     guard.check("http://metadata.internal/latest")
    ... except UnsafeWebhookUrl as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    webhook host 'metadata.internal' resolves to 169.254.169.254, the cloud metadata service; ...
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolve: Resolver = resolve_host

    @classmethod
    def from_settings(cls, settings: DeliverySettings, resolve: Resolver | None = None) -> WebhookGuard:
        """The guard that ``alerting.delivery`` configures."""
        return cls(
            allow_private=settings.allow_private_addresses,
            allowed_networks=tuple(settings.allowed_networks),
            resolve=resolve or resolve_host,
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused under this policy (None: allowed)."""
        if self.allow_private:
            return None
        kind = address_class(address)
        if kind is None or any(address in network for network in self.allowed_networks):
            return None
        return kind

    def check(self, url: str, *, unresolved_ok: bool = False) -> WebhookTarget | None:
        """The checked target of ``url``; :class:`UnsafeWebhookUrl` if any address it resolves to is refused.

        Every address counts, not just the first: a name with one public and one private address could be
        connected to either. A host that does not resolve raises ``socket.gaierror`` (a delivery retries),
        or, with ``unresolved_ok`` (subscription time: DNS may not know the name yet), returns None; it is
        checked again at every delivery.
        """
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UnsafeWebhookUrl(f"webhook URL is not valid: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UnsafeWebhookUrl("webhook URL must be http:// or https:// with a host")
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses: Sequence[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = self.resolve(host, port)
            except (socket.gaierror, UnicodeError):
                if unresolved_ok:
                    return None
                raise
        if not addresses:
            raise socket.gaierror(f"{host!r} resolved to no address")
        for address in addresses:
            kind = self.refusal(address)
            if kind is not None:
                where = (
                    f"webhook address {host} is {kind}"
                    if str(address) == host
                    else f"webhook host {host!r} resolves to {address}, {kind}"
                )
                raise UnsafeWebhookUrl(f"{where}; allow it in alerting.delivery.allowed_networks if intended")
        return WebhookTarget(parsed, addresses[0])
