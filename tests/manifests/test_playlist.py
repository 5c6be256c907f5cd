"""The lossless media playlist model: byte-exact round trips and what it interprets."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifests.attributes import AttributeList
from manifests.errors import PlaylistParseError
from manifests.playlist import (
    MediaPlaylist,
    ParseState,
    parse_lines,
    parse_media,
    render,
    split_lines,
)
from manifests.timing import parse_pdt

BASE = ("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:41\n"
        "#EXT-X-DISCONTINUITY-SEQUENCE:3\n#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:00Z\n"
        "#EXTINF:6.006,title\nseg41.ts\n#EXT-X-FOO:BAR=1\n#EXT-X-DISCONTINUITY\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:10.5+01:00\n#EXTINF:5.005,\nseg42.ts\n"
        "#EXT-X-GAP\n#EXTINF:6,\nseg43.ts\n")


@pytest.mark.parametrize("variant", ["lf", "crlf", "bom", "no-final-newline", "bom-crlf"])
def test_round_trip_is_byte_exact(variant: str) -> None:
    text = BASE
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    if "bom" in variant:
        text = "\ufeff" + text
    if variant == "no-final-newline":
        text = text.rstrip("\n")
    assert render(parse_media(text)) == text


def test_interpreted_fields() -> None:
    pl = parse_media(BASE)
    assert (pl.media_sequence, pl.discontinuity_sequence, pl.target_duration) == (41, 3, 6)
    s41, s42, s43 = pl.segments
    assert (s41.msn, s41.duration, s41.uri) == (41, Fraction("6.006"), "seg41.ts")
    assert s41.pdt == datetime(2026, 12, 3, 10, 0, tzinfo=UTC) and s41.pdt_explicit
    assert s42.discontinuity and s42.discontinuity_sequence == 4
    assert s42.pdt == datetime(2026, 12, 3, 9, 0, 10, 500000, tzinfo=UTC)
    assert "#EXT-X-FOO:BAR=1" in s42.raw  # an unknown tag belongs to the next segment
    assert s43.gap and not s43.pdt_explicit
    assert s43.pdt == s42.pdt + timedelta(seconds=5.005)
    assert pl.duration == Fraction("17.011")


@pytest.mark.parametrize("text,expected", [
    ("2026-12-03T10:00:00Z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T10:00:00.123z", datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC)),
    ("2026-12-03T10:00:00", datetime(2026, 12, 3, 10, tzinfo=UTC)),  # zone-less: UTC
    ("2026-12-03T12:00:00+02:00", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T12:00:00+0200", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T05:00:00-05", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("20261203T100000Z", datetime(2026, 12, 3, 10, tzinfo=UTC)),
    ("2026-12-03T10:00:00,5Z", datetime(2026, 12, 3, 10, 0, 0, 500000, tzinfo=UTC)),
])
def test_program_date_time_forms(text: str, expected: datetime) -> None:
    assert parse_pdt(text) == expected
    pl = parse_media(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-PROGRAM-DATE-TIME:{text}\n"
                     "#EXTINF:2,\na.ts\n")
    assert pl.segments[0].pdt == expected


def test_not_a_media_playlist() -> None:
    with pytest.raises(PlaylistParseError):
        parse_media("<html>502 Bad Gateway</html>")
    with pytest.raises(PlaylistParseError):
        parse_media("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n")
    with pytest.raises(PlaylistParseError):
        parse_media("#EXTM3U\n#EXT-X-TARGETDURATION:2\nseg.ts\n")  # URI without EXTINF


def test_attribute_lists() -> None:
    attrs = AttributeList.parse('METHOD=AES-128,URI="k,1.key", IV=0x0F,RESOLUTION=640x360,'
                                'BANDWIDTH=800000,FRAME-RATE=29.970')
    assert attrs.string("URI") == "k,1.key"
    assert attrs.hex_bytes("IV") == b"\x0f"
    assert attrs.resolution("RESOLUTION") == (640, 360)
    assert attrs.integer("BANDWIDTH") == 800000
    assert attrs.decimal("FRAME-RATE") == Fraction("29.970")
    assert attrs.render() == 'METHOD=AES-128,URI="k,1.key",IV=0x0F,RESOLUTION=640x360,' \
                            'BANDWIDTH=800000,FRAME-RATE=29.970'


LINES = st.lists(st.one_of(
    st.sampled_from(["#EXT-X-DISCONTINUITY", "#EXT-X-CUE-IN", "#EXT-X-FOO", "", "# comment",
                     "#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:00Z", "#EXT-X-GAP",
                     "#EXT-X-BYTERANGE:100@0", '#EXT-X-KEY:METHOD=NONE']),
    st.builds(lambda d, u: f"#EXTINF:{d},\nu{u}.ts", st.decimals("0.1", "10", places=3),
              st.integers(0, 99))), max_size=30)


@given(LINES, st.booleans(), st.booleans())
def test_any_line_soup_round_trips(lines: list[str], crlf: bool, final: bool) -> None:
    text = "\n".join(["#EXTM3U", "#EXT-X-TARGETDURATION:10", *lines]) + ("\n" if final else "")
    if crlf:
        text = text.replace("\n", "\r\n")
    assert render(parse_media(text)) == text


SOUP_LINE = st.one_of(
    st.sampled_from(["#EXT-X-DISCONTINUITY", "#EXT-X-CUE-IN", "#EXT-X-CUE-OUT:30", "#EXT-X-FOO",
                     "", " ", "# comment", "#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:00Z",
                     "#EXT-X-PROGRAM-DATE-TIME:not a date", "#EXT-X-PROGRAM-DATE-TIME",
                     "#EXT-X-GAP", "#EXT-X-BYTERANGE:100", "#EXT-X-BYTERANGE:100@0",
                     '#EXT-X-KEY:METHOD=NONE', '#EXT-X-MAP:URI="init.mp4"',
                     '#EXT-X-DATERANGE:ID="a",START-DATE="2026-12-03T10:00:04Z"',
                     "#EXT-X-MEDIA-SEQUENCE:7", "#EXT-X-DISCONTINUITY-SEQUENCE:2",
                     "#EXT-X-ENDLIST", "#EXTINF:2.000,", "u.ts ", " u.ts", "u\r.ts", "u.ts\xa0",
                     "#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:00#EXTINF:2,"]),
    st.builds(lambda d, u: f"#EXTINF:{d},\nu{u}.ts", st.decimals("0.1", "10", places=3),
              st.integers(0, 99)))
SOUP = st.lists(SOUP_LINE, max_size=30)


def _fields(playlist: MediaPlaylist) -> object:
    return ([line.text for line in playlist.header], [line.text for line in playlist.trailer],
            playlist.warnings, playlist.marked, playlist.media_sequence,
            playlist.discontinuity_sequence, playlist.target_duration, playlist.endlist,
            [(s.msn, s.duration, s.step, s.uri, s.raw, s.discontinuity, s.pdt, s.pdt_explicit,
              s.discontinuity_sequence, s.key, s.map, s.gap, s.special, s.markers,
              s.byterange, s.byterange_implicit) for s in playlist.segments])


def _line_by_line(text: str) -> MediaPlaylist:
    """The reference: every line through the parse loop, none taken whole."""
    lines, newline, bom, final_newline = split_lines(text)
    state = ParseState()
    header, segments, trailer, warnings = parse_lines(lines, state, in_header=True,
                                                      strict=False)
    return MediaPlaylist(header, tuple(segments), trailer, state.target, state.media_sequence,
                         state.discontinuity_sequence, state.endlist, newline=newline, bom=bom,
                         final_newline=final_newline, warnings=tuple(warnings),
                         marked=tuple(s.msn for s in segments if s.markers))


@given(SOUP, st.booleans(), st.booleans())
def test_plain_segment_fast_path_agrees_with_the_line_parser(
        lines: list[str], header: bool, final: bool) -> None:
    """LF text takes plain segments whole (one regex split): the playlist must be
    the one the line-by-line loop gives, field by field."""
    body = "\n".join((["#EXTM3U", "#EXT-X-TARGETDURATION:10"] if header else []) + lines)
    text = body + ("\n" if final else "")
    try:
        expected = _fields(_line_by_line(text))
    except PlaylistParseError:
        with pytest.raises(PlaylistParseError):
            parse_media(text, strict_header=False)
        return
    playlist = parse_media(text, strict_header=False)
    assert _fields(playlist) == expected
    assert render(playlist) == text


#: Runs of the plainest segments (PDT, EXTINF, URI), which the parse keeps as
#: columns, in every PDT form: aware, zone-less, offset, ones only parse_pdt
#: reads (a comma fraction) and none at all, between SOUP lines.
PLAIN_ROW = st.builds(
    lambda pdt, d, u: f"#EXT-X-PROGRAM-DATE-TIME:{pdt}\n#EXTINF:{d},\nu{u}.ts",
    st.sampled_from(["2026-12-03T10:00:00Z", "2026-12-03T10:00:02.000Z",
                     "2026-12-03T10:00:04", "2026-12-03T12:00:06+02:00",
                     "2026-12-03T10:00:08,5Z", "not a date", "2026-12-03T10:00:10.123456789Z"]),
    st.sampled_from(["2.000", "2", "6.006", "x", ""]), st.integers(0, 99))
#: The same with one more tag line: markers, unknown tags (with a URI or not), and
#: tags the parse loop interprets (those segments are built as they are parsed).
TAGGED_ROW = st.builds(
    lambda row, tag: row.replace("\n", f"\n{tag}\n", 1), PLAIN_ROW,
    st.sampled_from(["#EXT-X-CUE-OUT-CONT:ElapsedTime=2,Duration=30", "#EXT-X-CUE-IN",
                     "#EXT-X-CUE-OUT:30", "#EXT-X-FOO", '#EXT-X-FOO:URI="x.ts"', "#EXT-X-BITRATE:5",
                     "#EXT-X-DISCONTINUITY", "#EXT-X-GAP", '#EXT-X-KEY:METHOD=NONE',
                     '#EXT-X-DATERANGE:ID="a",START-DATE="2026-12-03T10:00:04Z"',
                     "#EXT-X-MEDIA-SEQUENCE:7", "#EXT-X-ENDLIST", "#EXT-X-PART:URI=\"p\""]))
COLUMN_SOUP = st.lists(st.one_of(PLAIN_ROW, PLAIN_ROW, TAGGED_ROW, SOUP_LINE), max_size=40)


@given(COLUMN_SOUP, st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_columnar_rows_agree_with_the_line_parser(
        lines: list[str], header: bool, final: bool, rnd: random.Random) -> None:
    """Plain segments are stored as columns and built on demand: built in any
    order, read through the columns or through ``segments``, the playlist is the
    one the line-by-line loop gives, field by field."""
    body = "\n".join((["#EXTM3U", "#EXT-X-TARGETDURATION:10"] if header else []) + lines)
    text = body + ("\n" if final else "")
    try:
        reference = _line_by_line(text)
    except PlaylistParseError:
        with pytest.raises(PlaylistParseError):
            parse_media(text, strict_header=False)
        return
    playlist = parse_media(text, strict_header=False)
    rows = playlist.rows
    segments = reference.segments
    assert len(rows) == len(segments)
    assert rows.pdts() == [seg.pdt for seg in segments]
    assert [rows.raw(i) for i in range(len(rows))] == [seg.raw for seg in segments]
    order = list(range(len(rows)))
    rnd.shuffle(order)
    for i in order:
        assert rows.msn(i) == segments[i].msn
        assert rows[i] is rows[i]
    for i in range(len(rows)):
        if rows.plain(i, i + 1):
            assert len(segments[i].raw) == 3 and not segments[i].special
            assert rows.plain_text(i, i + 1, "\n") == ["\n".join(segments[i].raw)]
    assert _fields(playlist) == _fields(reference)
    assert playlist.segments == tuple(rows)
    assert render(playlist) == text


CORPUS_HLS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "public" / "hls"


@pytest.mark.skipif(not CORPUS_HLS.is_dir(), reason="shared corpus not found")
@pytest.mark.parametrize("name,first_msn,first_uri", [
    ("globo_ll_hls_delta_skip_dateranges.m3u8", 17, "segment16.mp4"),
    ("hlsjs_daterange_delta_skip.m3u8", 9, "9.m4s"),
])
def test_delta_update_numbers_the_listed_segments_after_the_skipped(
        name: str, first_msn: int, first_uri: str) -> None:
    pl = parse_media((CORPUS_HLS / name).read_text())
    assert (pl.segments[0].msn, pl.segments[0].uri) == (first_msn, first_uri)
    assert pl.segment(first_msn) is pl.segments[0]
    assert pl.last_msn == first_msn + len(pl.segments) - 1


@pytest.mark.skipif(not CORPUS_HLS.is_dir(), reason="shared corpus not found")
def test_extinf_without_uri_is_warned_not_attached_silently() -> None:
    pl = parse_media((CORPUS_HLS / "x9k3_readme_x_cue.txt").read_text(), strict_header=False)
    assert any("EXTINF without a URI" in w for w in pl.warnings)
    truncated = parse_media("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\na.ts\n#EXTINF:2,\n")
    assert [s.uri for s in truncated.segments] == ["a.ts"]
    assert truncated.warnings == ("EXTINF without a URI at the end of the playlist",)


@pytest.mark.parametrize("crlf", [False, True])
def test_a_malformed_program_date_time_is_warned_and_its_date_derived(crlf: bool) -> None:
    """Found by a newcomer: ``#EXT-X-PROGRAM-DATE-TIME:20X6-...`` went through without
    a word. It still passes through as it came (invariant 6), the segment's date
    is derived from the one before, and the parse warns, once, whichever path
    read it (the column runs, the line loop, a refresh's new tail: each warns of
    its own lines only)."""
    from manifests.refresh import IncrementalParser

    def text(last: int, bad: set[int]) -> str:
        lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
        for msn in range(last + 1):
            day = "20X6" if msn in bad else "2026"
            lines += [f"#EXT-X-PROGRAM-DATE-TIME:{day}-12-03T10:00:{2 * msn:02d}.000Z",
                      "#EXTINF:2.000,", f"s{msn}.ts"]
        return ("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n")

    first = text(9, {5})
    playlist = parse_media(first)
    assert render(playlist) == first
    assert len(playlist.warnings) == 1 and "20X6-12-03T10:00:10" in playlist.warnings[0]
    seg = playlist.segments[5]
    assert not seg.pdt_explicit and seg.pdt == datetime(2026, 12, 3, 10, 0, 10, tzinfo=UTC)
    parser = IncrementalParser()
    assert parser.parse(first).warnings == playlist.warnings
    slid = parser.parse(text(10, {5, 10}))
    assert len(slid.warnings) == 1 and "20X6-12-03T10:00:20" in slid.warnings[0]
    assert parser.incremental_parses == 1  # a refresh reads its new tail only
    assert parser.parse(text(11, {5, 10})).warnings == ()
