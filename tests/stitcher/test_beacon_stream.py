"""The durable beacon queue on Redis Streams (``stitcher/beacon_stream.py``).

A real ``redis-server`` (the session's, flushed per test) and the fixture ad
server as the beacon endpoint: every count below comes from the ad server's raw
hit log (every request as it arrived), never from the queue's own stats, which
are checked against it. Timings are shrunk (backoff 50-100 ms, claim idle
0.5 s) so retries and reclaims happen within a second or two.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from fixtures.adserver import AdServerConfig, BeaconHit, faults, hits
from fixtures.adserver import create_app as create_adserver
from fixtures.clock import ManualClock
from stitcher.ads import AdInfo
from stitcher.app import BEACONS
from stitcher.beacon_stream import GROUP, StreamBeaconQueue
from stitcher.beacons import Beacon, BeaconTracker, RedisProgress
from stitcher.metrics import Metrics
from tests.harness import start_stack
from tests.loopback import serve

pytestmark = pytest.mark.redis


async def _flush(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


class Sink:
    """The fixture ad server on a free port: the beacon endpoint and its raw log."""

    def __init__(self, runner: web.AppRunner, base: str) -> None:
        self.runner, self.base = runner, base

    @property
    def app(self) -> web.Application:
        return self.runner.app

    def hits(self) -> list[BeaconHit]:
        return hits(self.app)

    def per_beacon(self) -> Counter[str]:
        """Hits per beacon (path + ``session``: what identifies one beacon here)."""
        return Counter(f"{h.path}?s={h.query.get('session', [''])[0]}" for h in self.hits())

    def beacon(self, session: str, event: str, ad: str = "ad-a", cb: str = "1") -> Beacon:
        url = f"{self.base}/beacon/{ad}/{event}?session={session}&cb={cb}"
        raw = f"{self.base}/beacon/{ad}/{event}?session=[SESSIONID]&cb=[CACHEBUSTING]"
        return Beacon((session, "brk1", "0", event, raw), url,
                      (("X-Device-IP", "203.0.113.9"), ("X-Device-User-Agent", "test")))


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    runner = web.AppRunner(create_adserver(AdServerConfig()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Sink(runner, f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    from redis.asyncio import Redis

    await _flush(redis_url)
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


QueueFactory = Callable[..., StreamBeaconQueue]


@pytest.fixture
async def make_queue(redis_client: Any) -> AsyncIterator[QueueFactory]:
    """Queues (consumers) on the test's Redis with test-sized timings; closed at the end."""
    http = aiohttp.ClientSession()
    made: list[StreamBeaconQueue] = []

    def make(**kw: Any) -> StreamBeaconQueue:
        options: dict[str, Any] = {"shards": 4, "timeout": 1.0, "lease_margin": 0.2,
                                   "base_backoff": 0.05, "claim_idle": 0.5,
                                   "claim_interval": 0.1, "mover_interval": 0.05,
                                   "block": 0.1, "trim_interval": 3600.0}
        options.update(kw)
        queue = StreamBeaconQueue(redis_client, http, Metrics(), **options)
        made.append(queue)
        return queue

    try:
        yield make
    finally:
        for q in made:
            await q.close(grace=0)
        await http.close()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_every_queued_beacon_is_delivered_exactly_once(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    # A send timeout no loaded CI machine reaches against a local endpoint: a
    # timed-out send that did arrive is resent (at least once), not this test's subject.
    queue = make_queue(timeout=5.0)
    beacons = [sink.beacon(f"s{i}", event, ad)
               for i in range(25) for ad in ("ad-a", "ad-b")
               for event in ("impression", "start", "firstQuartile", "complete")]
    started = time.monotonic()
    assert all(await asyncio.gather(*(queue.put(b) for b in beacons)))
    await asyncio.wait_for(queue.drain(), 20)
    elapsed = time.monotonic() - started

    counts = sink.per_beacon()
    assert len(counts) == len(beacons) == 200
    assert set(counts.values()) == {1}, counts.most_common(3)
    # Headers travel with the entry; the URL is the one queued (macros expanded once).
    assert {h.headers.get("X-Device-IP") for h in sink.hits()} == {"203.0.113.9"}
    assert queue.stats.sent == 200 and queue.stats.queued == 200
    assert queue.stats.possible_duplicates == 0 and queue.stats.dead == []
    # Spread over the shards, all acknowledged; trimming then removes what was acked.
    # One entry per beacon: a live consumer's entries are never reclaimed while it
    # works on them (200 beacons wait behind 8 sends to one host, longer than
    # claim_idle on a loaded machine; they were once re-dispatched and re-queued
    # as retries: 203 entries). A failed attempt would be re-queued as a new entry.
    lengths = [await redis_client.xlen(queue.stream(n)) for n in range(queue.shards)]
    assert sum(lengths) == 200 + queue.stats.failed_attempts and min(lengths) > 0, lengths
    assert queue.stats.duplicates_suppressed == 0 and queue.reclaimed == 0
    await queue.trim()
    assert [await redis_client.xlen(queue.stream(n)) for n in range(queue.shards)] == [0] * 4
    assert elapsed < 10, elapsed


async def test_a_retried_put_and_a_second_instance_never_queue_twice(
        sink: Sink, make_queue: QueueFactory) -> None:
    a, b = make_queue(), make_queue()
    first = sink.beacon("s1", "start", cb="111")
    # The same (session, break, pod position, event, URL): a retried segment request
    # (macros expanded again, so another cache buster), here and on another instance.
    again = sink.beacon("s1", "start", cb="222")
    assert await a.put(first) is True
    assert await a.put(again) is False
    assert await b.put(again) is False
    other = sink.beacon("s1", "midpoint")
    assert await b.put(other) is True
    await asyncio.wait_for(a.drain(), 10)

    counts = sink.per_beacon()
    assert sorted(counts.values()) == [1, 1], counts
    starts = [h for h in sink.hits() if h.event == "start"]
    assert [h.query["cb"] for h in starts] == [["111"]], "the first queued URL is sent"
    assert a.stats.duplicates_suppressed == 1 and b.stats.duplicates_suppressed == 1


async def test_a_failing_endpoint_gets_the_beacon_after_retries_with_backoff(
        sink: Sink, make_queue: QueueFactory) -> None:
    queue = make_queue(base_backoff=0.1, max_attempts=10)
    faults(sink.app).beacon_status = 500
    await queue.put(sink.beacon("s1", "impression"))
    await _until(lambda: len(sink.hits()) >= 4)
    faults(sink.app).beacon_status = None  # the endpoint recovers
    await asyncio.wait_for(queue.drain(), 10)

    times = [h.time for h in sink.hits()]
    assert len(times) >= 5, "failed attempts, then the one that got through"
    assert queue.stats.sent == 1 and queue.stats.dead == []
    assert queue.stats.failed_attempts == len(times) - 1
    # Exponential backoff with jitter (x0.5..1.5): waits of at least 50, 100, 200 ms
    # before the 2nd, 3rd and 4th attempts.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, gaps
    assert times[3] - times[0] >= 0.35, gaps
    # Nothing left anywhere: not in a stream, not pending, not in a retry set.
    assert await queue.depth() == {"undelivered": 0, "pending": 0, "retrying": 0}


async def test_dead_letter_after_n_attempts_with_the_reason(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    queue = make_queue(max_attempts=3)
    faults(sink.app).beacon_status = 503
    doomed = sink.beacon("s1", "complete")
    await queue.put(doomed)
    await asyncio.wait_for(queue.drain(), 10)

    assert len(sink.hits()) == 3, "exactly max_attempts attempts"
    dead = await queue.dead_letters()
    assert len(dead) == 1
    assert dead[0]["url"] == doomed.url
    assert dead[0]["attempts"] == "3"
    assert dead[0]["reason"] == "gave up after 3 attempts: HTTP 503"
    assert queue.stats.dead == [(doomed.url, "gave up after 3 attempts: HTTP 503")]
    # Dead is final: queueing it again is refused, and the endpoint hears no more.
    faults(sink.app).beacon_status = None
    assert await queue.put(doomed) is False
    await asyncio.wait_for(queue.drain(), 10)
    assert len(sink.hits()) == 3


async def test_two_consumers_share_the_work_and_never_double_send(
        sink: Sink, make_queue: QueueFactory) -> None:
    # Each takes a few entries at a time (with the defaults, a consumer reading 64
    # entries per shard can hold all 300 before the other's first read on a loaded
    # machine; it keeps them, as it must, while it works through them).
    a, b = make_queue(batch=4, max_inflight=8), make_queue(batch=4, max_inflight=8)
    assert a.consumer != b.consumer
    await asyncio.gather(a._ensure_groups(), b._ensure_groups())  # both reading
    beacons = [sink.beacon(f"s{i}", e) for i in range(150) for e in ("start", "complete")]
    # Every beacon put through both instances, concurrently: one put wins.
    results = await asyncio.gather(*(q.put(x) for x in beacons for q in (a, b)))
    assert sum(results) == len(beacons)
    await asyncio.wait_for(a.drain(), 20)

    counts = sink.per_beacon()
    assert len(counts) == 300 and set(counts.values()) == {1}, counts.most_common(3)
    assert a.stats.sent + b.stats.sent == 300
    assert a.stats.sent > 0 and b.stats.sent > 0, (a.stats.sent, b.stats.sent)
    assert a.stats.possible_duplicates == b.stats.possible_duplicates == 0


async def test_a_consumer_killed_after_reading_has_its_entries_reclaimed(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    victim = make_queue()
    victim.simulate_kill = "after_read"  # reads a batch, dies before touching it
    beacons = [sink.beacon(f"s{i}", "start") for i in range(40)]
    for x in beacons:
        await victim.put(x)
    await _until(lambda: victim._killed.is_set())
    await victim.close(grace=0)
    pending = sum([(await redis_client.xpending(victim.stream(n), GROUP))["pending"]
                   for n in range(victim.shards)])
    assert pending > 0, "the dead consumer holds unacknowledged entries"
    assert sink.hits() == []

    survivor = make_queue()
    await asyncio.wait_for(survivor.drain(), 20)
    counts = sink.per_beacon()
    assert len(counts) == 40 and set(counts.values()) == {1}, counts.most_common(3)
    assert survivor.reclaimed == pending
    # Killed before it began sending: nothing it held can have been sent.
    assert survivor.stats.possible_duplicates == 0


async def test_a_kill_between_send_and_ack_is_resent_and_counted_as_possible_duplicate(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    victim = make_queue()
    victim.simulate_kill = "after_send"  # SIGKILL after the GET, before recording it
    beacons = [sink.beacon(f"s{i}", "midpoint") for i in range(20)]
    for x in beacons:
        await victim.put(x)
    await _until(lambda: victim._killed.is_set())
    await victim.close(grace=0)
    sent_by_victim = len(sink.hits())
    assert sent_by_victim >= 1

    survivor = make_queue()
    await asyncio.wait_for(survivor.drain(), 20)
    counts = sink.per_beacon()
    assert len(counts) == 20, "nothing lost"
    duplicates = sum(n - 1 for n in counts.values())
    # Every duplicate in the endpoint's log is one the queue reported, and only those.
    assert duplicates == sent_by_victim
    assert survivor.stats.possible_duplicates == duplicates
    exposition = generate_latest(survivor._metrics.registry).decode()
    assert f"stitcher_beacon_possible_duplicates_total {float(duplicates)}" in exposition
    assert survivor.reclaimed >= sent_by_victim


async def test_a_timed_out_attempt_that_reached_the_endpoint_is_counted_by_whichever_copy_sends(
        make_queue: QueueFactory, redis_client: Any) -> None:
    """Found by the drill (2,000 viewers on a loaded 2-core machine: 148 duplicates
    at the ad server, 14 reported): a beacon can have two entries, the one a live but
    slow consumer still holds and the one another consumer reclaimed from it (or a
    busy consumer's look-later copy). The reclaimer's send timed out after the
    endpoint had recorded it, its retry entry carried the "may have reached it" flag,
    and the other copy, without the flag, sent the beacon again unreported. The
    count is now kept per beacon, so whichever copy sends next reports it."""
    import json as _json

    from stitcher.beacon_stream import idempotency_hash

    log: list[str] = []

    async def track(request: web.Request) -> web.Response:
        log.append(request.query_string)
        if len(log) == 1:
            await asyncio.sleep(1.5)  # recorded, then too late for the sender
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/t", track)
    async with serve(app) as base:
        # The retry waits 2.5-7.5 s: the other copy goes first.
        queue = make_queue(timeout=0.5, base_backoff=5.0)
        beacon = Beacon(("s1", "brk1", "0", "start", f"{base}/t"), f"{base}/t?cb=1")
        await queue.put(beacon)
        await _until(lambda: queue.stats.failed_attempts == 1)
        k = idempotency_hash(beacon.key)
        # The second copy of the entry, as it was queued (attempt 1, no flag).
        await redis_client.xadd(queue.stream(queue.shard_of(beacon.key)), {
            "k": k, "key": _json.dumps(list(beacon.key)), "url": beacon.url,
            "h": "[]", "a": "1", "q": str(int(time.time() * 1000))})
        await asyncio.wait_for(queue.drain(), 20)
    assert log == ["cb=1", "cb=1"], "the timed-out attempt, then the copy's"
    assert queue.stats.sent == 1
    assert queue.stats.possible_duplicates == 1
    assert [d["k"] for d in await queue.possible_duplicates()] == [k]


async def test_trimming_keeps_every_unacknowledged_entry(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    queue = make_queue(shards=1)
    stream = queue.stream(0)
    # A consumer that reads and never acks (a dead instance, before any reclaim).
    # Killed by simulation right after its read: a live queue closed at once could
    # still send (and ack) the entry first on a fast turn of its read loop.
    queue.simulate_kill = "after_read"
    await queue.put(sink.beacon("held", "start"))
    await _until(lambda: queue._killed.is_set())
    await queue.close(grace=0)
    assert (await redis_client.xpending(stream, GROUP))["pending"] == 1
    held = await redis_client.xrange(stream)
    assert len(held) == 1

    live = make_queue(shards=1, claim_idle=3600)
    for i in range(10):
        await live.put(sink.beacon(f"s{i}", "start"))
    await _until(lambda: live.stats.sent == 10)
    await live.trim()
    left = await redis_client.xrange(stream)
    assert [e[0] for e in left][:1] == [held[0][0]], "the unacked entry survives"
    assert len(left) == 11, "nothing at or above the smallest pending id is trimmed"
    # Once reclaimed and acknowledged, trimming takes everything.
    reclaimer = make_queue(shards=1, claim_idle=0.2)
    await asyncio.wait_for(reclaimer.drain(), 10)
    await reclaimer.trim()
    assert await redis_client.xlen(stream) == 0
    assert sink.per_beacon()["/beacon/ad-a/start?s=held"] == 1


# ------------------------------------------------------------------ end to end
async def test_two_instances_with_redis_fire_each_beacon_once(
        media: Any, assets_dir: Path, tmp_path: Path, redis_url: str) -> None:
    """Players whose ad segment requests alternate between two stitcher instances
    (and retry some on the other one) fire every event of every ad once, by the
    fixture ad server's raw log."""
    await _flush(redis_url)
    clock = ManualClock(start=1_840_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, instances=2,
                           stitcher_config={"redis_url": redis_url}) as stack:
        assert isinstance(stack.app[BEACONS], StreamBeaconQueue)
        await stack.app[BEACONS].drain()
        hits_before = len(stack.beacon_hits())  # warm-up may have reported errors
        sessions = [await stack.start_session(i % 2) for i in range(6)]
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        stack.origin.insert_break(edge + 2, 30)
        renditions = await stack.stitcher_renditions()
        rid = renditions[0]
        turn = 0
        fetched: dict[str, set[str]] = {s.session_id: set() for s in sessions}
        started = time.monotonic()
        for _step in range(24):
            for s in sessions:
                status, _h, body = await stack.get(stack.on_instance(s.media_url(rid), turn % 2))
                assert status == 200, body
                for line in body.decode().splitlines():
                    if not line.startswith("ad/") or not line.endswith(".ts") \
                            or line in fetched[s.session_id]:
                        continue
                    fetched[s.session_id].add(line)
                    url = f"{s.base}/media/{line}"
                    turn += 1
                    status, _h, _b = await stack.get(stack.on_instance(url, turn % 2))
                    assert status == 302
                    if turn % 3 == 0:  # a player retry, landing on the other instance
                        status, _h, _b = await stack.get(stack.on_instance(url, (turn + 1) % 2))
                        assert status == 302
            clock.advance(2)
            await asyncio.sleep(0)
        await asyncio.wait_for(stack.app[BEACONS].drain(), 30)
        elapsed = time.monotonic() - started

        hits_after = stack.beacon_hits()[hits_before:]
        per_session: dict[str, Counter[tuple[str, str]]] = {}
        for s in sessions:
            mine = [h for h in hits_after if h.query.get("session") == [s.session_id]]
            per_session[s.session_id] = Counter((h.ad_id, h.event) for h in mine)
        ads = {ad for c in per_session.values() for ad, _e in c}
        assert ads == {a.id for a in media.ads}, ads
        events = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile",
                  "complete")
        expected = Counter({(ad, e): 1 for ad in ads for e in events})
        for sid, got in per_session.items():
            assert got == expected, (sid, got)
        ours = [h for h in hits_after
                if h.query.get("session", [""])[0] in per_session]
        assert len(ours) == len(sessions) * len(expected)
        # One queue shared by both instances: what they sent covers every hit.
        sent = [stack.stitcher_runners[i].app[BEACONS].stats.sent for i in range(2)]
        assert sum(sent) >= len(ours), sent
        assert elapsed < 60, elapsed


# ------------------------------------------------- kills, restarts, timeouts, order
def _ad(base: str) -> AdInfo:
    events = ("start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
    return AdInfo(0, "ad-a", "c-ad-a", Fraction(10),
                  (f"{base}/beacon/ad-a/impression?session=[SESSIONID]",), (),
                  {e: (f"{base}/beacon/ad-a/{e}?session=[SESSIONID]",) for e in events})


async def test_a_stitcher_killed_between_queueing_and_recording_loses_nothing(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    """The instance handling segment 0 dies after queueing the impression (nothing
    after it runs: no clean-up); the player retries segment 0 on another instance,
    then plays on. Every event reaches the endpoint once: progress is recorded only
    after queueing (recorded first, the retry found the events fired: lost)."""
    queue = make_queue()
    progress = RedisProgress(redis_client, prefix="killed-between")
    ad = _ad(sink.base)

    class DiesAfterOnePut:
        stats = queue.stats

        def __init__(self) -> None:
            self.puts = 0

        async def put(self, beacon: Beacon) -> bool:
            self.puts += 1
            if self.puts > 1:
                raise asyncio.CancelledError  # SIGKILL: no except clause runs
            return await queue.put(beacon)

    args = {"session_id": "S1", "break_id": "b1", "ad": ad, "nominal": Fraction(2),
            "client_ip": "203.0.113.9", "user_agent": "player"}
    dying = BeaconTracker(DiesAfterOnePut(), progress=progress)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await dying.on_ad_segment(segment=0, **args)
    survivor = BeaconTracker(queue, progress=progress)
    fired = [await survivor.on_ad_segment(segment=seg, **args) for seg in (0, 1, 2, 3, 4)]
    await asyncio.wait_for(queue.drain(), 20)

    assert fired[0] == ["impression", "creativeView", "start"], fired
    got = [h.event for h in sink.hits()]
    assert got == ["impression", "start", "firstQuartile", "midpoint", "thirdQuartile",
                   "complete"], got
    assert queue.stats.duplicates_suppressed == 1  # the retry's impression: queued already


async def test_a_redis_restarted_empty_gets_its_groups_back(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    """Redis came back without its data (no append-only file): the consumers' reads
    answer NOGROUP; they create the groups again and deliver what is queued next."""
    queue = make_queue()
    await queue.put(sink.beacon("s1", "start"))
    await asyncio.wait_for(queue.drain(), 10)
    await redis_client.flushall()
    await asyncio.sleep(0.3)  # the read loops hit NOGROUP
    await queue.put(sink.beacon("s2", "start"))
    await asyncio.wait_for(queue.drain(), 10)
    assert sorted(sink.per_beacon()) == ["/beacon/ad-a/start?s=s1", "/beacon/ad-a/start?s=s2"]
    assert queue.stats.sent == 2


async def test_a_resend_after_a_timeout_is_reported_as_a_possible_duplicate(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    """A tracker that counts the request but answers after the send timeout: the
    retry is a duplicate at the endpoint, and the queue reports exactly which one."""
    queue = make_queue(timeout=0.3, lease_margin=0.2, claim_idle=2.0)
    faults(sink.app).beacon_hang = 0.8
    slow = sink.beacon("s1", "impression")
    await queue.put(slow)
    await _until(lambda: len(sink.hits()) == 1)
    faults(sink.app).beacon_hang = 0.0
    await asyncio.wait_for(queue.drain(), 10)

    assert sink.per_beacon() == {"/beacon/ad-a/impression?s=s1": 2}
    reported = await queue.possible_duplicates()
    assert [d["url"] for d in reported] == [slow.url]
    assert queue.stats.possible_duplicates == 1 and queue.stats.sent == 1


async def test_a_copy_of_an_attempt_that_failed_meanwhile_is_not_sent_again(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    """A second copy of an entry (a look-later copy made while its attempt was under
    way, or one reclaimed from a slow consumer) that comes up after the attempt
    failed and its successor was queued is superseded: sent again, it was a hit too
    many and, on a tracker that counts it, a duplicate nobody reported (found by the
    tracking fault run: 7 hits on a tracker that gets 6 attempts, none reported)."""
    queue = make_queue(shards=1, max_attempts=2, base_backoff=3.0)
    faults(sink.app).beacon_status = 503
    doomed = sink.beacon("s1", "complete")
    await queue.put(doomed)
    [(_id, fields)] = await redis_client.xrange(queue.stream(0))
    k = fields[b"k"].decode()
    await _until(lambda: len(sink.hits()) == 1)
    while not await redis_client.exists(queue._marker(0, "failed", k)):
        await asyncio.sleep(0.02)  # attempt 1 failed; attempt 2 waits out its backoff
    await redis_client.xadd(queue.stream(0), fields)  # the copy of attempt 1
    await _until(lambda: queue.stats.duplicates_suppressed == 1)
    await asyncio.wait_for(queue.drain(), 15)
    assert len(sink.hits()) == 2, "exactly max_attempts attempts (the copy sent none)"
    assert [d["attempts"] for d in await queue.dead_letters()] == ["2"]
    assert queue.stats.possible_duplicates == 0


async def test_each_tracker_hears_an_ad_views_events_in_firing_order(
        sink: Sink, make_queue: QueueFactory, redis_client: Any) -> None:
    """Two consumers, eight sends in flight per host each: 40 ad views' events (each
    naming its predecessor, as the tracker queues them) reach the endpoint in firing
    order per view, though they were all queued at once."""
    a, b = make_queue(batch=8), make_queue(batch=8)
    await asyncio.gather(a._ensure_groups(), b._ensure_groups())
    events = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
    beacons = []
    for i in range(40):
        previous = None
        for e in events:
            x = sink.beacon(f"s{i}", e)
            beacons.append(Beacon(x.key, x.url, x.headers, after=previous))
            previous = x.key
    for i, x in enumerate(beacons):
        await (a if i % 2 else b).put(x)
    await asyncio.wait_for(a.drain(), 30)

    by_view: dict[str, list[str]] = {}
    for h in sink.hits():
        by_view.setdefault(h.query["session"][0], []).append(h.event)
    assert len(by_view) == 40
    assert all(got == list(events) for got in by_view.values()), by_view
    assert a.stats.sent > 0 and b.stats.sent > 0
