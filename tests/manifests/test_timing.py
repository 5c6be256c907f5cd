"""PDT parsing and rendering whatever the process time zone (B14, hls.js#7268).

Every test here runs with ``TZ`` set to a non-UTC zone: a zone-less PDT is
UTC (RFC 8216bis 4.4.4.6 / what players do), never the viewer's local time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import pytest

from manifests.breaks import update_breaks
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import parse_media
from manifests.pod import Candidate, plan_pod
from manifests.splice import splice
from manifests.timeline import with_pdt
from manifests.timing import format_pdt, parse_pdt, seconds_between

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not found")


@pytest.fixture(autouse=True, params=["America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    assert time.timezone != 0  # the zone really is not UTC
    yield request.param
    monkeypatch.undo()
    time.tzset()


@needs_corpus
def test_b14_five_pdts_are_utc_six_seconds_apart() -> None:
    playlist = parse_media((CORPUS / "bugs" / "B14.m3u8").read_text())
    pdts = [s.pdt for s in playlist.segments]
    assert pdts == [datetime(2024, 3, 17, 23, 0, s, tzinfo=UTC) for s in (0, 6, 12, 18, 24)]
    assert all(s.pdt_explicit for s in playlist.segments)
    deltas = [seconds_between(a.pdt, b.pdt) for a, b in  # type: ignore[arg-type]
              zip(playlist.segments, playlist.segments[1:])]
    assert deltas == [Fraction("6.000")] * 4
    assert deltas == [s.duration for s in playlist.segments[:-1]]
    assert [format_pdt(p) for p in pdts if p is not None] == [
        f"2024-03-17T23:00:{s:02d}.000Z" for s in (0, 6, 12, 18, 24)]


@pytest.mark.parametrize("text", [
    "2024-03-17T23:00:00.000Z", "2024-03-17T23:00:00.000z", "2024-03-17T23:00:00Z",
    "2024-03-17T23:00:00.000", "2024-03-17T23:00:00",            # zone-less: UTC
    "2024-03-17T23:00:00.000+00:00", "2024-03-17T23:00:00.000+0000", "2024-03-17T23:00:00+00",
    "2024-03-17T23:00:00.000-00:00",
    "2024-03-17T18:00:00.000-05:00", "2024-03-17T18:00:00.000-0500", "2024-03-17T18:00:00-05",
    "2024-03-18T04:30:00.000+05:30", "2024-03-18T04:30:00.000+0530",
    "2024-03-17T19:30:00.000-03:30", "2024-03-18T08:45:00+09:45",
    "2024-03-18T12:00:00.000+13:00", "2024-03-17T11:00:00.000-12:00",
    "20240317T230000Z", "20240317T230000.000+0000", "20240318T043000+0530",
    "2024-03-17T23:00:00,000Z", "2024-03-17 23:00:00Z",
])
def test_every_offset_form_is_the_same_instant(text: str) -> None:
    parsed = parse_pdt(text)
    assert parsed is not None
    assert parsed == datetime(2024, 3, 17, 23, tzinfo=UTC)
    assert parsed.utcoffset() is not None  # always aware
    assert format_pdt(parsed) == "2024-03-17T23:00:00.000Z"


def test_the_offset_is_kept_exactly() -> None:
    parsed = parse_pdt("2024-03-18T04:30:12.345+05:30")
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)
    assert format_pdt(parsed) == "2024-03-17T23:00:12.345Z"


def test_format_is_utc_milliseconds_and_z() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    assert format_pdt(datetime(2024, 3, 18, 4, 30, 0, 999, tzinfo=india)) == (
        "2024-03-17T23:00:00.000Z")  # below a millisecond: not written
    assert format_pdt(datetime(2024, 3, 17, 23, 0, 0, 123456, tzinfo=UTC)) == (
        "2024-03-17T23:00:00.123Z")
    # A naive datetime is UTC too, not the process's local time.
    assert format_pdt(datetime(2024, 3, 17, 23, 0, 6)) == "2024-03-17T23:00:06.000Z"


class _Uris:
    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"slate/{segment}.ts"


def test_synthesised_pdts_are_served_as_utc_milliseconds_z() -> None:
    """An origin without PDT, anchored with a +05:30 time: the stitched output writes
    the PDTs it synthesises (break entry and return) in UTC with ms and 'Z'."""
    text = ("#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXT-X-MEDIA-SEQUENCE:10\n"
            "#EXTINF:6.000,\nc10.ts\n#EXT-X-CUE-OUT:12\n#EXTINF:6.000,\nc11.ts\n"
            "#EXTINF:6.000,\nc12.ts\n#EXT-X-CUE-IN\n#EXTINF:6.000,\nc13.ts\n")
    anchor = parse_pdt("2024-03-18T04:30:00.000+05:30")
    assert anchor is not None
    playlist = with_pdt(parse_media(text), 10, anchor)
    assert [s.pdt for s in playlist.segments] == [
        datetime(2024, 3, 17, 23, 0, s, tzinfo=UTC) for s in (0, 6, 12, 18)]
    breaks = update_breaks((), observe(playlist)).breaks
    [brk] = breaks
    pod = plan_pod(brk.id, [Candidate("a", Fraction(12))], available=Fraction(12),
                   nominal=Fraction(6))
    out = splice(playlist, breaks=breaks, pods={brk.id: pod}, ledger=Ledger(), uris=_Uris())
    pdt_lines = [line for line in out.text.splitlines()
                 if line.startswith("#EXT-X-PROGRAM-DATE-TIME:")]
    assert pdt_lines == ["#EXT-X-PROGRAM-DATE-TIME:2024-03-17T23:00:06.000Z",
                         "#EXT-X-PROGRAM-DATE-TIME:2024-03-17T23:00:12.000Z",
                         "#EXT-X-PROGRAM-DATE-TIME:2024-03-17T23:00:18.000Z"]
