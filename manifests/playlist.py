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

from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction

from manifests.errors import PlaylistParseError
from manifests.timing import add_seconds, parse_duration, parse_pdt

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


@dataclass(frozen=True, slots=True)
class Segment:
    """A media segment and the lines that apply to it (RFC 8216bis 4.4.4)."""

    msn: int
    duration: Fraction
    uri: str
    lines: tuple[Line, ...]
    discontinuity: bool = False
    #: EXT-X-PROGRAM-DATE-TIME, explicit or derived from the previous one.
    pdt: datetime | None = None
    pdt_explicit: bool = False
    #: Number of EXT-X-DISCONTINUITY tags since the playlist's first segment.
    discontinuity_sequence: int = 0
    #: The EXT-X-KEY / EXT-X-MAP lines in force for this segment (state tags).
    key: Line | None = None
    map: Line | None = None
    gap: bool = False

    def tags(self, name: str) -> list[Line]:
        return [line for line in self.lines if line.tag == name]

    def has(self, name: str) -> bool:
        return any(line.tag == name for line in self.lines)

    @property
    def end_pdt(self) -> datetime | None:
        return None if self.pdt is None else add_seconds(self.pdt, self.duration)


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    header: tuple[Line, ...]
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
    #: Lines that looked like segments but could not be (a URI with no EXTINF...).
    warnings: tuple[str, ...] = field(default=())

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
        i = msn - self.media_sequence
        return self.segments[i] if 0 <= i < len(self.segments) else None

    @property
    def last_msn(self) -> int:
        return self.media_sequence + len(self.segments) - 1


def split_lines(text: str) -> tuple[list[str], str, bool, bool]:
    """Split keeping what rendering needs: (lines, newline, bom, final_newline)."""
    bom = text.startswith("\ufeff")
    if bom:
        text = text[1:]
    newline = "\r\n" if "\r\n" in text else "\n"
    final_newline = text.endswith("\n")
    body = text[: -len(newline)] if text.endswith(newline) else text
    if final_newline and not text.endswith(newline):  # mixed endings: a bare final LF
        body = text[:-1]
    lines = body.split(newline) if body else []
    return lines, newline, bom, final_newline


def is_playlist_text(text: str) -> bool:
    return text.lstrip("\ufeff").lstrip().startswith(EXTM3U)


def parse_media(text: str, *, strict_header: bool = True) -> MediaPlaylist:
    """Parse a media playlist, leniently: unknown tags and comments are kept.

    Raises :class:`PlaylistParseError` when the text is not a playlist (no
    ``#EXTM3U`` when ``strict_header``), is a multivariant playlist, or has a
    segment URI without a usable EXTINF. Fragments from documentation (no
    header) parse with ``strict_header=False``.
    """
    raw_lines, newline, bom, final_newline = split_lines(text)
    if strict_header and (not raw_lines or not raw_lines[0].startswith(EXTM3U)):
        raise PlaylistParseError("not an HLS playlist: first line is not #EXTM3U")

    header: list[Line] = []
    segments: list[Segment] = []
    pending: list[Line] = []
    target: int | None = None
    media_sequence = 0
    dsn = 0
    endlist = False
    playlist_type: str | None = None
    version: int | None = None
    in_header = True

    duration: Fraction | None = None
    discontinuity = False
    gap = False
    pdt: datetime | None = None
    pdt_explicit = False
    key: Line | None = None
    map_: Line | None = None
    disc_count = 0
    prev: Segment | None = None
    warnings: list[str] = []

    for raw in raw_lines:
        line = Line.of(raw)
        tag = line.tag
        if tag is not None:
            value = line.value
            if tag in PLAYLIST_TAGS:
                if tag == EXT_X_TARGETDURATION:
                    target = _int(value)
                elif tag == EXT_X_MEDIA_SEQUENCE:
                    media_sequence = _int(value) or 0
                elif tag == EXT_X_DISCONTINUITY_SEQUENCE:
                    dsn = _int(value) or 0
                elif tag == EXT_X_ENDLIST:
                    endlist = True
                elif tag == EXT_X_PLAYLIST_TYPE:
                    playlist_type = (value or "").strip()
                elif tag == EXT_X_VERSION:
                    version = _int(value)
                elif tag == "#EXT-X-STREAM-INF" or tag == "#EXT-X-MEDIA":
                    pass
                if in_header:
                    header.append(line)
                else:
                    pending.append(line)
                continue
            if tag in ("#EXT-X-STREAM-INF", "#EXT-X-I-FRAME-STREAM-INF"):
                raise PlaylistParseError("multivariant playlist where a media playlist was expected")
            in_header = False
            pending.append(line)
            if tag == EXTINF:
                duration = parse_duration((value or "").partition(",")[0])
                if duration is None:
                    raise PlaylistParseError(f"EXTINF without a valid duration: {raw!r}")
            elif tag == EXT_X_DISCONTINUITY:
                discontinuity = True
            elif tag == EXT_X_PROGRAM_DATE_TIME:
                parsed = parse_pdt(value or "")
                if parsed is not None:
                    pdt, pdt_explicit = parsed, True
            elif tag == EXT_X_KEY:
                key = line
            elif tag == EXT_X_MAP:
                map_ = line
            elif tag == EXT_X_GAP:
                gap = True
            continue
        if not line.is_uri:
            (header if in_header else pending).append(line)
            continue
        # A URI line closes a segment.
        in_header = False
        pending.append(line)
        if duration is None:
            if strict_header:
                raise PlaylistParseError(f"segment URI without EXTINF: {raw!r}")
            # Documentation fragments elide with '...' lines: keep them, not a segment.
            warnings.append(f"line without EXTINF kept as text: {raw!r}")
            continue
        if discontinuity:
            disc_count += 1
        if pdt is None and prev is not None and prev.pdt is not None and not discontinuity:
            pdt = add_seconds(prev.pdt, prev.duration)
        seg = Segment(
            msn=media_sequence + len(segments), duration=duration, uri=raw.strip(),
            lines=tuple(pending), discontinuity=discontinuity, pdt=pdt,
            pdt_explicit=pdt_explicit, discontinuity_sequence=dsn + disc_count,
            key=key, map=map_, gap=gap,
        )
        segments.append(seg)
        prev = seg
        pending = []
        duration, discontinuity, gap, pdt, pdt_explicit = None, False, False, None, False

    return MediaPlaylist(
        header=tuple(header), segments=tuple(segments), trailer=tuple(pending),
        target_duration=target, media_sequence=media_sequence, discontinuity_sequence=dsn,
        endlist=endlist, playlist_type=playlist_type, version=version, newline=newline,
        bom=bom, final_newline=final_newline, warnings=tuple(warnings),
    )


def render_lines(lines: list[str], *, newline: str = "\n", bom: bool = False,
                 final_newline: bool = True) -> str:
    body = newline.join(lines)
    if final_newline:
        body += newline
    return ("\ufeff" if bom else "") + body


def render(playlist: MediaPlaylist) -> str:
    """Serialize: the exact inverse of :func:`parse_media` for an untouched playlist."""
    return render_lines([line.text for line in playlist.lines], newline=playlist.newline,
                        bom=playlist.bom, final_newline=playlist.final_newline)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
