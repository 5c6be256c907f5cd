"""Conditioning on real media at 29.97 fps (issue 5): a 1080p 15.015 s mezzanine
becomes ads for a 1080p/720p/360p content ladder on 6.006 s segments.

Everything runs through the production path: a channel prepares from the
content's multivariant over loopback HTTP (ladder probed, cadence from the
target duration), a VAST InLine's Mezzanine is downloaded, hashed and
conditioned by the :class:`CreativeLibrary`. Only the x264 preset differs
(ultrafast: this is a 2-core CI box). The results are then read back with
ffprobe, packet by packet, and compared with the content read the same way:
an independent observer, not the stitcher's own bookkeeping.

The existing tests in ``test_conditioning.py`` cover the 30 fps / 2 s grid,
padding content, loudness, idempotence, concurrency and failures; this file
covers what only an NTSC ladder shows: cut points on a 1001/30000 s grid,
segments that are 6.006 s under a 6 s target, a 15.015 s spot that leaves a
half segment, and the content's PIDs, profiles and levels per rung.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import subprocess
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fixtures.broadcast import NTSC, Rung, make_ladder, make_mezzanine
from manifests.pod import Candidate, ItemKind, plan_pod
from stitcher import vast
from stitcher.ads import AdDecider, CreativeLibrary
from stitcher.channel import ChannelRuntime, ladder_frame_rate
from stitcher.conditioning import (
    ConditionedCreative,
    Conditioner,
    RenditionSpec,
    _plan,
    asset_init_path,
    asset_segment_path,
    whole_frames,
)
from stitcher.config import ChannelConfig
from stitcher.ffmpeg import ffprobe_exe
from stitcher.metrics import Metrics
from stitcher.store import MemoryStore

TICKS = 90_000  # MPEG-TS PTS clock
FRAME_TICKS = 3003  # one frame at 30000/1001 fps
SEGMENT_FRAMES = 180  # what packagers cut a 6 s target into at 29.97 fps
SEGMENT_TICKS = SEGMENT_FRAMES * FRAME_TICKS  # 6.006 s
AAC_FRAME = 1024
LADDER = (
    Rung("1080p", 1920, 1080, 5000, "high", "4.0"),
    Rung("720p", 1280, 720, 2500, "high", "3.1"),
    Rung("360p", 640, 360, 800, "main", "3.0"),
)
MEZZ_FRAMES = 450  # 15.015 s
VAST_DURATION = "00:00:15.015"


def _vast(url: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2" xmlns="http://www.iab.com/VAST">
 <Ad id="spot-15" sequence="1"><InLine>
  <AdSystem>fixture</AdSystem><AdTitle>15.015 s spot</AdTitle>
  <Impression><![CDATA[http://127.0.0.1:9/imp]]></Impression>
  <Creatives><Creative id="c15">
   <UniversalAdId idRegistry="ad-id.org">FIXT0015000H</UniversalAdId>
   <Linear><Duration>{VAST_DURATION}</Duration>
    <MediaFiles>
     <Mezzanine delivery="progressive" type="video/quicktime"
                width="1920" height="1080"><![CDATA[{url}]]></Mezzanine>
    </MediaFiles>
   </Linear>
  </Creative></Creatives>
 </InLine></Ad>
</VAST>""".encode()


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def ntsc_media(tmp_path_factory) -> tuple[Path, Path, float]:
    """(content root, mezzanine, seconds spent) generated once per session."""
    root = tmp_path_factory.mktemp("ntsc")
    started = time.monotonic()
    make_ladder(root / "content", LADDER, segment_frames=SEGMENT_FRAMES, segments=1)
    mezz = make_mezzanine(root / "mezz.mov", frames=MEZZ_FRAMES)
    return root / "content", mezz, time.monotonic() - started


@pytest.fixture(scope="session")
def fmp4_content(tmp_path_factory) -> Path:
    """The 360p rung again, packaged as fMP4 (EXT-X-MAP + .m4s)."""
    root = tmp_path_factory.mktemp("ntsc-fmp4") / "content"
    make_ladder(root, LADDER[2:], segment_frames=SEGMENT_FRAMES, segments=1,
                container="fmp4")
    return root


class Prepared:
    """What the production path produced."""

    def __init__(self, specs: list[RenditionSpec], nominal: Fraction, ad: vast.ResolvedAd,
                 creative: ConditionedCreative, conditioner: Conditioner, seconds: float):
        self.specs = specs
        self.nominal = nominal
        self.ad = ad
        self.creative = creative
        self.conditioner = conditioner
        self.seconds = seconds


def _condition_for_channel(content: Path, mezz: Path, assets: Path) -> Prepared:
    """A channel prepared from ``content`` served on loopback, then the VAST spot's
    Mezzanine downloaded, hashed and conditioned by its creative library."""

    async def download(url: str) -> AsyncIterator[bytes]:
        assert url == "http://127.0.0.1:9/mezz.mov"
        with mezz.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    async def run() -> Prepared:
        app = web.Application()
        app.router.add_static("/", content)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:
                metrics = Metrics()
                conditioner = Conditioner(preset="ultrafast", metrics=metrics)
                library = CreativeLibrary(assets, conditioner, metrics, download=download)
                cfg = ChannelConfig(id="ntsc", origin_url=f"http://127.0.0.1:{port}/master.m3u8")
                channel = ChannelRuntime(cfg, http=http, store=MemoryStore(),
                                         decider=AdDecider(http, library, metrics),
                                         library=library, metrics=metrics, assets_base="/assets")
                await channel.prepare()

                async def fetch(url: str) -> bytes:
                    return _vast("http://127.0.0.1:9/mezz.mov")

                resolution = await vast.resolve("http://127.0.0.1:9/vast", fetch)
                (ad,) = resolution.ads
                started = time.monotonic()
                key = await library.prepare(ad, channel.specs, cfg.id)
                seconds = time.monotonic() - started
                assert key is not None, "conditioning failed (see the log)"
                cc = library.get(key, [s.name for s in channel.specs])
                assert cc is not None and channel.nominal is not None
                return Prepared(channel.specs, channel.nominal, ad, cc, conditioner, seconds)
        finally:
            await runner.cleanup()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def prepared(ntsc_media, tmp_path_factory) -> Prepared:
    content, mezz, _ = ntsc_media
    return _condition_for_channel(content, mezz, tmp_path_factory.mktemp("ntsc-assets"))


@pytest.fixture(scope="session")
def fmp4_prepared(fmp4_content, ntsc_media, tmp_path_factory) -> Prepared:
    _, mezz, _ = ntsc_media
    return _condition_for_channel(fmp4_content, mezz, tmp_path_factory.mktemp("fmp4-assets"))


def _ffprobe(path: Path, *args: str) -> dict[str, Any]:
    exe = ffprobe_exe()
    if exe is None:  # a failure under CI=true (tests/conftest.py)
        pytest.skip("no ffprobe available (scripts/setup installs ffmpeg)")
    out = subprocess.run([exe, "-v", "error", *args, "-of", "json", str(path)],
                         check=True, capture_output=True, timeout=120).stdout
    return json.loads(out)


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    """Streams and every packet (with the first video packet's bytes) of one segment:
    one ffprobe run per file, shared by the tests."""
    info = _ffprobe(path, "-show_streams", "-show_entries",
                    "packet=stream_index,pts,duration,flags")
    first = _ffprobe(path, "-select_streams", "v:0", "-show_packets", "-show_data",
                     "-read_intervals", "%+#1")["packets"][0]
    info["first_video_data"] = first["data"]
    return info


def _streams(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    streams = _read(path)["streams"]
    v = next(s for s in streams if s["codec_type"] == "video")
    a = next(s for s in streams if s["codec_type"] == "audio")
    return v, a


def _packets(path: Path, kind: str) -> list[dict[str, Any]]:
    """A stream's packets in decoding order."""
    index = next(s["index"] for s in _read(path)["streams"] if s["codec_type"] == kind)
    return [p for p in _read(path)["packets"] if p["stream_index"] == index]


def _nal_types(path: Path, *, length_prefixed: bool = False) -> list[int]:
    """NAL unit types of the first video packet (ITU-T H.264 7.4.1.2): start codes
    in MPEG-TS (Annex B), 4-byte lengths in MP4 (ISO/IEC 14496-15 5.3.2)."""
    data = _read(path)["first_video_data"]
    raw = bytes.fromhex("".join(line.split(":", 1)[1].split("  ")[0].replace(" ", "")
                                for line in data.strip().splitlines()))
    types = []
    if length_prefixed:
        at = 0
        while at + 4 < len(raw):
            types.append(raw[at + 4] & 0x1F)
            at += 4 + int.from_bytes(raw[at:at + 4], "big")
        return types
    at = raw.find(b"\x00\x00\x01")
    while at >= 0:
        types.append(raw[at + 3] & 0x1F)
        at = raw.find(b"\x00\x00\x01", at + 3)
    return types


def _video_span(path: Path) -> tuple[int, int, list[int]]:
    """(first PTS, duration in ticks, PTS in presentation order) of a segment's video."""
    pts = sorted(int(p["pts"]) for p in _packets(path, "video"))
    return pts[0], pts[-1] + FRAME_TICKS - pts[0], pts


def _content_segment(content: Path, rung: str) -> Path:
    return content / rung / "seg_00000.ts"


def _target_duration(content: Path, rung: str) -> int:
    text = (content / rung / "index.m3u8").read_text()
    return int(next(line.split(":")[1] for line in text.splitlines()
                    if line.startswith("#EXT-X-TARGETDURATION:")))


# ------------------------------------------------------------------ the ladder


def test_ladder_probed_from_content(prepared, ntsc_media):
    """The channel's specs are the content's rungs, on 180-frame segments, though
    the playlist's target duration says 6 (6 s is 179.82 frames at 29.97 fps)."""
    content, _, _ = ntsc_media
    assert [s.name for s in prepared.specs] == ["v0", "v1", "v2"]
    for spec, rung in zip(prepared.specs, LADDER, strict=True):
        assert _target_duration(content, rung.name) == 6
        assert (spec.width, spec.height) == (rung.width, rung.height)
        assert spec.fps == NTSC
        assert spec.segment_duration == Fraction(6006, 1000)
        assert spec.frames_per_segment == SEGMENT_FRAMES
        assert (spec.video_profile, spec.video_level) == (rung.profile, rung.level)
        assert (spec.video_pid, spec.audio_pid) == (0x1E1, 0x1E4)
        assert (spec.audio_rate, spec.audio_channels) == (44100, 2)
        assert spec.container == "ts"
    # pods are laid out in the same cadence: an ad's slots are its segments
    assert prepared.nominal == Fraction(6006, 1000)


def test_declared_duration_matches_vast(prepared):
    """The conditioned creative is as long as VAST says (450 frames = 15.015 s exactly),
    in every rendition; the padding is not part of it."""
    cc = prepared.creative
    assert prepared.ad.duration == vast.parse_timecode(VAST_DURATION) == Fraction(15015, 1000)
    assert cc.duration == prepared.ad.duration
    assert cc.segment_count == 3
    for r in cc.renditions.values():
        assert r.duration == Fraction(15015, 1000)
        assert [s.duration for s in r.segments] == [Fraction(6006, 1000)] * 3
        assert r.padded_duration == Fraction(18018, 1000)
    assert prepared.conditioner.mismatches == 0  # the Mezzanine's 1920x1080 is true


def test_pod_slots_are_the_conditioned_segments(prepared):
    """A 30.03 s break (5 content slots of 6.006 s): the ad takes 3 slots, exactly its
    3 segments, and slate the other 2."""
    cc = prepared.creative
    pod = plan_pod("b1", [Candidate(cc.key, cc.duration)], available=Fraction(3003, 100),
                   nominal=prepared.nominal)
    ad, slate = pod.items
    assert (ad.kind, ad.segments, ad.span) == (ItemKind.AD, cc.segment_count,
                                                cc.renditions["v0"].padded_duration)
    assert slate.kind is ItemKind.SLATE and slate.span == Fraction(12012, 1000)
    # the slots of the break, at their real offsets: the ad's segments in order, then
    # the slate (one segment, looped)
    hits = [pod.item_at(k * prepared.nominal) for k in range(5)]
    assert [(h[0], h[2]) for h in hits if h is not None] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 0)]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_renditions_match_content(prepared, ntsc_media, index):
    """Resolution, profile, level, SAR, pixel format, frame rate, PIDs and audio of
    every ad segment are the content rung's, as ffprobe reads both."""
    content, _, _ = ntsc_media
    rung = LADDER[index]
    cv, ca = _streams(_content_segment(content, rung.name))
    assert (int(cv["id"], 16), int(ca["id"], 16)) == (0x1E1, 0x1E4)  # the fixture's own
    for seg in prepared.creative.renditions[f"v{index}"].segments:
        v, a = _streams(seg.path)
        assert (v["codec_name"], v["width"], v["height"]) == ("h264", rung.width, rung.height)
        for field in ("profile", "level", "pix_fmt", "r_frame_rate", "id"):
            assert v[field] == cv[field], (seg.path, field)
        assert v["r_frame_rate"] == "30000/1001"
        assert v.get("sample_aspect_ratio", "1:1") == "1:1"
        for field in ("codec_name", "profile", "sample_rate", "channels", "id"):
            assert a[field] == ca[field], (seg.path, field)
        assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "44100", 2)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_segments_frame_accurate(prepared, ntsc_media, index):
    """Every segment: 180 frames on the 3003-tick grid, no gap or duplicate, an IDR
    with its SPS and PPS first, audio covering the same span; no segment under 1 s
    or rounding above the content's target duration."""
    content, _, _ = ntsc_media
    target = _target_duration(content, LADDER[index].name)
    _, content_ticks, _ = _video_span(_content_segment(content, LADDER[index].name))
    assert content_ticks == SEGMENT_TICKS
    starts = []
    for seg in prepared.creative.renditions[f"v{index}"].segments:
        first, ticks, pts = _video_span(seg.path)
        assert pts == [first + k * FRAME_TICKS for k in range(SEGMENT_FRAMES)], seg.path
        assert ticks == content_ticks
        seconds = Fraction(ticks, TICKS)
        assert seconds >= 1 and round(seconds) <= target
        packets = _packets(seg.path, "video")
        assert packets[0]["flags"].startswith("K") and int(packets[0]["pts"]) == first
        assert sum(p["flags"].startswith("K") for p in packets) == 1
        nals = _nal_types(seg.path)
        assert 5 in nals and {7, 8} <= set(nals[:nals.index(5)]), nals  # IDR, SPS/PPS first
        assert 1 not in nals[:nals.index(5)]
        audio = _packets(seg.path, "audio")
        a_first = int(audio[0]["pts"])
        a_ticks = sum(int(p["duration"]) for p in audio)
        frame = math.ceil(AAC_FRAME * TICKS / 44100)
        assert abs(a_first - first) <= frame, seg.path
        assert abs(a_ticks - ticks) <= 2 * frame, seg.path
        starts.append(first)
    # consecutive segments tile the timeline: each starts where the last ended
    assert [b - a for a, b in itertools.pairwise(starts)] == [SEGMENT_TICKS] * 2


def test_cut_points_identical_in_every_rendition(prepared):
    cuts = {name: [_video_span(s.path)[0] for s in r.segments]
            for name, r in prepared.creative.renditions.items()}
    assert len({tuple(c) for c in cuts.values()}) == 1, cuts


def test_half_segment_tail_is_padding(prepared):
    """The spot ends 3.003 s into its last segment; the other 90 frames are black (the
    slot mapping pads the ad to the slot), so the tail is not a sub-second segment."""
    last = prepared.creative.renditions["v2"].segments[-1].path
    exe = ffprobe_exe()
    if exe is None:
        pytest.skip("no ffprobe available (scripts/setup installs ffmpeg)")
    out = subprocess.run(
        [exe, "-v", "error", "-f", "lavfi", "-i", f"movie={last},signalstats",
         "-show_entries", "frame_tags=lavfi.signalstats.YAVG", "-of", "json"],
        check=True, capture_output=True, timeout=120).stdout
    luma = [float(f["tags"]["lavfi.signalstats.YAVG"]) for f in json.loads(out)["frames"]]
    assert len(luma) == SEGMENT_FRAMES
    assert min(luma[:90]) > 40  # testsrc2: the spot itself
    assert max(luma[90:]) < 20  # black


def test_conditioning_time(prepared, ntsc_media):
    """Reported, and bounded loosely: a 2-core box shared with other jobs."""
    _, _, made = ntsc_media
    print(f"\nNTSC media made in {made:.1f} s; conditioned 3 renditions of 15.015 s "
          f"in {prepared.seconds:.1f} s")
    assert prepared.seconds < 300


# ---------------------------------------------------------------- pure parts


def test_whole_frames():
    assert whole_frames(Fraction(6), NTSC) == Fraction(6006, 1000)
    assert whole_frames(Fraction(2), NTSC) == Fraction(2002, 1000)
    assert whole_frames(Fraction(6), Fraction(60000, 1001)) == Fraction(6006, 1000)
    assert whole_frames(Fraction(6), Fraction(25)) == 6
    assert whole_frames(Fraction(2), Fraction(30)) == 2
    with pytest.raises(ValueError):
        whole_frames(Fraction(1, 100), Fraction(30))


def test_ladder_frame_rate_is_exact():
    assert ladder_frame_rate(29.97) == NTSC
    assert ladder_frame_rate(59.94) == Fraction(60000, 1001)
    assert ladder_frame_rate(23.976) == Fraction(24000, 1001)
    assert ladder_frame_rate(30.0) == 30 and ladder_frame_rate(25) == 25
    assert ladder_frame_rate(12.5) == Fraction(25, 2)


def test_explicit_ladder_at_2997():
    """The ``ladder`` config path: 29.97 and a 6 s target give 180-frame segments."""
    from stitcher.channel import _ladder_spec

    cfg = ChannelConfig(id="c", origin_url="http://127.0.0.1:1/m.m3u8", ladder=[
        {"name": "v0", "width": 1920, "height": 1080, "bandwidth": 6_000_000,
         "frame_rate": 29.97}])
    spec = _ladder_spec(cfg, "v0", Fraction(6))
    assert spec.fps == NTSC and spec.segment_duration == Fraction(6006, 1000)
    assert spec.frames_per_segment == SEGMENT_FRAMES


@pytest.mark.parametrize("target", [2, 6])
def test_pod_slots_equal_segments_for_every_length(target, tmp_path):
    """For every creative length up to 2 minutes at 29.97 fps, the slots the pod gives
    an ad equal the segments conditioning cuts it into, on the channel's cadence.
    (On the bare target duration they did not: 900 frames, 30.03 s, took 6 slots of
    6 s for its 5 segments.)"""
    nominal = whole_frames(Fraction(target), NTSC)
    spec = RenditionSpec("v0", 640, 360, 800_000, NTSC, segment_duration=nominal)
    for frames in range(1, 3600):
        duration = Fraction(frames) / NTSC
        plan = _plan(spec, duration, Fraction(1, 10), tmp_path)
        pod = plan_pod("b", [Candidate("x", Fraction(plan.frames) / NTSC)],
                       available=Fraction(10**4), nominal=nominal)
        assert pod.items[0].segments == plan.segments, frames


# ------------------------------------------------------------------ fMP4


def _joined(init: Path, segment: Path, folder: Path) -> Path:
    """init + media segment: what a player appends to its buffer, as one file to probe."""
    out = folder / f"{segment.parent.name}-{segment.stem}.mp4"
    out.write_bytes(init.read_bytes() + segment.read_bytes())
    return out


def test_fmp4_ladder_probed(fmp4_prepared):
    """fMP4 content is probed as its init segment and newest media segment together:
    the spec says fmp4, with no PIDs (MP4 has track IDs), and the 360p rung's codec."""
    (spec,) = fmp4_prepared.specs
    assert spec.container == "fmp4" and (spec.video_pid, spec.audio_pid) == (None, None)
    assert (spec.width, spec.height, spec.fps, spec.segment_duration) == (
        640, 360, NTSC, Fraction(6006, 1000))
    assert (spec.video_profile, spec.video_level, spec.audio_rate) == ("main", "3.0", 44100)
    assert fmp4_prepared.nominal == Fraction(6006, 1000)


def test_fmp4_rendition(fmp4_prepared, fmp4_content, tmp_path):
    """One init segment, then 3 media segments of 180 frames each, an IDR first in
    each, cut every 6.006 s, with the content's codec parameters."""
    creative = fmp4_prepared.creative
    r = creative.renditions["v0"]
    assert r.init is not None and r.init.name == "init.mp4" and r.init.is_file()
    assert [s.path.name for s in r.segments] == [f"seg_{k:05d}.m4s" for k in range(3)]
    assert creative.duration == Fraction(15015, 1000) and r.duration == creative.duration
    tv, ta = _streams(_joined(fmp4_content / "360p" / "init.mp4",
                              fmp4_content / "360p" / "seg_00000.m4s", tmp_path))
    cuts = []
    for seg in r.segments:
        path = _joined(r.init, seg.path, tmp_path)
        v, a = _streams(path)
        for field in ("codec_name", "profile", "level", "width", "height", "pix_fmt",
                      "r_frame_rate"):
            assert v[field] == tv[field], (seg.path, field)
        for field in ("codec_name", "profile", "sample_rate", "channels"):
            assert a[field] == ta[field], (seg.path, field)
        num, den = (int(x) for x in v["time_base"].split("/"))
        step = Fraction(den, num) * Fraction(1001, 30000)  # one frame in the track's ticks
        assert step.denominator == 1
        packets = _packets(path, "video")
        pts = sorted(int(p["pts"]) for p in packets)
        assert pts == [pts[0] + k * int(step) for k in range(SEGMENT_FRAMES)], seg.path
        assert packets[0]["flags"].startswith("K") and int(packets[0]["pts"]) == pts[0]
        assert sum(p["flags"].startswith("K") for p in packets) == 1
        nals = _nal_types(path, length_prefixed=True)
        assert 5 in nals and 1 not in nals[:nals.index(5)], nals
        cuts.append(Fraction(pts[0] * num, den))
    assert [c - cuts[0] for c in cuts] == [k * Fraction(6006, 1000) for k in range(3)]


@pytest.mark.parametrize("which", ["prepared", "fmp4_prepared"])
def test_playlists_name_assets_where_conditioning_puts_them(which: str,
                                                           request: pytest.FixtureRequest) -> None:
    """Playlists name ad segments and inits by the asset layout, not by what an
    instance has on its disk (so every instance, before and after the asset lands,
    names a slot alike): the layout must be exactly where conditioning wrote them,
    MPEG-TS and fMP4."""
    done: Prepared = request.getfixturevalue(which)
    cc = done.creative
    for spec in done.specs:
        r = cc.renditions[spec.name]
        root = r.segments[0].path.resolve().parents[2]
        assert [asset_segment_path(cc.key, spec, j) for j in range(len(r.segments))] == [
            str(s.path.resolve().relative_to(root)) for s in r.segments]
        init = asset_init_path(cc.key, spec)
        assert init == (None if r.init is None else str(Path(r.init).resolve().relative_to(root)))
        assert (init is not None) == (spec.container == "fmp4")
