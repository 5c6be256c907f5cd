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
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from fixtures.clock import ManualClock
from stitcher.ads import AdInfo
from stitcher.beacons import (
    Beacon,
    BeaconQueue,
    BeaconStats,
    BeaconTracker,
    RedisProgress,
    ad_events,
    predecessors,
)
from stitcher.metrics import Metrics
from stitcher.vast import expand_macros
from tests.harness import SessionHandle
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


def _tracked_ad(base: str, duration: int = 10) -> AdInfo:
    """Ad ``ad-1`` at pod position 0, every event tracked at ``base`` (``/<event>``)."""
    return AdInfo(0, "ad-1", "c-ad-1", Fraction(duration), (f"{base}/impression",), (),
                  {e: (f"{base}/{e}",) for e in EVENTS if e != "impression"})


async def _play(tracker: BeaconTracker, ad: AdInfo, segment: int, *, session: str = "S1",
                brk: str = "brk1", nominal: Fraction = Fraction(2)) -> list[str]:
    """One ad segment request of a session, as the route makes it."""
    return await tracker.on_ad_segment(session_id=session, break_id=brk, ad=ad,
                                       segment=segment, nominal=nominal,
                                       client_ip="203.0.113.7", user_agent="player")


@pytest.mark.parametrize("progress", ["memory", "redis"])
async def test_b24_retries_and_refetches_count_once(
        tracker_endpoint: tuple[str, list[str]], progress: str, request: Any) -> None:
    base, hits = tracker_endpoint
    ad = _tracked_ad(base, 12)
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
            fired.append(await _play(tracker, ad, segment, brk="brk11", nominal=Fraction(6)))
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

    def _check(self) -> None:
        if self.down:
            from redis.exceptions import ConnectionError as RedisConnectionError

            raise RedisConnectionError("Connection closed by server.")

    async def due(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self._check()
        return await self.inner.due(*args, **kwargs)

    async def mark(self, *args: Any) -> Any:
        self._check()
        return await self.inner.mark(*args)


async def test_ad_segments_while_the_store_is_away_fire_their_beacons_once_it_is_back(
        tracker_endpoint: tuple[str, list[str]], redis_url: str) -> None:
    """Found by the drill (Redis SIGKILLed mid-break): the ad segment request raised,
    the player got a 500 and the ad's beacons never fired. Now the requests are kept
    and replayed in order once the store answers: every event exactly once, in order,
    and a request made after the store came back waits behind the deferred ones (had
    it gone first, segment 3 first would have made the session a late join)."""
    import redis.asyncio as redis

    base, hits = tracker_endpoint
    ad = _tracked_ad(base)
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        queue = BeaconQueue(http, metrics, base_backoff=0.05)
        flaky = _GoneAway(RedisProgress(client, prefix=f"away-{uuid.uuid4().hex}"))
        tracker = BeaconTracker(queue, progress=flaky, metrics=metrics,  # type: ignore[arg-type]
                                retry_every=0.05)

        async def segment(n: int) -> list[str]:
            return await _play(tracker, ad, n)

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


async def test_segment_0_kept_on_one_instance_while_another_records_later_ones_is_no_late_join(
        tracker_endpoint: tuple[str, list[str]], redis_url: str) -> None:
    """Found by the tracking fault run (Redis SIGKILLed mid-break, whole ad views
    lost): instance A kept segment 0's request while the store was away; once it was
    back, instance B recorded segments 1 and 2 of the same view first, which made it
    a late join, and A's replay of segment 0 then fired nothing. The replay revives
    the view: what is due up to segment 2 fires then, the rest as it comes, every
    event once and in firing order. A view whose first request really is past
    segment 0 stays a late join."""
    import redis.asyncio as redis

    base, hits = tracker_endpoint
    ad = _tracked_ad(base)
    client = redis.Redis.from_url(redis_url)
    prefix = f"revive-{uuid.uuid4().hex}"
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        queue = BeaconQueue(http, metrics, base_backoff=0.05)
        away = _GoneAway(RedisProgress(client, prefix=prefix))
        a = BeaconTracker(queue, progress=away, metrics=metrics,  # type: ignore[arg-type]
                          retry_every=0.05)
        b = BeaconTracker(queue, progress=RedisProgress(client, prefix=prefix))

        async def segment(tracker: BeaconTracker, n: int, session: str = "S1") -> list[str]:
            return await _play(tracker, ad, n, session=session)

        assert await segment(a, 0) == [] and a.deferred == 1  # kept: A's store is away
        assert await segment(b, 1) == [] and await segment(b, 2) == []  # late, for now
        away.down = False
        for _ in range(100):
            if a.deferred == 0:
                break
            await asyncio.sleep(0.05)
        assert a.deferred == 0
        assert await segment(b, 3) == ["thirdQuartile"]
        assert await segment(b, 4) == ["complete"]
        # A real late join (first request: segment 2, no segment 0 kept anywhere).
        assert await segment(b, 2, "S2") == [] and await segment(b, 3, "S2") == []
        assert await segment(b, 0, "S2") == [], "a seek back to the start is no revival"
        await asyncio.wait_for(queue.drain(), 10)
        for t in (a, b):
            await t.close()
        await queue.close()
    await client.aclose()
    # The fixture fails the first impression once (two hits, one delivery).
    assert Counter(hits) == Counter({**{e: 1 for e in EVENTS}, "impression": 2}), hits
    assert [h for h in hits if h != "impression"] == [e for e in EVENTS if e != "impression"]


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
    ad = _tracked_ad(base)
    client = redis.Redis.from_url(redis_url)
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        inner = BeaconQueue(http, metrics, base_backoff=0.05)
        queue = _QueueAway(inner)
        progress = _GoneAway(RedisProgress(client, prefix=f"unq-{uuid.uuid4().hex}"))
        progress.down = False
        real_mark = progress.mark

        async def mark(*args: Any) -> Any:  # recording needs the Redis that failed
            if queue.down:
                from redis.exceptions import ConnectionError as RedisConnectionError

                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
            return await real_mark(*args)

        progress.mark = mark  # type: ignore[method-assign]
        tracker = BeaconTracker(queue, progress=progress,  # type: ignore[arg-type]
                                metrics=metrics, retry_every=0.05)
        queue.down = True
        fired = await _play(tracker, ad, 0)
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


# ------------------------------------------------- joins, seeks, variant switches
@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_join_mid_ad_seek_back_and_variant_switch_fire_the_right_events(
        media: Any, assets_dir: Path, tmp_path: Path, store: str, request: Any) -> None:
    """Three sessions through one 30 s break (ad A 10 s, ad B 15 s, slate), over
    real HTTP, counted from the fixture ad server's raw log; the expected events
    come from the documented rules (``tests.harness.expected_events``), per ad:

    * joins mid-ad (first request: A's segment 2): not counted for A (a late join,
      docs/architecture.md "Beacons"), every event of B;
    * seeks back into the break (A whole, B to segment 3, then A and B's first
      segments again, then the rest of B): each event once, nothing re-fired;
    * switches variant mid-ad (A on v0 then v1, B on v1 then v0): each event once,
      in order, across the renditions.
    """
    from stitcher.app import BEACONS
    from tests.harness import event_offsets, expected_events, fill_pod, start_stack

    config: dict[str, Any] = {}
    if store == "redis":
        import redis.asyncio as redis

        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
        await client.flushdb()
        await client.aclose()
        config = {"redis_url": url}
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config=config) as stack:
        queue = stack.app[BEACONS]
        await asyncio.wait_for(queue.drain(), 30)
        joiner, seeker, switcher = [await stack.start_session() for _ in range(3)]
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        asked = len(stack.vast_requests())  # the warm-up's prefetch before
        stack.origin.insert_break(edge + 2, 30)
        v0, v1 = (await stack.stitcher_renditions())[:2]
        breaks: set[str] = set()
        for _ in range(20):  # the whole break is published (and decided)
            status, _h, body = await stack.get(joiner.media_url(v0))
            assert status == 200
            breaks |= {line.split("/")[2] for line in body.decode().splitlines()
                       if line.startswith("ad/")}
            clock.advance(2)
            await asyncio.sleep(0)
        (brk,) = breaks
        # What the ad server answered and the fill policy make of it (not the stitcher's
        # records): ad A in pod position 0, ad B in 1.
        (vast,) = stack.vast_requests()[asked:]
        durations = {a.id: Fraction(a.duration) for a in media.ads}
        placed = [vast.ads[i] for i in fill_pod([durations[a] for a in vast.ads],
                                                Fraction(30), Fraction(2))]
        assert placed == ["ad-a", "ad-b"], (vast.ads, placed)

        async def play(session: SessionHandle, steps: list[tuple[str, int, int]]) -> None:
            for rid, item, seg in steps:
                status, _h, _b = await stack.get(
                    f"{session.base}/media/ad/{rid}/{brk}/{item}/{seg}.ts")
                assert status == 302, (rid, item, seg, status)

        a_segs, b_segs = list(range(5)), list(range(8))
        await play(joiner, [(v0, 0, s) for s in a_segs[2:]] + [(v0, 1, s) for s in b_segs])
        await play(seeker, [(v0, 0, s) for s in a_segs] + [(v0, 1, s) for s in b_segs[:4]]
                   + [(v0, 0, s) for s in a_segs] + [(v0, 1, s) for s in b_segs])
        await play(switcher, [(v0, 0, s) for s in a_segs[:3]] + [(v1, 0, s) for s in a_segs[3:]]
                   + [(v1, 1, s) for s in b_segs[:4]] + [(v0, 1, s) for s in b_segs[4:]])
        await asyncio.wait_for(queue.drain(), 30)

        def owed(segments: dict[str, set[int]]) -> dict[str, list[str]]:
            return {ad: expected_events(durations[ad], Fraction(2), segs)
                    for ad, segs in segments.items()}

        expected = {
            joiner.session_id: owed({"ad-a": {2, 3, 4}, "ad-b": set(b_segs)}),
            seeker.session_id: owed({"ad-a": set(a_segs), "ad-b": set(b_segs)}),
            switcher.session_id: owed({"ad-a": set(a_segs), "ad-b": set(b_segs)}),
        }
        assert expected[joiner.session_id]["ad-a"] == []
        assert expected[seeker.session_id]["ad-b"] == list(event_offsets(durations["ad-b"]))
        for sid, per_ad in expected.items():
            hits = stack.beacon_hits(session_id=sid)
            for ad, events in per_ad.items():
                got = [h.event for h in hits if h.ad_id == ad]
                assert got == events, (sid, ad, got, events)  # once each, in order
            assert {h.ad_id for h in hits} == {ad for ad, evs in per_ad.items() if evs}
            assert all(h.status == 204 for h in hits)


class _ReplyLost:
    """Shared progress whose commands run in Redis and whose reply never arrives
    (Redis SIGKILLed after executing, before answering: redis-py raises), ``lose``
    times each."""

    def __init__(self, inner: RedisProgress, lose: int) -> None:
        self.inner, self.lose_due, self.lose_mark = inner, lose, lose

    @staticmethod
    def _lost() -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        raise RedisConnectionError("Connection closed by server.")

    async def due(self, *args: Any, **kwargs: Any) -> Any:
        result = await self.inner.due(*args, **kwargs)  # executed
        if self.lose_due > 0:
            self.lose_due -= 1
            self._lost()
        return result

    async def mark(self, *args: Any) -> Any:
        result = await self.inner.mark(*args)  # executed
        if self.lose_mark > 0:
            self.lose_mark -= 1
            self._lost()
        return result


async def test_progress_commands_that_ran_in_redis_but_lost_their_reply_lose_no_beacon(
        tracker_endpoint: tuple[str, list[str]], redis_url: str) -> None:
    """The drill's 2 lost beacons of 24,000 (Redis SIGKILLed mid-break): with progress
    recorded before queueing, a record that ran in Redis and lost its reply was
    replayed, found its events recorded and queued nothing. With the queue first and
    the record after (and the record's own reply lost too), every event still fires
    once, and a player's retry of the segment fires nothing more."""
    import redis.asyncio as redis

    base, hits = tracker_endpoint
    ad = _tracked_ad(base)
    client = redis.Redis.from_url(redis_url)
    async with aiohttp.ClientSession() as http:
        queue = BeaconQueue(http, Metrics(), base_backoff=0.05)
        progress = _ReplyLost(RedisProgress(client, prefix=f"lost-{uuid.uuid4().hex}"), 1)
        tracker = BeaconTracker(queue, progress=progress,  # type: ignore[arg-type]
                                retry_every=0.05)

        async def segment(n: int) -> list[str]:
            return await _play(tracker, ad, n)

        await segment(0)  # its progress read ran, the reply was lost: deferred
        for _ in range(100):
            if tracker.deferred == 0:
                break
            await asyncio.sleep(0.05)
        assert tracker.deferred == 0
        await segment(0)  # a player's retry of the segment
        await segment(4)
        await asyncio.wait_for(queue.drain(), 10)
        await tracker.close()
        await queue.close()
    await client.aclose()
    # Every event once (the endpoint fails the first impression, then takes the retry).
    assert Counter(hits) == Counter({**{e: 1 for e in EVENTS}, "impression": 2}), hits


# ------------------------------------------ the request path's enqueue (serving cost)
class _Recorder:
    """A beacon sink that keeps what it is given, in order (no delivery)."""

    def __init__(self) -> None:
        self.got: list[Beacon] = []
        self.stats = BeaconStats()

    async def put(self, beacon: Beacon) -> bool:
        self.got.append(beacon)
        return True

    def put_soon(self, beacon: Beacon) -> None:
        self.got.append(beacon)

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


MACROS = "cb=[CACHEBUSTING]&ts=[TIMESTAMP]&sid=[SESSIONID]&ph=[ADPLAYHEAD]&bp=[BREAKPOSITION]"


def _macro_ad(item: int, ad_id: str, duration: int) -> AdInfo:
    """Two parties on two hosts (the second with an ad server's own [token] left as is),
    every URL with the request-time macros."""
    a, b = f"http://a.example/{ad_id}", f"http://b.example/{ad_id}"
    return AdInfo(item, ad_id, f"c-{ad_id}", Fraction(duration),
                  (f"{a}/impression?{MACROS}", f"{b}/imp?{MACROS}&r=[random]"), (),
                  {"start": (f"{a}/start?{MACROS}",),
                   "firstQuartile": (f"{a}/q1?{MACROS}", f"{b}/q1?{MACROS}"),
                   "midpoint": (f"{b}/mid?{MACROS}",),
                   "complete": (f"{a}/complete?{MACROS}",)})


def _reference(ad: AdInfo, view: tuple[str, str], segments: list[int], nominal: Fraction,
               values: list[dict[str, Any]]) -> list[Beacon]:
    """What the tracker must queue for one session requesting ``segments`` in turn,
    built the plain way (every event's URLs expanded by ``expand_macros`` with that
    request's values, predecessors from ``predecessors``): the request path's
    precomputed plans must give exactly these beacons."""
    session, brk = view
    chain = predecessors(ad)
    fired: set[str] = set()
    out = []
    for segment, request in zip(segments, values, strict=True):
        for event, at in ad_events(ad):
            if at >= (segment + 1) * nominal or event in fired:
                continue
            fired.add(event)
            for url in ad.impressions if event == "impression" else ad.tracking.get(event, ()):
                before = chain[(event, url)]
                out.append(Beacon(
                    (session, brk, str(ad.item), event, url),
                    expand_macros(url, {**request, "BREAKPOSITION": 2, "SESSIONID": session,
                                        "ADPLAYHEAD": at}),
                    (("X-Device-IP", "203.0.113.7"), ("X-Device-User-Agent", "player")),
                    after=(session, brk, str(ad.item), *before) if before else None))
    return out


async def test_queued_beacons_are_expanded_once_per_request_with_its_values_in_firing_order(
        ) -> None:
    """A request's beacons carry that request's CACHEBUSTING and TIMESTAMP (one of each
    for all its URLs, the time the request was made), its session, each event's own
    ADPLAYHEAD, unknown tokens as written; they are queued in firing order, each naming
    the previous event's URL on its host; catch-up after a skip fires the skipped
    events. The same ad and segment for another session, another ad of the pod, and
    another segment cadence (the precomputed plans are per ad and segment) each give
    exactly what the plain expansion gives."""
    sink = _Recorder()
    tracker = BeaconTracker(sink)
    ad0, ad1 = _macro_ad(0, "ad-0", 12), _macro_ad(1, "ad-1", 16)
    cases = [  # (ad, session, segments requested in turn, segment seconds)
        (ad0, "S/1", [0, 1, 4, 5], Fraction(2)),  # 4: catch-up of midpoint's skip
        (ad0, "S2", [0, 2], Fraction(2)),
        (ad1, "S/1", [0, 1], Fraction(2)),
        (ad1, "S3", [0, 1], Fraction(6)),  # 6 s segments: q1 (4 s) in segment 0
    ]
    for ad, session, segments, nominal in cases:
        start = len(sink.got)
        values: list[dict[str, Any]] = []
        for segment in segments:
            before = datetime.now(UTC)
            first = len(sink.got)
            await _play(tracker, ad, segment, session=session, nominal=nominal)
            after = datetime.now(UTC)
            mine = sink.got[first:]
            queries = [parse_qs(urlsplit(b.url).query) for b in mine]
            cbs = {q["cb"][0] for q in queries}
            stamps = {q["ts"][0] for q in queries}
            assert len(cbs) <= 1 and len(stamps) <= 1, "one value per request"
            request: dict[str, Any] = {}
            if mine:
                stamp = datetime.fromisoformat(stamps.pop())
                assert before - timedelta(milliseconds=1) <= stamp <= after
                request = {"CACHEBUSTING": int(cbs.pop()), "TIMESTAMP": stamp}
            values.append(request)
        expected = _reference(ad, (session, "brk1"), segments, nominal, values)
        assert sink.got[start:] == expected
    assert "r=[random]" in sink.got[1].url and "[" not in sink.got[0].url


async def test_the_in_process_queue_delivers_each_views_events_in_firing_order(
        ) -> None:
    """40 ad views' events queued at once (each naming its predecessor, as the tracker
    queues them), four workers and eight sends per host in flight: the endpoint gets
    every view's events in firing order although each first event is answered slowly,
    and a predecessor whose first attempt fails releases its successors (order yields
    to delivery) and is retried: every beacon delivered once, none lost. (The queue
    makes the event a successor waits on only when one does wait: nothing per beacon.)"""
    hits: list[tuple[str, str]] = []
    failed: set[str] = set()

    async def track(request: web.Request) -> web.Response:
        view, event = request.match_info["view"], request.match_info["event"]
        if event == "impression":
            await asyncio.sleep(0.05)  # unordered, a successor would overtake it
        if view == "v7" and event == "start" and view not in failed:
            failed.add(view)
            return web.Response(status=500)
        hits.append((view, event))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/t/{view}/{event}", track)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/t"
    events = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
    try:
        async with aiohttp.ClientSession() as http:
            queue = BeaconQueue(http, Metrics(), base_backoff=1.0)
            for i in range(40):
                previous: tuple[str, ...] | None = None
                for e in events:
                    key = (f"v{i}", "brk1", "0", e, f"{base}/v{i}/{e}")
                    assert queue.put_nowait(Beacon(key, f"{base}/v{i}/{e}", after=previous))
                    previous = key
            assert previous is not None
            assert not queue.put_nowait(Beacon(previous, "again"))  # duplicate key
            await asyncio.wait_for(queue.drain(), 30)
            await queue.close()
    finally:
        await runner.cleanup()

    by_view: dict[str, list[str]] = {}
    for view, event in hits:
        by_view.setdefault(view, []).append(event)
    assert len(by_view) == 40 and len(hits) == 40 * len(events)
    for view, got in by_view.items():
        if view == "v7":  # its start failed once and came back after its successors
            assert got == [e for e in events if e != "start"] + ["start"], got
        else:
            assert got == list(events), (view, got)
    assert queue.stats.sent == 240 and queue.stats.failed_attempts == 1
    assert queue.stats.duplicates_suppressed == 1 and queue.stats.dead == []
    assert all(v is True for v in queue._done.values())  # no Event kept per beacon


async def test_in_process_progress_fires_each_event_once_and_forgets_the_oldest_views(
        ) -> None:
    """Progress per (session, break, pod position) as event bits: a repeated or earlier
    segment fires nothing, a later one fires what is due and not fired yet; a view
    whose first request is not segment 0 joined late and fires nothing for that ad;
    past ``max_sessions`` views the oldest is forgotten (its next request is a late
    join's: nothing fires twice)."""
    sink = _Recorder()
    tracker = BeaconTracker(sink, max_sessions=2)
    ad = _macro_ad(0, "ad-0", 12)

    async def seg(session: str, n: int, brk: str = "brk1") -> list[str]:
        return await _play(tracker, ad, n, session=session, brk=brk)

    assert await seg("A", 0) == ["impression", "creativeView", "start"]
    assert await seg("A", 0) == []
    assert await seg("A", 1) == ["firstQuartile"]  # 3 s into the ad: segment 1 (2-4 s)
    assert await seg("A", 1) == []
    assert await seg("A", 5) == ["midpoint", "thirdQuartile", "complete"]  # catch-up
    assert await seg("A", 2) == [] and await seg("A", 5) == []
    assert await seg("B", 2) == [] and tracker.late_joins == 1  # joined late
    assert await seg("B", 0) == []  # still late for this ad
    assert await seg("A", 0, "brk2") == ["impression", "creativeView", "start"]  # A evicted
    assert await seg("A", 1) == [] and tracker.late_joins == 2  # forgotten: a late join's
    impressions = [b for b in sink.got if b.key[3] == "impression"]
    assert [b.key[:2] for b in impressions] == [("A", "brk1"), ("A", "brk1"),
                                                ("A", "brk2"), ("A", "brk2")]


@pytest.mark.parametrize("size", [0, 43, 2 << 20])
async def test_a_tracker_answer_is_read_only_up_to_a_pixel_s_worth(size: int) -> None:
    """A beacon's answer is read to reuse the connection, but only up to
    MAX_TRACKER_ANSWER: past it the tracker is hung up on, unread, and the beacon
    counts as delivered by its status (it was read whole before: a tracker's
    endless or huge answer held that much memory, or the send, until the
    timeout). The tracker here sends ``size`` bytes and, past the limit, never
    ends its answer: only a reader that stops at the limit gets an outcome."""
    from stitcher.beacons import MAX_TRACKER_ANSWER, HostLimiter
    from tests.loopback import serve

    body = b"x" * size
    hits: list[str] = []

    async def pixel(request: web.Request) -> web.StreamResponse:
        hits.append(request.path_qs)
        response = web.StreamResponse()  # chunked, as a streaming tracker would
        await response.prepare(request)
        await response.write(body)
        while size > MAX_TRACKER_ANSWER and request.transport is not None and not (
                request.transport.is_closing()):
            await asyncio.sleep(0.02)  # never ends: until the client hangs up
        return response

    app = web.Application()
    app.router.add_get("/t", pixel)
    async with serve(app) as base, aiohttp.ClientSession() as http:
        limiter = HostLimiter(http, timeout=3.0)
        for n in range(2):
            outcome = await limiter.send(Beacon(("s", "b", "0", "start", str(n)),
                                                f"{base}/t?n={n}"))
            assert outcome.ok and outcome.what == "HTTP 200", outcome
    assert hits == ["/t?n=0", "/t?n=1"]
