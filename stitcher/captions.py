"""Content WebVTT served with the X-TIMESTAMP-MAP of its video span (B22).

An origin that puts no map (or another span's) on the subtitle segments after
a discontinuity makes players show their cues at the wrong media time, or not at
all (hls.js#7850). With ``subtitle_maps: repair`` (the default) a subtitle
playlist names its content segments ``cv/<rid>/<origin msn>-<URL digest>.vtt`` and this
serves them: the origin's body, its map checked against the PTS the video
starts at in that segment (read from the first bytes of the video segment that
covers it, same PDT) and rewritten only where it is wrong for sure
(:func:`manifests.webvtt.repair_timestamp_map`).

Answers are cached per origin URL (a segment's bytes never change) and computed
once per instance however many viewers ask at once. When the origin VTT cannot
be fetched the player is redirected to it (it gets what it would have without
the stitcher); when the video cannot be read the VTT is served as it came.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp

from manifests.mpegts import MpegTsError, video_start_pts
from manifests.multivariant import Multivariant, Rendition
from manifests.playlist import MediaPlaylist, Segment
from manifests.webvtt import RepairOutcome, WebVttError, pts_at, repair_timestamp_map
from stitcher.errors import NotFound
from stitcher.netpolicy import fetch_bounded

if TYPE_CHECKING:
    from stitcher.channel import ChannelRuntime

log = logging.getLogger(__name__)

#: How a subtitle playlist names the content segments served here (relative to it).
ROUTE_PREFIX = "cv/"
#: A VTT segment larger than this is not subtitles.
MAX_VTT_BYTES = 1 << 20
#: Bytes of the video segment read for its first PTS: the PAT, the PMT and the
#: first frames' PES headers come first (a GOP's B-frames included).
VIDEO_HEAD_BYTES = 256 * 1024
#: Cached answers per channel (one per content subtitle segment).
CACHE_ENTRIES = 4096
_MICROSECOND = timedelta(microseconds=1)
_SLACK = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Caption:
    """What to answer: a body (``outcome`` says what its map needed) or, when
    ``redirect`` is set, the origin URL to send the player to."""

    outcome: str
    body: bytes = b""
    redirect: str | None = None
    #: Seconds a cache may keep it: a decided segment never changes; one whose
    #: video could not be read (or whose origin failed) is asked again soon.
    max_age: int = 86400


class ContentCaptions:
    """One channel's content WebVTT segments, as served (see the module)."""

    def __init__(self, runtime: ChannelRuntime, http: aiohttp.ClientSession, *,
                 timeout: float, clock: Callable[[], float]) -> None:
        self._runtime = runtime
        self._http = http
        self._timeout = timeout
        self._clock = clock
        #: origin URL -> (answer, until when it holds)
        self._done: OrderedDict[str, tuple[Caption, float]] = OrderedDict()
        #: (rendition, origin MSN, URI digest) -> (origin URL, segment) of every
        #: segment a render routed here: a player may ask for one after it left the
        #: origin's window.
        self._routed: OrderedDict[tuple[str, int, str], tuple[str, Segment]] = OrderedDict()
        #: video segment URL -> its first PTS
        self._pts: OrderedDict[str, int] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[Caption]] = {}

    def route(self, rid: str, base_url: str, segment: Segment) -> str:
        """The URI a render gives a content segment of subtitle rendition ``rid``
        (relative to its media playlist), remembering where it came from.

        ``<origin msn>-<hash of the segment's URI as the origin wrote it>``: an
        origin that restarts its numbering must not make one URI name two segments
        (a CDN would keep the first)."""
        url = urljoin(base_url, segment.uri)
        digest = uri_digest(segment.uri)
        key = (rid, segment.msn, digest)
        self._routed[key] = (url, segment)
        self._routed.move_to_end(key)
        while len(self._routed) > CACHE_ENTRIES:
            self._routed.popitem(last=False)
        return f"{ROUTE_PREFIX}{rid}/{segment.msn}-{digest}.vtt"

    async def segment(self, rid: str, msn: int, digest: str) -> Caption:
        rt = self._runtime
        mv = await rt.multivariant()
        rendition = mv.rendition(rid)
        if rendition is None or rendition.kind != "subtitles":
            raise NotFound(f"no subtitle rendition {rid!r} on channel {rt.cfg.id!r}")
        routed = self._routed.get((rid, msn, digest))
        if routed is not None:
            url, seg = routed
        else:  # rendered by another instance: it is in the window the players see
            _fetched, playlist = await rt.current(rendition)
            found = _by_msn(playlist, msn)
            if found is None or uri_digest(found.uri) != digest:
                raise NotFound(f"subtitle segment {msn}-{digest} of {rid!r} is not in the "
                               "origin's window")
            url, seg = urljoin(rendition.uri, found.uri), found
        done = self._done.get(url)
        if done is not None and done[1] > self._clock():
            self._done.move_to_end(url)
            return done[0]
        task = self._inflight.get(url)
        if task is None:
            task = self._inflight[url] = asyncio.ensure_future(
                self._answer(url, seg, mv, rendition))
            task.add_done_callback(lambda _t: self._inflight.pop(url, None))
        return await asyncio.shield(task)

    async def _answer(self, url: str, seg: Segment, mv: Multivariant,
                      rendition: Rendition) -> Caption:
        try:
            raw = await fetch_bounded(self._http, url, timeout=self._timeout,
                                      max_bytes=MAX_VTT_BYTES)
        except Exception as exc:  # noqa: BLE001 - the player still gets the origin's file
            log.warning("content caption %s unavailable (%s): redirecting to it", url, exc)
            return self._keep(url, Caption("origin_error", redirect=url, max_age=1))
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return self._keep(url, Caption("not_webvtt", raw))
        pts = await self._video_pts(seg, mv, rendition)
        if pts is None:
            return self._keep(url, Caption("unprobed", raw, max_age=int(seg.duration) or 1))
        try:
            repair = repair_timestamp_map(text, pts, seg.duration)
        except WebVttError:
            return self._keep(url, Caption("not_webvtt", raw))
        if repair.outcome is RepairOutcome.REPAIRED:
            log.info("content caption %s: X-TIMESTAMP-MAP %s, written for video PTS %d",
                     url, "missing" if repair.check.found is None else repair.check.found, pts)
        body = raw if repair.body is text else repair.body.encode("utf-8")
        return self._keep(url, Caption(repair.outcome.value, body))

    def _keep(self, url: str, caption: Caption) -> Caption:
        """Remember an answer (counted once per segment, not per request)."""
        rt = self._runtime
        rt.metrics.content_captions.labels(rt.cfg.id, caption.outcome).inc()
        self._done[url] = (caption, self._clock() + caption.max_age)
        self._done.move_to_end(url)
        while len(self._done) > CACHE_ENTRIES:
            self._done.popitem(last=False)
        return caption

    async def _video_pts(self, seg: Segment, mv: Multivariant,
                         rendition: Rendition) -> int | None:
        """The main video's PTS at ``seg``'s start; None when it cannot be known
        for sure (a wrong PTS would "repair" a right map).

        From the video segment covering it (same PDT) while that is in the video's
        window. For an older segment (a player behind the live edge), from the
        video's first segment plus the PDT between them, when the subtitle
        playlist shows no discontinuity between the two (within a span PTS run on
        with PDT: RFC 8216bis 6.3.3 puts every timestamp jump behind one)."""
        main = next((r for r in mv.renditions if r.grid == "main"), None)
        if seg.pdt is None or main is None:
            return None
        try:
            _fetched, video = await self._runtime.current(main)
            anchor = _covering(video, seg.pdt)
            if anchor is None:
                anchor = next((v for v in video.segments if v.pdt is not None), None)
                _fetched, subs = await self._runtime.current(rendition)
                twin = _covering(subs, anchor.pdt) if anchor and anchor.pdt else None
                if twin is None or twin.discontinuity_sequence != seg.discontinuity_sequence:
                    return None
        except Exception as exc:  # noqa: BLE001 - serve the VTT as it came
            log.warning("main rendition unavailable for a caption's PTS: %s", exc)
            return None
        if anchor is None or anchor.pdt is None or anchor.map is not None or (
                anchor.byterange is not None):
            return None  # not in the video's window, or fMP4 (no MPEG-TS PTS to read)
        first = await self._first_pts(urljoin(main.uri, anchor.uri))
        if first is None:
            return None
        return pts_at(first, Fraction((seg.pdt - anchor.pdt) // _MICROSECOND, 1_000_000))

    async def _first_pts(self, url: str) -> int | None:
        """A video segment's first PTS, read from its first bytes (kept per URL)."""
        known = self._pts.get(url)
        if known is not None:
            return known
        try:
            first = video_start_pts(await _head(self._http, url, VIDEO_HEAD_BYTES,
                                                self._timeout))
        except (TimeoutError, MpegTsError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot read the video PTS of %s: %s", url, exc)
            return None
        self._pts[url] = first
        while len(self._pts) > CACHE_ENTRIES:
            self._pts.popitem(last=False)
        return first


def uri_digest(uri: str) -> str:
    """Ten hex digits naming an origin segment URI (as its playlist writes it, so
    the same wherever the origin is reached from) in a routed URI."""
    return hashlib.blake2s(uri.strip().encode(), digest_size=5).hexdigest()


def _by_msn(playlist: MediaPlaylist, msn: int) -> Segment | None:
    segments = playlist.segments
    if not segments:
        return None
    at = msn - segments[0].msn
    if 0 <= at < len(segments) and segments[at].msn == msn:
        return segments[at]
    return None


def _covering(video: MediaPlaylist, at: datetime) -> Segment | None:
    """The video segment whose [PDT, PDT + duration) holds ``at`` (1 ms slack)."""
    for v in reversed(video.segments):
        if v.pdt is not None and v.pdt - _SLACK <= at < v.pdt + v.step - _SLACK:
            return v
    return None


async def _head(http: aiohttp.ClientSession, url: str, limit: int, timeout: float) -> bytes:
    """Up to ``limit`` bytes from the start of ``url`` (a Range request; an origin
    that ignores it is read only that far)."""
    async with http.get(url, headers={"Range": f"bytes=0-{limit - 1}"},
                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        data = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) >= limit:
                break
        return bytes(data[:limit])
