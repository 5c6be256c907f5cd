"""manifests.webvtt: X-TIMESTAMP-MAP checked against the video of its span (B22)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from manifests.webvtt import (
    PTS_WRAP,
    Cue,
    MapStatus,
    WebVttError,
    check_timestamp_map,
    cues,
    pts_at,
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
