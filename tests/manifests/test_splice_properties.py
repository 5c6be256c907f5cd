"""Property tests: random live streams through the splice, the checker finds nothing.

A generated *stream* is a timeline of breaks (start, planned duration, where the
CUE-IN really comes: early, on time or never, in one of the marker dialects)
over three grids: two video variants sharing 2 s slots, a demuxed audio grid
with its own media sequence numbers, and WebVTT subtitles on 6 s slots. Reloads
advance the live edge by 0-3 slots; two cohorts get different pods. Every
stitched snapshot sequence, per cohort and across every rendition, must pass
``manifests.checker`` with no violation the stitcher introduced. Coverage is
reported with ``hypothesis.event`` and minimums are asserted, so "nothing
found" is not vacuous.

A second property (B05, Eyevinn/hls-splice#55) draws ladders whose grids do
not share every boundary at the cue: 4 s video against 5 s audio, 2 s video
and audio against 6 s subtitles with a cue off the 6 s boundaries, 2.002 s
video against 6.006 s subtitles. Pods go on the boundaries common to every
grid (``manifests.layout``) or the break is left to the content underneath in
every rendition; the checker must never see renditions disagree.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from itertools import product

from hypothesis import event, given, settings
from hypothesis import strategies as st

from manifests import scte35
from manifests.breaks import Break, BreakPolicy, update_breaks
from manifests.checker import Rule, Snapshot, check
from manifests.layout import CommonGrid, NoCommonSpan, common_grid, grid_timing, pod_window
from manifests.ledger import Ledger, SlotEntry
from manifests.markers import observe
from manifests.playlist import Segment, parse_media
from manifests.pod import Candidate, Pod, plan_pod
from manifests.splice import SpliceCache, SpliceOptions, breaks_to_decide, splice
from manifests.timing import format_duration

EPOCH = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
UNIT = 6  # the coarsest grid's cadence: breaks and pods align to it
DIALECTS = ("cue-out", "cue-out-slash", "daterange", "oatcls", "x-scte35", "adobe")


@dataclass(frozen=True)
class Grid:
    name: str
    cadence: Fraction | int  # seconds per slot
    msn_offset: int       # first MSN of the grid
    renditions: tuple[str, ...]
    markers: bool         # does this grid carry the ad markers?


GRIDS = (
    Grid("main", 2, 1000, ("v0", "v1"), True),
    Grid("audio", 2, 50, ("a0",), False),
    Grid("subs", 6, 7, ("s0",), False),
)


@dataclass(frozen=True)
class PlannedBreak:
    start: Fraction | int             # seconds from EPOCH (multiple of UNIT)
    planned: int                      # declared duration, seconds
    actual_end: Fraction | int | None  # where CUE-IN comes (seconds), None: never
    dialect: str
    event_id: int


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[PlannedBreak], int, list[int], int]:
    breaks: list[PlannedBreak] = []
    t = draw(st.integers(1, 4)) * UNIT
    for k in range(draw(st.integers(1, 3))):
        planned = draw(st.sampled_from([6, 12, 18, 30]))
        mode = draw(st.sampled_from(["on-time", "early", "missing"]))
        if mode == "early" and planned > UNIT:
            end: int | None = t + draw(st.integers(1, planned // UNIT - 1)) * UNIT
        elif mode == "missing":
            end = None
        else:
            end = t + planned
        breaks.append(PlannedBreak(t, planned, end, draw(st.sampled_from(DIALECTS)), 100 + k))
        t += planned + draw(st.integers(1, 3)) * UNIT
    horizon = t + 3 * UNIT
    window = draw(st.sampled_from([12, 18, 24]))  # seconds of media in each window
    steps = draw(st.lists(st.integers(0, 3), min_size=4, max_size=40))
    first_edge = draw(st.integers(window, breaks[0].start + window + 2 * UNIT))
    return breaks, horizon, steps, first_edge, window  # type: ignore[return-value]


def _pdt(seconds: Fraction | int) -> str:
    at = EPOCH + timedelta(microseconds=round(Fraction(seconds) * 1_000_000))
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _num(seconds: Fraction | int) -> str:
    """An integral number of seconds as before ("12"), else its decimal text."""
    return str(int(seconds)) if Fraction(seconds).denominator == 1 else format_duration(
        Fraction(seconds))


def _cue(event_id: int, out: bool, duration: int | None) -> str:
    command = scte35.SpliceInsert(
        splice_event_id=event_id, out_of_network_indicator=out, duration_flag=duration is not None,
        splice_immediate_flag=True,
        break_duration=scte35.BreakDuration(True, duration * 90_000) if duration else None)
    return base64.b64encode(scte35.encode(scte35.SpliceInfoSection.build(command))).decode()


def _decimal(text: str) -> str:
    return text if "." in text else text + ".000"


def _marks(b: PlannedBreak, t: Fraction | int, cadence: Fraction | int) -> list[str]:
    """The dialect's tags on the slot starting at ``t`` (seconds)."""
    end = b.actual_end
    limit = b.start + b.planned
    if t == b.start:
        return {
            "cue-out": [f"#EXT-X-CUE-OUT:DURATION={b.planned}"],
            "cue-out-slash": [f"#EXT-X-CUE-OUT:{b.planned}.000"],
            "daterange": [(f'#EXT-X-DATERANGE:ID="{b.event_id}",START-DATE="{_pdt(b.start)}",'
                           f"PLANNED-DURATION={b.planned},SCTE35-OUT=0xFC")],
            "oatcls": [f"#EXT-OATCLS-SCTE35:{_cue(b.event_id, True, b.planned)}",
                       f"#EXT-X-CUE-OUT:{b.planned}"],
            "x-scte35": [(f'#EXT-X-SCTE35:CUE="{_cue(b.event_id, True, b.planned)}",'
                          f"CUE-OUT=YES,ID=\"{b.event_id}\",DURATION={b.planned}")],
            "adobe": [f"#EXT-X-CUE:TYPE=SpliceOut,ID={b.event_id},DURATION={b.planned}.0"],
        }[b.dialect]
    if end is not None and t == end:
        return {
            "cue-out": ["#EXT-X-CUE-IN"], "cue-out-slash": ["#EXT-X-CUE-IN"],
            "daterange": [(f'#EXT-X-DATERANGE:ID="{b.event_id}",START-DATE="{_pdt(b.start)}",'
                           f'END-DATE="{_pdt(end)}",SCTE35-IN=0xFC')],
            "oatcls": ["#EXT-X-CUE-IN"],
            "x-scte35": [(f'#EXT-X-SCTE35:CUE="{_cue(b.event_id, False, None)}",CUE-IN=YES,'
                          f'ID="{b.event_id}"')],
            "adobe": [f"#EXT-X-CUE:TYPE=SpliceIn,ID={b.event_id}"],
        }[b.dialect]
    inside = b.start < t < (end if end is not None else limit)
    if inside and t < limit:
        elapsed = _num(t - b.start)
        return {
            "cue-out": [f"#EXT-X-CUE-OUT-CONT:ElapsedTime={elapsed},Duration={b.planned}"],
            "cue-out-slash": [f"#EXT-X-CUE-OUT-CONT:{_decimal(elapsed)}/{b.planned}"],
            "daterange": [], "oatcls": [f"#EXT-X-CUE-OUT-CONT:{elapsed}/{b.planned}"],
            "x-scte35": [f'#EXT-X-SCTE35:CUE-OUT=CONT,ID="{b.event_id}"'],
            "adobe": [f"#EXT-X-CUE-CONT:ID={b.event_id},AVAIL-DUR-ELAPSED={elapsed}"],
        }[b.dialect]
    return []


def media_playlist(grid: Grid, rendition: str, edge: Fraction | int, window: int,
                   breaks: list[PlannedBreak]) -> str:
    c = grid.cadence
    last = edge // c               # slots [first, last) are published
    first = max(0, last - window // c)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{round(c)}",
             f"#EXT-X-MEDIA-SEQUENCE:{grid.msn_offset + first}"]
    for k in range(first, last):
        t = k * c
        if grid.markers:
            for b in breaks:
                lines += _marks(b, t, c)
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(t)}")
        lines.append(f"#EXTINF:{format_duration(Fraction(c))},")
        lines.append(f"{rendition}/seg_{grid.msn_offset + k}.{'vtt' if grid.name == 'subs' else 'ts'}")
    return "\n".join(lines) + "\n"


class Uris:
    """Like the service's: subtitle renditions get generated WebVTT fillers, which
    must be unique per slot (B23); the checker flags a repeated WebVTT URI, so a
    filler named from a looping index (not the slot's MSN) would be caught."""

    def __init__(self, rendition: str, subtitles: bool = False) -> None:
        self.rendition = rendition
        self.ext = "vtt" if subtitles else "ts"

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/{self.rendition}/{break_id}/{item_index}/{segment}.{self.ext}"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        if self.ext == "vtt":
            return f"ad/{self.rendition}/{break_id}/{item_index}/{segment}.vtt?msn={msn}"
        return f"/assets/slate/{self.rendition}/seg_{segment:05d}.ts"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return None

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return None


COHORTS = {
    "c1": [Candidate("adA", Fraction(10)), Candidate("adB", Fraction(15))],
    "c2": [Candidate("adC", Fraction(5)), Candidate("adD", Fraction(30))],
}
STATS: Counter[str] = Counter()


#: The break policy's maximum duration (seconds) in stitch_stream.
MAX_BREAK = 60


def stitch_stream(planned: list[PlannedBreak], edges: list[int], window: int,
                  grids: tuple[Grid, ...] = GRIDS, outcomes: dict[str, str] | None = None,
                  ) -> tuple[dict[str, list[Snapshot]], int]:
    """Run a stream through the splice as the service does: every rendition of
    every cohort at every reload. Returns the snapshots per cohort and how many
    reloads published new ad slots. Pods are placed with ``pod_window`` on the
    grids' common boundaries, learnt from the first reload's playlists as the
    service learns them; ``outcomes`` gets each break's placement: "aligned"
    (nothing moved), "moved" (rounded to common boundaries) or "content"."""
    policy = BreakPolicy(max_duration=Fraction(MAX_BREAK))
    unit = Fraction(max(g.cadence for g in grids))
    known: tuple[Break, ...] = ()
    pods: dict[tuple[str, str], Pod] = {}
    ledgers: dict[tuple[str, str], Ledger] = {}
    caches: dict[tuple[str, str], SpliceCache] = {}
    snapshots: dict[str, list[Snapshot]] = {c: [] for c in COHORTS}
    layout: CommonGrid | None = None
    ad_reloads = 0
    for reload, edge in enumerate(edges):
        origin = {r: media_playlist(g, r, edge, window, planned) for g in grids for r in g.renditions}
        parsed = {r: parse_media(text) for r, text in origin.items()}
        if layout is None:
            timings = [grid_timing(parsed[g.renditions[0]]) for g in grids]
            assert all(t is not None for t in timings)
            layout = common_grid([t for t in timings if t is not None])
        for text in parsed.values():
            known = update_breaks(known, observe(text), policy).breaks
        by_id = {b.id: b for b in known}
        for cohort, candidates in COHORTS.items():
            out: dict[str, str] = {}
            for grid in grids:
                ledger = ledgers.get((cohort, grid.name), Ledger())
                for r in grid.renditions:
                    for break_id, start in breaks_to_decide(parsed[r], known, ledger,
                                                            policy).items():
                        if (break_id, cohort) not in pods:
                            pods[(break_id, cohort)] = _plan(by_id[break_id], start, candidates,
                                                             layout, unit, policy, outcomes)
                    result = splice(
                        parsed[r], breaks=known,
                        pods={b: p for (b, c), p in pods.items() if c == cohort},
                        ledger=ledger, uris=Uris(r, grid.name == "subs"),
                        options=SpliceOptions(base_url=f"https://origin.example.com/{r}.m3u8",
                                              break_policy=policy,
                                              cadence=Fraction(grid.cadence)),
                        cache=caches.setdefault((cohort, r), SpliceCache()))
                    ledger = ledger.append(result.new_entries, result.hwm)
                    out[r] = result.text
                    if any(e.kind.value == "ad" for e in result.new_entries):
                        ad_reloads += 1
                ledgers[(cohort, grid.name)] = ledger
            snapshots[cohort].append(Snapshot(index=reload, time=float(edge), playlists=out,
                                              origin=origin))
    if outcomes is not None:
        for (cohort, _), ledger in ledgers.items():
            for entry in ledger.entries.values():
                if entry.break_id and entry.kind.value != "content":
                    # A break left to content is replaced in no rendition of any cohort.
                    assert outcomes.get(entry.break_id) != "content", (cohort, entry)
                    outcomes[entry.break_id + "/published"] = "yes"
    return snapshots, ad_reloads


def _plan(brk: Break, start: Fraction, candidates: list[Candidate], layout: CommonGrid,
          unit: Fraction, policy: BreakPolicy, outcomes: dict[str, str] | None) -> Pod:
    """The pod of a break, as the service's decision places it."""
    duration = brk.duration_hint if brk.duration_hint is not None else policy.max_duration
    try:
        window = pod_window(brk, start, layout, duration=duration, unit=unit)
    except NoCommonSpan:
        if outcomes is not None:
            outcomes[brk.id] = "content"
        return Pod(brk.id, (), unit, personalized=False)
    if window.aligned:
        # The aligned ladder keeps what the unit counted from the break's start gives.
        legacy = -((-start + Fraction(1, 50)) // unit) * unit
        assert (window.start, window.available, window.unit) == (legacy, duration - legacy, unit)
    if outcomes is not None:
        outcomes.setdefault(brk.id, "aligned" if window.aligned else "moved")
    return plan_pod(brk.id, candidates, available=window.available, start=window.start,
                    nominal=window.unit, slate_segments=1)


@settings(max_examples=150, deadline=None)
@given(streams())
def test_random_streams_pass_the_checker(stream: tuple) -> None:
    planned, _horizon, steps, edge, window = stream
    for b in planned:
        event(f"dialect={b.dialect}")
        event("cue-in=" + ("missing" if b.actual_end is None else
                           "early" if b.actual_end < b.start + b.planned else "on-time"))
        STATS[b.dialect] += 1
    if edge - window > planned[0].start:
        event("join mid-break")
        STATS["join"] += 1
    edges = []
    for step in [0, *steps]:
        edge += step * 2
        edges.append(edge)
    snapshots, ad_reloads = stitch_stream(planned, edges, window)
    STATS["ads"] += ad_reloads
    for cohort, snaps in snapshots.items():
        faults = [v for v in check(snaps) if v.source == "stitcher"]
        assert faults == [], (cohort, [f"{v.rule.name} r{v.reload} {v.rendition} msn={v.msn}: "
                                       f"{v.message}" for v in faults[:5]])


def test_coverage_minimums() -> None:
    """Run after the property: the generated streams exercised every dialect, joins
    and ad placements (hypothesis runs the property test first in this module)."""
    if not STATS:
        test_random_streams_pass_the_checker()
    for dialect in DIALECTS:
        assert STATS[dialect] >= 2, (dialect, STATS)
    assert STATS["join"] >= 2, STATS
    assert STATS["ads"] >= 5, STATS


#: Ladders whose grids do not all have a boundary at the cue (B05).
SHAPES: dict[str, tuple[Grid, ...]] = {
    "4s-video-5s-audio": (
        Grid("main", 4, 1000, ("v0", "v1"), True),
        Grid("audio", 5, 50, ("a0",), False),
    ),
    "2s-video-6s-subs-offset-cue": (
        Grid("main", 2, 1000, ("v0", "v1"), True),
        Grid("audio", 2, 50, ("a0",), False),
        Grid("subs", 6, 7, ("s0",), False),
    ),
    "2.002s-video-6.006s-subs": (
        Grid("main", Fraction("2.002"), 1000, ("v0", "v1"), True),
        Grid("audio", Fraction("2.002"), 50, ("a0",), False),
        Grid("subs", Fraction("6.006"), 7, ("s0",), False),
    ),
}
UNALIGNED: Counter[str] = Counter()


def _period(grids: tuple[Grid, ...]) -> Fraction:
    cadences = [Fraction(g.cadence) for g in grids]
    return Fraction(math.lcm(*(c.numerator for c in cadences)),
                    math.gcd(*(c.denominator for c in cadences)))


@st.composite
def unaligned_streams(draw: st.DrawFn) -> tuple[str, list[PlannedBreak], list[Fraction], int]:
    """Breaks on the video's boundaries, some on the common ones and some off
    them; CUE-IN on time (the first video boundary at or after the planned
    end), early on a common boundary, or never. An early CUE-IN between common
    boundaries cannot be honoured in every grid without rewriting slots already
    published (docs/architecture.md), so it is not generated."""
    shape = draw(st.sampled_from(sorted(SHAPES)))
    grids = SHAPES[shape]
    step = Fraction(grids[0].cadence)
    period = _period(grids)
    breaks: list[PlannedBreak] = []
    t = draw(st.integers(1, 3)) * period
    for k in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):  # off the common boundaries, on the video's
            t += draw(st.integers(1, int(period / step) - 1)) * step
        planned = draw(st.sampled_from([6, 8, 10, 12, 18, 20, 30, 40]))
        mode = draw(st.sampled_from(["on-time", "early", "missing"]))
        on_time = math.ceil((t + planned) / step) * step
        end: Fraction | None = on_time
        common_inside = [m * period for m in range(math.ceil(t / period) + 1,
                                                    math.ceil((t + planned) / period))]
        if mode == "early" and common_inside:
            end = draw(st.sampled_from(common_inside))
        elif mode == "missing":
            end = None
        breaks.append(PlannedBreak(t, planned, end, draw(st.sampled_from(DIALECTS)), 200 + k))
        t = math.ceil((on_time + draw(st.integers(1, 3)) * period) / period) * period
    window = draw(st.sampled_from([20, 30, 40]))
    steps = draw(st.lists(st.integers(0, 3), min_size=4, max_size=30))
    edge = Fraction(draw(st.integers(window, int(breaks[0].start) + window + 10)))
    edges = []
    for s in [0, *steps]:
        edge += s * step
        edges.append(edge)
    first = breaks[0]
    if (edges[0] - window > first.start and first.dialect in DURATIONLESS_CONT
            and first.actual_end is not None and first.actual_end % period != 0):
        # Joined after the CUE-OUT, from CONT tags that carry no duration: the
        # engine plans to the policy maximum, so an on-time CUE-IN is an early one
        # to it, and one between common boundaries is the limitation above.
        breaks[0] = replace(first, actual_end=None)
    if (edges[0] - window > first.start and first.dialect in DURATIONLESS_CONT
            and breaks[0].actual_end is None):
        # The same join with no CUE-IN: the break is open to the policy maximum, so
        # a later CUE-OUT inside that span is an overlap (the open break wins,
        # manifests/breaks.py) and its CUE-IN would close the first break early,
        # off the common boundaries: the limitation again. Such breaks are dropped.
        horizon = first.start + MAX_BREAK
        breaks = [breaks[0], *(b for b in breaks[1:] if b.start >= horizon)]
    return shape, breaks, edges, window


#: Dialects whose CONT tags do not repeat the break's duration.
DURATIONLESS_CONT = ("x-scte35", "adobe")


@settings(max_examples=120, deadline=None)
@given(unaligned_streams())
def test_unaligned_grids_never_disagree(stream: tuple) -> None:
    """Whatever the ladder, renditions never disagree on where a break starts or
    ends (invariant 5): pods go on boundaries every grid shares, or the break is
    left to the content underneath in all of them."""
    shape, planned, edges, window = stream
    event(f"shape={shape}")
    outcomes: dict[str, str] = {}
    snapshots, _ = stitch_stream(planned, edges, window, SHAPES[shape], outcomes)
    for break_id, outcome in list(outcomes.items()):
        if "/" in break_id:
            continue
        published = outcomes.get(break_id + "/published") == "yes"
        label = {"aligned": "aligned and stitched", "moved": "moved to common boundaries and stitched",
                 "content": "left to content"}[outcome]
        if outcome != "content" and not published:
            label = "placed, no ad slot in the windows seen"
        event(label)
        UNALIGNED[label] += 1
    for cohort, snaps in snapshots.items():
        faults = [v for v in check(snaps) if v.source == "stitcher"]
        assert not [v for v in faults if v.rule is Rule.RENDITIONS_DISAGREE], (cohort, shape)
        assert faults == [], (cohort, shape, [f"{v.rule.name} r{v.reload} {v.rendition} "
                                              f"msn={v.msn}: {v.message}" for v in faults[:5]])


def test_unaligned_coverage_minimums() -> None:
    """The unaligned property placed pods on common boundaries and left breaks to
    the content underneath often enough not to be vacuous."""
    if not UNALIGNED:
        test_unaligned_grids_never_disagree()
    assert UNALIGNED["aligned and stitched"] + UNALIGNED[
        "moved to common boundaries and stitched"] >= 10, UNALIGNED
    assert UNALIGNED["aligned and stitched"] >= 5, UNALIGNED
    assert UNALIGNED["moved to common boundaries and stitched"] >= 5, UNALIGNED
    assert UNALIGNED["left to content"] >= 5, UNALIGNED


class InitUris(Uris):
    """Ads and slate with their own init sections (fMP4): the EXT-X-MAP after each
    of the stitcher's discontinuities."""

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return f"ad/{self.rendition}/{break_id}/{item_index}/init.mp4"

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return f"/assets/slate/{self.rendition}/init.mp4"


class RoutingUris(Uris):
    """Content segments the stitcher serves itself, as ``subtitle_maps: repair``
    does (every third here; None: the origin's URI, made absolute)."""

    def content_segment(self, segment: Segment) -> str | None:
        return None if segment.msn % 3 else f"cv/{self.rendition}/{segment.msn}.vtt"


class RoutingInitUris(InitUris):
    content_segment = RoutingUris.content_segment


FAST: Counter[str] = Counter()


def _pdt_first(lines: list[str]) -> list[str]:
    """The same playlist with each segment's PDT before its marker tags (the order
    of the parse's one-tag column rows; media_playlist writes the markers first)."""
    out = list(lines)
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            j = i
            while j > 4 and out[j - 1].startswith("#EXT") and not out[j - 1].startswith(
                    ("#EXTINF:", "#EXT-X-KEY", "#EXT-X-MAP")):
                out[j - 1], out[j] = out[j], out[j - 1]
                j -= 1
    return out


@settings(max_examples=40, deadline=None)
@given(streams(), st.booleans(), st.booleans(), st.booleans(),
       st.sampled_from([None, "https://origin.example.com/v0.m3u8"]),
       st.sampled_from([None, 4]), st.booleans())
def test_the_column_fast_paths_render_what_built_segments_do(
        stream: tuple, pdt_first: bool, passthrough: bool, dateranges: bool, base: str | None,
        cap: int | None, inits: bool) -> None:
    """The splice's column paths (a break's rows replaced in one loop, content
    resuming after it, plain runs from the columns) give, byte for byte and entry for entry, what the slot by
    slot path gives the same window with every segment built (no columns), over
    reloads with the caches and ledgers the service keeps and cold renders of
    each window, with no state tag, an EXT-X-KEY or an EXT-X-MAP, passed-through
    markers, ad DATERANGEs, init sections, no base URL and a window cap; and
    again with content routed through the stitcher (the plain column runs had
    skipped the routing), which takes no column path for content (so the
    coverage the first pass counts is not halved by it)."""
    from manifests.splice import _Renderer

    planned, _horizon, steps, first_edge, window = stream
    grid = GRIDS[0]
    policy = BreakPolicy(max_duration=Fraction(MAX_BREAK))
    options = SpliceOptions(base_url=base, passthrough_markers=passthrough, break_policy=policy,
                            window_cap=cap, ad_dateranges=dateranges)
    builders = [(InitUris if inits else Uris)("v0"),
                (RoutingInitUris if inits else RoutingUris)("v0")]
    bulk = _Renderer.replaced_rows

    def counted(self: _Renderer, rows: object, i: int, hi: int, prev: SlotEntry | None,
                *args: object) -> int:
        done = bulk(self, rows, i, hi, prev, *args)  # type: ignore[arg-type]
        FAST["bulk"] += done
        if done and (prev is None or prev.kind.value == "content"):
            FAST[state + "-entered"] += 1  # the loop started a break
        return done

    resumed = _Renderer.resumed_row

    def resumed_counted(self: _Renderer, rows: object, i: int) -> str | None:
        text = resumed(self, rows, i)  # type: ignore[arg-type]
        if text is not None:
            FAST[state + "-resumed"] += 1  # content after a break, from the columns
        return text

    _Renderer.replaced_rows = counted  # type: ignore[method-assign]
    _Renderer.resumed_row = resumed_counted  # type: ignore[method-assign]
    try:
        for uris, (state, extra) in product(builders, (
                ("none", []), ("aes", ['#EXT-X-KEY:METHOD=AES-128,URI="k.bin"']),
                ("map", ['#EXT-X-MAP:URI="init.mp4"']))):
            edge = first_edge
            known: tuple[Break, ...] = ()
            pods: dict[str, Pod] = {}
            ledgers = [Ledger(), Ledger()]
            caches = [SpliceCache(), SpliceCache()]
            for step in [0, *steps]:
                edge += step * 2
                # Windows of 18-36 slots: more than _FEW, so a cold render bisects
                # the breaks' spans (content between them is not in one).
                lines = media_playlist(grid, "v0", edge, 3 * window, planned).split("\n")
                text = "\n".join(lines[:4] + extra + (_pdt_first if pdt_first else list)(
                    lines[4:]))
                columns = parse_media(text)
                built = parse_media(text)
                built = replace(built, segments=built.segments)  # no table: all built
                known = update_breaks(known, observe(columns), policy).breaks
                for break_id, start in breaks_to_decide(columns, known, ledgers[0],
                                                        policy).items():
                    brk = next(b for b in known if b.id == break_id)
                    duration = (brk.duration_hint if brk.duration_hint is not None
                                else policy.max_duration)
                    pods.setdefault(break_id, plan_pod(
                        break_id, COHORTS["c1"], available=duration - start, start=start,
                        nominal=Fraction(2)))
                results = []
                for k, playlist in enumerate((columns, built)):
                    warm = splice(playlist, breaks=known, pods=pods, ledger=ledgers[k],
                                  uris=uris, options=options, cache=caches[k])
                    cold = splice(playlist, breaks=known, pods=pods, ledger=Ledger(),
                                  uris=uris, options=options)
                    ledgers[k] = ledgers[k].append(warm.new_entries, warm.hwm, warm.anchor)
                    results.append([(r.text, r.new_entries, r.entries, r.media_sequence,
                                     r.discontinuity_sequence, r.anchor) for r in (warm, cold)])
                    FAST[state] += sum(e.kind.value == "ad" for e in warm.new_entries)
                    FAST["routed"] += warm.text.count("\ncv/v0/")
                assert results[0] == results[1], state
    finally:
        _Renderer.replaced_rows = bulk  # type: ignore[method-assign]
        _Renderer.resumed_row = resumed  # type: ignore[method-assign]


def test_fast_path_coverage_minimums() -> None:
    """The fast-path property replaced ad slots under every state tag it draws, the
    break's loop did most of them, and content resumed from the columns."""
    if not FAST:
        test_the_column_fast_paths_render_what_built_segments_do()
    assert min(FAST["none"], FAST["aes"], FAST["map"]) >= 50, FAST
    assert FAST["bulk"] >= 200, FAST
    assert FAST["routed"] >= 100, FAST
    assert min(FAST["none-entered"], FAST["aes-entered"]) >= 5, FAST  # under a MAP: slot by slot
    assert min(FAST["none-resumed"], FAST["aes-resumed"], FAST["map-resumed"]) >= 5, FAST
