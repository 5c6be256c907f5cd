"""Content subtitles after a break stay the origin's own segments, and stay right.

Why no rewrite is needed (``docs/architecture.md``, "Subtitles after a break"):
a content WebVTT segment's X-TIMESTAMP-MAP names the PTS of the *content's*
video, and the stitcher changes no content media; what it changes is the
playlist, where each break becomes discontinuity spans. A player maps every
span on its own (RFC 8216bis 6.3.3: timestamps restart at a discontinuity;
hls.js keeps an initPTS per discontinuity counter, learnt from the span's
video), so a content cue lands right as long as the subtitle segment sits in
the same span as the video whose PTS its map names, with the same PDT. That is
what this test checks over real HTTP, with real media (ManualClock): the
subtitle playlist's content segments keep the origin's absolute URLs; each
one's map equals the first video PTS of the video segment of the same MSN
(read from the TS the stitched video playlist points at); both renditions give
that MSN the same discontinuity sequence and PDT; and a player that anchors
each span at its video puts every cue at exactly the PDT the cue names
(the fixture's cues are dated: ``fixtures/origin.py``). The break's own slots
are the stitcher's fillers: valid, empty, mapped, one URI each (B23).
The same check with a real player is ``tests/e2e/test_hlsjs_chromium.py``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, check, format_text
from manifests.mpegts import video_start_pts
from manifests.playlist import Segment, parse_media
from manifests.webvtt import TICKS, MapStatus, check_timestamp_map, cues, timestamp_map
from tests.harness import start_stack

BREAK = 14  # ad A (5 slots) and slate (2)


async def test_content_subtitles_after_a_break_keep_the_origin_map_of_their_span(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, subtitles=True) as stack:
        session = await stack.start_session()
        mv = await stack.runtime.multivariant()
        subs = next(r.id for r in mv.renditions if r.kind == "subtitles")
        video = next(r.id for r in mv.renditions if r.kind == "video")
        renditions = [r.id for r in mv.renditions]
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 2, BREAK)
        snapshots: list[Snapshot] = []
        seen: dict[str, dict[int, Segment]] = {rid: {} for rid in renditions}
        for step in range(brk.segments + 8):  # the break and a window of content after
            playlists, origins = {}, {}
            for rid in renditions:
                status, _, body = await stack.get(session.media_url(rid))
                assert status == 200, body
                playlists[rid] = body.decode()
                origin = stack.origin.media_playlist(await stack.origin_rendition(rid))
                assert origin is not None
                origins[rid] = origin
                for seg in parse_media(playlists[rid]).segments:
                    seen[rid].setdefault(seg.msn, seg)
            snapshots.append(Snapshot(step, playlists, clock.now(), origins))
            clock.advance(2)
            await asyncio.sleep(0)

        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)
        media_base = f"{session.base}/media/"
        msns = sorted(seen[subs])
        assert msns[0] < brk.start_msn and msns[-1] >= brk.end_msn + 4, (msns, brk)
        assert sorted(seen[video]) == msns

        fillers: list[str] = []
        spans: dict[int, tuple[datetime, int]] = {}  # dsn -> a video (PDT, PTS) in it
        checked_after = 0
        for msn in msns:
            sub, vid = seen[subs][msn], seen[video][msn]
            assert (sub.discontinuity_sequence, sub.pdt) == (vid.discontinuity_sequence, vid.pdt)
            assert sub.pdt is not None and sub.duration == vid.duration
            if brk.start_msn <= msn < brk.end_msn:
                assert sub.uri.startswith("ad/"), sub.uri  # the stitcher's filler
                status, headers, body = await stack.get(urljoin(media_base, sub.uri))
                assert status == 200 and headers["Content-Type"].startswith("text/vtt")
                text = body.decode()
                assert timestamp_map(text) is not None and cues(text) == (), text
                fillers.append(sub.uri)
                continue
            # Content: the origin's own segment, fetched straight from the origin.
            assert sub.uri.startswith(f"{stack.origin_base}/live/"), sub.uri
            status, _, body = await stack.get(sub.uri)
            assert status == 200, (sub.uri, body)
            vtt = body.decode()
            status, _, ts = await stack.get(urljoin(media_base, vid.uri))
            assert status == 200, vid.uri
            pts = video_start_pts(ts)
            result = check_timestamp_map(vtt, pts)
            assert result.status is MapStatus.OK, (msn, result.found, result.expected)
            # A player anchors each span at its video; every cue must land on its PDT.
            anchor_pdt, anchor_pts = spans.setdefault(vid.discontinuity_sequence,
                                                      (vid.pdt, pts))
            for cue, text in zip(cues(vtt), _cue_texts(vtt), strict=True):
                at = anchor_pdt + timedelta(
                    seconds=float(cue.start - Fraction(anchor_pts, TICKS)))
                assert round(at.timestamp() * 1000) == round(
                    datetime.fromisoformat(text).timestamp() * 1000), (msn, cue, text)
            if msn >= brk.end_msn:
                checked_after += 1
        assert len(fillers) == brk.segments and len(set(fillers)) == len(fillers), fillers
        assert checked_after >= 4
        # The break really split the timeline: content before it, the ad, the slate and
        # content after it are four spans of the subtitle playlist as of the video.
        assert len({seen[subs][m].discontinuity_sequence for m in msns}) == 4


def _cue_texts(body: str) -> list[str]:
    """The payload line after each cue timing line (the fixture's cues have one)."""
    lines = body.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if " --> " in line]
