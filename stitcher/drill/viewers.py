"""Simulated viewers: asyncio clients that follow the playlists as players do.

Each viewer starts a session through the normal endpoint (``POST
/v1/session/{channel}`` with its cohort's targeting), loads the session's
multivariant playlist, picks a variant and reloads that media playlist every
target duration (RFC 8216bis 6.3.4), starting three segments from the live
edge. Every new segment it would play is "fetched": ad segments for real (a
GET under the session path, the request that fires server-side beacons; the
302 to the conditioned asset is not followed), content segments only as a
HEAD for a small sample (they come from the origin, and their bytes prove
nothing here). All viewers share one ``aiohttp.ClientSession`` with a
connection limit, so 2,000 of them cost a few hundred sockets and one event
loop.

What viewers saw is kept as plain tuples (cheap to append, summarised by
:mod:`stitcher.drill.report`). The :class:`Poller` is the independent
checker: one session per cohort, every rendition, every half target
duration, fed to :class:`manifests.checker.Checker`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fixtures.clock import Clock
from manifests.checker import Checker, Snapshot, Violation
from stitcher.check import STALE_HEADER

#: A player starts this many segments from the end of a live playlist.
START_SEGMENTS = 3
#: Tries per ad segment (a player retries a failed segment load).
AD_ATTEMPTS = 3
_AD_PART = "/media/ad/"
_REDIRECTS = (200, 301, 302, 303, 307, 308)


def session_id_of(token: str) -> str:
    """The session id inside a session token (its payload is length-prefixed fields
    ``v1, key id, session id, ...``; read, not verified: the drill is not the signer)."""
    payload_b64 = token.split(".", 1)[0]
    payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    fields: list[str] = []
    i = 0
    while i < len(payload) and len(fields) < 3:
        n = int.from_bytes(payload[i:i + 2], "big")
        fields.append(payload[i + 2:i + 2 + n].decode())
        i += 2 + n
    return fields[2]


def _media_uris(base_url: str, text: str) -> list[str]:
    """Variant URIs of a multivariant playlist, absolute."""
    prefix = base_url.rsplit("/", 1)[0] + "/"
    return [ln if "://" in ln else prefix + ln
            for ln in (x.strip() for x in text.splitlines()) if ln and ln[0] != "#"]


def _segments(text: str) -> tuple[int, list[str]]:
    """(EXT-X-MEDIA-SEQUENCE, segment URIs): all a player needs to follow a live
    playlist (no full parse: 2,000 viewers reload every target duration)."""
    seq = 0
    uris: list[str] = []
    for ln in text.split("\n"):
        if not ln:
            continue
        if ln[0] == "#":
            if ln.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                seq = int(ln[22:])
        else:
            uris.append(ln.strip())
    return seq, uris


def _target(text: str) -> float:
    at = text.find("#EXT-X-TARGETDURATION:")
    if at < 0:
        return 2.0
    end = text.find("\n", at)
    try:
        return float(text[at + 22:end if end >= 0 else None])
    except ValueError:
        return 2.0


@dataclass
class Observations:
    """Everything the viewers saw. Times are drill seconds (virtual); latencies real ms.

    ``playlists``: (t, latency ms, status (0: no answer), stale, drift s or None, cohort)
    ``ad_segments`` / ``content``: (t, latency ms, status)
    ``ad_requests``: (session id, break id, pod position) -> segment indices fetched OK
    """

    playlists: list[tuple[float, float, int, bool, float | None, str]] = field(
        default_factory=list)
    ad_segments: list[tuple[float, float, int]] = field(default_factory=list)
    content: list[tuple[float, float, int]] = field(default_factory=list)
    ad_requests: dict[tuple[str, str, int], list[int]] = field(
        default_factory=lambda: defaultdict(list))
    #: (session, break, pod position) with a request that got no answer at all.
    uncertain: set[tuple[str, str, int]] = field(default_factory=set)
    ad_retries: int = 0
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> cohort
    session_failures: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def error(self, what: str) -> None:
        self.errors[what[:120]] += 1


@dataclass
class Population:
    """N viewers over the stitchers (round robin) in the schedule's cohorts."""

    http: aiohttp.ClientSession
    clock: Clock
    bases: list[str]
    channel: str
    cohorts: tuple[str, ...]
    attribute: str
    drill_time: Callable[[], float]
    live_edge: Callable[[], int | None]
    segment: float
    content_head_rate: float = 0.02
    seed: int = 7
    obs: Observations = field(default_factory=Observations)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def run(self, viewers: int, ramp: float) -> None:
        """Run ``viewers`` until :attr:`stop`; sessions start spread over ``ramp``
        drill seconds (players do not all press play in one millisecond)."""
        tasks = [asyncio.create_task(self._viewer(i, ramp * i / max(1, viewers)))
                 for i in range(viewers)]
        await asyncio.gather(*tasks)

    async def _get(self, url: str, *, method: str = "GET", redirects: bool = True
                   ) -> tuple[int, float, bool, str | None]:
        """(status, 0 for no answer; real ms; announced stale; body of a 200 GET)."""
        t0 = time.monotonic()
        try:
            async with self.http.request(method, url, allow_redirects=redirects) as resp:
                body = await resp.text() if method == "GET" and resp.status == 200 else None
                return (resp.status, (time.monotonic() - t0) * 1000,
                        STALE_HEADER in resp.headers, body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.obs.error(f"{method} {type(exc).__name__}: {exc}")
            return 0, (time.monotonic() - t0) * 1000, False, None

    async def _viewer(self, i: int, delay: float) -> None:
        await self.clock.sleep(delay)
        if self.stop.is_set():
            return
        cohort = self.cohorts[i % len(self.cohorts)]
        base = self.bases[i % len(self.bases)]
        try:
            async with self.http.post(f"{base}/v1/session/{self.channel}",
                                      json={"adsParams": {self.attribute: cohort}}) as resp:
                data: dict[str, Any] = await resp.json() if resp.status == 200 else {}
                if resp.status != 200 or data.get("cohort") != cohort:
                    self.obs.session_failures.append(f"HTTP {resp.status} {data}"[:200])
                    return
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.obs.session_failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        master = base + str(data["manifestUrl"])
        sid = session_id_of(master.split("/v1/session/", 1)[1].split("/", 1)[0])
        status, _, _, text = await self._get(master)
        if status != 200 or text is None:
            self.obs.session_failures.append(f"multivariant HTTP {status}")
            return
        variants = _media_uris(master, text)
        if not variants:
            self.obs.session_failures.append("multivariant without variants")
            return
        self.obs.sessions[sid] = cohort
        self.started += 1
        media = variants[i % len(variants)]
        prefix = media.rsplit("/", 1)[0] + "/"
        next_msn: int | None = None
        target = self.segment
        due = self.clock.now()
        while not self.stop.is_set():
            t = self.drill_time()
            status, ms, stale, text = await self._get(media)
            drift: float | None = None
            if status == 200 and text is not None:
                seq, uris = _segments(text)
                target = _target(text)
                edge = self.live_edge()
                if uris and edge is not None:
                    drift = (edge - (seq + len(uris) - 1)) * self.segment
                if next_msn is None:
                    next_msn = seq + max(0, len(uris) - START_SEGMENTS)
                for k, uri in enumerate(uris):
                    msn = seq + k
                    if msn < next_msn:
                        continue
                    await self._fetch_segment(sid, prefix, uri)
                if uris:
                    next_msn = max(next_msn, seq + len(uris))
            self.obs.playlists.append((t, ms, status, stale, drift, cohort))
            due += target
            wait = due - self.clock.now()
            if wait < 0:  # behind (a slow answer): reload now, as players do
                due = self.clock.now()
                wait = 0
            if wait:
                try:
                    await asyncio.wait_for(self.stop.wait(), wait / getattr(
                        self.clock, "speed", 1.0))
                except TimeoutError:
                    pass

    async def _fetch_segment(self, sid: str, prefix: str, uri: str) -> None:
        url = uri if "://" in uri else prefix + uri
        if _AD_PART in url:
            t = self.drill_time()
            # .../media/ad/<rendition>/<break>/<pod position>/<segment>.ts
            parts = url.split(_AD_PART, 1)[1].split("/")
            for attempt in range(AD_ATTEMPTS):  # players retry a failed segment
                status, ms, _, _ = await self._get(url, redirects=False)
                if status in _REDIRECTS or 400 <= status < 500:
                    break
                self.obs.ad_retries += attempt + 1 < AD_ATTEMPTS
            self.obs.ad_segments.append((t, ms, status))
            if len(parts) != 4:
                return
            key = (sid, parts[1], int(parts[2]))
            if status in _REDIRECTS:
                self.obs.ad_requests[key].append(int(parts[3].split(".", 1)[0]))
            elif status == 0:
                # No answer: the stitcher may or may not have seen it (and fired its
                # beacons). This ad's beacons are left out of the comparison.
                self.obs.uncertain.add(key)
        elif self._rng.random() < self.content_head_rate:
            t = self.drill_time()
            status, ms, _, _ = await self._get(url, method="HEAD")
            self.obs.content.append((t, ms, status))


@dataclass
class Poller:
    """The independent checker: per cohort, one session polling every rendition every
    half target duration; violations and fetch errors with their drill time."""

    http: aiohttp.ClientSession
    clock: Clock
    base: str
    channel: str
    cohorts: tuple[str, ...]
    attribute: str
    drill_time: Callable[[], float]
    violations: list[tuple[float, str, Violation]] = field(default_factory=list)
    fetch_errors: list[tuple[float, str, str, str]] = field(default_factory=list)
    reloads: int = 0
    stale: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._cohort(c, stop) for c in self.cohorts))

    async def _cohort(self, cohort: str, stop: asyncio.Event) -> None:
        async with self.http.post(f"{self.base}/v1/session/{self.channel}",
                                  json={"adsParams": {self.attribute: cohort}}) as resp:
            data = await resp.json()
        master = self.base + str(data["manifestUrl"])
        async with self.http.get(master) as resp:
            text = await resp.text()
        renditions = {u.rsplit("/", 1)[1].split(".", 1)[0]: u
                      for u in _media_uris(master, text)}
        checker = Checker()
        reload = 0
        speed = getattr(self.clock, "speed", 1.0)
        while not stop.is_set():
            t = self.drill_time()
            playlists: dict[str, str] = {}
            stale: set[str] = set()
            target = 2.0
            for rid, url in renditions.items():
                try:
                    async with self.http.get(url) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            self.fetch_errors.append((t, cohort, rid, f"HTTP {resp.status}"))
                            continue
                        if STALE_HEADER in resp.headers:
                            stale.add(rid)
                            self.stale += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.fetch_errors.append((t, cohort, rid, f"{type(exc).__name__}: {exc}"))
                    continue
                playlists[rid] = body
                target = _target(body)
            # Timed when the answers are in: a reload that took long is judged on
            # what it brought, when it brought it.
            t = self.drill_time()
            self.violations += [(t, cohort, v) for v in checker.feed(
                Snapshot(reload, playlists, time=t, stale=frozenset(stale)))]
            reload += 1
            self.reloads += 1
            try:
                await asyncio.wait_for(stop.wait(), max(0.5, target / 2) / speed)
            except TimeoutError:
                pass
