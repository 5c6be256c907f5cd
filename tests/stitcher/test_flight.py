"""The cross-instance single flight (lease, fencing token, blocking wait) on a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from stitcher.flight import Flights
from stitcher.redis_store import connect
from stitcher.shared_origin import Published, SharedOrigin, published
from tests.loopback import serve

_names = itertools.count()


@pytest.fixture
async def flights(redis_url: str) -> AsyncIterator[list[Flights]]:
    """Two instances' views (two connections)."""
    clients = [connect(redis_url), connect(redis_url)]
    yield [Flights(c) for c in clients]
    for c in clients:
        await c.aclose()


async def test_follower_is_woken_by_the_result_not_a_timeout(flights: list[Flights]) -> None:
    a, b = flights
    ch, job = f"f{next(_names)}", "origin:x"
    key = a.key(ch, job)
    won = await a.acquire(ch, job, key, mode="fresh", now=100.0, lease=10)
    assert won.status == "lock" and won.token >= 1
    follower = await b.acquire(ch, job, key, mode="fresh", now=100.0, lease=10)
    assert follower.status == "wait" and 9 < follower.lease_left <= 10
    started = time.monotonic()
    waiting = asyncio.ensure_future(b.wait(ch, job, follower.after, timeout=5))
    await asyncio.sleep(0.05)
    assert await a.finish(ch, job, won.token, result_key=key, ttl=10,
                          result={"body": b"#EXTM3U\n", "fetched_at": "100.0", "interval": "1.0"})
    assert await waiting == "ok"
    assert time.monotonic() - started < 1  # woken by XADD, not by the 5 s timeout
    # Within the interval everyone takes the published record; after it, a new lease.
    fresh = await b.acquire(ch, job, key, mode="fresh", now=100.5, lease=10)
    assert fresh.status == "fresh" and fresh.record["body"] == b"#EXTM3U\n"
    later = await b.acquire(ch, job, key, mode="fresh", now=101.0, lease=10)
    assert later.status == "lock" and later.token > won.token


async def test_dead_holder_lease_expires_and_fencing_refuses_its_late_write(
        flights: list[Flights]) -> None:
    a, b = flights
    ch, job = f"f{next(_names)}", "origin:y"
    key = a.key(ch, job)
    dead = await a.acquire(ch, job, key, mode="fresh", now=5.0, lease=0.3)
    assert dead.status == "lock"
    out = await b.acquire(ch, job, key, mode="fresh", now=5.0, lease=0.3)
    assert out.status == "wait"
    assert await b.wait(ch, job, out.after, timeout=out.lease_left + 0.1) is None
    took = await b.acquire(ch, job, key, mode="fresh", now=5.0, lease=5)
    assert took.status == "lock" and took.token > dead.token
    assert await b.finish(ch, job, took.token, result_key=key, ttl=10,
                          result={"body": b"new", "fetched_at": "5.0", "interval": "1"})
    # The stalled first holder wakes up and publishes: refused, the newer result stays.
    assert not await a.finish(ch, job, dead.token, result_key=key, ttl=10,
                              result={"body": b"old", "fetched_at": "4.0", "interval": "1"})
    record = await b.acquire(ch, job, key, mode="fresh", now=5.5, lease=5)
    assert record.status == "fresh" and record.record["body"] == b"new"


async def test_a_published_failure_holds_followers_off_the_origin(flights: list[Flights]) -> None:
    a, b = flights
    ch = f"f{next(_names)}"
    sa, sb = SharedOrigin(a, ch, fetch_budget=1), SharedOrigin(b, ch, fetch_budget=1)
    url = "http://origin/live/v0.m3u8"
    won = await sa.acquire(url, now=10.0)
    assert won.status == "lock"
    assert await sa.publish(url, won.token, Published(b"#EXTM3U\n", '"e1"', None, 10.0),
                            interval=1.0, ttl=10)
    again = await sa.acquire(url, now=11.0)
    assert again.status == "lock"
    await sa.publish_error(url, again.token, at=11.0, hold=3.0, reason="timeout", ttl=10)
    held = await sb.acquire(url, now=12.0)
    assert held.status == "failed"
    assert held.record["error"] == b"timeout"
    last_good = published(held.record)  # a cold instance can still serve it, marked stale
    assert last_good is not None and last_good.body == b"#EXTM3U\n" and last_good.etag == '"e1"'
    assert (await sb.acquire(url, now=14.5)).status == "lock"  # the hold is over


async def test_a_record_published_after_the_callers_clock_read_is_fresh(
        flights: list[Flights]) -> None:
    """An instance reads its clock, then its acquire reaches Redis after another
    instance published a fetch stamped a few ms later (a busy event loop, a round
    trip): that record is fresh, not a reason to fetch the origin again (seen as two
    origin fetches 7-12 ms apart with three stitcher processes). A record stamped
    more than an interval ahead is from a clock not to be trusted: fetch."""
    a, b = flights
    ch = f"f{next(_names)}"
    sa, sb = SharedOrigin(a, ch, fetch_budget=1), SharedOrigin(b, ch, fetch_budget=1)
    url = "http://origin/live/v0.m3u8"
    won = await sa.acquire(url, now=100.0)
    assert won.status == "lock"
    assert await sa.publish(url, won.token, Published(b"#EXTM3U\n", None, None, 100.012),
                            interval=1.0, ttl=10)
    assert (await sb.acquire(url, now=100.005)).status == "fresh"
    untrusted = await sb.acquire(url, now=98.9)
    assert untrusted.status == "lock" and untrusted.token > won.token
    # Same for a published failure: it holds off a caller whose clock read came first.
    await sb.publish_error(url, untrusted.token, at=101.52, hold=3.0, reason="timeout", ttl=10)
    assert (await sa.acquire(url, now=101.51)).status == "failed"


async def test_a_renewed_lease_outlives_a_slow_job_and_lapses_soon_after_its_worker_dies(
        flights: list[Flights]) -> None:
    """Origin-fetch leases are short and renewed while the fetch runs: a slow but
    live worker keeps it (followers keep waiting, no second fetch), and one that
    died mid-fetch loses it within a lease, so a follower takes over in about a
    second and a half, not the ten a long lease held (found by the SIGKILL test:
    the survivors' playlists stalled while a dead instance's lease lived)."""
    a, b = flights
    ch, job = f"f{next(_names)}", "origin:slow"
    key = a.key(ch, job)
    won = await a.acquire(ch, job, key, mode="fresh", now=1.0, lease=0.6)
    assert won.status == "lock"
    async with a.renewed(ch, job, won.token, lease=0.6):
        await asyncio.sleep(1.5)  # two and a half leases: renewed meanwhile
        held = await b.acquire(ch, job, key, mode="fresh", now=1.0, lease=0.6)
        assert held.status == "wait" and held.lease_left > 0.2
    # Leaving the block stops the renewal (a worker dead from here on): gone within a lease.
    dead = await a.acquire(ch, job, key, mode="fresh", now=1.0, lease=0.6)
    assert dead.status == "wait"
    started = time.monotonic()
    while (await b.acquire(ch, job, key, mode="fresh", now=1.0, lease=0.6)).status != "lock":
        await asyncio.sleep(0.05)
    assert time.monotonic() - started < 0.8


async def test_a_follower_takes_over_from_a_worker_killed_mid_fetch_within_a_lease(
        flights: list[Flights], redis_url: str) -> None:
    """Through the fetcher: instance A holds the lease and never finishes (killed);
    instance B's refresh fetches the origin itself about one lease later."""
    import aiohttp
    from aiohttp import web

    from stitcher.metrics import Metrics
    from stitcher.origin import OriginFetcher
    from stitcher.shared_origin import LEASE

    body = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1\n#EXTINF:2.0,\ns1.ts\n"

    async def playlist(_request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl")

    app = web.Application()
    app.router.add_get("/v0.m3u8", playlist)
    a, b = flights
    ch = f"f{next(_names)}"
    async with serve(app) as base:
        url = f"{base}/v0.m3u8"
        victim = SharedOrigin(a, ch, fetch_budget=3.0)
        assert (await victim.acquire(url, now=time.time())).status == "lock"  # then killed
        async with aiohttp.ClientSession() as http:
            fetcher = OriginFetcher(http, Metrics(), ch, timeout=3.0, clock=time.time,
                                    shared=SharedOrigin(b, ch, fetch_budget=3.0))
            started = time.monotonic()
            got = await fetcher.get(url)
            took = time.monotonic() - started
        assert not got.stale and got.playlist.segments[-1].uri == "s1.ts"
        assert took < LEASE + 1.0 < 3.0, f"the follower waited {took:.1f} s on a dead worker"


async def test_leaving_a_renewed_lease_never_hangs_on_a_renewal_in_flight(
        flights: list[Flights]) -> None:
    """redis-py can turn the cancellation of a read into a connection error: a renewal
    cancelled mid-call must still stop, and the job's caller must not wait on it (the
    renewal swallowing the cancellation kept the fetch, and every render waiting on
    it, from ever finishing)."""
    a, _b = flights
    calls = 0

    async def renew_that_converts_cancellation(**_kw: object) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            return 0  # (a renewal that went on would stop here: not ours any more)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server.") from None
        return 1

    a._renew = renew_that_converts_cancellation  # type: ignore[assignment]

    async def job() -> None:
        async with a.renewed("ch", "origin:z", 1, lease=0.3):
            await asyncio.sleep(0.2)  # the renewal is mid-call when the job ends

    running = asyncio.ensure_future(job())
    await asyncio.wait({running}, timeout=3.0)
    assert running.done(), "the job's caller hung on the renewal"
    await asyncio.sleep(0.3)
    assert calls == 1, "the renewal went on after the job ended"
