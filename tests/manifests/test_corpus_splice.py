"""Every live playlist of the corpus, stitched, passes the checker.

For each media playlist (and fragment) in ``../shared/corpus``, its breaks are
found, a pod is planned for each (two ads and slate), and the stitched output
is checked against the origin with :mod:`manifests.checker`: whatever the
origin got wrong is reported as inherited, and the stitcher must add nothing.
The ads include short ones (4, 2 and 1 s next to 10 and 15 s), so every break
the INDEX expects gets a non-empty pod: the replaced slots must be exactly the
expected ones (first replaced slot, and so MSN, PDT and replaced duration), and
the set of stitched files is asserted exactly, so "nothing found" is not vacuous.
A break whose start is unknown (joined from a bare CONT, ``start_unknown``) is
left to the content underneath, by design.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from manifests.breaks import update_breaks
from manifests.checker import Snapshot, check, format_text
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import render_lines
from manifests.pod import Candidate, plan_pod
from manifests.splice import SpliceOptions, breaks_to_decide, splice
from tests.manifests.test_corpus_hls import (
    BASE_URL, DEFAULT_POLICY, EXPECTED, MEDIA_KEYS, PLAYLISTS, needs_corpus, parse, timed,
)

ADS = [Candidate("adA", Fraction(10)), Candidate("adB", Fraction(15)),
       Candidate("adC", Fraction(4)), Candidate("adD", Fraction(2)), Candidate("adE", Fraction(1))]
STITCHED: set[str] = set()


class Uris:
    """Ads follow the content's container, as the service conditions them: fMP4
    (with their own init, declared after each discontinuity) under fMP4 content."""

    def __init__(self, fmp4: bool = False) -> None:
        self.ext = "m4s" if fmp4 else "ts"
        self.fmp4 = fmp4

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.{self.ext}"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.{self.ext}"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return f"ad/v0/{break_id}/{item_index}/init.mp4" if self.fmp4 else None

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return "/assets/slate/v0/init.mp4" if self.fmp4 else None


def _origin_text(playlist) -> str:  # type: ignore[no-untyped-def]
    """The origin as a complete playlist (fragments get the header they lack)."""
    lines = [line.text for line in playlist.header]
    if not lines or not lines[0].startswith("#EXTM3U"):
        lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{playlist.target_duration or 10}"] + lines
    for seg in playlist.segments:
        lines.extend(seg.raw)
    lines.extend(line.text for line in playlist.trailer)
    return render_lines(lines)


@needs_corpus
@pytest.mark.parametrize("key", MEDIA_KEYS)
def test_stitched_corpus_playlist_passes_the_checker(key: str) -> None:
    playlist = timed(key, parse(key))
    breaks = update_breaks((), observe(playlist), DEFAULT_POLICY).breaks
    nominal = Fraction(playlist.target_duration or 2)
    pods = {}
    for break_id, start in breaks_to_decide(playlist, breaks, Ledger(), DEFAULT_POLICY).items():
        b = next(x for x in breaks if x.id == break_id)
        available = (b.duration_hint or DEFAULT_POLICY.max_duration) - start
        pods[break_id] = plan_pod(break_id, ADS, available=available, start=start,
                                  nominal=nominal, slate_segments=1)
    result = splice(playlist, breaks=breaks, pods=pods, ledger=Ledger(),
                    uris=Uris(any(seg.map is not None for seg in playlist.segments)),
                    options=SpliceOptions(base_url=BASE_URL, break_policy=DEFAULT_POLICY))
    if any(e.kind.value != "content" for e in result.new_entries):
        STITCHED.add(key)
    if EXPECTED[key]["kind"] == "media":
        replaced = [i for i, slot in enumerate(result.slots) if slot.kind.value != "content"]
        want = _expected_slots(key, len(playlist.segments))
        assert replaced == want
        segs = playlist.segments
        assert sum((segs[i].duration for i in replaced), Fraction(0)) == sum(
            (segs[i].duration for i in want), Fraction(0))
        if want:
            assert result.slots[want[0]].segment.msn == segs[want[0]].msn
            assert result.slots[want[0]].segment.pdt == segs[want[0]].pdt
    text = result.text
    if not text.startswith("#EXTM3U"):
        text = "#EXTM3U\n" + f"#EXT-X-TARGETDURATION:{playlist.target_duration or 10}\n" + text
    snapshot = Snapshot(index=0, playlists={"v0": text}, origin={"v0": _origin_text(playlist)})
    faults = [v for v in check([snapshot]) if v.source == "stitcher"]
    assert faults == [], format_text(faults)


def _expected_slots(key: str, count: int) -> list[int]:
    """Indices the INDEX expects replaced: each break's ``start_index`` up to the
    slot content resumes at (the window's end if none)."""
    expected = EXPECTED[key]
    if expected.get("start_unknown"):
        return []
    return sorted(i for start, _, end, *_ in expected["breaks"] if start is not None
                  for i in range(start, end if end is not None else count))


@needs_corpus
def test_every_expected_break_was_stitched() -> None:
    if not STITCHED:
        for key in MEDIA_KEYS:
            test_stitched_corpus_playlist_passes_the_checker(key)
    want = {key for key in MEDIA_KEYS if EXPECTED[key]["kind"] == "media"
            and _expected_slots(key, len(parse(key).segments))}
    assert sorted(STITCHED) == sorted(want)
    assert len(STITCHED) == 33
