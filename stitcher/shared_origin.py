"""Origin fetches coalesced across instances: one fetch per rendition URL per refresh interval.

The instance that wins the flight lease (:mod:`stitcher.flight`) fetches the
playlist and publishes the body, its ETag / Last-Modified, the time it was
fetched (on the shared clock: the origin timeline's epoch seconds, never a
host's monotonic clock) and the refresh interval, in
``ss:{ch:<channel>}:origin:<url hash>`` with a TTL of a few target durations.
The others block on the flight's stream and take the published body. A
failed fetch is published too (``error_at`` / ``error_hold``), so followers
serve their last good playlist instead of all retrying the failing origin.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

from stitcher.flight import Flights, Outcome


@dataclass(frozen=True, slots=True)
class Published:
    """A playlist as fetched by some instance."""

    body: bytes
    etag: str | None
    last_modified: str | None
    fetched_at: float


#: Seconds an origin-fetch lease lives unrenewed.
LEASE = 1.5


class SharedOrigin:
    def __init__(self, flights: Flights, channel: str, *, fetch_budget: float) -> None:
        self._flights = flights
        self._channel = channel
        #: The worker's lease: short, and renewed while it fetches (``renewed``), so a
        #: worker that dies mid-fetch lets the others take over within a second and a
        #: half; a live one never loses it (its fence guards a stalled one anyway).
        self.lease = LEASE
        #: A follower waits for the worker's result at most this long, then fetches itself.
        self.wait_budget = fetch_budget + 0.5

    def _job(self, url: str) -> str:
        return "origin:" + hashlib.sha1(url.encode()).hexdigest()[:20]

    def _record_key(self, url: str) -> str:
        return self._flights.key(self._channel, self._job(url))

    async def acquire(self, url: str, now: float) -> Outcome:
        return await self._flights.acquire(self._channel, self._job(url), self._record_key(url),
                                           mode="fresh", now=now, lease=self.lease)

    def renewed(self, url: str, token: int) -> contextlib.AbstractAsyncContextManager[None]:
        """The worker's lease kept alive while it fetches ``url``."""
        return self._flights.renewed(self._channel, self._job(url), token, lease=self.lease)

    async def read(self, url: str) -> dict[str, bytes]:
        raw = await self._flights._r.hgetall(self._record_key(url))
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

    async def publish(self, url: str, token: int, published: Published, *, interval: float,
                      ttl: float) -> bool:
        result: dict[str, bytes | str] = {
            "body": published.body, "etag": published.etag or "",
            "last_modified": published.last_modified or "",
            "fetched_at": repr(published.fetched_at), "interval": repr(interval)}
        return await self._flights.finish(self._channel, self._job(url), token, status="ok",
                                          result_key=self._record_key(url), result=result,
                                          ttl=ttl)

    async def publish_error(self, url: str, token: int, *, at: float, hold: float,
                            reason: str, ttl: float) -> None:
        result: dict[str, bytes | str] = {"error_at": repr(at), "error_hold": repr(hold),
                                          "error": reason[:500]}
        await self._flights.finish(self._channel, self._job(url), token, status="error",
                                   result_key=self._record_key(url), result=result, ttl=ttl)

    async def wait(self, url: str, after: str, timeout: float) -> str | None:
        return await self._flights.wait(self._channel, self._job(url), after, timeout)


def published(record: dict[str, bytes]) -> Published | None:
    """The published playlist in a record (``None``: nothing published yet)."""
    if not record.get("body") or not record.get("fetched_at"):
        return None
    etag = record.get("etag", b"").decode() or None
    modified = record.get("last_modified", b"").decode() or None
    return Published(record["body"], etag, modified, float(record["fetched_at"]))
