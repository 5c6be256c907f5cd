"""Breaks on the shared timeline, merged from every reload and rendition.

A :class:`Break` is placed by PDT, not by media sequence number, so renditions
with different segment grids (video, demuxed audio, subtitles) and stitcher
instances fetching at different moments all agree on it. Observations from
:func:`manifests.markers.observe` are merged into the known breaks by
:func:`update_breaks`, a pure function whose result the service keeps in its
shared store.

Defined behaviour for feeds that break the rules:

* CUE-OUT without a duration and without CUE-IN: ends after ``max_duration``.
* CUE-OUT without CUE-IN: ends at the planned duration.
* CUE-IN early: the break ends there (slots already published stay as they were).
* CUE-IN late (after the planned duration): ignored, the break already ended.
* Join mid-break from CUE-OUT-CONT only: start = first CONT's PDT - ElapsedTime,
  so the remaining time is Duration - ElapsedTime.
* The same OUT repeated (same event id, or same start): one break.
* An OUT while another break is open: the open one wins; the overlap is counted
  in ``BreakUpdate.ignored``.
* Cancel before the break starts: the break is dropped; after it started: it
  ends at the cancel's position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction

from manifests.markers import Observation, SignalKind
from manifests.timing import add_seconds, seconds_between

#: How far apart two observations of the same boundary may be (PDT rounding,
#: renditions cut a frame apart).
SAME_BOUNDARY = timedelta(milliseconds=500)
#: A slot's start may precede a break start by PDT rounding only.
EPSILON = timedelta(milliseconds=20)


@dataclass(frozen=True, slots=True)
class BreakPolicy:
    #: A break signalled with no duration and never closed ends after this.
    max_duration: Fraction = Fraction(120)


@dataclass(frozen=True, slots=True)
class Break:
    """One ad break (avail) on the channel's timeline."""

    id: str
    start: datetime
    planned_duration: Fraction | None
    end: datetime | None = None
    cancelled: bool = False
    joined: bool = False
    dialect: str = ""
    event_id: str | None = None
    segmentation_type_id: int | None = None
    upid: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def effective_end(self, policy: BreakPolicy = BreakPolicy()) -> datetime:
        planned = self.planned_duration if self.planned_duration is not None else policy.max_duration
        limit = add_seconds(self.start, planned)
        return limit if self.end is None else min(self.end, limit)

    @property
    def duration_hint(self) -> Fraction | None:
        """The duration to plan ads for: planned, else what CUE-IN already told."""
        if self.planned_duration is not None:
            return self.planned_duration
        if self.end is not None:
            return seconds_between(self.start, self.end)
        return None

    def covers(self, pdt: datetime, duration: Fraction,
               policy: BreakPolicy = BreakPolicy()) -> bool:
        """Is the slot starting at ``pdt`` replaced by this break?

        A slot is inside when it starts at or after the break start and its
        midpoint is before the end: the break ends at the nearest boundary.
        """
        if self.cancelled:
            return False
        if pdt + EPSILON < self.start:
            return False
        return add_seconds(pdt, duration / 2) < self.effective_end(policy)

    def offset(self, pdt: datetime) -> Fraction:
        return seconds_between(self.start, pdt)


@dataclass
class BreakUpdate:
    breaks: tuple[Break, ...]
    new: list[Break] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def break_id(event_id: str | None, start: datetime) -> str:
    """Deterministic on every instance: the event id (if any) and the start PDT in ms."""
    ms = int(start.timestamp() * 1000)
    return f"{event_id}-{ms}" if event_id else f"b{ms}"


def update_breaks(known: tuple[Break, ...], observations: list[Observation],
                  policy: BreakPolicy = BreakPolicy()) -> BreakUpdate:
    """Merge one playlist's observations into the known breaks (pure)."""
    breaks = list(known)
    result = BreakUpdate(breaks=())

    def open_at(at: datetime) -> int | None:
        for i, b in enumerate(breaks):
            if not b.cancelled and b.start - SAME_BOUNDARY <= at < b.effective_end(policy):
                return i
        return None

    def by_event(event_id: str | None, at: datetime) -> int | None:
        if event_id is None:
            return None
        for i, b in enumerate(breaks):
            if b.event_id == event_id and b.start - SAME_BOUNDARY <= at <= (
                    b.effective_end(policy) + SAME_BOUNDARY):
                return i
        return None

    for obs in observations:
        if obs.kind is SignalKind.OUT:
            i = open_at(obs.at)
            if i is None:
                i = by_event(obs.event_id, obs.at)
            if i is not None:
                b = breaks[i]
                if abs(b.start - obs.at) <= SAME_BOUNDARY or b.event_id == obs.event_id:
                    if b.planned_duration is None and obs.planned_duration is not None:
                        breaks[i] = replace(b, planned_duration=obs.planned_duration)
                else:
                    result.ignored.append(
                        f"OUT {obs.event_id or ''} at {obs.at.isoformat()} overlaps break {b.id}")
                continue
            new = Break(id=break_id(obs.event_id, obs.at), start=obs.at,
                        planned_duration=obs.planned_duration, dialect=obs.dialect,
                        event_id=obs.event_id, segmentation_type_id=obs.segmentation_type_id,
                        upid=obs.upid, params=obs.params)
            breaks.append(new)
            result.new.append(new)
        elif obs.kind is SignalKind.CONT:
            if open_at(obs.at) is not None:
                continue
            start = obs.at if obs.elapsed is None else add_seconds(obs.at, -obs.elapsed)
            if obs.planned_duration is not None and obs.elapsed is not None and (
                    obs.elapsed >= obs.planned_duration):
                continue  # a CONT claiming the break is already over
            new = Break(id=break_id(obs.event_id, start), start=start,
                        planned_duration=obs.planned_duration, joined=True,
                        dialect=obs.dialect, event_id=obs.event_id)
            breaks.append(new)
            result.new.append(new)
        elif obs.kind is SignalKind.IN:
            i = by_event(obs.event_id, obs.at)
            if i is None:
                for j, b in enumerate(breaks):
                    if (not b.cancelled and b.end is None and b.start < obs.at
                            and obs.at <= b.effective_end(policy) + SAME_BOUNDARY):
                        i = j
            if i is None:
                continue  # a stray IN, or one for a break that already ended
            b = breaks[i]
            if b.end is None and obs.at > b.start:
                breaks[i] = replace(b, end=obs.at)
        elif obs.kind is SignalKind.CANCEL:
            i = by_event(obs.event_id, obs.at)
            if i is None:
                continue
            b = breaks[i]
            if obs.at <= b.start + EPSILON:
                breaks[i] = replace(b, cancelled=True)
            elif b.end is None:
                breaks[i] = replace(b, end=obs.at)
    breaks.sort(key=lambda b: b.start)
    result.breaks = tuple(breaks)
    return result


def break_covering(breaks: tuple[Break, ...], pdt: datetime, duration: Fraction,
                   policy: BreakPolicy = BreakPolicy()) -> Break | None:
    for b in breaks:
        if b.covers(pdt, duration, policy):
            return b
    return None


def prune(breaks: tuple[Break, ...], before: datetime,
          policy: BreakPolicy = BreakPolicy()) -> tuple[Break, ...]:
    """Drop breaks that ended before ``before`` (they can no longer be in a window)."""
    return tuple(b for b in breaks if b.effective_end(policy) >= before)
