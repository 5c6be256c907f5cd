"""manifests.mpegts: the video PTS a segment starts at, from its PAT, PMT and PES headers.

Streams are built here packet by packet (ISO/IEC 13818-1 tables 2-2, 2-30, 2-33,
2-21); the fixture media's real segments are checked against ffprobe.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from manifests.mpegts import PACKET_SIZE, PTS_WRAP, MpegTsError, video_start_pts
from manifests.scte35 import crc32_mpeg2

PMT_PID, VIDEO_PID, AUDIO_PID = 0x1000, 0x100, 0x101


def _packet(pid: int, payload: bytes, *, start: bool, adaptation: int = 0) -> bytes:
    """One transport packet; ``adaptation`` bytes of adaptation field (stuffing) first,
    and stuffing after the payload to fill 188 bytes."""
    header = bytes([0x47, (0x40 if start else 0) | pid >> 8, pid & 0xFF])
    room = PACKET_SIZE - 4
    if adaptation or len(payload) < room:
        length = max(adaptation, room - len(payload) - 1)
        field = bytes([length]) + (bytes([0x00]) + b"\xff" * (length - 1) if length else b"")
        return header + bytes([0x30]) + field + payload[:room - len(field)]
    return header + bytes([0x10]) + payload[:room]


def _psi(table_id: int, body: bytes) -> bytes:
    section = bytes([table_id, 0xB0 | (len(body) + 4) >> 8, (len(body) + 4) & 0xFF]) + body
    return b"\x00" + section + crc32_mpeg2(section).to_bytes(4, "big")  # pointer_field 0


def _pes_header(pts: int, stream_id: int = 0xE0) -> bytes:
    p = pts % PTS_WRAP
    field = bytes([0x21 | (p >> 29) & 0x0E, (p >> 22) & 0xFF, 0x01 | (p >> 14) & 0xFE,
                   (p >> 7) & 0xFF, 0x01 | (p << 1) & 0xFE])
    return b"\x00\x00\x01" + bytes([stream_id, 0, 0, 0x80, 0x80, 5]) + field


def ts_stream(video_pts: list[int], *, stream_type: int = 0x1B,
              audio_pts: tuple[int, ...] = ()) -> bytes:
    """PAT, PMT (a video stream of ``stream_type`` and an AAC one), then a PES per PTS."""
    pat = _psi(0x00, b"\x00\x01\xc1\x00\x00" + b"\x00\x01" + bytes([0xE0 | PMT_PID >> 8,
                                                                      PMT_PID & 0xFF]))
    streams = bytes([stream_type, 0xE0 | VIDEO_PID >> 8, VIDEO_PID & 0xFF, 0xF0, 0x00,
                     0x0F, 0xE0 | AUDIO_PID >> 8, AUDIO_PID & 0xFF, 0xF0, 0x00])
    pmt = _psi(0x02, b"\x00\x01\xc1\x00\x00" + bytes([0xE0 | VIDEO_PID >> 8, VIDEO_PID & 0xFF,
                                                      0xF0, 0x00]) + streams)
    out = [_packet(0, pat, start=True), _packet(PMT_PID, pmt, start=True)]
    for pts in audio_pts:
        out.append(_packet(AUDIO_PID, _pes_header(pts, 0xC0) + b"\xff" * 8, start=True))
    for pts in video_pts:
        out.append(_packet(VIDEO_PID, _pes_header(pts) + b"\x00\x00\x00\x01\x09", start=True))
        out.append(_packet(VIDEO_PID, b"\x00" * 184, start=False))  # a continuation
    return b"".join(out)


def test_earliest_video_pts_in_presentation_order() -> None:
    # decode order I P B B: the B frames are presented before the P
    assert video_start_pts(ts_stream([132_000, 141_000, 135_000, 138_000])) == 132_000
    # an open GOP: a leading B frame before the I in presentation order
    assert video_start_pts(ts_stream([132_000, 126_000, 129_000])) == 126_000


def test_audio_and_other_streams_are_ignored() -> None:
    data = ts_stream([900_000], audio_pts=(800_000,))
    assert video_start_pts(data) == 900_000
    assert video_start_pts(ts_stream([5], stream_type=0x24)) == 5  # HEVC
    with pytest.raises(MpegTsError, match="no video PES"):
        video_start_pts(ts_stream([900_000], stream_type=0x06))  # private data only


def test_pts_wrap_around() -> None:
    before = PTS_WRAP - 3000
    assert video_start_pts(ts_stream([before + 6000 - PTS_WRAP, before, before + 3000])) \
        == before


def test_adaptation_fields_are_skipped() -> None:
    stream = ts_stream([180_000])
    pat, pmt = stream[:PACKET_SIZE], stream[PACKET_SIZE:2 * PACKET_SIZE]
    video = _packet(VIDEO_PID, _pes_header(270_000), start=True, adaptation=40)
    assert video_start_pts(pat + pmt + video) == 270_000


@pytest.mark.parametrize("data, message", [
    (b"", "not an MPEG transport stream"),
    (b"<html>" + b" " * 200, "not an MPEG transport stream"),
    (ts_stream([1])[:PACKET_SIZE] + b"\x00" * PACKET_SIZE, "lost sync at byte 188"),
    (ts_stream([1])[:2 * PACKET_SIZE], "no video PES"),  # PAT and PMT only
])
def test_not_a_stream_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(MpegTsError, match=message):
        video_start_pts(data)


def test_fixture_media_against_ffprobe(media: Any) -> None:
    """ffprobe (the oracle) reports each segment's video start_time; ours agrees."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        pytest.skip("ffprobe not installed (scripts/setup --test installs ffmpeg)")
    rendition = media.renditions[0]
    for path in (rendition.segments[0], rendition.segments[7], rendition.segments[-1]):
        probe = json.loads(subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries",
             "stream=start_pts", "-of", "json", str(path)],
            check=True, capture_output=True, text=True).stdout)
        assert video_start_pts(path.read_bytes()) == int(probe["streams"][0]["start_pts"])
