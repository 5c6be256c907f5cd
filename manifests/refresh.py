"""Incremental refresh: a reload that adds one segment costs one segment's work.

A live origin's next playlist is usually the previous one with a few segments
gone from the head, a few added at the tail and a new header. The
:class:`IncrementalParser` checks exactly that (one ``startswith`` over the
unchanged middle, at C speed) and then parses only the header and the new
tail, reusing the previous :class:`~manifests.playlist.Segment` objects, so
everything memoised on them (rendered forms) stays valid. Anything else (a
header that carries segment tags, an inconsistent discontinuity sequence, a
changed line ending) falls back to a full parse: the result is always what
:func:`~manifests.playlist.parse_media` would return.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, replace
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
    #: Character offset where each segment's lines start, stored lazily:
    #: segment i starts at ``offsets[dropped + i] + shift`` (amortised O(1) slides).
    offsets: list[int]
    dropped: int
    shift: int
    trailer_offset: int
    state: ParseState

    def offset(self, i: int) -> int:
        return self.offsets[self.dropped + i] + self.shift


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
        self._remember(text, playlist)
        return playlist

    def _remember(self, text: str, playlist: MediaPlaylist,
                  carried: tuple[list[int], int, int, int] | None = None) -> None:
        """Record offsets; ``carried`` = (offsets, dropped, shift, first new segment index)."""
        nl = len(playlist.newline)
        if carried is None:
            pos = len("\ufeff") if playlist.bom else 0
            for line in playlist.header:
                pos += len(line.text) + nl
            offsets: list[int] = []
            dropped, shift, first_new = 0, 0, 0
        else:
            offsets, dropped, shift, first_new = carried
            last = playlist.segments[first_new - 1] if first_new else None
            pos = (offsets[-1] + shift + sum(map(len, last.raw)) + nl * len(last.raw)) if last else 0
            if dropped > 4096 and dropped > len(offsets) // 2:
                offsets = offsets[dropped:]
                dropped = 0
        for seg in playlist.segments[first_new:]:
            offsets.append(pos - shift)
            pos += sum(map(len, seg.raw)) + nl * len(seg.raw)
        state = ParseState(
            media_sequence=playlist.media_sequence,
            discontinuity_sequence=playlist.discontinuity_sequence,
            next_msn=playlist.last_msn + 1,
            disc_count=(playlist.segments[-1].discontinuity_sequence
                        - playlist.discontinuity_sequence) if playlist.segments else 0,
            key=playlist.segments[-1].key if playlist.segments else None,
            map=playlist.segments[-1].map if playlist.segments else None,
            prev_pdt=playlist.segments[-1].pdt if playlist.segments else None,
            prev_step=playlist.segments[-1].step if playlist.segments else timedelta(0),
            range_end=_range_end(playlist.segments[-1]) if playlist.segments else None,
            target=playlist.target_duration, endlist=playlist.endlist,
            playlist_type=playlist.playlist_type, version=playlist.version)
        self._prev = _Previous(text, playlist, offsets, dropped, shift, pos, state)

    def _incremental(self, prev: _Previous, text: str) -> MediaPlaylist | None:
        old = prev.playlist
        if not old.segments or old.bom or text.startswith("\ufeff"):
            return None
        newline = old.newline
        # The new header ends where the first kept old segment's lines begin.
        for d, seg in enumerate(old.segments):
            if d > 64:
                return None  # not a slide of the previous window
            # A whole segment (its URI included) is unique where single tag lines are not.
            needle = newline + newline.join(seg.raw) + newline
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
        kept = old.segments[d:]
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
        cont = replace(prev.state, media_sequence=state.media_sequence,
                       discontinuity_sequence=state.discontinuity_sequence,
                       target=state.target, endlist=state.endlist,
                       playlist_type=state.playlist_type, version=state.version,
                       next_msn=kept[-1].msn + 1,
                       disc_count=kept[-1].discontinuity_sequence - state.discontinuity_sequence)
        _h, new_segs, new_trailer, _w2 = parse_lines(tail_lines, cont, in_header=False)
        segments: tuple[Segment, ...] = kept + tuple(new_segs)
        playlist = MediaPlaylist(
            header=header, segments=segments, trailer=new_trailer,
            target_duration=cont.target, media_sequence=state.media_sequence,
            discontinuity_sequence=state.discontinuity_sequence, endlist=cont.endlist,
            playlist_type=cont.playlist_type, version=cont.version, newline=newline,
            bom=False, final_newline=final_newline if tail_text else old.final_newline,
            marked=old.marked[bisect_left(old.marked, kept[0].msn):]
            + tuple(seg.msn for seg in new_segs if seg.markers))
        shift = prev.shift + hdr_end - prev.offset(d)
        self._remember(text, playlist, (prev.offsets, prev.dropped + d, shift, len(kept)))
        return playlist


def _range_end(seg: Segment) -> tuple[str, int] | None:
    if seg.byterange is None:
        return None
    length, offset = seg.byterange
    return seg.uri, offset + length
