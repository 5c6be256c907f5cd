"""Server-side beacons: fired when a session requests ad segments.

Impression and start fire on an ad's first segment; each quartile on the
segment that contains it; complete on the segment holding the ad's last frame.
A request that skips ahead fires the skipped events first, in order (catch-up).
A session whose first request for an ad is not its first segment joined late
and is not counted for that ad (MediaTailor's rule). An ad cut by an early
CUE-IN never has its last segment requested, so ``complete`` never fires.

Delivery: an in-process queue with retries, exponential backoff with jitter,
a per-host concurrency limit and dead-lettering (:class:`BeaconQueue`, the
embedded default), or the durable Redis Streams queue of
:mod:`stitcher.beacon_stream` when Redis is configured; both are a
:class:`BeaconSink`. The idempotency key is (session, break, pod position,
event, URL); macros are expanded once, when a beacon is queued, so retries
send identical URLs. With Redis, session progress lives there too
(:class:`RedisProgress`), so a session's ad segment requests may land on any
instance and each event still fires once.

Progress is recorded only once the beacons are queued: an instance killed in
between leaves the events unrecorded, so the player's retry (on any instance)
queues them again, and the queue's idempotency key makes that a no-op for what
did get queued. (Recording first lost them: the retry found them fired.)

Order: each beacon names its predecessor (:attr:`Beacon.after`: the previous
event of the same ad view with a URL on the same host), and both queues hold a
beacon back until its predecessor is delivered or dead, for at most
``ORDER_WAIT`` seconds, so one tracker sees an ad's events in firing order even
when several consumers send concurrently. A predecessor that fails an attempt
releases its successors at once: order yields to delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from stitcher import vast
from stitcher.ads import AdInfo
from stitcher.metrics import Metrics, _Count
from stitcher.netpolicy import read_bounded
from stitcher.store import STORE_ERRORS

log = logging.getLogger(__name__)

#: The progress of a session that joined an ad late (every event's bit set: none fires).
LATE = -1
_EPS = Fraction(1, 1000)
#: Seconds at most a beacon waits for its predecessor's delivery (one that fails an
#: attempt releases it at once): longer than a backlog under load or a reclaim.
ORDER_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class Beacon:
    #: The idempotency key: (session, break, pod position, event, URL as in the VAST).
    key: tuple[str, ...]
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    #: The key of the beacon that must reach its host first (None: no predecessor).
    after: tuple[str, ...] | None = None


#: A :class:`Beacon`'s fields (key, URL, headers, predecessor), as the in-process
#: queue takes them (:meth:`BeaconQueue.put_fields`).
_BeaconFields = tuple[tuple[str, ...], str, tuple[tuple[str, str], ...], tuple[str, ...] | None]


@dataclass
class BeaconStats:
    sent: int = 0
    failed_attempts: int = 0
    dead: list[tuple[str, str]] = field(default_factory=list)
    duplicates_suppressed: int = 0
    queued: int = 0
    #: Beacons sent again after a consumer died between sending and recording
    #: (the one window no queue can close): each may be a duplicate at the endpoint.
    possible_duplicates: int = 0


class BeaconSink(Protocol):
    """What the tracker queues into: :class:`BeaconQueue` (in-process) or
    :class:`stitcher.beacon_stream.StreamBeaconQueue` (Redis Streams)."""

    stats: BeaconStats

    async def put(self, beacon: Beacon) -> bool:
        """Queue ``beacon`` (durably, for the stream queue, when this returns);
        False: a beacon with the same idempotency key was queued before."""
        ...

    def put_soon(self, beacon: Beacon) -> None:
        """``put`` from synchronous code (fire and forget; ``drain`` waits for it)."""
        ...

    async def drain(self) -> None:
        """Until every queued beacon is sent or dead-lettered."""
        ...

    async def close(self) -> None: ...


#: The most of a tracker's answer read (a pixel or a short text); past it the
#: connection is closed unread.
MAX_TRACKER_ANSWER = 64 << 10


class TrackerAnswerTooLarge(Exception):
    """A tracker answered with more than :data:`MAX_TRACKER_ANSWER` bytes."""


class Outcome(NamedTuple):
    """One send attempt. ``reached``: a failed attempt the endpoint may have counted
    all the same (a timeout, or a connection cut after the request went out; an
    error status is an answer that it did not): the next attempt is a possible
    duplicate, counted and reported like a consumer's death mid-send."""

    ok: bool
    what: str
    reached: bool = False


class HostLimiter:
    """One GET per beacon under a per-host concurrency limit and a total timeout."""

    def __init__(self, session: aiohttp.ClientSession, *, per_host: int = 8,
                 timeout: float = 5.0) -> None:
        self._session = session
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._per_host = per_host
        self.timeout = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)  # (made once, not per send)

    def slot(self, url: str) -> asyncio.Semaphore:
        """The per-host limit ``url`` sends under (``async with``)."""
        host = urlsplit(url).netloc
        found = self._hosts.get(host)
        if found is None:
            found = self._hosts[host] = asyncio.Semaphore(self._per_host)
        return found

    async def send(self, beacon: Beacon, *, limited: bool = True) -> Outcome:
        """What happened: 5xx, 429, timeouts and connection errors fail.
        ``limited=False``: the caller holds :meth:`slot` already."""
        if limited:
            async with self.slot(beacon.url):
                return await self.send(beacon, limited=False)
        try:
            async with self._session.get(beacon.url, headers=dict(beacon.headers),
                                         timeout=self._timeout) as resp:
                # Read to reuse the connection, unless the tracker sends more than any
                # pixel: then the connection is closed, unread (a tracker answering
                # with gigabytes would otherwise cost that much memory).
                with contextlib.suppress(TrackerAnswerTooLarge):
                    await read_bounded(resp, MAX_TRACKER_ANSWER, TrackerAnswerTooLarge)
                ok = resp.status < 500 and resp.status != 429
                return Outcome(ok, f"HTTP {resp.status}")
        except TimeoutError:
            host = urlsplit(beacon.url).netloc
            log.info("beacon to %s timed out", host)
            return Outcome(False, f"timeout after {self.timeout:g} s", reached=True)
        except aiohttp.ClientConnectorError as exc:  # no connection: never reached it
            host = urlsplit(beacon.url).netloc
            log.info("beacon to %s failed: %s", host, exc)
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:200], reached=False)
        except aiohttp.ClientError as exc:
            host = urlsplit(beacon.url).netloc
            log.info("beacon to %s failed: %s", host, exc)
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:200], reached=True)


def ad_events(ad: AdInfo) -> list[tuple[str, Fraction]]:
    """(event, time into the ad) in firing order (VAST 4.3 linear tracking events)."""
    d = ad.duration
    events: list[tuple[str, Fraction]] = [("impression", Fraction(0)), ("creativeView", Fraction(0)),
                                          ("start", Fraction(0))]
    quartiles = [("firstQuartile", d / 4), ("midpoint", d / 2), ("thirdQuartile", 3 * d / 4)]
    progress = [(name, Fraction(name.partition("@")[2])) for name in ad.tracking
                if name.startswith("progress@")]
    events += sorted(quartiles + progress, key=lambda e: e[1])
    events.append(("complete", d - _EPS))
    return events


_Entry = tuple[tuple[str, ...], str, tuple[tuple[str, str], ...], tuple[str, ...] | None, int]


class BeaconQueue:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, *,
                 workers: int = 4, per_host: int = 8, max_attempts: int = 5,
                 timeout: float = 5.0, base_backoff: float = 0.5,
                 max_backoff: float = 300.0) -> None:
        self._sender = HostLimiter(session, per_host=per_host, timeout=timeout)
        self._metrics = metrics
        #: (key, url, headers, after, attempt): a beacon's fields in a plain tuple of
        #: strings, which the garbage collector stops tracking (a dataclass instance it
        #: walks in every full collection: with a break's backlog queued, those doubled
        #: the enqueue's cost).
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        #: Keys whose last failed attempt may have reached the endpoint.
        self._maybe_reached: set[tuple[str, ...]] = set()
        #: Every key queued (dedupe), with what its successor waits for: True once it
        #: is sent, dead or has failed an attempt; before that None, or the event a
        #: waiting successor made (one Event per beacon would be most of the enqueue's
        #: cost and of this map's memory, and few beacons ever have a successor waiting).
        self._done: OrderedDict[tuple[str, ...], asyncio.Event | bool | None] = OrderedDict()
        self.order_wait = ORDER_WAIT
        self._max_attempts = max_attempts
        self._backoff = base_backoff
        self._max_backoff = max_backoff
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(workers)]
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = BeaconStats()
        self._queued: _Count | None = None
        # Read at scrape, not set per beacon (the gauge takes a lock on every set).
        metrics.beacon_queue.set_function(lambda: self._pending)

    async def put(self, beacon: Beacon) -> bool:
        return self.put_nowait(beacon)

    def put_soon(self, beacon: Beacon) -> None:
        self.put_nowait(beacon)

    def put_nowait(self, beacon: Beacon) -> bool:
        return self.put_fields(beacon.key, beacon.url, beacon.headers, beacon.after)

    def put_fields(self, key: tuple[str, ...], url: str, headers: tuple[tuple[str, str], ...],
                   after: tuple[str, ...] | None) -> bool:
        """:meth:`put_nowait` of ``Beacon(key, url, headers, after)``, without making
        the Beacon (a frozen dataclass: a microsecond each, for a tuple of its fields)."""
        done = self._done
        if key in done:
            self.stats.duplicates_suppressed += 1
            self._metrics.beacons.labels("suppressed").inc()
            return False
        self.stats.queued += 1
        queued = self._queued
        if queued is None:  # (looked up on the first: a label never used is not exported)
            queued = self._queued = self._metrics.beacons.labels("queued")
        queued.value += 1
        done[key] = None
        while len(done) > 500_000:
            done.popitem(last=False)
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait((key, url, headers, after, 1))
        return True

    async def drain(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _after_predecessor(self, beacon: Beacon) -> None:
        """Wait (bounded) for the predecessor queued before it (FIFO: a worker has it)
        to be sent, dead, or to fail an attempt (order yields to delivery)."""
        if beacon.after is None:
            return
        before = self._done.get(beacon.after, True)  # forgotten: long done
        if not isinstance(before, asyncio.Event):
            if before is not None:  # released
                return
            before = self._done[beacon.after] = asyncio.Event()  # the first to wait
        try:
            await asyncio.wait_for(before.wait(), self.order_wait)
        except TimeoutError:
            pass

    async def _work(self) -> None:
        while True:
            key, url, headers, after, attempt = await self._queue.get()
            beacon = Beacon(key, url, headers, after)
            await self._after_predecessor(beacon)
            if beacon.key in self._maybe_reached:
                self._maybe_reached.discard(beacon.key)
                self.stats.possible_duplicates += 1
                self._metrics.beacon_possible_duplicates.inc()
            ok, what, reached = await self._sender.send(beacon)
            if reached:
                self._maybe_reached.add(beacon.key)
            if ok:
                self.stats.sent += 1
                self._metrics.beacons.labels("sent").inc()
                self._finish(beacon)
            elif attempt >= self._max_attempts:
                self.stats.dead.append((beacon.url, f"gave up after {attempt} attempts: {what}"))
                self._metrics.beacons.labels("dead").inc()
                self._finish(beacon)
            else:
                self.stats.failed_attempts += 1
                self._metrics.beacons.labels("retry").inc()
                self._release(beacon)
                delay = min(self._max_backoff,
                            self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
                asyncio.get_running_loop().call_later(
                    delay, self._queue.put_nowait, (key, url, headers, after, attempt + 1))

    def _release(self, beacon: Beacon) -> None:
        done = self._done.get(beacon.key)
        if isinstance(done, asyncio.Event):
            done.set()
        if beacon.key in self._done:
            self._done[beacon.key] = True  # (keeps its place in the eviction order)

    def _finish(self, beacon: Beacon) -> None:
        self._release(beacon)
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()


#: KEYS[1]: one (session, break, pod position)'s progress hash. ARGV: segment index,
#: TTL seconds, then the events due by the end of that segment, in firing order.
#: The in-process rule (a first request that is not segment 0 marks the session late
#: for that ad), atomically; the events are recorded by :meth:`RedisProgress.mark`
#: once queued. KEYS: the view's progress hash. ARGV: segment, ttl, replayed ('1': a request kept
#: while the store was away), then the events due. -> {'late', newly late ('1'|'0')}
#: | {'ok', '', events not recorded yet...} | {'revived', highest segment, events...}.
#: A view first seen past segment 0 is a late join (``~late``, its highest segment
#: kept in ``~max``), unless segment 0's request was only kept back: one instance
#: deferred it (the store away), another recorded a later one first once the store
#: was back. Its replay revives the view (found by the tracking fault run: whole ad
#: views lost that way), and the caller fires what is due up to ``~max``.
_PROGRESS = """
local seg = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  if seg ~= 0 then
    redis.call('HSET', KEYS[1], '~late', '1', '~max', seg)
    redis.call('EXPIRE', KEYS[1], ARGV[2])
    return {'late', '1'}
  end
  redis.call('HSET', KEYS[1], '~seen', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local out = {'ok', ''}
if redis.call('HEXISTS', KEYS[1], '~late') == 1 then
  local top = tonumber(redis.call('HGET', KEYS[1], '~max') or '0')
  if seg ~= 0 or ARGV[3] ~= '1' then
    if seg > top then redis.call('HSET', KEYS[1], '~max', seg) end
    return {'late', '0'}
  end
  redis.call('HDEL', KEYS[1], '~late', '~max')
  redis.call('HSET', KEYS[1], '~seen', '1')
  out = {'revived', tostring(top)}
end
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then table.insert(out, ARGV[i]) end
end
return out
"""


@dataclass(frozen=True)
class Progress:
    """A segment request against the view's shared progress: a late join (nothing
    fires), or the due events not recorded yet; ``reached``: a revived view's
    highest segment requested meanwhile (what is due up to it fires now)."""

    late: bool = False
    newly_late: bool = False
    new: list[str] = field(default_factory=list)
    reached: int | None = None


class RedisProgress:
    """Session progress through ads in Redis (``ss:bp:<session>:<break>:<item>``,
    no hash tag: per-session keys spread over the cluster), shared by instances."""

    def __init__(self, client: Any, *, prefix: str = "ss", ttl: float = 6 * 3600) -> None:
        self._client = client
        self._script = client.register_script(_PROGRESS)
        self._prefix = prefix
        self._ttl = max(1, int(ttl))

    def _key(self, session_id: str, break_id: str, item: int) -> str:
        return f"{self._prefix}:bp:{session_id}:{break_id}:{item}"

    async def due(self, session_id: str, break_id: str, item: int, segment: int,
                  due: list[str], *, replayed: bool = False) -> Progress:
        """What this segment request fires (see ``_PROGRESS``); ``replayed``: it was
        kept while the store was away."""
        raw = await self._script(keys=[self._key(session_id, break_id, item)],
                                 args=[segment, self._ttl, "1" if replayed else "0", *due])
        out = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        if out[0] == "late":
            return Progress(late=True, newly_late=out[1] == "1")
        return Progress(new=out[2:], reached=int(out[1]) if out[0] == "revived" else None)

    async def mark(self, session_id: str, break_id: str, item: int,
                   events: list[str]) -> None:
        """Record events as fired (they are queued): later requests skip them."""
        if events:
            key = self._key(session_id, break_id, item)
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=dict.fromkeys(events, "1"))
                pipe.expire(key, self._ttl)
                await pipe.execute()


def predecessors(ad: AdInfo) -> dict[tuple[str, str], tuple[str, str] | None]:
    """(event, URL) -> the (event, URL) that must reach the same host before it: the
    last URL on that host of the closest earlier event (firing order) that has one."""
    out: dict[tuple[str, str], tuple[str, str] | None] = {}
    last: dict[str, tuple[str, str]] = {}
    for event, _at in ad_events(ad):
        urls = ad.impressions if event == "impression" else ad.tracking.get(event, ())
        for url in urls:
            out[(event, url)] = last.get(urlsplit(url).netloc)
        for url in urls:
            last[urlsplit(url).netloc] = (event, url)
    return out


#: One tracking URL of an event: (URL as in the VAST, :func:`vast.macro_template` of it,
#: the (event, URL) that must reach its host first or None).
_Target = tuple[str, tuple[str, ...], tuple[str, str] | None]


@dataclass(frozen=True, slots=True)
class _Due:
    """One event due by the end of a segment: its time into the ad, that time as the
    ``ADPLAYHEAD`` macro renders it, and its URLs (impressions for ``impression``)."""

    event: str
    at: Fraction
    playhead: str
    targets: tuple[_Target, ...]
    #: The event's bit in a session's in-process progress (its place in firing order).
    bit: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a request for ``segment`` of ``ad`` (``nominal`` seconds a segment) may fire,
    in firing order: the same for every session of a break, so built once per (ad,
    segment) (:meth:`BeaconTracker._plan`), not per request."""

    ad: AdInfo
    nominal: Fraction
    due: tuple[_Due, ...]
    #: Macro names the URLs use: only these are formatted per request.
    names: frozenset[str]


def _build_plan(ad: AdInfo, segment: int, nominal: Fraction) -> _Plan:
    seg_end = (segment + 1) * nominal
    chain = predecessors(ad)
    due: list[_Due] = []
    names: set[str] = set()
    for n, (event, at) in enumerate(ad_events(ad)):
        if not at < seg_end:
            continue
        urls = ad.impressions if event == "impression" else ad.tracking.get(event, ())
        targets = []
        for url in urls:
            parts = vast.macro_template(url)
            names.update(parts[1::2])
            targets.append((url, parts, chain.get((event, url))))
        due.append(_Due(event, at, vast.format_macros({"ADPLAYHEAD": at})["ADPLAYHEAD"],
                        tuple(targets), 1 << n))
    return _Plan(ad, nominal, tuple(due), frozenset(names))


class BeaconTracker:
    """Session progress through ads, turned into beacons (progress in process, or
    in Redis with ``progress`` so every instance shares it)."""

    def __init__(self, queue: BeaconSink, *, max_sessions: int = 1_000_000,
                 progress: RedisProgress | None = None, metrics: Metrics | None = None,
                 max_deferred: int = 200_000, retry_every: float = 1.0) -> None:
        self._queue = queue
        #: (session, break, pod position) -> the events fired, one bit each (``_Due.bit``),
        #: or LATE. An int, not a set of names: a fraction of the memory per session, and
        #: nothing the garbage collector has to walk.
        self._progress: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._max = max_sessions
        self._shared = progress
        self._metrics = metrics
        self.late_joins = 0
        #: Ad segment requests the shared store could not record, per (session, break,
        #: pod position), in arrival order: replayed once it answers again.
        self._deferred: OrderedDict[tuple[str, str, int], list[dict[str, Any]]] = OrderedDict()
        self._deferred_count = 0
        self._max_deferred = max_deferred
        self._retry_every = retry_every
        self._replayer: asyncio.Task[None] | None = None
        #: Beacons whose progress was recorded but whose queueing failed, in order.
        self._unqueued: list[Beacon] = []
        #: (id(ad), segment) -> its plan: the few ads of a break, requested by every
        #: session. By identity (an AdInfo holds a dict: not hashable), the plan
        #: keeping its ad alive so the id is never another's; bounded.
        self._plans: dict[tuple[int, int], _Plan] = {}
        #: The in-process queue's synchronous put, with in-process progress
        #: (:meth:`record_now`); None: every request through :meth:`on_ad_segment`.
        self._put_now = (queue.put_fields if isinstance(queue, BeaconQueue)
                         and progress is None else None)

    @property
    def deferred(self) -> int:
        """Ad segment requests and beacons waiting for the store."""
        return self._deferred_count + len(self._unqueued)

    def _defer_beacons(self, beacons: list[Beacon]) -> None:
        self._unqueued.extend(beacons)
        self._count("deferred", len(beacons))
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.ensure_future(self._replay())

    async def on_ad_segment(self, *, session_id: str, break_id: str, ad: AdInfo,
                            segment: int, nominal: Fraction, client_ip: str,
                            user_agent: str) -> list[str]:
        """Record a segment request and queue its beacons (queued when this returns:
        durably, with the stream queue); returns the events fired (for logs and tests).

        With shared progress and the store not answering (Redis going away), the
        request is kept in process and replayed, in order, once the store is back:
        the player gets its segment at once and the beacons still fire (found by the
        drill: the player got a 500 and, as it moves on to the next segment, the
        ad's beacons were lost or, with segment 0 missed, the session counted late).
        A later request of the same ad waits behind the deferred ones (its order
        decides what fires)."""
        key = (session_id, break_id, ad.item)
        if not self._deferred or key not in self._deferred:
            try:
                return await self._record(
                    session_id=session_id, break_id=break_id, ad=ad, segment=segment,
                    nominal=nominal, client_ip=client_ip, user_agent=user_agent)
            except STORE_ERRORS as exc:
                if self._shared is None:
                    raise
                log.warning("beacon progress not recorded (store unavailable: %s): deferred",
                            exc)
        self._defer(key, {"session_id": session_id, "break_id": break_id, "ad": ad,
                          "segment": segment, "nominal": nominal, "client_ip": client_ip,
                          "user_agent": user_agent})
        return []

    def _count(self, result: str, n: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.beacons_deferred.labels(result).inc(n)

    def _defer(self, key: tuple[str, str, int], call: dict[str, Any]) -> None:
        while self._deferred_count >= self._max_deferred and self._deferred:
            _old, calls = self._deferred.popitem(last=False)
            self._deferred_count -= len(calls)
            self._count("dropped", len(calls))
            log.error("deferred beacon progress over its bound: %d requests dropped", len(calls))
        self._deferred.setdefault(key, []).append(call)
        self._deferred_count += 1
        self._count("deferred")
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.ensure_future(self._replay())

    async def _replay(self) -> None:
        """Every ``retry_every`` s, replay the deferred requests, oldest first, until the
        store answers for all of them."""
        while self._deferred or self._unqueued:
            await asyncio.sleep(self._retry_every)
            try:
                while self._unqueued:
                    await self._queue.put(self._unqueued[0])  # idempotent by its key
                    self._unqueued.pop(0)
                    self._count("replayed")
            except STORE_ERRORS:
                continue  # still down: wait and sweep again
            while self._deferred:
                key, calls = next(iter(self._deferred.items()))
                try:
                    while calls:
                        await self._record(**calls[0], replayed=True)
                        calls.pop(0)
                        self._deferred_count -= 1
                        self._count("replayed")
                except STORE_ERRORS:
                    break  # still down: wait and sweep again
                del self._deferred[key]

    async def close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self._deferred_count or self._unqueued:
            log.error("%d deferred ad segment requests and %d beacons never reached the "
                      "store: lost", self._deferred_count, len(self._unqueued))
            self._count("dropped", self._deferred_count + len(self._unqueued))

    def _plan(self, ad: AdInfo, segment: int, nominal: Fraction) -> _Plan:
        key = (id(ad), segment)
        plan = self._plans.get(key)
        if plan is None or plan.ad is not ad or (plan.nominal is not nominal
                                                 and plan.nominal != nominal):
            plan = _build_plan(ad, segment, nominal)
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    async def _record(self, *, session_id: str, break_id: str, ad: AdInfo, segment: int,
                      nominal: Fraction, client_ip: str, user_agent: str,
                      replayed: bool = False) -> list[str]:
        plan = self._plan(ad, segment, nominal)
        due: Sequence[_Due] = plan.due
        if self._shared is not None:
            got = await self._shared.due(session_id, break_id, ad.item, segment,
                                         [d.event for d in due], replayed=replayed)
            if got.late:
                self.late_joins += got.newly_late
                return []
            if got.reached is not None and got.reached > segment:
                # Revived: the later segments requested meanwhile fired nothing.
                log.info("ad view %s/%s/%s: segment 0 replayed after segment %d; "
                         "not a late join", session_id, break_id, ad.item, got.reached)
                plan = self._plan(ad, got.reached, nominal)
                due = plan.due
            else:
                chosen = set(got.new)
                due = [d for d in due if d.event in chosen]
        else:
            due = self._advance(session_id, break_id, ad.item, segment, due)
        if not due:
            return []
        beacons = [Beacon(*fields) for fields in self._beacons(
            plan, due, session_id, break_id, ad.item, client_ip, user_agent)]
        # Queued before recorded (with Redis): a failure or a kill in between leaves
        # them unrecorded, and the player's retry queues them again (idempotent).
        for i, beacon in enumerate(beacons):
            try:
                await self._queue.put(beacon)
            except STORE_ERRORS as exc:
                if self._shared is None:
                    raise
                # The queue's store failed: queue the rest once it is back (found by
                # the drill: Redis SIGKILLed mid-break, the replayed request found
                # nothing new to fire: the beacons were lost). Unrecorded, a later
                # request of this ad queues them again too (idempotent).
                log.warning("beacons not queued (store unavailable: %s): deferred", exc)
                self._defer_beacons(beacons[i:])
                return [d.event for d in due]
        fired = [d.event for d in due]  # in firing order, events no URL tracks too
        if self._shared is not None:
            try:
                await self._shared.mark(session_id, break_id, ad.item, fired)
            except STORE_ERRORS as exc:  # queued: a later request re-queues (a no-op)
                log.warning("beacon progress not recorded (store unavailable: %s)", exc)
        return fired

    def record_now(self, *, session_id: str, break_id: str, ad: AdInfo, segment: int,
                   nominal: Fraction, client_ip: str, user_agent: str) -> list[str] | None:
        """:meth:`on_ad_segment` without an await, when it needs none (progress and
        queue in process: nothing can fail or wait); None: call that instead. Every
        ad segment request of an embedded stitcher ends here: the same steps,
        without a coroutine per step and per beacon."""
        put = self._put_now
        if put is None:
            return None
        plan = self._plan(ad, segment, nominal)
        due = self._advance(session_id, break_id, ad.item, segment, plan.due)
        if not due:
            return []
        for key, url, headers, after in self._beacons(plan, due, session_id, break_id,
                                                      ad.item, client_ip, user_agent):
            put(key, url, headers, after)
        return [d.event for d in due]

    def _advance(self, session_id: str, break_id: str, item: int, segment: int,
                 due: Sequence[_Due]) -> Sequence[_Due]:
        """In-process progress: what of ``due`` this session has not fired yet,
        recorded as fired (nothing for a late join, recorded as such)."""
        key = (session_id, break_id, item)
        state = self._progress.get(key)
        if state is None:
            if segment != 0:
                self._progress[key] = LATE
                self.late_joins += 1
                return ()
            state = 0
            while len(self._progress) >= self._max:
                self._progress.popitem(last=False)
        if state == LATE:
            return ()
        if state:
            due = [d for d in due if not state & d.bit]
        for d in due:
            state |= d.bit
        self._progress[key] = state
        return due

    def _beacons(self, plan: _Plan, due: Sequence[_Due], session_id: str,
                 break_id: str, item: int, client_ip: str, user_agent: str
                 ) -> list[_BeaconFields]:
        """The beacons of ``due`` for one request, in firing order, as the fields of a
        :class:`Beacon` (key, URL, headers, predecessor), their URLs expanded with
        the request's macro values, each formatted once (the URLs' templates were
        parsed once per ad): every retry of a beacon sends the URL built here.
        (As vast.format_macros renders them, without its type dispatch: the tests
        compare the URLs with expand_macros'.)"""
        names = plan.names
        formatted = {"BREAKPOSITION": "2"}
        if "SESSIONID" in names:
            # (letters and digits quote to themselves: our session ids are hex)
            formatted["SESSIONID"] = (session_id if session_id.isascii() and session_id.isalnum()
                                      else quote(session_id, safe=""))
        if "CACHEBUSTING" in names:
            formatted["CACHEBUSTING"] = f"{random.randrange(10**8):08d}"
        if "TIMESTAMP" in names:
            formatted["TIMESTAMP"] = quote(datetime.now(UTC).isoformat(timespec="milliseconds"),
                                           safe="")
        headers = (("X-Device-IP", client_ip), ("X-Device-User-Agent", user_agent))
        view = (session_id, break_id, str(item))
        beacons: list[_BeaconFields] = []
        for d in due:
            formatted["ADPLAYHEAD"] = d.playhead
            for url, parts, before in d.targets:
                beacons.append(((*view, d.event, url), vast.expand_template(parts, formatted),
                                headers, (*view, *before) if before is not None else None))
        return beacons

    def error(self, urls: list[str], code: int) -> None:
        """Fire VAST ``Error`` URLs: per decision, not per session, so ``[SESSIONID]``
        is ``-1``, the VAST convention for a value the sender does not know."""
        for url in urls:
            expanded = vast.expand_macros(url, {"ERRORCODE": code, "SESSIONID": None,
                                                "CACHEBUSTING": random.randrange(10**8),
                                                "TIMESTAMP": datetime.now(UTC)})
            self._queue.put_soon(Beacon(("error", url, str(code), expanded), expanded))

    def not_used(self, scope: str, item: str, ad: AdInfo) -> None:
        """Fire the ad's ``notUsed`` trackers (VAST 4.1+: a decided ad that will not
        play, e.g. prefetched for a break that was cancelled or cut short). Per
        decision, not per session: ``scope`` is channel/break/cohort, and
        ``[SESSIONID]`` is ``-1`` (unknown), as in :meth:`error`."""
        for url in ad.tracking.get("notUsed", ()):
            expanded = vast.expand_macros(url, {"SESSIONID": None,
                                                "CACHEBUSTING": random.randrange(10**8),
                                                "TIMESTAMP": datetime.now(UTC)})
            self._queue.put_soon(Beacon(("notUsed", scope, item, url), expanded))
