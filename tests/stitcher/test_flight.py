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
