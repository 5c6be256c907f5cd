"""The sequence ledger's discontinuity count, and the splice's DSN from it.

The stitched EXT-X-DISCONTINUITY-SEQUENCE comes from the ledger's anchor and
its entries (every stitched discontinuity, the origin's included), so an origin
that omits the tag or gets it wrong (google/ExoPlayer#1789, corpus B01) cannot
move a segment's discontinuity number, and one that gets it right gives what it
always gave. Properties over generated origins: breaks and origin
discontinuities sliding out, compaction, restarts from JSON, window caps.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifests.errors import ManifestError, SequenceRegressionError, SpliceError
from manifests.ledger import Ledger, SlotEntry, SlotKind
from manifests.playlist import parse_media
from manifests.splice import SpliceOptions, splice
from manifests.timing import format_pdt
from tests.manifests.reloads import EPOCH, Stitcher, Uris, segment_dsns


def _disc(msn: int, kind: SlotKind = SlotKind.CONTENT, delta: int = 0) -> SlotEntry:
    return SlotEntry(msn, kind, "b" if kind is not SlotKind.CONTENT else "",
                     discontinuity=True, delta=delta)


def test_the_first_anchor_wins_and_only_a_gap_moves_it() -> None:
    ledger = Ledger().append([_disc(102)], 103, (100, 4))
    assert (ledger.dsn_msn, ledger.dsn) == (100, 4)
    assert [ledger.dsn_before(m) for m in (99, 100, 102, 103, 104, 105)] == [
        None, 4, 4, 5, 5, None]
    # Another writer's anchor for slots already published is ignored ...
    assert ledger.append([], 104, (101, 0)).dsn_msn == 100
    # ... one after a gap (a slot above the stored hwm) is taken.
    moved = ledger.append([], 120, (110, 7))
    assert (moved.dsn_msn, moved.dsn, moved.dsn_before(115)) == (110, 7, 7)


def test_compaction_folds_the_discontinuities_into_the_anchor() -> None:
    entries = [_disc(100, SlotKind.AD, 1), SlotEntry(101, SlotKind.AD, "b"),
               SlotEntry(102, SlotKind.AD, "b", delta=-1), _disc(103, delta=1), _disc(106)]
    full = Ledger().append(entries, 107, (98, 2))
    before = {m: full.dsn_before(m) for m in range(98, 109)}
    assert before[104] == 4 and before[108] == 5
    compacted = full.compact(104)
    assert (compacted.dsn_msn, compacted.dsn, set(compacted.entries)) == (104, 4, {106})
    for m in range(104, 109):
        assert compacted.dsn_before(m) == before[m]
    assert full.compact(200).dsn_msn == 108  # never past what was published
    assert full.compact(200).dsn == 5


def test_json_round_trip_and_legacy_ledgers() -> None:
    ledger = Ledger().append([_disc(5)], 9, (3, 1)).compact(2)
    assert Ledger.from_json(ledger.to_json()) == ledger
    legacy = json.loads(ledger.to_json())
    del legacy["dsn_msn"], legacy["dsn"]
    old = Ledger.from_json(json.dumps(legacy))
    assert (old.dsn_msn, old.dsn) == (-1, 0) and old.dsn_before(5) is None


def _window(first: int, count: int, discs: set[int], *, dsn: int | None) -> str:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:6", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    if dsn is not None:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}")
    for msn in range(first, first + count):
        if msn in discs:
            lines.append("#EXT-X-DISCONTINUITY")
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(EPOCH + timedelta(seconds=6 * msn))}",
                  "#EXTINF:6.000,", f"c/{msn}.ts"]
    return "\n".join(lines) + "\n"


def _stream(seed: int, mode: str, starts: list[int], length: int, discs: set[int],
            breaks: list[tuple[int, int]]) -> list[str]:
    """Reloads of one origin; ``mode``: the DSN tag it writes (``right``, ``omit``,
    ``wrong``: right at the first reload, then random)."""
    rng = random.Random(seed)
    texts = []
    for i, first in enumerate(starts):
        right = sum(1 for m in discs if m < first)
        dsn = {"right": right, "omit": None,
               "wrong": right if i == 0 else rng.randrange(0, 9)}[mode]
        text = _window(first, length, discs, dsn=dsn)
        for out, back in breaks:  # CUE-OUT / CUE-IN where the window lists them
            for msn, tag in ((out, f"#EXT-X-CUE-OUT:{6 * (back - out)}"), (back, "#EXT-X-CUE-IN")):
                if first <= msn < first + length:
                    text = text.replace(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(EPOCH + timedelta(seconds=6 * msn))}\n",
                                        f"{tag}\n#EXT-X-PROGRAM-DATE-TIME:"
                                        f"{format_pdt(EPOCH + timedelta(seconds=6 * msn))}\n", 1)
        texts.append(text)
    return texts


@st.composite
def _origins(draw: st.DrawFn) -> dict[str, object]:
    # Short windows (a refresh's tail) and long ones: the splice renders plain
    # content between breaks as runs past 16 slots (manifests/splice.py, _FEW).
    length = draw(st.one_of(st.integers(3, 6), st.integers(17, 22)))
    steps = draw(st.lists(st.integers(0, 3), min_size=3, max_size=14))
    starts = [100]
    for step in steps:
        starts.append(starts[-1] + step)
    end = starts[-1] + length
    discs = set(draw(st.lists(st.integers(101, end), max_size=5)))
    breaks = []
    at = draw(st.integers(100, 104))
    while at < end:
        size = draw(st.integers(1, 4))
        breaks.append((at, at + size))
        at += size + draw(st.integers(1, 6))
    return {"starts": starts, "length": length, "discs": discs, "breaks": breaks,
            "cap": draw(st.one_of(st.none(), st.integers(2, 4))),
            "restart": draw(st.integers(0, len(starts))),
            "keep_behind": draw(st.sampled_from([0, 1, None])), "seed": draw(st.integers(0, 99))}


def _run(case: dict[str, object], mode: str) -> Stitcher:
    stitcher = Stitcher(options=SpliceOptions(window_cap=case["cap"]))  # type: ignore[arg-type]
    texts = _stream(case["seed"], mode, case["starts"], case["length"],  # type: ignore[arg-type]
                    case["discs"], case["breaks"])  # type: ignore[arg-type]
    for i, text in enumerate(texts):
        if i == case["restart"]:
            stitcher.restart()
        stitcher.reload(text)
        if case["keep_behind"] is not None:  # compact harder than the service does
            first = parse_media(text).media_sequence
            stitcher.ledger = stitcher.ledger.compact(first - case["keep_behind"])  # type: ignore[operator]
    return stitcher


@settings(max_examples=120, deadline=None)
@given(_origins())
def test_every_segment_keeps_its_discontinuity_number_whatever_the_origin_writes(
        case: dict[str, object]) -> None:
    """Three origins that differ only in their DSN tag (right, omitted, wrong after
    the first reload) stitch to the same segment numbers; the checker finds no
    stitcher fault and no DSN fault at all in any of them."""
    served = {}
    for mode in ("right", "omit", "wrong"):
        stitcher = _run(case, mode)
        faults = [v for v in stitcher.violations()
                  if v.source == "stitcher" or v.rule.name == "DISCONTINUITY_SEQUENCE"
                  and mode == "right"]
        assert faults == [], (mode, faults)
        served[mode] = [segment_dsns(s.playlists["v0"]) for s in stitcher.snapshots]
    assert served["omit"] == served["right"] == served["wrong"]


def test_a_window_after_a_gap_never_lowers_the_count() -> None:
    """Nobody published the slots of a gap (every instance down longer than a window):
    the anchor moves to the new window, from the origin's tag when it says more, and
    never below the discontinuities the ledger already counted when it says less."""
    for origin_dsn, expected in ((None, 2), (0, 2), (5, 5)):
        stitcher = Stitcher()
        stitcher.reload(_window(100, 4, {101, 102}, dsn=0))
        result = stitcher.reload(_window(200, 4, set(), dsn=origin_dsn))
        assert not isinstance(result, Exception)
        assert result.discontinuity_sequence == expected
        assert (stitcher.ledger.dsn_msn, stitcher.ledger.dsn) == (200, expected)
        again = stitcher.reload(_window(201, 4, {203}, dsn=None))
        assert not isinstance(again, Exception) and again.discontinuity_sequence == expected


def test_a_ledger_written_before_anchors_existed_is_anchored_on_its_next_render() -> None:
    """A legacy ledger (no anchor): the next render anchors at hwm + 1 from the origin's
    tag plus the ledger's delta (the old formula, so nothing served changes), and
    counts from there on."""
    text = _window(100, 4, {102}, dsn=3)
    new = Stitcher()
    new.reload(text)
    legacy = json.loads(new.ledger.to_json())
    del legacy["dsn_msn"], legacy["dsn"]
    legacy["entries"] = []  # before this change, origin discontinuities had no entry
    old = Stitcher(ledger=Ledger.from_json(json.dumps(legacy)))
    result = old.reload(_window(101, 4, {102}, dsn=3))
    assert not isinstance(result, Exception)
    assert result.discontinuity_sequence == 3 and result.anchor == (104, 4)
    assert (old.ledger.dsn_msn, old.ledger.dsn) == (104, 4)
    later = old.reload(_window(103, 4, {102, 105}, dsn=None))  # the origin forgets it
    assert not isinstance(later, Exception) and later.discontinuity_sequence == 4


def test_a_window_ending_below_the_high_water_mark_is_refused() -> None:
    """B02's kind, pure side: the splice never serves a window that ends before what
    it already published (older or renumbered); the same window again is fine."""
    ledger = Ledger()
    text = _window(200, 4, set(), dsn=9)
    first = splice(parse_media(text), breaks=(), pods={}, ledger=ledger, uris=Uris())
    ledger = ledger.append(first.new_entries, first.hwm, first.anchor)
    again = splice(parse_media(text), breaks=(), pods={}, ledger=ledger, uris=Uris())
    assert again.text == first.text
    with pytest.raises(SequenceRegressionError) as raised:
        splice(parse_media(_window(196, 4, set(), dsn=9)), breaks=(), pods={}, ledger=ledger,
               uris=Uris())
    assert isinstance(raised.value, SpliceError) and isinstance(raised.value, ManifestError)
    assert (raised.value.last, raised.value.hwm) == (199, 203)
    assert "199" in str(raised.value) and "203" in str(raised.value)
