"""ffmpeg plays a live stitched stream across a whole ad break, in real time.

The fixture origin, the fixture VAST ad server and the stitcher run in this
process on the wall clock. The channel is warmed up first (the slate and both
ads conditioned), then a break is signalled two segments ahead of the live
edge and ffmpeg opens the session's multivariant playlist over HTTP and
decodes until content is back (the multivariant lists the origin's WebVTT
subtitle rendition too, as the hls.js test's does). Every decoded frame carries a frame code
(``fixtures/framecode.py``), so the expected picture sequence is computed
from the configuration alone and compared frame by frame:

content up to the CUE-OUT, then each ad of the pod in order (its frames
0..N-1, then black padding up to the slot boundary), then slate, then the
content again at exactly the frame the CUE-IN segment starts with.

Beacons are counted from the ad server's raw hit log (an independent
observer), per session: ffmpeg's session fires each event exactly once, in
order, after the segment request that reaches it; a session that only polls
playlists over the same span fires nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fixtures import framecode
from fixtures.adserver import TRACKED_EVENTS, BeaconHit
from fixtures.clock import SystemClock
from fixtures.framecode import FrameCode, FrameRead
from fixtures.origin import AdBreak
from stitcher.app import BEACONS
from tests.harness import SessionHandle, Stack, start_stack

pytestmark = pytest.mark.e2e

BREAK_SECONDS = 30  # ad A (10 s) + ad B (15 s, padded to 16 s) + 4 s of slate
CONTENT_AFTER = 2   # content slots decoded after the CUE-IN
BLACK_LUMA = 24     # mean luma of a black padding frame is about 16 or less
QUARTILES = ("firstQuartile", "midpoint", "thirdQuartile")


@dataclass(frozen=True)
class Expected:
    """One expected frame: its code (None: black padding) and what it belongs to."""

    code: FrameCode | None
    what: str  # "content", "ad:<id>", "pad:<id>", "slate"
    msn: int


@dataclass(frozen=True)
class PlannedAd:
    ad_id: str
    source_id: int
    duration: Fraction
    slots: int
    first_msn: int


def plan(media: Any, brk: AdBreak, nominal: Fraction, min_slate: Fraction
         ) -> tuple[list[PlannedAd], int]:
    """The break fill policy (DESIGN.md), from the configuration: whole ads in pod
    order that fit, each over ceil(duration / nominal) slots; the remainder is slate
    when it is at least ``min_slate``. Returns (ads, slate slots)."""
    ads: list[PlannedAd] = []
    cursor = Fraction(0)
    for ad in media.ads:  # the fixture ad server answers the ads in this order
        slots = math.ceil(ad.duration / nominal)
        if cursor + slots * nominal <= brk.planned_duration:
            ads.append(PlannedAd(ad.id, ad.source_id, ad.duration, slots,
                                 brk.start_msn + int(cursor / nominal)))
            cursor += slots * nominal
    remainder = brk.planned_duration - cursor
    slate_slots = math.ceil(remainder / nominal) if remainder >= min_slate else 0
    return ads, slate_slots


def expected_frames(media: Any, brk: AdBreak, ads: list[PlannedAd], slate_slots: int,
                    first_msn: int, last_msn: int, nominal: Fraction) -> list[Expected]:
    fps = media.fps
    per_slot = int(nominal * fps)
    loop = len(media.renditions[0].segments)
    slate_source_slots = int(media.slate_duration / nominal)
    frames: list[Expected] = []
    by_msn: dict[int, list[Expected]] = {}
    for ad in ads:
        real = int(ad.duration * fps)
        for slot in range(ad.slots):
            by_msn[ad.first_msn + slot] = [
                Expected(FrameCode(ad.source_id, n), f"ad:{ad.ad_id}", ad.first_msn + slot)
                if n < real else Expected(None, f"pad:{ad.ad_id}", ad.first_msn + slot)
                for n in range(slot * per_slot, (slot + 1) * per_slot)]
    slate_first = brk.start_msn + sum(a.slots for a in ads)
    for j in range(slate_slots):
        base = (j % slate_source_slots) * per_slot
        by_msn[slate_first + j] = [Expected(FrameCode(framecode.SOURCE_SLATE, base + i),
                                            "slate", slate_first + j) for i in range(per_slot)]
    for msn in range(first_msn, last_msn + 1):
        if msn in by_msn:
            frames += by_msn[msn]
        else:  # content: the origin's segment of this MSN, frame-accurate
            start = (msn % loop) * per_slot
            frames += [Expected(FrameCode(framecode.SOURCE_CONTENT, start + i), "content", msn)
                       for i in range(per_slot)]
    return frames


def runs(reads: list[FrameRead]) -> str:
    """A compact picture of a decoded sequence, for assertion messages."""
    out = []
    for source, group in itertools.groupby(
            reads, key=lambda r: None if r.code is None else r.code.source_id):
        g = list(group)
        first, last = g[0].code, g[-1].code
        out.append(f"{source}: {len(g)} frames "
                   f"[{first.frame if first else '-'}..{last.frame if last else '-'}]")
    return "; ".join(out)


async def poll_playlists(stack: Stack, session: SessionHandle, renditions: list[str],
                         stop: asyncio.Event, seen: list[bytes]) -> int:
    """A control player: reloads every media playlist each second, fetches no segment."""
    polls = 0
    while not stop.is_set():
        for rid in renditions:
            status, _, body = await stack.get(session.media_url(rid))
            assert status == 200, body
            seen.append(body)
            polls += 1
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    return polls


async def test_ffmpeg_plays_a_live_break_frame_accurately_and_beacons_fire_once(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    async with start_stack(clock=SystemClock(), media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True, subtitles=True) as stack:
        warmed = time.monotonic()
        runtime = stack.runtime
        nominal = stack.origin.d
        fps = media.fps
        per_slot = int(nominal * fps)
        renditions = await stack.stitcher_renditions()
        # The origin's WebVTT rendition is in the multivariant ffmpeg opens (and polled
        # below with the video): subtitles must not disturb a client that ignores them.
        kinds = [r.kind for r in (await runtime.multivariant()).renditions]
        assert kinds.count("subtitles") == 1, kinds

        player = await stack.start_session()
        control = await stack.start_session()
        assert player.session_id != control.session_id
        assert player.cohort == control.cohort  # same cohort: same playlists, same ads
        await stack.app[BEACONS].drain()
        hits_before = len(stack.beacon_hits())  # warm-up may have reported errors (407)

        # A break two segments ahead of the live edge: not published, not rendered yet.
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 2, BREAK_SECONDS)
        assert brk.cue_in_msn == brk.end_msn  # a CUE-IN at the planned end
        ads, slate_slots = plan(media, brk, nominal, Fraction(str(runtime.cfg.min_slate)))
        assert [a.ad_id for a in ads] == [a.id for a in media.ads], "both ads must fit"
        assert slate_slots >= 1, "the break must end on slate"
        assert any(a.duration < a.slots * nominal for a in ads), "an ad must be padded"

        # ffmpeg starts three segments behind the edge (its live_start_index): decode
        # from there to CONTENT_AFTER slots past the CUE-IN.
        first_expected = edge - 2
        frames_wanted = (brk.end_msn + CONTENT_AFTER - first_expected) * per_slot

        stop = asyncio.Event()
        seen: list[bytes] = []
        control_task = asyncio.ensure_future(
            poll_playlists(stack, control, renditions, stop, seen))
        try:
            reads = await framecode.read_frames_async(player.manifest_url,
                                                      max_frames=frames_wanted, timeout=150)
        finally:
            stop.set()
            polls = await control_task
        decoded = time.monotonic()
        await asyncio.wait_for(stack.app[BEACONS].drain(), 10)  # every queued beacon sent

        # ------------------------------------------------------------- the picture
        assert len(reads) == frames_wanted, runs(reads)
        assert reads[0].code is not None and reads[0].code.source_id == framecode.SOURCE_CONTENT, \
            runs(reads)
        assert reads[0].code.frame % per_slot == 0, "playback starts on a segment boundary"
        loop = len(media.renditions[0].segments)
        first_msn = next((m for m in range(first_expected - 3, first_expected + 3)
                          if (m % loop) * per_slot == reads[0].code.frame), None)
        assert first_msn is not None, f"ffmpeg started far from the live edge: {runs(reads)}"
        assert first_msn < brk.start_msn, "ffmpeg must join before the break"
        assert len(reads) % per_slot == 0
        last_msn = first_msn + len(reads) // per_slot - 1
        assert last_msn >= brk.end_msn, "the read must reach content after the CUE-IN"
        expected = expected_frames(media, brk, ads, slate_slots, first_msn, last_msn, nominal)
        assert len(expected) == len(reads)  # frames == seconds * fps over the span

        mismatches = [(i, e, r.code) for i, (e, r) in enumerate(zip(expected, reads))
                      if e.code != r.code]
        assert not mismatches, (
            f"{len(mismatches)} frames differ; first: {mismatches[:5]}\n"
            f"decoded: {runs(reads)}")
        for e, r in zip(expected, reads):
            if e.code is None:
                assert r.luma < BLACK_LUMA, f"padding of {e.what} at msn {e.msn} is not black"
        # Content resumes exactly at the frame the CUE-IN segment starts with.
        resume = next(i for i, e in enumerate(expected) if e.msn == brk.cue_in_msn)
        assert reads[resume].code == FrameCode(framecode.SOURCE_CONTENT,
                                               (brk.cue_in_msn % loop) * per_slot)
        before_resume = reads[resume - 1].code
        assert before_resume is not None and before_resume.source_id == framecode.SOURCE_SLATE
        # No content frame repeated or skipped but the replaced span.
        content = [r.code.frame for r in reads
                   if r.code and r.code.source_id == framecode.SOURCE_CONTENT]
        assert len(content) == len(set(content))
        assert content[-1] - content[0] + 1 == len(content) + brk.segments * per_slot

        # ------------------------------------------------------------- beacons
        hits = stack.beacon_hits()[hits_before:]
        assert not [h for h in hits if "[SESSIONID]" in h.query_string], \
            "a session beacon left [SESSIONID] unexpanded"
        assert stack.requests_of(control.token, "/media/ad/") == []
        control_hits = stack.beacon_hits(control.session_id)
        assert control_hits == [], "playlist polling alone must fire no beacon"
        mine = stack.beacon_hits(player.session_id)
        assert hits == mine, f"beacons from other sessions: {[h.query_string for h in hits]}"

        ffmpeg_requests = stack.requests_of(player.token)
        user_agents = {r.user_agent for r in ffmpeg_requests}
        assert len(user_agents) == 1 and next(iter(user_agents)).startswith("Lavf")
        counts = Counter((h.ad_id, h.event) for h in mine)
        expected_events = [e for e in ("impression", *TRACKED_EVENTS) if e != "notUsed"]
        assert counts == Counter({(a.ad_id, e): 1 for a in ads for e in expected_events}), counts

        for ad in ads:
            index = [a.ad_id for a in ads].index(ad.ad_id)
            segment_requests: dict[int, float] = {}  # segment -> first request's arrival
            for req in ffmpeg_requests:
                parts = req.path.split("/")
                if "ad" in parts and req.method == "GET":
                    at = parts.index("ad")
                    _rid, _brk, item, seg = parts[at + 1: at + 5]
                    if int(item) == index:
                        segment_requests.setdefault(int(seg.removesuffix(".ts")), req.time)
            assert sorted(segment_requests) == list(range(ad.slots)), segment_requests
            by_event: dict[str, BeaconHit] = {h.event: h for h in mine if h.ad_id == ad.ad_id}
            offsets = {"impression": Fraction(0), "start": Fraction(0),
                       "firstQuartile": ad.duration / 4, "midpoint": ad.duration / 2,
                       "thirdQuartile": 3 * ad.duration / 4,
                       "complete": ad.duration - 1 / fps}  # the ad's last frame
            for event, offset in offsets.items():
                segment = int(offset // nominal)
                hit = by_event[event]
                assert hit.time > segment_requests[segment], (
                    f"{ad.ad_id} {event} fired before ffmpeg requested segment {segment}")
                if segment > 0:
                    assert hit.time > segment_requests[segment - 1]
                assert hit.headers.get("X-Device-User-Agent", "").startswith("Lavf")
            order = [by_event[e].time for e in ("start", *QUARTILES, "complete")]
            assert order == sorted(order) and len(set(order[1:])) == len(order) - 1, (
                ad.ad_id, order)
            assert by_event["impression"].time <= by_event["firstQuartile"].time

        # The control player saw the same break: ad segments were in its playlists.
        assert polls >= 2 * BREAK_SECONDS // 2
        assert any(line.startswith(b"ad/") for body in seen for line in body.splitlines()), \
            "the control session never saw the ads in its playlists"

        print(f"\nwarm-up {warmed - started:.1f} s, ffmpeg {decoded - warmed:.1f} s, "
              f"{len(reads)} frames from msn {first_msn} to {last_msn}")
