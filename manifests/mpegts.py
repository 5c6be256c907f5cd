"""The presentation time an MPEG-TS segment starts at (pure: bytes in, ticks out).

A WebVTT segment's ``X-TIMESTAMP-MAP`` is only right against the video PTS of
its span (RFC 8216bis 3.1.4, :mod:`manifests.webvtt`), and no playlist carries
PTS: they come from the media. This reads them the way a demuxer does, from
ISO/IEC 13818-1: the PAT (table 2-30) names the PMT, the PMT (table 2-33) names
the elementary streams and their ``stream_type`` (table 2-34), and every PES
packet that starts in a transport packet (``payload_unit_start_indicator``)
carries its PTS in its header (table 2-21). Only what that needs is parsed.
"""

from __future__ import annotations

from collections.abc import Iterator

from manifests.errors import ManifestError

PACKET_SIZE = 188
SYNC_BYTE = 0x47
PAT_PID = 0x0000
PTS_WRAP = 1 << 33
#: Table 2-34 stream_type values of video: MPEG-2, MPEG-4 part 2, H.264, H.265.
VIDEO_STREAM_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x24})


class MpegTsError(ManifestError):
    """Bytes that are not an MPEG transport stream, or one with no video PTS."""


def _packets(data: bytes) -> Iterator[tuple[int, bool, bytes]]:
    """(PID, payload_unit_start_indicator, payload) of every packet with a payload."""
    if len(data) < PACKET_SIZE or data[0] != SYNC_BYTE:
        raise MpegTsError("not an MPEG transport stream (no 0x47 sync byte at 0)")
    for at in range(0, len(data) - PACKET_SIZE + 1, PACKET_SIZE):
        packet = data[at:at + PACKET_SIZE]
        if packet[0] != SYNC_BYTE:
            raise MpegTsError(f"lost sync at byte {at}")
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        control = (packet[3] >> 4) & 0x3  # adaptation_field_control
        start = 4
        if control & 0x2:
            start += 1 + packet[4]
        if control & 0x1 and start < PACKET_SIZE:
            yield pid, bool(packet[1] & 0x40), packet[start:]


def _section(payload: bytes) -> bytes:
    """A PSI section starting in this payload (after its pointer_field)."""
    begin = 1 + payload[0]
    section = payload[begin:]
    if len(section) < 3:
        raise MpegTsError("truncated PSI section")
    length = ((section[1] & 0x0F) << 8) | section[2]
    return section[:3 + length]


def _pmt_entries(section: bytes) -> set[int]:
    """PIDs of the program_map_section's video streams (table 2-33)."""
    info_length = ((section[10] & 0x0F) << 8) | section[11]
    i, end = 12 + info_length, len(section) - 4  # the CRC_32 closes the section
    video: set[int] = set()
    while i + 5 <= end:
        stream_type = section[i]
        pid = ((section[i + 1] & 0x1F) << 8) | section[i + 2]
        es_length = ((section[i + 3] & 0x0F) << 8) | section[i + 4]
        if stream_type in VIDEO_STREAM_TYPES:
            video.add(pid)
        i += 5 + es_length
    return video


def _pes_pts(payload: bytes) -> int | None:
    """The PTS of a PES packet header (table 2-21), None when it has none."""
    if len(payload) < 14 or payload[:3] != b"\x00\x00\x01" or not payload[7] & 0x80:
        return None
    b = payload[9:14]
    return (((b[0] >> 1) & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15
            | b[3] << 7 | b[4] >> 1)


def video_start_pts(data: bytes) -> int:
    """The earliest video PTS of a segment (90 kHz ticks, mod 2^33): the
    presentation time of its first frame, which EXT-X-PROGRAM-DATE-TIME dates
    and a WebVTT ``X-TIMESTAMP-MAP`` of the same span must name.

    The earliest, not the first PES: with B-frames the decode order differs from
    the presentation order. Wrap-around is taken into account (a PTS just after
    2^33 is later than one just before it).
    """
    pmt: int | None = None
    video: set[int] | None = None
    first: int | None = None
    earliest = 0  # offset from ``first``, mod 2^33, signed
    for pid, unit_start, payload in _packets(data):
        if not unit_start:
            continue
        if pid == PAT_PID and pmt is None:
            section = _section(payload)
            # program loop: program_number (16), reserved (3) + PID (13); skip NIT (0)
            for i in range(8, len(section) - 4, 4):
                if (section[i] << 8) | section[i + 1]:
                    pmt = ((section[i + 2] & 0x1F) << 8) | section[i + 3]
                    break
        elif pid == pmt and video is None:
            video = _pmt_entries(_section(payload))
        elif video is not None and pid in video:
            pts = _pes_pts(payload)
            if pts is None:
                continue
            if first is None:
                first = pts
            else:
                delta = (pts - first) % PTS_WRAP
                if delta > PTS_WRAP // 2:
                    delta -= PTS_WRAP
                earliest = min(earliest, delta)
    if first is None:
        raise MpegTsError("no video PES packet with a PTS (is there a PAT, a PMT "
                          "and a video stream?)")
    return (first + earliest) % PTS_WRAP
