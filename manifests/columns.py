"""A window's segments as columns: :class:`~manifests.playlist.Segment` objects on demand.

A cold parse of a 2-hour window used to build 3,600 ``Segment`` objects
(~1.5 us each), most of which a render never looks at: a plain segment
(its PDT, EXTINF and URI lines, nothing else) between two breaks is copied
to the output as its text, and a break's CONT segments are read for one tag
line. :class:`SegmentTable` keeps such segments as *column rows* (MSN, PDT,
the lines, at most one tag besides PDT and EXTINF with its flags, the parse
state a run shares) filled in bulk, and builds a row's ``Segment`` the first
time someone indexes it, exactly the object the line-by-line parser would
have made. Every other segment (state tags, discontinuities, blank lines,
anything unusual) is stored built. *Plain* rows are the three-line ones.

Tables are views over an append-only store, so slicing (a refresh drops the
head of the window) is O(1), appending the new tail is O(new), and a
segment built through one view is the same object in every view of the store
made later (the refresh and the splice cache compare segments by identity).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import compress, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from manifests.playlist import Line, Segment

_MARKERS = itemgetter(1)
#: Builds row j of a store (see ColumnStore.build).
RowBuilder = Callable[["ColumnStore", int], "Segment"]
#: The parse state a run of plain rows shares: (discontinuity sequence, EXT-X-KEY,
#: EXT-X-MAP in force).
RunState = tuple[int, "Line | None", "Line | None"]


class ColumnStore:
    """The columns, one entry per row. ``segs[i]`` is the built Segment or None;
    ``uris[i]`` is None for a row stored built; ``tags[i]`` is a row's one other
    tag line (a marker, say) or None, ``flags[i]`` its (special, markers)."""

    __slots__ = ("build", "ctx", "extinfs", "flags", "msns", "pdt_lines", "pdts", "segs", "tags",
                 "uris")

    def __init__(self, build: RowBuilder) -> None:
        #: Makes row j's Segment from the columns (the parser's, ``playlist._build_row``).
        self.build = build
        self.segs: list[Segment | None] = []
        self.msns: list[int] = []
        self.pdts: list[datetime | None] = []
        self.pdt_lines: list[str | None] = []
        self.tags: list[str | None] = []
        self.flags: list[tuple[bool, bool] | None] = []
        self.extinfs: list[str | None] = []
        self.uris: list[str | None] = []
        self.ctx: list[RunState | None] = []

    def copy(self, start: int, stop: int) -> ColumnStore:
        out = ColumnStore(self.build)
        out.segs = self.segs[start:stop]
        out.msns = self.msns[start:stop]
        out.pdts = self.pdts[start:stop]
        out.pdt_lines = self.pdt_lines[start:stop]
        out.tags = self.tags[start:stop]
        out.flags = self.flags[start:stop]
        out.extinfs = self.extinfs[start:stop]
        out.uris = self.uris[start:stop]
        out.ctx = self.ctx[start:stop]
        return out

    def add_one(self, seg: Segment) -> None:
        self.segs.append(seg)
        self.msns.append(seg.msn)
        self.pdts.append(seg.pdt)
        self.pdt_lines.append(None)
        self.tags.append(None)
        self.flags.append(None)
        self.extinfs.append(None)
        self.uris.append(None)
        self.ctx.append(None)

    def add(self, segments: Sequence[Segment]) -> None:
        n = len(segments)
        self.segs.extend(segments)
        self.msns.extend(seg.msn for seg in segments)
        self.pdts.extend(seg.pdt for seg in segments)
        for column in (self.pdt_lines, self.tags, self.flags, self.extinfs, self.uris, self.ctx):
            column.extend(repeat(None, n))

    def add_plain(self, first_msn: int, pdts: list[datetime], pdt_lines: list[str],
                  tags: list[str | None], flags: list[tuple[bool, bool]], extinfs: list[str],
                  uris: list[str], state: RunState) -> None:
        n = len(pdts)
        self.segs.extend(repeat(None, n))
        self.msns.extend(range(first_msn, first_msn + n))
        self.pdts.extend(pdts)
        self.pdt_lines.extend(pdt_lines)
        self.tags.extend(tags)
        self.flags.extend(flags)
        self.extinfs.extend(extinfs)
        self.uris.extend(uris)
        self.ctx.extend(repeat(state, n))


def _never(store: ColumnStore, j: int) -> Segment:
    raise AssertionError("a table of built segments has no rows to build")


class TableBuilder:
    """Collects rows in order while a parse runs (built segments and plain runs)."""

    def __init__(self, build: RowBuilder) -> None:
        self._store = ColumnStore(build)
        #: MSNs of the segments (built or column rows) that carry ad markers, in order.
        self.marked: list[int] = []

    def add(self, segments: Sequence[Segment]) -> None:
        if segments:
            self._store.add(segments)
            self.marked.extend(seg.msn for seg in segments if seg.markers)

    def add_one(self, seg: Segment) -> None:
        self._store.add_one(seg)
        if seg.markers:
            self.marked.append(seg.msn)

    def add_plain(self, first_msn: int, pdts: list[datetime], pdt_lines: list[str],
                  tags: list[str | None], flags: list[tuple[bool, bool]], extinfs: list[str],
                  uris: list[str], state: RunState) -> None:
        """A run of column rows: each has exactly its PDT (``pdts``, parsed and
        aware), at most one other tag (``tags``, with its (special, markers)
        ``flags``), EXTINF and URI lines, and the run's shared parse ``state``."""
        if pdts:
            self._store.add_plain(first_msn, pdts, pdt_lines, tags, flags, extinfs, uris, state)
            if any(map(_MARKERS, flags)):
                self.marked.extend(compress(range(first_msn, first_msn + len(pdts)),
                                            map(_MARKERS, flags)))

    def table(self) -> SegmentTable:
        return SegmentTable(self._store, 0, len(self._store.segs))


class SegmentTable(Sequence["Segment"]):
    """The segments of one window, in order; see the module docstring."""

    __slots__ = ("_start", "_stop", "_store")

    def __init__(self, store: ColumnStore, start: int, stop: int) -> None:
        self._store = store
        self._start = start
        self._stop = stop

    @classmethod
    def of(cls, segments: Sequence[Segment]) -> SegmentTable:
        """A table over segments already built (a playlist made without columns)."""
        store = ColumnStore(_never)
        store.add(segments)
        return cls(store, 0, len(store.segs))

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, i: int) -> Segment: ...

    @overload
    def __getitem__(self, i: slice) -> SegmentTable: ...

    def __getitem__(self, i: int | slice) -> Segment | SegmentTable:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a SegmentTable slices with step 1 only")
            return SegmentTable(self._store, self._start + start,
                                self._start + max(start, stop))
        n = self._stop - self._start
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("segment index out of range")
        j = self._start + i
        seg = self._store.segs[j]
        return seg if seg is not None else self._build(j)

    def __iter__(self) -> Iterator[Segment]:
        segs = self._store.segs
        for j in range(self._start, self._stop):
            seg = segs[j]
            yield seg if seg is not None else self._build(j)

    def _build(self, j: int) -> Segment:
        """Row ``j``'s Segment: what the parse loop makes of such a segment."""
        s = self._store
        seg = s.build(s, j)
        s.segs[j] = seg
        return seg

    def msn(self, i: int) -> int:
        """Row ``i``'s media sequence number, without building it."""
        return self._store.msns[self._start + i]

    def pdt(self, i: int) -> datetime | None:
        """Row ``i``'s PDT (its segment's ``pdt``), without building it."""
        return self._store.pdts[self._start + i]

    def pending(self, i: int) -> tuple[int, datetime, tuple[str, ...], Line | None, Line | None] | None:
        """Row ``i``'s (MSN, PDT, lines, EXT-X-KEY, EXT-X-MAP) while it is not built
        yet (None once built, or for a row stored built): what the splice reads
        of a slot it replaces, without building the segment."""
        j = self._start + i
        s = self._store
        if s.segs[j] is not None:
            return None
        ctx = s.ctx[j]
        pdt = s.pdts[j]
        assert ctx is not None and pdt is not None
        return s.msns[j], pdt, self.raw(i), ctx[1], ctx[2]

    def columns(self, lo: int, hi: int) -> tuple[list[int], list[datetime], list[str], list[str | None],
                                                list[str], list[RunState]] | None:
        """The (MSN, PDT, PDT line, other tag, EXTINF, run state) columns of the
        column rows that open [lo, hi), built or not (a row's columns stay what
        its segment was built from); None when row ``lo`` is not a column row.
        Lets the splice replace a break's rows in one loop."""
        a, b = self._start + lo, self._start + hi
        s = self._store
        uris = s.uris[a:b]
        if None in uris:
            b = a + uris.index(None)
        if b <= a:
            return None
        return (s.msns[a:b], s.pdts[a:b], s.pdt_lines[a:b], s.tags[a:b],  # type: ignore[return-value]
                s.extinfs[a:b], s.ctx[a:b])

    def pending_tag(self, i: int) -> str | None:
        """Row ``i``'s one other tag line while the row is not built yet (None
        once built, or for a row without one): lets a reader that needs only
        the tag skip building the segment."""
        j = self._start + i
        s = self._store
        return s.tags[j] if s.segs[j] is None else None

    def pdts(self) -> list[datetime | None]:
        """Every row's PDT, without building a segment."""
        return self._store.pdts[self._start:self._stop]

    def raw(self, i: int) -> tuple[str, ...]:
        """Row ``i``'s lines (``Segment.raw``), without building it."""
        j = self._start + i
        s = self._store
        seg = s.segs[j]
        if seg is not None:
            return seg.raw
        tag = s.tags[j]
        if tag is None:
            return (s.pdt_lines[j], s.extinfs[j], s.uris[j])  # type: ignore[return-value]
        return (s.pdt_lines[j], tag, s.extinfs[j], s.uris[j])  # type: ignore[return-value]

    def plain(self, lo: int, hi: int) -> bool:
        """Are rows [lo, hi) all plain (three lines: PDT, EXTINF, URI)?"""
        a, b = self._start + lo, self._start + hi
        s = self._store
        if s.tags[a:b].count(None) != b - a:
            return False
        # No row stored built (its ctx is None): a run's rows share one state
        # object, which count() matches by identity; ``None in`` compares every
        # entry with None the slow way.
        ctx = s.ctx[a:b]
        return not ctx or ctx.count(ctx[0]) == b - a and ctx[0] is not None or None not in ctx

    def uris(self, lo: int, hi: int) -> list[str]:
        """The URI lines of plain rows [lo, hi)."""
        return self._store.uris[self._start + lo:self._start + hi]  # type: ignore[return-value]

    def plain_text(self, lo: int, hi: int, newline: str, prefix: str = "") -> list[str]:
        """Plain rows [lo, hi) each as its lines joined, in C, with ``prefix``
        before each URI (a relative URI's base directory)."""
        a, b = self._start + lo, self._start + hi
        s = self._store
        uris = s.uris[a:b]
        if prefix:
            uris = list(map(prefix.__add__, uris))  # type: ignore[arg-type]
        return list(map(newline.join, zip(s.pdt_lines[a:b], s.extinfs[a:b],  # type: ignore[arg-type]
                                          uris)))

    def extended(self, segments: Sequence[Segment]) -> SegmentTable:
        """This window followed by ``segments`` (built). Appends in place when no
        other view has grown the store past this one; copies (dropping the rows
        before this view) when this view starts past the store's middle or the
        store has grown elsewhere, so a sliding window's store stays bounded."""
        store = self._store
        if self._stop != len(store.segs) or self._start > len(store.segs) // 2:
            store = store.copy(self._start, self._stop)
            start = 0
        else:
            start = self._start
        store.add(segments)
        return SegmentTable(store, start, len(store.segs))
