"""The columnar segment table: rows built on demand are the parser's segments,
the same objects in every later view, and the store stays bounded as a window slides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.columns import SegmentTable
from manifests.playlist import Segment, parse_media
from manifests.refresh import IncrementalParser
from tests.manifests.test_playlist import _fields, _line_by_line
from tests.manifests.test_refresh import window


def _row(seg: Segment) -> tuple[object, ...]:
    return (seg.msn, seg.duration, seg.step, seg.uri, seg.raw, seg.discontinuity, seg.pdt,
            seg.pdt_explicit, seg.discontinuity_sequence, seg.key, seg.map, seg.gap, seg.special,
            seg.markers, seg.byterange, seg.byterange_implicit)


TEXT = window(100, 40, disc_every=13, ranged=False, marker_every=9)


@given(st.permutations(range(40)))
def test_rows_built_in_any_order_are_the_line_parsers_segments(order: list[int]) -> None:
    rows = parse_media(TEXT).rows
    reference = _line_by_line(TEXT).segments
    assert isinstance(rows, SegmentTable) and len(rows) == len(reference) == 40
    # Read without building: the columns say what the segments will.
    assert rows.pdts() == [s.pdt for s in reference]
    assert [rows.msn(i) for i in range(40)] == [s.msn for s in reference]
    assert [rows.raw(i) for i in range(40)] == [s.raw for s in reference]
    for i in order:
        assert _row(rows[i]) == _row(reference[i])
        assert rows[i] is rows[i - 40]  # built once, kept


def test_plain_rows_are_the_three_line_segments_and_render_as_their_lines() -> None:
    rows = parse_media(TEXT).rows
    plain = [i for i in range(40) if rows.plain(i, i + 1)]
    # Every segment without a marker or a discontinuity is a plain row, no other
    # (but the first, parsed together with the header).
    assert plain == [i for i, s in enumerate(_line_by_line(TEXT).segments)
                     if i and len(s.raw) == 3 and not s.special and not s.discontinuity]
    assert len(plain) > 25
    lo = plain[0]
    hi = next(i for i in range(lo, 41) if i == 40 or not rows.plain(i, i + 1))
    assert rows.plain(lo, hi) and not rows.plain(lo, hi + 1)
    assert rows.plain_text(lo, hi, "\n") == ["\n".join(rows[i].raw) for i in range(lo, hi)]
    assert rows.uris(lo, hi) == [rows[i].uri for i in range(lo, hi)]


def test_slices_share_built_segments_and_extending_copies_only_when_it_must() -> None:
    rows = parse_media(TEXT).rows
    head = rows[5]
    tail = rows[3:]
    assert len(tail) == 37 and tail[2] is head and tail[-1] is rows[-1]
    later = tail[10]
    assert rows[13] is later  # built through the slice, seen through the whole
    extra = parse_media(window(140, 1, disc_every=13, ranged=False, marker_every=9)).rows[0]
    grown = tail.extended([extra])
    assert len(grown) == 38 and grown[-1] is extra and grown[2] is head
    # A second window grown from the same view cannot append in place: it copies,
    # keeping the segments built so far.
    other = tail.extended([extra])
    assert len(other) == 38 and len(grown) == 38 and other[2] is head and other[10] is later
    assert other._store is not grown._store


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 9), st.integers(2, 7))
def test_a_long_slide_stays_identical_to_full_parses_and_bounded(disc_every: int,
                                                                 marker_every: int) -> None:
    parser = IncrementalParser()
    previous = None
    for first in range(100, 100 + 45):
        text = window(first, 30, disc_every=disc_every, ranged=False, marker_every=marker_every)
        ours = parser.parse(text)
        assert _fields(ours) == _fields(parse_media(text))
        if previous is not None:
            assert ours.rows[0] is previous.rows[1]  # what the splice cache compares
        previous = ours
        # The table's store is copied once the window has slid past half of it.
        assert len(ours.rows._store.segs) <= 2 * 30 + 1
    assert parser.incremental_parses == 44


MARKER_LINES = st.sampled_from([
    "#EXT-X-CUE-OUT:DURATION=8", "#EXT-X-CUE-OUT-CONT:ElapsedTime=2,Duration=8",
    "#EXT-X-CUE-OUT-CONT:ElapsedTime=4,Duration=8", "#EXT-X-CUE-OUT-CONT:garbage",
    "#EXT-X-CUE-OUT-CONT", "#EXT-X-CUE-IN", '#EXT-X-ASSET:CAID=0x1', "#EXT-X-CUE:TYPE=SpliceOut",
    ('#EXT-X-DATERANGE:ID="d",START-DATE="2026-12-03T20:00:04.000Z",PLANNED-DURATION=4,'
     "SCTE35-OUT=0xFC"), ('#EXT-X-DATERANGE:ID="d",START-DATE="2026-12-03T20:00:04.000Z",'
                          'END-DATE="2026-12-03T20:00:08.000Z",SCTE35-IN=0xFC'),
    "#EXT-X-CUE-SPAN",
    # Lines counted as errors at every sighting, inside a break or not.
    "#EXT-OATCLS-SCTE35:notbase64", '#EXT-X-SCTE35:CUE="zz"', "#EXT-X-CUE:TYPE=Bogus"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), MARKER_LINES), min_size=1, max_size=30),
       st.integers(-1, 30))
def test_observe_skipping_unbuilt_rows_sees_what_the_built_window_does(
        markers: list[str | None], since: int) -> None:
    """Inside an open break, observe leaves the parse's CONT rows unbuilt: the
    observations, the errors counted, and what a second look at the same window
    reports (memoised walks and signals) are those of the window built in full."""
    from dataclasses import replace

    from manifests.markers import MarkerErrors, observe

    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    for i, tag in enumerate(markers):
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T20:{i * 2 // 60:02d}:"
                     f"{i * 2 % 60:02d}.000Z")
        if tag is not None:
            lines.append(tag)
        lines += ["#EXTINF:2.000,", f"s{i}.ts"]
    text = "\n".join(lines) + "\n"
    columns = parse_media(text)
    built = parse_media(text)
    built = replace(built, segments=built.segments)  # no table: every segment built
    for playlist in (columns, built):
        assert playlist.rows is not None
    results = []
    for playlist in (columns, built):
        seen = []
        for since_msn in (None, since, None):
            errors = MarkerErrors()
            seen.append((observe(playlist, errors=errors, since_msn=since_msn), errors.items))
        results.append(seen)
    assert results[0] == results[1]


def test_a_zone_less_pdt_inside_a_column_run_is_utc_as_the_line_parser_makes_it() -> None:
    """The parse reads a run's PDTs in one pass and looks for naive ones without
    reading each tzinfo: a zone-less PDT after aware ones (or first) still gets
    UTC, as parse_lines gives it (and a run of zone-less ones too)."""
    forms = ["2026-12-03T10:00:00Z", "2026-12-03T10:00:02.000Z", "2026-12-03T10:00:04",
             "2026-12-03T12:00:06+02:00", "2026-12-03T10:00:08Z"]
    naive = [f"2026-12-03T11:00:0{k}" for k in range(5)]
    for first, rest in (("2026-12-02T10:00:00Z", forms), ("2026-12-02T10:00:00", forms),
                        ("2026-12-02T10:00:00", naive)):
        lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
        for i, pdt in enumerate([first, first, *rest]):
            lines += [f"#EXT-X-PROGRAM-DATE-TIME:{pdt}", "#EXTINF:2,", f"u{i}.ts"]
        text = "\n".join(lines) + "\n"
        rows = parse_media(text).rows
        assert rows.pdts() == [s.pdt for s in _line_by_line(text).segments]
        assert all(p is not None and p.tzinfo is not None for p in rows.pdts())
