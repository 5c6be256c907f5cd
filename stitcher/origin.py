"""Fetching origin playlists: coalesced, conditional, and stale-but-available.

One origin fetch per playlist URL per refresh interval, however many viewers
ask: concurrent callers share the in-flight request, and a result younger
than half a target duration is reused. When the origin fails (timeout, 5xx,
429, a body that is not a playlist, a media sequence that goes backwards) the
last good playlist is served and marked stale; only a cold start with no good
playlist raises :class:`OriginUnavailable` (a 503 with Retry-After upstream).

With a :class:`~stitcher.shared_origin.SharedOrigin` (Redis configured) the
same holds across instances: one instance fetches per refresh interval and
publishes the body, the others take it (parsed through their own
:class:`IncrementalParser`, so a refresh stays one segment's work) and fall
back to fetching themselves only when the fetching instance went silent.
In that mode ``clock`` must be shared by the instances (epoch seconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from redis.exceptions import RedisError

from manifests.errors import ManifestError, PlaylistParseError
from manifests.playlist import EXT_X_PROGRAM_DATE_TIME, EXTINF, MediaPlaylist
from manifests.refresh import IncrementalParser
from manifests.timing import parse_pdt
from stitcher.errors import OriginUnavailable, UpstreamError
from stitcher.metrics import Metrics
from stitcher.netpolicy import read_bounded
from stitcher.shared_origin import Published, SharedOrigin, published

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str
    text: str
    playlist: MediaPlaylist
    #: Hash of the body: renders are cached per origin version.
    version: str
    fetched_at: float
    stale: bool = False
    error: str | None = None


@dataclass
class _Entry:
    good: Fetched | None = None
    #: Half the good playlist's target duration: how long ``good`` is reused.
    interval: float = 1.0
    inflight: asyncio.Task[Fetched] | None = None
    etag: str | None = None
    last_modified: str | None = None
    retry_not_before: float = 0.0
    #: The last good playlist marked stale, while the last attempt failed: what the
    #: backoff window serves (the last good as is would be an unannounced stale serve).
    stale: Fetched | None = None
    parser: IncrementalParser = field(default_factory=IncrementalParser)
    #: When ``newer`` last asked the origin directly.
    asked_again_at: float = float("-inf")

    def inflight_done(self, _task: asyncio.Task[Fetched]) -> None:
        self.inflight = None

    def keep(self, fetched: Fetched) -> None:
        self.good = fetched
        self.stale = None
        self.interval = (fetched.playlist.target_duration or 2) / 2


#: The largest origin playlist taken by default: a day of 2 s segments with long
#: signed URIs is ~12 MB; past the limit the body is refused unread (counted,
#: the last good playlist served), not parsed and stitched at gigabytes.
MAX_PLAYLIST_BYTES = 16 << 20


class PlaylistTooLarge(UpstreamError):
    """An origin answer larger than ``origin_max_bytes``."""


class OriginFetcher:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, channel: str, *,
                 timeout: float = 3.0, clock: Callable[[], float] = time.monotonic,
                 shared: SharedOrigin | None = None,
                 max_bytes: int = MAX_PLAYLIST_BYTES) -> None:
        self._session = session
        self._max_bytes = max_bytes
        self._shared = shared
        self._metrics = metrics
        self._channel = channel
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def last_good(self, url: str) -> Fetched | None:
        e = self._entries.get(url)
        return e.good if e else None

    def current(self, url: str) -> Fetched | None:
        """What :meth:`get` would return without fetching, or None when it would
        fetch (or join a fetch): the hot path's no-await check."""
        e = self._entries.get(url)
        if e is None or e.good is None:
            return None
        now = self._clock()
        if now - e.good.fetched_at < e.interval:
            return e.good
        if now < e.retry_not_before:
            return e.stale or e.good  # backing off: announced stale, as get() does
        return None

    async def get(self, url: str) -> Fetched:
        """The freshest playlist within the refresh interval, or the last good one."""
        e = self._entries.setdefault(url, _Entry())
        now = self._clock()
        if e.good is not None:
            if now - e.good.fetched_at < e.interval:
                return e.good
            if now < e.retry_not_before:
                # Backing off after a failure: still the last good playlist, and still
                # announced as stale (found by the drill: the first failure said so, the
                # reloads during the backoff did not, and the checker saw a stall).
                return e.stale or e.good
        if e.inflight is None:
            e.inflight = asyncio.ensure_future(self._refresh(url, e))
            e.inflight.add_done_callback(e.inflight_done)
        return await asyncio.shield(e.inflight)

    async def newer(self, url: str, than: Fetched) -> Fetched | None:
        """The origin asked directly, past the refresh interval and the shared record:
        a playlist newer than ``than``, or None (the same one, or the fetch failed).
        For a window that ended below what another instance had already published,
        from a shared record an instant older than the one it rendered (a race at
        each refresh, not an origin fault)."""
        e = self._entries.setdefault(url, _Entry())
        interval = (than.playlist.target_duration or 2) / 2
        now = self._clock()
        if now - e.asked_again_at < interval:
            return None  # at most once per refresh interval (an origin really behind)
        e.asked_again_at = now
        try:
            fetched = await self._fetch(url, e)
        except Exception as exc:  # noqa: BLE001 - the caller serves the last good instead
            log.info("origin asked again for %s: %s", url, exc)
            return None
        if fetched.version == than.version:
            return None
        e.good, e.stale = fetched, None
        return fetched

    async def _refresh(self, url: str, e: _Entry) -> Fetched:
        try:
            if self._shared is None:
                fetched, how = await self._fetch(url, e), "ok"
            else:
                fetched, how = await self._coordinated(url, e, self._shared)
        except Exception as exc:
            kind = kind_of(exc)
            self._metrics.origin_errors.labels(self._channel, kind).inc()
            self._metrics.origin_fetches.labels(self._channel, "error").inc()
            log.warning("origin fetch failed (%s) for %s: %s", kind, url, exc,
                        extra={"channel": self._channel})
            retry_after = getattr(exc, "retry_after", None)
            interval = ((e.good.playlist.target_duration or 2) / 2) if e.good else 1.0
            # Back off: never more than one attempt per refresh interval (or Retry-After).
            e.retry_not_before = self._clock() + max(float(retry_after or 0), interval)
            if e.good is None:
                raise OriginUnavailable(f"origin unavailable: {public_reason(kind, exc)}",
                                        retry_after=float(retry_after or 2)) from exc
            self._metrics.stale_serves.labels(self._channel).inc()
            stale = Fetched(e.good.url, e.good.text, e.good.playlist, e.good.version,
                            e.good.fetched_at, stale=True, error=public_reason(kind, exc))
            e.stale = stale
            return stale
        self._metrics.origin_fetches.labels(self._channel, how).inc()
        e.keep(fetched)
        return fetched

    async def _coordinated(self, url: str, e: _Entry,
                           shared: SharedOrigin) -> tuple[Fetched, str]:
        """One fetch across instances while the store answers; when it does not
        (Redis down, or stopped and silent past the budget), fetch here: the
        origin is not at fault, and losing the coordination costs the origin one
        request per instance, where failing would serve every viewer stale (found
        by a newcomer: ``origin: internal`` on every playlist of a Redis outage)."""
        budget = shared.wait_budget + self._timeout + 1.0
        try:
            async with asyncio.timeout(budget) as scope:
                return await self._fetch_shared(url, e, shared)
        except (RedisError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not scope.expired():
                raise  # the origin's own timeout, inside the budget
            self._metrics.store_errors.labels(self._channel, "origin").inc()
            log.warning("origin fetch coordination unavailable (%s): fetching %s here",
                        type(exc).__name__, url, extra={"channel": self._channel})
            return await self._fetch(url, e), "ok"

    async def _fetch_shared(self, url: str, e: _Entry,
                            shared: SharedOrigin) -> tuple[Fetched, str]:
        """One fetch across instances; returns the playlist and how it came
        (``ok``: fetched here, ``shared``: another instance's fetch)."""
        # Until the wait budget is spent (real time: the waits block on Redis): a
        # worker that died lets its short lease lapse, and the next acquire takes over.
        deadline = time.monotonic() + shared.wait_budget
        while time.monotonic() < deadline:
            out = await shared.acquire(url, self._clock())
            if out.status == "fresh":
                return self._adopt(url, e, out.record), "shared"
            if out.status == "failed":
                if e.good is None and published(out.record) is not None:
                    self._adopt(url, e, out.record)  # stale beats nothing at a cold start
                reason = out.record.get("error", b"").decode() or "origin failing"
                raise UpstreamError(f"shared: {reason}",
                                    retry_after=float(out.record.get("error_hold", 0)))
            if out.status == "lock":
                return await self._fetch_and_publish(url, e, shared, out.token), "ok"
            status = await shared.wait(url, out.after, max(0.01, min(
                out.lease_left, deadline - time.monotonic())))
            if status is None:
                continue  # the worker went silent: try for the lease again
            record = await shared.read(url)
            if status == "ok" and published(record) is not None:
                return self._adopt(url, e, record), "shared"
            if status == "error":
                reason = record.get("error", b"").decode() or "origin failing"
                raise UpstreamError(f"shared: {reason}")
        log.warning("origin fetch lease held by a silent instance, fetching %s here", url)
        return await self._fetch(url, e), "ok"

    async def _fetch_and_publish(self, url: str, e: _Entry, shared: SharedOrigin,
                                 token: int) -> Fetched:
        try:
            async with shared.renewed(url, token):
                fetched = await self._fetch(url, e)
        except Exception as exc:
            interval = ((e.good.playlist.target_duration or 2) / 2) if e.good else 1.0
            hold = max(float(getattr(exc, "retry_after", None) or 0), interval)
            await shared.publish_error(url, token, at=self._clock(), hold=hold,
                                       reason=public_reason(kind_of(exc), exc),
                                       ttl=max(10 * interval, 30.0))
            raise
        target = fetched.playlist.target_duration or 2
        await shared.publish(url, token, Published(fetched.text.encode("utf-8"), e.etag,
                                                   e.last_modified, fetched.fetched_at),
                             interval=target / 2, ttl=max(4 * target, 10))
        return fetched

    def _adopt(self, url: str, e: _Entry, record: dict[str, bytes]) -> Fetched:
        """Take another instance's fetch: same checks as a body fetched here."""
        p = published(record)
        if p is None:
            raise UpstreamError("shared record without a body")
        version = hashlib.sha1(p.body).hexdigest()[:16]
        if e.good is not None and e.good.version == version:
            g = e.good
            fetched = Fetched(g.url, g.text, g.playlist, g.version, p.fetched_at)
        else:
            fetched = self._accept(url, e, p.body, p.fetched_at)
        e.etag, e.last_modified = p.etag, p.last_modified
        e.keep(fetched)
        return fetched

    async def _fetch(self, url: str, e: _Entry) -> Fetched:
        headers = {}
        if e.good is not None and e.etag:
            headers["If-None-Match"] = e.etag
        if e.good is not None and e.last_modified:
            headers["If-Modified-Since"] = e.last_modified
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status == 304 and e.good is not None:
                g = e.good
                return Fetched(g.url, g.text, g.playlist, g.version, self._clock())
            if resp.status != 200:
                ra = resp.headers.get("Retry-After")
                raise UpstreamError(f"HTTP {resp.status}",
                                    retry_after=float(ra) if ra and ra.isdigit() else None)
            body = await read_bounded(resp, self._max_bytes, PlaylistTooLarge)
            e.etag = resp.headers.get("ETag")
            e.last_modified = resp.headers.get("Last-Modified")
        return self._accept(url, e, body, self._clock())

    def _accept(self, url: str, e: _Entry, body: bytes, fetched_at: float) -> Fetched:
        """Parse and check a body; raises on one that must not replace the last good."""
        text = body.decode("utf-8")
        playlist = e.parser.parse(text)
        if not playlist.rows:  # not .segments: a cold parse builds only what is read
            raise UpstreamError("playlist has no segments")
        _check_complete(playlist)
        if playlist.warnings:  # (a refresh's are its new lines': each counted once)
            self._metrics.origin_warnings.labels(self._channel).inc(len(playlist.warnings))
            more = len(playlist.warnings) - 1
            log.warning("origin playlist %s: %s%s", url, playlist.warnings[0],
                        f" (and {more} more)" if more else "",
                        extra={"channel": self._channel})
        if e.good is not None and playlist.media_sequence < e.good.playlist.media_sequence:
            raise UpstreamError(
                f"media sequence went backwards ({e.good.playlist.media_sequence} -> "
                f"{playlist.media_sequence})")
        if e.good is not None and not playlist.endlist:
            edge, good_edge = playlist.last_msn, e.good.playlist.last_msn
            if edge < good_edge:  # a live playlist only ever appends: a cut body
                raise UpstreamError(f"live edge went backwards ({good_edge} -> {edge})")
        version = hashlib.sha1(body).hexdigest()[:16]
        return Fetched(url, text, playlist, version, fetched_at)


def _check_complete(playlist: MediaPlaylist) -> None:
    """Reject a body cut short (a dropped connection, a half-written file at the origin).

    The lenient parser keeps whatever follows the last segment URI as trailer lines;
    a segment that was started there but never finished (an EXTINF with no URI, a
    date-time cut mid-value) means the body is not the whole playlist.
    """
    for line in playlist.trailer:
        if line.tag == EXTINF:
            raise PlaylistParseError(f"EXTINF without a segment URI at the end: {line.text!r}")
        if line.tag == EXT_X_PROGRAM_DATE_TIME and parse_pdt(line.value or "") is None:
            raise PlaylistParseError(f"malformed date-time at the end: {line.text!r}")


def public_reason(kind: str, exc: BaseException) -> str:
    """What a player may read of an origin fault (the 503 body, ``X-Stitcher-Stale``):
    the kind, and our own description of a bad answer, never a connection error's
    text, which names the origin's internal address (found by a newcomer). The
    log has it all."""
    if isinstance(exc, UpstreamError | ManifestError):
        return f"{kind}: {str(exc)[:200]}"
    return kind


def kind_of(exc: BaseException) -> str:
    """The ``stitcher_origin_errors_total`` kind of an origin fault."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ManifestError | UnicodeDecodeError):
        return "malformed"
    if isinstance(exc, PlaylistTooLarge):
        return "too_large"
    if isinstance(exc, UpstreamError):
        return "http" if exc.reason.startswith("HTTP") else "invalid"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "connect"
    log.exception("unexpected error while fetching the origin")
    return "internal"
