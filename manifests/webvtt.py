"""WebVTT segments and their X-TIMESTAMP-MAP (pure).

RFC 8216bis 3.1.4: a WebVTT segment's cue times are mapped onto the media
timeline by ``X-TIMESTAMP-MAP=MPEGTS:<90 kHz PTS>,LOCAL:<cue time>`` in its
header; "If the header does not contain this tag, the timestamp value of
00:00:00.000 ... is assumed" to be MPEG-TS 0. After an SSAI discontinuity the
video PTS restart (an ad's PTS, then the content's again), so a segment with no
map, or one written for another span, puts its cues at the wrong media time:
subtitles vanish or drift after the break (B22, hls.js#7850).

:func:`check_timestamp_map` compares a segment's map against the video PTS of its
span and gives back the corrected body. The caller supplies the PTS (90 kHz,
mod 2^33) of the video at the segment's start: a playlist carries no PTS, so it
comes from the media (a probe of the span's first video segment) plus the
segment's offset into the span (:func:`pts_at`).

:func:`repair_timestamp_map` decides whether to rewrite it. A map that differs
from the segment's start is not wrong by itself: a constant map with cue times
counted from the stream's start is valid HLS. So a map that is there is
replaced only when it puts the cues outside the segment and the span's map puts
them inside it; a missing one is written in when the span's map fits.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from fractions import Fraction

from manifests.errors import ManifestError

#: 90 kHz clock of MPEG-TS timestamps; PTS wrap at 2^33.
TICKS = 90_000
PTS_WRAP = 1 << 33
HEADER = "WEBVTT"
TIMESTAMP_MAP = "X-TIMESTAMP-MAP"

_TIME = r"(?:(\d+):)?([0-5]\d):([0-5]\d)\.(\d{3})"
_TIME_RE = re.compile(_TIME)
_CUE_TIMING = re.compile(rf"^\s*({_TIME})\s+-->\s+({_TIME})")
_MAP_FIELDS = re.compile(r"(MPEGTS|LOCAL):([^,\s]+)")


class WebVttError(ManifestError):
    """A body that is not a WebVTT file (no ``WEBVTT`` signature)."""


class MapStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    INCORRECT = "incorrect"


@dataclass(frozen=True, slots=True)
class Cue:
    """A cue's timing on the media timeline, seconds (PTS / 90 kHz)."""

    start: Fraction
    end: Fraction


@dataclass(frozen=True, slots=True)
class MapCheck:
    status: MapStatus
    #: MPEG-TS ticks that LOCAL 0 maps to, as written (None: no map).
    found: int | None
    expected: int
    #: The body with the expected map (the input itself when it was right).
    corrected: str
    #: Cues of ``corrected`` on the media timeline.
    cues: tuple[Cue, ...]


def pts_at(span_start_pts: int, offset: Fraction) -> int:
    """The video PTS ``offset`` seconds into a span that starts at ``span_start_pts``."""
    return (span_start_pts + round(offset * TICKS)) % PTS_WRAP


def parse_time(text: str) -> Fraction:
    """A WebVTT timestamp (``hh:mm:ss.ttt`` or ``mm:ss.ttt``) in seconds."""
    m = _TIME_RE.fullmatch(text.strip())
    if m is None:
        raise WebVttError(f"not a WebVTT timestamp: {text!r}")
    hours, minutes, seconds, millis = m.groups()
    return (Fraction(int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds))
            + Fraction(int(millis), 1000))


def timestamp_map(body: str) -> int | None:
    """MPEG-TS ticks that cue time 0 maps to per the header's X-TIMESTAMP-MAP
    (``MPEGTS - LOCAL``, mod 2^33), or None when the header has none."""
    for line in _header(body):
        if line.startswith(TIMESTAMP_MAP + "="):
            fields = dict(_MAP_FIELDS.findall(line[len(TIMESTAMP_MAP) + 1:]))
            try:
                mpegts = int(fields.get("MPEGTS", "0"))
                local = parse_time(fields.get("LOCAL", "00:00:00.000"))
            except ValueError as exc:
                raise WebVttError(f"malformed {TIMESTAMP_MAP}: {line!r}") from exc
            return (mpegts - round(local * TICKS)) % PTS_WRAP
    return None


def cues(body: str) -> tuple[Cue, ...]:
    """Every cue's timing on the media timeline (the map applied; none: MPEG-TS 0)."""
    base = Fraction(timestamp_map(body) or 0, TICKS)
    out = []
    for line in _lines(body):
        m = _CUE_TIMING.match(line)
        if m is not None:
            out.append(Cue(base + parse_time(m.group(1)), base + parse_time(m.group(6))))
    return tuple(out)


def check_timestamp_map(body: str, segment_pts: int) -> MapCheck:
    """Is ``body``'s map consistent with the video, whose PTS at this segment's start
    is ``segment_pts``? The corrected body maps LOCAL 00:00:00.000 to it (cue times
    are relative to the segment's start, as packagers write them)."""
    expected = segment_pts % PTS_WRAP
    found = timestamp_map(body)
    if found == expected:
        return MapCheck(MapStatus.OK, found, expected, body, cues(body))
    corrected = with_timestamp_map(body, expected)
    status = MapStatus.MISSING if found is None else MapStatus.INCORRECT
    return MapCheck(status, found, expected, corrected, cues(corrected))


class RepairOutcome(enum.Enum):
    #: The map names the segment's start: served as it came.
    OK = "ok"
    #: Another valid map form (cues counted from elsewhere) that lands the cues
    #: inside the segment: served as it came.
    EQUIVALENT = "equivalent"
    #: Missing or written for another span: the span's map written in.
    REPAIRED = "repaired"
    #: Cues outside the segment under either map: an unknown scheme, left alone.
    KEPT = "kept"


@dataclass(frozen=True, slots=True)
class MapRepair:
    outcome: RepairOutcome
    #: What to serve: the corrected body when REPAIRED, else the input itself.
    body: str
    check: MapCheck


#: How far outside its segment a cue may reach and still count as the segment's
#: (a cue carried over a segment boundary overlaps both; rounding of the map).
CUE_SLACK = Fraction(1, 2)


def repair_timestamp_map(body: str, segment_pts: int, duration: Fraction) -> MapRepair:
    """The body to serve for a WebVTT segment of ``duration`` seconds whose video
    starts at ``segment_pts`` (B22: no map after a discontinuity, or the map of
    another span).

    A missing map is written in whenever the span's map puts the cues inside the
    segment (packagers count cue times from the segment's start). A map that is
    there but names another PTS is kept when its cues land inside the segment
    (cue times counted from elsewhere, valid HLS) and replaced only when they do
    not and the span's map lands them inside. A segment with no cues gets the
    span's map when it has none (nothing can land wrong, and every segment of the
    span then names it)."""
    check = check_timestamp_map(body, segment_pts)
    if check.status is MapStatus.OK:
        return MapRepair(RepairOutcome.OK, body, check)
    found = cues(body)
    missing = check.status is MapStatus.MISSING
    if not found:
        return MapRepair(RepairOutcome.REPAIRED if missing else RepairOutcome.EQUIVALENT,
                         check.corrected if missing else body, check)
    if not missing and _inside(found, segment_pts, duration):
        return MapRepair(RepairOutcome.EQUIVALENT, body, check)
    if _inside(check.cues, segment_pts, duration):
        return MapRepair(RepairOutcome.REPAIRED, check.corrected, check)
    if _inside(found, segment_pts, duration):  # no map, cue times from MPEG-TS 0
        return MapRepair(RepairOutcome.EQUIVALENT, body, check)
    return MapRepair(RepairOutcome.KEPT, body, check)


def _inside(timed: tuple[Cue, ...], segment_pts: int, duration: Fraction) -> bool:
    """Does every cue overlap the segment (PTS compared mod 2^33)?"""
    start = Fraction(segment_pts, TICKS)
    wrap = Fraction(PTS_WRAP, TICKS)
    for cue in timed:
        offset = (cue.start - start) % wrap
        if offset > wrap / 2:
            offset -= wrap
        length = cue.end - cue.start
        if offset + length < -CUE_SLACK or offset > duration + CUE_SLACK:
            return False
    return True


def with_timestamp_map(body: str, mpegts: int) -> str:
    """``body`` with its header's map (if any) replaced by
    ``X-TIMESTAMP-MAP=MPEGTS:<mpegts>,LOCAL:00:00:00.000`` right after ``WEBVTT``."""
    newline = "\r\n" if "\r\n" in body else "\n"
    lines = body.split(newline)
    _signature(lines)
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    kept = [line for i, line in enumerate(lines)
            if not (0 < i < end and line.startswith(TIMESTAMP_MAP + "="))]
    kept.insert(1, f"{TIMESTAMP_MAP}=MPEGTS:{mpegts % PTS_WRAP},LOCAL:00:00:00.000")
    return newline.join(kept)


def _lines(body: str) -> list[str]:
    return body.replace("\r\n", "\n").split("\n")


def _signature(lines: list[str]) -> None:
    first = lines[0].lstrip("\ufeff") if lines else ""
    if not (first == HEADER or first.startswith((HEADER + " ", HEADER + "\t"))):
        raise WebVttError("a WebVTT body starts with the WEBVTT signature")


def _header(body: str) -> list[str]:
    """The header block: the lines after the signature up to the first blank line."""
    lines = _lines(body)
    _signature(lines)
    end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    return lines[1:end]
