"""Outbound fetches of untrusted URLs (ad servers, wrappers, creatives, beacons).

Only http/https; the destination is checked on the *resolved* address at
connect time (a resolver that refuses private, loopback, link-local, multicast
and reserved addresses, IPv6 and IPv4-mapped included), which also covers every
redirect since each hop connects anew; redirects, size and time are bounded.
A private host is reached only when named: a channel's ``private_ad_hosts``
(``host`` or ``host:port``, the fixture ad server on loopback, an ad server on
the operator's own network), or every one with ``allow_private_ad_hosts`` (a
development switch). A wrapper or redirect hop to any other private address,
or a name that resolves to one, is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult


class ForbiddenDestination(aiohttp.ClientError):
    """The URL's scheme or resolved address is not allowed by policy."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def parse_host(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` as (lower-case host, port or None);
    ValueError for anything else (a scheme, a path, a bad port)."""
    parts = urlsplit(f"//{entry.strip()}")
    if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in entry:
        raise ValueError(f"not a host or host:port: {entry!r}")
    return parts.hostname.lower(), parts.port  # .port raises ValueError when out of range


class PublicOnlyConnector(aiohttp.TCPConnector):
    """Checks every address it would connect to, IP literals included.

    aiohttp does not ask the resolver about a URL whose host is an IP literal
    (``http://127.0.0.1/``, ``http://[::ffff:10.0.0.1]/``), so a resolver alone
    lets those through; this is the one place every connection (and so every
    redirect hop) passes, whatever the host was spelled as. ``private_hosts``
    are the named exceptions: those hosts (on that port, when one is given) may
    be private; a name not in it that resolves to a private address is refused."""

    def __init__(self, *args: Any, private_hosts: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._private_hosts = frozenset(parse_host(h) for h in private_hosts)

    def trust(self, hosts: Iterable[str]) -> None:
        """Name more exceptions (a channel added while running)."""
        self._private_hosts |= {parse_host(h) for h in hosts}

    def trusted(self, host: str, port: int) -> bool:
        host = host.strip("[]").lower()
        return (host, port) in self._private_hosts or (host, None) in self._private_hosts

    async def _resolve_host(self, host: str, port: int, *args: Any,
                            **kwargs: Any) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, *args, **kwargs)
        if self.trusted(host, port):
            return results
        allowed = [r for r in results if is_public(r["host"])]
        if not allowed:
            raise ForbiddenDestination(f"{host} is not a public address"
                                       if host.strip("[]") in {r["host"] for r in results}
                                       else f"{host} resolves only to non-public addresses")
        return allowed


def client_session(*, allow_private: bool = False, private_hosts: Iterable[str] = (),
                   **kwargs: Any) -> aiohttp.ClientSession:
    """A session for untrusted URLs: public destinations only, plus ``private_hosts``
    (or, with ``allow_private``, every destination). It keeps no cookies: one
    session asks and beacons for every viewer and cohort, so a cookie an ad server
    or tracker set on one request would go out on everybody's later ones (found
    while measuring beacon delivery)."""
    connector = (aiohttp.TCPConnector(limit_per_host=32) if allow_private else
                 PublicOnlyConnector(private_hosts=private_hosts, limit_per_host=32))
    kwargs.setdefault("cookie_jar", aiohttp.DummyCookieJar())
    return aiohttp.ClientSession(connector=connector, **kwargs)


async def fetch_bounded(session: aiohttp.ClientSession, url: str, *, timeout: float,
                        max_bytes: int = 1 << 20, max_redirects: int = 5) -> bytes:
    """GET ``url`` within the limits; raises on any violation or non-2xx answer."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ForbiddenDestination(f"scheme not allowed: {url[:80]}")
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                           max_redirects=max_redirects) as resp:
        if resp.status >= 300:
            raise aiohttp.ClientResponseError(resp.request_info, resp.history,
                                              status=resp.status, message=resp.reason or "",
                                              headers=resp.headers)  # Retry-After
        if str(resp.url.scheme) not in ("http", "https"):
            raise ForbiddenDestination("redirected to a forbidden scheme")
        return await read_bounded(resp, max_bytes, ForbiddenDestination)


async def read_bounded(resp: aiohttp.ClientResponse, max_bytes: int,
                       error: Callable[[str], Exception]) -> bytes:
    """A response's whole body, or ``error`` as soon as it is known to exceed
    ``max_bytes`` (declared, or read so far): an upstream that answers with
    gigabytes costs that much memory, and the event loop's time, otherwise."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise error(f"response of {resp.content_length} bytes, more than {max_bytes}")
    # Read to the end (``read(n)`` returns what has arrived, up to n: a body of
    # several TCP segments would be cut short), stopping at the limit.
    body = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > max_bytes:
            raise error(f"response larger than {max_bytes} bytes")
    return bytes(body)
