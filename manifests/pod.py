"""Pods: which ads fill a break, laid out on the break's timeline.

Ad ops expect whole ads only, in pod order, that fit the break; the remainder
is slate when it is at least ``min_slate`` seconds, otherwise the content
underneath shows for it. Ads are conditioned to the channel's nominal segment
duration and padded to a whole number of segments, so an ad occupies
``ceil(duration / nominal)`` slots. The layout is a pure function of the pod,
so every rendition and every instance maps a slot at a given offset into the
break to the same ad and the same segment of it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

from manifests.timing import micros, micros_of

#: Tolerance for comparing offsets derived from millisecond PDTs.
EPS = Fraction(1, 50)


class ItemKind(enum.Enum):
    AD = "ad"
    SLATE = "slate"


@dataclass(frozen=True, slots=True)
class PodItem:
    kind: ItemKind
    #: Stable id of the creative (e.g. its conditioning key) or "slate".
    creative: str
    #: The creative's own duration (quartiles are computed from this).
    duration: Fraction
    #: Offset from the break start where this item begins, and its span on the timeline.
    start: Fraction
    span: Fraction
    #: Segments of the conditioned item (slate cycles through them).
    segments: int


@dataclass(frozen=True, slots=True)
class Pod:
    break_id: str
    items: tuple[PodItem, ...]
    nominal: Fraction
    #: False when the break is left to the content underneath (no fill, threshold).
    personalized: bool = True

    def item_at(self, offset: Fraction, cadence: Fraction | None = None
                ) -> tuple[int, PodItem, int, bool] | None:
        """(item index, item, segment index, wrapped) for a slot at ``offset``.

        ``cadence`` is the segment duration of the slot's grid (default: the
        pod's nominal, which is the coarsest grid's): the segment index counts
        in it. ``wrapped`` is True where slate restarts its loop (a
        discontinuity there); the loop is a fixed span of time, so every grid
        wraps at the same instants and their discontinuity counts agree.
        """
        return self.item_at_us(round(offset * _US),
                               None if cadence is None else round(cadence * _US))

    def item_at_us(self, offset: int, cadence: int | None = None
                   ) -> tuple[int, PodItem, int, bool] | None:
        """:meth:`item_at` in integer microseconds (the hot path: no Fractions)."""
        if not self.personalized:
            return None
        return item_in(self.items, _bounds(self), offset, cadence)

    @property
    def filled(self) -> Fraction:
        return sum((it.duration for it in self.items if it.kind is ItemKind.AD), Fraction(0))


_US = 1_000_000
_EPS_US = round(EPS * _US)
_BOUNDS: dict[int, tuple[Pod, tuple[int, tuple[tuple[int, int, int, int], ...]]]] = {}


def _end_micros(item: PodItem) -> int:
    """``micros(item.start + item.span)``, the sum taken over the two denominators
    (a Fraction sum costs a gcd, and every pod of a cold render asks this)."""
    start, span = item.start, item.span
    return micros_of(start.numerator * span.denominator + span.numerator * start.denominator,
                     start.denominator * span.denominator)


def item_in(items: tuple[PodItem, ...], bounds: tuple[int, tuple[tuple[int, int, int, int], ...]],
            offset: int, cadence: int | None = None) -> tuple[int, PodItem, int, bool] | None:
    """:meth:`Pod.item_at_us` of a personalized pod from its items and
    :func:`pod_bounds` (which a caller asking for many slots looks up once)."""
    nominal, spans = bounds
    step = cadence or nominal
    for i, (start, end, segments, slate_period) in enumerate(spans):
        if start - _EPS_US <= offset < end - _EPS_US:
            into = offset - start
            if slate_period:
                loops, within = divmod(into + _EPS_US, slate_period)
                wrapped = loops > 0 and within < 2 * _EPS_US
                return i, items[i], within // step, wrapped
            j = (into + _EPS_US) // step
            last = max(0, -(-(end - start - _EPS_US) // step) - 1)
            return i, items[i], min(j, last), False
    return None


def items_at(items: tuple[PodItem, ...],
             bounds: tuple[int, tuple[tuple[int, int, int, int], ...]], offsets: list[int],
             cadence: int | None = None) -> list[tuple[int, PodItem, int, bool] | None]:
    """``[item_in(items, bounds, offset, cadence) for offset in offsets]``, walking
    the spans once while the offsets increase (a break's slots, in order), where
    item_in scans from the first span for each. The walk needs the spans in
    order without overlap (plan_pod's are consecutive); it starts over where an
    offset goes back, and other layouts are looked up offset by offset."""
    nominal, spans = bounds
    n = len(spans)
    if any(spans[k][0] > spans[k][1] or (k + 1 < n and spans[k][1] > spans[k + 1][0])
           for k in range(n)):
        return [item_in(items, bounds, offset, cadence) for offset in offsets]
    step = cadence or nominal
    out: list[tuple[int, PodItem, int, bool] | None] = []
    append = out.append
    k, last = 0, None
    for offset in offsets:
        if last is not None and offset < last:
            k = 0
        last = offset
        while k < n and offset >= spans[k][1] - _EPS_US:
            k += 1  # past span k: so is every later offset (until one goes back)
        if k == n or offset < spans[k][0] - _EPS_US:
            append(None)  # between spans, before the first or after the last
            continue
        start, end, _segments, slate_period = spans[k]
        into = offset - start
        if slate_period:  # what item_in does with the span it finds
            loops, within = divmod(into + _EPS_US, slate_period)
            append((k, items[k], within // step, loops > 0 and within < 2 * _EPS_US))
            continue
        j = (into + _EPS_US) // step
        append((k, items[k], min(j, max(0, -(-(end - start - _EPS_US) // step) - 1)), False))
    return out


def pod_bounds(pod: Pod) -> tuple[int, tuple[tuple[int, int, int, int], ...]]:
    """The pod's nominal segment duration and item spans in microseconds (see
    :func:`_bounds`), for :func:`item_in`."""
    return _bounds(pod)


def _bounds(pod: Pod) -> tuple[int, tuple[tuple[int, int, int, int], ...]]:
    """The nominal segment duration and each item's (start, end, segments, slate
    loop period), in microseconds, computed once per pod (pods are frozen; keyed
    by identity, the pod kept alive with it)."""
    hit = _BOUNDS.get(id(pod))
    if hit is not None and hit[0] is pod:
        return hit[1]
    nominal = pod.nominal
    items = tuple((micros(it.start), _end_micros(it), it.segments,
                   micros_of(it.segments * nominal.numerator, nominal.denominator)
                   if it.kind is ItemKind.SLATE else 0)
                  for it in pod.items)
    bounds = micros(nominal), items
    _remember(pod, bounds)
    return bounds


def _remember(pod: Pod, bounds: tuple[int, tuple[tuple[int, int, int, int], ...]]) -> None:
    if len(_BOUNDS) >= 4096:
        _BOUNDS.clear()
    _BOUNDS[id(pod)] = (pod, bounds)


@dataclass(frozen=True, slots=True)
class Candidate:
    creative: str
    duration: Fraction


def plan_pod(break_id: str, candidates: list[Candidate], *, available: Fraction,
             nominal: Fraction, start: Fraction = Fraction(0), min_slate: Fraction = Fraction(2),
             slate_segments: int = 1, personalization_threshold: Fraction | None = None,
             ) -> Pod:
    """Lay out whole ads in pod order over ``available`` seconds from ``start``.

    An ad that does not fit is skipped (a later, shorter one may still fit).
    ``personalization_threshold``: if more than this many seconds would be left
    unfilled by ads, the break is not personalized at all.

    Exact, in integers over one common denominator: the same result as Fraction
    arithmetic, without a gcd after every operation (a cold render plans every
    break of a 2-hour window, and the Fraction version cost ~25 us a pod).
    """
    exact = [start, available, nominal, min_slate, EPS, *(c.duration for c in candidates)]
    if personalization_threshold is not None:
        exact.append(personalization_threshold)
    den = math.lcm(*(x.denominator for x in exact))

    def units(x: Fraction) -> int:
        return x.numerator * (den // x.denominator)

    def seconds(n: int) -> Fraction:
        return Fraction(n, den)

    eps, step = units(EPS), units(nominal)
    first = cursor = units(start)
    end = first + units(available)
    items: list[PodItem] = []
    # The layout's microsecond bounds (pod_bounds) from the same integers: every
    # pod of a cold render is asked for them, and from the items they cost more.
    spans: list[tuple[int, int, int, int]] = []
    for c in candidates:
        duration = units(c.duration)
        if duration <= 0:
            continue
        slots = max(1, -((eps - duration) // step))  # ceil((duration - EPS) / nominal)
        span = slots * step
        if cursor + span > end + eps:
            continue
        items.append(PodItem(ItemKind.AD, c.creative, c.duration, seconds(cursor), seconds(span),
                             slots))
        spans.append((micros_of(cursor, den), micros_of(cursor + span, den), slots, 0))
        cursor += span
    unfilled = end - cursor  # the ads' spans are consecutive from the start
    if not items or (personalization_threshold is not None
                     and unfilled > units(personalization_threshold)):
        return Pod(break_id, (), nominal, personalized=False)
    if unfilled >= units(min_slate) - eps:
        remainder = seconds(unfilled)
        segments = max(1, slate_segments)
        items.append(PodItem(ItemKind.SLATE, "slate", remainder, seconds(cursor), remainder,
                             segments))
        spans.append((micros_of(cursor, den), micros_of(end, den), segments,
                      micros_of(segments * step, den)))
    pod = Pod(break_id, tuple(items), nominal)
    _remember(pod, (micros_of(step, den), tuple(spans)))
    return pod


def slate_pod(break_id: str, *, start: Fraction, available: Fraction, nominal: Fraction,
              slate_segments: int) -> Pod:
    """A break filled with slate only: the fallback when no decision could be made
    and the channel prefers slate to the content underneath."""
    return Pod(break_id, (PodItem(ItemKind.SLATE, "slate", available, start, available,
                                  max(1, slate_segments)),), nominal)


def unplayed(pod: Pod, played: Fraction) -> list[int]:
    """Indexes of the pod's ads that start at or after ``played`` seconds into the
    break: a break cancelled (``played`` 0) or ended early never reaches them."""
    return [i for i, item in enumerate(pod.items)
            if item.kind is ItemKind.AD and pod.personalized and item.start >= played - EPS]
