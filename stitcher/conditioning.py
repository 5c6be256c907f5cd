"""Ad creative conditioning: transcode a mezzanine to the channel's ladder.

A creative (a file path or an http(s) URL of the VAST mezzanine / best media
file) is transcoded, in one ffmpeg process that decodes it once, to every
:class:`RenditionSpec` probed from the content, so ad segments are what
players switch between without a hiccup: H.264 + AAC in the content's
container (MPEG-TS with its PIDs, or fMP4 media segments behind one init
segment), the same resolution (scaled and padded to keep the aspect, SAR 1),
frame rate, pixel format, profile/level, AAC sample rate and channels, and
loudness normalised with ``loudnorm`` (I=-24 LUFS, EBU R128 style).

The output is cut into segments of exactly ``segment_duration`` (the
content's cadence, ``round(segment_duration * fps)`` frames each) with an IDR
at every segment start, so the cut points are identical in every rendition.
The slot mapping in ``docs/architecture.md`` maps one ad segment onto one
content slot, so the creative is padded at its end with black frames and
silence (or with ``pad_source``, e.g. the slate) up to the next whole
segment: a 15 s creative on 2 s segments gives 8 segments, the last holding
1 s of ad and 1 s of padding. A tail of at most ``trim_tolerance`` (default
0.1 s: mezzanines that run 10.02 s) is trimmed instead of costing a whole
padded segment. No segment is ever shorter than ``segment_duration``.

Layout: ``out_dir/<key>/<rendition>/seg_00000.ts`` ... (fMP4: ``init.mp4`` and
``seg_00000.m4s`` ...) and a ``done.json`` marker, written atomically after the
segments are in place. A rendition whose marker matches the requested spec is
reused without running ffmpeg; concurrent calls for the same key share one
task; at most ``max_concurrent`` ffmpeg processes run at once (a semaphore)
and each has a timeout. The event loop never blocks: ffmpeg and ffprobe run with
``asyncio.create_subprocess_exec``.

The slate is conditioned the same way (``key="slate-<channel>"``) so the stitcher can
fill slots with it one segment at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import ffmpeg  # type: ignore[import-untyped]

from stitcher.ffmpeg import ffmpeg_exe, ffprobe_exe

log = logging.getLogger(__name__)

LOUDNESS_I = -24.0  # LUFS (EBU R128 / ATSC A/85 style target)
LOUDNESS_TP = -2.0  # dBTP
LOUDNESS_LRA = 11.0
MARKER = "done.json"
FMP4_INIT = "init.mp4"
MARKER_VERSION = 3  # 2: continuity counters run on across segments; 3: the content's PIDs
#                     (-streamid: earlier ads had ffmpeg's 0x100/0x101 whatever the content's)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class ConditioningError(Exception):
    """Conditioning failed: ffmpeg exited non-zero, timed out, or produced a wrong result.

    ``stderr_tail`` holds the end of ffmpeg's (or ffprobe's) stderr.
    """

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(f"{message}\n{stderr_tail}" if stderr_tail else message)
        self.message = message
        self.stderr_tail = stderr_tail


#: AAC encoders (ffmpeg's included) put one frame of priming samples (encoder delay)
#: before the audio: an audio-only rendition is fed that much less, so its packets
#: end within a frame of the slot instead of spilling one into an extra segment.
AAC_FRAME = 1024


@dataclass(frozen=True)
class RenditionSpec:
    """What a conditioned rendition must look like (probed from the content).

    ``kind`` "video": H.264 + AAC, cut every ``frames_per_segment`` video frames.
    ``kind`` "video-only": H.264 without audio, the video variant of a demuxed
    channel (its audio is an EXT-X-MEDIA TYPE=AUDIO rendition of its own): an ad
    segment with an AAC track there would add a stream the content does not have
    (and a second copy of the ad's sound next to the audio rendition's).
    ``kind`` "audio": a demuxed audio rendition (EXT-X-MEDIA TYPE=AUDIO), AAC only,
    no picture (``width``, ``height``, ``video_bitrate`` 0); its ``fps`` is the
    sample rate, so its "frames" are samples and the plan, padding and cut points
    are computed the same way, on the audio grid's cadence.
    """

    name: str
    width: int
    height: int
    video_bitrate: int  # bits/s
    fps: Fraction
    audio_rate: int = 48000
    audio_channels: int = 2
    segment_duration: Fraction = Fraction(2)
    container: str = "ts"
    video_profile: str = "main"  # x264 -profile:v (baseline, main, high)
    video_level: str | None = None  # x264 -level, e.g. "3.1"; None lets x264 pick
    pix_fmt: str = "yuv420p"
    audio_bitrate: int = 128000
    video_pid: int | None = None  # MPEG-TS PIDs; None = ffmpeg's defaults (0x100, 0x101)
    audio_pid: int | None = None
    #: Pad the creative to a whole multiple of this many seconds (the channel's
    #: pod layout unit: its coarsest rendition cadence, e.g. 6 s subtitles over
    #: 2 s video), so every grid sees an ad end at the same instant.
    pad_to: Fraction | None = None
    kind: str = "video"  # or "video-only", "audio" (audio-only, see above)

    @property
    def audio_only(self) -> bool:
        return self.kind == "audio"

    @property
    def video_only(self) -> bool:
        return self.kind == "video-only"

    @property
    def frames_per_segment(self) -> int:
        frames = self.segment_duration * self.fps
        n = round(frames)
        # Audio: samples, the cadence to the nearest one (44.1 kHz x 2.002 s is 88288.2).
        if n < 1 or (not self.audio_only and abs(frames - n) > Fraction(1, 100)):
            raise ValueError(
                f"{self.name}: segment duration {self.segment_duration} s is not a whole "
                f"number of frames at {self.fps} fps"
            )
        return n

    @property
    def exact_segment_duration(self) -> Fraction:
        """The duration of every segment: a whole number of frames."""
        return Fraction(self.frames_per_segment) / self.fps

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fps"] = str(self.fps)
        d["segment_duration"] = str(self.segment_duration)
        d["pad_to"] = None if self.pad_to is None else str(self.pad_to)
        if self.kind == "video":
            del d["kind"]  # video specs as before: their conditioned assets stay valid
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RenditionSpec:
        d = dict(d)
        d["fps"] = Fraction(d["fps"])
        d["segment_duration"] = Fraction(d["segment_duration"])
        d["pad_to"] = None if d.get("pad_to") is None else Fraction(d["pad_to"])
        return cls(**d)


@dataclass(frozen=True)
class DeclaredMedia:
    """What the ad server declared about a creative (VAST ``MediaFile`` / ``Mezzanine``).

    Only a claim: conditioning probes the file itself and logs (and counts) where
    the two disagree (B21: declared 1920x1080, really 2048x1152), then conditions
    to the ladder from what was probed.
    """

    width: int | None = None
    height: int | None = None
    codec: str | None = None  # RFC 6381, e.g. "avc1.640028"

    @classmethod
    def of(cls, media: Any) -> DeclaredMedia | None:
        """From a :class:`stitcher.vast.MediaFile` or ``Mezzanine`` (None if it declares nothing)."""
        d = cls(getattr(media, "width", None), getattr(media, "height", None),
                getattr(media, "codec", None) or None)
        return None if d == cls() else d


#: RFC 6381 sample entry -> ffprobe codec_name
_CODEC_FAMILIES = {"avc1": "h264", "avc3": "h264", "hev1": "hevc", "hvc1": "hevc",
                   "av01": "av1", "vp09": "vp9", "mp4v": "mpeg4"}
_H264_PROFILE_IDC = {"baseline": 66, "constrained baseline": 66, "main": 77, "extended": 88,
                     "high": 100, "high 10": 110, "high 4:2:2": 122, "high 4:4:4 predictive": 244}


def _h264_codec_string(v: dict[str, Any]) -> str | None:
    """``avc1.PPCCLL`` from a probed H.264 stream (constraint flags reported as 00)."""
    idc = _H264_PROFILE_IDC.get(str(v.get("profile", "")).lower())
    level = v.get("level")
    if idc is None or not isinstance(level, int) or level <= 0:
        return None
    return f"avc1.{idc:02x}00{level:02x}"


def _codec_mismatch(declared: str, v: dict[str, Any]) -> str | None:
    """What the probed stream really is, if it is not what ``declared`` says; else None."""
    first = declared.split(",")[0].strip()
    family, _, rest = first.partition(".")
    want = _CODEC_FAMILIES.get(family.lower())
    got = str(v.get("codec_name") or "")
    if want is None or not got:
        return None  # a codec we don't know how to compare: no claim either way
    if want != got:
        return got
    if want == "h264" and len(rest) == 6:
        probed = _h264_codec_string(v)
        try:
            d_profile, d_level = int(rest[0:2], 16), int(rest[4:6], 16)
        except ValueError:
            return None
        if probed is not None and (int(probed[5:7], 16), int(probed[9:11], 16)) != (
                d_profile, d_level):
            return probed
    return None


def check_declared(declared: DeclaredMedia | None, info: dict[str, Any], src: str,
                   key: str = "") -> list[tuple[str, str, str]]:
    """Compare a probe (ffprobe JSON) with the declaration: [(kind, declared, probed)].

    Kinds: ``resolution`` and ``codec``. Each mismatch is logged as a warning
    naming both values.
    """
    v = _stream(info, "video")
    if declared is None or v is None:
        return []
    found: list[tuple[str, str, str]] = []
    if declared.width is not None and declared.height is not None:
        probed = (int(v.get("width") or 0), int(v.get("height") or 0))
        if probed != (declared.width, declared.height):
            found.append(("resolution", f"{declared.width}x{declared.height}",
                          f"{probed[0]}x{probed[1]}"))
    if declared.codec:
        got = _codec_mismatch(declared.codec, v)
        if got is not None:
            found.append(("codec", declared.codec, got))
    for kind, want, got in found:
        log.warning("creative %s (%s): VAST MediaFile declared %s %s, probed stream is %s; "
                    "conditioning to the ladder from the probed stream",
                    key or src, src, kind, want, got)
    return found


class ConditionedSegment(NamedTuple):
    path: Path
    duration: Fraction


@dataclass(frozen=True)
class ConditionedRendition:
    spec: RenditionSpec
    segments: tuple[ConditionedSegment, ...]
    duration: Fraction  # the creative's real (unpadded) duration in this rendition
    #: The fMP4 init segment (EXT-X-MAP) when ``spec.container`` is "fmp4".
    init: Path | None = None

    @property
    def padded_duration(self) -> Fraction:
        return sum((s.duration for s in self.segments), Fraction(0))


@dataclass(frozen=True)
class ConditionedCreative:
    key: str
    duration: Fraction  # the creative's real duration (quartiles are computed from it)
    renditions: dict[str, ConditionedRendition] = field(default_factory=dict)

    def segments(self, rendition: str) -> list[ConditionedSegment]:
        return list(self.renditions[rendition].segments)

    @property
    def segment_count(self) -> int:
        counts = {len(r.segments) for r in self.renditions.values()}
        if len(counts) != 1:
            raise ValueError(f"{self.key}: renditions differ in segment count: {counts}")
        return counts.pop()


# ----------------------------------------------------------------- probing


async def _exec(cmd: list[str], timeout: float, what: str) -> tuple[bytes, str]:
    """Run a command without blocking the loop; (stdout, stderr text). Kills on timeout."""
    log.debug("exec: %s", " ".join(cmd))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise ConditioningError(f"{what}: cannot start {cmd[0]}: {e}") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        # It may exit between the timeout and the kill (a loaded machine): not an error.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        _, err = await proc.communicate()
        raise ConditioningError(f"{what}: timed out after {timeout} s",
                                err.decode(errors="replace")[-4000:]) from None
    except BaseException:  # cancelled: don't leave ffmpeg running
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    text = err.decode(errors="replace")
    if proc.returncode != 0:
        raise ConditioningError(f"{what}: exit status {proc.returncode}", text[-4000:])
    return out, text


def _input_opts(src: str) -> dict[str, Any]:
    """Restrict what a (possibly untrusted) creative URL may make ffmpeg open."""
    if re.match(r"^https?://", src, re.IGNORECASE):
        return {"protocol_whitelist": "http,https,tcp,tls,crypto"}
    if "://" in src or src.startswith(("-", "concat:", "subfile,")) or re.match(r"^\w+:", src):
        raise ConditioningError(f"unsupported creative location: {src!r}")
    return {"protocol_whitelist": "file"}


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\d+:\d+(?:\[(0x[0-9a-f]+)\])?.*?: Video: (\w+)(?: \(([^)]*)\))?"
                    r".*?, (\w+)(?:\(.*?\))?, (\d+)x(\d+)(?:.*?, ([\d.]+) fps)?(?:.*?, ([\d.k]+) tbr)?")
_AUDIO = re.compile(r"Stream #\d+:\d+(?:\[(0x[0-9a-f]+)\])?.*?: Audio: (\w+).*?, (\d+) Hz, "
                    r"([\w.()]+)")


async def _probe_without_ffprobe(src: str, count_frames: bool, timeout: float) -> dict[str, Any]:
    """A minimal ffprobe-shaped dict parsed from ``ffmpeg -i`` (bundled ffmpeg has no ffprobe)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin"]
    for k, v in _input_opts(src).items():
        cmd += [f"-{k}", v]
    cmd += ["-i", src]
    if count_frames:
        cmd += ["-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    text = err.decode(errors="replace")
    streams: list[dict[str, Any]] = []
    fmt: dict[str, Any] = {}
    m = _DURATION.search(text)
    if m:
        fmt["duration"] = str(int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]))
    if b := re.search(r"Duration: .*?bitrate: (\d+) kb/s", text):
        fmt["bit_rate"] = str(int(b[1]) * 1000)
    for line in text.splitlines():
        if (v := _VIDEO.search(line)) and not streams_has(streams, "video"):
            rate = v[7] or v[8] or "0"
            rate = rate.replace("k", "000")
            streams.append({
                "codec_type": "video", "codec_name": v[2], "profile": (v[3] or "").split(")")[0],
                "pix_fmt": v[4], "width": int(v[5]), "height": int(v[6]),
                "r_frame_rate": str(Fraction(rate).limit_denominator(1001)),
                "id": v[1],
            })
        elif (a := _AUDIO.search(line)) and not streams_has(streams, "audio"):
            layout = a[4]
            channels = {"mono": 1, "stereo": 2, "5.1": 6, "5.1(side)": 6}.get(layout, 2)
            streams.append({"codec_type": "audio", "codec_name": a[2],
                            "sample_rate": a[3], "channels": channels, "id": a[1]})
    if count_frames:
        frames = re.findall(r"frame=\s*(\d+)", text)
        for s in streams:
            if s["codec_type"] == "video" and frames:
                s["nb_read_packets"] = frames[-1]
    if proc.returncode != 0 and not streams:
        raise ConditioningError(f"cannot probe {src}", text[-4000:])
    return {"streams": streams, "format": fmt}


def streams_has(streams: list[dict[str, Any]], kind: str) -> bool:
    return any(s.get("codec_type") == kind for s in streams)


async def _probe(src: str, *, count_frames: bool = False, timeout: float = 60.0) -> dict[str, Any]:
    probe = ffprobe_exe()
    if probe is None:
        return await _probe_without_ffprobe(src, count_frames, timeout)
    cmd = [probe, "-v", "error"]
    for k, v in _input_opts(src).items():
        cmd += [f"-{k}", v]
    if count_frames:
        cmd += ["-count_packets"]
    cmd += ["-show_streams", "-show_format", "-of", "json", src]
    out, _ = await _exec(cmd, timeout, f"probing {src}")
    try:
        return json.loads(out)
    except ValueError as e:
        raise ConditioningError(f"ffprobe gave no JSON for {src}") from e


def _stream(info: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for s in info.get("streams", []):
        if s.get("codec_type") == kind:
            return s
    return None


def _rate(text: str | None) -> Fraction | None:
    try:
        r = Fraction(text or "")
    except (ValueError, ZeroDivisionError):
        return None
    return r if 0 < r <= 240 else None


def whole_frames(duration: Fraction, fps: Fraction) -> Fraction:
    """``duration`` as the nearest whole number of frames at ``fps``, in seconds.

    A playlist's target duration is an integer (RFC 8216bis 4.4.3.1), but at
    29.97 fps (30000/1001) a 6 s cadence is 179.82 frames: content packagers
    cut 180, i.e. 6.006 s segments (2 s is 60 frames, 2.002 s). Ads conditioned
    to that cadence cut where the content does, and a segment within half a
    frame of the target never rounds above it.
    """
    frames = round(duration * fps)
    if frames < 1:
        raise ValueError(f"segment duration {duration} s is less than one frame at {fps} fps")
    return Fraction(frames) / fps


_AUDIO_BITRATES = (32000, 48000, 64000, 96000, 128000, 160000, 192000, 256000, 320000)
_PROFILES = {"main": "main", "high": "high", "baseline": "baseline",
             "constrained baseline": "baseline"}


async def probe_rendition(
    path_or_url: str | os.PathLike[str], name: str, *,
    segment_duration: Fraction | None = None, timeout: float = 60.0,
) -> RenditionSpec:
    """Probe a content segment (or any media) and return the spec ads must match.

    Without ``segment_duration`` the input must be one segment: its duration
    is its video frame count over the frame rate. A given ``segment_duration``
    (the channel's nominal cadence, e.g. the target duration) is taken as the
    nearest whole number of frames at the probed rate (:func:`whole_frames`).
    """
    src = str(path_or_url)
    info = await _probe(src, count_frames=segment_duration is None, timeout=timeout)
    v = _stream(info, "video")
    if v is None:
        raise ConditioningError(f"{src}: no video stream")
    a = _stream(info, "audio")
    fps = _rate(v.get("r_frame_rate")) or _rate(v.get("avg_frame_rate"))
    if fps is None:
        raise ConditioningError(f"{src}: unknown frame rate")
    if segment_duration is None:
        frames = int(v.get("nb_read_packets") or v.get("nb_frames") or 0)
        if frames <= 0:
            raise ConditioningError(f"{src}: cannot count video frames")
        segment_duration = Fraction(frames) / fps
    else:
        segment_duration = whole_frames(segment_duration, fps)
    fmt = info.get("format", {})
    # A short segment under-runs its nominal AAC rate (quiet audio): snap the
    # measurement up to the next common encoder setting.
    measured_audio = int(a.get("bit_rate") or 128000) if a else 128000
    audio_bitrate = next((b for b in _AUDIO_BITRATES if b >= measured_audio * 0.95),
                         _AUDIO_BITRATES[-1])
    if v.get("bit_rate"):
        video_bitrate = int(v["bit_rate"])
    else:
        size = fmt.get("size")
        dur = fmt.get("duration")
        if size and dur and float(dur) > 0:
            # container total minus audio, less ~5 % MPEG-TS overhead
            total = int(size) * 8 / float(dur)
            video_bitrate = int(max(total * 0.95 - audio_bitrate, 100_000))
        elif fmt.get("bit_rate"):
            video_bitrate = int(max(int(fmt["bit_rate"]) * 0.95 - audio_bitrate, 100_000))
        else:
            video_bitrate = 1_000_000
    video_bitrate = round(video_bitrate, -3)
    level = v.get("level")
    video_level = None
    if isinstance(level, int) and level > 0:
        video_level = f"{level // 10}.{level % 10}"
    profile = _PROFILES.get(str(v.get("profile", "")).lower(), "main")

    def pid(s: dict[str, Any] | None) -> int | None:
        try:
            return int(str(s["id"]), 16) if s and s.get("id") else None
        except ValueError:
            return None

    fmt_name = str(fmt.get("format_name", "mpegts"))
    container = "fmp4" if ("mp4" in fmt_name or "mov" in fmt_name) else "ts"
    # An MP4 stream id is its track ID, not a PID: fMP4 renditions have none.
    pids = (pid(v), pid(a)) if container == "ts" else (None, None)
    return RenditionSpec(
        name=name, width=int(v["width"]), height=int(v["height"]),
        video_bitrate=video_bitrate, fps=fps,
        audio_rate=int(a["sample_rate"]) if a else 48000,
        audio_channels=int(a.get("channels") or 2) if a else 2,
        segment_duration=segment_duration, container=container,
        video_profile=profile, video_level=video_level,
        pix_fmt=v.get("pix_fmt") or "yuv420p",
        audio_bitrate=audio_bitrate if a else 128000,
        video_pid=pids[0], audio_pid=pids[1],
        # Content without audio (a demuxed channel's video variant): ads without
        # audio too, or every ad segment carries a stream the content has not.
        kind="video" if a else "video-only",
    )


async def probe_audio_rendition(
    path_or_url: str | os.PathLike[str], name: str, *, segment_duration: Fraction,
    timeout: float = 60.0,
) -> RenditionSpec:
    """The audio-only spec (``kind="audio"``) ads must match in a demuxed audio
    rendition, probed from one of its segments (fMP4: init and segment as one
    file): container, AAC sample rate and channels, bit rate and, for MPEG-TS,
    the audio PID. ``segment_duration`` is the audio grid's cadence.

    Raises :class:`ConditioningError` when the segment holds no audio, or audio
    that is not AAC (ads are conditioned to AAC only: an ad in another codec than
    the rendition's ``CODECS`` would not play).
    """
    src = str(path_or_url)
    info = await _probe(src, timeout=timeout)
    a = _stream(info, "audio")
    if a is None:
        raise ConditioningError(f"{src}: no audio stream in audio rendition {name}")
    if str(a.get("codec_name") or "") != "aac":
        raise ConditioningError(f"{src}: audio rendition {name} is {a.get('codec_name')!r}; "
                                "ads are conditioned to AAC only")
    try:
        rate = int(a["sample_rate"])
        channels = int(a.get("channels") or 0)
    except (KeyError, TypeError, ValueError):
        rate = channels = 0
    if rate <= 0 or channels <= 0:
        raise ConditioningError(f"{src}: audio rendition {name}: unknown sample rate or "
                                "channel count")
    fmt = info.get("format", {})
    fmt_name = str(fmt.get("format_name", "mpegts"))
    container = "fmp4" if ("mp4" in fmt_name or "mov" in fmt_name) else "ts"
    measured = int(a.get("bit_rate") or 128000)
    pid = None
    if container == "ts" and a.get("id"):
        with contextlib.suppress(ValueError):
            pid = int(str(a["id"]), 16)
    return RenditionSpec(
        name=name, width=0, height=0, video_bitrate=0, fps=Fraction(rate),
        audio_rate=rate, audio_channels=channels,
        segment_duration=Fraction(round(segment_duration * rate), rate),
        container=container,
        audio_bitrate=next((b for b in _AUDIO_BITRATES if b >= measured * 0.95),
                           _AUDIO_BITRATES[-1]),
        audio_pid=pid, kind="audio")


# -------------------------------------------------------------- conditioning


def _check_name(what: str, name: str) -> None:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe {what} for a path component: {name!r}")


def _load_marker(rdir: Path, spec: RenditionSpec) -> ConditionedRendition | None:
    try:
        marker = json.loads((rdir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("version") != MARKER_VERSION or marker.get("spec") != spec.to_json():
        return None
    segs = tuple(ConditionedSegment(rdir / name, Fraction(d)) for name, d in marker["segments"])
    if not all(s.path.is_file() for s in segs):
        return None
    init = rdir / marker["init"] if marker.get("init") else None
    return ConditionedRendition(spec, segs, Fraction(marker["duration"]), init)


#: The files of a published rendition folder a player fetches: its media segments and
#: the fMP4 init segment, by extension. Everything else under the library is
#: bookkeeping that names server paths and ad-server URLs (``done.json``, the
#: library's ``keys.json``, the downloaded mezzanines, temporary folders and files).
_PLAYER_FILE = re.compile(r"^(?:seg_\d{5}\.(ts|m4s)|init\.(mp4))$")
MEDIA_TYPES = {"ts": "video/mp2t", "m4s": "video/iso.segment", "mp4": "video/mp4"}


def player_file(root: Path, rel: str) -> tuple[Path, str] | None:
    """The file and media type of ``<key>/<rendition>/<segment or init>`` under ``root``
    when it belongs to a published rendition (its ``done.json`` written); None for
    any other path, so the static route serves what players need and nothing else
    (found by a newcomer: ``/assets/keys.json`` listed every creative's URL)."""
    parts = rel.split("/")
    if len(parts) != 3:
        return None
    key, rendition, name = parts
    match = _PLAYER_FILE.match(name)
    if match is None or not all(_SAFE_NAME.match(p) and ".." not in p
                                for p in (key, rendition)):
        return None
    folder = root / key / rendition
    if not (folder / MARKER).is_file():
        return None
    path = (folder / name).resolve()
    # A symlink out of the library is refused like any other path outside it.
    if not path.is_file() or root.resolve() not in path.parents:
        return None
    return path, MEDIA_TYPES[match.group(1) or match.group(2)]


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, never half-written: through a temporary
    file of its own, so instances sharing the folder never collide on one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class _Plan:
    spec: RenditionSpec
    frames: int  # creative frames kept
    total: int  # frames after padding (a whole number of segments)
    segments: int
    tmp_dir: Path


def _plan(spec: RenditionSpec, duration: Fraction, trim_tolerance: Fraction,
          tmp_dir: Path) -> _Plan:
    k = spec.frames_per_segment
    frames = max(1, round(duration * spec.fps))
    rest = frames % k
    if rest and frames > k and Fraction(rest) / spec.fps <= trim_tolerance:
        frames -= rest  # a few stray frames: trim rather than pad a whole segment
    segments = math.ceil(frames / k)
    if spec.pad_to:
        per_unit = max(1, round(spec.pad_to / spec.exact_segment_duration))
        segments = math.ceil(segments / per_unit) * per_unit
    return _Plan(spec, frames, segments * k, segments, tmp_dir)


def _conform_video(stream: Any, spec: RenditionSpec) -> Any:
    return (
        stream.filter("scale", spec.width, spec.height, force_original_aspect_ratio="decrease",
                      flags="bicubic")
        .filter("pad", spec.width, spec.height, "(ow-iw)/2", "(oh-ih)/2", color="black")
        .filter("setsar", 1)
        .filter("format", spec.pix_fmt)
    )


def _audio_fmt(spec: RenditionSpec) -> dict[str, Any]:
    layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(spec.audio_channels, "stereo")
    return {"sample_fmts": "fltp", "sample_rates": spec.audio_rate, "channel_layouts": layout}


def _build(
    src: str, info: dict[str, Any], plans: list[_Plan], pad_source: str | None,
    pad_info: dict[str, Any] | None, preset: str,
) -> list[str]:
    """The ffmpeg command line: decode once, one segmented output per rendition."""
    inp = ffmpeg.input(src, **_input_opts(src))
    has_audio = _stream(info, "audio") is not None
    video = inp.video.filter("setpts", "PTS-STARTPTS").split()
    if has_audio:
        audio = inp.audio.filter("asetpts", "PTS-STARTPTS")
    else:
        audio = ffmpeg.input("anullsrc=channel_layout=stereo:sample_rate=48000", f="lavfi").audio
    # Loudness is measured and normalised once, before the renditions split.
    longest = max(Fraction(p.frames) / p.spec.fps for p in plans)
    audio = (
        audio.filter("atrim", end=float(longest))
        .filter("loudnorm", i=LOUDNESS_I, tp=LOUDNESS_TP, lra=LOUDNESS_LRA)
        .filter("aresample", 48000)
        .asplit()
    )
    pad_v = pad_a = None
    if pad_source is not None and any(p.total > p.frames for p in plans):
        pin = ffmpeg.input(pad_source, stream_loop=-1, **_input_opts(pad_source))
        pad_v = pin.video.filter("setpts", "PTS-STARTPTS").split()
        if pad_info is not None and _stream(pad_info, "audio") is not None:
            pad_a = pin.audio.filter("asetpts", "PTS-STARTPTS").asplit()
    outputs = []
    for i, plan in enumerate(plans):
        spec = plan.spec
        if spec.audio_only:
            outputs.append(_audio_output(audio[i], None if pad_a is None else pad_a[i], plan))
            continue
        pad_frames = plan.total - plan.frames
        total_seconds = Fraction(plan.total) / spec.fps
        total_samples = round(total_seconds * spec.audio_rate)
        v = _conform_video(
            video[i].filter("fps", str(spec.fps)).filter("trim", end_frame=plan.frames), spec)
        if spec.video_only:
            outputs.append(_video_only_output(v, None if pad_v is None else pad_v[i], plan,
                                              preset))
            continue
        a = (audio[i].filter("atrim", end=float(Fraction(plan.frames) / spec.fps))
             .filter("aresample", spec.audio_rate).filter("aformat", **_audio_fmt(spec)))
        if pad_frames and pad_v is not None:
            # Pad with the pad source (looped) instead of black: creative then pad, each
            # with audio of exactly its video's length so the two stay in sync.
            creative_samples = round(Fraction(plan.frames) / spec.fps * spec.audio_rate)
            pad_samples = total_samples - creative_samples
            pv = _conform_video(
                pad_v[i].filter("fps", str(spec.fps)).filter("trim", end_frame=pad_frames), spec)
            if pad_a is not None:
                pa = pad_a[i]
            else:
                pa = ffmpeg.input(f"anullsrc=sample_rate={spec.audio_rate}", f="lavfi").audio
            pa = (pa.filter("aresample", spec.audio_rate).filter("aformat", **_audio_fmt(spec))
                  .filter("apad", whole_len=pad_samples).filter("atrim", end_sample=pad_samples))
            a = a.filter("apad", whole_len=creative_samples).filter(
                "atrim", end_sample=creative_samples)
            joined = ffmpeg.concat(v, a, pv, pa, v=1, a=1).node
            v, a = joined[0], joined[1]
        # Black frames / silence up to the whole segment (also absorbs rounding).
        v = (v.filter("tpad", stop=plan.total, stop_mode="add", color="black")
             .filter("trim", end_frame=plan.total)
             .filter("setpts", f"N/({spec.fps.numerator}/{spec.fps.denominator})/TB"))
        a = (a.filter("apad", whole_len=total_samples)
             .filter("atrim", end_sample=total_samples)
             .filter("asetpts", "N/SR/TB"))
        opts = _video_opts(plan, preset)
        opts.update({"acodec": "aac", "b:a": spec.audio_bitrate, "ar": spec.audio_rate,
                     "ac": spec.audio_channels})
        outputs.append(ffmpeg.output(v, a, str(plan.tmp_dir / "segments.m3u8"), **opts))
    args = ffmpeg.merge_outputs(*outputs).get_args()
    for plan in plans:  # ffmpeg-python cannot repeat an option: insert before the file name
        at = args.index(str(plan.tmp_dir / "segments.m3u8"))
        if plan.spec.container == "ts":
            args[at:at] = _pid_args(plan.spec)
    return [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y"] + args


def _video_only_output(video: Any, pad: Any, plan: _Plan, preset: str) -> Any:
    """The segmented output of a video rendition without audio (a demuxed channel's
    video variant): the creative's ``plan.frames`` frames, then the pad source's
    (``pad``) or black up to the padded total, cut every ``frames_per_segment``
    frames with an IDR at each cut, as for a muxed rendition but with no AAC track."""
    spec = plan.spec
    v = video
    pad_frames = plan.total - plan.frames
    if pad_frames and pad is not None:
        pv = _conform_video(
            pad.filter("fps", str(spec.fps)).filter("trim", end_frame=pad_frames), spec)
        v = ffmpeg.concat(v, pv, v=1, a=0)
    v = (v.filter("tpad", stop=plan.total, stop_mode="add", color="black")
         .filter("trim", end_frame=plan.total)
         .filter("setpts", f"N/({spec.fps.numerator}/{spec.fps.denominator})/TB"))
    return ffmpeg.output(v, str(plan.tmp_dir / "segments.m3u8"), **_video_opts(plan, preset))


def _video_opts(plan: _Plan, preset: str) -> dict[str, Any]:
    """The H.264 encoder and HLS muxer options of a video rendition's output: an
    IDR at every cut (every ``frames_per_segment`` frames), the content's profile,
    level and pixel format, segments in its container."""
    spec = plan.spec
    k = spec.frames_per_segment
    opts: dict[str, Any] = {
        "vcodec": "libx264", "preset": preset, "profile:v": spec.video_profile,
        "pix_fmt": spec.pix_fmt, "r": str(spec.fps),
        "b:v": spec.video_bitrate, "maxrate": int(spec.video_bitrate * 1.1),
        "bufsize": spec.video_bitrate * 2,
        "g": k, "keyint_min": k, "sc_threshold": 0, "flags": "+cgop",
        "force_key_frames": f"expr:eq(mod(n,{k}),0)",
        # The HLS muxer keeps one MPEG-TS context across segments, so continuity
        # counters run on from one segment of an ad to the next as they do in
        # content (the plain segment muxer restarts them in every file).
        "f": "hls", "hls_time": float(spec.exact_segment_duration), "hls_list_size": 0,
        "hls_playlist_type": "vod",
        "hls_segment_filename": str(plan.tmp_dir / f"seg_%05d.{_extension(spec)}"),
        "frames:v": plan.total,
    }
    if spec.container == "fmp4":
        # One init segment (EXT-X-MAP) for all of the ad's media segments, written
        # next to the muxer's playlist (RFC 8216bis 3.1.2).
        opts.update(hls_segment_type="fmp4", hls_fmp4_init_filename=FMP4_INIT)
    else:
        opts["hls_segment_type"] = "mpegts"
    if spec.video_level:
        opts["level:v"] = spec.video_level
    if spec.video_profile in _X264_FEATURES:
        opts["x264-params"] = _X264_FEATURES[spec.video_profile]
    return opts


def _audio_output(audio: Any, pad: Any, plan: _Plan) -> Any:
    """The segmented output of an audio-only rendition (demuxed audio).

    The same loudness-normalised audio as the video renditions' (split after
    ``loudnorm``), the creative's ``plan.frames`` samples, then the pad source's
    audio (``pad``, e.g. the slate's) or silence up to the padded total, cut by the
    HLS muxer every ``segment_duration`` (every AAC frame is a random access
    point, so a segment starts at the first frame at or after each boundary: the
    audio grid's cut points, within a frame). The encoder's priming frame counts
    against the total, so the last packet ends within a frame of the slot.
    """
    spec = plan.spec
    fmt = _audio_fmt(spec)
    a = (audio.filter("atrim", end=float(Fraction(plan.frames) / spec.fps))
         .filter("aresample", spec.audio_rate).filter("aformat", **fmt))
    pad_samples = plan.total - plan.frames
    if pad_samples and pad is not None:
        a = a.filter("apad", whole_len=plan.frames).filter("atrim", end_sample=plan.frames)
        pa = (pad.filter("aresample", spec.audio_rate).filter("aformat", **fmt)
              .filter("apad", whole_len=pad_samples).filter("atrim", end_sample=pad_samples))
        a = ffmpeg.concat(a, pa, v=0, a=1)
    fed = max(AAC_FRAME, plan.total - AAC_FRAME)
    a = (a.filter("apad", whole_len=fed).filter("atrim", end_sample=fed)
         .filter("asetpts", "N/SR/TB"))
    opts: dict[str, Any] = {
        "acodec": "aac", "b:a": spec.audio_bitrate, "ar": spec.audio_rate,
        "ac": spec.audio_channels,
        "f": "hls", "hls_time": float(spec.exact_segment_duration), "hls_list_size": 0,
        "hls_playlist_type": "vod",
        "hls_segment_filename": str(plan.tmp_dir / f"seg_%05d.{_extension(spec)}"),
    }
    if spec.container == "fmp4":
        opts.update(hls_segment_type="fmp4", hls_fmp4_init_filename=FMP4_INIT)
    else:
        opts["hls_segment_type"] = "mpegts"
    return ffmpeg.output(a, str(plan.tmp_dir / "segments.m3u8"), **opts)


#: x264 signals the lowest profile its coding tools allow, and the fast presets turn
#: tools off (ultrafast: no CABAC, no 8x8 transform, so "main" or "high" come out as
#: Constrained Baseline). Pin the tools the content's profile is named for, so every
#: preset signals that profile.
_X264_FEATURES = {"main": "cabac=1", "high": "cabac=1:8x8dct=1"}


def _extension(spec: RenditionSpec) -> str:
    return "m4s" if spec.container == "fmp4" else "ts"


def segment_name(spec: RenditionSpec, index: int) -> str:
    return f"seg_{index:05d}.{_extension(spec)}"


def asset_segment_path(key: str, spec: RenditionSpec, index: int) -> str:
    """Where conditioning puts segment ``index`` of ``key``'s ``spec`` rendition,
    relative to the output folder (the layout above). Playlists name ad segments
    by it, not by what this instance has on disk, so every instance (and every
    render, before and after the asset lands) names a slot alike."""
    return f"{key}/{spec.name}/{segment_name(spec, index)}"


def asset_init_path(key: str, spec: RenditionSpec) -> str | None:
    """The fMP4 init segment's place in the layout; None for MPEG-TS."""
    return f"{key}/{spec.name}/{FMP4_INIT}" if spec.container == "fmp4" else None


def _pids(spec: RenditionSpec) -> tuple[int, int] | None:
    """(video PID, audio PID) of a rendition, None for ffmpeg's defaults (and for an
    audio-only one: :func:`_pid_args`)."""
    if spec.audio_only or (spec.video_pid is None and spec.audio_pid is None):
        return None
    video = spec.video_pid if spec.video_pid is not None else 0x100
    audio = spec.audio_pid if spec.audio_pid is not None else video + 1
    return video, audio


def _pid_args(spec: RenditionSpec) -> list[str]:
    """``-streamid`` for both streams: the MPEG-TS muxer uses a stream's id as its PID.

    (``mpegts_start_pid`` on the HLS muxer never reaches the MPEG-TS context it
    writes segments with, and a content audio PID need not follow its video PID.)
    """
    if spec.audio_only:  # its one stream, on the content's audio PID
        return [] if spec.audio_pid is None else ["-streamid", f"0:{spec.audio_pid}"]
    pids = _pids(spec)
    if pids is None:
        return []
    if spec.video_only:  # its one stream, on the content's video PID
        return ["-streamid", f"0:{pids[0]}"]
    return ["-streamid", f"0:{pids[0]}", "-streamid", f"1:{pids[1]}"]


def _check_pids(spec: RenditionSpec) -> None:
    pids = _pids(spec)
    if spec.audio_only and spec.audio_pid is not None:
        pids = (spec.audio_pid, spec.audio_pid)
    if pids is None or spec.container != "ts":
        return
    # ISO/IEC 13818-1 2.4.4.3 (table 2-3): 0x0000-0x000F are reserved, 0x1FFF is
    # the null packet; ffmpeg writes its PMT on 0x1000.
    for pid in pids:
        if not 0x10 <= pid < 0x1FFF or pid == 0x1000:
            raise ValueError(f"{spec.name}: PID {pid:#x} cannot carry an elementary stream")
    if pids[0] == pids[1] and not spec.audio_only:
        raise ValueError(f"{spec.name}: video and audio share PID {pids[0]:#x}")


class Conditioner:
    """Runs conditioning jobs: bounded ffmpeg concurrency, shared in-flight tasks.

    One per event loop (asyncio primitives are loop-bound); :func:`condition`
    uses a default instance for the running loop.
    """

    def __init__(self, max_concurrent: int = 2, timeout: float = 600.0,
                 preset: str = "veryfast", trim_tolerance: Fraction = Fraction(1, 10),
                 metrics: Any = None) -> None:
        self.max_concurrent = max_concurrent
        #: :class:`stitcher.metrics.Metrics` (optional): declared/probed mismatches counted.
        self.metrics = metrics
        self.timeout = timeout
        self.preset = preset
        self.trim_tolerance = trim_tolerance
        self._sem = asyncio.Semaphore(max_concurrent)
        self._inflight: dict[tuple[str, str], asyncio.Task[ConditionedCreative]] = {}
        self.runs = 0  # ffmpeg transcodes started (observability, tests)
        self.mismatches = 0  # declared-vs-probed disagreements seen

    async def condition(
        self, creative: str | os.PathLike[str], specs: list[RenditionSpec],
        out_dir: str | os.PathLike[str], *, key: str,
        pad_source: str | os.PathLike[str] | None = None,
        declared: DeclaredMedia | None = None, channel: str = "",
    ) -> ConditionedCreative:
        """``declared``: what VAST said the creative is, checked against its probe."""
        _check_name("key", key)
        if not specs:
            raise ValueError("no rendition specs")
        for s in specs:
            _check_name("rendition name", s.name)
            if s.kind not in ("video", "video-only", "audio"):
                raise ValueError(f"{s.name}: kind {s.kind!r} not supported "
                                 "(video, video-only or audio)")
            if s.container not in ("ts", "fmp4"):
                raise ValueError(f"{s.name}: container {s.container!r} not supported "
                                 "(ts or fmp4)")
            s.frames_per_segment  # noqa: B018 - validates the cadence
            _check_pids(s)
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("duplicate rendition names")
        base = Path(out_dir).resolve() / key
        flight = (str(base), key)
        while True:
            done = self._cached(base, key, specs)
            if done is not None:
                return done
            task = self._inflight.get(flight)
            if task is None:
                task = asyncio.ensure_future(self._run(
                    str(creative), specs, base, key,
                    None if pad_source is None else str(pad_source), declared, channel))
                self._inflight[flight] = task
                def forget(_t: asyncio.Task[ConditionedCreative],
                           f: tuple[str, str] = flight) -> None:
                    self._inflight.pop(f, None)

                task.add_done_callback(forget)
                return await asyncio.shield(task)
            # Someone else is conditioning this key (maybe for other renditions):
            # wait for it, then re-check what is missing.
            try:
                await asyncio.shield(task)
            except ConditioningError:
                pass

    def cached(self, out_dir: str | os.PathLike[str], key: str,
               specs: list[RenditionSpec]) -> ConditionedCreative | None:
        """The finished result for ``key`` on disk, if every spec is done (no ffmpeg)."""
        return self._cached(Path(out_dir).resolve() / key, key, specs)

    def _cached(self, base: Path, key: str,
                specs: list[RenditionSpec]) -> ConditionedCreative | None:
        found = {}
        for s in specs:
            r = _load_marker(base / s.name, s)
            if r is None:
                return None
            found[s.name] = r
        return ConditionedCreative(key, next(iter(found.values())).duration, found)

    async def _run(self, creative: str, specs: list[RenditionSpec], base: Path, key: str,
                   pad_source: str | None, declared: DeclaredMedia | None = None,
                   channel: str = "") -> ConditionedCreative:
        ready = {s.name: r for s in specs if (r := _load_marker(base / s.name, s)) is not None}
        missing = [s for s in specs if s.name not in ready]
        if missing:
            info = await _probe(creative, timeout=min(self.timeout, 120.0))
            duration = _creative_duration(info, creative)
            for kind, _, _ in check_declared(declared, info, creative, key):
                self.mismatches += 1
                if self.metrics is not None:
                    self.metrics.creative_mismatch.labels(channel, kind).inc()
            pad_info = None
            if pad_source is not None:
                pad_info = await _probe(pad_source, timeout=min(self.timeout, 120.0))
            base.mkdir(parents=True, exist_ok=True)
            plans = [_plan(s, duration, self.trim_tolerance,
                           Path(tempfile.mkdtemp(prefix=f".tmp-{s.name}-", dir=base)))
                     for s in missing]
            try:
                cmd = _build(creative, info, plans, pad_source, pad_info, self.preset)
                async with self._sem:
                    self.runs += 1
                    started = time.monotonic()
                    log.info("conditioning %s (%s s) to %s", key, duration,
                             ", ".join(s.name for s in missing))
                    await _exec(cmd, self.timeout, f"conditioning {key}")
                    log.info("conditioned %s in %.1f s", key, time.monotonic() - started)
                for plan in plans:
                    ready[plan.spec.name] = self._publish(base, key, plan, creative)
            finally:
                for plan in plans:
                    shutil.rmtree(plan.tmp_dir, ignore_errors=True)
        result = {s.name: ready[s.name] for s in specs}
        return ConditionedCreative(key, next(iter(result.values())).duration, result)

    def _publish(self, base: Path, key: str, plan: _Plan, creative: str
                 ) -> ConditionedRendition:
        spec = plan.spec
        ext = _extension(spec)
        names = sorted(p.name for p in plan.tmp_dir.glob(f"seg_*.{ext}"))
        expected = [segment_name(spec, j) for j in range(plan.segments)]
        if names != expected:
            raise ConditioningError(
                f"{spec.name}: expected {plan.segments} segments, ffmpeg wrote {len(names)}")
        init = FMP4_INIT if spec.container == "fmp4" else None
        if init is not None and not (plan.tmp_dir / init).is_file():
            raise ConditioningError(f"{spec.name}: ffmpeg wrote no fMP4 init segment")
        (plan.tmp_dir / "segments.m3u8").unlink(missing_ok=True)  # the HLS muxer's own list
        final = base / spec.name
        if final.exists():  # a stale, unmarked attempt: replace it
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{spec.name}-", dir=base))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.chmod(plan.tmp_dir, 0o755)
        os.replace(plan.tmp_dir, final)
        seg = spec.exact_segment_duration
        duration = Fraction(plan.frames) / spec.fps
        write_json_atomic(final / MARKER, {
            "version": MARKER_VERSION,
            "key": key,
            "creative": creative,
            "spec": spec.to_json(),
            "duration": str(duration),
            "segments": [[n, str(seg)] for n in expected],
            "init": init,
            "created": time.time(),
        })
        return ConditionedRendition(spec, tuple(ConditionedSegment(final / n, seg)
                                                for n in expected), duration,
                                    None if init is None else final / init)


def _creative_duration(info: dict[str, Any], src: str) -> Fraction:
    v = _stream(info, "video")
    if v is None:
        raise ConditioningError(f"{src}: no video stream")
    for text in (v.get("duration"), info.get("format", {}).get("duration")):
        try:
            d = Fraction(str(text))
        except (ValueError, ZeroDivisionError):
            continue
        if d > 0:
            return d
    raise ConditioningError(f"{src}: unknown duration")


_default: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Conditioner] = (
    weakref.WeakKeyDictionary())


def default_conditioner() -> Conditioner:
    """The running loop's shared :class:`Conditioner` (2 concurrent ffmpeg processes)."""
    loop = asyncio.get_running_loop()
    c = _default.get(loop)
    if c is None:
        c = _default[loop] = Conditioner()
    return c


async def condition(
    creative: str | os.PathLike[str], specs: list[RenditionSpec],
    out_dir: str | os.PathLike[str], *, key: str,
    pad_source: str | os.PathLike[str] | None = None,
    declared: DeclaredMedia | None = None, channel: str = "",
) -> ConditionedCreative:
    """Condition ``creative`` to every spec under ``out_dir/<key>/`` (idempotent).

    See the module docstring. Raises :class:`ConditioningError` on failure.
    """
    return await default_conditioner().condition(
        creative, specs, out_dir, key=key, pad_source=pad_source, declared=declared,
        channel=channel)
