"""The splice: a stitched media playlist from an origin playlist (pure).

One code path for every rendition type (video variants, demuxed audio, WebVTT
subtitles): each origin segment is a *slot*; slots inside a break are mapped
one to one onto ad or slate segments with the slot's own EXTINF, so MSN and
PDT stay the origin's and the break replaces exactly the content's duration
(invariant 4). What each slot was published as is frozen in the
:class:`~manifests.ledger.Ledger` the first time it is rendered (invariant 7);
later renders read it back, so a decision that changes or a break that ends
early can never rewrite history.

Tags the stitcher does not understand pass through (invariant 6), except:
LL-HLS tags (server control, parts, preload hints, rendition reports) are
stripped; relative URIs in tags are made absolute against the origin URL;
the source's ad markers are dropped unless ``passthrough_markers``.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from functools import lru_cache
from itertools import islice, repeat
from operator import attrgetter
from typing import Protocol, cast, runtime_checkable
from urllib.parse import urljoin

from manifests.attributes import AttributeList
from manifests.breaks import DEFAULT_BREAK_POLICY, Break, BreakIndex, BreakPolicy
from manifests.columns import SegmentTable
from manifests.errors import ManifestError, SequenceRegressionError
from manifests.ledger import Ledger, SlotEntry, SlotKind
from manifests.markers import MARKER_TAGS
from manifests.playlist import (
    EXT_X_BITRATE,
    EXT_X_BYTERANGE,
    EXT_X_DATERANGE,
    EXT_X_DISCONTINUITY,
    EXT_X_DISCONTINUITY_SEQUENCE,
    EXT_X_GAP,
    EXT_X_KEY,
    EXT_X_MAP,
    EXT_X_MEDIA_SEQUENCE,
    EXT_X_PROGRAM_DATE_TIME,
    EXT_X_TARGETDURATION,
    EXTINF,
    LL_HLS_TAGS,
    Line,
    MediaPlaylist,
    Segment,
    render_lines,
)
from manifests.pod import EPS, ItemKind, Pod, PodItem, item_in, items_at, pod_bounds
from manifests.timing import format_duration, format_pdt

#: Tags of a replaced content segment that describe that content only.
_REPLACED_ONLY = frozenset({
    EXTINF, EXT_X_BYTERANGE, EXT_X_PROGRAM_DATE_TIME, EXT_X_DISCONTINUITY, EXT_X_GAP,
    EXT_X_BITRATE, EXT_X_KEY, EXT_X_MAP,
}) | LL_HLS_TAGS
_EXTINF_PREFIX = EXTINF + ":"
_PDT_PREFIX = EXT_X_PROGRAM_DATE_TIME + ":"
#: A tag line :meth:`_Renderer.replaced` has not seen yet in this render.
_UNSEEN = object()
_MICROSECOND = timedelta(microseconds=1)
_NO_DURATION = timedelta(0)
#: Up to this many new slots, each is simply classified (see :func:`_candidates`).
_FEW = 16
_special = attrgetter("special")
_raw = attrgetter("raw")
_last_line = operator.itemgetter(-1)
_discontinuity = attrgetter("discontinuity")
_new_tuple = tuple.__new__
#: A pod's nominal segment duration and item spans in microseconds (pod_bounds).
_Bounds = tuple[int, tuple[tuple[int, int, int, int], ...]]
#: Attributes that carry URIs (RFC 8216bis and HLS Interstitials).
_URI_ATTRIBUTES = ("URI", "X-ASSET-URI", "X-ASSET-LIST")


class UriBuilder(Protocol):
    """Where ad and slate segments are fetched from (relative to the playlist)."""

    def ad_segment(self, break_id: str, item_index: int, item: PodItem, segment: int) -> str: ...

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        """``msn``: slate loops, so its segment index repeats; a builder whose URIs
        must be unique per slot (generated subtitles) can use the slot's MSN."""
        ...


@runtime_checkable
class InitUriBuilder(UriBuilder, Protocol):
    """A :class:`UriBuilder` whose ads or slate may be fMP4 (B19). A builder without
    these methods makes MPEG-TS segments only."""

    def ad_map(self, break_id: str, item_index: int, item: PodItem) -> str | None:
        """The ad's Media Initialization Section (an fMP4 init segment), None for
        MPEG-TS segments, which carry their own PAT/PMT (RFC 8216bis 4.4.4.5)."""
        ...

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        """The slate's Media Initialization Section, None for MPEG-TS."""
        ...


@runtime_checkable
class ContentUriBuilder(Protocol):
    """A builder that serves some content segments through the stitcher itself
    (WebVTT whose X-TIMESTAMP-MAP it repairs, B22). A builder without the method
    leaves every content URI the origin's (made absolute)."""

    def content_segment(self, segment: Segment) -> str | None:
        """The URI to serve ``segment`` at, None for the origin's own."""
        ...


@dataclass(frozen=True, slots=True)
class SpliceOptions:
    #: The origin playlist's URL: relative URIs are resolved against it.
    base_url: str | None = None
    passthrough_markers: bool = False
    break_policy: BreakPolicy = DEFAULT_BREAK_POLICY
    #: Serve at most this many segments (the newest); None: the origin's window.
    window_cap: int | None = None
    #: This grid's segment duration, when it differs from the pod's nominal one.
    cadence: Fraction | None = None
    #: Emit one EXT-X-DATERANGE per inserted ad (SVTA-style ad creative
    #: signalling) for players that track ads themselves.
    ad_dateranges: bool = False


@dataclass(frozen=True, slots=True)
class Slot:
    """One rendered slot, for tracking and tests."""

    segment: Segment
    entry: SlotEntry | None

    @property
    def kind(self) -> SlotKind:
        return SlotKind.CONTENT if self.entry is None else self.entry.kind


@dataclass(frozen=True, slots=True)
class SpliceResult:
    text: str
    #: Entries to append to the ledger (slots published for the first time).
    new_entries: list[SlotEntry]
    hwm: int
    media_sequence: int
    discontinuity_sequence: int
    kept: Sequence[Segment] = ()
    entries: tuple[SlotEntry | None, ...] = ()
    #: The discontinuity anchor (msn, dsn) this render proposes to the ledger
    #: (:meth:`Ledger.append`), when the ledger has none it could count from.
    anchor: tuple[int, int] | None = None

    @property
    def slots(self) -> list[Slot]:
        """The served slots with what each was published as (built on demand)."""
        return [Slot(seg, entry) for seg, entry in zip(self.kept, self.entries)]


@dataclass
class SpliceCache:
    """What the previous render of the same (rendition, cohort) produced.

    Slots already published never change (the ledger is append-only and pods
    are frozen), so a refresh reuses their rendered text and classifies and
    renders only the new tail: one segment's work per new segment.
    """

    key: tuple[object, ...] = ()
    segments: Sequence[Segment] = ()
    entries: list[SlotEntry | None] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)


def splice(playlist: MediaPlaylist, *, breaks: tuple[Break, ...], pods: Mapping[str, Pod],
           ledger: Ledger, uris: UriBuilder, options: SpliceOptions = SpliceOptions(),
           cache: SpliceCache | None = None) -> SpliceResult:
    """Render the stitched playlist for one rendition of one cohort.

    Raises :class:`~manifests.errors.SequenceRegressionError` for a window that
    ends below the ledger's high-water mark (older or renumbered: serving it
    would move players backwards); the service serves its last good playlist.
    """
    segments = playlist.rows  # a cold render builds only the segments it looks at
    if segments and segments.msn(len(segments) - 1) < ledger.hwm:
        raise SequenceRegressionError(segments.msn(len(segments) - 1), ledger.hwm)
    renderer = _Renderer(options, uris, playlist.newline)
    inits = renderer.inits
    reuse, entries, chunks = _reusable(segments, cache, (options, uris))
    new_entries: list[SlotEntry] = []
    index = BreakIndex.of(breaks, options.break_policy)
    prev: SlotEntry | None = entries[-1] if reuse else (
        ledger.entries.get(segments.msn(0) - 1) if segments else None)
    todo = segments[reuse:]
    spans = _candidates(todo, index)
    classify_slot = _Classifier(index, pods, options.cadence)
    hwm = ledger.hwm
    published = ledger.entries
    i, n = 0, len(todo)
    for lo, hi in [*spans, (n, n)]:
        while i < hi:
            if i < lo and todo.msn(i) > hwm and (prev is None or prev.kind is SlotKind.CONTENT):
                # Up to the next break's slots: plain content, rendered as one run;
                # the origin's own discontinuities in it are recorded (B01).
                run = todo[i:lo]
                texts, plain = renderer.plain_texts(run)
                chunks.extend(texts)
                if not plain and any(map(_DISCONTINUITY, run)):
                    own = [_content_entry(s, None) for s in run]
                    new_entries.extend(e for e in own if e is not None)
                    entries.extend(own)
                else:
                    entries.extend(repeat(None, lo - i))
                prev, i = None, lo
                continue
            if i >= lo and todo.msn(i) > hwm:
                done = renderer.replaced_rows(todo, i, hi, prev, classify_slot, chunks, entries,
                                              new_entries)
                if done:
                    prev, i = entries[-1], i + done
                    continue
            if (i < lo and prev is not None and prev.kind is not SlotKind.CONTENT
                    and todo.msn(i) > hwm):
                # Content resuming after a break (its CUE-IN, say), a column row:
                # what classify and content() give it, from its columns.
                text = renderer.resumed_row(todo, i)
                if text is not None:
                    entry = _content_entry_at(todo.msn(i), False, prev)
                    assert entry is not None  # after a replaced slot: a discontinuity
                    chunks.append(text)
                    new_entries.append(entry)
                    entries.append(entry)
                    prev = entry
                    i += 1
                    continue
            row = todo.pending(i) if i >= lo else None
            if row is not None and row[0] > hwm:
                # A column row of the parse, new, in a break's span: classified and,
                # replaced, rendered from its columns without building its segment.
                msn, pdt, raw, key, map_line = row
                entry = classify_slot.at(msn, pdt, False, prev)
                if entry is not None and entry.kind is not SlotKind.CONTENT and (
                        map_line is None
                        or _init_of(inits, entry, pods.get(entry.break_id)) is not None):
                    new_entries.append(entry)
                    chunks.append(renderer.replaced_lines(raw, key, pdt, entry, prev,
                                                          pods.get(entry.break_id)))
                    entries.append(entry)
                    prev = entry
                    i += 1
                    continue
            seg = todo[i]
            if seg.msn <= hwm:
                entry = published.get(seg.msn)
            elif i >= lo:
                entry = classify_slot(seg, prev)
                if (entry is not None and entry.kind is not SlotKind.CONTENT
                        and seg.map is not None
                        and _init_of(inits, entry, pods.get(entry.break_id)) is None):
                    # RFC 8216bis 4.4.4.5: an EXT-X-MAP applies to every later segment
                    # until the next EXT-X-MAP, across discontinuities, and nothing can
                    # unset it: MPEG-TS ads under fMP4 content would be parsed with the
                    # content's init. Such a slot shows the content underneath.
                    entry = _content_entry(seg, prev)
                if entry is not None:
                    new_entries.append(entry)
            else:
                # What classify gives a slot no break covers.
                entry = _content_entry(seg, prev)
                if entry is not None:
                    new_entries.append(entry)
            if entry is None and (prev is None or prev.kind is SlotKind.CONTENT):
                chunks.append(renderer.plain(seg))
            elif entry is None or entry.kind is SlotKind.CONTENT:
                chunks.append(renderer.content(seg, entry, prev))
            else:
                chunks.append(renderer.replaced(seg, entry, prev, pods.get(entry.break_id)))
            entries.append(entry)
            prev = entry
            i += 1
    if cache is not None:
        cache.key, cache.segments = (options, uris), segments
        cache.entries, cache.chunks = entries, chunks

    first = 0
    if options.window_cap is not None and len(segments) > options.window_cap:
        first = len(segments) - options.window_cap
    kept = segments[first:]
    media_sequence = kept[0].msn if kept else playlist.media_sequence + len(segments)
    dsn, anchor = _discontinuity_sequence(playlist, entries, first, ledger)

    out = renderer.header(playlist, media_sequence, dsn)
    start = len(out)
    out.extend(islice(chunks, first, None) if first else chunks)  # one copy of the list
    if kept and kept[0].byterange_implicit and len(out) > start:
        # The first served segment has no predecessor in the playlist any more.
        out[start] = out[start].replace(
            next(t for t in kept[0].raw if t.startswith(EXT_X_BYTERANGE + ":")),
            _explicit_byterange(kept[0]))
    head = entries[first] if len(out) > start else None
    if head is not None and head.kind is not SlotKind.CONTENT and EXT_X_MAP not in out[start]:
        # A window that opens inside an ad: its init must still be declared.
        init = _init_of(inits, head, pods.get(head.break_id))
        if init is not None:
            out[start] = _before_extinf(out[start], f'{EXT_X_MAP}:URI="{init}"', playlist.newline)
    if playlist.trailer:
        out.extend(line.text for line in playlist.trailer if line.tag not in LL_HLS_TAGS)
    hwm = segments[-1].msn if segments else ledger.hwm
    # Never a BOM, even when the origin sent one: RFC 8216 4.1 forbids it and clients
    # refuse it (ffmpeg: "Invalid data found"); the multivariant drops it too.
    text = render_lines(out, newline=playlist.newline, bom=False,
                        final_newline=playlist.final_newline)
    return SpliceResult(text, new_entries, max(hwm, ledger.hwm), media_sequence, dsn, kept,
                        tuple(islice(entries, first, None) if first else entries), anchor)


def _discontinuity_sequence(playlist: MediaPlaylist, entries: list[SlotEntry | None],
                            first: int, ledger: Ledger) -> tuple[int, tuple[int, int] | None]:
    """The stitched EXT-X-DISCONTINUITY-SEQUENCE of the served window (its first
    slot is ``segments[first]``), and the anchor to propose to the ledger, if any.

    Counted from the ledger's anchor (``manifests/ledger.py``): the discontinuities
    that left the window are the ledger's entries, the ones still in it are this
    render's slots, so the origin's own tag is read only to set an anchor (the
    first window ever, a ledger written before anchors existed, or a window after
    a gap nobody published). After a gap the anchor never goes below what the
    ledger already counted, whatever the origin says (invariant 2: never decreases).
    """
    segments = playlist.rows
    if not segments:
        known = ledger.dsn_before(playlist.media_sequence)
        return (known if known is not None else
                playlist.discontinuity_sequence + ledger.delta_before(playlist.media_sequence)), None
    start = segments[0].msn
    anchor: tuple[int, int] | None = None
    if ledger.dsn_msn >= 0 and start <= ledger.hwm + 1:
        at, value = ledger.dsn_msn, ledger.dsn
    else:
        at = max(start, ledger.hwm + 1)
        i = at - start
        origin = (segments[i].discontinuity_sequence - int(segments[i].discontinuity)
                  if i < len(segments) else segments[-1].discontinuity_sequence)
        value = origin + ledger.delta_before(at)
        counted = ledger.dsn_before(ledger.hwm + 1)
        if counted is not None:
            value = max(value, counted)
        anchor = (at, value)
    if at <= start:
        counted = value if at == start else ledger.dsn_before(start)
        assert counted is not None  # anchored at or before start, start <= hwm + 1
        dsn_start = counted
    else:
        dsn_start = value - _stitched_discontinuities(segments, entries, at - start)
    if first:
        dsn_start += _stitched_discontinuities(segments, entries, first)
    return dsn_start, anchor


def _stitched_discontinuities(segments: Sequence[Segment], entries: list[SlotEntry | None],
                              count: int) -> int:
    """How many of the first ``count`` slots the stitched output puts an
    EXT-X-DISCONTINUITY before. Counted only when asked: usually the anchor is
    the window's first slot and nothing is capped, and a refresh should not walk
    the whole window."""
    return sum(seg.discontinuity if e is None else e.discontinuity
               for seg, e in zip(islice(segments, count), entries))


def _reusable(segments: Sequence[Segment], cache: SpliceCache | None, key: tuple[object, ...]
              ) -> tuple[int, list[SlotEntry | None], list[str]]:
    """How many leading segments the cache already rendered (same objects, same window)."""
    if cache is None or cache.key != key or not cache.segments or not segments:
        return 0, [], []
    d = segments[0].msn - cache.segments[0].msn
    if not 0 <= d < len(cache.segments):
        return 0, [], []
    overlap = len(cache.segments) - d
    if (overlap > len(segments) or segments[0] is not cache.segments[d]
            or segments[overlap - 1] is not cache.segments[-1]):
        return 0, [], []
    return overlap, cache.entries[d:], cache.chunks[d:]


def breaks_to_decide(playlist: MediaPlaylist, breaks: tuple[Break, ...], ledger: Ledger,
                     policy: BreakPolicy = DEFAULT_BREAK_POLICY, unit: Fraction | None = None,
                     ) -> dict[str, Fraction]:
    """The breaks a render of ``playlist`` needs a pod for, each with the offset
    into the break where this cohort's pod starts.

    Breaks with slots already published in the window need their (frozen) pod
    to render those; breaks covering new slots start their pod at the first
    new slot, so a join mid-break fills only what remains (duration - elapsed).
    That offset is rounded up to ``unit`` (the pod's layout cadence, the
    coarsest grid's), so every grid of the cohort starts the pod at a shared
    boundary; slots before it show the content underneath. A break whose start
    is unknown (joined from a bare CONT) gets no pod: content underneath.
    """
    needed: dict[str, Fraction] = {}
    segments = playlist.rows
    if not segments:
        return needed
    first, last = segments.msn(0), segments.msn(len(segments) - 1)
    for msn, entry in ledger.entries.items():
        if first <= msn <= last and entry.break_id:
            needed.setdefault(entry.break_id, Fraction(0))
    index = BreakIndex(breaks, policy)
    # The PDT column: no segment is built for this (covering reads only the start).
    for pdt in islice(segments.pdts(), max(0, ledger.hwm + 1 - first), None):
        if pdt is not None:
            brk = index.covering(pdt, _NO_DURATION)
            if brk is not None and brk.id not in needed and brk.start_known:
                start = max(Fraction(0), brk.offset(pdt))
                if unit:
                    start = -((-start + EPS) // unit) * unit  # ceil, PDT rounding tolerated
                needed[brk.id] = start
    return needed


_DISCONTINUITY = operator.attrgetter("discontinuity")


def _candidates(segments: SegmentTable, index: BreakIndex) -> list[tuple[int, int]]:
    """The index spans [lo, hi) of the slots a break may cover, in order, disjoint.

    A 2-hour window has thousands of slots and a few dozen breaks: asking the
    index about every slot costs more than the rest of the splice. With the
    window's PDTs in order, a break covers only slots whose PDT lies in its
    [start, bound) span (the rule of :meth:`BreakIndex.covering`), found by
    bisection; only those are classified, every other slot is what
    :func:`classify` gives a slot no break covers. Without PDT everywhere, or
    out of order, the one span is the whole window.
    """
    if not index.breaks or not segments:
        return []
    if len(segments) <= _FEW:
        return [(0, len(segments))]  # a refresh's tail: asking is cheaper than bisecting
    timed = segments.pdts()  # no segment built for this
    # In order and all timed, in one C pass: sorted() of a list in order is
    # timsort's run detection (a third of the pairwise le of a map, and of
    # ``None in``), and a None, compared to anything, raises.
    try:
        in_order = sorted(timed) == timed  # type: ignore[type-var]
    except TypeError:
        in_order = False
    if not in_order:
        return [(0, len(segments))]
    pdts = cast(list[datetime], timed)
    spans: list[tuple[int, int]] = []
    # Breaks starting after the last slot cannot cover any (a refresh's tail is
    # one slot: most of the channel's breaks are behind it).
    first, last = pdts[0], pdts[-1]
    starts, ends = index.starts, index.ends
    near = [j for j in range(bisect_right(starts, last)) if ends[j] > first]
    for lo, hi in sorted((bisect_left(pdts, starts[j]), bisect_left(pdts, ends[j]))
                         for j in near):
        if lo >= hi:
            continue
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
        else:
            spans.append((lo, hi))
    return spans


def classify(seg: Segment, prev: SlotEntry | None, index: BreakIndex,
             pods: Mapping[str, Pod], cadence: Fraction | None = None) -> SlotEntry | None:
    """What a slot published for the first time becomes; None for plain content
    (content with no discontinuity before it)."""
    if seg.pdt is not None:
        brk = index.covering(seg.pdt, seg.step)
        pod = pods.get(brk.id) if brk is not None else None
        if brk is not None and pod is not None:
            hit = pod.item_at_us((seg.pdt - brk.start) // _MICROSECOND,
                                 None if cadence is None else round(cadence * 1_000_000))
            if hit is not None:
                position, item, segment, wrapped = hit
                disc = (prev is None or prev.kind is SlotKind.CONTENT or prev.break_id != brk.id
                        or prev.item != position or wrapped)
                kind = SlotKind.AD if item.kind is ItemKind.AD else SlotKind.SLATE
                return SlotEntry(seg.msn, kind, brk.id, position, segment, disc,
                                 int(disc) - int(seg.discontinuity))
    return _content_entry(seg, prev)


class _Classifier:
    """:func:`classify` for the slots of one render, in timeline order: the break
    covering a run of slots, its pod and the grid's cadence are looked up once
    for the run, not per slot (a cold render of a 2-hour window classifies
    every slot of its 40 breaks). The cached break is the one
    :meth:`BreakIndex.covering` returns for every PDT in
    [its start, min(its end, the next break's start)); elsewhere it asks."""

    __slots__ = ("_bounds", "_brk", "_hi", "_index", "_lo", "_pod", "_pods", "cadence")

    def __init__(self, index: BreakIndex, pods: Mapping[str, Pod],
                 cadence: Fraction | None) -> None:
        self._index = index
        self._pods = pods
        #: The grid's cadence in microseconds (None: the pod's nominal).
        self.cadence = None if cadence is None else round(cadence * 1_000_000)
        self._lo: datetime | None = None
        self._hi: datetime | None = None
        self._brk: Break | None = None
        self._pod: Pod | None = None
        self._bounds: _Bounds | None = None

    def __call__(self, seg: Segment, prev: SlotEntry | None) -> SlotEntry | None:
        return self.at(seg.msn, seg.pdt, seg.discontinuity, prev)

    def at(self, msn: int, pdt: datetime | None, discontinuity: bool, prev: SlotEntry | None
           ) -> SlotEntry | None:
        """The same for the slot with these fields (a column row: no segment built)."""
        if pdt is None:
            return _content_entry_at(msn, discontinuity, prev)
        lo = self._lo
        if lo is not None and lo <= pdt < self._hi:  # type: ignore[operator]
            brk, pod, bounds = self._brk, self._pod, self._bounds
        else:
            brk, pod, bounds = self._lookup(pdt)
        if brk is not None and pod is not None:
            # pod.item_at_us, the pod's bounds looked up once per break.
            hit = (None if bounds is None else
                   item_in(pod.items, bounds, (pdt - brk.start) // _MICROSECOND, self.cadence))
            if hit is not None:
                position, item, segment, wrapped = hit
                disc = (prev is None or prev.kind is SlotKind.CONTENT or prev.break_id != brk.id
                        or prev.item != position or wrapped)
                kind = SlotKind.AD if item.kind is ItemKind.AD else SlotKind.SLATE
                return SlotEntry(msn, kind, brk.id, position, segment, disc,
                                 int(disc) - int(discontinuity))
        return _content_entry_at(msn, discontinuity, prev)


    def _lookup(self, pdt: datetime) -> tuple[Break | None, Pod | None, _Bounds | None]:
        """The break covering ``pdt``, its pod and the pod's bounds, cached for
        the span of PDTs that have the same answer when there is one."""
        index = self._index
        brk = index.covering(pdt, _NO_DURATION)  # the duration is not read
        pod = self._pods.get(brk.id) if brk is not None else None
        bounds = pod_bounds(pod) if pod is not None and pod.personalized else None
        i = bisect_right(index.starts, pdt) - 1
        if brk is not None and i >= 0 and index.breaks[i] is brk:
            # Cacheable: every PDT in this span bisects to i and i covers it.
            starts = index.starts
            self._lo = starts[i]
            self._hi = (index.ends[i] if i + 1 == len(starts)
                        else min(index.ends[i], starts[i + 1]))
            self._brk, self._pod, self._bounds = brk, pod, bounds
        else:
            self._lo = None
        return brk, pod, bounds

    def span_at(self, pdt: datetime) -> tuple[Break, Pod, _Bounds, datetime, datetime] | None:
        """(break, pod, bounds, lo, hi) when every slot with a PDT in [lo, hi) is
        classified against this break and personalized pod (``pdt`` among them);
        None when :meth:`at` has to ask slot by slot."""
        lo = self._lo
        if lo is None or not lo <= pdt < self._hi:  # type: ignore[operator]
            self._lookup(pdt)
            lo = self._lo
        if lo is None or self._bounds is None:
            return None
        return self._brk, self._pod, self._bounds, lo, self._hi  # type: ignore[return-value]


def _content_entry(seg: Segment, prev: SlotEntry | None) -> SlotEntry | None:
    """A content slot: after a replaced one it starts with a discontinuity."""
    return _content_entry_at(seg.msn, seg.discontinuity, prev)


def _content_entry_at(msn: int, discontinuity: bool, prev: SlotEntry | None
                      ) -> SlotEntry | None:
    if prev is not None and prev.kind is not SlotKind.CONTENT:
        return SlotEntry(msn, SlotKind.CONTENT, discontinuity=True,
                         delta=1 - int(discontinuity))
    if discontinuity:
        # The origin's own discontinuity, recorded so the stitched DSN counts it
        # once it has left the window, whatever the origin's tag says (B01).
        return SlotEntry(msn, SlotKind.CONTENT, discontinuity=True)
    return None


def _init_of(uris: InitUriBuilder | None, entry: SlotEntry, pod: Pod | None) -> str | None:
    """The init section URI of a replaced slot's ad or slate (None: MPEG-TS).

    ``uris`` is the builder when it is an :class:`InitUriBuilder`, else None: the
    check is made once per render (a runtime Protocol check costs ~20 us, and a
    cold render of a 2-hour window asks at every ad boundary)."""
    if uris is None:
        return None
    if entry.kind is SlotKind.SLATE or pod is None:
        return uris.slate_map(entry.break_id, entry.item)
    return uris.ad_map(entry.break_id, entry.item, pod.items[entry.item])


#: The members of :class:`InitUriBuilder`.
_INIT_MEMBERS = ("ad_segment", "slate_segment", "ad_map", "slate_map")


def _as_init_builder(uris: UriBuilder) -> InitUriBuilder | None:
    """``uris`` when it is an :class:`InitUriBuilder`, else None. What the runtime
    Protocol check decides (every member is there and not None), without its cost
    (~20 us, once per render: a tenth of a refresh that adds one segment)."""
    if all(getattr(uris, name, None) is not None for name in _INIT_MEMBERS):
        return cast(InitUriBuilder, uris)
    return None


class _Renderer:
    def __init__(self, options: SpliceOptions, uris: UriBuilder, newline: str = "\n") -> None:
        self.options = options
        self.uris = uris
        self.inits = _as_init_builder(uris)
        # isinstance(uris, ContentUriBuilder), without the runtime Protocol check's
        # ~13 us (every render, a refresh's too): the method is there and not None.
        self.routed: Callable[[Segment], str | None] | None = getattr(
            uris, "content_segment", None)
        self.base = options.base_url
        self.newline = newline
        #: What a replaced slot keeps of each distinct tag line (None: dropped), and
        #: the ad's EXTINF for each distinct content EXTINF. Per render, so a cold
        #: render does each line's work once (live feeds repeat their marker lines).
        self.replaced_tags: dict[str, str | None] = {}
        self.replaced_extinfs: dict[str, str] = {}
        #: The same for content slots (content_tag).
        self.content_tags: dict[str, str | None] = {}

    def header(self, playlist: MediaPlaylist, media_sequence: int, dsn: int) -> list[str]:
        out: list[str] = []
        wrote_dsn = False
        for line in playlist.header:
            if line.tag in LL_HLS_TAGS:
                continue
            if line.tag == EXT_X_MEDIA_SEQUENCE:
                out.append(f"{EXT_X_MEDIA_SEQUENCE}:{media_sequence}")
                if not wrote_dsn and dsn and not any(
                        h.tag == EXT_X_DISCONTINUITY_SEQUENCE for h in playlist.header):
                    out.append(f"{EXT_X_DISCONTINUITY_SEQUENCE}:{dsn}")
                    wrote_dsn = True
                continue
            if line.tag == EXT_X_DISCONTINUITY_SEQUENCE:
                out.append(f"{EXT_X_DISCONTINUITY_SEQUENCE}:{dsn}")
                wrote_dsn = True
                continue
            out.append(self.line(line))
        if dsn and not wrote_dsn:
            at = next((i + 1 for i, text in enumerate(out)
                       if text.startswith(EXT_X_TARGETDURATION)), len(out))
            out.insert(at, f"{EXT_X_DISCONTINUITY_SEQUENCE}:{dsn}")
        return out

    def line(self, line: Line) -> str:
        """Pass a line through, making relative URIs absolute."""
        if line.tag is None:
            return self.uri(line.text) if line.is_uri else line.text
        if self.base and line.value and "URI=" in line.value:
            return _absolutize_tag(line.text, self.base)
        return line.text

    def uri(self, uri: str) -> str:
        return _join(self.base, uri.strip()) if self.base else uri

    def keep(self, line: Line) -> bool:
        return self.keep_tag(line.tag, line.value)

    def keep_tag(self, tag: str | None, value: str | None) -> bool:
        if tag in LL_HLS_TAGS:
            return False
        if not self.options.passthrough_markers:
            if tag in MARKER_TAGS:
                return False
            if tag == EXT_X_DATERANGE and value and "SCTE35-" in value:
                return False
        return True

    def plain_run(self, run: Sequence[Segment]) -> list[str]:
        """:meth:`plain` over consecutive slots, at C speed where the run has no
        special or discontinuous segment and every URI is already absolute."""
        return self.plain_texts(run)[0]

    def plain_texts(self, run: Sequence[Segment]) -> tuple[list[str], bool]:
        """:meth:`plain_run`, and whether ``run`` is the table's plain rows (so no
        discontinuity in it: the caller need not look)."""
        n = len(run)
        if isinstance(run, SegmentTable) and run.plain(0, n):
            # The table's plain rows: three lines each, no segment built for them,
            # unless the URI builder routes content (each asked: :meth:`plain`).
            if self.routed is None:
                if not self.base:
                    return run.plain_text(0, n, self.newline), True
                uris = run.uris(0, n)
                if _all_absolute(uris, stripped=True):
                    return run.plain_text(0, n, self.newline), True
                prefix = _relative_prefix(self.base, uris)
                if prefix is not None:
                    return run.plain_text(0, n, self.newline, prefix), True
            return [self.plain(seg) for seg in run], True
        raws = list(map(_raw, run))
        if self.routed is not None or any(map(_special, run)) or any(map(_discontinuity, run)) or (
                self.base and not _all_absolute(list(map(_last_line, raws)))):
            return [self.plain(seg) for seg in run], False
        return list(map(self.newline.join, raws)), False

    def plain(self, seg: Segment) -> str:
        """A content slot with no entry after a content slot: the common case."""
        if seg.special or (seg.discontinuity and not seg.pdt_explicit and seg.pdt is not None):
            return self.content(seg, None, None)
        raw = seg.raw
        if self.routed is not None and (routed := self.routed(seg)) is not None:
            return self.newline.join(raw[:-1] + (routed,))
        if self.base:
            uri = _join(self.base, raw[-1].strip())
            if uri != raw[-1]:
                return self.newline.join(raw[:-1] + (uri,))
        return self.newline.join(raw)

    def content(self, seg: Segment, entry: SlotEntry | None, prev: SlotEntry | None) -> str:
        undated = seg.discontinuity and not seg.pdt_explicit and seg.pdt is not None
        if (entry is None and not seg.special and not undated
                and (prev is None or prev.kind is SlotKind.CONTENT)):
            # The common case: a plain content segment, only its URI made absolute.
            uri = seg.raw[-1]
            if self.routed is not None and (routed := self.routed(seg)) is not None:
                return self.newline.join(seg.raw[:-1] + (routed,))
            return self.newline.join(seg.raw[:-1] + (self.uri(uri) if self.base else uri,))
        out: list[str] = []
        after_break = prev is not None and prev.kind is not SlotKind.CONTENT
        if entry is not None and entry.discontinuity and not seg.discontinuity:
            out.append(EXT_X_DISCONTINUITY)
        if after_break:
            # Restore the state tags the ads overrode, and anchor the timeline.
            if seg.key is not None and not seg.has(EXT_X_KEY) and _encrypted(seg.key):
                out.append(_explicit_iv(self.line(seg.key), seg.msn))
            if seg.map is not None and not seg.has(EXT_X_MAP):
                out.append(self.line(seg.map))
            if not seg.pdt_explicit and seg.pdt is not None:
                out.append(f"{EXT_X_PROGRAM_DATE_TIME}:{format_pdt(seg.pdt)}")
        elif undated and seg.pdt is not None:
            # Invariant 4: every segment after a discontinuity carries a PDT (the
            # origin's own discontinuities included, when its PDT was derived).
            out.append(f"{EXT_X_PROGRAM_DATE_TIME}:{format_pdt(seg.pdt)}")
        for line in seg.lines:
            if not self.keep(line):
                continue
            if line.tag == EXT_X_DISCONTINUITY_SEQUENCE:
                continue  # written in the header
            if after_break and line.tag == EXT_X_BYTERANGE and seg.byterange_implicit:
                out.append(_explicit_byterange(seg))  # its predecessor is now an ad
                continue
            if after_break and line.tag == EXT_X_KEY and _encrypted(line):
                out.append(_explicit_iv(self.line(line), seg.msn))
                continue
            if line.is_uri and self.routed is not None and (
                    routed := self.routed(seg)) is not None:
                out.append(routed)
                continue
            out.append(self.line(line))
        return self.newline.join(out)

    def replaced_tag(self, text: str) -> str | None:
        """What a replaced slot keeps of a tag line (None: dropped), remembered
        per distinct line except for the tags that describe the content only."""
        name, colon, value = text.partition(":")
        if name in _REPLACED_ONLY or name == EXT_X_DISCONTINUITY_SEQUENCE:
            return None
        kept = self.replaced_tags[text] = (
            None if not self.keep_tag(name, value if colon else None)
            else _absolutize_tag(text, self.base)
            if self.base and colon and "URI=" in value else text)
        return kept

    def replaced_extinf(self, extinf: str) -> str:
        """The ad's EXTINF line for a content EXTINF line: its duration, no title."""
        line = self.replaced_extinfs.get(extinf)
        if line is None:
            line = self.replaced_extinfs[extinf] = (
                f"{EXTINF}:{extinf[len(_EXTINF_PREFIX):].partition(',')[0]},")
        return line

    def replaced_rows(self, rows: SegmentTable, i: int, hi: int, prev: SlotEntry | None,
                      classifier: _Classifier, chunks: list[str],
                      entries: list[SlotEntry | None], new_entries: list[SlotEntry]) -> int:
        """Replace the column rows of one break's pod from row ``i`` on (before
        ``hi``), appending what :meth:`_Classifier.at` and :meth:`replaced_lines`
        give each; returns how many it did (0: the caller goes slot by slot).

        A cold render of a 2-hour window replaces ~600 slots: here the break,
        its pod and the render's line caches are looked up once for the run,
        not per slot, and the rows are read from the columns, built or not.
        It stops at the first row it cannot do the same way (not a column row,
        outside the break's span, not in the pod, or under an EXT-X-MAP)."""
        cols = rows.columns(i, hi)
        if cols is None:
            return 0
        msns, pdts, pdt_lines, tags, extinfs, ctxs = cols
        span = classifier.span_at(pdts[0])
        if span is None:
            return 0
        brk, pod, bounds, lo_pdt, hi_pdt = span
        brk_id, brk_start, items = brk.id, brk.start, pod.items
        cadence = classifier.cadence
        seen, extinf_lines, newline = self.replaced_tags, self.replaced_extinfs, self.newline
        inits, dateranges = self.inits, self.options.ad_dateranges
        ad_segment, slate_segment = self.uris.ad_segment, self.uris.slate_segment
        # The first slot enters the break from content (EXT-X-KEY:METHOD=NONE), and
        # has a discontinuity unless it continues the same item of the same break;
        # every later slot follows one of this loop's.
        entering = prev is None or prev.kind is SlotKind.CONTENT
        last = None if entering or prev.break_id != brk_id else prev.item  # type: ignore[union-attr]
        done = 0
        hits = items_at(items, bounds, [(pdt - brk_start) // _MICROSECOND for pdt in pdts],
                        cadence)
        for msn, pdt, pdt_line, tag, extinf, ctx, hit in zip(msns, pdts, pdt_lines, tags,
                                                             extinfs, ctxs, hits):
            if not lo_pdt <= pdt < hi_pdt or ctx[2] is not None or hit is None:
                break
            position, item, segment, wrapped = hit
            disc = last != position or wrapped
            slate = item.kind is ItemKind.SLATE
            # tuple.__new__: the named tuple without its Python-level __new__.
            entry = _new_tuple(SlotEntry, (msn, SlotKind.SLATE if slate else SlotKind.AD, brk_id,
                                           position, segment, disc, int(disc)))
            uri = (slate_segment(brk_id, position, segment, msn) if slate
                   else ad_segment(brk_id, position, item, segment))
            extinf_line = extinf_lines.get(extinf) or self.replaced_extinf(extinf)
            kept = None if tag is None else seen.get(tag, _UNSEEN)
            if kept is _UNSEEN:
                kept = self.replaced_tag(tag)
            if kept is None and not disc and not entering and not dateranges:
                chunks.append(f"{pdt_line}{newline}{extinf_line}{newline}{uri}")
            else:
                # What replaced_lines makes of the row (PDT, at most one other tag,
                # EXTINF, URI).
                out: list[str] = [] if kept is None else [cast(str, kept)]
                if disc:
                    out.append(EXT_X_DISCONTINUITY)
                    init = _init_of(inits, entry, pod)
                    if init is not None:
                        out.append(f'{EXT_X_MAP}:URI="{init}"')
                key = ctx[1]
                if entering and key is not None and _encrypted(key):
                    out.append(f"{EXT_X_KEY}:METHOD=NONE")
                out.append(pdt_line)
                if dateranges and not slate and segment == 0:
                    out.append(_ad_daterange(entry, item, pdt))
                out.append(extinf_line)
                out.append(uri)
                chunks.append(newline.join(out))
            entries.append(entry)
            new_entries.append(entry)
            entering, last = False, position
            done += 1
        return done

    def resumed_row(self, rows: SegmentTable, i: int) -> str | None:
        """:meth:`content` of column row ``i`` (PDT, at most one other tag, EXTINF,
        URI: no discontinuity, byte range, KEY or MAP line of its own) where it
        follows a replaced slot; None when row ``i`` is not a column row or the
        builder routes content (see :meth:`content`)."""
        cols = rows.columns(i, i + 1) if self.routed is None else None
        if cols is None:
            return None
        (msn,), _pdts, (pdt_line,), (tag,), (extinf,), ((_dsn, key, map_line),) = cols
        out = [EXT_X_DISCONTINUITY]
        # The state tags the ads overrode; the PDT is the row's own (explicit).
        if key is not None and _encrypted(key):
            out.append(_explicit_iv(self.line(key), msn))
        if map_line is not None:
            out.append(self.line(map_line))
        out.append(pdt_line)  # an ISO date fromisoformat read: no URI attribute
        if tag is not None:
            kept = self.content_tag(tag)
            if kept is not None:
                out.append(kept)
        out.append(self.content_tag(extinf))  # type: ignore[arg-type]
        out.append(self.uri(rows.uris(i, i + 1)[0]))
        return self.newline.join(out)

    def content_tag(self, text: str) -> str | None:
        """What :meth:`content` writes of a tag line that is neither a byte range,
        a key nor a discontinuity sequence (None: dropped), once per distinct line."""
        kept = self.content_tags.get(text, _UNSEEN)
        if kept is _UNSEEN:
            line = Line.of(text)
            kept = self.content_tags[text] = self.line(line) if self.keep(line) else None
        return cast("str | None", kept)

    def replaced(self, seg: Segment, entry: SlotEntry, prev: SlotEntry | None,
                 pod: Pod | None) -> str:
        return self.replaced_lines(seg.raw, seg.key, seg.pdt, entry, prev, pod)

    def replaced_lines(self, raw: tuple[str, ...], key: Line | None, pdt: datetime | None,
                       entry: SlotEntry, prev: SlotEntry | None, pod: Pod | None) -> str:
        """:meth:`replaced` from the fields it reads (a column row: no segment built)."""
        # Read from the raw text (the segment's Line objects are not built for
        # this): the tags that outlive the content, its PDT and its EXTINF.
        out: list[str] = []
        pdt_line: str | None = None
        extinf: str | None = None
        seen = self.replaced_tags
        n = len(raw)
        if (3 <= n <= 4 and raw[0].startswith(_PDT_PREFIX) and raw[-2].startswith(_EXTINF_PREFIX)
                and raw[-1][:1] not in ("", "#") and not raw[-1].isspace()):
            # The parse's column shape (PDT, at most one other tag, EXTINF, URI): what
            # the loop below makes of it, the tag's fate read from the cache.
            kept = _UNSEEN if n == 3 else seen.get(raw[1], _UNSEEN)
            if n == 3 or (kept is not _UNSEEN and not raw[1].startswith(_EXTINF_PREFIX)):
                pdt_line, extinf = raw[0], raw[-2]
                if kept is not None and kept is not _UNSEEN:
                    out.append(cast(str, kept))
                raw = ()
        for text in raw:
            if not text.startswith("#EXT"):
                if not text or text[0] == "#" or text.isspace():
                    out.append(text)  # a comment or a blank line stays
                continue  # a URI: the content's own
            if text.startswith(_PDT_PREFIX):
                pdt_line = pdt_line or text
                continue
            if text.startswith(_EXTINF_PREFIX):
                extinf = extinf or text
                continue
            kept = seen.get(text, _UNSEEN)
            if kept is _UNSEEN:
                name = text.partition(":")[0]
                if name == EXT_X_PROGRAM_DATE_TIME:
                    pdt_line = pdt_line or text
                elif name == EXTINF:
                    extinf = extinf or text
                kept = self.replaced_tag(text)
            if kept is not None:
                out.append(cast(str, kept))
        if entry.discontinuity:
            out.append(EXT_X_DISCONTINUITY)
            init = _init_of(self.inits, entry, pod)
            if init is not None:
                # B19 (grafov/m3u8#153, hls.js#1990): the ad's own init after the
                # discontinuity; the content's is restated on return (content()).
                out.append(f'{EXT_X_MAP}:URI="{init}"')
        entering = prev is None or prev.kind is SlotKind.CONTENT
        if entering and key is not None and _encrypted(key):
            out.append(f"{EXT_X_KEY}:METHOD=NONE")
        if pdt_line is None and pdt is not None:
            pdt_line = f"{EXT_X_PROGRAM_DATE_TIME}:{format_pdt(pdt)}"
        if pdt_line is not None:
            out.append(pdt_line)
        if (self.options.ad_dateranges and pod is not None and entry.kind is SlotKind.AD
                and entry.segment == 0 and pdt is not None):
            out.append(_ad_daterange(entry, pod.items[entry.item], pdt))
        if extinf is None:
            raise AssertionError("a parsed segment always has EXTINF")
        out.append(self.replaced_extinfs.get(extinf) or self.replaced_extinf(extinf))
        if entry.kind is SlotKind.SLATE or pod is None:
            out.append(self.uris.slate_segment(entry.break_id, entry.item, entry.segment,
                                               entry.msn))
        else:
            out.append(self.uris.ad_segment(entry.break_id, entry.item, pod.items[entry.item],
                                            entry.segment))
        return self.newline.join(out)


#: DATERANGE CLASS of the per-ad metadata (SVTA ad creative signalling).
AD_DATERANGE_CLASS = "urn:svta:advertising-wg:ad-id"


def _ad_daterange(entry: SlotEntry, item: PodItem, pdt: datetime) -> str:
    """One DATERANGE spanning the ad as it plays (RFC 8216bis 4.4.5.1): a unique,
    deterministic ID (break and pod position), start at the ad's first slot,
    the creative's own duration."""
    return (f'{EXT_X_DATERANGE}:ID="{entry.break_id}-{entry.item + 1}",'
            f'CLASS="{AD_DATERANGE_CLASS}",START-DATE="{format_pdt(pdt)}",'
            f'DURATION={format_duration(item.duration)},X-AD-ID="{item.creative}",'
            f"X-POD-POSITION={entry.item + 1}")


def _before_extinf(chunk: str, line: str, newline: str) -> str:
    lines = chunk.split(newline)
    at = next(i for i, text in enumerate(lines) if text.startswith(EXTINF + ":"))
    return newline.join(lines[:at] + [line] + lines[at:])


def _explicit_byterange(seg: Segment) -> str:
    assert seg.byterange is not None
    length, offset = seg.byterange
    return f"{EXT_X_BYTERANGE}:{length}@{offset}"


def _encrypted(key: Line) -> bool:
    try:
        method = AttributeList.parse(key.value or "").string("METHOD")
    except ManifestError:  # a malformed KEY line is passed through as it is
        return False
    return method is not None and method.upper() != "NONE"


def _explicit_iv(text: str, msn: int) -> str:
    """Add the IV the player would have derived from the MSN (RFC 8216bis 5.2)."""
    if "IV=" in text:
        return text
    return f"{text},IV=0x{msn:032X}"


def _all_absolute(uris: list[str], stripped: bool = False) -> bool:
    """Does :func:`_join` leave every one of ``uris`` as it is? (Absolute HTTP(S),
    no dot segment, nothing to strip: every blank but the space is unprintable.)
    Counted over the joined text, in C; False only means "ask each one".
    ``stripped``: the URIs are known to neither start nor end with a blank (the
    parse's column rows), so the printable scan, the costliest, is not needed."""
    if not uris or not uris[0].startswith(("https://", "http://")):
        return False  # (before the join: a run of relative URIs is then joined once)
    joined = "\n".join(uris)
    https = joined.count("\nhttps://")  # the usual scheme: the second count seldom runs
    return ((https == len(uris) - 1 or https + joined.count("\nhttp://") == len(uris) - 1)
            and _DOT_SEGMENT.search(joined) is None
            and (stripped or (" " not in joined and "".join(uris).isprintable())))


#: A '/.' anywhere (dot segments urljoin would normalise). The regex engine's
#: literal search scans a run's URIs twice as fast as ``in`` for this needle.
_DOT_SEGMENT = re.compile(r"/\.")


def _relative_prefix(base: str, uris: list[str]) -> str | None:
    """The prefix :func:`_join` puts before each of ``uris`` when every one takes its
    plain-concatenation path (a relative name: no scheme, no leading '.', '/', '?'
    or '#'), so a run of an origin's relative URIs is made absolute
    in C; None means "ask each one". The URIs are the parse's column rows: stripped."""
    prefix = _base_dir(base)
    if prefix is None or not uris or _NOT_PLAIN_RELATIVE.search("\n".join(uris)) is not None:
        return None
    return prefix


#: A line that :func:`_join` would not join by concatenation: one starting with
#: '.', '/', '?' or '#', or with a ':' before its first '/' (a scheme, or what
#: urljoin could take for one).
_NOT_PLAIN_RELATIVE = re.compile(r"^(?:[./?#]|[^/\n]*:)", re.MULTILINE)


def _join(base: str, uri: str) -> str:
    """``urljoin``, with a fast path for the common plain relative name."""
    if uri.startswith(("https://", "http://")) and "/." not in uri:
        return uri  # already absolute (and nothing for urljoin to normalise)
    if uri and uri[0] not in "./?#" and ":" not in uri.partition("/")[0]:
        prefix = _base_dir(base)
        if prefix is not None:
            return prefix + uri
    return urljoin(base, uri)


@lru_cache(maxsize=1024)
def _base_dir(base: str) -> str | None:
    """The base URL up to its last '/', when joining is plain concatenation."""
    if "?" in base or "#" in base or "://" not in base:
        return None
    return base[: base.rfind("/") + 1]


@lru_cache(maxsize=8192)
def _absolutize_tag(text: str, base: str) -> str:
    name, _, value = text.partition(":")
    try:
        attrs = AttributeList.parse(value)
    except ManifestError:
        return text
    changed = attrs
    for attr in _URI_ATTRIBUTES:
        raw = attrs.string(attr)
        if raw is not None and attr in attrs and attrs[attr].startswith('"'):
            absolute = _join(base, raw)
            if absolute != raw:
                changed = changed.replace(attr, f'"{absolute}"')
    return text if changed is attrs else f"{name}:{changed.render()}"
