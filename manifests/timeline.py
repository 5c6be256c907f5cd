"""The shared timeline for origins that send no EXT-X-PROGRAM-DATE-TIME.

Breaks are placed on PDT (:mod:`manifests.breaks`), so every rendition and
every stitcher instance agrees on them. An origin without PDT gets one
synthesised from an *anchor*: one media sequence number and the PDT it was
given, kept in the shared store so that every instance, and every later
reload, derives the same times. From the anchor the other segments' PDTs
follow by EXTINF sums (RFC 8216bis 4.4.4.6: a segment's PDT is the previous
one's plus its duration).

Only the model changes: no line is added, so ``render`` of the result is the
origin's text byte for byte (the splice writes PDT lines where it needs them).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from fractions import Fraction

from manifests.errors import ManifestError
from manifests.playlist import MediaPlaylist, Segment
from manifests.timing import add_seconds


class TimelineError(ManifestError):
    """The anchor cannot place this window (its MSN is neither in it nor at its end)."""


def with_pdt(playlist: MediaPlaylist, anchor_msn: int, anchor_pdt: datetime) -> MediaPlaylist:
    """``playlist`` with a PDT on every segment.

    Segments that already have one (explicit, or derived by the parser from an
    earlier explicit one) keep it; the others are filled forwards from the
    previous segment's end and backwards from the next segment's start. Only
    when the playlist has no PDT at all is the anchor used: ``anchor_msn`` is
    a segment of this window (or ``last_msn + 1``, the window's end) and
    ``anchor_pdt`` the time it starts at.
    """
    segments = playlist.segments
    if not segments or all(s.pdt is not None for s in segments):
        return playlist
    times: list[datetime | None] = [s.pdt for s in segments]
    if all(t is None for t in times):
        i = anchor_msn - segments[0].msn
        if i == len(segments):
            times[-1] = add_seconds(anchor_pdt, -segments[-1].duration)
        elif 0 <= i < len(segments):
            times[i] = anchor_pdt
        else:
            raise TimelineError(
                f"anchor MSN {anchor_msn} is outside the window "
                f"{segments[0].msn}..{playlist.last_msn + 1}")
    for i in range(1, len(times)):
        prev = times[i - 1]
        if times[i] is None and prev is not None:
            times[i] = add_seconds(prev, segments[i - 1].duration)
    for i in range(len(times) - 2, -1, -1):
        nxt = times[i + 1]
        if times[i] is None and nxt is not None:
            times[i] = add_seconds(nxt, -segments[i].duration)
    return replace(playlist, segments=tuple(
        s if s.pdt is not None else _timed(s, t) for s, t in zip(segments, times)))


def _timed(seg: Segment, pdt: datetime | None) -> Segment:
    """A copy of ``seg`` at ``pdt`` (segments are never mutated: they may be cached)."""
    return Segment(seg.msn, seg.duration, seg.uri, seg.raw, discontinuity=seg.discontinuity,
                   pdt=pdt, pdt_explicit=False,
                   discontinuity_sequence=seg.discontinuity_sequence, key=seg.key, map=seg.map,
                   gap=seg.gap, special=seg.special, markers=seg.markers, step=seg.step,
                   byterange=seg.byterange, byterange_implicit=seg.byterange_implicit)


def anchor_of(playlist: MediaPlaylist) -> tuple[int, datetime]:
    """The anchor to keep for the next reload: the window's end and its PDT.

    The end of this window is at or after the start of the next one as long as
    reloads come within a window's length, so the next reload can use it.
    """
    last = playlist.segments[-1] if playlist.segments else None
    if last is None or last.pdt is None:
        raise TimelineError("a playlist without timed segments has no anchor")
    return playlist.last_msn + 1, add_seconds(last.pdt, last.duration)


def choose_anchor(anchors: dict[int, datetime], first_msn: int, end_msn: int,
                  target_duration: int) -> tuple[int, datetime, bool]:
    """Pick the anchor to time a window ``[first_msn, end_msn)`` with.

    ``anchors`` are (MSN -> PDT) points recorded by earlier reloads (on any
    instance). One inside the window or at its end times it exactly; with none
    (the window moved on further than a whole window since the last reload),
    the nearest is extrapolated at the target duration per segment, and the
    third value is False so the caller can count the estimate.
    """
    inside = [m for m in anchors if first_msn <= m <= end_msn]
    if inside:
        m = max(inside)
        return m, anchors[m], True
    nearest = min(anchors, key=lambda m: abs(m - first_msn))
    return first_msn, add_seconds(anchors[nearest],
                                  Fraction(target_duration) * (first_msn - nearest)), False
