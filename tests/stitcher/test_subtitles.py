"""Content subtitles after a break stay right, whatever the origin's maps.

With a correct origin no map needs rewriting (``docs/architecture.md``,
"Subtitles after a break"):
a content WebVTT segment's X-TIMESTAMP-MAP names the PTS of the *content's*
video, and the stitcher changes no content media; what it changes is the
playlist, where each break becomes discontinuity spans. A player maps every
span on its own (RFC 8216bis 6.3.3: timestamps restart at a discontinuity;
hls.js keeps an initPTS per discontinuity counter, learnt from the span's
video), so a content cue lands right as long as the subtitle segment sits in
the same span as the video whose PTS its map names, with the same PDT. That is
what this test checks over real HTTP, with real media (ManualClock): the
subtitle playlist's content segments are the origin's (``subtitle_maps:
origin``: at its absolute URLs; ``repair``, the default: through the stitcher,
byte for byte the origin's); each one's map equals the first video PTS of the video segment of the same MSN
(read from the TS the stitched video playlist points at); both renditions give
that MSN the same discontinuity sequence and PDT; and a player that anchors
each span at its video puts every cue at exactly the PDT the cue names
(the fixture's cues are dated: ``fixtures/origin.py``). The break's own slots
are the stitcher's fillers: valid, empty, mapped, one URI each (B23).
The same check with a real player is ``tests/e2e/test_hlsjs_chromium.py``.

With a faulty packager (B22: no map, or another span's map on every segment)
the origin's cues would land elsewhere; with ``repair`` the stitcher serves each
segment with the map of its video span, and every cue lands on its PDT again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from fixtures.clock import ManualClock
from fixtures.origin import FaultRule
from manifests.checker import Snapshot, check, format_text
from manifests.mpegts import video_start_pts
from manifests.playlist import parse_media
from manifests.webvtt import TICKS, MapStatus, check_timestamp_map, cues, timestamp_map
from tests.harness import poll_renditions, start_stack

BREAK = 14  # ad A (5 slots) and slate (2)
_ROUTED = re.compile(r"cv/(?P<rid>[^/]+)/(?P<msn>\d+)-(?P<digest>[0-9a-f]{10})\.vtt")


@pytest.mark.parametrize(("mode", "fault"), [
    ("origin", None), ("repair", None), ("repair", "missing"), ("repair", "stale")])
async def test_content_subtitles_after_a_break_carry_the_map_of_their_span(
        media: Any, assets_dir: Path, tmp_path: Path, mode: str, fault: str | None) -> None:
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, subtitles=True,
                           subtitle_fault=fault,
                           channel_config={"subtitle_maps": mode}) as stack:
        session = await stack.start_session()
        mv = await stack.runtime.multivariant()
        subs = next(r.id for r in mv.renditions if r.kind == "subtitles")
        video = next(r.id for r in mv.renditions if r.kind == "video")
        renditions = [r.id for r in mv.renditions]
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 2, BREAK)
        # The break and a window of content after it.
        polled = await poll_renditions(stack, session, renditions, brk.segments + 8, clock)
        seen, origin_subs = polled.seen, polled.origin[subs]  # (by the origin's MSN)
        faults = [v for v in check(polled.snapshots) if v.source == "stitcher"]
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
            if mode == "origin":  # the origin's own segment, fetched straight from it
                assert sub.uri.startswith(f"{stack.origin_base}/live/"), sub.uri
                status, _, body = await stack.get(sub.uri)
                assert status == 200, (sub.uri, body)
            else:  # through the stitcher, the same URI for every session
                routed = _ROUTED.fullmatch(sub.uri)
                assert routed is not None and routed["rid"] == subs, sub.uri
                status, headers, body = await stack.get(urljoin(media_base, sub.uri))
                assert status == 200 and headers["Content-Type"].startswith("text/vtt"), body
                assert headers["Cache-Control"] == "public, max-age=86400"
                own = origin_subs[int(routed["msn"])]
                rendition = (await stack.runtime.multivariant()).rendition(subs)
                assert rendition is not None
                status, _, original = await stack.get(urljoin(rendition.uri, own.uri))
                assert status == 200
            vtt = body.decode()
            status, _, ts = await stack.get(urljoin(media_base, vid.uri))
            assert status == 200, vid.uri
            pts = video_start_pts(ts)
            result = check_timestamp_map(vtt, pts)
            assert result.status is MapStatus.OK, (msn, result.found, result.expected)
            if mode == "repair":  # the origin's bytes unless its map was wrong
                right = check_timestamp_map(original.decode(), pts).status is MapStatus.OK
                assert (body == original) is right, (msn, original, body)
                # ``stale`` names the first looped segment's PTS: right there only.
                assert right if fault is None else (not right or fault == "stale")
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
        content = len(msns) - brk.segments
        name = "stitcher_content_captions_total"
        outcomes = {o: await stack.metric(name, outcome=o)
                    for o in ("ok", "equivalent", "repaired", "kept", "unprobed",
                              "origin_error", "not_webvtt")}
        if mode == "origin":
            assert sum(outcomes.values()) == 0, outcomes
        elif fault is None:  # each segment decided once, however often it was asked
            assert outcomes == {**dict.fromkeys(outcomes, 0), "ok": content}, outcomes
        else:  # ``stale`` is right where it names the first looped segment's own PTS
            assert outcomes["repaired"] + outcomes["ok"] == sum(outcomes.values()) == content
            assert outcomes["repaired"] == content if fault == "missing" else (
                outcomes["repaired"] >= content // 2), outcomes


def _cue_texts(body: str) -> list[str]:
    """The payload line after each cue timing line (the fixture's cues have one)."""
    lines = body.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if " --> " in line]


async def test_content_captions_fall_back_and_coalesce(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    """The repair route's edges: the video unreadable (the VTT as it came, cached
    briefly, repaired once the video reads), the origin VTT failing (a redirect to
    it: the player gets what it would have without the stitcher), bad paths, and
    many players asking at once (one origin fetch)."""
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, subtitles=True,
                           subtitle_fault="missing") as stack:
        session = await stack.start_session()
        mv = await stack.runtime.multivariant()
        subs = next(r for r in mv.renditions if r.kind == "subtitles")
        video = await stack.origin_rendition(next(r.id for r in mv.renditions
                                                  if r.kind == "video"))
        status, _, body = await stack.get(session.media_url(subs.id))
        assert status == 200
        routed = [s.uri for s in parse_media(body.decode()).segments]
        assert len(routed) >= 4 and all(_ROUTED.fullmatch(u) for u in routed), routed
        media_base = f"{session.base}/media/"
        origin_subs = await stack.origin_rendition(subs.id)
        origin_sub = {seg.msn: urljoin(subs.uri, seg.uri) for seg in parse_media(
            stack.origin.media_playlist(origin_subs) or "").segments}

        async def served(uri: str) -> tuple[int, Mapping[str, str], bytes]:
            return await stack.get(urljoin(media_base, uri))

        def origin_msn(uri: str) -> int:
            found = _ROUTED.fullmatch(uri)
            assert found is not None
            return int(found["msn"])

        # The video unreadable: the origin's VTT as it came, for one segment's time.
        stack.origin.add_fault(FaultRule(kinds=frozenset({"segment"}),
                                         renditions=frozenset({video}), body="garbage"))
        status, headers, body = await served(routed[0])
        assert status == 200 and timestamp_map(body.decode()) is None
        _, _, original = await stack.get(origin_sub[origin_msn(routed[0])])
        assert body == original and headers["Cache-Control"] == "public, max-age=2"
        assert await stack.metric("stitcher_content_captions_total", outcome="unprobed") == 1
        stack.origin.clear_faults()
        clock.advance(3)
        status, headers, body = await served(routed[0])
        assert status == 200 and timestamp_map(body.decode()) is not None
        assert headers["Cache-Control"] == "public, max-age=86400"

        # The origin's VTT failing: a redirect to it, not cached.
        stack.origin.add_fault(FaultRule(kinds=frozenset({"segment"}),
                                         renditions=frozenset({origin_subs}),
                                         status=503, remaining=1))
        status, headers, _ = await served(routed[1])
        assert status == 302 and headers["Location"] == origin_sub[origin_msn(routed[1])]
        assert headers["Cache-Control"] == "no-store"
        assert await stack.metric("stitcher_content_captions_total",
                                  outcome="origin_error") == 1
        clock.advance(2)
        status, _, body = await served(routed[1])
        assert status == 200 and timestamp_map(body.decode()) is not None

        # Many players at once: one fetch of the VTT from the origin.
        before = stack.origin.count("segment", origin_subs)
        answers = await asyncio.gather(*(served(routed[2]) for _ in range(20)))
        assert {(s, b) for s, _, b in answers} == {(200, answers[0][2])}
        assert stack.origin.count("segment", origin_subs) == before + 1

        # Bad paths: clear errors, never a 500.
        last = origin_msn(routed[-1])
        digest = _ROUTED.fullmatch(routed[-1])["digest"]  # type: ignore[index]
        for uri, expected in ((f"cv/{subs.id}/x1.vtt", 400), (f"cv/{subs.id}/{last}.vtt", 400),
                              (f"cv/{subs.id}/{last}-{digest[:-1]}g.vtt", 400),
                              (f"cv/{subs.id}/0{last}-{digest}.vtt", 400),
                              (f"cv/v0/{last}-{digest}.vtt", 404),
                              (f"cv/{subs.id}/{last}-{'0' * 10}.vtt", 404),
                              (f"cv/{subs.id}/{last + 10_000}-{digest}.vtt", 404)):
            status, headers, body = await served(uri)
            assert status == expected and headers["Content-Type"].startswith(
                "application/json"), (uri, status, body)


@pytest.mark.parametrize("seen_before", [False, True])
async def test_subtitles_turned_on_after_a_break_count_the_same_discontinuities(
        media: Any, assets_dir: Path, tmp_path: Path, seen_before: bool) -> None:
    """Found by a newcomer: a cohort watched without subtitles through a break, then
    someone turns them on. The subtitle grid's ledger started empty, so its
    EXT-X-DISCONTINUITY-SEQUENCE lagged the video's by the break's two for good
    (invariant 5; players pair renditions by it).

    ``seen_before``, found by another: the same for a grid rendered before (a viewer
    had subtitles on, turned them off for a while; or demuxed audio nobody in the
    cohort polled across a break, e.g. after a restart): its ledger was not empty,
    so the seed did not apply, and the window after the gap was anchored on the
    origin's tag plus the deltas this grid had seen."""
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, subtitles=True) as stack:
        session = await stack.start_session()
        mv = await stack.runtime.multivariant()
        subs = next(r.id for r in mv.renditions if r.kind == "subtitles")
        video = [r.id for r in mv.renditions if r.kind == "video"]
        if seen_before:
            for rid in [*video, subs]:  # every grid published once: its ledger not empty
                status, _, _ = await stack.get(session.media_url(rid))
                assert status == 200
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 2, BREAK)
        for _ in range(brk.segments + 10):  # the break plays and leaves the window
            status, _, body = await stack.get(session.media_url(video[0]))
            assert status == 200
            clock.advance(2)
            await asyncio.sleep(0)
        snapshots: list[Snapshot] = []
        for step in range(4):
            playlists = {}
            for rid in [*video, subs]:
                status, _, body = await stack.get(session.media_url(rid))
                assert status == 200
                playlists[rid] = body.decode()
            parsed = {rid: parse_media(text) for rid, text in playlists.items()}
            assert len({(p.media_sequence, p.discontinuity_sequence)
                        for p in parsed.values()}) == 1, {
                rid: (p.media_sequence, p.discontinuity_sequence) for rid, p in parsed.items()}
            assert parsed[subs].discontinuity_sequence >= 2  # the break's two, counted
            snapshots.append(Snapshot(step, playlists, clock.now()))
            clock.advance(2)
            await asyncio.sleep(0)
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)