"""Beacon idempotency over a player's retries, re-fetches and the tracker's own
failures (bugs/B24, canalplus/rx-player#1828): counted from what an
independent tracking endpoint received, never from the stitcher's counters.

B24's ``requests.log`` is replayed against :class:`BeaconTracker` (both
progress stores: in process, and Redis as the service uses it with
``redis_url``) with the in-process queue delivering to a loopback tracking
endpoint that answers the first impression with 500, as ``tracker-responses.log``
has it. Expected (INDEX): one impression and one start for (S1, brk11, ad-1)
despite the 503 retry and the re-fetch after the reload; every quartile and
complete at most once; the tracker's 500 retried and counted as one delivery.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from stitcher.ads import AdInfo
from stitcher.beacons import BeaconQueue, BeaconTracker, RedisProgress
from stitcher.metrics import Metrics
from tests.manifests.test_corpus_hls import bundle_files

EVENTS = ("impression", "creativeView", "start", "firstQuartile", "midpoint",
          "thirdQuartile", "complete")


def _requests() -> list[tuple[float, str, int]]:
    """B24's requests.log: (t, path, status) of the ad segment requests."""
    rows = []
    for line in bundle_files("B24.txt")["requests.log"].splitlines():
        if line.startswith("#") or not line.strip():
            continue
        t, _method, path, status = line.split()
        if "/brk11/" in path:
            rows.append((float(t), path, int(status)))
    return rows


@pytest.fixture
async def tracker_endpoint() -> AsyncIterator[tuple[str, list[str]]]:
    """A tracking endpoint that fails the first impression with a 500 (B24)."""
    hits: list[str] = []

    async def track(request: web.Request) -> web.Response:
        event = request.match_info["event"]
        hits.append(event)
        if event == "impression" and hits.count("impression") == 1:
            return web.Response(status=500)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/t/{event}", track)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/t", hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("progress", ["memory", "redis"])
async def test_b24_retries_and_refetches_count_once(
        tracker_endpoint: tuple[str, list[str]], progress: str, request: Any) -> None:
    base, hits = tracker_endpoint
    ad = AdInfo(0, "ad-1", "c-ad-1", Fraction(12), (f"{base}/impression",), (),
                {e: (f"{base}/{e}",) for e in EVENTS if e != "impression"})
    client = None
    async with aiohttp.ClientSession() as http:
        queue = BeaconQueue(http, Metrics(), base_backoff=0.05)
        shared = None
        if progress == "redis":
            import redis.asyncio as redis

            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            shared = RedisProgress(client, prefix=f"b24-{uuid.uuid4().hex}")
        tracker = BeaconTracker(queue, progress=shared)
        fired: list[list[str]] = []
        for _t, path, status in _requests():
            segment = int(path.rsplit("seg", 1)[1].removesuffix(".ts"))
            # Worst case for the 503: progress recorded, then the response failed.
            fired.append(await tracker.on_ad_segment(
                session_id="S1", break_id="brk11", ad=ad, segment=segment,
                nominal=Fraction(6), client_ip="203.0.113.7", user_agent="player"))
        await asyncio.wait_for(queue.drain(), 10)
        await queue.close()
    if client is not None:
        await client.aclose()

    # What the tracking endpoint received: the impression twice (500, then the
    # retry's 204), every other event once; nothing for the retry or re-fetch.
    assert Counter(hits) == Counter({**{e: 1 for e in EVENTS}, "impression": 2}), hits
    assert hits.index("start") < hits.index("firstQuartile") < hits.index("midpoint") \
        < hits.index("thirdQuartile") < hits.index("complete")
    assert queue.stats.sent == len(EVENTS) and queue.stats.failed_attempts == 1
    assert queue.stats.dead == []
    # Fired on the first seg0 and the first seg1 only (retry and re-fetch fire nothing).
    assert [bool(f) for f in fired] == [True, False, True, False, False], fired


class _GoneAway:
    """Shared progress whose Redis is away while ``down`` (what redis-py raises)."""

    def __init__(self, inner: RedisProgress) -> None:
        self.inner, self.down, self.calls = inner, True, 0

    async def record(self, *args: Any) -> Any:
        self.calls += 1
        if self.down:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("Connection closed by server.")
        return await self.inner.record(*args)

    async def forget(self, *args: Any) -> Any:
        return await self.inner.forget(*args)


async def test_ad_segments_while_the_store_is_away_fire_their_beacons_once_it_is_back(
        tracker_endpoint: tuple[str, list[str]], redis_url: str) -> None:
    """Found by the drill (Redis SIGKILLed mid-break): the ad segment request raised,
    the player got a 500 and the ad's beacons never fired. Now the requests are kept
    and replayed in order once the store answers: every event exactly once, in order,
    and a request made after the store came back waits behind the deferred ones (had
    it gone first, segment 3 first would have made the session a late join)."""
    import redis.asyncio as redis

    base, hits = tracker_endpoint
    ad = AdInfo(0, "ad-1", "c-ad-1", Fraction(10), (f"{base}/impression",), (),
                {e: (f"{base}/{e}",) for e in EVENTS if e != "impression"})
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        queue = BeaconQueue(http, metrics, base_backoff=0.05)
        flaky = _GoneAway(RedisProgress(client, prefix=f"away-{uuid.uuid4().hex}"))
        tracker = BeaconTracker(queue, progress=flaky, metrics=metrics,  # type: ignore[arg-type]
                                retry_every=0.05)

        async def segment(n: int) -> list[str]:
            return await tracker.on_ad_segment(
                session_id="S1", break_id="brk1", ad=ad, segment=n, nominal=Fraction(2),
                client_ip="203.0.113.7", user_agent="player")

        for n in range(3):  # the store is away: no error for the player, nothing fired
            assert await segment(n) == []
        assert tracker.deferred == 3
        await asyncio.sleep(0.2)  # sweeps while still away: nothing lost, nothing sent
        assert tracker.deferred == 3 and hits == []
        flaky.down = False
        assert await segment(3) == [], "waits behind the deferred requests of this ad"
        for _ in range(100):
            if tracker.deferred == 0:
                break
            await asyncio.sleep(0.05)
        assert tracker.deferred == 0
        assert await segment(4) == ["complete"]
        await asyncio.wait_for(queue.drain(), 10)
        await tracker.close()
        await queue.close()
    await client.aclose()
    # Every event once (the fixture endpoint fails the first impression, then takes
    # the retry: two impression hits, one delivery).
    assert Counter(hits) == Counter({**{e: 1 for e in EVENTS}, "impression": 2}), hits
    assert metrics.registry.get_sample_value(
        "stitcher_beacons_deferred_total", {"result": "deferred"}) == 4
    assert metrics.registry.get_sample_value(
        "stitcher_beacons_deferred_total", {"result": "replayed"}) == 4


class _QueueAway:
    """The beacon queue, its Redis gone while ``down`` (progress already recorded)."""

    def __init__(self, inner: BeaconQueue) -> None:
        self.inner, self.down = inner, False
        self.stats = inner.stats

    async def put(self, beacon: Any) -> bool:
        if self.down:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await self.inner.put(beacon)

    def put_soon(self, beacon: Any) -> None:
        self.inner.put_soon(beacon)


async def test_beacons_whose_queueing_fails_after_their_progress_was_recorded_are_queued_later(
        tracker_endpoint: tuple[str, list[str]], redis_url: str) -> None:
    """Found by the drill (Redis SIGKILLed mid-break): the progress was recorded, the
    queueing failed, un-recording failed too (the same Redis), and the replayed request
    found nothing new to fire: the beacons were lost. The unqueued beacons are now kept
    and queued once the store answers."""
    import redis.asyncio as redis

    base, hits = tracker_endpoint
    ad = AdInfo(0, "ad-1", "c-ad-1", Fraction(10), (f"{base}/impression",), (),
                {e: (f"{base}/{e}",) for e in EVENTS if e != "impression"})
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        inner = BeaconQueue(http, metrics, base_backoff=0.05)
        queue = _QueueAway(inner)
        progress = _GoneAway(RedisProgress(client, prefix=f"unq-{uuid.uuid4().hex}"))
        progress.down = False
        real_forget = progress.forget

        async def forget(*args: Any) -> Any:  # un-recording needs the Redis that failed
            if queue.down:
                from redis.exceptions import ConnectionError as RedisConnectionError

                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
            return await real_forget(*args)

        progress.forget = forget  # type: ignore[method-assign]
        tracker = BeaconTracker(queue, progress=progress,  # type: ignore[arg-type]
                                metrics=metrics, retry_every=0.05)
        queue.down = True
        fired = await tracker.on_ad_segment(
            session_id="S1", break_id="brk1", ad=ad, segment=0, nominal=Fraction(2),
            client_ip="203.0.113.7", user_agent="player")
        assert set(fired) == {"impression", "creativeView", "start"}, fired
        assert tracker.deferred > 0
        await asyncio.sleep(0.2)
        assert hits == []
        queue.down = False
        for _ in range(100):
            if tracker.deferred == 0:
                break
            await asyncio.sleep(0.05)
        assert tracker.deferred == 0
        await asyncio.wait_for(inner.drain(), 10)
        await tracker.close()
        await inner.close()
    await client.aclose()
    # Segment 0 of a 10 s ad on 2 s segments: impression, creativeView, start (the
    # endpoint fails the first impression once, then takes the retry).
    assert Counter(hits) == Counter({"impression": 2, "creativeView": 1, "start": 1}), hits
