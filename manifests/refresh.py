"""Incremental refresh: a reload that adds one segment costs one segment's work.

A live origin's next playlist is usually the previous one with a few segments
gone from the head, a few added at the tail and a new header. The
:class:`IncrementalParser` checks exactly that (one ``startswith`` over the
unchanged middle, at C speed) and then parses only the header and the new
tail, reusing the previous :class:`~manifests.playlist.Segment` objects, so
everything memoised on them (rendered forms) stays valid. Anything else (a
header that carries segment tags, an inconsistent discontinuity sequence, a
changed line ending) falls back to a full parse: the result is always what
:func:`~manifests.playlist.parse_media` would return, but for its warnings, which
are the new lines' only (the rest were reported when first read).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import timedelta

from manifests.playlist import (
    MediaPlaylist,
    ParseState,
    Segment,
    parse_lines,
    parse_media,
    split_lines,
)

#: A playlist header longer than this is not a plain slide (we search only here).
_MAX_HEADER = 8192


@dataclass
class _Previous:
    text: str
    playlist: MediaPlaylist
    #: Character offset where segment i's lines start, for the first few segments
    #: only (extended on demand): a refresh looks at most 64 segments in.
    starts: list[int]
    trailer_offset: int
    state: ParseState

    def offset(self, i: int) -> int:
        starts = self.starts
        rows = self.playlist.rows
        nl = len(self.playlist.newline)
        while len(starts) <= i:
            raw = rows.raw(len(starts) - 1)
            starts.append(starts[-1] + sum(map(len, raw)) + nl * len(raw))
        return starts[i]


class IncrementalParser:
    """Parses successive reloads of one media playlist URL."""

    def __init__(self) -> None:
        self._prev: _Previous | None = None
        self.full_parses = 0
        self.incremental_parses = 0

    def parse(self, text: str) -> MediaPlaylist:
        prev = self._prev
        if prev is not None:
            if text == prev.text:
                return prev.playlist
            result = self._incremental(prev, text)
            if result is not None:
                self.incremental_parses += 1
                return result
        self.full_parses += 1
        playlist = parse_media(text)
        nl = len(playlist.newline)
        first = len("\ufeff") if playlist.bom else 0
        first += sum(len(line.text) + nl for line in playlist.header)
        self._remember(text, playlist, first)
        return playlist

    def _remember(self, text: str, playlist: MediaPlaylist, first: int) -> None:
        """Record where the first segment starts (``first``) and the trailer begins.

        Counted back from the end, so the work does not grow with the window: a
        cold parse of a 2-hour window need not measure 3,600 segments.
        """
        nl = len(playlist.newline)
        trailer_offset = len(text) + (0 if playlist.final_newline else nl) - sum(
            len(line.text) + nl for line in playlist.trailer)
        rows = playlist.rows
        last = rows[-1] if rows else None
        state = ParseState(
            media_sequence=playlist.media_sequence,
            discontinuity_sequence=playlist.discontinuity_sequence,
            next_msn=playlist.last_msn + 1,
            disc_count=(last.discontinuity_sequence - playlist.discontinuity_sequence)
            if last else 0,
            key=last.key if last else None,
            map=last.map if last else None,
            prev_pdt=last.pdt if last else None,
            prev_step=last.step if last else timedelta(0),
            range_end=_range_end(last) if last else None,
            target=playlist.target_duration, endlist=playlist.endlist,
            playlist_type=playlist.playlist_type, version=playlist.version)
        self._prev = _Previous(text, playlist, [first], trailer_offset, state)

    def _incremental(self, prev: _Previous, text: str) -> MediaPlaylist | None:
        old = prev.playlist
        rows = old.rows
        if not rows or old.bom or text.startswith("\ufeff"):
            return None
        newline = old.newline
        # The new header ends where the first kept old segment's lines begin.
        for d in range(len(rows)):
            if d > 64:
                return None  # not a slide of the previous window
            # A whole segment (its URI included) is unique where single tag lines are not.
            needle = newline + newline.join(rows.raw(d)) + newline
            at = text.find(needle, 0, _MAX_HEADER + len(needle))
            if at < 0:
                continue
            hdr_end = at + len(newline)
            middle = prev.text[prev.offset(d):prev.trailer_offset]
            if text.startswith(middle, hdr_end):
                break
            return None
        else:
            return None
        header_text = text[:hdr_end]
        head_lines, nl2, _bom, _final = split_lines(header_text)
        if nl2 != newline and "\n" in header_text and newline == "\r\n":
            return None
        state = ParseState()
        header, segs, trailer, _w = parse_lines(head_lines, state, in_header=True)
        if segs or trailer:
            return None  # the header carries segment lines: not a plain slide
        kept = rows[d:]
        if state.media_sequence != kept[0].msn:
            return None
        if kept[0].byterange_implicit:
            return None  # its offset came from a segment now gone: a full parse says so
        expected_dsn = kept[0].discontinuity_sequence - int(kept[0].discontinuity)
        if state.discontinuity_sequence != expected_dsn:
            return None
        tail_text = text[hdr_end + len(middle):]
        tail_lines, _nl, _b, final_newline = split_lines(tail_text) if tail_text else (
            [], newline, False, text.endswith("\n"))
        last = prev.state
        cont = ParseState(
            media_sequence=state.media_sequence, discontinuity_sequence=state.discontinuity_sequence,
            next_msn=kept[-1].msn + 1,
            disc_count=kept[-1].discontinuity_sequence - state.discontinuity_sequence,
            key=last.key, map=last.map, prev_pdt=last.prev_pdt, prev_step=last.prev_step,
            range_end=last.range_end, target=state.target, endlist=state.endlist,
            playlist_type=state.playlist_type, version=state.version)
        # (Its warnings are the new tail's: what was read before was reported then.)
        _h, new_segs, new_trailer, _w2 = parse_lines(tail_lines, cont, in_header=False)
        # kept[0] and kept[-1] were built above, before the table may be copied:
        # the splice cache knows the window by those two objects.
        playlist = MediaPlaylist.of_rows(
            kept.extended(new_segs), header, new_trailer, cont.target, state.media_sequence,
            state.discontinuity_sequence, cont.endlist, cont.playlist_type, cont.version,
            newline, False, final_newline if tail_text else old.final_newline, tuple(_w2),
            old.marked[bisect_left(old.marked, kept[0].msn):]
            + tuple(seg.msn for seg in new_segs if seg.markers))
        self._remember(text, playlist, hdr_end)
        return playlist


def _range_end(seg: Segment) -> tuple[str, int] | None:
    if seg.byterange is None:
        return None
    length, offset = seg.byterange
    return seg.uri, offset + length
