"""manifests.webvtt: X-TIMESTAMP-MAP checked against the video of its span (B22)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.webvtt import (
    PTS_WRAP,
    TICKS,
    Cue,
    MapStatus,
    RepairOutcome,
    WebVttError,
    check_timestamp_map,
    cues,
    pts_at,
    repair_timestamp_map,
    timestamp_map,
    with_timestamp_map,
)
from tests.manifests.test_corpus_hls import bundle_files

# B22's video.m3u8 comments: seg2200 at 120 s, the ad a0 at 10 s, seg2202 at 132 s.
CONTENT_2200 = 10_800_000
AD_A0 = 900_000
CONTENT_2202 = 11_880_000


def test_b22_post_break_segment_without_map_is_corrected() -> None:
    """seg2202.vtt has no map: per RFC 8216bis its cue would sit at media time 1 s;
    the span after the second discontinuity starts at video PTS 11880000 (132 s)."""
    body = bundle_files("B22.txt")["subs/seg2202.vtt"]
    result = check_timestamp_map(body, pts_at(CONTENT_2200, Fraction(12)))
    assert result.status is MapStatus.MISSING and result.found is None
    assert result.expected == CONTENT_2202
    assert result.corrected.splitlines()[:2] == [
        "WEBVTT", "X-TIMESTAMP-MAP=MPEGTS:11880000,LOCAL:00:00:00.000"]
    assert result.corrected.split("\n", 2)[2] == body.split("\n", 1)[1]  # cues untouched
    assert result.cues == (Cue(Fraction(133), Fraction(136)),)
    assert cues(body) == (Cue(Fraction(1), Fraction(4)),)  # the fault: media time 1-4 s
    assert check_timestamp_map(result.corrected, CONTENT_2202).status is MapStatus.OK


@pytest.mark.parametrize(("name", "pts"), [("subs/seg2200.vtt", CONTENT_2200),
                                           ("subs/ad-empty-2201.vtt", AD_A0)])
def test_b22_segments_with_the_span_map_are_left_alone(name: str, pts: int) -> None:
    body = bundle_files("B22.txt")[name]
    result = check_timestamp_map(body, pts)
    assert result.status is MapStatus.OK and result.corrected == body


def test_b22_pre_break_cue_on_the_media_timeline() -> None:
    body = bundle_files("B22.txt")["subs/seg2200.vtt"]
    assert cues(body) == (Cue(Fraction(121), Fraction(124)),)


def test_a_map_from_another_span_is_incorrect_and_replaced() -> None:
    """The content's own map copied onto an ad filler (ad PTS restart at 10 s)."""
    body = bundle_files("B22.txt")["subs/seg2200.vtt"]
    result = check_timestamp_map(body, AD_A0)
    assert result.status is MapStatus.INCORRECT and result.found == CONTENT_2200
    assert result.corrected.count("X-TIMESTAMP-MAP") == 1
    assert result.cues == (Cue(Fraction(11), Fraction(14)),)


def test_equivalent_maps_agree_and_pts_wraps() -> None:
    shifted = "WEBVTT\nX-TIMESTAMP-MAP=LOCAL:00:00:02.000,MPEGTS:1080000\n\n"
    assert timestamp_map(shifted) == 900_000
    assert check_timestamp_map(shifted, 900_000).status is MapStatus.OK
    assert pts_at(PTS_WRAP - 90_000, Fraction(2)) == 90_000
    wrapped = with_timestamp_map("WEBVTT\r\n\r\n00:01.000 --> 00:02.000\r\nx\r\n", PTS_WRAP + 5)
    assert wrapped.startswith("WEBVTT\r\nX-TIMESTAMP-MAP=MPEGTS:5,LOCAL:00:00:00.000\r\n\r\n")


def test_not_webvtt_is_an_error() -> None:
    with pytest.raises(WebVttError):
        check_timestamp_map("<html>", 0)


# repair_timestamp_map: rewrite a map only when it is wrong for sure.

SIX = Fraction(6)


def test_b22_repair_writes_the_span_map_into_the_post_break_segment() -> None:
    files = bundle_files("B22.txt")
    repaired = repair_timestamp_map(files["subs/seg2202.vtt"], CONTENT_2202, SIX)
    assert repaired.outcome is RepairOutcome.REPAIRED
    assert "X-TIMESTAMP-MAP=MPEGTS:11880000,LOCAL:00:00:00.000" in repaired.body.splitlines()
    assert cues(repaired.body) == (Cue(Fraction(133), Fraction(136)),)
    for name, pts in (("subs/seg2200.vtt", CONTENT_2200), ("subs/ad-empty-2201.vtt", AD_A0)):
        kept = repair_timestamp_map(files[name], pts, SIX)
        assert kept.outcome is RepairOutcome.OK and kept.body == files[name]


def test_a_map_copied_from_another_span_is_repaired() -> None:
    """The ad's map left on the content segment after the break: cues at 11-14 s."""
    body = with_timestamp_map(bundle_files("B22.txt")["subs/seg2202.vtt"], AD_A0)
    repaired = repair_timestamp_map(body, CONTENT_2202, SIX)
    assert repaired.outcome is RepairOutcome.REPAIRED
    assert timestamp_map(repaired.body) == CONTENT_2202
    assert repaired.body.count("X-TIMESTAMP-MAP") == 1


def test_a_constant_map_with_cue_times_from_the_stream_start_is_left_alone() -> None:
    """Valid HLS that check_timestamp_map calls INCORRECT: the map names the stream's
    first PTS (10 s) on every segment and cues count from there. The segment at
    142 s (PTS 12780000) holds a cue at 00:02:13 = 133 s + 10 s."""
    body = ("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n"
            "00:02:13.000 --> 00:02:16.000\nfrom the stream start\n")
    result = repair_timestamp_map(body, 12_780_000, SIX)
    assert result.check.status is MapStatus.INCORRECT
    assert result.outcome is RepairOutcome.EQUIVALENT and result.body == body


def test_no_map_with_cue_times_from_mpegts_0_is_left_alone() -> None:
    """Valid HLS too: no map (MPEG-TS 0), video PTS from 0, absolute cue times.
    The segment at 142 s: under its span's map the cue would go to 275 s."""
    body = "WEBVTT\n\n00:02:23.000 --> 00:02:25.000\nabsolute\n"
    result = repair_timestamp_map(body, 142 * TICKS, SIX)
    assert result.outcome is RepairOutcome.EQUIVALENT and result.body == body


def test_cues_outside_the_segment_under_either_map_are_kept() -> None:
    body = "WEBVTT\n\n00:50:00.000 --> 00:50:02.000\nsomewhere else\n"
    result = repair_timestamp_map(body, CONTENT_2202, SIX)
    assert result.outcome is RepairOutcome.KEPT and result.body == body


def test_a_segment_without_cues_gets_the_span_map_only_when_it_has_none() -> None:
    bare = "WEBVTT\n\n"
    repaired = repair_timestamp_map(bare, CONTENT_2202, SIX)
    assert repaired.outcome is RepairOutcome.REPAIRED
    assert timestamp_map(repaired.body) == CONTENT_2202
    other = with_timestamp_map(bare, AD_A0)
    assert repair_timestamp_map(other, CONTENT_2202, SIX).body == other


def test_a_cue_carried_over_from_the_previous_segment_counts_as_inside() -> None:
    body = ("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n\n"
            "00:02:10.000 --> 00:02:13.000\nstarted in the previous segment\n")
    assert repair_timestamp_map(body, 12_780_000, SIX).outcome is RepairOutcome.EQUIVALENT


@settings(max_examples=300, deadline=None)
@given(start=st.one_of(st.integers(0, PTS_WRAP - 1), st.integers(0, 20 * TICKS),
                       st.integers(PTS_WRAP - 20 * TICKS, PTS_WRAP - 1)),
       duration_ms=st.integers(1000, 10_000),
       cue=st.tuples(st.integers(0, 9_999), st.integers(1, 5_000)),
       local_s=st.integers(0, 3600))
def test_repair_keeps_every_right_map_and_restores_a_stripped_one(
        start: int, duration_ms: int, cue: tuple[int, int], local_s: int) -> None:
    """Cues inside the segment under a right map, in any equivalent form: never
    touched. The same segment with its map stripped (cues then at MPEG-TS 0): the
    map restored, cues back where they were (even when MPEG-TS 0 is near)."""
    duration = Fraction(duration_ms, 1000)
    at_ms = cue[0] * duration_ms // 10_000
    local = Fraction(local_s)  # the map's LOCAL; cue times written relative to it
    mpegts = (start + round(local * TICKS)) % PTS_WRAP

    def stamp(ms: int) -> str:
        return _stamp(local + Fraction(ms, 1000))

    header = f"WEBVTT\nX-TIMESTAMP-MAP=LOCAL:{stamp(0)},MPEGTS:{mpegts}\n\n"
    cue_text = f"{stamp(at_ms)} --> {stamp(at_ms + cue[1])}\ntext\n"
    body = header + cue_text
    right = repair_timestamp_map(body, start, duration)
    assert right.outcome in (RepairOutcome.OK, RepairOutcome.EQUIVALENT)
    assert right.body == body
    # Packagers write cue times from the segment's start (LOCAL 0): strip that map.
    relative = f"{_stamp(Fraction(at_ms, 1000))} --> {_stamp(Fraction(at_ms + cue[1], 1000))}\ntext\n"
    mapped = f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{start},LOCAL:00:00:00.000\n\n" + relative
    stripped = "WEBVTT\n\n" + relative
    fixed = repair_timestamp_map(stripped, start, duration)
    assert fixed.outcome is RepairOutcome.REPAIRED
    assert cues(fixed.body) == cues(mapped) and timestamp_map(fixed.body) == start


def _stamp(seconds: Fraction) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{float(s):06.3f}"
