"""The conformance checker: DESIGN.md's invariants over a sequence of reloads.

This is the project's oracle. Property tests, replay, the live ``stitcher check``
command and the fire drill all feed it :class:`Snapshot` s (every rendition's
media playlist text, as served, at one reload) and read back :class:`Violation` s.

Rules, by DESIGN.md invariant number:

1. ``MEDIA_SEQUENCE_DECREASED``, ``SEGMENT_CHANGED``: a media sequence number
   always names the same segment (URI, EXTINF, discontinuity before it);
   ``SEGMENT_MOVED``: the converse, a segment keeps its number (channel-engine#79:
   a URI listed at one MSN reappears at another, so the count was recomputed).
2. ``DISCONTINUITY_SEQUENCE``: grows by exactly the discontinuities that left
   the window; never decreases.
3. ``TARGET_DURATION_EXCEEDED``, ``TARGET_DURATION_CHANGED``.
4. ``PDT_DRIFT`` (the stitched timeline stays on the content's wall clock,
   across discontinuities and across reloads), ``PDT_MISSING_AFTER_DISCONTINUITY``.
5. ``RENDITIONS_DISAGREE``: break boundaries at the same PDT with the same
   discontinuity counter in every rendition covering that instant.
   ``RENDITION_SPAN_UNCOVERED``: complete (ENDLIST) renditions cover the same
   presentation time (B23: subtitles missing for the ad span). Playlists with no
   PDT at all are compared on the time from their first segment when complete
   (a VOD's renditions all start at presentation time 0), so B05-style splits
   are caught without a wall clock.
6. ``LL_HLS_TAG_PRESENT``: the stitcher does not serve LL-HLS yet.

Plus, from the bugs corpus:

* ``INIT_INHERITED_ACROSS_DISCONTINUITY`` (B19): an EXT-X-MAP applies across a
  discontinuity (RFC 8216bis 4.4.4.5), so a segment after one that restates no
  MAP is parsed with the previous span's init; an ad's own init (or the content's,
  on return) must be declared after each discontinuity.
* ``SEGMENT_URI_REPEATED`` (B23): WebVTT segments (URI path ending ``.vtt`` or
  ``.webvtt``) of one playlist each have their own URI, so fillers can be told
  apart downstream (video slate loops are allowed to repeat theirs).

Plus ``UNPARSEABLE``: a text that is not a usable media playlist.

Attribution: when a snapshot carries the origin's playlists, they go through a
second, identical analysis; a stitched violation is ``source='origin'`` (inherited,
reported, not "fixed") when the origin broke the same rule for the same rendition
and MSN (the stitcher keeps the origin's MSNs, docs/architecture.md) or, for
playlist-level rules, at the same reload. LL-HLS tags are never inherited: the
origin may serve them, the stitcher must strip them.

Rules that describe a state (a segment above the target, a PDT off the clock, a
misaligned boundary, an LL-HLS tag) are reported once, when first seen, not on
every reload that still shows them; rules about a change between two reloads are
reported at the reload that made the change. Memory grows by one small record
per segment ever seen per rendition.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Literal

from manifests.errors import PlaylistParseError
from manifests.playlist import (
    EXT_X_DISCONTINUITY,
    EXT_X_DISCONTINUITY_SEQUENCE,
    EXT_X_MAP,
    EXT_X_MEDIA_SEQUENCE,
    EXT_X_PROGRAM_DATE_TIME,
    EXT_X_TARGETDURATION,
    EXTINF,
    LL_HLS_TAGS,
    Line,
    MediaPlaylist,
    Segment,
    parse_media,
)
from manifests.timeline import with_pdt
from manifests.timing import add_seconds, seconds_between

Severity = Literal["error", "warning"]
#: Where complete playlists without any PDT are placed to compare them (rule 5).
_PRESENTATION_ZERO = datetime(2000, 1, 1, tzinfo=UTC)
_SUBTITLE_SUFFIXES = (".vtt", ".webvtt")
Source = Literal["stitcher", "origin"]
DEFAULT_TOLERANCE = Fraction(1, 20)


class Rule(enum.Enum):
    """What was broken; see :data:`RULES` for the invariant and the sentence."""

    MEDIA_SEQUENCE_DECREASED = "media-sequence-decreased"
    SEGMENT_CHANGED = "segment-changed"
    SEGMENT_MOVED = "segment-moved"
    DISCONTINUITY_SEQUENCE = "discontinuity-sequence"
    TARGET_DURATION_EXCEEDED = "target-duration-exceeded"
    TARGET_DURATION_CHANGED = "target-duration-changed"
    PDT_DRIFT = "pdt-drift"
    PDT_MISSING_AFTER_DISCONTINUITY = "pdt-missing-after-discontinuity"
    RENDITIONS_DISAGREE = "renditions-disagree"
    LL_HLS_TAG_PRESENT = "ll-hls-tag-present"
    RENDITION_SPAN_UNCOVERED = "rendition-span-uncovered"
    INIT_INHERITED_ACROSS_DISCONTINUITY = "init-inherited-across-discontinuity"
    SEGMENT_URI_REPEATED = "segment-uri-repeated"
    PLAYLIST_STALLED = "playlist-stalled"
    UNPARSEABLE = "unparseable"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    invariant: int | None  # DESIGN.md invariant number
    per_segment: bool  # violations carry an MSN; attribution matches on it
    inheritable: bool  # an origin that breaks it explains the stitcher breaking it
    quote: str  # the RFC 8216bis / DESIGN.md sentence it breaks


_UNCHANGED = ('RFC 8216bis 6.2.1: "The server MUST NOT change the Media Playlist file, '
              'except to: ... Remove Media Segment URIs from the Playlist in the order that '
              'they appear ... Increment the value of the EXT-X-MEDIA-SEQUENCE or '
              'EXT-X-DISCONTINUITY-SEQUENCE tags"')
RULES: Mapping[Rule, RuleSpec] = {
    Rule.MEDIA_SEQUENCE_DECREASED: RuleSpec(1, False, True, _UNCHANGED),
    Rule.SEGMENT_CHANGED: RuleSpec(1, True, True, (
        'DESIGN.md 1: "a given media sequence number always names the same segment (same '
        'URI, same duration, same discontinuity before it) in every reload that contains it"')),
    Rule.SEGMENT_MOVED: RuleSpec(1, True, True, (
        'DESIGN.md 1: "a given media sequence number always names the same segment ... in '
        'every reload that contains it"; RFC 8216bis 6.2.2: "each Media Segment ... MUST '
        'retain its Media Sequence Number"')),
    Rule.DISCONTINUITY_SEQUENCE: RuleSpec(2, False, True, (
        'DESIGN.md 2: "EXT-X-DISCONTINUITY-SEQUENCE grows between two reloads by exactly the '
        'number of EXT-X-DISCONTINUITY tags that left the window between them ... and never '
        'decreases"')),
    Rule.TARGET_DURATION_EXCEEDED: RuleSpec(3, True, True, (
        'RFC 8216bis 4.4.3.1: "The EXTINF duration of each Media Segment in a Playlist file, '
        'when rounded to the nearest integer, MUST be less than or equal to the Target '
        'Duration"')),
    Rule.TARGET_DURATION_CHANGED: RuleSpec(3, False, True, (
        'RFC 8216bis 6.2.1: "The value of the EXT-X-TARGETDURATION tag in the Media Playlist '
        'MUST NOT change"')),
    Rule.PDT_DRIFT: RuleSpec(4, True, True, (
        'DESIGN.md 4: "the EXTINF sum of what replaces a break equals the EXTINF sum of the '
        'content it replaces, exactly ... So PDT stays on the content\'s wall clock"')),
    Rule.PDT_MISSING_AFTER_DISCONTINUITY: RuleSpec(4, True, True, (
        'DESIGN.md 4: "Every segment after a discontinuity carries '
        'EXT-X-PROGRAM-DATE-TIME"')),
    Rule.RENDITIONS_DISAGREE: RuleSpec(5, True, True, (
        'DESIGN.md 5: "All renditions of a cohort ... have their break boundaries at the same '
        'PDT and the same discontinuity sequence numbers"')),
    Rule.LL_HLS_TAG_PRESENT: RuleSpec(6, True, False, (
        'DESIGN.md 6: "tags that promise what the stitcher does not serve (LL-HLS server '
        'control, parts, rendition reports: strip them until LL-HLS is supported)"')),
    Rule.RENDITION_SPAN_UNCOVERED: RuleSpec(5, False, True, (
        'bugs/INDEX.md B23: "the ad span is never left uncovered"; DESIGN.md 5: "All '
        'renditions of a cohort (video variants, audio, subtitles) have their break '
        'boundaries at the same PDT"')),
    Rule.INIT_INHERITED_ACROSS_DISCONTINUITY: RuleSpec(None, True, True, (
        'RFC 8216bis 4.4.4.5: "It applies to every Media Segment that appears after it in '
        'the Playlist until the next EXT-X-MAP tag"; bugs/INDEX.md B19: "Emit EXT-X-MAP '
        'after every discontinuity where the init changes, and again on return to '
        'content"')),
    Rule.SEGMENT_URI_REPEATED: RuleSpec(None, True, True, (
        'bugs/INDEX.md B23: "Fillers match the video in count, duration and '
        'discontinuities, each filler has a unique URI"')),
    Rule.PLAYLIST_STALLED: RuleSpec(None, False, True, (
        'RFC 8216bis 6.2.2: "the server MUST make a new version of a Playlist file available '
        '... no later than 1.5 times the Target Duration" (unless the response announces a '
        "stale serve)")),
    Rule.UNPARSEABLE: RuleSpec(None, False, True, (
        'RFC 8216bis 4: "Playlists that violate these rules are invalid; clients MUST fail '
        'to parse them"')),
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reload: rendition id -> media playlist text as served.

    ``origin`` holds the origin's texts for the same rendition ids at the same
    reload, for attribution; ``time`` is when it was fetched (seconds), if known.
    """

    index: int
    playlists: Mapping[str, str]
    time: float | None = None
    origin: Mapping[str, str] | None = None
    #: Renditions whose response announced a stale serve (e.g. ``X-Stitcher-Stale``):
    #: a playlist that does not advance then is expected, not a violation.
    stale: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule; ``line`` is 1-based in that reload's text of ``rendition``."""

    rule: Rule
    severity: Severity
    reload: int
    rendition: str
    msn: int | None
    line: int | None
    message: str
    source: Source = "stitcher"

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (``json.dumps(v.to_json())``)."""
        return {"rule": self.rule.name, "invariant": RULES[self.rule].invariant,
                "severity": self.severity, "source": self.source, "reload": self.reload,
                "rendition": self.rendition, "msn": self.msn, "line": self.line,
                "message": self.message}


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A parsed playlist with the 1-based line number of every line and its owner MSN."""

    playlist: MediaPlaylist
    numbered: tuple[tuple[int, Line, int | None], ...]

    @classmethod
    def of(cls, text: str) -> _Parsed:
        pl = parse_media(text)
        owners: list[int | None] = [None] * len(pl.header)
        for seg in pl.segments:
            owners.extend([seg.msn] * len(seg.lines))
        owners.extend([None] * len(pl.trailer))
        return cls(pl, tuple((n + 1, line, owner)
                             for n, (line, owner) in enumerate(zip(pl.lines, owners))))

    def line(self, tag: str | None, msn: int | None = None) -> int | None:
        """Line number of the first ``tag`` line of segment ``msn`` (the URI if tag is None)."""
        for number, line, owner in self.numbered:
            if owner == msn and (line.tag == tag if tag else line.is_uri):
                return number
        return None


@dataclass(frozen=True, slots=True)
class _Published:
    """What a media sequence number named when last seen (invariant 1)."""

    uri: str
    duration: Fraction
    discontinuity: bool
    pdt: datetime | None


class _Analysis:
    """The rules over one stream of reloads (stitched or origin), without attribution."""

    def __init__(self, tolerance: Fraction, same_grid: Mapping[str, str] | None) -> None:
        self.tolerance = tolerance
        self.same_grid = same_grid
        self.last: dict[str, _Parsed] = {}
        self.published: dict[str, dict[int, _Published]] = {}
        self.reported: set[Hashable] = set()

    def feed(self, reload: int, playlists: Mapping[str, str]) -> list[Violation]:
        out: list[Violation] = []
        parsed: dict[str, _Parsed] = {}
        for rid, text in playlists.items():
            try:
                now = _Parsed.of(text)
            except PlaylistParseError as exc:
                out.append(self._v(Rule.UNPARSEABLE, reload, rid, None, None, str(exc)))
                continue
            parsed[rid] = now
            out += self._one(reload, rid, now)
            if rid in self.last:
                out += self._between(reload, rid, self.last[rid], now)
            out += self._history(reload, rid, now)
            self.last[rid] = now
        out += self._cross(reload, parsed)
        return out

    def _v(self, rule: Rule, reload: int, rid: str, msn: int | None, line: int | None,
           detail: str) -> Violation:
        return Violation(rule, "error", reload, rid, msn, line,
                         f"{detail}. {RULES[rule].quote}")

    def _first(self, key: Hashable) -> bool:
        """True the first time a state violation is seen (reported once, not per reload)."""
        if key in self.reported:
            return False
        self.reported.add(key)
        return True

    def _one(self, reload: int, rid: str, now: _Parsed) -> Iterator[Violation]:
        """Rules 3, 4 and 6 inside one playlist."""
        pl = now.playlist
        if pl.target_duration is None:
            yield self._v(Rule.UNPARSEABLE, reload, rid, None, None,
                          "no EXT-X-TARGETDURATION, which RFC 8216bis 4.4.3.1 makes REQUIRED")
        uses_pdt = any(s.pdt_explicit for s in pl.segments)
        prev: Segment | None = None
        for seg in pl.segments:
            rounded = math.floor(seg.duration + Fraction(1, 2))  # nearest, halves up
            if (pl.target_duration is not None and rounded > pl.target_duration
                    and self._first((Rule.TARGET_DURATION_EXCEEDED, rid, seg.msn))):
                yield self._v(Rule.TARGET_DURATION_EXCEEDED, reload, rid, seg.msn,
                              now.line(EXTINF, seg.msn),
                              f"EXTINF {float(seg.duration):g} rounds to {rounded} > "
                              f"EXT-X-TARGETDURATION {pl.target_duration}")
            if (seg.discontinuity and uses_pdt and not seg.pdt_explicit
                    and self._first((Rule.PDT_MISSING_AFTER_DISCONTINUITY, rid, seg.msn))):
                yield self._v(Rule.PDT_MISSING_AFTER_DISCONTINUITY, reload, rid, seg.msn,
                              now.line(EXT_X_DISCONTINUITY, seg.msn),
                              "segment after EXT-X-DISCONTINUITY has no EXT-X-PROGRAM-DATE-TIME")
            if prev and prev.pdt and seg.pdt_explicit and seg.pdt is not None:
                off = seconds_between(add_seconds(prev.pdt, prev.duration), seg.pdt)
                if abs(off) > self.tolerance and self._first((Rule.PDT_DRIFT, rid, seg.msn)):
                    yield self._v(Rule.PDT_DRIFT, reload, rid, seg.msn,
                                  now.line(EXT_X_PROGRAM_DATE_TIME, seg.msn),
                                  f"PDT is {float(off):+.3f} s off the previous segment's PDT "
                                  f"+ EXTINF (tolerance {float(self.tolerance):g} s)")
            if (prev is not None and seg.discontinuity and prev.map is not None
                    and not seg.has(EXT_X_MAP)
                    and self._first((Rule.INIT_INHERITED_ACROSS_DISCONTINUITY, rid, seg.msn))):
                yield self._v(Rule.INIT_INHERITED_ACROSS_DISCONTINUITY, reload, rid, seg.msn,
                              now.line(EXT_X_DISCONTINUITY, seg.msn),
                              f"segment after EXT-X-DISCONTINUITY declares no EXT-X-MAP: it "
                              f"inherits {prev.map.text!r} from before the discontinuity")
            prev = seg
        yield from self._repeated_uris(reload, rid, now)
        for number, line, owner in now.numbered:
            if line.tag in LL_HLS_TAGS and self._first((Rule.LL_HLS_TAG_PRESENT, rid, line.tag)):
                yield self._v(Rule.LL_HLS_TAG_PRESENT, reload, rid, owner, number,
                              f"{line.tag} in the output")

    def _repeated_uris(self, reload: int, rid: str, now: _Parsed) -> Iterator[Violation]:
        """WebVTT segments with the same URI at two MSNs (byte ranges excepted)."""
        first_at: dict[str, int] = {}
        for seg in now.playlist.segments:
            path = seg.uri.partition("?")[0].partition("#")[0].lower()
            if seg.byterange is not None or not path.endswith(_SUBTITLE_SUFFIXES):
                continue
            earlier = first_at.setdefault(seg.uri, seg.msn)
            if earlier != seg.msn and self._first((Rule.SEGMENT_URI_REPEATED, rid, seg.msn)):
                yield self._v(Rule.SEGMENT_URI_REPEATED, reload, rid, seg.msn,
                              now.line(None, seg.msn),
                              f"URI {seg.uri!r} already names MSN {earlier}")

    def _between(self, reload: int, rid: str, old: _Parsed, now: _Parsed) -> Iterator[Violation]:
        """Rules 1 (media sequence), 2 and 3 (target constant) between consecutive reloads."""
        a, b = old.playlist, now.playlist
        if b.media_sequence < a.media_sequence:
            yield self._v(Rule.MEDIA_SEQUENCE_DECREASED, reload, rid, None,
                          now.line(EXT_X_MEDIA_SEQUENCE),
                          f"EXT-X-MEDIA-SEQUENCE went from {a.media_sequence} "
                          f"to {b.media_sequence}")
        if (a.target_duration is not None and b.target_duration is not None
                and a.target_duration != b.target_duration):
            yield self._v(Rule.TARGET_DURATION_CHANGED, reload, rid, None,
                          now.line(EXT_X_TARGETDURATION),
                          f"EXT-X-TARGETDURATION went from {a.target_duration} "
                          f"to {b.target_duration}")
        yield from self._moved(reload, rid, a, now)
        dsn_line = now.line(EXT_X_DISCONTINUITY_SEQUENCE)
        if b.discontinuity_sequence < a.discontinuity_sequence:
            yield self._v(Rule.DISCONTINUITY_SEQUENCE, reload, rid, None, dsn_line,
                          f"EXT-X-DISCONTINUITY-SEQUENCE decreased from "
                          f"{a.discontinuity_sequence} to {b.discontinuity_sequence}")
        elif b.media_sequence >= a.media_sequence:
            left = sum(s.discontinuity for s in a.segments if s.msn < b.media_sequence)
            # Segments that came and went between the two reloads: their tags are unknown.
            unseen = max(0, b.media_sequence - (a.last_msn + 1))
            low = a.discontinuity_sequence + left
            if not low <= b.discontinuity_sequence <= low + unseen:
                expected = f"{low}" if not unseen else f"{low}..{low + unseen}"
                yield self._v(Rule.DISCONTINUITY_SEQUENCE, reload, rid, None, dsn_line,
                              f"EXT-X-DISCONTINUITY-SEQUENCE is {b.discontinuity_sequence}, "
                              f"expected {expected}: {left} discontinuities left the window "
                              f"since the previous reload")

    def _moved(self, reload: int, rid: str, a: MediaPlaylist, now: _Parsed
               ) -> Iterator[Violation]:
        """Rule 1 the other way: a segment listed once in both reloads under two MSNs.

        Only URIs listed once in each window count (a looping slate repeats its
        URIs on purpose), and only a move to a lower number or one whose old
        number is still in the new window: a URI coming back after its first
        listing left the window is a replay, not a renumbering."""
        b = now.playlist
        if not a.segments or not b.segments:
            return
        before = Counter(s.uri for s in a.segments)
        after = Counter(s.uri for s in b.segments)
        was = {s.uri: s.msn for s in a.segments if before[s.uri] == 1}
        for seg in b.segments:
            old = was.get(seg.uri)
            if old is None or old == seg.msn or after[seg.uri] != 1:
                continue
            if seg.msn < old or b.media_sequence <= old <= b.last_msn:
                yield self._v(Rule.SEGMENT_MOVED, reload, rid, seg.msn, now.line(None, seg.msn),
                              f"{seg.uri} was MSN {old} in the previous reload, is MSN {seg.msn}")

    def _history(self, reload: int, rid: str, now: _Parsed) -> Iterator[Violation]:
        """Rule 1 (same MSN, same segment) and rule 4 (same MSN, same PDT) across reloads."""
        seen = self.published.setdefault(rid, {})
        for seg in now.playlist.segments:
            was = seen.get(seg.msn)
            if was is not None:
                changes = [f"{name} {old!s} -> {new!s}" for name, old, new in (
                    ("URI", was.uri, seg.uri), ("EXTINF", was.duration, seg.duration),
                    ("discontinuity", was.discontinuity, seg.discontinuity)) if old != new]
                if changes:
                    yield self._v(Rule.SEGMENT_CHANGED, reload, rid, seg.msn,
                                  now.line(None, seg.msn), "; ".join(changes))
                # Derived PDTs only move when an explicit one (or an EXTINF) does: say it once.
                if was.pdt is not None and seg.pdt is not None and seg.pdt_explicit:
                    moved = seconds_between(was.pdt, seg.pdt)
                    if abs(moved) > self.tolerance and self._first((Rule.PDT_DRIFT, rid, seg.msn)):
                        yield self._v(Rule.PDT_DRIFT, reload, rid, seg.msn,
                                      now.line(EXT_X_PROGRAM_DATE_TIME, seg.msn),
                                      f"PDT moved {float(moved):+.3f} s since an earlier reload")
            seen[seg.msn] = _Published(seg.uri, seg.duration, seg.discontinuity,
                                       seg.pdt or (was.pdt if was else None))

    def _cross(self, reload: int, parsed: Mapping[str, _Parsed]) -> Iterator[Violation]:
        """Rule 5: within each grid group, every pair agrees on boundaries it both covers.

        A disagreement is reported against the later rendition of the pair (in the
        snapshot's order: list the main video variant first).
        """
        groups: dict[str, list[str]] = {}
        for rid in parsed:
            grid = self.same_grid.get(rid, rid) if self.same_grid is not None else ""
            groups.setdefault(grid, []).append(rid)
        for members in groups.values():
            for i, first in enumerate(members):
                for second in members[i + 1:]:
                    yield from self._pair(reload, first, parsed[first], second, parsed[second])
        # Complete renditions cover the same presentation, whatever their grid.
        complete = [(rid, p.playlist) for rid, p in parsed.items()
                    if p.playlist.endlist and p.playlist.segments]
        if complete:
            ref, longest = complete[0]
            total = sum((s.duration for s in longest.segments), Fraction(0))
            for rid, pl in complete[1:]:
                mine = sum((s.duration for s in pl.segments), Fraction(0))
                if abs(mine - total) > self.tolerance and self._first(
                        (Rule.RENDITION_SPAN_UNCOVERED, rid, reload)):
                    yield self._v(Rule.RENDITION_SPAN_UNCOVERED, reload, rid, None,
                                  parsed[rid].line(None, pl.last_msn),
                                  f"the complete playlist covers {float(mine):g} s, "
                                  f"{ref!r} covers {float(total):g} s")

    def _pair(self, reload: int, ref: str, pa: _Parsed, rid: str, pb: _Parsed
              ) -> Iterator[Violation]:
        tol = self.tolerance
        a, b = _on_a_clock(pa), _on_a_clock(pb)
        for theirs in _boundaries(a.playlist):
            t, counter = theirs.pdt, theirs.discontinuity_sequence
            seg = None if t is None else _covering(b.playlist, t, tol)
            if t is None or seg is None:
                continue
            mine = _boundary_near(b.playlist, t, tol)
            if mine is None:
                detail = (f"no discontinuity at {t.isoformat()} where {ref!r} has one "
                          f"(counter {counter})")
            elif mine.discontinuity_sequence != counter:
                seg, detail = mine, (f"discontinuity at {t.isoformat()} has counter "
                                     f"{mine.discontinuity_sequence}, {ref!r} has {counter}")
            else:
                continue
            if self._first((Rule.RENDITIONS_DISAGREE, rid, seg.msn)):
                yield self._v(Rule.RENDITIONS_DISAGREE, reload, rid, seg.msn,
                              b.line(EXT_X_DISCONTINUITY, seg.msn) or b.line(None, seg.msn),
                              detail)
        for mine in _boundaries(b.playlist):
            t = mine.pdt
            if (t is not None and _covering(a.playlist, t, tol) is not None
                    and _boundary_near(a.playlist, t, tol) is None
                    and self._first((Rule.RENDITIONS_DISAGREE, rid, mine.msn))):
                yield self._v(Rule.RENDITIONS_DISAGREE, reload, rid, mine.msn,
                              b.line(EXT_X_DISCONTINUITY, mine.msn),
                              f"discontinuity at {t.isoformat()} (counter "
                              f"{mine.discontinuity_sequence}) that {ref!r} does not have")


def _on_a_clock(parsed: _Parsed) -> _Parsed:
    """A complete playlist with no PDT at all, placed on a presentation clock from its
    first segment (every rendition of a VOD starts at presentation time 0)."""
    pl = parsed.playlist
    if not pl.endlist or not pl.segments or any(s.pdt is not None for s in pl.segments):
        return parsed
    return replace(parsed, playlist=with_pdt(pl, pl.segments[0].msn, _PRESENTATION_ZERO))


def _boundaries(pl: MediaPlaylist) -> Iterator[Segment]:
    """Segments after a discontinuity whose PDT is known (counter: hls.js's ``cc``)."""
    return (seg for seg in pl.segments if seg.discontinuity and seg.pdt is not None)


def _covering(pl: MediaPlaylist, t: datetime, tol: Fraction) -> Segment | None:
    """The segment whose span holds instant ``t`` (its end excluded), if any."""
    for seg in pl.segments:
        end = seg.end_pdt
        if (seg.pdt is not None and end is not None
                and seconds_between(seg.pdt, t) >= -tol and seconds_between(t, end) > tol):
            return seg
    return None


def _boundary_near(pl: MediaPlaylist, t: datetime, tol: Fraction) -> Segment | None:
    for seg in _boundaries(pl):
        if seg.pdt is not None and abs(seconds_between(seg.pdt, t)) <= tol:
            return seg
    return None


def _attribution_key(v: Violation) -> tuple[Rule, str, int | None, str]:
    if RULES[v.rule].per_segment:
        return v.rule, v.rendition, v.msn, "msn"
    return v.rule, v.rendition, v.reload, "reload"


@dataclass
class Checker:
    """Incremental checker: :meth:`feed` one snapshot at a time (the live check streams)."""

    tolerance: Fraction = DEFAULT_TOLERANCE
    same_grid: Mapping[str, str] | None = None
    _stitched: _Analysis = field(init=False, repr=False)
    _origin: _Analysis = field(init=False, repr=False)
    _inherited: set[tuple[Rule, str, int | None, str]] = field(init=False, repr=False,
                                                                default_factory=set)

    _advanced: dict[str, tuple[int, float]] = field(init=False, repr=False,
                                                    default_factory=dict)

    def __post_init__(self) -> None:
        self._stitched = _Analysis(self.tolerance, self.same_grid)
        self._origin = _Analysis(self.tolerance, self.same_grid)

    def feed(self, snapshot: Snapshot) -> list[Violation]:
        """The violations this reload reveals, each attributed (stitcher or origin)."""
        if snapshot.origin is not None:
            self._inherited.update(_attribution_key(v)
                                   for v in self._origin.feed(snapshot.index, snapshot.origin))
        found = [replace(v, source="origin")
                 if RULES[v.rule].inheritable and _attribution_key(v) in self._inherited else v
                 for v in self._stitched.feed(snapshot.index, snapshot.playlists)]
        return found + self._stalls(snapshot)

    def _stalls(self, snapshot: Snapshot) -> list[Violation]:
        """A live playlist must advance within 1.5 x its target duration (needs times)."""
        if snapshot.time is None:
            return []
        out: list[Violation] = []
        for rid in snapshot.playlists:
            parsed = self._stitched.last.get(rid)
            if parsed is None or parsed.playlist.endlist or not parsed.playlist.segments:
                continue
            last = parsed.playlist.last_msn
            before = self._advanced.get(rid)
            if before is None or last > before[0] or rid in snapshot.stale:
                self._advanced[rid] = (last, snapshot.time)
                continue
            limit = 1.5 * (parsed.playlist.target_duration or 0)
            waited = snapshot.time - before[1]
            if limit and waited > limit and self._stitched._first(
                    (Rule.PLAYLIST_STALLED, rid, last)):
                out.append(self._stitched._v(
                    Rule.PLAYLIST_STALLED, snapshot.index, rid, last, None,
                    f"no new segment for {waited:.1f} s after MSN {last} "
                    f"(1.5 x target duration = {limit:g} s)"))
        return out


def check(snapshots: Sequence[Snapshot], *, tolerance: Fraction = DEFAULT_TOLERANCE,
          same_grid: Mapping[str, str] | None = None) -> list[Violation]:
    """Every violation in a sequence of reloads, in reload order.

    ``same_grid`` maps rendition id -> grid name to check rule 5 only within each
    grid (an unmapped rendition is its own grid); by default all renditions of a
    reload must agree.
    """
    checker = Checker(tolerance=tolerance, same_grid=same_grid)
    return [v for snapshot in snapshots for v in checker.feed(snapshot)]


def summary(violations: Sequence[Violation]) -> dict[str, object]:
    """Counts: total, by severity, by source, and by rule name then source."""
    by_rule: dict[str, dict[str, int]] = {}
    for v in violations:
        counts = by_rule.setdefault(v.rule.name, {"stitcher": 0, "origin": 0})
        counts[v.source] += 1
    return {"total": len(violations),
            "by_severity": dict(Counter(v.severity for v in violations)),
            "by_source": dict(Counter(v.source for v in violations)),
            "by_rule": by_rule}


def format_text(violations: Sequence[Violation]) -> str:
    """A human report: one line per violation, then the counts."""
    if not violations:
        return "no violations\n"
    out = []
    for v in violations:
        where = [f"reload {v.reload}", f"rendition {v.rendition}"]
        where += [f"msn {v.msn}"] if v.msn is not None else []
        where += [f"line {v.line}"] if v.line is not None else []
        out.append(f"{v.severity.upper()} [{v.source}] {v.rule.name} ({', '.join(where)}): "
                   f"{v.message}")
    by_source = Counter(v.source for v in violations)
    out.append(f"{len(violations)} violation(s): "
               + ", ".join(f"{n} from {source}" for source, n in sorted(by_source.items())))
    return "\n".join(out) + "\n"
