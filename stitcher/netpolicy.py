"""Outbound fetches of untrusted URLs (ad servers, wrappers, creatives, beacons).

Only http/https; the destination is checked on the *resolved* address at
connect time (a resolver that refuses private, loopback, link-local, multicast
and reserved addresses, IPv6 and IPv4-mapped included), which also covers every
redirect since each hop connects anew; redirects, size and time are bounded.
Fixture ad servers on loopback are allowed only by an explicit config flag.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver


class ForbiddenDestination(aiohttp.ClientError):
    """The URL's scheme or resolved address is not allowed by policy."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


class PublicOnlyResolver(AbstractResolver):
    """Resolves like the default resolver, then drops non-public addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if is_public(r["host"])]
        if not allowed:
            raise ForbiddenDestination(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class PublicOnlyConnector(aiohttp.TCPConnector):
    """Checks every address it would connect to, IP literals included.

    aiohttp does not ask the resolver about a URL whose host is an IP literal
    (``http://127.0.0.1/``, ``http://[::ffff:10.0.0.1]/``), so the resolver alone
    lets those through; this is the one place every connection (and so every
    redirect hop) passes, whatever the host was spelled as."""

    async def _resolve_host(self, host: str, port: int, *args: Any,
                            **kwargs: Any) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, *args, **kwargs)
        allowed = [r for r in results if is_public(r["host"])]
        if not allowed:
            raise ForbiddenDestination(f"{host} is not a public address")
        return allowed


def client_session(*, allow_private: bool, **kwargs: Any) -> aiohttp.ClientSession:
    connector = (aiohttp.TCPConnector(limit_per_host=32) if allow_private else
                 PublicOnlyConnector(resolver=PublicOnlyResolver(), limit_per_host=32))
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
        if resp.content_length is not None and resp.content_length > max_bytes:
            raise ForbiddenDestination(f"response of {resp.content_length} bytes, "
                                       f"more than {max_bytes}")
        # Read to the end (``read(n)`` returns what has arrived, up to n: a body of
        # several TCP segments would be cut short), stopping at the limit.
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > max_bytes:
                raise ForbiddenDestination(f"response larger than {max_bytes} bytes")
        return bytes(body)
