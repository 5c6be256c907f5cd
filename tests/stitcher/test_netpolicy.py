"""Outbound fetches of untrusted URLs refuse non-public destinations, however
the host is spelled: a name resolving to loopback, an IPv4 or IPv6 literal, an
IPv4-mapped IPv6 literal (found by a newcomer: IP literals skipped the resolver
and a channel without ``allow_private_ad_hosts`` fetched ``http://127.0.0.1``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from stitcher.netpolicy import ForbiddenDestination, client_session, fetch_bounded, is_public
from tests.loopback import serve


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("0.0.0.0", False), ("224.0.0.1", False), ("::1", False),
    ("fe80::1%eth0", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("::ffff:8.8.8.8", True),
])
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.fixture
async def loopback_port() -> AsyncIterator[int]:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_get("/", ok)
    async with serve(app) as base:
        yield int(base.rsplit(":", 1)[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_a_strict_session_refuses_loopback_however_spelled(loopback_port: int,
                                                                 host: str) -> None:
    url = f"http://{host}:{loopback_port}/"
    async with client_session(allow_private=False) as strict:
        with pytest.raises(ForbiddenDestination):
            await fetch_bounded(strict, url, timeout=5)
        with pytest.raises(ForbiddenDestination):  # beacons use the session directly
            async with strict.get(url):
                pass
    if host != "[::ffff:127.0.0.1]":  # (a v4-mapped literal needs an IPv6 socket)
        async with client_session(allow_private=True) as open_:
            assert await fetch_bounded(open_, url, timeout=5) == b"reached"


async def test_fetch_bounded_reads_a_body_of_many_segments_whole_and_refuses_past_the_limit(
        ) -> None:
    """``StreamReader.read(n)`` returns what has arrived (up to n): a body sent in
    pieces must still come back whole, and one past the limit must be refused (it
    was once cut at the first piece and parsed as broken XML)."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from stitcher.netpolicy import ForbiddenDestination, fetch_bounded

    piece = b"x" * 50_000

    async def slow_body(request: web.Request) -> web.StreamResponse:
        count = int(request.query["n"])
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(count):
                await response.write(piece)
                await asyncio.sleep(0.01)
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    app = web.Application()
    app.router.add_get("/body", slow_body)
    async with serve(app) as server, aiohttp.ClientSession() as http:
        base = f"{server}/body"
        body = await fetch_bounded(http, base + "?n=10", timeout=5, max_bytes=1 << 20)
        assert body == piece * 10
        with pytest.raises(ForbiddenDestination, match="larger than"):
            await fetch_bounded(http, base + "?n=30", timeout=5, max_bytes=1 << 20)


async def test_named_private_hosts_are_the_only_private_ones_reached(loopback_port: int) -> None:
    """``private_ad_hosts``: the named host (and port) is reached although private;
    the same address on another port, or under another name, is not."""
    async with client_session(private_hosts=[f"127.0.0.1:{loopback_port}"]) as named:
        assert await fetch_bounded(named, f"http://127.0.0.1:{loopback_port}/",
                                   timeout=5) == b"reached"
        for url in (f"http://localhost:{loopback_port}/",           # a name resolving to it
                    f"http://127.0.0.1:{loopback_port + 1}/",       # another port
                    f"http://[::ffff:127.0.0.1]:{loopback_port}/"):  # another spelling
            with pytest.raises(ForbiddenDestination):
                await fetch_bounded(named, url, timeout=5)
    async with client_session(private_hosts=["LOCALHOST"]) as by_name:  # any port
        assert await fetch_bounded(by_name, f"http://localhost:{loopback_port}/",
                                   timeout=5) == b"reached"
        with pytest.raises(ForbiddenDestination):
            await fetch_bounded(by_name, f"http://127.0.0.1:{loopback_port}/", timeout=5)


async def test_the_untrusted_session_sends_no_cookie_anyone_set() -> None:
    """One session asks the ad servers and sends the beacons of every viewer and
    cohort: a cookie a tracker sets on one viewer's beacon must not go out on the
    next viewer's (it did: aiohttp's default jar kept it)."""
    seen: list[str | None] = []

    async def tracker(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(status=204)
        response.set_cookie("uid", f"viewer-{len(seen)}")
        return response

    app = web.Application()
    app.router.add_get("/beacon", tracker)
    async with serve(app) as server:
        # By name: aiohttp's default jar would not keep a cookie of an IP address.
        url = server.replace("127.0.0.1", "localhost") + "/beacon"
        async with client_session(allow_private=True) as http:
            for _ in range(3):
                async with http.get(url) as resp:
                    assert resp.status == 204 and "uid" in resp.cookies
    assert seen == [None, None, None]


@pytest.mark.parametrize("entry, parsed", [
    ("127.0.0.1:8081", ("127.0.0.1", 8081)), ("ads.internal", ("ads.internal", None)),
    ("[::1]:9000", ("::1", 9000)), ("Ads.Example:80", ("ads.example", 80)),
])
def test_parse_host(entry: str, parsed: tuple[str, int | None]) -> None:
    from stitcher.netpolicy import parse_host

    assert parse_host(entry) == parsed


@pytest.mark.parametrize("entry", ["http://ads.internal", "ads.internal/vast", "host:99999",
                                   "user@host", ""])
def test_a_bad_private_ad_host_is_a_config_error_naming_it(entry: str) -> None:
    from pydantic import ValidationError

    from stitcher.config import ChannelConfig

    with pytest.raises(ValidationError) as err:
        ChannelConfig(id="c", origin_url="http://o.example/m.m3u8", private_ad_hosts=[entry])
    assert "private_ad_hosts" in str(err.value)
