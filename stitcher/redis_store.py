"""The scale-out store: the :class:`~stitcher.store.Store` contract on Redis.

Every instance sharing one Redis renders the same bytes because what a
render depends on beyond the origin's body lives here, written so that no
instance can diverge from another:

* breaks per channel: a plain value (every instance computes the same breaks
  from the same shared history, so last-writer-wins is safe);
* decisions: ``SET NX`` in a script that returns the winner, so the first
  decision wins on every instance; :meth:`RedisStore.decide_once` adds a
  single-flight lease so the ad server is asked once per (break, cohort);
* the ledger per (channel, cohort, grid): one hash (``hwm``, ``base``,
  ``floor``, ``dsn_msn``, ``dsn``, ``e:<msn>`` entries) changed only by
  :data:`_APPEND`, a script that adds entries above the stored hwm and not yet
  present, takes a discontinuity anchor when there is none or its slot is
  above the stored hwm, raises hwm monotonically, folds entries below
  ``keep_from`` into ``base`` (their deltas) and the anchor (their
  discontinuities) and returns the resulting ledger, all atomically. A slot
  once written never changes.

Keys (prefix ``ss``): ``ss:{ch:<channel>}:breaks``, ``ss:{ch:<channel>}:dec:
<break>:<cohort>``, ``ss:{ch:<channel>}:ledger:<cohort>:<grid>`` and the
flight keys of :mod:`stitcher.flight`; rendered playlists (body, gzipped body,
ETag; TTL a few target durations) under ``ss:render:<channel>:<rendition>:
<cohort>:<mode>:<origin version>``, outside the channel's slot. The ``{ch:<channel>}`` hash tag puts a
channel's coordination keys in one Redis Cluster slot, so multi-key scripts
stay legal on a cluster; per-session keys (beacon progress, idempotency) must
not use it, so the biggest channel is not one shard.

Run the production Redis with ``appendonly yes`` (``appendfsync everysec``):
the ledger and frozen decisions are what stop players going backwards after
a Redis restart, and losing them is exactly that.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from manifests.breaks import Break
from manifests.ledger import Ledger, SlotEntry
from stitcher.flight import Flights
from stitcher.store import ANCHORS_KEPT, RenderBlob, RenderKey, break_from_json, break_to_json

# KEYS[1]: decision key. ARGV[1]: the candidate decision. Returns the winner.
_PUT_IF_ABSENT = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# KEYS[1]: the ledger hash. ARGV: hwm, keep_from, anchor msn (-1: none), anchor dsn,
# then (msn, delta, entry json) triples. Mirrors
# Ledger.append(entries, hwm, anchor).compact(keep_from) exactly; returns the whole hash.
# An entry's json is SlotEntry.to_json(): its 6th element is the discontinuity flag.
_APPEND = """
local old_hwm = tonumber(redis.call('HGET', KEYS[1], 'hwm') or '-1')
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '0')
local dsn_msn = tonumber(redis.call('HGET', KEYS[1], 'dsn_msn') or '-1')
for i = 5, #ARGV, 3 do
  local msn = tonumber(ARGV[i])
  if msn > old_hwm then
    redis.call('HSETNX', KEYS[1], 'e:' .. ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
  end
end
local anchor = tonumber(ARGV[3])
if anchor >= 0 and (dsn_msn < 0 or anchor > old_hwm) then
  redis.call('HSET', KEYS[1], 'dsn_msn', ARGV[3], 'dsn', ARGV[4])
  dsn_msn = anchor
end
local hwm = tonumber(ARGV[1])
if hwm > old_hwm then redis.call('HSET', KEYS[1], 'hwm', ARGV[1]) else hwm = old_hwm end
local keep = tonumber(ARGV[2])
if keep > floor then
  local base = tonumber(redis.call('HGET', KEYS[1], 'base') or '0')
  local dsn = tonumber(redis.call('HGET', KEYS[1], 'dsn') or '0')
  local fields = redis.call('HKEYS', KEYS[1])
  for _, f in ipairs(fields) do
    local msn = string.sub(f, 1, 2) == 'e:' and tonumber(string.sub(f, 3))
    if msn and msn < keep then
      local v = redis.call('HGET', KEYS[1], f)
      local bar = string.find(v, '|', 1, true)
      base = base + tonumber(string.sub(v, 1, bar - 1))
      if dsn_msn >= 0 and msn >= dsn_msn and cjson.decode(string.sub(v, bar + 1))[6] == 1 then
        dsn = dsn + 1
      end
      redis.call('HDEL', KEYS[1], f)
    end
  end
  redis.call('HSET', KEYS[1], 'base', base, 'floor', keep)
  local upto = math.min(keep, hwm + 1)
  if dsn_msn >= 0 and upto > dsn_msn then
    redis.call('HSET', KEYS[1], 'dsn_msn', upto, 'dsn', dsn)
  end
end
return redis.call('HGETALL', KEYS[1])
"""

#: Timeline anchors: HSETNX each MSN (first writer wins), trim to the newest ARGV[1].
_ANCHORS = """
for i = 2, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
local fields = redis.call('HKEYS', KEYS[1])
local keep = tonumber(ARGV[1])
if #fields > keep then
  local msns = {}
  for _, f in ipairs(fields) do table.insert(msns, tonumber(f)) end
  table.sort(msns)
  for i = 1, #msns - keep do redis.call('HDEL', KEYS[1], tostring(msns[i])) end
end
return redis.call('HGETALL', KEYS[1])
"""

#: How long the ad-decision lease lives: well above the ad server budget.
DECISION_LEASE = 10.0


#: Connections per process to a single Redis, and how long a command waits for one.
POOL_SIZE = 128
POOL_WAIT = 5.0


def connect(url: str, *, cluster: bool = False) -> Any:
    """A ``redis.asyncio`` client; Redis Cluster when asked (``cluster=true`` in the
    URL's query, ``redis+cluster://`` or the ``cluster`` flag)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme.endswith("+cluster"):
        cluster = True
        url = url.replace("+cluster://", "://", 1)
    if query.get("cluster", [""])[0].lower() in ("1", "true", "yes"):
        cluster = True
        url = url.split("?", 1)[0]
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url)
    from redis.asyncio import BlockingConnectionPool, Redis

    # A blocking pool: at the limit a command waits (up to POOL_WAIT s) for a
    # connection. redis-py's default pool raises MaxConnectionsError there instead,
    # which a burst of ad segment requests (2,000 viewers entering a break, found by
    # the drill) turned into 500s and lost beacons with Redis up and healthy.
    return Redis(connection_pool=BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT))


class RedisStore:
    """:class:`~stitcher.store.Store` on Redis; ``flights`` is the single-flight helper."""

    def __init__(self, client: Any, *, prefix: str = "ss") -> None:
        self.client = client
        self.prefix = prefix
        self.flights = Flights(client, prefix)
        self._put = client.register_script(_PUT_IF_ABSENT)
        self._append = client.register_script(_APPEND)
        self._anchors = client.register_script(_ANCHORS)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False) -> RedisStore:
        return cls(connect(url, cluster=cluster))

    async def close(self) -> None:
        await self.client.aclose()

    def _key(self, channel: str, *parts: str) -> str:
        return self.flights.key(channel, *parts)

    # --- timeline anchors (origins without PDT) ---
    async def anchors(self, channel: str, grid: str, record: dict[int, str]) -> dict[int, str]:
        args: list[object] = [ANCHORS_KEPT]
        for msn, pdt in record.items():
            args += [str(msn), pdt]
        flat = await self._anchors(keys=[self._key(channel, "anchors", grid)], args=args)
        return {int(flat[i]): (flat[i + 1].decode() if isinstance(flat[i + 1], bytes)
                               else str(flat[i + 1])) for i in range(0, len(flat), 2)}

    # --- breaks ---
    async def get_breaks(self, channel: str) -> tuple[Break, ...]:
        raw = await self.client.get(self._key(channel, "breaks"))
        if raw is None:
            return ()
        return tuple(break_from_json(d) for d in json.loads(raw))

    async def put_breaks(self, channel: str, breaks: tuple[Break, ...]) -> None:
        await self.client.set(self._key(channel, "breaks"),
                              json.dumps([break_to_json(b) for b in breaks]))

    # --- decisions ---
    def _decision_key(self, channel: str, break_id: str, cohort: str) -> str:
        return self._key(channel, "dec", break_id, cohort)

    async def get_decision(self, channel: str, break_id: str, cohort: str) -> str | None:
        raw = await self.client.get(self._decision_key(channel, break_id, cohort))
        return None if raw is None else raw.decode()

    async def put_decision_if_absent(self, channel: str, break_id: str, cohort: str,
                                     decision: str) -> str:
        winner = await self._put(keys=[self._decision_key(channel, break_id, cohort)],
                                 args=[decision])
        return winner.decode() if isinstance(winner, bytes) else str(winner)

    async def decide_once(self, channel: str, break_id: str, cohort: str,
                          produce: Callable[[], Awaitable[str]]) -> str:
        """Ask the ad server once across instances: the lease holder decides and
        freezes; the others block on the flight's stream and read the frozen one."""
        key = self._decision_key(channel, break_id, cohort)
        job = f"dec:{break_id}:{cohort}"
        for _ in range(3):
            out = await self.flights.acquire(channel, job, key, mode="exists",
                                             lease=DECISION_LEASE)
            if out.status == "done":
                found = await self.get_decision(channel, break_id, cohort)
                if found is not None:
                    return found
                continue
            if out.status == "lock":
                try:
                    return await self.put_decision_if_absent(channel, break_id, cohort,
                                                             await produce())
                finally:
                    await self.flights.finish(channel, job, out.token)
            await self.flights.wait(channel, job, out.after, out.lease_left + 0.1)
            found = await self.get_decision(channel, break_id, cohort)
            if found is not None:
                return found
        # The lease holders went silent (died): decide here; the first freeze still wins.
        return await self.put_decision_if_absent(channel, break_id, cohort, await produce())

    # --- rendered playlists ---
    def _render_key(self, channel: str, key: RenderKey) -> str:
        # No channel hash tag: renders are the hottest reads, spread them over slots.
        return ":".join((self.prefix, "render", channel, *key))

    async def get_render(self, channel: str, key: RenderKey) -> RenderBlob | None:
        raw = await self.client.get(self._render_key(channel, key))
        return None if raw is None else RenderBlob.from_bytes(raw)

    async def put_render(self, channel: str, key: RenderKey, blob: RenderBlob,
                         ttl: float) -> None:
        # Set-if-absent: every instance renders the same bytes, the first copy serves.
        await self.client.set(self._render_key(channel, key), blob.to_bytes(),
                              px=max(1, int(ttl * 1000)), nx=True)

    # --- ledger ---
    async def get_ledger(self, channel: str, cohort: str, grid: str) -> Ledger:
        raw = await self.client.hgetall(self._key(channel, "ledger", cohort, grid))
        return _ledger(raw)

    async def append_ledger(self, channel: str, cohort: str, grid: str,
                            entries: list[SlotEntry], hwm: int, keep_from: int,
                            anchor: tuple[int, int] | None = None) -> Ledger:
        args: list[str | int] = [hwm, keep_from, *(anchor or (-1, 0))]
        for e in entries:
            args += [e.msn, e.delta, json.dumps(e.to_json())]
        raw = await self._append(keys=[self._key(channel, "ledger", cohort, grid)], args=args)
        return _ledger(dict(zip(raw[::2], raw[1::2], strict=True)))


def _ledger(raw: dict[Any, Any]) -> Ledger:
    if not raw:
        return Ledger()
    fields = {(k.decode() if isinstance(k, bytes) else k):
              (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
    entries: dict[int, SlotEntry] = {}
    for k, v in fields.items():
        if k.startswith("e:"):
            entry = SlotEntry.from_json(json.loads(v.split("|", 1)[1]))
            entries[entry.msn] = entry
    return Ledger(int(fields.get("hwm", -1)), dict(sorted(entries.items())),
                  int(fields.get("base", 0)), int(fields.get("floor", 0)),
                  int(fields.get("dsn_msn", -1)), int(fields.get("dsn", 0)))
