"""Ad-marker dialects and the defined behaviour for feeds that break the rules.

Each rule of :mod:`manifests.breaks`' docstring has a test here, built from
small playlists on a known PDT clock; whole break lists are compared.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from manifests import scte35
from manifests.breaks import (
    Break,
    BreakIndex,
    BreakPolicy,
    overridden,
    pts_distance,
    update_breaks,
)
from manifests.markers import (
    EXT_X_CUE_OUT,
    MarkerErrors,
    MarkerPolicy,
    Observation,
    Signal,
    SignalKind,
    observe,
    segment_signals,
)
from manifests.playlist import MediaPlaylist, Segment, parse_media, render
from manifests.timeline import TimelineError, anchor_of, with_pdt
from manifests.timing import PTS_MODULUS, format_pdt

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DEFAULT_POLICY = BreakPolicy()
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def window(*segments: tuple[list[str], float], msn: int = 0, start: float = 0.0,
           pdt: bool = True) -> MediaPlaylist:
    """A live window: each segment is (tags before it, duration); PDT on the first."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:6",
             f"#EXT-X-MEDIA-SEQUENCE:{msn}"]
    if pdt:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(at(start))}")
    for i, (tags, duration) in enumerate(segments):
        lines.extend(tags)
        lines.append(f"#EXTINF:{duration:.3f},")
        lines.append(f"seg{msn + i}.ts")
    return parse_media("\n".join(lines) + "\n")


def breaks_of(*playlists: MediaPlaylist, policy: BreakPolicy = DEFAULT_POLICY,
              known: tuple[Break, ...] = ()) -> tuple[Break, ...]:
    for playlist in playlists:
        known = update_breaks(known, observe(playlist), policy).breaks
    return known


def covered(playlist: MediaPlaylist, breaks: tuple[Break, ...],
            policy: BreakPolicy = DEFAULT_POLICY) -> list[int]:
    """MSNs of the slots some break replaces."""
    return [s.msn for s in playlist.segments
            if s.pdt is not None and any(b.covers(s.pdt, s.duration, policy) for b in breaks)]


def shape(breaks: tuple[Break, ...]) -> list[tuple[datetime, Fraction | None, datetime | None,
                                                   str | None]]:
    return [(b.start, b.planned_duration, b.end, b.event_id) for b in breaks]


def b64(command: scte35.SpliceCommand, descriptors: tuple[scte35.SpliceDescriptor, ...] = (),
        pts_adjustment: int = 0) -> str:
    return scte35.encode_base64(scte35.SpliceInfoSection.build(
        command, descriptors, pts_adjustment=pts_adjustment))


def splice_insert(event_id: int, *, out: bool = True, seconds: int | None = None,
                  pts: int = 900_000, cancel: bool = False) -> scte35.SpliceInsert:
    if cancel:
        return scte35.SpliceInsert(event_id, True)
    bd = scte35.BreakDuration(True, seconds * 90_000) if seconds is not None else None
    return scte35.SpliceInsert(event_id, out_of_network_indicator=out,
                               duration_flag=bd is not None,
                               splice_time=scte35.SpliceTime(True, pts), break_duration=bd)


def seg_desc(event_id: int, type_id: int, seconds: int | None = None,
             cancel: bool = False) -> scte35.SegmentationDescriptor:
    if cancel:
        return scte35.SegmentationDescriptor(event_id, True)
    return scte35.SegmentationDescriptor(
        event_id, segmentation_duration_flag=seconds is not None,
        segmentation_duration=None if seconds is None else seconds * 90_000,
        segmentation_type_id=type_id)


def time_signal(*descriptors: scte35.SegmentationDescriptor, pts: int = 900_000) -> str:
    return b64(scte35.TimeSignal(scte35.SpliceTime(True, pts)), descriptors)


SIX = 6.0


# --- dialects: one tag -> signals ---------------------------------------------------


def signals_of(*tags: str) -> list[Signal]:
    playlist = parse_media("#EXTM3U\n" + "\n".join(tags) + "\n#EXTINF:6.000,\ns.ts\n")
    return segment_signals(playlist.segments[0])


@pytest.mark.parametrize("tag, planned, event_id", [
    ("#EXT-X-CUE-OUT", None, None),
    ("#EXT-X-CUE-OUT:30", Fraction(30), None),
    ("#EXT-X-CUE-OUT:30.000 ", Fraction(30), None),
    ("#EXT-X-CUE-OUT:DURATION=11.52", Fraction("11.52"), None),
    ("#EXT-X-CUE-OUT:DURATION=150,BREAKID=0x0", Fraction(150), "0x0"),
    ("#EXT-X-CUE-OUT:DURATION=105.000,BREAKID=325630", Fraction(105), "325630"),
    ("#EXT-X-CUE-OUT:DURATION=30,X-VENDOR=\"a,b\",SEGMENTNUM=1", Fraction(30), None),
])
def test_cue_out_forms(tag: str, planned: Fraction | None, event_id: str | None) -> None:
    assert signals_of(tag) == [Signal(SignalKind.OUT, EXT_X_CUE_OUT, event_id=event_id,
                                      planned_duration=planned)]


def test_cue_out_with_an_envivio_cue_names_the_event() -> None:
    cue = b64(splice_insert(77, seconds=30))
    [sig] = signals_of(f'#EXT-X-CUE-OUT:30,CUE="{cue}"')
    assert (sig.kind, sig.planned_duration, sig.event_id, sig.pts) == (
        SignalKind.OUT, Fraction(30), "77", 900_000)


@pytest.mark.parametrize("tag, elapsed, planned", [
    ("#EXT-X-CUE-OUT-CONT:8.308/30", Fraction("8.308"), Fraction(30)),
    ("#EXT-X-CUE-OUT-CONT:ElapsedTime=5.939,Duration=201.467,SCTE35=/DA0AAAA…AAg+2UBNAAANvrtoQ==",
     Fraction("5.939"), Fraction("201.467")),
    ("#EXT-X-CUE-OUT-CONT", None, None),
    ("#EXT-X-CUE-CONT:ID=1,AVAIL-DUR-ELAPSED=5.8", Fraction("5.8"), None),
    ("#EXT-X-CUE-SPAN:TIMEFROMSIGNAL=PT10.5S,ID=9", Fraction("10.5"), None),
    ("#EXT-X-CUE-SPAN:TIMEFROMSIGNAL=00:01:02.5,ID=9", Fraction("62.5"), None),
    (('#EXT-X-SCTE35:CUE="/DAvAAAAAAAAAP/wFAUAAAKWf+//4WoauH4BTFYgAAEAAAAKAAhDVUVJAAAAAOv1oqc=" ,'
      'CUE-OUT=CONT'), None, None),
])
def test_continuation_forms(tag: str, elapsed: Fraction | None,
                            planned: Fraction | None) -> None:
    errors = MarkerErrors()
    playlist = parse_media("#EXTM3U\n" + tag + "\n#EXTINF:6.000,\ns.ts\n")
    [sig] = segment_signals(playlist.segments[0], errors=errors)
    assert (sig.kind, sig.elapsed, sig.planned_duration) == (SignalKind.CONT, elapsed, planned)
    assert errors.items == []  # an elided SCTE35= value is kept, never decoded


@pytest.mark.parametrize(("tag", "kind", "planned", "error"), [
    ("#EXT-X-CUE-OUT:DURATION=abc", SignalKind.OUT, None, "unreadable duration"),
    ("#EXT-X-CUE-OUT:abc", SignalKind.OUT, None, "unreadable duration"),
    ("#EXT-X-CUE-OUT:DURATION=,BREAKID=7", SignalKind.OUT, None, "unreadable duration"),
    ("#EXT-X-CUE-OUT-CONT:xxgarbage", SignalKind.CONT, None, "nothing readable"),
    ("#EXT-X-CUE-OUT-CONT:8.308/abc", SignalKind.CONT, None, "unreadable elapsed/duration"),
    ("#EXT-X-CUE-OUT-CONT:ElapsedTime=x,Duration=30", SignalKind.CONT, Fraction(30),
     "unreadable time"),
])
def test_malformed_cue_values_are_read_as_far_as_they_go_and_counted(
        tag: str, kind: SignalKind, planned: Fraction | None, error: str) -> None:
    """Found by a newcomer: ``CUE-OUT:DURATION=abc`` and ``CUE-OUT-CONT:xx...`` were
    taken without a word (no log, no count), where ``CUE-OUT:abc`` was an error.
    What can be read still counts (an OUT without a duration opens a break planned
    to the policy maximum; a CONT continues one), and each is one marker error,
    which the service counts in ``stitcher_marker_errors_total``."""
    errors = MarkerErrors()
    playlist = parse_media("#EXTM3U\n" + tag + "\n#EXTINF:6.000,\ns.ts\n")
    [sig] = segment_signals(playlist.segments[0], errors=errors)
    assert (sig.kind, sig.planned_duration) == (kind, planned)
    assert len(errors.items) == 1 and error in errors.items[0], errors.items


def test_adobe_spliceout_repeated_with_elapsed_is_a_continuation() -> None:
    [sig] = signals_of('#EXT-X-CUE:TYPE="SpliceOut",ID=325630,DURATION=105.000,ELAPSED=6.007')
    assert (sig.kind, sig.elapsed, sig.event_id) == (SignalKind.CONT, Fraction("6.007"), "325630")
    [point] = signals_of("#EXT-X-CUE:TYPE=SpliceInsert,ID=a1,TIME=10.5")
    assert point.kind is SignalKind.POINT


def test_cue_in_forms() -> None:
    cue_in = b64(splice_insert(662, out=False))
    for tag in ("#EXT-X-CUE-IN", f'#EXT-X-SCTE35:CUE="{cue_in}" ,CUE-IN=YES ',
                f"#EXT-X-SPLICEPOINT-SCTE35:{cue_in}", f'#EXT-SCTE35:CUE="{cue_in}",CUE-IN=YES',
                "#EXT-X-CUE:TYPE=SpliceIn,ID=4"):
        assert [s.kind for s in signals_of(tag)] == [SignalKind.IN], tag


def test_asset_params_go_with_the_break() -> None:
    asset = "#EXT-X-ASSET:CAID=0x0000000020FB6501,GENRE=CV"
    playlist = window(([], SIX), (["#EXT-X-CUE-OUT:12", asset], SIX), ([], SIX),
                      (["#EXT-X-CUE-IN"], SIX))
    [brk] = breaks_of(playlist)
    assert brk.params == (("CAID", "0x0000000020FB6501"), ("GENRE", "CV"))


def test_b16_payload_is_kept_byte_exact() -> None:
    text = (CORPUS / "bugs" / "B16.m3u8").read_text()
    payload = "/DA6AAAAAAAA///wBQb+dzWUAAAkAiJDVUVJAAAE0n//AAApMuAPDHVybjpleGFtcGxlOjQBAQEB1E4y2g=="
    playlist = parse_media(text)
    out = segment_signals(playlist.segments[1])
    cont = segment_signals(playlist.segments[2])
    assert [s.cue for s in out if s.cue] == [payload] and cont[0].cue == payload
    assert out[0].segmentation_type_id == 0x34 and out[0].event_id == "1234"
    assert out[0].planned_duration == 30 and len(payload) == 84
    assert render(playlist) == text


# --- defined behaviour (breaks.py docstring), one rule each -----------------------------


def test_cue_out_without_duration_and_without_cue_in_ends_at_the_configured_maximum() -> None:
    policy = BreakPolicy(max_duration=Fraction(12))
    playlist = window(([], SIX), (["#EXT-X-CUE-OUT"], SIX), ([], SIX), ([], SIX), ([], SIX))
    breaks = breaks_of(playlist, policy=policy)
    assert shape(breaks) == [(at(6), None, None, None)]
    assert covered(playlist, breaks, policy) == [1, 2]


def test_cue_out_without_cue_in_ends_at_the_planned_duration() -> None:
    playlist = window(([], SIX), (["#EXT-X-CUE-OUT:12"], SIX), ([], SIX), ([], SIX))
    breaks = breaks_of(playlist)
    assert shape(breaks) == [(at(6), Fraction(12), None, None)]
    assert covered(playlist, breaks) == [1, 2]


def test_early_cue_in_truncates_and_a_late_one_is_ignored() -> None:
    early = window((["#EXT-X-CUE-OUT:30"], SIX), ([], SIX), (["#EXT-X-CUE-IN"], SIX), ([], SIX))
    breaks = breaks_of(early)
    assert shape(breaks) == [(at(0), Fraction(30), at(12), None)]
    assert covered(early, breaks) == [0, 1]
    late = window((["#EXT-X-CUE-OUT:12"], SIX), ([], SIX), ([], SIX), (["#EXT-X-CUE-IN"], SIX))
    breaks = breaks_of(late)
    assert shape(breaks) == [(at(0), Fraction(12), None, None)]
    assert covered(late, breaks) == [0, 1]


def test_join_mid_break_from_cont_only_leaves_duration_minus_elapsed() -> None:
    for cont in ("#EXT-X-CUE-OUT-CONT:8.308/30",
                 "#EXT-X-CUE-OUT-CONT:ElapsedTime=8.308,Duration=30,SCTE35=/DAl"):
        playlist = window(([cont], SIX), ([], SIX), ([], SIX), ([], 3.692), ([], SIX), ([], SIX))
        [brk] = breaks_of(playlist)
        assert (brk.start, brk.planned_duration, brk.joined) == (
            at(-8.308), Fraction(30), True)
        assert brk.effective_end() == at(21.692)  # 30 - 8.308 remain at the join
        assert covered(playlist, (brk,)) == [0, 1, 2, 3]


def test_a_cont_saying_the_break_is_over_opens_nothing() -> None:
    playlist = window((["#EXT-X-CUE-OUT-CONT:30/30"], SIX), ([], SIX))
    assert breaks_of(playlist) == ()


def test_a_bare_cont_joins_at_its_own_segment() -> None:
    playlist = window(([], SIX), (["#EXT-X-CUE-OUT-CONT"], SIX), (["#EXT-X-CUE-OUT-CONT"], SIX),
                      (["#EXT-X-CUE-IN"], SIX))
    assert shape(breaks_of(playlist)) == [(at(6), None, at(18), None)]


def test_duplicate_out_with_the_same_event_is_one_break() -> None:
    cue = b64(splice_insert(4097, seconds=30, pts=900_000_000))
    first = window(([], SIX), ([f"#EXT-OATCLS-SCTE35:{cue}", "#EXT-X-CUE-OUT:30.000"], SIX),
                   ([f"#EXT-OATCLS-SCTE35:{cue}", "#EXT-X-CUE-OUT:30.000"], SIX), ([], SIX),
                   msn=800)
    update = update_breaks((), observe(first))
    assert shape(update.breaks) == [(at(6), Fraction(30), None, "4097")]
    assert update.ignored == []
    # The same cue again in a later reload, after the break ended: still one break.
    later = window(([], SIX), ([f"#EXT-OATCLS-SCTE35:{cue}"], SIX), ([], SIX),
                   msn=810, start=60)
    update = update_breaks(update.breaks, observe(later))
    assert shape(update.breaks) == [(at(6), Fraction(30), None, "4097")]
    assert update.new == []


def test_the_same_event_id_much_later_with_another_pts_is_a_new_break() -> None:
    first = window(([f"#EXT-OATCLS-SCTE35:{b64(splice_insert(5, seconds=6, pts=90_000))}"],
                    SIX), (["#EXT-X-CUE-IN"], SIX))
    later = window(([f"#EXT-OATCLS-SCTE35:{b64(splice_insert(5, seconds=6, pts=9_000_000))}"],
                    SIX), (["#EXT-X-CUE-IN"], SIX), msn=20, start=120)
    assert [b.start for b in breaks_of(first, later)] == [at(0), at(120)]


def test_pts_wrap_around_does_not_split_a_repeated_cue() -> None:
    assert pts_distance(PTS_MODULUS - 10, 20) == 30
    # One copy carries the splice time as signalled just after the 33-bit wrap; the
    # other was re-stamped upstream with a pts_adjustment that wraps it there too.
    a = b64(splice_insert(9, seconds=12, pts=900))
    b = b64(splice_insert(9, seconds=12, pts=PTS_MODULUS - 89_100), pts_adjustment=90_000)
    assert scte35.decode(b).effective_pts_time == 900
    # A third copy stamped a few ticks before the wrap is the same instant too.
    c = b64(splice_insert(9, seconds=12, pts=PTS_MODULUS - 60))
    first = window(([f"#EXT-OATCLS-SCTE35:{a}"], SIX), ([], SIX), ([], SIX))
    repeat = window(([f"#EXT-OATCLS-SCTE35:{b}"], SIX), ([f"#EXT-OATCLS-SCTE35:{c}"], SIX),
                    msn=30, start=300)
    update = update_breaks(breaks_of(first), observe(repeat))
    assert len(update.breaks) == 1 and update.new == [] and update.ignored == []


def test_overlapping_out_is_ignored_and_counted() -> None:
    a = b64(splice_insert(1, seconds=24))
    b = b64(splice_insert(2, seconds=24))
    playlist = window(([f"#EXT-OATCLS-SCTE35:{a}"], SIX), ([], SIX),
                      ([f"#EXT-OATCLS-SCTE35:{b}"], SIX), ([], SIX), ([], SIX), ([], SIX))
    update = update_breaks((), observe(playlist))
    assert shape(update.breaks) == [(at(0), Fraction(24), None, "1")]
    assert len(update.ignored) == 1 and "overlaps" in str(update.ignored[0])
    [ignored] = update.ignored
    assert (ignored.at, ignored.event_id, ignored.planned_duration, ignored.inside) == (
        at(12), "2", Fraction(24), update.breaks[0].id)
    assert covered(playlist, update.breaks) == [0, 1, 2, 3]


def _ahead(start: float, seconds: int) -> Observation:
    """A break placed ahead by ad ops (stitcher.control.AdOpsBreak's observation)."""
    return Observation(SignalKind.OUT, at(start), -1, "adops", event_id="ops",
                       planned_duration=Fraction(seconds))


def _indexed(playlist: MediaPlaylist, breaks: tuple[Break, ...]) -> dict[int, str]:
    """MSN -> id of the break the splice's index puts over the slot."""
    index = BreakIndex(breaks, DEFAULT_POLICY)
    found = {s.msn: index.covering(s.pdt, s.duration) for s in playlist.segments
             if s.pdt is not None}
    return {msn: b.id for msn, b in found.items() if b is not None}


def test_a_break_placed_ahead_that_starts_inside_an_earlier_open_one_never_plays() -> None:
    """Found by a newcomer: an ad-ops break 12 s out, then the feed's own CUE-OUT at
    6 s (24 s): the ad-ops break took over 6 s into the feed's pod, cutting its ad.
    The open one wins, as for an OUT inside an open break."""
    placed = update_breaks((), [_ahead(12, 10)]).breaks
    feed = window((["#EXT-X-CUE-OUT:24"], SIX), ([], SIX), ([], SIX), ([], SIX), ([], SIX),
                  start=6, msn=1)
    breaks = update_breaks(placed, observe(feed)).breaks
    (mine,) = [b for b in breaks if b.event_id == "ops"]
    (theirs,) = [b for b in breaks if b.event_id != "ops"]
    assert overridden(breaks) == {mine.id: theirs.id}
    assert _indexed(feed, breaks) == dict.fromkeys([1, 2, 3, 4], theirs.id)
    # Ad ops' observation is fed again on every render: the same break, no overlap.
    again = update_breaks(breaks, [_ahead(12, 10), *observe(feed)])
    assert again.breaks is breaks and again.ignored == []


def test_a_break_placed_ahead_plays_when_the_earlier_one_ends_before_it() -> None:
    placed = update_breaks((), [_ahead(12, 12)]).breaks
    feed = window((["#EXT-X-CUE-OUT"], SIX), (["#EXT-X-CUE-IN"], SIX), ([], SIX),
                  ([], SIX), start=6, msn=1)
    breaks = update_breaks(placed, observe(feed)).breaks
    (mine,) = [b for b in breaks if b.event_id == "ops"]
    (theirs,) = [b for b in breaks if b.event_id != "ops"]
    assert overridden(breaks) == {}
    assert _indexed(feed, breaks) == {1: theirs.id, 2: mine.id, 3: mine.id}


def test_a_cue_in_closes_the_break_that_is_playing_not_one_it_overrode() -> None:
    """An untyped CUE-IN closes whatever is open; with a placed break inside the
    feed's open one, that is the feed's (it closed the placed one, and the feed's
    break ran on to its maximum)."""
    placed = update_breaks((), [_ahead(12, 30)]).breaks
    feed = window((["#EXT-X-CUE-OUT"], SIX), ([], SIX), (["#EXT-X-CUE-IN"], SIX),
                  ([], SIX), ([], SIX), start=6, msn=1)
    breaks = update_breaks(placed, observe(feed)).breaks
    (mine,) = [b for b in breaks if b.event_id == "ops"]
    (theirs,) = [b for b in breaks if b.event_id != "ops"]
    assert (theirs.end, mine.end) == (at(18), None)
    assert overridden(breaks) == {mine.id: theirs.id}
    assert _indexed(feed, breaks) == {1: theirs.id, 2: theirs.id}


def test_a_break_placed_back_to_back_after_the_feeds_is_not_ended_by_its_cue_in() -> None:
    """Found by a newcomer: an ad-ops break placed where the feed's break ends. The
    feed's CUE-IN at that instant closed the placed break (0 s, content played,
    its ads told notUsed) instead of the feed's."""
    placed = update_breaks((), [_ahead(18, 10)]).breaks
    feed = window((["#EXT-X-CUE-OUT"], SIX), ([], SIX), (["#EXT-X-CUE-IN"], SIX),
                  ([], SIX), ([], SIX), start=6, msn=1)
    breaks = update_breaks(placed, observe(feed)).breaks
    (mine,) = [b for b in breaks if b.event_id == "ops"]
    (theirs,) = [b for b in breaks if b.event_id != "ops"]
    assert (theirs.end, mine.end) == (at(18), None)
    assert overridden(breaks) == {}
    assert _indexed(feed, breaks) == {1: theirs.id, 2: theirs.id, 3: mine.id, 4: mine.id}


def test_cancel_before_the_start_drops_the_break_and_after_it_ends_it() -> None:
    out = b64(splice_insert(7, seconds=30))
    cancel = b64(splice_insert(7, cancel=True))
    announced = window(([f"#EXT-OATCLS-SCTE35:{out}", f"#EXT-OATCLS-SCTE35:{cancel}"], SIX),
                       ([], SIX))
    [brk] = breaks_of(announced)
    assert brk.cancelled and covered(announced, (brk,)) == []
    running = window(([f"#EXT-OATCLS-SCTE35:{out}"], SIX), ([], SIX),
                     ([f"#EXT-OATCLS-SCTE35:{cancel}"], SIX), ([], SIX))
    [brk] = breaks_of(running)
    assert (brk.cancelled, brk.end) == (False, at(12))
    assert covered(running, (brk,)) == [0, 1]
    # A segmentation descriptor's cancel indicator works the same way.
    seg_cancel = time_signal(seg_desc(0x99, 0x34, cancel=True))
    opened = window(([f"#EXT-OATCLS-SCTE35:{time_signal(seg_desc(0x99, 0x34, 30))}",
                      f"#EXT-OATCLS-SCTE35:{seg_cancel}"], SIX), ([], SIX))
    assert [b.cancelled for b in breaks_of(opened)] == [True]


def test_daterange_inside_a_segment_starts_and_ends_at_the_next_boundaries() -> None:
    out = (f'#EXT-X-DATERANGE:ID="b",START-DATE="{format_pdt(at(4.3))}",PLANNED-DURATION=10,SCTE35-OUT=0xFC'
           )
    closing = f'#EXT-X-DATERANGE:ID="b",END-DATE="{format_pdt(at(14.3))}",SCTE35-IN=0xFC'
    playlist = window(([out], 4.0), ([], 4.0), ([], 4.0), ([closing], 4.0), ([], 4.0),
                      ([], 4.0))
    breaks = breaks_of(playlist)
    # 4.3 s is inside seg0 (0-4) -> no: inside seg1 (4-8): that one is kept.
    assert shape(breaks) == [(at(8), Fraction(10), at(16), "b")]
    assert covered(playlist, breaks) == [2, 3]


def test_a_break_shorter_than_a_segment_replaces_that_one_segment() -> None:
    playlist = window(([], SIX), (["#EXT-X-CUE-OUT:2"], SIX), ([], SIX))
    breaks = breaks_of(playlist)
    assert covered(playlist, breaks) == [1]


def test_a_zero_duration_break_replaces_nothing() -> None:
    for tags in (["#EXT-X-CUE-OUT:0", "#EXT-X-CUE-IN"], ["#EXT-X-CUE-OUT:0"]):
        playlist = window(([], SIX), (tags, SIX), ([], SIX))
        [brk] = breaks_of(playlist)
        assert brk.start == at(6) and covered(playlist, (brk,)) == []


def test_markers_in_one_rendition_apply_to_all_by_pdt() -> None:
    video = window(([], 4.0), (["#EXT-X-CUE-OUT:8"], 4.0), ([], 4.0), (["#EXT-X-CUE-IN"], 4.0))
    audio = window(([], 2.0), ([], 2.0), ([], 2.0), ([], 2.0), ([], 2.0), ([], 2.0), ([], 2.0),
                   msn=50)
    known = breaks_of(video)
    assert breaks_of(audio, known=known) == known  # no markers: nothing changes
    assert covered(audio, known) == [52, 53, 54, 55]
    # Observed in either order, from either rendition, the same break.
    assert breaks_of(audio, video) == known


def test_break_state_never_leaks_past_cue_in() -> None:
    text = (CORPUS / "bugs" / "B12.m3u8").read_text() if CORPUS.is_dir() else None
    if text is not None:
        playlist = with_pdt(parse_media(text), 0, T0)
        seg2 = playlist.segments[2]
        assert segment_signals(seg2) == [Signal(SignalKind.IN, "#EXT-X-CUE-IN")]
        breaks = breaks_of(playlist)
        assert covered(playlist, breaks) == [0, 1]
    closing = window((["#EXT-X-CUE-OUT:30"], SIX), (["#EXT-X-CUE-IN"], SIX), ([], SIX))
    after = window(([], SIX), ([], SIX), ([], SIX), msn=2, start=12)
    known = breaks_of(closing, after)
    assert shape(known) == [(at(0), Fraction(30), at(6), None)]
    assert covered(after, known) == []


def test_a_window_that_begins_with_cue_in_parses_and_opens_nothing() -> None:
    playlist = window((["#EXT-X-CUE-IN"], SIX), ([], SIX))
    assert breaks_of(playlist) == ()


def test_nested_segmentation_descriptors_are_one_break() -> None:
    po_and_ad = time_signal(seg_desc(1, 0x34, 60), seg_desc(2, 0x30, 30))
    playlist = window(([f"#EXT-OATCLS-SCTE35:{po_and_ad}"], SIX), ([], SIX))
    [brk] = breaks_of(playlist)
    assert (brk.event_id, brk.segmentation_type_id, brk.planned_duration) == ("1", 0x34, 60)
    # Separate cues: the provider ad start and end inside the placement opportunity
    # are events of that break; only the PO end (0x35) closes it.
    tags = [
        [f"#EXT-OATCLS-SCTE35:{time_signal(seg_desc(1, 0x34, 60))}"],
        [f"#EXT-OATCLS-SCTE35:{time_signal(seg_desc(2, 0x30, 12))}"], [],
        [f"#EXT-OATCLS-SCTE35:{time_signal(seg_desc(2, 0x31))}"],
        [f"#EXT-OATCLS-SCTE35:{time_signal(seg_desc(1, 0x35))}"], [],
    ]
    playlist = window(*((t, SIX) for t in tags))
    update = update_breaks((), observe(playlist))
    assert shape(update.breaks) == [(at(0), Fraction(60), at(24), "1")]
    assert update.ignored == []
    # The same, split over two reloads.
    first = window(*((t, SIX) for t in tags[:2]))
    second = window(*((t, SIX) for t in tags[2:]), msn=2, start=12)
    assert shape(breaks_of(first, second)) == shape(update.breaks)


def test_which_types_open_a_break_is_a_channel_setting() -> None:
    ad_only = time_signal(seg_desc(2, 0x30, 30))
    playlist = window(([f"#EXT-OATCLS-SCTE35:{ad_only}"], SIX), ([], SIX))
    assert [b.segmentation_type_id for b in breaks_of(playlist)] == [0x30]
    strict = MarkerPolicy(opening_types=frozenset({0x34}), nested_types=frozenset())
    assert observe(playlist, strict) == []


def test_elemental_closing_daterange_whose_opening_left_the_window() -> None:
    closing = (f'#EXT-X-DATERANGE:ID="999",END-DATE="{format_pdt(at(20.03))}",DURATION=30.030, SCTE35-IN=0xFC00'
               )
    playlist = window(([], SIX), ([], SIX), ([], SIX), ([closing], SIX), ([], SIX), ([], SIX),
                      start=-6)
    [brk] = breaks_of(playlist)
    assert (brk.start, brk.end, brk.event_id, brk.joined) == (at(-10), at(24), "999", True)
    # Known from its opening tag in an earlier reload: the close completes it.
    opening = (f'#EXT-X-DATERANGE:ID="999",START-DATE="{format_pdt(at(-10))}",PLANNED-DURATION=30.000, '
               'SCTE35-OUT=0xFC30')
    earlier = window(([], SIX), ([opening], SIX), ([], SIX), start=-18)
    assert shape(breaks_of(earlier, playlist)) == [(at(-6), Fraction(30), at(24), "999")]


def test_daterange_tags_with_one_id_join_across_reloads() -> None:
    out = (f'#EXT-X-DATERANGE:ID="s",START-DATE="{format_pdt(at(0))}",PLANNED-DURATION=59.993,SCTE35-OUT=0xFC'
           )
    closing = '#EXT-X-DATERANGE:ID="s",DURATION=59.993,SCTE35-IN=0xFC'
    first = window(([out], 10.0), ([], 10.0))
    second = window(([], 10.0), ([], 10.0), ([closing], 10.0), msn=4, start=40)
    assert shape(breaks_of(first, second)) == [(at(0), Fraction("59.993"), at(60), "s")]


def test_elemental_style_doc_snippet_is_one_30s_break() -> None:
    """'# EXT-X-...' lines are comments: the one CUE-OUT:30.000 is never closed
    by a CUE-IN, so it ends at its planned 30 s."""
    text = (CORPUS / "public" / "hls" / "aws_elemental_live_elemental_style_md_snippet.txt")
    if not text.is_file():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    lines = [ln for ln in text.read_text().splitlines() if ln and ln != "."]
    segments = [([ln], 2.0) if ln.startswith("#EXT") else ([], 2.0) for ln in lines]
    playlist = window(*segments, *([([], 2.0)] * 20))
    breaks = breaks_of(playlist)
    assert shape(breaks) == [(at(0), Fraction(30), None, None)]
    assert covered(playlist, breaks) == list(range(15))


# --- timeline -------------------------------------------------------------------------


def test_with_pdt_synthesises_from_an_anchor_without_touching_the_text() -> None:
    playlist = window(([], 4.0), ([], 6.0), ([], 2.0), msn=10, pdt=False)
    stamped = with_pdt(playlist, 11, at(100))
    assert [s.pdt for s in stamped.segments] == [at(96), at(100), at(106)]
    assert render(stamped) == render(playlist)
    assert anchor_of(stamped) == (13, at(108))
    assert [s.pdt for s in with_pdt(playlist, 13, at(108)).segments] == [at(96), at(100),
                                                                          at(106)]
    with pytest.raises(TimelineError):
        with_pdt(playlist, 20, at(0))


def test_with_pdt_keeps_the_origin_pdt() -> None:
    playlist = window(([], 4.0), ([], 4.0))
    assert with_pdt(playlist, 0, at(1000)) is playlist


def test_segment_signals_of_a_plain_segment_is_empty() -> None:
    seg = Segment(0, Fraction(6), "s.ts", ("#EXTINF:6,", "s.ts"), markers=False)
    assert segment_signals(seg) == []


# --- the event's end, not the snapped start's (gpac#3906, B09) ------------------------

FOUR = 4.0


def _grid(tags: dict[int, list[str]], n: int = 12) -> MediaPlaylist:
    """``n`` 4 s segments from T0, ``tags[i]`` before segment ``i``."""
    return window(*((tags.get(i, []), FOUR) for i in range(n)), msn=900)


def _ms(seconds: Fraction) -> str:
    return format_pdt(T0 + timedelta(microseconds=round(seconds * 1_000_000)))


def _cmd(duration: Fraction) -> str:
    ticks = round(duration * 90_000)
    desc = scte35.SegmentationDescriptor(7, segmentation_duration_flag=True,
                                         segmentation_duration=ticks, segmentation_type_id=0x34)
    return "0x" + scte35.encode(scte35.SpliceInfoSection.build(
        scte35.TimeSignal(scte35.SpliceTime(True, 900_000)), (desc,))).hex()


#: Every dialect whose end is derived from the event's start and a duration or
#: END-DATE: (name, tags on the opening segment, tags on the last segment, end is
#: declared (the range's own) rather than planned).
def _dialects(start: Fraction, duration: Fraction) -> list[tuple[str, list[str], list[str], bool]]:
    s, e = _ms(start), _ms(start + duration)
    opening = f'#EXT-X-DATERANGE:ID="e",START-DATE="{s}"'
    return [
        ("planned", [f"{opening},PLANNED-DURATION={float(duration)},SCTE35-OUT=0xFC"], [], False),
        ("duration-on-out", [f"{opening},DURATION={float(duration)},SCTE35-OUT=0xFC"], [], True),
        ("end-date-on-out", [f'{opening},END-DATE="{e}",SCTE35-OUT=0xFC'], [], True),
        ("duration-on-in", [f"{opening},PLANNED-DURATION={float(duration) + 7},SCTE35-OUT=0xFC"],
         [f'#EXT-X-DATERANGE:ID="e",DURATION={float(duration)},SCTE35-IN=0xFC'], True),
        ("end-date-on-in", [f"{opening},PLANNED-DURATION={float(duration) + 7},SCTE35-OUT=0xFC"],
         [f'#EXT-X-DATERANGE:ID="e",END-DATE="{e}",SCTE35-IN=0xFC'], True),
        ("scte35-cmd", [f'{opening},SCTE35-CMD={_cmd(duration)}'], [], False),
    ]


def _covered_by(start: Fraction, duration: Fraction, dialect: int, n: int = 12) -> list[int]:
    _name, opening, closing, _declared = _dialects(start, duration)[dialect]
    tags = {int(start // 4): opening, n - 1: closing}
    playlist = _grid(tags, n)
    return covered(playlist, breaks_of(playlist))


def _first_boundary_rule(start: Fraction, duration: Fraction, n: int = 12) -> list[int]:
    """INDEX B09: from the first boundary at or after the start, up to (not including)
    the first boundary at or after start + duration."""
    return [900 + i for i in range(n) if start <= 4 * i < start + duration]


def _snapped_rule(start: Fraction, duration: Fraction, n: int = 12) -> list[int]:
    """The reported fault: the end counted from the snapped start."""
    snapped = -(-start // 4) * 4
    return [900 + i for i in range(n) if snapped <= 4 * i < snapped + duration]


DIALECTS = [d[0] for d in _dialects(Fraction(1), Fraction(1))]


@pytest.mark.parametrize("dialect", range(len(DIALECTS)), ids=DIALECTS)
@pytest.mark.parametrize("start, duration", [
    (Fraction("10.3"), Fraction(20)),    # B09 as published: both rules agree
    (Fraction("10.3"), Fraction(21)),    # B09 with 21 s: ends 31.3, seg908 (32 s) is content
    (Fraction("5.5"), Fraction("25.0")),  # ends 30.5: snapped (8 + 25 = 33) would take seg908
    (Fraction("9.9"), Fraction("13.9")),  # ends 23.8: snapped (12 + 13.9) would take seg906
    (Fraction("4.3"), Fraction("26")),    # ends 30.3: snapped (8 + 26) would take seg908
])
def test_daterange_break_ends_at_the_first_boundary_after_the_events_end(
        dialect: int, start: Fraction, duration: Fraction) -> None:
    assert _covered_by(start, duration, dialect) == _first_boundary_rule(start, duration)


def test_the_offset_cases_tell_the_two_rules_apart() -> None:
    """The parametrised cases are not vacuous: all but B09 as published separate the rules."""
    cases = [(Fraction("10.3"), Fraction(20)), (Fraction("10.3"), Fraction(21)),
             (Fraction("5.5"), Fraction(25)), (Fraction("9.9"), Fraction("13.9")),
             (Fraction("4.3"), Fraction(26))]
    assert [_snapped_rule(s, d) != _first_boundary_rule(s, d) for s, d in cases] == [
        False, True, True, True, True]


@given(start_ms=st.integers(4_050, 11_950), duration_ms=st.integers(1_000, 30_000),
       dialect=st.integers(0, len(DIALECTS) - 1))
@settings(max_examples=150, deadline=None)
def test_any_offset_ends_at_the_first_boundary_at_or_after_the_event(
        start_ms: int, duration_ms: int, dialect: int) -> None:
    start, duration = Fraction(start_ms, 1000), Fraction(duration_ms, 1000)
    end = start + duration
    # Clear of the documented tolerances: a start within PDT rounding of a boundary,
    # a planned end within PLANNED_SLACK past one (rounded durations end there).
    assume(start % 4 > Fraction(1, 20) and not 0 <= end % 4 <= Fraction(3, 10))
    if _snapped_rule(start, duration) != _first_boundary_rule(start, duration):
        event("the rules differ")
    assert _covered_by(start, duration, dialect) == _first_boundary_rule(start, duration)


def test_b09_with_a_longer_planned_duration_keeps_seg908() -> None:
    if not CORPUS.is_dir():
        pytest.skip("corpus not found")
    text = (CORPUS / "bugs" / "B09.m3u8").read_text()
    for planned, last in (("20.0", 907), ("21.0", 907), ("22.0", 908)):
        playlist = parse_media(text.replace("PLANNED-DURATION=20.0", f"PLANNED-DURATION={planned}"))
        [brk] = breaks_of(playlist)
        assert brk.start == at(12) and brk.event_start == at(10.3)
        assert brk.effective_end() == at(10.3 + float(planned))
        assert covered(playlist, (brk,)) == list(range(903, last + 1)), planned


def test_a_range_end_past_the_window_is_known_and_outlasts_the_plan() -> None:
    """hls.js' sample: the IN's DURATION=30 (from the first START-DATE) closes the break
    past the last segment and past PLANNED-DURATION=20; a later reload resumes content
    at the first boundary at or after it."""
    opening = (f'#EXT-X-DATERANGE:ID="s",START-DATE="{format_pdt(at(2))}",'
               'PLANNED-DURATION=20.0,SCTE35-OUT=0xFC')
    closing = '#EXT-X-DATERANGE:ID="s",DURATION=30.0,SCTE35-IN=0xFC'
    first = window(([], FOUR), ([opening], FOUR), ([closing], FOUR))
    [brk] = breaks_of(first)
    assert (brk.start, brk.end, brk.end_declared) == (at(4), at(32), True)
    assert brk.effective_end() == at(32) and brk.duration_hint == 28
    later = window(*(([], FOUR) for _ in range(10)), msn=0)
    assert covered(later, breaks_of(later, known=(brk,))) == [1, 2, 3, 4, 5, 6, 7]
    # The same close seen again once its boundary is listed changes nothing.
    again = window(([], FOUR), ([opening], FOUR), ([closing], FOUR),
                   *(([], FOUR) for _ in range(7)))
    assert breaks_of(again, known=(brk,)) == (brk,)


def test_a_range_end_seen_again_closes_only_its_own_break() -> None:
    """A DATERANGE's IN repeated (the next reload, another rendition) is the same
    close: it must not fall through to close another break. Here a break joined
    from ID-less CONT tags (no CUE-IN ever comes) sits before range "201"; the
    second pass once gave the joined break 201's end (found by the unaligned-grid
    property: the renditions then disagreed on where content resumed)."""
    playlist = window((["#EXT-X-CUE-OUT-CONT:ElapsedTime=4,Duration=6"], FOUR),
                      ([], FOUR), ([], FOUR),
                      ([(f'#EXT-X-DATERANGE:ID="201",START-DATE="{format_pdt(at(12))}",'
                         'PLANNED-DURATION=6,SCTE35-OUT=0xFC')], FOUR),
                      ([], FOUR),
                      ([(f'#EXT-X-DATERANGE:ID="201",START-DATE="{format_pdt(at(12))}",'
                         f'END-DATE="{format_pdt(at(20))}",SCTE35-IN=0xFC')], FOUR),
                      start=0)
    once = breaks_of(playlist)
    joined, ranged = once
    assert (joined.start, joined.end, joined.planned_duration) == (at(-4), None, 6)
    assert (ranged.event_id, ranged.end, ranged.end_declared) == ("201", at(20), True)
    assert breaks_of(playlist, playlist, playlist) == once


def test_a_repeated_daterange_whose_start_left_the_window_is_the_same_break() -> None:
    """An origin re-sending the OUT after its START-DATE's segment left: one break."""
    opening = (f'#EXT-X-DATERANGE:ID="r",START-DATE="{format_pdt(at(5))}",'
               'PLANNED-DURATION=20.0,SCTE35-OUT=0xFC')
    first = window(([], FOUR), ([opening], FOUR), ([], FOUR), ([], FOUR))
    second = window(([opening], FOUR), ([], FOUR), ([], FOUR), msn=2, start=8)
    known = breaks_of(first, second)
    assert [(b.start, b.event_start) for b in known] == [(at(8), at(5))]


def test_corpus_asset_values_reach_the_ad_request_as_the_manifest_spelled_them() -> None:
    """INDEX (globo_cue_out_elemental): EXT-X-ASSET values are URL-encoded and go to
    the ad server decoded-or-raw consistently; SERIES is double-encoded (%2520)."""
    from stitcher.ads import ad_request_url
    from stitcher.config import ChannelConfig

    text = (CORPUS / "public" / "hls" / "globo_cue_out_elemental.m3u8").read_text()
    [brk] = breaks_of(with_pdt(parse_media(text), 47224, datetime(2020, 1, 1, tzinfo=UTC)))
    params = dict(brk.params)
    assert params == {"GENRE": "CV", "CAID": "12345678", "EPISODE": "Episode Name Date",
                      "SEASON": "Season Name and Number", "SERIES": "Series%20Name"}
    channel = ChannelConfig.model_validate({
        "id": "c", "origin_url": "http://origin.example/m.m3u8",
        "ad_server_url": "http://ads.example/v?s={SERIES}&e={EPISODE}&g={GENRE}"})
    url = ad_request_url(channel, brk, {}, Fraction(50))
    assert url == "http://ads.example/v?s=Series%2520Name&e=Episode%20Name%20Date&g=CV"


def test_corpus_hasp_asset_caid_equals_the_cue_upid() -> None:
    """INDEX (threefive_hasp_stanza_key_asset_scte35): one 250.133 s break at
    video_185222.ts; the CAID from EXT-X-ASSET equals the time_signal's UPID."""
    text = (CORPUS / "public" / "hls" / "threefive_hasp_stanza_key_asset_scte35.txt").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines[0].startswith("#EXTM3U"):
        lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:3", *lines]
    playlist = with_pdt(parse_media("\n".join(lines) + "\n"), 0,
                        datetime(2020, 1, 1, tzinfo=UTC))
    [brk] = breaks_of(playlist)
    assert brk.duration_hint is not None and abs(brk.duration_hint - Fraction("250.133")) < 0.001
    assert playlist.segments[0].uri.endswith("video_185222.ts")
    assert brk.upid == "00000000381b85ce"  # UPID type 0x08 (TI), as hex
    assert int(dict(brk.params)["CAID"], 16) == int(brk.upid, 16)
    assert brk.event_id == "1074086507"  # the ID attribute = segmentation_event_id


# --- breaks announced ahead of the live edge -----------------------------------------


def test_a_daterange_ahead_of_the_window_is_known_at_once_and_placed_later() -> None:
    """RFC 8216bis 4.4.5.1 lets a DATERANGE be listed before its START-DATE: the
    break is known (for decisions before it starts) and its id stays when the
    reload that lists its boundary places it there."""
    opening = (f'#EXT-X-DATERANGE:ID="ahead",START-DATE="{format_pdt(at(60))}",'
               'PLANNED-DURATION=20,SCTE35-OUT=0xFC')
    early = window(([opening], FOUR), ([], FOUR), ([], FOUR))  # the window ends at 12 s
    [ahead] = breaks_of(early)
    assert (ahead.start, ahead.planned_duration, ahead.event_id, ahead.ahead) == (
        at(60), Fraction(20), "ahead", True)
    assert covered(early, (ahead,)) == []
    # Reloads in between repeat it: still one break.
    middle = window(([opening], FOUR), *(([], FOUR) for _ in range(5)), start=0)
    assert breaks_of(middle, known=(ahead,)) == (ahead,)
    # The boundary at 60 s is listed (the tag repeated there): placed, same id.
    late = window(*(([], FOUR) for _ in range(2)), ([opening], FOUR),
                  *(([], FOUR) for _ in range(6)), msn=13, start=52)
    [placed] = breaks_of(late, known=(ahead,))
    assert (placed.id, placed.start, placed.ahead, placed.event_start) == (
        ahead.id, at(60), False, None)
    assert covered(late, (placed,)) == [15, 16, 17, 18, 19]


def test_a_daterange_ahead_inside_a_segment_snaps_to_the_next_boundary_keeping_its_id() -> None:
    opening = (f'#EXT-X-DATERANGE:ID="mid",START-DATE="{format_pdt(at(61))}",'
               'PLANNED-DURATION=8,SCTE35-OUT=0xFC')
    [ahead] = breaks_of(window(([opening], FOUR), ([], FOUR)))
    assert ahead.start == at(61) and ahead.ahead
    late = window(([], FOUR), ([], FOUR), ([], FOUR), ([], FOUR), ([], FOUR), msn=14, start=56)
    later = window(([opening], FOUR), *(([], FOUR) for _ in range(4)), msn=14, start=56)
    assert breaks_of(late, known=(ahead,)) == (ahead,), "no tag, no change"
    [placed] = breaks_of(later, known=(ahead,))
    # 61 s lies inside 60-64: the break starts at 64, its event (and end) from 61.
    assert (placed.id, placed.start, placed.event_start, placed.ahead) == (
        ahead.id, at(64), at(61), False)
    assert covered(later, (placed,)) == [16, 17]


def test_a_daterange_ahead_with_its_own_duration_knows_its_end() -> None:
    opening = (f'#EXT-X-DATERANGE:ID="d",START-DATE="{format_pdt(at(40))}",'
               'DURATION=12,SCTE35-OUT=0xFC')
    [brk] = breaks_of(window(([opening], FOUR), ([], FOUR)))
    assert (brk.start, brk.end, brk.end_declared, brk.ahead) == (at(40), at(52), True, True)


def test_a_break_ended_by_the_fast_constructor_is_replace_with_its_end() -> None:
    """update_breaks closes a break with a positional constructor call instead of
    ``dataclasses.replace``: every other field is carried over (a field added to
    Break and forgotten there would be dropped, and this would see it)."""
    from dataclasses import fields, replace

    from manifests.breaks import Break, _ended

    start = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
    values = {"id": "b1", "start": start, "planned_duration": Fraction(30), "end": None,
              "cancelled": True, "joined": True, "dialect": "cue-out", "event_id": "e7",
              "segmentation_type_id": 52, "upid": "u", "params": (("k", "v"),), "pts": 90_000,
              "start_known": False, "event_start": start - timedelta(seconds=1),
              "end_declared": False, "ahead": True}
    assert set(values) == {f.name for f in fields(Break)}
    b = Break(**values)
    end = start + timedelta(seconds=28)
    for declared in (False, True):
        assert _ended(b, end, declared) == replace(b, end=end, end_declared=declared)


@pytest.mark.parametrize("into", [Fraction(0), Fraction(1), Fraction("29.9"), Fraction(30),
                                  Fraction("30.4")])
def test_an_out_inside_a_known_break_up_to_its_end_is_an_overlap(into: Fraction) -> None:
    """update_breaks skips its scan for the open break when an OUT comes after
    every known break's end: up to that end (exclusive) the OUT is inside one and
    is ignored as an overlap; from it on, a new break."""
    from manifests.breaks import update_breaks
    from manifests.markers import Observation, SignalKind

    t0 = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
    first = Observation(SignalKind.OUT, t0, 10, "cue-out", "e1", planned_duration=Fraction(30))
    known = update_breaks((), [first]).breaks
    at = t0 + timedelta(microseconds=int(into * 1_000_000))
    update = update_breaks(known, [Observation(SignalKind.OUT, at, 11, "cue-out", "e2",
                                               planned_duration=Fraction(30))])
    if into < 30 and into > Fraction(1, 2):
        assert update.breaks == known and update.ignored, into  # inside the open break
    elif into >= 30:
        assert len(update.breaks) == 2 and not update.ignored, into  # after its end
    else:
        assert update.breaks == known and not update.ignored  # its own OUT again
