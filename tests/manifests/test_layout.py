"""Pods on the boundaries every grid shares (manifests.layout), and case B05.

B05 (Eyevinn/hls-splice#55): demuxed video in 4 s segments and audio in 5 s
ones. Splicing each at its own "next boundary" put the ad at 12 s in video and
15 s in audio. One splice time for all renditions: the content time before and
after every discontinuity matches across renditions (|delta| <= 0.1 s).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from manifests.breaks import Break, BreakPolicy, update_breaks
from manifests.checker import Rule, Snapshot, check
from manifests.layout import (
    CommonGrid,
    GridTiming,
    NoCommonSpan,
    PodWindow,
    common_grid,
    grid_timing,
    pod_window,
)
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import MediaPlaylist, parse_media
from manifests.pod import Candidate, Pod, plan_pod
from manifests.splice import SpliceOptions, SpliceResult, breaks_to_decide, splice
from tests.manifests.test_corpus_hls import bundle_files
from tests.synthetic import live_playlist

EPOCH = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
POLICY = BreakPolicy(max_duration=Fraction(60))


def at(seconds: Fraction | int | str) -> datetime:
    return EPOCH + timedelta(microseconds=round(Fraction(seconds) * 1_000_000))


def grids(*cadences: str | int, offsets: tuple[str | int, ...] = ()) -> CommonGrid:
    offs = offsets or (0,) * len(cadences)
    return common_grid([GridTiming(Fraction(c), at(o)) for c, o in zip(cadences, offs)])


def window(common: CommonGrid, start: str | int, duration: int, *, unit: int | str,
           offset: int = 0, end: str | int | None = None) -> PodWindow:
    brk = Break("b", at(start), Fraction(duration), end=None if end is None else at(end))
    hint = brk.duration_hint
    assert hint is not None
    return pod_window(brk, Fraction(offset), common, duration=hint, unit=Fraction(unit))


def test_common_period_is_the_lcm_anchored_where_every_grid_has_a_boundary() -> None:
    assert (grids(4, 5).period, grids(4, 5).anchor) == (20, at(0))
    assert (grids(2, 6).period, grids(2, 6).anchor) == (6, at(0))
    assert grids("2.002", "6.006").period == Fraction("6.006")
    # 4 s from 1 s and 5 s from 0: 5, 25, 45 ...
    shifted = grids(4, 5, offsets=(1, 0))
    assert shifted.period == 20 and shifted.anchor is not None
    assert shifted.ceil(at(0)) == at(5) and shifted.floor(at(44)) == at(25)
    # 2 s grids 1 s apart never share a boundary.
    assert grids(2, 2, offsets=(0, 1)).anchor is None


def test_aligned_ladder_keeps_the_unit_counted_from_the_break_start() -> None:
    assert window(grids(2, 6), 12, 30, unit=6) == PodWindow(Fraction(0), Fraction(30),
                                                            Fraction(6), True)
    # A join 5 s in starts the pod at the next unit, as before.
    assert window(grids(2, 6), 12, 30, unit=6, offset=5) == PodWindow(
        Fraction(6), Fraction(24), Fraction(6), True)
    # A single grid: whatever the end, the break's own rule (its last slot whole).
    assert window(grids(2), 10, 15, unit=2) == PodWindow(Fraction(0), Fraction(15),
                                                         Fraction(2), True)


def test_offset_cue_is_rounded_up_and_the_end_down_to_common_boundaries() -> None:
    # 2 s video, 6 s subtitles, cue at 8 s for 18 s: the subtitles have no boundary at
    # 8 s nor at 26 s; the common span is 12-24 s.
    assert window(grids(2, 6), 8, 18, unit=6) == PodWindow(Fraction(4), Fraction(12),
                                                           Fraction(6), False)
    # 4 s video, 5 s audio: a break 20-50 s is cut back to 20-40 s.
    assert window(grids(4, 5), 20, 30, unit=5) == PodWindow(Fraction(0), Fraction(20),
                                                            Fraction(20), False)


def test_a_break_holding_no_common_span_is_refused() -> None:
    with pytest.raises(NoCommonSpan):
        window(grids(4, 5), 12, 12, unit=5, end=24)  # B05: common boundaries 0, 20, 40
    with pytest.raises(NoCommonSpan):
        window(grids(2, 2, offsets=(0, 1)), 10, 30, unit=2)


def test_grid_timing_reads_the_cadence_and_a_boundary() -> None:
    text = _playlist("v", 4, 10, 100)
    timing = grid_timing(parse_media(text))
    assert timing == GridTiming(Fraction(4), at(36))
    assert grid_timing(parse_media("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\na.ts\n")) is None


# ------------------------------------------------------------------ B05


def _playlist(track: str, cadence: int, count: int, msn: int = 0, *,
              cue: tuple[int, int] | None = None, ext: str = "ts") -> str:
    return live_playlist(track, cadence, count, epoch=EPOCH, msn=msn, cue=cue, ext=ext)


class Uris:
    def __init__(self, track: str) -> None:
        self.track = track

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ads/{break_id}/{item_index}/{self.track}/seg{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"slate/{self.track}/seg{segment}.ts"


def _stitch(origin: dict[str, str]) -> dict[str, SpliceResult]:
    """Both tracks through the splice as the service does: breaks from the video's
    markers, one pod per break placed with pod_window on the common boundaries."""
    parsed: dict[str, MediaPlaylist] = {rid: parse_media(text) for rid, text in origin.items()}
    breaks: tuple[Break, ...] = ()
    for playlist in parsed.values():
        breaks = update_breaks(breaks, observe(playlist), POLICY).breaks
    timings = [grid_timing(p) for p in parsed.values()]
    common = common_grid([t for t in timings if t is not None])
    unit = max(t.cadence for t in timings if t is not None)
    pods: dict[str, Pod] = {}
    out = {}
    for rid, playlist in parsed.items():
        for break_id, start in breaks_to_decide(playlist, breaks, Ledger(), POLICY).items():
            if break_id in pods:
                continue
            brk = next(b for b in breaks if b.id == break_id)
            assert brk.duration_hint is not None
            try:
                w = pod_window(brk, start, common, duration=brk.duration_hint, unit=unit)
            except NoCommonSpan:
                pods[break_id] = Pod(break_id, (), unit, personalized=False)
                continue
            pods[break_id] = plan_pod(break_id, [Candidate("ad1", Fraction(10))],
                                      available=w.available, start=w.start, nominal=w.unit)
        out[rid] = splice(playlist, breaks=breaks, pods=pods, ledger=Ledger(), uris=Uris(rid),
                          options=SpliceOptions(cadence=playlist.segments[0].duration))
    return out


def _replaced_span(result: SpliceResult) -> tuple[datetime, datetime] | None:
    """Content time (PDT) of the first replaced slot and of the content after them."""
    slots = result.slots
    replaced = [i for i, s in enumerate(slots) if s.kind.value != "content"]
    if not replaced:
        return None
    first, last = slots[replaced[0]].segment, slots[replaced[-1]].segment
    assert first.pdt is not None and last.pdt is not None
    return first.pdt, last.pdt + last.step


def test_b05_faulty_files_are_flagged_3_s_apart() -> None:
    """INDEX: 12.0 s of content before the first DISCONTINUITY in video against 15.0 s
    in audio; the checker attributes the disagreement to the stitcher."""
    files = bundle_files("B05.txt")
    before = {}
    for rid in ("video", "audio"):
        segs = parse_media(files[f"{rid}.m3u8"]).segments
        first_disc = next(i for i, s in enumerate(segs) if s.discontinuity)
        before[rid] = sum((s.duration for s in segs[:first_disc]), Fraction(0))
    assert before == {"video": 12, "audio": 15}
    found = check([Snapshot(0, {"video": files["video.m3u8"], "audio": files["audio.m3u8"]})])
    assert found and {(v.rule, v.source) for v in found} == {(Rule.RENDITIONS_DISAGREE,
                                                                "stitcher")}
    by_msn = {v.msn: v.message for v in found if v.rendition == "audio"}
    assert "at 2000-01-01T00:00:12" in by_msn[2]  # video's discontinuity, none in audio
    assert "at 2000-01-01T00:00:15" in by_msn[3]  # audio's, 3.0 s later, none in video


def test_b05_probe_is_left_to_content_in_every_rendition() -> None:
    """The probe: video CUE-OUT at 12 s, CUE-IN at 24 s; B05's 4 s video and 5 s audio.
    The common boundaries are 0, 20, 40 s: no common span lies inside 12-24 s, so
    the break is the content underneath in both tracks (no splice at 12 vs 15 s)."""
    files = bundle_files("B05.txt")
    video = parse_media(files["video.m3u8"]).segments[0].duration
    audio = parse_media(files["audio.m3u8"]).segments[0].duration
    assert (video, audio) == (4, 5)
    origin = {"video": _playlist("v", 4, 10, cue=(12, 24)),
              "audio": _playlist("a", 5, 8, ext="aac")}
    out = _stitch(origin)
    assert all(_replaced_span(r) is None for r in out.values())
    assert all("#EXT-X-DISCONTINUITY" not in r.text for r in out.values())
    snapshot = Snapshot(0, {rid: r.text for rid, r in out.items()}, origin=origin)
    assert [v for v in check([snapshot]) if v.source == "stitcher"] == []


@pytest.mark.parametrize(("cue", "span"), [((12, 44), (20, 40)), ((20, 40), (20, 40)),
                                           ((8, 64), (20, 60))])
def test_b05_shape_is_spliced_at_the_same_content_time_in_every_rendition(
        cue: tuple[int, int], span: tuple[int, int]) -> None:
    """A longer break over the same ladder: both tracks are replaced over the same
    common span, so content before and after the break matches (delta 0)."""
    origin = {"video": _playlist("v", 4, 20, cue=cue),
              "audio": _playlist("a", 5, 16, ext="aac")}
    out = _stitch(origin)
    spans = {rid: _replaced_span(r) for rid, r in out.items()}
    assert spans == {"video": (at(span[0]), at(span[1])), "audio": (at(span[0]), at(span[1]))}
    # Ad (and slate after it, 8-64 s) in both, entered and left at the same instants.
    counts = {r.text.count("#EXT-X-DISCONTINUITY\n") for r in out.values()}
    assert len(counts) == 1 and counts.pop() >= 2
    snapshot = Snapshot(0, {rid: r.text for rid, r in out.items()}, origin=origin)
    assert [v for v in check([snapshot]) if v.source == "stitcher"] == []
