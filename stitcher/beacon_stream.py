"""The durable beacon queue: Redis Streams with a consumer group (used with ``redis_url``).

At-least-once delivery shared by every stitcher instance, with the one window no
queue can close measured rather than hidden.

Keys (prefix ``ss``; ``k`` is a hash of the idempotency key (session, break, pod
position, event, URL); shard ``n`` is a hash of the ad view (session, break, pod
position) mod S, so a beacon's keys, and those of its predecessor in firing order,
share the slot of the hash tag ``{n}`` and every script below touches one cluster
slot, while the S shards spread the queue over S slots):

=====================================  ==============================================
``ss:beacons:{n}``                     stream: one entry per beacon to send
                                       (``k``, ``key``, ``url``, ``h`` headers,
                                       ``a`` attempt, ``q`` queued at, epoch ms);
                                       consumer group ``stitchers``, each instance a
                                       consumer (``host-pid-random``)
``ss:beacons:{n}:retry``               sorted set of delayed retries (score: due
                                       time, epoch ms; member: the entry's fields)
``ss:beacons:{n}:queued:<k>``          ``SET NX EX``: queued once (put-side dedupe)
``ss:beacons:{n}:sending:<k>``         ``<consumer>|<lease deadline ms>``: a send
                                       has begun (evidence for possible duplicates)
``ss:beacons:{n}:sent:<k>``            ``sent`` / ``dead``: never send again
``ss:beacons:{n}:failed:<k>``          an attempt failed (its successors stop waiting)
``ss:beacons:{n}:reached:<k>``         attempts that failed after they may have
                                       reached the endpoint (a timeout), not yet
                                       counted: the next send counts them
``ss:beacons:{n}:dead``                stream of dead letters (``reason`` kept)
``ss:beacons:possible-duplicates``     stream: each beacon resent after a consumer
                                       died mid-send (``k``, ``key``, ``url``, the
                                       dead ``owner``), for reconciliation
=====================================  ==============================================

Life of a beacon: ``put`` runs one script (``SET NX`` on ``queued``, then
``XADD``), so a retried segment request or a second instance never queues it
twice. A reader per shard ``XREADGROUP``\\s (``BLOCK``, ``COUNT``); before sending,
a script checks ``sent`` (a redelivery, or another copy already sent: ack and
skip) and writes the ``sending`` lease. Success: one script records ``sent`` and
``XACK``\\s (atomically: no window between them). Failure: one script puts the
entry in the retry set (exponential backoff with jitter) and ``XACK``\\s; a mover
loop re-adds due retries to the stream (``ZRANGEBYSCORE`` + ``ZREM`` + ``XADD``
in one script). After ``max_attempts`` one script adds the entry to its shard's
``dead`` stream with the reason, marks it ``dead`` and acks it (atomically: a
consumer killed there leaves no second dead letter behind).

Crash safety: entries a dead consumer read and never acked stay pending; live
consumers take them with ``XAUTOCLAIM`` once idle ``claim_idle`` seconds. A live
consumer keeps the entries it is still handling from going idle (``XCLAIM JUSTID``
to itself every ``claim_interval``; an entry can wait locally for its host's send
slot), so only a dead consumer's entries are reclaimed.
Acked entries are trimmed with ``XTRIM MINID`` only below the smallest pending
id and the group's last delivered id, so nothing unacknowledged is ever
trimmed. Run the Redis with ``appendonly yes``.

Order: an entry naming a predecessor (``p``: its ``k``) is sent only once the
predecessor's ``sent`` marker exists (sent or dead), or its ``failed`` one (it
waits out a backoff: order yields to delivery), or ``order_wait`` seconds after
it was queued (a predecessor held by a dead consumer until its reclaim). A
predecessor this consumer handles is awaited in place: it was read first, holds
its own slot and never waits on its successor. One another consumer holds is not
waited on with a slot held (two consumers whose slots all wait on each other's
entries would stall): the entry goes back to the retry set for a moment, same
attempt. So one tracker hears an ad view's events in firing order unless the
predecessor is being retried or its consumer died.

Redis restarts: the groups are created again where one is missing (``NOGROUP``:
a Redis that came back without its data), and every loop rides out the outage.

The window: a consumer killed after sending and before the ``sent`` script
ran. A reclaimed entry (delivery count > 1) with no ``sent`` record whose
``sending`` lease expired is exactly that case (a consumer killed before it
began sending left no lease and is not counted): it is sent again (at least
once) and counted in ``stats.possible_duplicates`` and
``stitcher_beacon_possible_duplicates_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import time
from typing import Any

import aiohttp
from redis.exceptions import RedisError, ResponseError

from stitcher.beacons import ORDER_WAIT, Beacon, BeaconStats, HostLimiter
from stitcher.metrics import Metrics

log = logging.getLogger(__name__)

#: KEYS: queued marker, shard stream. ARGV: ttl, then the entry's field/value pairs.
_PUT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
"""

#: KEYS: sent, sending, reached. ARGV: consumer, now ms, lease ms, ttl.
#: -> {'done', value, 0} | {'busy', owner, 0} | {'stale', owner, n} | {'go', '', n}
#: n: the attempts since the last send began that failed after they may have reached
#: the endpoint (``_RETRY`` counts them per beacon, so whichever copy of its entry
#: sends next, a reclaimed or a busy consumer's copy too, takes them; taken here).
_BEGIN = """
local s = redis.call('GET', KEYS[1])
if s then return {'done', s, 0} end
local lease = ARGV[1] .. '|' .. (tonumber(ARGV[2]) + tonumber(ARGV[3]))
local cur = redis.call('GET', KEYS[2])
local state, owner = 'go', ''
if cur then
  local o, deadline = string.match(cur, '^(.*)|(%d+)$')
  if deadline and tonumber(deadline) > tonumber(ARGV[2]) then return {'busy', o, 0} end
  state, owner = 'stale', o or cur
end
redis.call('SET', KEYS[2], lease, 'EX', ARGV[4])
local reached = tonumber(redis.call('GET', KEYS[3]) or '0')
if reached > 0 then redis.call('DEL', KEYS[3]) end
return {state, owner, reached}
"""

#: KEYS: sent, sending, stream. ARGV: ttl, group, id, 'sent'|'dead', consumer.
_DONE = """
if ARGV[4] == 'sent' or not redis.call('GET', KEYS[1]) then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[1])
end
local cur = redis.call('GET', KEYS[2])
if cur and string.sub(cur, 1, #ARGV[5] + 1) == ARGV[5] .. '|' then redis.call('DEL', KEYS[2]) end
return redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
"""

#: KEYS: sending, retry set, stream, failed marker, reached counter. ARGV: group, id,
#: due ms, member, consumer, release the lease and mark the beacon failed once ('1')
#: or not (someone else holds it), ttl, the attempt may have reached the endpoint
#: ('1': counted per beacon, see ``_BEGIN``).
_RETRY = """
if ARGV[6] == '1' then
  local cur = redis.call('GET', KEYS[1])
  if cur and string.sub(cur, 1, #ARGV[5] + 1) == ARGV[5] .. '|' then
    redis.call('DEL', KEYS[1])
  end
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[7])
end
if ARGV[8] == '1' then
  redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[7])
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
"""

#: KEYS: retry set, stream. ARGV: now ms, limit. Moves due retries, atomically.
_MOVE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(m)))
end
return #due
"""

#: KEYS: sent, sending, stream, the shard's dead-letter stream. ARGV: ttl, group, id,
#: consumer, then the dead letter's field/value pairs. Dead-letters once, atomically.
_DEAD = """
if not redis.call('GET', KEYS[1]) then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, 5))
  redis.call('SET', KEYS[1], 'dead', 'EX', ARGV[1])
end
local cur = redis.call('GET', KEYS[2])
if cur and string.sub(cur, 1, #ARGV[4] + 1) == ARGV[4] .. '|' then redis.call('DEL', KEYS[2]) end
return redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
"""

#: KEYS: the possible-duplicates stream. ARGV: its fields.
_REPORT = """
return redis.call('XADD', KEYS[1], '*', unpack(ARGV))
"""

GROUP = "stitchers"


def idempotency_hash(key: tuple[str, ...]) -> str:
    return hashlib.blake2b(json.dumps(list(key)).encode(), digest_size=16).hexdigest()


def dedicated_client(client: Any, max_connections: int) -> tuple[Any, bool]:
    """(client for the queue, owned?): for a single Redis, a client of its own on a
    *blocking* pool (at the limit a command waits for a connection instead of
    failing, and the queue's blocking reads never starve the store's pool); a
    cluster client is shared as it is."""
    from redis.asyncio import BlockingConnectionPool, Redis

    if not isinstance(client, Redis):
        return client, False
    pool = client.connection_pool
    # Never an unbounded wait: a pool drained (by a Redis restart, say) must surface
    # as an error the loops retry on, not stall every read loop (suspected in a
    # fault run that left 6,656 beacons unread after redis-server restarted).
    blocking = BlockingConnectionPool(connection_class=pool.connection_class,
                                      max_connections=max_connections, timeout=10,
                                      **pool.connection_kwargs)
    return Redis(connection_pool=blocking), True


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _after(stream_id: str) -> str:
    """The smallest stream id above ``stream_id``."""
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class StreamBeaconQueue:
    """A :class:`~stitcher.beacons.BeaconSink` on Redis Streams (see the module doc).

    ``simulate_kill`` (tests only): ``"after_read"`` or ``"after_send"`` makes this
    consumer stop dead at that point of its next entry, leaving Redis exactly as a
    SIGKILL there would.
    """

    def __init__(self, client: Any, session: aiohttp.ClientSession, metrics: Metrics, *,
                 prefix: str = "ss", shards: int = 8, consumer: str | None = None,
                 per_host: int = 8, timeout: float = 5.0, max_attempts: int = 5,
                 base_backoff: float = 0.5, max_backoff: float = 300.0,
                 claim_idle: float = 10.0, claim_interval: float | None = None,
                 mover_interval: float = 0.5, block: float = 1.0, batch: int = 64,
                 max_inflight: int = 256, ttl: float = 2 * 86400,
                 trim_interval: float = 30.0, lease_margin: float = 1.0,
                 order_wait: float = ORDER_WAIT) -> None:
        # One blocking read per shard, plus sends in flight, puts and the loops.
        self._client, self._owned = dedicated_client(client, shards + 64)
        client = self._client
        self._metrics = metrics
        self._sender = HostLimiter(session, per_host=per_host, timeout=timeout)
        self.prefix = prefix
        self.shards = shards
        self.consumer = consumer or consumer_name()
        self._max_attempts = max_attempts
        self._backoff = base_backoff
        self._max_backoff = max_backoff
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._claim_interval = claim_interval if claim_interval is not None else claim_idle / 2
        self._mover_interval = mover_interval
        self._block_ms = max(1, int(block * 1000))
        self._batch = batch
        self._ttl = max(1, int(ttl))
        self._trim_interval = trim_interval
        self._lease_ms = int((timeout + lease_margin) * 1000)
        self._order_wait = order_wait
        #: How long an entry waiting on another consumer's predecessor is deferred.
        self._defer_ms = max(10, int(min(mover_interval, 0.2) * 1000))
        self.deferred = 0
        self._put_script = client.register_script(_PUT)
        self._begin = client.register_script(_BEGIN)
        self._done = client.register_script(_DONE)
        self._retry = client.register_script(_RETRY)
        self._move = client.register_script(_MOVE)
        self._report = client.register_script(_REPORT)
        self._dead = client.register_script(_DEAD)
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        #: Entry ids of each shard this consumer is handling (read or claimed, not yet
        #: recorded): the claim loop keeps them from looking idle (see _heartbeat).
        self._handling: dict[int, set[str]] = {n: set() for n in range(shards)}
        #: The task handling each beacon (by ``k``) here: a successor read by this
        #: consumer waits on it instead of asking Redis.
        self._local: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._puts: set[asyncio.Task[bool]] = set()
        self._groups_ready: asyncio.Future[None] | None = None
        self.stats = BeaconStats()
        self.reclaimed = 0
        self.simulate_kill: str | None = None
        self._killed = asyncio.Event()
        self._loops = [asyncio.ensure_future(self._read_loop(n)) for n in range(shards)]
        self._loops += [asyncio.ensure_future(self._mover_loop()),
                        asyncio.ensure_future(self._claim_loop()),
                        asyncio.ensure_future(self._janitor_loop())]

    # ------------------------------------------------------------------ keys
    def stream(self, shard: int) -> str:
        return f"{self.prefix}:beacons:{{{shard}}}"

    def retry_set(self, shard: int) -> str:
        return f"{self.stream(shard)}:retry"

    def dead_stream(self, shard: int) -> str:
        return f"{self.stream(shard)}:dead"

    @property
    def duplicates_stream(self) -> str:
        return f"{self.prefix}:beacons:possible-duplicates"

    def shard_of(self, key: tuple[str, ...]) -> int:
        """The shard of a beacon: by its ad view (session, break, pod position), so a
        beacon and its predecessor share one stream and one cluster slot."""
        return int(idempotency_hash(key[:3])[:8], 16) % self.shards

    def _marker(self, shard: int, what: str, k: str) -> str:
        return f"{self.stream(shard)}:{what}:{k}"

    # ------------------------------------------------------------------ put side
    async def put(self, beacon: Beacon) -> bool:
        k = idempotency_hash(beacon.key)
        shard = self.shard_of(beacon.key)
        fields = ["k", k, "key", json.dumps(list(beacon.key)), "url", beacon.url,
                  "h", json.dumps([list(h) for h in beacon.headers]), "a", "1",
                  "q", str(int(time.time() * 1000))]
        if beacon.after is not None and beacon.after[:3] == beacon.key[:3]:
            fields += ["p", idempotency_hash(beacon.after)]
        added = await self._put_script(keys=[self._marker(shard, "queued", k),
                                             self.stream(shard)], args=[self._ttl, *fields])
        if not added:
            self.stats.duplicates_suppressed += 1
            self._metrics.beacons.labels("suppressed").inc()
            return False
        self.stats.queued += 1
        self._metrics.beacons.labels("queued").inc()
        return True

    def put_soon(self, beacon: Beacon) -> None:
        task = asyncio.ensure_future(self.put(beacon))
        self._puts.add(task)

        def done(t: asyncio.Task[bool]) -> None:
            self._puts.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("could not queue beacon %s: %s", beacon.url[:120], t.exception())

        task.add_done_callback(done)

    # ------------------------------------------------------------------ lifecycle
    async def _ensure_groups(self) -> None:
        """Create the groups once, again after a failure (Redis down at start) or
        after :meth:`_lost_groups`."""
        ready = self._groups_ready
        if ready is None or (ready.done() and (ready.cancelled()
                                               or ready.exception() is not None)):
            ready = self._groups_ready = asyncio.ensure_future(self._create_groups())
        await asyncio.shield(ready)

    def _lost_groups(self, exc: BaseException) -> None:
        """A Redis that restarted without its data answers NOGROUP: create them again
        (what the lost streams held is gone; what is queued from now on is not)."""
        if "NOGROUP" in str(exc) and self._groups_ready is not None \
                and self._groups_ready.done():
            log.warning("beacon consumer group missing (Redis restarted empty?): "
                        "creating it again")
            self._groups_ready = None

    async def _create_groups(self) -> None:
        for n in range(self.shards):
            try:
                # From id 0: entries queued before the group existed are delivered too.
                await self._client.xgroup_create(self.stream(n), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def depth(self) -> dict[str, int]:
        """Across every instance: entries not yet delivered, delivered and not acked
        (pending), and waiting in the retry sets."""
        await self._ensure_groups()
        undelivered = pending = retrying = 0
        for n in range(self.shards):
            stream = self.stream(n)
            try:
                info = await self._client.xinfo_stream(stream)
                group = await self._group(stream)
            except ResponseError as exc:  # Redis came back empty: groups again
                self._lost_groups(exc)
                await self._ensure_groups()
                info = await self._client.xinfo_stream(stream)
                group = await self._group(stream)
            last = _s(info["last-generated-id"])
            delivered = _s(group["last-delivered-id"])
            if _id_key(last) > _id_key(delivered):
                lag = group.get("lag")
                undelivered += int(lag) if lag is not None else 1
            pending += int(group["pending"])
            retrying += int(await self._client.zcard(self.retry_set(n)))
        return {"undelivered": undelivered, "pending": pending, "retrying": retrying}

    async def _group(self, stream: str) -> dict[str, Any]:
        for g in await self._client.xinfo_groups(stream):
            if _s(g["name"]) == GROUP:
                return dict(g)
        raise ResponseError(f"NOGROUP no group {GROUP} on {stream}")

    async def drain(self) -> None:
        """Until the shared queue is empty: every beacon any instance queued is sent
        or dead-lettered (a dead consumer's entries wait for their reclaim)."""
        while True:
            if self._puts:
                await asyncio.gather(*list(self._puts), return_exceptions=True)
                continue
            d = await self.depth()
            if not any(d.values()) and not self._inflight:
                return
            await asyncio.sleep(0.05)

    async def close(self, grace: float | None = None) -> None:
        """Stop reading; give sends in flight ``grace`` seconds (default: the send
        timeout) to finish and record, then cancel (what is cancelled stays pending
        and is reclaimed by a live consumer)."""
        self._closing = True
        pending: set[asyncio.Task[None]] = set(self._loops)
        while pending:
            # Cancel again until they are done: a cancellation that lands inside a
            # redis-py command can be absorbed there (seen as a claim loop sleeping
            # on after close, and a shutdown that never ended); the flag stops the
            # loops at their next turn in any case.
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=1.0)
        if self._puts:
            await asyncio.gather(*list(self._puts), return_exceptions=True)
        if self._inflight:
            wait = self._sender.timeout + 1 if grace is None else grace
            _done, left = await asyncio.wait(list(self._inflight), timeout=wait)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._owned:
            await self._client.aclose()

    # ------------------------------------------------------------------ workers
    async def _read_loop(self, shard: int) -> None:
        stream = self.stream(shard)
        pause = 0.1
        while not self._killed.is_set() and not self._closing:
            try:
                await self._ensure_groups()
                await self._slots.acquire()
                self._slots.release()
                reply = await self._client.xreadgroup(GROUP, self.consumer, {stream: ">"},
                                                      count=self._batch, block=self._block_ms)
                pause = 0.1
            except (RedisError, OSError) as exc:
                log.warning("beacon stream %s: read failed: %s", stream, exc)
                self._lost_groups(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    await self._dispatch(shard, _s(entry_id), fields, reclaimed=False)

    async def _claim_loop(self) -> None:
        while not self._killed.is_set() and not self._closing:
            await asyncio.sleep(self._claim_interval)
            for shard in range(self.shards):
                try:
                    await self._ensure_groups()
                    await self._heartbeat(shard)
                    await self._reclaim(shard)
                except (RedisError, OSError) as exc:
                    log.warning("beacon reclaim on shard %d failed: %s", shard, exc)
                    self._lost_groups(exc)

    async def _heartbeat(self, shard: int) -> None:
        """Reset the idle time of the entries this consumer is still handling (an
        entry waiting here for its host's send slot is pending and idle in Redis's
        eyes): without it, a burst to one slow host has its entries reclaimed from a
        live consumer, by another instance or by this one, and handled twice (a
        second send averted only by the lease, the entry re-queued as a retry).
        ``XCLAIM ... JUSTID`` to itself: no delivery counted, an entry acked
        meanwhile is ignored."""
        ids = list(self._handling[shard])
        if ids:
            await self._client.xclaim(self.stream(shard), GROUP, self.consumer, 0, ids,
                                      justid=True)

    async def _reclaim(self, shard: int) -> int:
        """XAUTOCLAIM entries idle longer than ``claim_idle`` (a dead consumer's)."""
        claimed = 0
        cursor = "0-0"
        while True:
            reply = await self._client.xautoclaim(self.stream(shard), GROUP, self.consumer,
                                                  self._claim_idle_ms, start_id=cursor,
                                                  count=self._batch)
            cursor = _s(reply[0])
            for entry_id, fields in reply[1]:
                if fields is None:  # trimmed or deleted under us: nothing to send
                    continue
                if await self._dispatch(shard, _s(entry_id), fields, reclaimed=True):
                    claimed += 1
                    self.reclaimed += 1
            if cursor == "0-0":
                return claimed

    async def _mover_loop(self) -> None:
        while not self._killed.is_set() and not self._closing:
            await asyncio.sleep(self._mover_interval)
            now = int(time.time() * 1000)
            for shard in range(self.shards):
                try:
                    while await self._move(keys=[self.retry_set(shard), self.stream(shard)],
                                           args=[now, self._batch]) >= self._batch:
                        pass
                except (RedisError, OSError) as exc:
                    log.warning("beacon retry mover on shard %d failed: %s", shard, exc)

    async def _janitor_loop(self) -> None:
        while not self._killed.is_set() and not self._closing:
            await asyncio.sleep(self._trim_interval)
            try:
                await self.trim()
                d = await self.depth()
                self._metrics.beacon_queue.set(sum(d.values()))
            except (RedisError, OSError) as exc:
                log.warning("beacon stream maintenance failed: %s", exc)
                self._lost_groups(exc)

    async def trim(self) -> None:
        """XTRIM MINID below both the smallest pending id and the first entry not yet
        delivered: only acknowledged entries go. Read the group before its pending
        list: an entry delivered in between has an id above the delivered id read,
        and claiming only moves entries already pending."""
        await self._ensure_groups()
        for n in range(self.shards):
            stream = self.stream(n)
            group = await self._group(stream)
            delivered = _s(group["last-delivered-id"])
            if delivered == "0-0":
                continue
            summary = await self._client.xpending(stream, GROUP)
            threshold = _after(delivered)
            if summary["pending"] and summary["min"] is not None:
                threshold = min(threshold, _s(summary["min"]), key=_id_key)
            await self._client.xtrim(stream, minid=threshold, approximate=False)
            # Consumers that left nothing pending and went quiet: forget them
            # (a live one is re-created by its next read).
            for c in await self._client.xinfo_consumers(stream, GROUP):
                name = _s(c["name"])
                if name != self.consumer and int(c["pending"]) == 0 \
                        and int(c["idle"]) > 3_600_000:
                    await self._client.xgroup_delconsumer(stream, GROUP, name)

    async def _dispatch(self, shard: int, entry_id: str, fields: dict[Any, Any],
                        reclaimed: bool) -> bool:
        """Handle an entry in a task of its own; False: this consumer is on it already."""
        handling = self._handling[shard]
        if entry_id in handling:
            return False  # claimed back while this consumer is on it: being handled
        handling.add(entry_id)
        try:
            await self._slots.acquire()
        except BaseException:
            handling.discard(entry_id)
            raise
        task = asyncio.ensure_future(self._handle(shard, entry_id, fields, reclaimed))
        self._inflight.add(task)
        k = _s(fields.get(b"k", fields.get("k", b"")))
        if k:
            self._local[k] = task

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            if self._local.get(k) is t:
                del self._local[k]
            handling.discard(entry_id)
            self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                # Left pending: a live consumer reclaims it after claim_idle.
                log.warning("beacon %s on shard %d: %s", entry_id, shard, t.exception())

        task.add_done_callback(done)
        return True

    async def _handle(self, shard: int, entry_id: str, raw: dict[Any, Any],
                      reclaimed: bool) -> None:
        if self._killed.is_set():
            return
        f = {_s(k): _s(v) for k, v in raw.items()}
        beacon = Beacon(tuple(json.loads(f["key"])), f["url"],
                        tuple((a, b) for a, b in json.loads(f["h"])))
        if self.simulate_kill == "after_read":
            self._killed.set()
            return
        if "p" in f and not await self._predecessor_done(shard, f["p"], int(f.get("q") or 0)):
            # Its predecessor is another consumer's, not sent yet: look again shortly
            # (re-queued as it is, same attempt; no slot held meanwhile).
            k = f["k"]
            due = int(time.time() * 1000) + self._defer_ms
            await self._finish(self._retry, keys=[
                self._marker(shard, "sending", k), self.retry_set(shard), self.stream(shard),
                self._marker(shard, "failed", k), self._marker(shard, "reached", k)], args=[
                GROUP, entry_id, due, self._member(f, int(f["a"])), self.consumer, "0",
                self._ttl, "0"])
            self.deferred += 1
            return
        # The lease covers the send only: wait for the host's slot before taking it.
        async with self._sender.slot(beacon.url):
            if self._killed.is_set():
                return
            await self._deliver(shard, entry_id, f, beacon)

    async def _predecessor_done(self, shard: int, p: str, queued_ms: int) -> bool:
        """Whether the entry may be sent now: its predecessor is sent or dead (its
        ``sent`` marker), has failed an attempt (``failed``: order yields), was never
        queued, or the entry has waited ``order_wait`` seconds since it was queued.
        A predecessor this consumer handles is awaited here (it was read earlier, so
        it holds its own slot and never waits on this one); one another consumer
        holds is not waited on while holding a slot (two consumers whose slots were
        all taken by such waits would each wait on entries the other cannot take):
        False, and the caller defers the entry. A Redis error: True (best effort)."""
        local = self._local.get(p)
        if local is not None:  # then its outcome, below (it may have been deferred)
            await asyncio.wait({local}, timeout=self._order_wait)
        if time.time() * 1000 - queued_ms > self._order_wait * 1000:
            return True
        keys = [self._marker(shard, what, p) for what in ("sent", "failed", "queued")]
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                sent, failed, queued = await pipe.execute()
        except (RedisError, OSError):
            return True
        return bool(sent or failed or not queued)

    async def _deliver(self, shard: int, entry_id: str, f: dict[str, str],
                       beacon: Beacon) -> None:
        k, attempt, stream = f["k"], int(f["a"]), self.stream(shard)
        sent_key, sending_key = self._marker(shard, "sent", k), self._marker(shard, "sending", k)
        reached_key = self._marker(shard, "reached", k)
        now = int(time.time() * 1000)
        state, owner, before = (_s(v) for v in await self._begin(
            keys=[sent_key, sending_key, reached_key],
            args=[self.consumer, now, self._lease_ms, self._ttl]))
        if state == "done":  # a redelivery or a second copy: sent (or dead) already
            await self._client.xack(stream, GROUP, entry_id)
            self.stats.duplicates_suppressed += 1
            self._metrics.beacons.labels("suppressed").inc()
            return
        if state == "busy":  # another consumer is sending this beacon right now: look later
            due = now + self._lease_ms + random.randint(0, 500)
            await self._retry(keys=[sending_key, self.retry_set(shard), stream,
                                    self._marker(shard, "failed", k), reached_key],
                              args=[GROUP, entry_id, due, self._member(f, attempt),
                                    self.consumer, "0", self._ttl, "0"])
            return
        # The earlier attempts of this beacon that may have reached the endpoint: a
        # consumer that began sending and never recorded the outcome (stale), and
        # each attempt that failed in a way the endpoint may have counted (a timeout,
        # a connection lost mid-request), whichever copy of the entry made it (found
        # by the drill: an entry reclaimed from a live consumer on a loaded machine
        # timed out there, and the first copy sent again unreported; one flag on the
        # retry entry missed that copy). Send anyway (at least once), count each and
        # report which beacon.
        whys = ([f"{owner} died mid-send"] if state == "stale" else []) \
            + ["an earlier attempt may have reached it"] * int(before or 0)
        for why in whys:
            self.stats.possible_duplicates += 1
            self._metrics.beacon_possible_duplicates.inc()
            log.warning("beacon %s: %s; resending (possible duplicate)", k, why)
            await self._finish(self._report, keys=[self.duplicates_stream], args=[
                "k", k, "key", f["key"], "url", f["url"], "owner", owner or "",
                "why", why, "consumer", self.consumer, "time", str(int(time.time() * 1000))])
        ok, what, reached = await self._sender.send(beacon, limited=False)
        if self.simulate_kill == "after_send" or self._killed.is_set():
            self._killed.set()  # SIGKILL here: sent, nothing recorded, nothing acked
            return
        if ok:
            await self._finish(self._done, keys=[sent_key, sending_key, stream],
                               args=[self._ttl, GROUP, entry_id, "sent", self.consumer])
            self.stats.sent += 1
            self._metrics.beacons.labels("sent").inc()
        elif attempt >= self._max_attempts:
            reason = f"gave up after {attempt} attempts: {what}"
            await self._finish(self._dead, keys=[sent_key, sending_key, stream,
                                                 self.dead_stream(shard)], args=[
                self._ttl, GROUP, entry_id, self.consumer,
                "k", k, "key", f["key"], "url", f["url"], "attempts", str(attempt),
                "reason", reason, "consumer", self.consumer, "queued", f.get("q", ""),
                "time", str(int(time.time() * 1000))])
            self.stats.dead.append((beacon.url, reason))
            self._metrics.beacons.labels("dead").inc()
        else:
            delay = min(self._max_backoff,
                        self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
            due = int(time.time() * 1000 + delay * 1000)
            await self._finish(self._retry, keys=[sending_key, self.retry_set(shard), stream,
                                                  self._marker(shard, "failed", k),
                                                  reached_key],
                               args=[GROUP, entry_id, due, self._member(f, attempt + 1),
                                     self.consumer, "1", self._ttl, "1" if reached else "0"])
            self.stats.failed_attempts += 1
            self._metrics.beacons.labels("retry").inc()

    @staticmethod
    async def _finish(script: Any, *, keys: list[str], args: list[Any]) -> None:
        """Record an outcome, riding out a short Redis blip: left unrecorded, the
        entry is reclaimed later and (its lease expired) counted a possible duplicate."""
        for attempt in range(3):
            try:
                await script(keys=keys, args=args)
                return
            except (RedisError, OSError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))

    @staticmethod
    def _member(fields: dict[str, str], attempt: int) -> str:
        flat: list[str] = []
        for name, value in {**fields, "a": str(attempt)}.items():
            flat += [name, value]
        return json.dumps(flat)

    async def possible_duplicates(self) -> list[dict[str, str]]:
        """Every beacon resent after a consumer died mid-send (oldest first): the
        endpoint may have heard each twice."""
        return [{_s(k): _s(v) for k, v in fields.items()}
                for _id, fields in await self._client.xrange(self.duplicates_stream)]

    async def dead_letters(self) -> list[dict[str, str]]:
        """Every shard's dead letters (oldest first)."""
        found = []
        for n in range(self.shards):
            found += [(_id_key(_s(i)), {_s(k): _s(v) for k, v in fields.items()})
                      for i, fields in await self._client.xrange(self.dead_stream(n))]
        return [entry for _key, entry in sorted(found, key=lambda e: e[0])]

