"""Where a pod may lie: on the boundaries every grid shares (invariant 5, B05).

Slots map one to one onto ad and slate segments and a segment is never split,
so a break boundary can only be where *every* grid (video, each demuxed audio
and subtitle group) has a segment boundary: otherwise each grid would cut at
its own next boundary and the renditions would disagree on the content time
before and after the break (Eyevinn/hls-splice#55: video spliced at 12 s,
audio at 15 s).

A grid is modelled as its cadence and one of its boundaries (``GridTiming``).
The instants that are boundaries in every grid repeat with the least common
multiple of the cadences (``CommonGrid.period``) from one such instant
(``CommonGrid.anchor``); there may be none (2 s grids offset by 1 s).

:func:`pod_window` places a break's pod: where every grid has a boundary at the
cue and at the end (today's aligned ladders: 2 s video, 6 s subtitles, cue on
a 6 s boundary) it is exactly the break, counted from its start in whole
layout units. Otherwise the start is rounded up and the end rounded down to
common boundaries, and a break with no common span of at least one period
inside it gets no window (:class:`NoCommonSpan`): the service leaves it to the
content underneath in every rendition, logs and counts it. Slots of the break
outside the window show the content underneath, the same span in every grid.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from manifests.breaks import PLANNED_SLACK, Break
from manifests.errors import NoCommonSpan
from manifests.playlist import MediaPlaylist
from manifests.pod import EPS
from manifests.timing import add_seconds, seconds_between

#: Common boundaries further apart than this are no use for a break (and the
#: search for the first one stays short): 4 s against 4.004 s grids, say.
MAX_PERIOD = Fraction(3600)
_TOLERANCE = timedelta(milliseconds=20)  # pod.EPS

__all__ = ["MAX_PERIOD", "CommonGrid", "GridTiming", "NoCommonSpan", "PodWindow", "common_grid",
           "grid_timing", "pod_window"]


@dataclass(frozen=True, slots=True)
class GridTiming:
    """One grid's segment cadence and an instant that is one of its boundaries."""

    cadence: Fraction
    anchor: datetime

    def on_boundary(self, at: datetime) -> bool:
        r = seconds_between(self.anchor, at) % self.cadence
        return r <= EPS or self.cadence - r <= EPS

    def ceil(self, at: datetime) -> datetime:
        """The first boundary at or after ``at`` (PDT rounding tolerated)."""
        k = math.ceil((seconds_between(self.anchor, at) - EPS) / self.cadence)
        return add_seconds(self.anchor, k * self.cadence)


@dataclass(frozen=True, slots=True)
class CommonGrid:
    grids: tuple[GridTiming, ...]
    #: The least common multiple of the cadences: common boundaries repeat with it.
    period: Fraction
    #: One instant that is a boundary in every grid; None when there is none.
    anchor: datetime | None

    def on_boundary(self, at: datetime) -> bool:
        return all(g.on_boundary(at) for g in self.grids)

    def ceil(self, at: datetime) -> datetime | None:
        """The first common boundary at or after ``at``."""
        if self.anchor is None:
            return None
        k = math.ceil((seconds_between(self.anchor, at) - EPS) / self.period)
        return add_seconds(self.anchor, k * self.period)

    def floor(self, at: datetime) -> datetime | None:
        """The last common boundary at or before ``at``."""
        if self.anchor is None:
            return None
        k = math.floor((seconds_between(self.anchor, at) + EPS) / self.period)
        return add_seconds(self.anchor, k * self.period)


def _lcm(a: Fraction, b: Fraction) -> Fraction:
    """Least common multiple of two positive rationals (lcm of the numerators
    over gcd of the denominators, both in lowest terms)."""
    return Fraction(math.lcm(a.numerator, b.numerator), math.gcd(a.denominator, b.denominator))


def common_grid(grids: Sequence[GridTiming]) -> CommonGrid:
    """The boundaries shared by every grid in ``grids`` (at least one)."""
    if not grids:
        raise ValueError("common_grid needs at least one grid")
    period = grids[0].cadence
    for g in grids[1:]:
        period = _lcm(period, g.cadence)
    if period > MAX_PERIOD:
        return CommonGrid(tuple(grids), period, None)
    # Every common boundary is one of the coarsest grid's: try those in one period.
    ref = max(grids, key=lambda g: g.cadence)
    for k in range(int(period / ref.cadence)):
        at = add_seconds(ref.anchor, k * ref.cadence)
        if all(g.on_boundary(at) for g in grids):
            return CommonGrid(tuple(grids), period, at)
    return CommonGrid(tuple(grids), period, None)


def grid_timing(playlist: MediaPlaylist) -> GridTiming | None:
    """A playlist's cadence (its most frequent EXTINF) and the start of its last
    segment of that duration as the anchor; None without PDTs or segments."""
    timed = [seg for seg in playlist.segments if seg.pdt is not None]
    if not timed:
        return None
    cadence = Counter(seg.duration for seg in timed).most_common(1)[0][0]
    if cadence <= 0:
        return None
    anchor = next(seg.pdt for seg in reversed(timed) if seg.duration == cadence)
    assert anchor is not None
    return GridTiming(cadence, anchor)


@dataclass(frozen=True, slots=True)
class PodWindow:
    """Where a break's pod goes: ``start`` seconds after the break's start,
    ``available`` seconds long, laid out in whole multiples of ``unit``."""

    start: Fraction
    available: Fraction
    unit: Fraction
    #: True when the cue and the end are boundaries in every grid (nothing moved).
    aligned: bool


def pod_window(brk: Break, offset: Fraction, common: CommonGrid, *,
               duration: Fraction, unit: Fraction) -> PodWindow:
    """The pod window of ``brk`` for a cohort whose first unpublished slot is
    ``offset`` seconds into it, the break lasting ``duration`` seconds from its
    start (its duration hint, or the channel's maximum).

    ``unit`` is the layout unit of an aligned ladder (the coarsest cadence);
    where every grid has a boundary at the (rounded) start and at the end, the
    window is exactly what that unit gives, so aligned output does not change.
    Raises :class:`NoCommonSpan` when no common span of one period fits.
    """
    rel = -((-offset + EPS) // unit) * unit  # ceil in whole units, PDT rounding tolerated
    start_at = add_seconds(brk.start, rel)
    # Where each grid resumes content by the break's own rule (manifests.breaks: the
    # first boundary at or after the end; a planned end gets PLANNED_SLACK).
    known_end = brk.end is not None and (brk.end_declared or brk.planned_duration is None)
    bound = add_seconds(brk.start, duration)
    if not known_end:
        bound -= PLANNED_SLACK
    resume = [g.ceil(bound) for g in common.grids]
    # Aligned at the cue: the break starts on a common boundary and the unit is the
    # common period, so every whole unit from the start is a common boundary too.
    start_ok = common.on_boundary(brk.start) and abs(unit - common.period) <= EPS
    end_ok = all(abs(r - resume[0]) <= _TOLERANCE for r in resume)
    if start_ok and end_ok:
        return PodWindow(rel, duration - rel, unit, True)
    first = start_at if start_ok else common.ceil(add_seconds(brk.start, offset))
    # No grid may replace past its own resume point: the earliest one, rounded down.
    last = common.floor(min(resume))
    if first is None or last is None:
        raise NoCommonSpan(f"break {brk.id}: the grids share no boundary")
    span = seconds_between(first, last)
    if span < common.period - EPS:
        raise NoCommonSpan(
            f"break {brk.id}: no span between boundaries common to every grid "
            f"(every {common.period} s) inside it")
    return PodWindow(seconds_between(brk.start, first), span, common.period, False)
