"""The control plane: what ad ops change at run time, shared by every instance.

Three kinds of state, behind one small interface with an in-process default
(:class:`MemoryControl`, persisted to the embedded store's folder) and a Redis
implementation (:class:`RedisControl`, scale-out):

* **channel records**: the API's channel configs, each with a revision that
  grows by one per change (atomically, so ``If-Match`` can refuse a write
  made against an older revision). A record overlays the config file's channel
  of the same id; a deleted channel is a record without a config (a tombstone,
  so a restart with the file does not bring it back).
* **ad-ops breaks**: breaks inserted by hand (:class:`AdOpsBreak`), kept apart
  from the breaks the renders merge from the feed's markers. The renders read
  those with a last-writer-wins put; an ad-ops break written there could be lost
  to a concurrent render on another instance, so instead every render feeds the
  ad-ops breaks to ``update_breaks`` as the marker observations they stand for
  (idempotent: a repeated OUT of one event is one break).
* **the audit log**: who changed what, when, before and after.

Every change is announced on a change feed; each instance applies what it
reads there (a Redis stream read with a blocking XREAD, so nothing is missed
across a reconnect: the reader resumes from the last id it saw).

Redis keys (prefix ``ss``): ``ss:{control}:channels`` (hash: id ->
``<revision>|<record json>``), ``ss:{control}:revisions`` (hash: id ->
revision), ``ss:{control}:audit`` (list, newest first, capped),
``ss:{control}:changes`` (stream, capped) and per channel
``ss:{ch:<channel>}:adops`` (hash: event id -> break json), in the channel's
slot beside its other coordination keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

from manifests.breaks import break_id
from manifests.markers import Observation, SignalKind
from manifests.timing import add_seconds

log = logging.getLogger(__name__)

#: Audit entries kept (newest first).
AUDIT_KEPT = 10_000
#: Change feed entries kept (readers are never this far behind).
CHANGES_KEPT = 1_000
#: The dialect name ad-ops breaks carry (the console tells them from the feed's).
ADOPS = "adops"
#: The first change every feed yields, once it is listening: reload everything
#: (what changed before the feed started listening is not on it).
RESYNC = "resync"


class RevisionMismatch(Exception):
    """A write named a revision (``If-Match``) that is no longer the current one."""

    def __init__(self, current: int) -> None:
        super().__init__(f"current revision is {current}")
        self.current = current


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """The API's version of one channel: its config (None: deleted) and revision."""

    id: str
    config: dict[str, Any] | None
    revision: int
    updated_at: str
    updated_by: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "config": self.config, "updated_at": self.updated_at,
                           "updated_by": self.updated_by})

    @staticmethod
    def from_json(text: str, revision: int) -> ChannelRecord:
        d = json.loads(text)
        return ChannelRecord(d["id"], d["config"], revision, d["updated_at"], d["updated_by"])


@dataclass(frozen=True, slots=True)
class AdOpsBreak:
    """A break inserted by hand, on the channel's timeline (PDT, not a local clock).

    ``cancelled_at``: where a cancel applies on the timeline: the break's start
    when it was cancelled before it began (it is dropped), else the live edge
    at the cancel (the break ends there; slots already published stay)."""

    event_id: str
    start: datetime
    duration: Fraction
    created_at: str
    created_by: str
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None

    @property
    def id(self) -> str:
        """The id the break gets in the shared breaks (``manifests.breaks.break_id``)."""
        return break_id(self.event_id, self.start)

    @property
    def end(self) -> datetime:
        return add_seconds(self.start, self.duration)

    def observations(self) -> tuple[Observation, ...]:
        """The marker observations this break stands for (an OUT with a planned
        duration, and a CANCEL once cancelled), as ``update_breaks`` takes them."""
        out = Observation(SignalKind.OUT, self.start, -1, ADOPS, event_id=self.event_id,
                          planned_duration=self.duration)
        if self.cancelled_at is None:
            return (out,)
        return (out, Observation(SignalKind.CANCEL, self.cancelled_at, -1, ADOPS,
                                 event_id=self.event_id))

    def to_json(self) -> str:
        return json.dumps({
            "event_id": self.event_id, "start": self.start.isoformat(),
            "duration": str(self.duration), "created_at": self.created_at,
            "created_by": self.created_by,
            "cancelled_at": self.cancelled_at.isoformat() if self.cancelled_at else None,
            "cancelled_by": self.cancelled_by})

    @staticmethod
    def from_json(text: str) -> AdOpsBreak:
        d = json.loads(text)
        return AdOpsBreak(d["event_id"], datetime.fromisoformat(d["start"]),
                          Fraction(d["duration"]), d["created_at"], d["created_by"],
                          datetime.fromisoformat(d["cancelled_at"]) if d.get("cancelled_at")
                          else None, d.get("cancelled_by"))


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: what to reload (``channel``, ``adops`` or
    everything: ``resync``)."""

    kind: str
    channel: str


class Control(Protocol):
    async def channels(self) -> dict[str, ChannelRecord]: ...

    async def put_channel(self, channel: str, config: dict[str, Any] | None, *, at: str,
                          by: str, expected: int | None = None) -> ChannelRecord:
        """Write a channel's record (None: deleted) with the next revision; raises
        :class:`RevisionMismatch` when ``expected`` is not the current revision."""
        ...

    async def adops_breaks(self, channel: str) -> list[AdOpsBreak]: ...

    async def put_adops_break(self, channel: str, brk: AdOpsBreak) -> None: ...

    async def append_audit(self, entry: dict[str, Any]) -> None: ...

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first."""
        ...

    async def publish(self, change: Change) -> None: ...

    def changes(self) -> AsyncIterator[Change]:
        """Every change published from now on, by any instance."""
        ...

    async def close(self) -> None: ...


class MemoryControl:
    """One process. With ``state_dir`` channel records and ad-ops breaks survive a
    restart (``control.json``) and the audit log is appended to ``audit.jsonl``."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self._dir = state_dir
        self._records: dict[str, ChannelRecord] = {}
        self._adops: dict[str, dict[str, AdOpsBreak]] = {}
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEPT)
        self._subscribers: list[asyncio.Queue[Change]] = []
        self._lock = asyncio.Lock()
        if state_dir is not None:
            self._load()

    def _load(self) -> None:
        assert self._dir is not None
        path = self._dir / "control.json"
        if path.exists():
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
                for rec in d.get("channels", []):
                    self._records[rec["id"]] = ChannelRecord.from_json(
                        json.dumps(rec), int(rec["revision"]))
                for channel, items in d.get("adops", {}).items():
                    self._adops[channel] = {
                        b.event_id: b for b in (AdOpsBreak.from_json(i) for i in items)}
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable %s: %s", path, exc)
        audit = self._dir / "audit.jsonl"
        if audit.exists():
            for line in audit.read_text(encoding="utf-8").splitlines()[-AUDIT_KEPT:]:
                try:
                    self._audit.appendleft(json.loads(line))
                except ValueError:
                    continue

    def _save(self) -> None:
        if self._dir is None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        data = {"channels": [{**json.loads(r.to_json()), "revision": r.revision}
                             for r in self._records.values()],
                "adops": {ch: [b.to_json() for b in items.values()]
                          for ch, items in self._adops.items()}}
        path = self._dir / "control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)

    async def channels(self) -> dict[str, ChannelRecord]:
        return dict(self._records)

    async def put_channel(self, channel: str, config: dict[str, Any] | None, *, at: str,
                          by: str, expected: int | None = None) -> ChannelRecord:
        async with self._lock:
            old = self._records.get(channel)
            current = old.revision if old else 0
            if expected is not None and expected != current:
                raise RevisionMismatch(current)
            record = self._records[channel] = ChannelRecord(channel, config, current + 1, at, by)
            self._save()
            return record

    async def adops_breaks(self, channel: str) -> list[AdOpsBreak]:
        return sorted(self._adops.get(channel, {}).values(), key=lambda b: b.start)

    async def put_adops_break(self, channel: str, brk: AdOpsBreak) -> None:
        self._adops.setdefault(channel, {})[brk.event_id] = brk
        self._save()

    async def append_audit(self, entry: dict[str, Any]) -> None:
        self._audit.appendleft(entry)
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            with (self._dir / "audit.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return list(self._audit)[:limit]

    async def publish(self, change: Change) -> None:
        for q in self._subscribers:
            q.put_nowait(change)

    async def changes(self) -> AsyncIterator[Change]:
        q: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            yield Change(RESYNC, "")
            while True:
                yield await q.get()
        finally:
            self._subscribers.remove(q)

    async def close(self) -> None:
        return None


# KEYS[1]: records hash, KEYS[2]: revisions hash. ARGV: id, record json, expected ('' any).
# Returns the new revision, or -1 - current when ``expected`` is not current.
_PUT_CHANNEL = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= current then return -1 - current end
local rev = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1], rev .. '|' .. ARGV[2])
return rev
"""


#: How long one read of the change feed blocks on the server (ms).
FEED_BLOCK_MS = 3_000


class RedisControl:
    """:class:`Control` on the Redis client of the shared store."""

    def __init__(self, client: Any, *, prefix: str = "ss") -> None:
        self.client = client
        self.prefix = prefix
        self._put = client.register_script(_PUT_CHANNEL)

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{control}}:{name}"

    def _adops_key(self, channel: str) -> str:
        return f"{self.prefix}:{{ch:{channel}}}:adops"

    async def channels(self) -> dict[str, ChannelRecord]:
        raw = await self.client.hgetall(self._key("channels"))
        found: dict[str, ChannelRecord] = {}
        for value in raw.values():
            rev, text = _text(value).split("|", 1)
            record = ChannelRecord.from_json(text, int(rev))
            found[record.id] = record
        return found

    async def put_channel(self, channel: str, config: dict[str, Any] | None, *, at: str,
                          by: str, expected: int | None = None) -> ChannelRecord:
        record = ChannelRecord(channel, config, 0, at, by)
        rev = int(await self._put(keys=[self._key("channels"), self._key("revisions")],
                                  args=[channel, record.to_json(),
                                        "" if expected is None else str(expected)]))
        if rev < 0:
            raise RevisionMismatch(-1 - rev)
        return replace(record, revision=rev)

    async def adops_breaks(self, channel: str) -> list[AdOpsBreak]:
        raw = await self.client.hgetall(self._adops_key(channel))
        return sorted((AdOpsBreak.from_json(_text(v)) for v in raw.values()),
                      key=lambda b: b.start)

    async def put_adops_break(self, channel: str, brk: AdOpsBreak) -> None:
        await self.client.hset(self._adops_key(channel), brk.event_id, brk.to_json())

    async def append_audit(self, entry: dict[str, Any]) -> None:
        key = self._key("audit")
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(entry))
        pipe.ltrim(key, 0, AUDIT_KEPT - 1)
        await pipe.execute()

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        raw = await self.client.lrange(self._key("audit"), 0, max(0, limit - 1))
        return [json.loads(_text(r)) for r in raw]

    async def publish(self, change: Change) -> None:
        await self.client.xadd(self._key("changes"),
                               {"kind": change.kind, "channel": change.channel},
                               maxlen=CHANGES_KEPT, approximate=True)

    async def changes(self) -> AsyncIterator[Change]:
        key = self._key("changes")
        newest = await self.client.xrevrange(key, count=1)
        last = _text(newest[0][0]) if newest else "0-0"
        yield Change(RESYNC, "")
        while True:
            # Blocks on the server until a change arrives (no polling); the timeout
            # only bounds how long a dead connection can go unnoticed, and stays
            # under redis-py's 5 s socket timeout (a 10 s block timed out every 5 s:
            # a warning and a resync of every channel each time).
            got = await self.client.xread({key: last}, block=FEED_BLOCK_MS, count=100)
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    f = {_text(k): _text(v) for k, v in fields.items()}
                    yield Change(f.get("kind", ""), f.get("channel", ""))

    async def close(self) -> None:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
