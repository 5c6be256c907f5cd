"""The incremental parser returns exactly what a full parse returns, reload after reload."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.playlist import parse_media, render
from manifests.refresh import IncrementalParser


def window(first: int, count: int, *, disc_every: int, ranged: bool, marker_every: int) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}",
             f"#EXT-X-DISCONTINUITY-SEQUENCE:{sum(1 for m in range(first) if m % disc_every == 0)}"]
    for msn in range(first, first + count):
        if msn % disc_every == 0:
            lines.append("#EXT-X-DISCONTINUITY")
        if msn % marker_every == 0:
            lines.append("#EXT-X-CUE-OUT:4")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T20:{msn // 30 % 60:02d}:"
                     f"{msn * 2 % 60:02d}.000Z")
        lines.append("#EXTINF:2.000,")
        if ranged:
            lines.append("#EXT-X-BYTERANGE:100" + (f"@{msn * 100}" if msn % 3 == 0 else ""))
            lines.append("all.ts")
        else:
            lines.append(f"s{msn}.ts")
    return "\n".join(lines) + "\n"


def snapshot(pl):  # what consumers read from a parsed playlist
    return (pl.media_sequence, pl.discontinuity_sequence, pl.target_duration, pl.marked,
            [(s.msn, s.uri, s.duration, s.pdt, s.discontinuity, s.discontinuity_sequence,
              s.byterange, s.byterange_implicit, s.raw, s.markers, s.special)
             for s in pl.segments])


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 4), st.integers(3, 8)), min_size=2, max_size=25),
       disc_every=st.integers(2, 9), ranged=st.booleans(), marker_every=st.integers(2, 7))
def test_incremental_equals_full(steps: list[tuple[int, int]], disc_every: int, ranged: bool,
                                 marker_every: int) -> None:
    parser = IncrementalParser()
    first = 100
    for advance, count in steps:
        first += advance
        text = window(first, count, disc_every=disc_every, ranged=ranged,
                      marker_every=marker_every)
        ours, full = parser.parse(text), parse_media(text)
        assert render(ours) == text
        assert snapshot(ours) == snapshot(full)


def test_a_plain_slide_is_incremental() -> None:
    parser = IncrementalParser()
    for first in range(100, 120):
        parser.parse(window(first, 6, disc_every=7, ranged=False, marker_every=5))
    assert parser.full_parses == 1 and parser.incremental_parses == 19
