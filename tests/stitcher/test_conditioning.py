"""Ad conditioning: ad B to the content's ladder, on the content's 2 s grid, padded."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import pytest

from fixtures import framecode, media
from fixtures.framecode import FrameCode
from stitcher import conditioning
from stitcher.conditioning import (
    ConditionedCreative,
    Conditioner,
    ConditioningError,
    RenditionSpec,
    condition,
    probe_audio_rendition,
    probe_rendition,
)
from stitcher.ffmpeg import ffprobe_exe

FRAME = Fraction(1, 30)


@pytest.fixture(scope="session")
def media_set() -> media.MediaSet:
    return media.ensure_media()


@pytest.fixture(scope="session")
def specs(media_set) -> list[RenditionSpec]:
    async def probe() -> list[RenditionSpec]:
        return [await probe_rendition(r.segments[3], r.name) for r in media_set.renditions]

    return asyncio.run(probe())


@pytest.fixture(scope="session")
def ad_b(media_set, specs, tmp_path_factory) -> tuple[ConditionedCreative, Path, float]:
    out = tmp_path_factory.mktemp("conditioned")
    started = time.monotonic()
    result = asyncio.run(condition(media_set.ad("ad-b").path, specs, out, key="ad-b"))
    return result, out, time.monotonic() - started


def _ffprobe(path: Path, *args: str) -> dict:
    exe = ffprobe_exe()
    if exe is None:
        pytest.skip("no ffprobe available")
    out = subprocess.run([exe, "-v", "error", *args, "-of", "json", str(path)],
                         check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


def test_probe_rendition_matches_content(specs):
    low, high = specs
    assert (low.name, low.width, low.height) == ("360p", 640, 360)
    assert (high.name, high.width, high.height) == ("720p", 1280, 720)
    for s in specs:
        assert s.fps == 30
        assert s.segment_duration == 2
        assert s.frames_per_segment == 60
        assert (s.audio_rate, s.audio_channels) == (48000, 2)
        assert s.container == "ts" and s.video_profile == "main" and s.pix_fmt == "yuv420p"
        assert s.video_pid == 0x100 and s.audio_pid == 0x101
    assert 400_000 < low.video_bitrate < 1_000_000
    assert 1_500_000 < high.video_bitrate < 3_000_000


def test_spec_json_round_trip(specs):
    for s in specs:
        assert RenditionSpec.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_spec_rejects_fractional_frames_per_segment():
    spec = RenditionSpec("x", 640, 360, 800_000, Fraction(30000, 1001), segment_duration=Fraction(2))
    with pytest.raises(ValueError):
        _ = spec.frames_per_segment  # 59.94 frames


def test_result_shape(ad_b, specs):
    result, out, _ = ad_b
    assert result.key == "ad-b"
    assert result.duration == 15
    assert result.segment_count == 8
    for s in specs:
        r = result.renditions[s.name]
        assert r.spec == s
        assert r.duration == 15 and r.padded_duration == 16
        assert [seg.path for seg in r.segments] == [
            out / "ad-b" / s.name / f"seg_{k:05d}.ts" for k in range(8)]
        assert all(seg.duration == Fraction(2) for seg in r.segments)
        assert all(seg.path.is_file() for seg in r.segments)
        assert sorted(p.name for p in (out / "ad-b" / s.name).iterdir()) == sorted(
            [seg.path.name for seg in r.segments] + ["done.json"])
    assert not [p for p in (out / "ad-b").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["360p", "720p"])
def test_segments_match_content(ad_b, specs, name):
    result, _, _ = ad_b
    spec = next(s for s in specs if s.name == name)
    for seg in result.renditions[name].segments:
        info = _ffprobe(seg.path, "-count_packets", "-show_streams")
        v = next(s for s in info["streams"] if s["codec_type"] == "video")
        a = next(s for s in info["streams"] if s["codec_type"] == "audio")
        assert (v["width"], v["height"]) == (spec.width, spec.height)
        assert v["sample_aspect_ratio"] == "1:1"
        assert v["codec_name"] == "h264" and v["profile"] == "Main"
        assert v["pix_fmt"] == "yuv420p" and v["r_frame_rate"] == "30/1"
        assert int(v["nb_read_packets"]) == 60
        assert abs(Fraction(v["duration"]) - 2) <= FRAME, seg.path
        assert (int(v["id"], 16), int(a["id"], 16)) == (0x100, 0x101)
        assert a["codec_name"] == "aac"
        assert (int(a["sample_rate"]), a["channels"]) == (48000, 2)
        first = _ffprobe(seg.path, "-select_streams", "v:0", "-show_entries", "packet=flags",
                         "-read_intervals", "%+#1")
        assert first["packets"][0]["flags"].startswith("K"), seg.path


def test_cut_points_identical_across_renditions(ad_b):
    result, _, _ = ad_b
    starts = {}
    for name, r in result.renditions.items():
        starts[name] = [
            _ffprobe(seg.path, "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                     "-read_intervals", "%+#1")["packets"][0]["pts_time"]
            for seg in r.segments
        ]
    assert starts["360p"] == starts["720p"]


@pytest.mark.parametrize("name", ["360p", "720p"])
def test_frame_codes_then_black_padding(ad_b, name):
    result, _, _ = ad_b
    reads = []
    for seg in result.renditions[name].segments:
        seg_reads = framecode.read_frames(seg.path)
        assert len(seg_reads) == 60
        reads += seg_reads
    assert [r.code for r in reads[:450]] == [FrameCode(framecode.SOURCE_AD_B, i)
                                             for i in range(450)]
    padding = reads[450:]
    assert len(padding) == 30
    assert all(r.code is None for r in padding)
    assert all(r.luma < 5 for r in padding)  # black, not a frozen ad frame


def test_loudness_normalised(ad_b):
    """The mezzanine tone is far louder than -24 LUFS; the conditioned ad is not."""
    result, _, _ = ad_b
    segs = [str(s.path) for s in result.renditions["360p"].segments[:7]]
    proc = subprocess.run(
        [media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", "concat:" + "|".join(segs),
         "-vn", "-af", "ebur128", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True)
    summary = proc.stderr[proc.stderr.rfind("Summary:"):]
    loudness = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))
    assert -25.5 <= loudness <= -22.5
    source = subprocess.run(
        [media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-i",
         str(media.ensure_media().ad("ad-b").path), "-vn", "-af", "ebur128", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True).stderr
    source_i = float(re.search(r"I:\s+(-?[\d.]+) LUFS", source[source.rfind("Summary:"):])[1])
    assert source_i > -15  # so the check above really tested normalisation


async def test_second_call_is_idempotent_and_fast(ad_b, media_set, specs):
    result, out, first_seconds = ad_b
    mtimes = {s.path: s.path.stat().st_mtime_ns
              for r in result.renditions.values() for s in r.segments}
    c = Conditioner()
    started = time.monotonic()
    again = await c.condition(media_set.ad("ad-b").path, specs, out, key="ad-b")
    elapsed = time.monotonic() - started
    assert again == result
    assert c.runs == 0
    assert elapsed < 0.5 and elapsed < first_seconds / 5
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


async def test_concurrent_calls_share_one_ffmpeg(media_set, specs, tmp_path):
    c = Conditioner(max_concurrent=1)
    ad_a = media_set.ad("ad-a").path
    r1, r2, r3 = await asyncio.gather(
        c.condition(ad_a, specs[:1], tmp_path, key="ad-a"),
        c.condition(ad_a, specs[:1], tmp_path, key="ad-a"),
        c.condition(ad_a, specs[:1], tmp_path, key="ad-a"),
    )
    assert c.runs == 1
    assert r1 == r2 == r3
    # exactly 10 s: 5 whole segments, no padding segment
    assert r1.duration == 10 and r1.segment_count == 5
    # a new rendition for the same key runs only for what is missing
    both = await c.condition(ad_a, specs, tmp_path, key="ad-a")
    assert c.runs == 2
    assert both.renditions["360p"] == r1.renditions["360p"]
    assert len(both.renditions["720p"].segments) == 5


async def test_slate_fills_whole_segments(media_set, specs, tmp_path):
    result = await Conditioner().condition(media_set.slate, specs[:1], tmp_path, key="slate")
    r = result.renditions["360p"]
    assert result.duration == 6 and len(r.segments) == 3
    codes = []
    for seg in r.segments:
        codes += await framecode.read_codes_async(seg.path)
    assert codes == [FrameCode(framecode.SOURCE_SLATE, i) for i in range(180)]


async def test_pad_source_replaces_black(media_set, specs, tmp_path):
    result = await Conditioner().condition(media_set.ad("ad-b").path, specs[:1], tmp_path,
                                           key="ad-b-slate-pad", pad_source=media_set.slate)
    last = result.renditions["360p"].segments[-1]
    codes = await framecode.read_codes_async(last.path)
    assert codes == ([FrameCode(2, 420 + i) for i in range(30)]
                     + [FrameCode(3, i) for i in range(30)])


async def test_failure_raises_conditioning_error(specs, tmp_path):
    bad = tmp_path / "not-media.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ConditioningError) as err:
        await Conditioner().condition(bad, specs, tmp_path / "out", key="bad")
    assert err.value.stderr_tail
    assert not (tmp_path / "out" / "bad" / "360p" / "done.json").exists()


async def test_timeout_kills_and_leaves_no_marker(media_set, specs, tmp_path):
    c = Conditioner(timeout=0.3)
    with pytest.raises(ConditioningError, match="timed out"):
        await c.condition(media_set.ad("ad-b").path, specs, tmp_path, key="slow")
    assert not list(tmp_path.glob("slow/*/done.json"))
    assert not list(tmp_path.glob("slow/.tmp-*"))


async def test_unsafe_key_and_location_rejected(media_set, specs, tmp_path):
    with pytest.raises(ValueError):
        await condition(media_set.ad("ad-a").path, specs, tmp_path, key="../escape")
    with pytest.raises(ConditioningError):
        await condition("file:///etc/passwd", specs, tmp_path, key="x")


def test_module_exports():
    assert issubclass(conditioning.ConditioningError, Exception)


async def test_probe_without_ffprobe(media_set, specs, monkeypatch):
    """Where only imageio-ffmpeg's bundled ffmpeg exists, probing parses ``ffmpeg -i``."""
    monkeypatch.setattr(conditioning, "ffprobe_exe", lambda: None)
    spec = await probe_rendition(media_set.renditions[1].segments[3], "720p")
    ref = specs[1]
    assert (spec.width, spec.height, spec.fps, spec.segment_duration) == (
        ref.width, ref.height, ref.fps, ref.segment_duration)
    assert (spec.audio_rate, spec.audio_channels, spec.video_profile, spec.pix_fmt) == (
        ref.audio_rate, ref.audio_channels, ref.video_profile, ref.pix_fmt)
    assert (spec.video_pid, spec.audio_pid) == (0x100, 0x101)
    assert 1_500_000 < spec.video_bitrate < 3_000_000


# --------------------------------------------------------------- B21 (bugs corpus)


@pytest.fixture(scope="session")
def mezz_2048x1152(tmp_path_factory) -> Path:
    """A creative that is really 2048x1152 H.264 High@5.0 (avc1.640032), 2 s."""
    path = tmp_path_factory.mktemp("b21") / "mezz.mp4"
    subprocess.run(
        [media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc=size=2048x1152:rate=30:duration=2",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
         "-c:v", "libx264", "-preset", "superfast", "-profile:v", "high", "-level:v", "5.0",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True, capture_output=True, timeout=120)
    v = _ffprobe(path, "-show_streams")["streams"][0]
    assert (v["width"], v["height"], v["profile"], v["level"]) == (2048, 1152, "High", 50)
    return path


async def test_b21_mismatched_creative_conditioned_to_ladder(mezz_2048x1152, specs, tmp_path,
                                                             caplog):
    """B21: VAST declares 1920x1080 avc1.640028, the file is 2048x1152 avc1.640032. The
    mismatch is logged naming both and counted; every output rendition is the ladder's
    (resolution and H.264 level), never the creative's."""
    from stitcher.conditioning import DeclaredMedia
    from stitcher.metrics import Metrics

    metrics = Metrics()
    c = Conditioner(metrics=metrics)
    declared = DeclaredMedia(1920, 1080, "avc1.640028")
    with caplog.at_level("WARNING", logger="stitcher.conditioning"):
        result = await c.condition(mezz_2048x1152, specs, tmp_path, key="cr-77",
                                   declared=declared, channel="ch-b21")
    text = caplog.text
    assert "1920x1080" in text and "2048x1152" in text
    assert "avc1.640028" in text and "avc1.640032" in text
    def count(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "stitcher_creative_mismatch_total", {"channel": "ch-b21", "kind": kind})
    assert count("resolution") == 1 and count("codec") == 1
    assert c.mismatches == 2
    top = max(specs, key=lambda s: s.width * s.height)
    assert set(result.renditions) == {s.name for s in specs}
    for s in specs:
        assert s.video_level is not None
        ladder_level = round(float(s.video_level) * 10)
        for seg in result.renditions[s.name].segments:
            v = next(x for x in _ffprobe(seg.path, "-show_streams")["streams"]
                     if x["codec_type"] == "video")
            assert (v["width"], v["height"]) == (s.width, s.height)
            assert v["width"] <= top.width and v["height"] <= top.height
            assert v["width"] <= 1920 and v["height"] <= 1080  # B21's content maximum
            assert v["codec_name"] == "h264" and v["profile"] == "Main"
            assert v["level"] == ladder_level and v["level"] <= round(float(top.video_level) * 10)
            assert v["level"] <= 40  # avc1.640028's level 4.0


def test_b21_matching_declaration_is_quiet(caplog):
    from stitcher.conditioning import DeclaredMedia, check_declared

    info = {"streams": [{"codec_type": "video", "codec_name": "h264", "profile": "High",
                         "level": 40, "width": 1920, "height": 1080}]}
    with caplog.at_level("WARNING", logger="stitcher.conditioning"):
        assert check_declared(DeclaredMedia(1920, 1080, "avc1.640028"), info, "x.mp4") == []
        assert check_declared(DeclaredMedia(1920, 1080, "avc1.4d0028"), info, "x.mp4") == [
            ("codec", "avc1.4d0028", "avc1.640028")]
        assert check_declared(None, info, "x.mp4") == []
        assert check_declared(DeclaredMedia(1920, 1080, "hvc1.1.6.L120.90"), info, "x.mp4") == [
            ("codec", "hvc1.1.6.L120.90", "h264")]
    assert len(caplog.records) == 2


def test_b21_declared_media_from_vast_media_file():
    from stitcher.conditioning import DeclaredMedia
    from stitcher.vast import MediaFile

    mf = MediaFile(uri="https://media.example.invalid/cr77/mezz.mp4", delivery="progressive",
                   type="video/mp4", width=1920, height=1080, bitrate=None,
                   codec="avc1.640028", api_framework=None)
    assert DeclaredMedia.of(mf) == DeclaredMedia(1920, 1080, "avc1.640028")
    bare = MediaFile(uri="u", delivery=None, type=None, width=None, height=None, bitrate=None,
                     codec=None, api_framework=None)
    assert DeclaredMedia.of(bare) is None


def test_two_instances_downloading_one_creative_at_once_both_get_it_whole(
        tmp_path: Path) -> None:
    """Found by the drill: two stitchers sharing the data dir downloaded the same
    mezzanine at start-up into one ``.part`` file; the second rename failed (and
    the writes interleaved). Each download has a file of its own now."""
    from collections.abc import AsyncIterator

    from stitcher.ads import CreativeLibrary
    from stitcher.conditioning import Conditioner
    from stitcher.metrics import Metrics

    body = [bytes([i]) * 50_000 for i in range(8)]

    async def download(_url: str) -> AsyncIterator[bytes]:
        for chunk in body:
            await asyncio.sleep(0)  # the other download writes meanwhile
            yield chunk

    async def run() -> list[str | None]:
        metrics = Metrics()
        libraries = [CreativeLibrary(tmp_path, Conditioner(metrics=metrics), metrics,
                                     download=download) for _ in range(2)]
        ident = ("ad-id.org", "X-1", "http://ads.example/m.mp4")
        # (the download only: conditioning is not what this test is about)
        return list(await asyncio.gather(*(lib._fetch(ident) for lib in libraries)))

    keys = asyncio.run(run())
    assert keys[0] is not None and keys[0] == keys[1]
    (source,) = (tmp_path / "mezzanines").glob(f"{keys[0]}*")
    assert source.read_bytes() == b"".join(body)
    assert not list((tmp_path / "mezzanines").glob("*.part"))


# ------------------------------------------------ demuxed audio (kind="audio")


async def test_probe_audio_rendition_of_demuxed_audio(media_set):
    """A demuxed audio segment gives an audio-only spec (rate, channels, container,
    PID); a segment with no audio, or no segment, is a clear ConditioningError."""
    demuxed = media.ensure_demuxed(media_set)
    spec = await probe_audio_rendition(demuxed.audio[3], "a0", segment_duration=Fraction(2))
    assert spec.audio_only and spec.kind == "audio" and spec.name == "a0"
    assert (spec.audio_rate, spec.audio_channels, spec.container) == (48000, 2, "ts")
    assert spec.audio_pid == 0x101 and spec.video_pid is None
    assert spec.exact_segment_duration == 2 and spec.frames_per_segment == 96000
    assert RenditionSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(ConditioningError, match="no audio stream"):
        await probe_audio_rendition(demuxed.renditions[0].segments[3], "a0",
                                    segment_duration=Fraction(2))
    # A video spec's JSON is what it was (no "kind"): assets conditioned before stay valid.
    assert "kind" not in RenditionSpec("v", 640, 360, 800_000, Fraction(30)).to_json()


@pytest.mark.parametrize("container", ["fmp4", "ts"])
async def test_audio_only_rendition_on_its_own_grid(media_set, tmp_path, container):
    """Ad B (15 s) for a demuxed 44.1 kHz mono rendition on a 2.002 s grid (not a
    whole number of samples, nor of AAC frames) next to a video rendition: audio
    only, AAC at that rate and layout, every segment a slot (within one AAC frame,
    the cut points of the audio grid), as many segments as the video (padded to
    the same 16.016 s), loudness normalised like the video's audio."""
    video = RenditionSpec("v", 640, 360, 800_000, Fraction(30000, 1001),
                          segment_duration=Fraction(2002, 1000))
    audio = RenditionSpec("a", 0, 0, 0, Fraction(44100), audio_rate=44100, audio_channels=1,
                          segment_duration=Fraction(2002, 1000), container=container,
                          audio_pid=0x1E1 if container == "ts" else None, kind="audio",
                          audio_bitrate=64000)
    result = await condition(media_set.ad("ad-b").path, [video, audio], tmp_path, key="ad-b")
    r = result.renditions["a"]
    assert len(r.segments) == len(result.renditions["v"].segments) == 8
    assert r.padded_duration == pytest.approx(8 * 2.002, abs=1024 / 44100)
    ext = "m4s" if container == "fmp4" else "ts"
    assert [s.path.name for s in r.segments] == [f"seg_{k:05d}.{ext}" for k in range(8)]
    assert (r.init is not None) == (container == "fmp4")
    frame = Fraction(1024, 44100)
    total = Fraction(0)
    joined = tmp_path / f"joined.{'mp4' if container == 'fmp4' else 'ts'}"
    for seg in r.segments:
        body = seg.path.read_bytes()
        one = tmp_path / f"one.{'mp4' if container == 'fmp4' else 'ts'}"
        one.write_bytes((r.init.read_bytes() if r.init else b"") + body)
        (stream,) = _ffprobe(one, "-count_packets", "-show_streams")["streams"]
        assert (stream["codec_type"], stream["codec_name"]) == ("audio", "aac")
        assert (int(stream["sample_rate"]), stream["channels"]) == (44100, 1)
        if container == "ts":
            assert int(stream["id"], 16) == 0x1E1
        played = Fraction(int(stream["nb_read_packets"]) * 1024, 44100)
        assert abs(played - Fraction(2002, 1000)) <= frame, (seg.path, float(played))
        total += played
    # The cut points are the grid's: each boundary within one frame of k x 2.002 s.
    assert abs(total - 8 * Fraction(2002, 1000)) <= frame
    joined.write_bytes((r.init.read_bytes() if r.init else b"")
                       + b"".join(s.path.read_bytes() for s in r.segments[:7]))
    assert -25.5 <= _integrated_loudness(joined) <= -22.5


def _integrated_loudness(path: Path) -> float:
    """EBU R128 integrated loudness (LUFS) of a file's audio."""
    proc = subprocess.run(
        [media.ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path),
         "-af", "ebur128", "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True)
    summary = proc.stderr[proc.stderr.rfind("Summary:"):]
    return float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary).group(1))


# ------------------------------------- demuxed video variants (kind="video-only")


@pytest.mark.parametrize("container", ["ts", "fmp4"])
async def test_video_variant_of_a_demuxed_channel_gets_video_only_ads(media_set, tmp_path,
                                                                      container):
    """The video variant of a demuxed channel carries no audio (its sound is the
    EXT-X-MEDIA TYPE=AUDIO rendition's): probed, its spec is "video-only", and the
    ad's segments for it are H.264 alone, on the content's video PID, as many as
    the audio rendition's. Before, every video ad segment carried an AAC track the
    content has not (found by a newcomer: ffprobe of every ad slot during a break)."""
    demuxed = media.ensure_demuxed(media_set)
    probed = await probe_rendition(demuxed.renditions[0].segments[3], "v0")
    assert probed.kind == "video-only" and probed.video_only and not probed.audio_only
    assert probed.video_pid == 0x100
    assert RenditionSpec.from_json(json.loads(json.dumps(probed.to_json()))) == probed
    assert probed.to_json()["kind"] == "video-only"  # a ladder key of its own
    video = RenditionSpec("v0", 640, 360, 800_000, Fraction(30), container=container,
                          video_pid=0x100 if container == "ts" else None, kind="video-only")
    audio = RenditionSpec("a0", 0, 0, 0, Fraction(48000), container=container,
                          audio_pid=0x101 if container == "ts" else None, kind="audio")
    result = await condition(media_set.ad("ad-b").path, [video, audio], tmp_path, key="ad-b")
    v = result.renditions["v0"]
    assert len(v.segments) == len(result.renditions["a0"].segments) == 8
    for seg in v.segments:
        one = tmp_path / f"one.{'mp4' if container == 'fmp4' else 'ts'}"
        one.write_bytes((v.init.read_bytes() if v.init else b"") + seg.path.read_bytes())
        streams = _ffprobe(one, "-count_packets", "-show_streams")["streams"]
        assert [s["codec_type"] for s in streams] == ["video"], (seg.path, streams)
        assert (streams[0]["width"], streams[0]["height"]) == (640, 360)
        assert int(streams[0]["nb_read_packets"]) == 60
        if container == "ts":
            assert int(streams[0]["id"], 16) == 0x100
