"""Breaks on the shared timeline, merged from every reload and rendition.

A :class:`Break` is placed by PDT, not by media sequence number, so renditions
with different segment grids (video, demuxed audio, subtitles) and stitcher
instances fetching at different moments all agree on it. Observations from
:func:`manifests.markers.observe` are merged into the known breaks by
:func:`update_breaks`, a pure function whose result the service keeps in its
shared store.

Defined behaviour for feeds that break the rules (each has a test in
``tests/manifests/test_markers.py``):

* Slots are whole segments. A break starts at the first boundary at or after its
  start and content resumes at the first boundary at or after its end (gpac#3906):
  a segment that starts before the splice is never replaced, and one the break
  ends inside is replaced whole. The end is the *event's*: a DATERANGE starting
  inside a segment ends at START-DATE + (PLANNED-)DURATION (``event_start``),
  not at the snapped start + duration.
* A range's own end (a DATERANGE END-DATE, or DURATION on the OUT or on the
  closing tag: RFC 8216bis 4.4.5.1, the actual duration) ends the break there,
  even past the planned duration (``end_declared``) and past the window (it is
  known before the boundary it lands on is listed). A *planned* end (no CUE-IN yet) overshooting a
  boundary by less than ``PLANNED_SLACK`` is that boundary: signalled durations
  are rounded (30 vs 30.03, 59.993 vs 60).
* A break shorter than one segment replaces the one segment it starts on; a
  0-duration break (CUE-OUT:0, PLANNED-DURATION=0) replaces nothing: it is a
  splice point.
* CUE-OUT without a duration and without CUE-IN: ends after ``max_duration``.
* CUE-OUT without CUE-IN: ends at the planned duration.
* CUE-IN early: the break ends there (slots already published stay as they were).
* CUE-IN late (after the planned duration): ignored, the break already ended.
  An IN within ``SAME_BOUNDARY`` of the planned end is the break's real end.
* A CUE-IN with no open break (a window that begins with it, or a stray one)
  does nothing; break state never leaks past a CUE-IN.
* Join mid-break from CUE-OUT-CONT only: start = first CONT's PDT - ElapsedTime,
  so the remaining time is Duration - ElapsedTime; a bare CONT starts the break
  at its own segment with an unknown duration. ``joined`` says the start was
  not seen; ``start_known`` is False when not even the elapsed time was given,
  and such a break is left unpersonalized (the content underneath plays), since
  its slots could not be aligned across renditions.
* The same OUT repeated (same event id, or same start; or the same event id and
  splice PTS, compared modulo 2^33 so a PTS wrap does not split it): one break.
  Dialects filling in each other's fields (a duration, the SCTE-35 event id)
  complete it.
* An OUT while another break is open: the open one wins; the overlap is counted
  in ``BreakUpdate.ignored``. The same holds for a break known ahead (an ad-ops
  break, a DATERANGE listed before its START-DATE) when another break opens
  before it and is still open at its start: it never plays (:func:`overridden`;
  it plays if the other ends first).
* Nested segmentation descriptors (a provider ad 0x30/0x31 inside a placement
  opportunity 0x34/0x35): events inside the open break, neither a new break nor
  its end. A typed end (0x35...) closes only the break with its event id or its
  start type; an untyped CUE-IN closes whatever is open.
* Cancel (splice_event_cancel_indicator) before the break starts: the break is
  dropped; after it started: it ends at the cancel's position.
* Markers in only some renditions: breaks live on PDT, so observations from any
  rendition merge into the same breaks and apply to all of them.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from operator import attrgetter

from manifests.markers import END_OF, Observation, SignalKind
from manifests.timing import PTS_MODULUS, TICKS_PER_SECOND, add_seconds, seconds_between

#: How far apart two observations of the same boundary may be (PDT rounding,
#: renditions cut a frame apart).
SAME_BOUNDARY = timedelta(milliseconds=500)
#: A slot's start may precede a break start by PDT rounding only.
EPSILON = timedelta(milliseconds=20)
#: A planned end this far past a boundary still ends the break at that boundary.
PLANNED_SLACK = timedelta(milliseconds=250)
#: Two cues of one event carry the same splice PTS, give or take this.
SAME_PTS = TICKS_PER_SECOND // 2


@dataclass(frozen=True, slots=True)
class BreakPolicy:
    #: A break signalled with no duration and never closed ends after this.
    max_duration: Fraction = Fraction(120)


#: The default policy, shared (it is immutable).
DEFAULT_BREAK_POLICY = BreakPolicy()


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
    #: The opening cue's splice PTS (33-bit ticks, pts_adjustment applied), if any.
    pts: int | None = None
    #: False when the break was joined from a bare CONT (no elapsed time): its real
    #: start is unknown, so it cannot be laid out the same way in every rendition.
    start_known: bool = True
    #: The signalled start when ``start`` is the boundary it snapped to (a
    #: DATERANGE START-DATE inside a segment): the planned end counts from it.
    event_start: datetime | None = None
    #: ``end`` is the range's own (END-DATE / DURATION): the actual end, which
    #: overrides the planned duration instead of only shortening it.
    end_declared: bool = False
    #: Known ahead of the live edge (a DATERANGE listed before its START-DATE):
    #: ``start`` is the signalled time until a reload places it on its boundary
    #: (the id stays: decisions were made under it).
    ahead: bool = False

    def planned_end(self, policy: BreakPolicy = BreakPolicy()) -> datetime:
        """The event's start + its planned duration (the policy's maximum if none)."""
        planned = self.planned_duration if self.planned_duration is not None else policy.max_duration
        return add_seconds(self.event_start or self.start, planned)

    def effective_end(self, policy: BreakPolicy = BreakPolicy()) -> datetime:
        limit = self.planned_end(policy)
        if self.end is None:
            return limit
        return self.end if self.end_declared else min(self.end, limit)

    @property
    def duration_hint(self) -> Fraction | None:
        """The duration to plan ads for, from the break's first slot: a declared end,
        else the planned end, else what CUE-IN already told."""
        if self.end is not None and (self.end_declared or self.planned_duration is None):
            return seconds_between(self.start, self.end)
        if self.planned_duration is not None:
            return seconds_between(self.start, self.planned_end())
        return None

    def covers(self, pdt: datetime, duration: Fraction,
               policy: BreakPolicy = BreakPolicy()) -> bool:
        """Is the slot starting at ``pdt`` replaced by this break?

        A slot is inside when it starts at or after the break start and before
        its end (gpac#3906: OUT and IN go on the first boundary at or after the
        event). A known end (CUE-IN) is a boundary already; the planned end gets
        ``PLANNED_SLACK`` for rounded durations. ``duration`` is unused: whole
        slots are replaced, whatever their length.
        """
        if self.cancelled or pdt + EPSILON < self.start:
            return False
        return pdt < _slot_bound(self, policy)

    def offset(self, pdt: datetime) -> Fraction:
        return seconds_between(self.start, pdt)


@dataclass(frozen=True)
class IgnoredOut:
    """A CUE-OUT that starts inside a break open there, and so does not play (the
    open one wins). ``id`` is the id it would have had, the same on every
    instance; ``inside`` the break it fell into."""

    id: str
    at: datetime
    event_id: str | None
    dialect: str
    planned_duration: Fraction | None
    inside: str

    def __str__(self) -> str:
        return (f"OUT {self.event_id or self.dialect} at {self.at.isoformat()} "
                f"overlaps break {self.inside}")


@dataclass
class BreakUpdate:
    breaks: tuple[Break, ...]
    new: list[Break] = field(default_factory=list)
    ignored: list[IgnoredOut] = field(default_factory=list)


def break_id(event_id: str | None, start: datetime) -> str:
    """Deterministic on every instance: the event id (if any) and the start PDT in ms."""
    ms = int(start.timestamp() * 1000)
    return f"{event_id}-{ms}" if event_id else f"b{ms}"


class _Merging(list):  # type: ignore[type-arg]
    """The breaks of one merge, remembering the ones put in since :meth:`added`
    was last asked: lets ``open_at`` keep a bound of their ends and answer
    "nothing open" without a scan when an observation comes after every known
    break (a cold merge meets its window's 40 breaks in order: no more O(n^2))."""

    __slots__ = ("_added",)

    def __init__(self, breaks: tuple[Break, ...]) -> None:
        super().__init__(breaks)
        self._added: list[Break] = list(breaks)

    def __setitem__(self, i: int, b: Break) -> None:  # type: ignore[override]
        super().__setitem__(i, b)
        self._added.append(b)

    def append(self, b: Break) -> None:
        super().append(b)
        self._added.append(b)

    def added(self) -> list[Break]:
        added, self._added = self._added, []
        return added


def update_breaks(known: tuple[Break, ...], observations: list[Observation],
                  policy: BreakPolicy = BreakPolicy()) -> BreakUpdate:
    """Merge one playlist's observations into the known breaks (pure)."""
    breaks = _Merging(known)
    result = BreakUpdate(breaks=())
    ends: dict[int, tuple[Break, datetime]] = {}

    def end_of(b: Break) -> datetime:
        """``b.effective_end``, computed once per Break object in this merge (every
        observation asks it of every break; the Fraction arithmetic adds up)."""
        hit = ends.get(id(b))
        if hit is None or hit[0] is not b:  # the entry keeps b alive: ids stay unique
            hit = ends[id(b)] = (b, b.effective_end(policy))
        return hit[1]

    spans: dict[int, tuple[Break, datetime, datetime]] = {}
    latest: list[datetime] = []  # at least every break's end_of, once one is known

    def open_at(at: datetime) -> int | None:
        added = breaks.added()
        if added:
            end = max(map(end_of, added))
            latest[:] = [max(latest[0], end) if latest else end]
        if not latest or at >= latest[0]:
            return None  # after every break's end: none is open (no scan)
        for i, b in enumerate(breaks):
            # (b, its earliest instant less SAME_BOUNDARY, end_of(b)), once per object.
            span = spans.get(id(b))
            if span is None or span[0] is not b:
                span = spans[id(b)] = (b, _earliest(b) - SAME_BOUNDARY, end_of(b))
            if span[1] <= at < span[2] and not b.cancelled:
                return i
        return None

    def by_event(event_id: str | None, at: datetime) -> int | None:
        if event_id is None:
            return None
        for i, b in enumerate(breaks):
            if b.event_id == event_id and _earliest(b) - SAME_BOUNDARY <= at <= (
                    end_of(b) + SAME_BOUNDARY):
                return i
        return None

    def same_cue(obs: Observation) -> int | None:
        """A known break opened by this very cue (same event id and splice PTS),
        wherever the repeat lands (ott-packager#44: a duplicated message)."""
        if obs.event_id is None or obs.pts is None:
            return None
        for i, b in enumerate(breaks):
            if b.event_id == obs.event_id and b.pts is not None and (
                    pts_distance(b.pts, obs.pts) <= SAME_PTS):
                return i
        return None

    def same_event_within(obs: Observation) -> int | None:
        """A known break of this event starting inside the span a join describes
        (a DATERANGE's start moves to the next boundary, so it may start later)."""
        if obs.event_id is None:
            return None
        start = obs.at if obs.elapsed is None else add_seconds(obs.at, -obs.elapsed)
        span = obs.planned_duration if obs.planned_duration is not None else policy.max_duration
        for i, b in enumerate(breaks):
            if b.event_id == obs.event_id and (
                    start - SAME_BOUNDARY <= b.start <= add_seconds(start, span)):
                return i
        return None

    def closes(b: Break, obs: Observation) -> bool:
        if b.cancelled or obs.at < b.start:
            return False
        if b.end is not None:
            # Only the range's own end may follow a CUE-IN-style end (it is the actual one).
            return obs.declared and not b.end_declared and b.event_id == obs.event_id
        limit = end_of(b)
        if obs.declared:
            pass  # the range's actual end: never late, it may outlast the plan
        elif obs.previous is not None and obs.previous > b.start:
            if obs.previous + PLANNED_SLACK >= limit:
                return False  # a late IN: the slot before it was already content
        elif obs.at > limit + SAME_BOUNDARY:
            return False  # a late IN: the break already ended at its planned end
        if obs.segmentation_type_id is None:
            return True  # CUE-IN and friends close whatever is open
        if b.segmentation_type_id is not None:
            return END_OF.get(b.segmentation_type_id) == obs.segmentation_type_id
        return not obs.nestable

    for obs in observations:
        if obs.kind is SignalKind.OUT:
            i = same_cue(obs)
            if i is None and (j := by_event(obs.event_id, obs.at)) is not None and (
                    abs(breaks[j].start - obs.at) <= SAME_BOUNDARY):
                i = j  # this break's own OUT again, even where another overrode it
            if i is None:
                i = open_at(obs.at)
                if i is not None and obs.nestable:
                    continue  # an ad inside the open break
            if i is None:
                i = by_event(obs.event_id, obs.at)
            if i is not None:
                b = breaks[i]
                if (abs(b.start - obs.at) <= SAME_BOUNDARY or b.event_id == obs.event_id
                        or same_cue(obs) == i):
                    breaks[i] = _completed(b, obs)
                    if b.ahead and not obs.ahead:
                        breaks[i] = _placed(breaks[i], obs.at)
                else:
                    result.ignored.append(IgnoredOut(
                        break_id(obs.event_id, obs.at), obs.at, obs.event_id, obs.dialect,
                        obs.planned_duration, b.id))
                continue
            new = Break(id=break_id(obs.event_id, obs.at), start=obs.at,
                        planned_duration=obs.planned_duration, dialect=obs.dialect,
                        event_id=obs.event_id, segmentation_type_id=obs.segmentation_type_id,
                        upid=obs.upid, params=obs.params, pts=obs.pts,
                        event_start=_event_start(obs.at, obs.event_at), ahead=obs.ahead)
            breaks.append(new)
            result.new.append(new)
        elif obs.kind is SignalKind.CONT:
            if open_at(obs.at) is not None or same_event_within(obs) is not None:
                continue
            start = obs.at if obs.elapsed is None else add_seconds(obs.at, -obs.elapsed)
            if obs.planned_duration is not None and obs.elapsed is not None and (
                    obs.elapsed >= obs.planned_duration):
                continue  # a CONT claiming the break is already over
            if open_at(start) is not None:
                continue  # the break this CONT continues is known (and may have ended)
            new = Break(id=break_id(obs.event_id, start), start=start,
                        planned_duration=obs.planned_duration, joined=True,
                        dialect=obs.dialect, event_id=obs.event_id,
                        start_known=obs.elapsed is not None or obs.event_at is not None,
                        event_start=_event_start(start, obs.event_at))
            breaks.append(new)
            result.new.append(new)
        elif obs.kind is SignalKind.IN:
            i = by_event(obs.event_id, obs.at)
            if i is not None and (end := breaks[i].end) is not None and (
                    abs(end - obs.at) <= SAME_BOUNDARY):
                continue  # this very IN again (the next reload, another rendition)
            if i is not None and not closes(breaks[i], obs):
                i = None
            if i is None:
                at, declared = obs.at, obs.declared
                # The first three tests are what closes() refuses first, without the call.
                candidates = [j for j, b in enumerate(breaks) if not (
                    at < b.start or b.cancelled or (b.end is not None and not declared))
                    and closes(b, obs) and (
                    obs.event_id is None or b.event_id is None
                    or obs.segmentation_type_id is None or b.event_id == obs.event_id)]
                if len(candidates) > 1:
                    # The break that is playing: not one that starts at this very IN
                    # (placed back to back: the IN ends the previous one), nor one it
                    # overrode.
                    candidates = [j for j in candidates if breaks[j].start < obs.at
                                  ] or candidates
                    beaten = overridden(tuple(breaks), policy)
                    candidates = [j for j in candidates if breaks[j].id not in beaten
                                  ] or candidates
                i = candidates[-1] if candidates else None
            if i is None:
                continue  # a stray IN, or one for a break that already ended
            breaks[i] = _ended(breaks[i], obs.at, obs.declared)
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
    # Nothing new: hand back the same object, so what is keyed on it stays valid.
    result.breaks = known if tuple(breaks) == known else tuple(breaks)
    return result


_INDEX: dict[BreakPolicy, tuple[tuple[Break, ...], BreakIndex]] = {}


def overridden(breaks: tuple[Break, ...], policy: BreakPolicy = BreakPolicy()
               ) -> dict[str, str]:
    """Breaks that start inside an earlier break, by id, with the id of the break
    that is open there: the open one wins, so they never play. As of what is known
    now: an earlier break that ends (CUE-IN) before such a start releases it."""
    return _overridden(sorted((b for b in breaks if not b.cancelled), key=_START), policy, {})


_START = attrgetter("start")


def _overridden(by_start: list[Break], policy: BreakPolicy, bounds: dict[int, datetime]
                ) -> dict[str, str]:
    """:func:`overridden` of the uncancelled breaks sorted by start, leaving in
    ``bounds`` (by position) the slot bound of each break that holds."""
    out: dict[str, str] = {}
    holder: Break | None = None
    bound: datetime | None = None
    for k, b in enumerate(by_start):
        if holder is not None and bound is not None and b.start - EPSILON < bound:
            out[b.id] = holder.id
            continue
        holder, bound = b, _slot_bound(b, policy)
        bounds[k] = bound
    return out


class BreakIndex:
    """Breaks sorted by start with their effective ends computed once, so finding
    the break over a slot is a bisection, not a scan (a 2-hour DVR window holds
    thousands of slots and dozens of breaks). Overridden breaks are left out."""

    def __init__(self, breaks: tuple[Break, ...], policy: BreakPolicy = BreakPolicy()) -> None:
        by_start = sorted((b for b in breaks if not b.cancelled), key=_START)
        bounds: dict[int, datetime] = {}  # overridden's, reused: each costs Fraction math
        beaten = _overridden(by_start, policy, bounds)
        kept = [k for k, b in enumerate(by_start) if b.id not in beaten]
        live = [by_start[k] for k in kept]
        self.breaks = live
        self.starts = [b.start - EPSILON for b in live]
        #: A slot starting before this bound is inside (the rule of :meth:`Break.covers`).
        self.ends = [bounds[k] if k in bounds else _slot_bound(by_start[k], policy)
                     for k in kept]

    @classmethod
    def of(cls, breaks: tuple[Break, ...], policy: BreakPolicy) -> BreakIndex:
        """The index of ``breaks``, reused while the same tuple comes back (a refresh
        with no new marker keeps the known breaks object as it is)."""
        cached = _INDEX.get(policy)
        if cached is not None and cached[0] is breaks:
            return cached[1]
        index = cls(breaks, policy)
        _INDEX[policy] = (breaks, index)
        return index

    def covering(self, pdt: datetime, duration: Fraction | timedelta) -> Break | None:
        """The break replacing the slot that starts at ``pdt`` (see :meth:`Break.covers`;
        ``duration`` is unused: whole slots are replaced)."""
        i = bisect_right(self.starts, pdt) - 1
        if i < 0:
            return None
        # Breaks in the index do not start inside one another (update_breaks refuses
        # an OUT inside an open break, ``overridden`` the rest), but check one more
        # back in case a shorter break started just before a longer one ended.
        for j in (i, i - 1):
            if j >= 0 and pdt < self.ends[j] and pdt >= self.starts[j]:
                return self.breaks[j]
        return None


def _slot_bound(b: Break, policy: BreakPolicy) -> datetime:
    """Slots starting before this instant are in ``b`` (given they start after it).

    A known end (CUE-IN) is a boundary already, or for a range's own end the
    instant content resumes at the first boundary at or after; the planned end
    gets ``PLANNED_SLACK`` for rounded durations."""
    if b.end is not None and b.end_declared:
        return b.end - EPSILON
    bound = b.planned_end(policy) - PLANNED_SLACK
    return bound if b.end is None else min(bound, b.end - EPSILON)


def _earliest(b: Break) -> datetime:
    """The break's first instant: its signalled start, when it snapped later."""
    return b.start if b.event_start is None else min(b.start, b.event_start)


def _event_start(at: datetime, event_at: datetime | None) -> datetime | None:
    """Kept only when it differs from the boundary (so other breaks compare as before)."""
    return None if event_at is None or event_at == at else event_at


def pts_distance(a: int, b: int) -> int:
    """Distance between two 33-bit PTS values, across a wrap (ISO 13818-1 2.4.3.7)."""
    d = (a - b) % PTS_MODULUS
    return min(d, PTS_MODULUS - d)


def _ended(b: Break, end: datetime, declared: bool) -> Break:
    """``replace(b, end=end, end_declared=declared)`` by the positional constructor:
    half the cost of ``replace``'s field introspection (a cold merge closes every
    break of the window this way)."""
    return Break(b.id, b.start, b.planned_duration, end, b.cancelled, b.joined, b.dialect,
                 b.event_id, b.segmentation_type_id, b.upid, b.params, b.pts, b.start_known,
                 b.event_start, declared, b.ahead)


def _completed(b: Break, obs: Observation) -> Break:
    """A break with the fields a repeat of its OUT fills in (never overwrites)."""
    return replace(
        b,
        planned_duration=(b.planned_duration if b.planned_duration is not None
                          else obs.planned_duration),
        event_id=b.event_id or obs.event_id,
        segmentation_type_id=(b.segmentation_type_id if b.segmentation_type_id is not None
                              else obs.segmentation_type_id),
        upid=b.upid or obs.upid,
        pts=b.pts if b.pts is not None else obs.pts,
        params=b.params or obs.params,
        event_start=b.event_start or _event_start(b.start, obs.event_at),
    )


def _placed(b: Break, boundary: datetime) -> Break:
    """An announced break placed on the first boundary at or after its START-DATE."""
    signalled = b.event_start or b.start
    return replace(b, start=boundary, ahead=False,
                   event_start=None if boundary == signalled else signalled)


def break_covering(breaks: tuple[Break, ...], pdt: datetime, duration: Fraction,
                   policy: BreakPolicy = BreakPolicy()) -> Break | None:
    return BreakIndex(breaks, policy).covering(pdt, duration)


def prune(breaks: tuple[Break, ...], before: datetime,
          policy: BreakPolicy = BreakPolicy()) -> tuple[Break, ...]:
    """Drop breaks that ended before ``before`` (they can no longer be in a window)."""
    return tuple(b for b in breaks if b.effective_end(policy) >= before)
