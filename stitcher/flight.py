"""Single flight across instances: one worker per job, everyone else waits on its result.

Used for what must happen once per channel however many stitcher instances
ask: an origin playlist fetch per refresh interval, an ad decision per
(break, cohort). The protocol, per job name, on keys that all share the
channel's hash tag (one Redis Cluster slot, so every script is single-slot):

``{ch:C}:lock:<job>``  the lease: a fencing token, ``SET NX PX`` (TTL well
                        above the job's budget, so a live worker never loses it)
``{ch:C}:fence``       the channel's token counter (``INCR``: tokens only grow)
``{ch:C}:done:<job>``  a stream; the worker ``XADD``s one entry when it is done
``<result key>``       the job's result (a hash with ``fetched_at`` / ``interval``
                        for fetches, any key for "exists" jobs like decisions)

:meth:`Flights.acquire` runs one script that answers, atomically, one of:
``fresh``/``done`` (a result is there: use it), ``failed`` (a recent attempt
failed: do not hammer the upstream), ``lock`` (you are the worker: here is
your fencing token) or ``wait`` (someone else is: here is the stream id to
read after and how long their lease has left). Followers block in
``XREAD BLOCK`` on the stream, never in a sleep loop; a worker that dies lets
its lease expire and the next ``acquire`` takes over. Results are written
with the token and a script refuses a token older than the stored one, so a
worker that stalled past its lease cannot overwrite a newer result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# KEYS: result, lock, fence, stream
# ARGV: mode ('fresh' | 'exists'), now (seconds, shared clock), lock ttl (ms)
# A record stamped up to one interval (hold) after ``now`` counts too: the caller read
# its clock before another instance published (a busy loop, a Redis round trip) or
# runs a little behind it; one stamped further ahead is from a clock not to be trusted.
_ACQUIRE = """
local mode = ARGV[1]
if mode == 'exists' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'done'} end
else
  local now = tonumber(ARGV[2])
  local r = redis.call('HMGET', KEYS[1], 'fetched_at', 'interval', 'error_at', 'error_hold')
  local fetched = tonumber(r[1] or '')
  local interval = tonumber(r[2] or '') or 0
  local err = tonumber(r[3] or '')
  local hold = tonumber(r[4] or '') or 0
  if err and (not fetched or err >= fetched) and now - err < hold and err - now < hold then
    return {'failed', unpack(redis.call('HGETALL', KEYS[1]))}
  end
  if fetched and now - fetched < interval and fetched - now < interval then
    return {'fresh', unpack(redis.call('HGETALL', KEYS[1]))}
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local token = redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[2], token, 'PX', ARGV[3])
  return {'lock', tostring(token)}
end
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {'wait', id, tostring(redis.call('PTTL', KEYS[2]))}
"""

# KEYS: result, lock, stream
# ARGV: token, status, result ttl ms ('0': do not write the result), field, value, ...
_FINISH = """
local token = tonumber(ARGV[1])
local written = 0
if ARGV[3] ~= '0' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
  if token >= current then
    redis.call('HSET', KEYS[1], 'token', ARGV[1], unpack(ARGV, 4))
    if ARGV[2] == 'ok' then redis.call('HDEL', KEYS[1], 'error_at', 'error_hold', 'error') end
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    written = 1
  end
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '16', '*', 'status', ARGV[2], 'token', ARGV[1])
redis.call('PEXPIRE', KEYS[3], 600000)
return written
"""


# KEYS: lock. ARGV: token, lease ms. Extends the lease while it is still this token's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`Flights.acquire` found: see the module docstring."""

    status: str
    token: int = 0
    after: str = "0-0"
    lease_left: float = 0.0
    record: dict[str, bytes] = field(default_factory=dict)


def channel_tag(channel: str) -> str:
    """The hash tag that puts every coordination key of a channel in one slot."""
    return "{ch:" + channel + "}"


class Flights:
    """The lock / publish / wait primitives over one Redis (or Redis Cluster) client."""

    def __init__(self, client: Any, prefix: str = "ss") -> None:
        self._r = client
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)

    def key(self, channel: str, *parts: str) -> str:
        return ":".join((self._prefix, channel_tag(channel), *parts))

    def _keys(self, channel: str, job: str) -> tuple[str, str, str]:
        return (self.key(channel, "lock", job), self.key(channel, "fence"),
                self.key(channel, "done", job))

    async def acquire(self, channel: str, job: str, result_key: str, *, mode: str,
                      now: float = 0.0, lease: float) -> Outcome:
        lock, fence, stream = self._keys(channel, job)
        reply = await self._acquire(keys=[result_key, lock, fence, stream],
                                    args=[mode, repr(float(now)), max(1, int(lease * 1000))])
        status = _s(reply[0])
        if status == "lock":
            return Outcome("lock", token=int(reply[1]))
        if status == "wait":
            return Outcome("wait", after=_s(reply[1]), lease_left=max(0, int(reply[2])) / 1000)
        record = {_s(reply[i]): reply[i + 1] for i in range(1, len(reply) - 1, 2)}
        return Outcome(status, record=record)

    async def finish(self, channel: str, job: str, token: int, *, status: str = "ok",
                     result_key: str | None = None, result: dict[str, bytes | str] | None = None,
                     ttl: float = 0.0) -> bool:
        """Publish (fenced), release the lease if still ours, wake the followers."""
        lock, _fence, stream = self._keys(channel, job)
        flat: list[bytes | str] = []
        for k, v in (result or {}).items():
            flat += [k, v]
        written = await self._finish(
            keys=[result_key or lock, lock, stream],
            args=[str(token), status, str(int(ttl * 1000)) if result else "0", *flat])
        return bool(written)

    @contextlib.asynccontextmanager
    async def renewed(self, channel: str, job: str, token: int, *,
                      lease: float) -> AsyncIterator[None]:
        """Keep a short lease alive while the job runs (renewed every third of it), so
        a worker that dies mid-job lets its followers take over within one lease
        rather than a long lease's worth (found by the SIGKILL test: an instance
        killed holding a 10 s origin-fetch lease stalled the others' playlists)."""
        lock = self.key(channel, "lock", job)

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    if not await self._renew(keys=[lock],
                                             args=[str(token), max(1, int(lease * 1000))]):
                        return  # not ours any more (finished, or lost): stop
                except Exception as exc:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        # redis-py can turn the cancellation of a read into a
                        # connection error: the renewal must still stop.
                        raise asyncio.CancelledError from exc
                    log.warning("flight lease %s not renewed: %s", job, exc)

        task = asyncio.ensure_future(renew())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        try:
            yield
        finally:
            # Stopped, never waited on for long: the job's caller must not hang on it.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def wait(self, channel: str, job: str, after: str, timeout: float) -> str | None:
        """Block until the worker's entry arrives (its status), or ``None`` on timeout."""
        _lock, _fence, stream = self._keys(channel, job)
        reply = await self._r.xread({stream: after}, count=1,
                                    block=max(1, int(timeout * 1000)))
        if not reply:
            return None
        # RESP2: [[stream, [(id, fields)]]]; RESP3: {stream: [[(id, fields)]]}.
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        _id, fields = entries[0]
        return _s(fields.get(b"status") or fields.get("status") or b"ok")


def _s(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
