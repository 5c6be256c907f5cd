"""Server-side beacons: fired when a session requests ad segments.

Impression and start fire on an ad's first segment; each quartile on the
segment that contains it; complete on the segment holding the ad's last frame.
A request that skips ahead fires the skipped events first, in order (catch-up).
A session whose first request for an ad is not its first segment joined late
and is not counted for that ad (MediaTailor's rule). An ad cut by an early
CUE-IN never has its last segment requested, so ``complete`` never fires.

Delivery: an in-process queue with retries, exponential backoff with jitter,
a per-host concurrency limit and dead-lettering. The idempotency key is
(session, break, pod position, event, URL); macros are expanded once, when a
beacon is queued, so retries send identical URLs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from urllib.parse import urlsplit

import aiohttp

from stitcher import vast
from stitcher.ads import AdInfo
from stitcher.metrics import Metrics

log = logging.getLogger(__name__)

LATE = "joined-late"
_EPS = Fraction(1, 1000)


@dataclass(frozen=True, slots=True)
class Beacon:
    key: tuple[str, ...]
    url: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class BeaconStats:
    sent: int = 0
    failed_attempts: int = 0
    dead: list[tuple[str, str]] = field(default_factory=list)
    duplicates_suppressed: int = 0


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


class BeaconQueue:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, *,
                 workers: int = 4, per_host: int = 8, max_attempts: int = 5,
                 timeout: float = 5.0, base_backoff: float = 0.5) -> None:
        self._session = session
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[Beacon, int]] = asyncio.Queue()
        self._done: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._per_host = per_host
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._backoff = base_backoff
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(workers)]
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = BeaconStats()

    def put(self, beacon: Beacon) -> None:
        if beacon.key in self._done:
            self.stats.duplicates_suppressed += 1
            return
        self._done[beacon.key] = None
        while len(self._done) > 500_000:
            self._done.popitem(last=False)
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait((beacon, 1))
        self._metrics.beacon_queue.set(self._pending)

    async def drain(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            beacon, attempt = await self._queue.get()
            ok = await self._send(beacon)
            if ok:
                self.stats.sent += 1
                self._metrics.beacons.labels("sent").inc()
                self._finish()
            elif attempt >= self._max_attempts:
                self.stats.dead.append((beacon.url, f"gave up after {attempt} attempts"))
                self._metrics.beacons.labels("dead").inc()
                self._finish()
            else:
                self.stats.failed_attempts += 1
                self._metrics.beacons.labels("retry").inc()
                delay = self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())
                asyncio.get_running_loop().call_later(
                    delay, self._queue.put_nowait, (beacon, attempt + 1))

    def _finish(self) -> None:
        self._pending -= 1
        self._metrics.beacon_queue.set(self._pending)
        if self._pending == 0:
            self._idle.set()

    async def _send(self, beacon: Beacon) -> bool:
        host = urlsplit(beacon.url).netloc
        sem = self._hosts.setdefault(host, asyncio.Semaphore(self._per_host))
        async with sem:
            try:
                async with self._session.get(
                        beacon.url, headers=dict(beacon.headers),
                        timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                    await resp.read()
                    return resp.status < 500 and resp.status != 429
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("beacon to %s failed: %s", host, exc)
                return False


class BeaconTracker:
    """Session progress through ads, turned into beacons."""

    def __init__(self, queue: BeaconQueue, *, max_sessions: int = 1_000_000) -> None:
        self._queue = queue
        self._progress: OrderedDict[tuple[str, str, int], set[str] | str] = OrderedDict()
        self._max = max_sessions
        self.late_joins = 0

    def on_ad_segment(self, *, session_id: str, break_id: str, ad: AdInfo, segment: int,
                      nominal: Fraction, client_ip: str, user_agent: str) -> list[str]:
        """Record a segment request; returns the events queued (for logs and tests)."""
        key = (session_id, break_id, ad.item)
        state = self._progress.get(key)
        if state is None:
            if segment != 0:
                self._progress[key] = LATE
                self.late_joins += 1
                return []
            state = set()
            self._progress[key] = state
            while len(self._progress) > self._max:
                self._progress.popitem(last=False)
        if isinstance(state, str):
            return []
        seg_end = (segment + 1) * nominal
        fired: list[str] = []
        headers = (("X-Device-IP", client_ip), ("X-Device-User-Agent", user_agent))
        macros: dict[str, vast.MacroValue] = {
            "CACHEBUSTING": random.randrange(10**8),
            "TIMESTAMP": datetime.now(UTC),
            "BREAKPOSITION": 2,
            "SESSIONID": session_id,
        }
        for event, at in ad_events(ad):
            if at >= seg_end or event in state:
                continue
            state.add(event)
            urls = ad.impressions if event == "impression" else ad.tracking.get(event, ())
            for url in urls:
                expanded = vast.expand_macros(url, {**macros, "ADPLAYHEAD": at})
                self._queue.put(Beacon((session_id, break_id, str(ad.item), event, url),
                                       expanded, headers))
            fired.append(event)
        return fired

    def error(self, urls: list[str], code: int) -> None:
        for url in urls:
            expanded = vast.expand_macros(url, {"ERRORCODE": code,
                                                "CACHEBUSTING": random.randrange(10**8),
                                                "TIMESTAMP": datetime.now(UTC)})
            self._queue.put(Beacon(("error", url, str(code), expanded), expanded))
