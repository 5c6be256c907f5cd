"""A lossless, line-preserving model of HLS media playlists (RFC 8216bis 4.4).

Every line keeps its raw text, so ``render(parse(x)) == x`` byte for byte (BOM,
CRLF and a missing final newline included) and a tag the library does not know
passes through untouched. Only the tags the splice needs are interpreted.

A :class:`Segment` owns the lines from just after the previous segment's URI up
to and including its own URI: the tags that apply to it. Lines before the first
segment that are playlist tags stay in :attr:`MediaPlaylist.header`; lines after
the last URI are the :attr:`MediaPlaylist.trailer`.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import compress, repeat
from operator import attrgetter
from typing import cast

from manifests.columns import ColumnStore, SegmentTable, TableBuilder
from manifests.errors import ManifestError, PlaylistParseError
from manifests.timing import parse_duration, parse_pdt

# Tag names, literal (RFC 8216bis 4.4).
EXTM3U = "#EXTM3U"
EXTINF = "#EXTINF"
EXT_X_VERSION = "#EXT-X-VERSION"
EXT_X_TARGETDURATION = "#EXT-X-TARGETDURATION"
EXT_X_MEDIA_SEQUENCE = "#EXT-X-MEDIA-SEQUENCE"
EXT_X_DISCONTINUITY_SEQUENCE = "#EXT-X-DISCONTINUITY-SEQUENCE"
EXT_X_DISCONTINUITY = "#EXT-X-DISCONTINUITY"
EXT_X_PROGRAM_DATE_TIME = "#EXT-X-PROGRAM-DATE-TIME"
EXT_X_KEY = "#EXT-X-KEY"
EXT_X_MAP = "#EXT-X-MAP"
EXT_X_BYTERANGE = "#EXT-X-BYTERANGE"
EXT_X_GAP = "#EXT-X-GAP"
EXT_X_BITRATE = "#EXT-X-BITRATE"
EXT_X_DATERANGE = "#EXT-X-DATERANGE"
EXT_X_ENDLIST = "#EXT-X-ENDLIST"
EXT_X_PLAYLIST_TYPE = "#EXT-X-PLAYLIST-TYPE"
EXT_X_INDEPENDENT_SEGMENTS = "#EXT-X-INDEPENDENT-SEGMENTS"
EXT_X_START = "#EXT-X-START"
EXT_X_I_FRAMES_ONLY = "#EXT-X-I-FRAMES-ONLY"
EXT_X_DEFINE = "#EXT-X-DEFINE"
EXT_X_ALLOW_CACHE = "#EXT-X-ALLOW-CACHE"
# LL-HLS (RFC 8216bis 4.4.3.x): stripped until the stitcher serves LL-HLS.
EXT_X_SERVER_CONTROL = "#EXT-X-SERVER-CONTROL"
EXT_X_PART_INF = "#EXT-X-PART-INF"
EXT_X_PART = "#EXT-X-PART"
EXT_X_PRELOAD_HINT = "#EXT-X-PRELOAD-HINT"
EXT_X_RENDITION_REPORT = "#EXT-X-RENDITION-REPORT"
EXT_X_SKIP = "#EXT-X-SKIP"

PLAYLIST_TAGS = frozenset({
    EXTM3U, EXT_X_VERSION, EXT_X_TARGETDURATION, EXT_X_MEDIA_SEQUENCE,
    EXT_X_DISCONTINUITY_SEQUENCE, EXT_X_PLAYLIST_TYPE, EXT_X_INDEPENDENT_SEGMENTS,
    EXT_X_START, EXT_X_I_FRAMES_ONLY, EXT_X_DEFINE, EXT_X_ALLOW_CACHE,
    EXT_X_SERVER_CONTROL, EXT_X_PART_INF, EXT_X_ENDLIST,
})
LL_HLS_TAGS = frozenset({
    EXT_X_SERVER_CONTROL, EXT_X_PART_INF, EXT_X_PART, EXT_X_PRELOAD_HINT,
    EXT_X_RENDITION_REPORT, EXT_X_SKIP,
})


@dataclass(frozen=True, slots=True)
class Line:
    """One playlist line without its line terminator.

    ``tag`` is the literal tag name (``#EXT-X-KEY``) for tag lines, ``None`` for
    URIs, comments and blank lines; ``value`` is the text after the first colon.
    """

    text: str
    tag: str | None = None
    value: str | None = None

    @staticmethod
    def of(text: str) -> Line:
        if text.startswith("#EXT"):
            name, sep, value = text.partition(":")
            return Line(text, name, value if sep else None)
        return Line(text)

    @property
    def is_uri(self) -> bool:
        return bool(self.text) and not self.text.startswith("#") and not self.text.isspace()


#: Tags whose presence in a segment makes the splice look closer (ad markers,
#: LL-HLS, URIs in attributes, sequence numbers). Kept here so parsing can flag
#: such segments once and every later pass skips the plain ones.
AD_MARKER_TAGS = frozenset({
    "#EXT-X-CUE-OUT", "#EXT-X-CUE-OUT-CONT", "#EXT-X-CUE-IN", "#EXT-X-CUE", "#EXT-X-CUE-CONT",
    "#EXT-X-CUE-SPAN", "#EXT-OATCLS-SCTE35", "#EXT-X-SCTE35", "#EXT-SCTE35",
    "#EXT-X-SPLICEPOINT-SCTE35", "#EXT-X-ASSET", EXT_X_DATERANGE,
})
_SPECIAL_TAGS = AD_MARKER_TAGS | LL_HLS_TAGS | {EXT_X_KEY, EXT_X_MAP, EXT_X_DISCONTINUITY_SEQUENCE,
                                                EXT_X_MEDIA_SEQUENCE}

_MSN = attrgetter("msn")
_MARKERS = attrgetter("markers")
_EXTINF_PREFIX = EXTINF + ":"
_PDT_PREFIX = EXT_X_PROGRAM_DATE_TIME + ":"

# Exact-name dispatch codes for the parse loop (a dict, never a startswith chain).
_EXTINF, _PDT, _DISC, _KEY, _MAP, _GAP, _VARIANT, _PLAYLIST, _BYTERANGE, _SKIP = range(10)
_CODES: dict[str, int] = {
    EXTINF: _EXTINF, EXT_X_PROGRAM_DATE_TIME: _PDT, EXT_X_DISCONTINUITY: _DISC,
    EXT_X_BYTERANGE: _BYTERANGE, EXT_X_SKIP: _SKIP,
    EXT_X_KEY: _KEY, EXT_X_MAP: _MAP, EXT_X_GAP: _GAP,
    "#EXT-X-STREAM-INF": _VARIANT, "#EXT-X-I-FRAME-STREAM-INF": _VARIANT,
    **{tag: _PLAYLIST for tag in PLAYLIST_TAGS},
}


class Segment:
    """A media segment and the lines that apply to it (RFC 8216bis 4.4.4).

    ``raw`` holds the segment's lines as text (tags, comments, the URI last);
    :attr:`lines` gives them as :class:`Line` objects on demand. Instances are
    never mutated after parsing: an incremental refresh reuses them as they are.
    """

    __slots__ = (
        "_lines",
        "_memo",
        "byterange",
        "byterange_implicit",
        "discontinuity",
        "discontinuity_sequence",
        "duration",
        "gap",
        "key",
        "map",
        "markers",
        "msn",
        "pdt",
        "pdt_explicit",
        "raw",
        "special",
        "step",
        "uri",
    )

    def __init__(self, msn: int, duration: Fraction, uri: str, raw: tuple[str, ...], *,
                 discontinuity: bool = False, pdt: datetime | None = None,
                 pdt_explicit: bool = False, discontinuity_sequence: int = 0,
                 key: Line | None = None, map: Line | None = None, gap: bool = False,
                 special: bool = True, markers: bool = True,
                 step: timedelta | None = None, byterange: tuple[int, int] | None = None,
                 byterange_implicit: bool = False) -> None:
        self.msn = msn
        self.duration = duration
        self.uri = uri
        self.raw = raw
        self.discontinuity = discontinuity
        #: EXT-X-PROGRAM-DATE-TIME, explicit or derived from the previous one.
        self.pdt = pdt
        self.pdt_explicit = pdt_explicit
        #: This segment's discontinuity sequence number (the playlist's DSN plus
        #: the EXT-X-DISCONTINUITY tags up to and including this segment's).
        self.discontinuity_sequence = discontinuity_sequence
        #: The EXT-X-KEY / EXT-X-MAP lines in force for this segment (state tags).
        self.key = key
        self.map = map
        self.gap = gap
        #: False when the segment has only EXTINF/PDT/URI-free tags: renders verbatim.
        self.special = special
        #: True when the segment carries an ad-marker tag.
        self.markers = markers
        #: The duration as a timedelta (microseconds), for PDT arithmetic.
        self.step = step if step is not None else timedelta(
            microseconds=round(duration * 1_000_000))
        #: EXT-X-BYTERANGE resolved to (length, offset), the offset computed when
        #: the tag left it implicit (it then depends on the previous segment).
        self.byterange = byterange
        self.byterange_implicit = byterange_implicit
        self._lines: tuple[Line, ...] | None = None
        self._memo: dict[object, object] | None = None

    @classmethod
    def _parsed(cls, msn: int, duration: tuple[Fraction, timedelta], uri: str,
                raw: tuple[str, ...], discontinuity: bool, pdt: datetime | None,
                pdt_explicit: bool, discontinuity_sequence: int, key: Line | None,
                map: Line | None, gap: bool, special: bool, markers: bool,
                byterange: tuple[int, int] | None, byterange_implicit: bool) -> Segment:
        """The parse loop's constructor: positional, no defaults to resolve (it runs
        once per segment of a 2-hour window on a cold parse)."""
        seg = cls.__new__(cls)
        seg.msn = msn
        seg.duration, seg.step = duration
        seg.uri = uri
        seg.raw = raw
        seg.discontinuity = discontinuity
        seg.pdt = pdt
        seg.pdt_explicit = pdt_explicit
        seg.discontinuity_sequence = discontinuity_sequence
        seg.key = key
        seg.map = map
        seg.gap = gap
        seg.special = special
        seg.markers = markers
        seg.byterange = byterange
        seg.byterange_implicit = byterange_implicit
        seg._lines = None
        seg._memo = None
        return seg

    @property
    def memo(self) -> dict[object, object]:
        """Per-consumer memo (e.g. a rendered form); keyed by the consumer. Created
        on first use: most segments of a window never need one."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        return memo

    @property
    def lines(self) -> tuple[Line, ...]:
        if self._lines is None:
            self._lines = tuple(Line.of(text) for text in self.raw)
        return self._lines

    def tags(self, name: str) -> list[Line]:
        return [line for line in self.lines if line.tag == name]

    def has(self, name: str) -> bool:
        prefix = name + ":"
        return any(text == name or text.startswith(prefix) for text in self.raw)

    @property
    def end_pdt(self) -> datetime | None:
        return None if self.pdt is None else self.pdt + self.step

    def __repr__(self) -> str:
        return f"Segment(msn={self.msn}, duration={self.duration}, uri={self.uri!r})"


#: ``segments`` of a playlist parsed into columns, until someone asks for them.
class _Pending(tuple):  # type: ignore[type-arg]
    __slots__ = ()


_PENDING: tuple[Segment, ...] = _Pending()


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    header: tuple[Line, ...]
    #: Built from :attr:`rows` on first access when the parse kept columns (see
    #: :func:`_lazy_segments`); the hot paths (observe, splice, refresh) read
    #: :attr:`rows` and build only the segments they look at.
    segments: tuple[Segment, ...]
    trailer: tuple[Line, ...]
    target_duration: int | None
    media_sequence: int
    discontinuity_sequence: int
    endlist: bool
    playlist_type: str | None = None
    version: int | None = None
    newline: str = "\n"
    bom: bool = False
    final_newline: bool = True
    #: Lines that looked like segments but could not be (documentation elisions...).
    warnings: tuple[str, ...] = field(default=())
    #: MSNs of the segments that carry ad-marker tags (observe reads only these).
    marked: tuple[int, ...] = field(default=())
    _rows: SegmentTable | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of_rows(cls, rows: SegmentTable, header: tuple[Line, ...], trailer: tuple[Line, ...],
                target_duration: int | None, media_sequence: int, discontinuity_sequence: int,
                endlist: bool, playlist_type: str | None, version: int | None, newline: str,
                bom: bool, final_newline: bool, warnings: tuple[str, ...],
                marked: tuple[int, ...]) -> MediaPlaylist:
        """A playlist whose segments are the table's (built when first asked for)."""
        playlist = cls(header, _PENDING, trailer, target_duration, media_sequence,
                       discontinuity_sequence, endlist, playlist_type, version, newline, bom,
                       final_newline, warnings, marked)
        object.__setattr__(playlist, "_rows", rows)
        return playlist

    @property
    def rows(self) -> SegmentTable:
        """The segments as a :class:`~manifests.columns.SegmentTable` (the same
        objects :attr:`segments` holds, built only where indexed)."""
        rows = self._rows
        if rows is None:
            rows = SegmentTable.of(self.segments)
            object.__setattr__(self, "_rows", rows)
        return rows

    @property
    def lines(self) -> list[Line]:
        out = list(self.header)
        for seg in self.segments:
            out.extend(seg.lines)
        out.extend(self.trailer)
        return out

    @property
    def duration(self) -> Fraction:
        return sum((s.duration for s in self.segments), Fraction(0))

    def segment(self, msn: int) -> Segment | None:
        rows = self.rows
        # Not media_sequence: in a delta update the first listed segment comes later.
        i = msn - (rows[0].msn if rows else self.media_sequence)
        return rows[i] if 0 <= i < len(rows) else None

    @property
    def last_msn(self) -> int:
        rows = self.rows
        if rows:
            return rows[-1].msn
        return self.media_sequence - 1


_SEGMENTS_SLOT = MediaPlaylist.__dict__["segments"]


def _lazy_segments(playlist: MediaPlaylist) -> tuple[Segment, ...]:
    """``MediaPlaylist.segments``: the stored tuple, or the columns' segments
    built once, the first time a consumer outside the hot paths asks."""
    value: tuple[Segment, ...] = _SEGMENTS_SLOT.__get__(playlist, MediaPlaylist)
    if value is _PENDING:
        assert playlist._rows is not None
        value = tuple(playlist._rows)
        _SEGMENTS_SLOT.__set__(playlist, value)
    return value


# The dataclass keeps ``segments`` as a field (constructor, ``replace``, equality,
# repr all unchanged); reading it goes through _lazy_segments.
MediaPlaylist.segments = property(  # type: ignore[assignment,misc]
    _lazy_segments, _SEGMENTS_SLOT.__set__)


def split_lines(text: str) -> tuple[list[str], str, bool, bool]:
    """Split keeping what rendering needs: (lines, newline, bom, final_newline)."""
    bom = text.startswith("\ufeff")
    if bom:
        text = text[1:]
    newline = "\r\n" if "\r\n" in text else "\n"
    final_newline = text.endswith("\n")
    body = text.removesuffix(newline)
    if final_newline and not text.endswith(newline):  # mixed endings: a bare final LF
        body = text[:-1]
    lines = body.split(newline) if body else []
    return lines, newline, bom, final_newline


def is_playlist_text(text: str) -> bool:
    return text.lstrip("\ufeff").lstrip().startswith(EXTM3U)


_DURATIONS: dict[str, tuple[Fraction, timedelta]] = {}


def _duration(text: str) -> tuple[Fraction, timedelta] | None:
    """EXTINF durations repeat (``2.000``): parse each distinct text once, keyed by
    the text (hashing a Fraction costs more than parsing the line)."""
    value = _DURATIONS.get(text)
    if value is None:
        duration = parse_duration(text)
        if duration is None:
            return None
        value = (duration, timedelta(microseconds=round(duration * 1_000_000)))
        if len(_DURATIONS) < 4096:
            _DURATIONS[text] = value
    return value


#: Whole EXTINF lines (``#EXTINF:2.000,``) repeat even more than their durations.
_EXTINF_LINES: dict[str, tuple[Fraction, timedelta]] = {}


def _extinf_duration(line: str) -> tuple[Fraction, timedelta] | None:
    """The duration of an ``#EXTINF:`` line (text before the first comma)."""
    comma = line.find(",", 8)
    value = _duration(line[8:] if comma < 0 else line[8:comma])
    if value is not None and len(_EXTINF_LINES) < 4096:
        _EXTINF_LINES[line] = value
    return value


def extinf_duration(line: str) -> tuple[Fraction, timedelta] | None:
    """(duration, step) of an ``#EXTINF:`` line, None when it has no valid one."""
    return _EXTINF_LINES.get(line) or _extinf_duration(line)


@dataclass
class ParseState:
    """Where a parse stands after its last segment: lets a refresh parse only the tail."""

    media_sequence: int = 0
    discontinuity_sequence: int = 0
    next_msn: int = 0
    disc_count: int = 0
    key: Line | None = None
    map: Line | None = None
    prev_pdt: datetime | None = None
    prev_step: timedelta = timedelta(0)
    #: (URI, next byte) after the previous segment's sub-range, for implicit offsets.
    range_end: tuple[str, int] | None = None
    target: int | None = None
    endlist: bool = False
    playlist_type: str | None = None
    version: int | None = None


def parse_media(text: str, *, strict_header: bool = True) -> MediaPlaylist:
    """Parse a media playlist, leniently: unknown tags and comments are kept.

    Raises :class:`PlaylistParseError` when the text is not a playlist (no
    ``#EXTM3U`` when ``strict_header``), is a multivariant playlist, or has a
    segment URI without a usable EXTINF. Fragments from documentation (no
    header) parse with ``strict_header=False``.
    """
    bom = text.startswith("\ufeff")
    body = text[1:] if bom else text
    if strict_header and not body.startswith(EXTM3U):
        raise PlaylistParseError("not an HLS playlist: first line is not #EXTM3U")
    state = ParseState()
    # "\r" first: one memchr, where the two-character search stops at every LF.
    if "\r" in body and "\r\n" in body:
        raw_lines, newline, bom, final_newline = split_lines(text)
        header, segments, trailer, warnings = parse_lines(raw_lines, state, in_header=True,
                                                          strict=strict_header)
        return MediaPlaylist(
            header=header, segments=tuple(segments), trailer=trailer,
            target_duration=state.target, media_sequence=state.media_sequence,
            discontinuity_sequence=state.discontinuity_sequence, endlist=state.endlist,
            playlist_type=state.playlist_type, version=state.version, newline=newline, bom=bom,
            final_newline=final_newline, warnings=tuple(warnings),
            marked=tuple(compress(map(_MSN, segments), map(_MARKERS, segments))),
        )
    rows = TableBuilder(_build_row)
    header, trailer, warnings = _parse_text(body, state, rows, strict=strict_header)
    return MediaPlaylist.of_rows(
        rows.table(), header, trailer, state.target, state.media_sequence,
        state.discontinuity_sequence, state.endlist, state.playlist_type, state.version, "\n",
        bom, body.endswith("\n"), tuple(warnings), tuple(rows.marked))


#: A plain segment, LF-terminated lines: a PDT, at most one other tag, EXTINF, a
#: URI with no surrounding blanks. Splitting the text on it runs in C; whatever
#: lies between two matches goes through :func:`parse_lines`. (``.`` is
#: ``[^\n]`` without DOTALL, and matched by a faster opcode than the class;
#: a segment without PDT is left between matches, as it is never a column row.)
_PLAIN_SEGMENT = re.compile(
    r"^(#EXT-X-PROGRAM-DATE-TIME:.*)\n"
    r"(?:(#EXT(?!INF[:\n]|-X-PROGRAM-DATE-TIME).*)\n)?"
    r"(#EXTINF:.*)\n"
    r"([^#\s](?:.*\S)?)\n", re.MULTILINE)
_GROUPS = 4


_PDT_VALUE = operator.itemgetter(slice(len(_PDT_PREFIX), None))


def _parse_text(body: str, state: ParseState, rows: TableBuilder, *, strict: bool,
                ) -> tuple[tuple[Line, ...], tuple[Line, ...], list[str]]:
    """:func:`parse_lines` over LF text, with plain segments taken whole; the
    segments go to ``rows``, the rest is returned (header, trailer, warnings).

    The result is exactly what ``parse_lines`` gives for the same lines: a
    plain segment sets no parse state but the PDT chain, and every other line
    (header, trailer, segments with state tags, anything unusual) is parsed
    by ``parse_lines`` itself, together with the match that follows it, so it
    always starts and ends on a segment boundary. Runs of the plainest
    segments (a PDT ``fromisoformat`` reads, at most one tag the loop would not
    interpret, EXTINF, URI: a live window's content and marker segments) are
    found and stored as columns in bulk, in C; only the other matches take a
    Python-level step each.
    """
    parts = _PLAIN_SEGMENT.split(body)
    matches = len(parts) // (_GROUPS + 1)
    if not matches:
        head, segments, tail, notes = parse_lines(split_lines(body)[0], state, in_header=True,
                                                  strict=strict)
        rows.add(segments)
        return head, tail, notes
    header: tuple[Line, ...] = ()
    warnings: list[str] = []
    in_header = True
    codes = _CODES
    special_tags = _SPECIAL_TAGS
    extinf_lines = _EXTINF_LINES
    fromisoformat = datetime.fromisoformat
    new_segment = Segment._parsed
    add_one = rows.add_one
    next_msn = state.next_msn
    prev_pdt, prev_step = state.prev_pdt, state.prev_step
    dsn, key, map_line = state.discontinuity_sequence + state.disc_count, state.key, state.map
    step = _GROUPS + 1
    gaps, pdt_lines, tag_lines = parts[0:-1:step], parts[1::step], parts[2::step]
    extinfs, uris = parts[3::step], parts[4::step]
    # Matches that are not a column row: text before them, another tag, an
    # EXTINF without a valid duration. Found in C; few in a live window.
    everyone = range(matches)
    odd = set(compress(everyone, gaps))
    invalid = {text for text in set(extinfs) if extinf_duration(text) is None}
    if invalid:
        odd.update(compress(everyone, map(invalid.__contains__, extinfs)))
    # The other tag line a row may have, each distinct text classified once, as
    # the loop below does it (live feeds repeat their marker lines): playlist
    # tags and the ones the loop interprets make the row odd.
    kinds: dict[str | None, tuple[bool, bool] | None] = {None: (False, False)}
    for text in set(tag_lines):
        if text is not None:
            colon = text.find(":")
            name = text if colon < 0 else text[:colon]
            kinds[text] = (None if name in codes
                           else (True, name in AD_MARKER_TAGS) if name in special_tags
                           else (True, False) if "URI=" in text else (False, False))
    if len(kinds) > 1:
        flags = list(map(kinds.__getitem__, tag_lines))
        if None in kinds.values():  # a tag the loop interprets is there (asking the
            # few kinds, not every row: ``None in`` compares each tuple the slow way)
            odd.update(compress(everyone, map(operator.not_, flags)))
    else:
        flags = list(repeat(kinds[None], matches))
    todo: list[int | tuple[int, int, list[datetime]]] = []  # in order: a match, or a run
    begin = 0
    for stop in [*sorted(odd), matches]:
        if stop > begin:
            try:
                pdts = list(map(fromisoformat, map(_PDT_VALUE, pdt_lines[begin:stop])))
            except ValueError:
                todo.extend(range(begin, stop))  # parse_pdt's forms: one by one
            else:
                if _naive_among(pdts):
                    pdts = [p if p.tzinfo is not None else p.replace(tzinfo=UTC) for p in pdts]
                todo.append((begin, stop, pdts))
        if stop < matches:
            todo.append(stop)
        begin = stop + 1
    for j in todo:
        if not isinstance(j, int):
            begin, stop, pdts = j
            rows.add_plain(next_msn, pdts, pdt_lines[begin:stop], tag_lines[begin:stop],
                           cast(list[tuple[bool, bool]], flags[begin:stop]),
                           extinfs[begin:stop], uris[begin:stop],
                           (dsn, key, map_line))
            next_msn += stop - begin
            in_header = False
            last = extinf_duration(extinfs[stop - 1])
            assert last is not None
            prev_pdt, prev_step = pdts[-1], last[1]
            continue
        gap, pdt_line, tag_line, extinf, uri = (gaps[j], pdt_lines[j], tag_lines[j],
                                                extinfs[j], uris[j])
        special = markers = False
        duration = None
        if not gap:
            if tag_line is not None:
                colon = tag_line.find(":")
                name = tag_line if colon < 0 else tag_line[:colon]
                if name not in codes:
                    if name in special_tags:
                        special = True
                        markers = name in AD_MARKER_TAGS
                    elif "URI=" in tag_line:
                        special = True
                    gap = None  # plain so far
            else:
                gap = None
            if gap is None:
                duration = extinf_lines.get(extinf) or _extinf_duration(extinf)
        if duration is None:
            # Not plain (or an invalid EXTINF, which parse_lines reports).
            lines = (gap or "").split("\n")[:-1]
            lines.extend(line for line in (pdt_line, tag_line, extinf, uri) if line is not None)
            state.next_msn, state.prev_pdt, state.prev_step = next_msn, prev_pdt, prev_step
            head, more, _trailer, notes = parse_lines(lines, state, in_header=in_header,
                                                      strict=strict)
            if in_header:
                header = head
            in_header = False
            rows.add(more)
            warnings.extend(notes)
            next_msn, prev_pdt, prev_step = state.next_msn, state.prev_pdt, state.prev_step
            dsn, key = state.discontinuity_sequence + state.disc_count, state.key
            map_line = state.map
            continue
        in_header = False
        pdt: datetime | None = None
        if pdt_line is not None:
            value = pdt_line[25:]
            try:
                pdt = fromisoformat(value)
            except ValueError:
                pdt = parse_pdt(value)
                if pdt is None:
                    warnings.append(_bad_pdt(value))
            else:
                if pdt.tzinfo is None:
                    pdt = pdt.replace(tzinfo=UTC)
        explicit = pdt is not None
        if pdt is None and prev_pdt is not None:
            pdt = prev_pdt + prev_step
        raw: tuple[str, ...]
        if pdt_line is None:
            raw = (extinf, uri) if tag_line is None else (tag_line, extinf, uri)
        else:
            raw = (pdt_line, extinf, uri) if tag_line is None else (pdt_line, tag_line, extinf, uri)
        add_one(new_segment(next_msn, duration, uri, raw, False, pdt, explicit, dsn, key,
                            map_line, False, special, markers, None, False))
        next_msn += 1
        prev_pdt, prev_step = pdt, duration[1]
    state.next_msn, state.prev_pdt, state.prev_step = next_msn, prev_pdt, prev_step
    rest = parts[-1]
    lines = rest[:-1].split("\n") if rest.endswith("\n") else rest.split("\n") if rest else []
    head, more, trailer, notes = parse_lines(lines, state, in_header=in_header, strict=strict)
    if in_header:
        header = head
    rows.add(more)
    warnings.extend(notes)
    return header, trailer, warnings


def _bad_pdt(value: str) -> str:
    """The warning for an EXT-X-PROGRAM-DATE-TIME no ISO 8601 form reads: the line
    passes through as it came (invariant 6), the segment's date is derived from the
    one before it (none after a discontinuity)."""
    return f"malformed EXT-X-PROGRAM-DATE-TIME {value[:80]!r}: its date derived, if it can be"


def _naive_among(pdts: list[datetime]) -> bool:
    """Is any of ``pdts`` (not empty) naive? When the first is aware, min()
    compares every other one with an aware one, and an aware and a naive
    datetime do not compare: one C pass, a fifth of reading each tzinfo."""
    if pdts[0].tzinfo is None:
        return True
    try:
        min(pdts)
    except TypeError:
        return True
    return False


def _build_row(store: ColumnStore, j: int) -> Segment:
    """Row ``j`` of a column store as the Segment the parse loop would have made
    of it (a plain or one-tag segment with an explicit PDT: see _parse_text)."""
    tag = store.tags[j]
    extinf = store.extinfs[j]
    uri = store.uris[j]
    pdt_line = store.pdt_lines[j]
    dsn, key, map_line = store.ctx[j]  # type: ignore[misc]
    special, markers = store.flags[j]  # type: ignore[misc]
    return Segment._parsed(
        store.msns[j], _EXTINF_LINES.get(extinf) or _extinf_duration(extinf),  # type: ignore[arg-type]
        uri, (pdt_line, extinf, uri) if tag is None else (pdt_line, tag, extinf, uri),  # type: ignore[arg-type]
        False, store.pdts[j], True, dsn, key, map_line, False, special, markers, None, False)


def parse_lines(raw_lines: list[str], state: ParseState, *, in_header: bool, strict: bool = True,
                ) -> tuple[tuple[Line, ...], list[Segment], tuple[Line, ...], list[str]]:
    """The parse loop; continues from ``state`` (for incremental refreshes).

    Returns (header lines, segments, trailer lines, warnings) and leaves
    ``state`` describing the position after the last segment.

    One pass over the lines. EXTINF and EXT-X-PROGRAM-DATE-TIME, two of the
    three lines of almost every segment, are recognised by their exact
    ``name:`` prefix before anything else; every other tag is dispatched on
    its exact name. The per-segment state lives in locals (written back to
    ``state`` at the end): a cold parse of a 2-hour window runs this 10,000+
    times.
    """
    header: list[Line] = []
    segments: list[Segment] = []
    warnings: list[str] = []
    start = 0  # index of the first line of the pending segment
    duration: tuple[Fraction, timedelta] | None = None
    discontinuity = gap = special = markers = False
    pdt_text: str | None = None
    range_text: str | None = None
    codes = _CODES
    durations = _DURATIONS
    fromisoformat = datetime.fromisoformat
    new_segment = Segment._parsed
    append = segments.append
    next_msn, disc_count = state.next_msn, state.disc_count
    dsn = state.discontinuity_sequence
    key, map_line = state.key, state.map
    prev_pdt, prev_step = state.prev_pdt, state.prev_step
    for i, raw in enumerate(raw_lines):
        if raw.startswith(_EXTINF_PREFIX):
            in_header = False
            if duration is not None:
                # The previous EXTINF never got its URI (a truncated or doctored
                # playlist): say so rather than give its segment this duration.
                warnings.append(f"EXTINF without a URI before {raw!r}")
            comma = raw.find(",", 8)
            text = raw[8:] if comma < 0 else raw[8:comma]
            duration = durations.get(text) or _duration(text)
            if duration is None:
                raise PlaylistParseError(f"EXTINF without a valid duration: {raw!r}")
            continue
        if raw.startswith(_PDT_PREFIX):
            in_header = False
            pdt_text = raw[25:]
            continue
        if not raw or raw[0] == "#":
            if not raw or not raw.startswith("#EXT"):
                if in_header:
                    header.append(Line(raw))
                    start = i + 1
                continue
            colon = raw.find(":")
            name = raw if colon < 0 else raw[:colon]
            code = codes.get(name)
            if code == _PLAYLIST:
                value = None if colon < 0 else raw[colon + 1:]
                state.next_msn = next_msn
                _playlist_tag(name, value, state)
                next_msn, dsn = state.next_msn, state.discontinuity_sequence
                if in_header:
                    header.append(Line(raw, name, value))
                    start = i + 1
                else:
                    special = True
                continue
            in_header = False
            if code == _EXTINF:  # "#EXTINF" without a colon
                raise PlaylistParseError(f"EXTINF without a valid duration: {raw!r}")
            if code == _PDT:
                pdt_text = raw[colon + 1:]
            elif code == _DISC:
                discontinuity = True
            elif code == _KEY:
                key = Line(raw, name, raw[colon + 1:])
                special = True
            elif code == _MAP:
                map_line = Line(raw, name, raw[colon + 1:])
                special = True
            elif code == _GAP:
                gap = True
            elif code == _BYTERANGE:
                range_text = raw[colon + 1:]
                special = True
            elif code == _SKIP:
                # A delta update (RFC 8216bis 4.4.5.2): the listed segments start
                # SKIPPED-SEGMENTS after EXT-X-MEDIA-SEQUENCE.
                next_msn += _skipped(raw[colon + 1:])
                special = True
            elif code == _VARIANT:
                raise PlaylistParseError(
                    "multivariant playlist where a media playlist was expected")
            elif name in _SPECIAL_TAGS:
                special = True
                if name in AD_MARKER_TAGS:
                    markers = True
            elif "URI=" in raw:
                special = True
            continue
        if raw.isspace():
            if in_header:
                header.append(Line(raw))
                start = i + 1
            continue
        # A URI line closes a segment.
        in_header = False
        if duration is None:
            if strict:
                raise PlaylistParseError(f"segment URI without EXTINF: {raw!r}")
            # Documentation fragments elide with '...' lines: keep them, not a segment.
            warnings.append(f"line without EXTINF kept as text: {raw!r}")
            continue
        if discontinuity:
            disc_count += 1
        pdt: datetime | None = None
        explicit = False
        if pdt_text is not None:
            try:
                pdt = fromisoformat(pdt_text)
            except ValueError:
                pdt = parse_pdt(pdt_text)
                if pdt is None:
                    warnings.append(_bad_pdt(pdt_text))
            else:
                if pdt.tzinfo is None:
                    pdt = pdt.replace(tzinfo=UTC)
            explicit = pdt is not None
        if pdt is None and prev_pdt is not None and not discontinuity:
            pdt = prev_pdt + prev_step
        byterange, implicit = None, False
        uri = raw.strip()
        if range_text is not None:
            byterange, implicit = _byterange(range_text, uri, state)
        append(new_segment(
            next_msn, duration, uri, tuple(raw_lines[start:i + 1]), discontinuity, pdt,
            explicit, dsn + disc_count, key, map_line, gap, special, markers, byterange,
            implicit))
        next_msn += 1
        prev_pdt, prev_step = pdt, duration[1]
        start = i + 1
        duration, discontinuity, gap, special, markers = None, False, False, False, False
        pdt_text = range_text = None
    state.next_msn, state.disc_count = next_msn, disc_count
    state.key, state.map = key, map_line
    state.prev_pdt, state.prev_step = prev_pdt, prev_step
    if duration is not None:
        warnings.append("EXTINF without a URI at the end of the playlist")
    trailer = tuple(Line.of(text) for text in raw_lines[start:]) if not in_header else ()
    return tuple(header), segments, trailer, warnings


def _skipped(value: str) -> int:
    from manifests.attributes import AttributeList

    try:
        return max(0, AttributeList.parse(value).integer("SKIPPED-SEGMENTS") or 0)
    except ManifestError:
        return 0


def _byterange(text: str, uri: str, state: ParseState) -> tuple[tuple[int, int] | None, bool]:
    """``<n>[@<o>]`` (RFC 8216bis 4.4.4.2); an absent offset continues the previous
    segment's sub-range of the same resource."""
    length_text, at, offset_text = text.strip().partition("@")
    try:
        length = int(length_text)
        offset = int(offset_text) if at else None
    except ValueError:
        state.range_end = None
        return None, False
    implicit = offset is None
    if offset is None:
        prev = state.range_end
        if prev is None or prev[0] != uri:
            # Nothing before it in this playlist to continue: unknowable here, so
            # the line is left exactly as the origin wrote it.
            state.range_end = None
            return None, False
        offset = prev[1]
    state.range_end = (uri, offset + length)
    return (length, offset), implicit


def _playlist_tag(name: str, value: str | None, state: ParseState) -> None:
    if name == EXT_X_TARGETDURATION:
        state.target = _int(value)
    elif name == EXT_X_MEDIA_SEQUENCE:
        state.media_sequence = state.next_msn = _int(value) or 0
    elif name == EXT_X_DISCONTINUITY_SEQUENCE:
        state.discontinuity_sequence = _int(value) or 0
    elif name == EXT_X_ENDLIST:
        state.endlist = True
    elif name == EXT_X_PLAYLIST_TYPE:
        state.playlist_type = (value or "").strip()
    elif name == EXT_X_VERSION:
        state.version = _int(value)


def render_lines(lines: list[str], *, newline: str = "\n", bom: bool = False,
                 final_newline: bool = True) -> str:
    # The final newline joined in (a copy of the list), not appended to the text
    # (a copy of a 2-hour window's 400 KB).
    body = newline.join([*lines, ""] if final_newline and lines else lines)
    if final_newline and not lines:
        body = newline
    return "\ufeff" + body if bom else body


def render(playlist: MediaPlaylist) -> str:
    """Serialize: the exact inverse of :func:`parse_media` for an untouched playlist."""
    out = [line.text for line in playlist.header]
    rows = playlist.rows
    for i in range(len(rows)):
        out.extend(rows.raw(i))
    out.extend(line.text for line in playlist.trailer)
    return render_lines(out, newline=playlist.newline, bom=playlist.bom,
                        final_newline=playlist.final_newline)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
