"""stitcher.captions: where the video PTS of a content WebVTT segment comes from.

A wrong PTS would "repair" a right map, so it is taken only where it is known:
from the video segment at the same PDT, or, for a segment older than the video's
window, across the same discontinuity span only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

from manifests.multivariant import Multivariant, Rendition
from manifests.playlist import MediaPlaylist, Segment, parse_media
from manifests.timing import format_pdt
from manifests.webvtt import TICKS
from stitcher.captions import ContentCaptions

T0 = datetime(2026, 5, 1, 20, 0, tzinfo=UTC)
VIDEO = Rendition("v0", "video", "http://origin.test/v0.m3u8", "main")
SUBS = Rendition("s0", "subtitles", "http://origin.test/s0.m3u8", "subs")
MV = Multivariant((), (VIDEO, SUBS))


def _playlist(kind: str, first: int, count: int, wrap_at: int | None = None) -> MediaPlaylist:
    """2 s segments from MSN ``first``; a discontinuity (a new PTS run) at ``wrap_at``."""
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}",
             f"#EXT-X-DISCONTINUITY-SEQUENCE:{0 if wrap_at is None or first < wrap_at else 1}"]
    for msn in range(first, first + count):
        if msn == wrap_at and msn != first:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(T0 + timedelta(seconds=2 * msn))}",
                  "#EXTINF:2.000,", f"{kind}{msn}.{'ts' if kind == 'v' else 'vtt'}"]
    return parse_media("\n".join(lines) + "\n")


class _Runtime:
    def __init__(self, video: MediaPlaylist, subs: MediaPlaylist) -> None:
        self.playlists = {VIDEO.id: video, SUBS.id: subs}

    async def current(self, rendition: Rendition) -> tuple[None, MediaPlaylist]:
        return None, self.playlists[rendition.id]


def _captions(video: MediaPlaylist, subs: MediaPlaylist, first_pts: dict[int, int]
              ) -> ContentCaptions:
    # No HTTP session: every PTS is given, so nothing is fetched.
    captions = ContentCaptions(_Runtime(video, subs), None,  # type: ignore[arg-type]
                               timeout=1.0, clock=lambda: 0.0)
    for msn, pts in first_pts.items():  # as if read from each video segment's head
        captions._pts[f"http://origin.test/v{msn}.ts"] = pts
    return captions


def _vtt(playlist: MediaPlaylist, msn: int) -> Segment:
    return next(s for s in playlist.segments if s.msn == msn)


async def test_the_pts_of_the_video_segment_at_the_same_pdt() -> None:
    video, subs = _playlist("v", 10, 6), _playlist("s", 10, 6)
    captions = _captions(video, subs, {12: 900_000})
    assert await captions._video_pts(_vtt(subs, 12), MV, SUBS) == 900_000


async def test_an_older_segment_from_the_same_span_counts_back_from_the_window() -> None:
    routed = _vtt(_playlist("s", 4, 6), 5)  # routed when it was in the window
    video, subs = _playlist("v", 10, 6), _playlist("s", 10, 6)
    captions = _captions(video, subs, {10: 5 * TICKS})
    assert await captions._video_pts(routed, MV, SUBS) == (5 - 10) * TICKS % (1 << 33)


async def test_never_across_a_discontinuity() -> None:
    """The window now starts after a discontinuity the old segment is before: its
    PTS cannot be counted back (the run restarted), so the map is left as it came."""
    routed = _vtt(_playlist("s", 4, 6, wrap_at=9), 5)
    video, subs = _playlist("v", 10, 6, wrap_at=9), _playlist("s", 10, 6, wrap_at=9)
    assert routed.discontinuity_sequence == 0 and subs.segments[0].discontinuity_sequence == 1
    captions = _captions(video, subs, {10: 5 * TICKS})
    assert await captions._video_pts(routed, MV, SUBS) is None


async def test_fmp4_video_has_no_mpegts_pts_to_read() -> None:
    text = "\n".join(["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:10",
                      '#EXT-X-MAP:URI="init.mp4"',
                      f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(T0 + timedelta(seconds=20))}",
                      "#EXTINF:2.000,", "v10.m4s"]) + "\n"
    subs = _playlist("s", 10, 1)
    captions = _captions(parse_media(text), subs, {10: 0})
    assert await captions._video_pts(_vtt(subs, 10), MV, SUBS) is None


async def test_no_pdt_no_pts() -> None:
    subs = _playlist("s", 10, 1)
    seg = _vtt(subs, 10)
    undated = Segment(seg.msn, Fraction(2), seg.uri, seg.raw)
    assert await _captions(_playlist("v", 10, 1), subs, {10: 0})._video_pts(
        undated, MV, SUBS) is None
