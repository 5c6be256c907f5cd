"""manifests.checker: the oracle, checked itself.

One bad reload sequence per rule, each yielding exactly the expected violations;
good sequences (a sliding live window with an ad break in two renditions) yielding
none; attribution to the origin or the stitcher; and properties: random valid
live windows are clean, and one mutation always trips its rule.

Playlist texts are whole documents rendered from a small slot model (a stream is
a list of slots; a reload is a window onto it), never patched fragments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from manifests.checker import (
    RULES,
    Checker,
    Rule,
    Snapshot,
    Violation,
    check,
    format_text,
    summary,
)
from manifests.timing import add_seconds, format_duration, format_pdt
from tests.manifests.test_corpus_hls import PLAYLISTS, bundle_files, needs_corpus

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Slot:
    uri: str
    duration: Fraction = Fraction(2)
    disc: bool = False


def content(n: int, name: str = "v", durations: Sequence[str] = ()) -> list[Slot]:
    """``n`` content slots of 2 s (or the given EXTINF texts)."""
    return [Slot(f"{name}/c{i}.ts", Fraction(durations[i]) if durations else Fraction(2))
            for i in range(n)]


def with_break(slots: list[Slot], start: int, durations: Sequence[str],
               name: str = "v") -> list[Slot]:
    """Ads in place of ``len(durations)`` slots: a discontinuity before the first ad
    and before the content that resumes."""
    out = list(slots)
    for j, d in enumerate(durations):
        out[start + j] = Slot(f"{name}/ad{j}.ts", Fraction(d), disc=j == 0)
    out[start + len(durations)] = replace(out[start + len(durations)], disc=True)
    return out


def wall_clock(slots: Sequence[Slot]) -> list[datetime]:
    """Each slot's PDT: BASE plus the EXTINF sum before it."""
    out, t = [], BASE
    for slot in slots:
        out.append(t)
        t = add_seconds(t, slot.duration)
    return out


def window(slots: Sequence[Slot], first: int, size: int, *, target: int = 2,
           dsn_delta: int = 0, clock: Sequence[datetime] | None = None,
           no_pdt: frozenset[int] = frozenset(), pdt_shift: Mapping[int, float] | None = None,
           header_extra: Sequence[str] = (),
           seg_extra: Mapping[int, Sequence[str]] | None = None,
           uris: Mapping[int, str] | None = None) -> str:
    """A live media playlist serving ``slots[first:first+size]``.

    EXT-X-PROGRAM-DATE-TIME on the first segment and after every discontinuity;
    EXT-X-DISCONTINUITY-SEQUENCE counts the discontinuities before ``first``.
    """
    clock = clock or wall_clock(slots)
    dsn = sum(s.disc for s in slots[:first]) + dsn_delta
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", f"#EXT-X-TARGETDURATION:{target}",
             f"#EXT-X-MEDIA-SEQUENCE:{first}", f"#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}",
             *header_extra]
    for msn in range(first, min(first + size, len(slots))):
        slot = slots[msn]
        if slot.disc:
            lines.append("#EXT-X-DISCONTINUITY")
        if (msn == first or slot.disc) and msn not in no_pdt:
            shift = (pdt_shift or {}).get(msn, 0.0)
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:"
                         f"{format_pdt(clock[msn] + timedelta(seconds=shift))}")
        lines += (seg_extra or {}).get(msn, ())
        lines += [f"#EXTINF:{format_duration(slot.duration)},", (uris or {}).get(msn, slot.uri)]
    return "\n".join(lines) + "\n"


def reloads(*playlists: Mapping[str, str]) -> list[Snapshot]:
    return [Snapshot(i, p) for i, p in enumerate(playlists)]


def found(violations: Sequence[Violation]) -> list[tuple[Rule, int, str, int | None]]:
    return [(v.rule, v.reload, v.rendition, v.msn) for v in violations]


def line_of(text: str, wanted: str) -> int:
    """1-based number of the first line of ``text`` equal to ``wanted``."""
    return text.split("\n").index(wanted) + 1


# A channel: 20 slots of 2 s, a 3-slot ad break at slot 8 (discontinuities at 8 and 11).
V = with_break(content(20, "v"), 8, ["2.000"] * 3, "v")
A = with_break(content(20, "a"), 8, ["2.000"] * 3, "a")
PLAIN = content(20, "v")


def _bad_cases() -> list[tuple[str, list[Snapshot], list[tuple[Rule, int, str, int | None]]]]:
    r = Rule
    long5 = content(20, "v", ["2.000"] * 5 + ["2.600"] + ["2.000"] * 14)
    short_ads = with_break(content(20, "v"), 8, ["2.000", "2.000", "1.500"], "v")
    a_no_disc = [replace(s, disc=False) if i == 8 else s for i, s in enumerate(A)]
    v_no_disc = [replace(s, disc=False) if i == 8 else s for i, s in enumerate(V)]
    ll_header = ("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5",
                 "#EXT-X-PART-INF:PART-TARGET=0.5")
    ll_part = {2: ('#EXT-X-PART:DURATION=0.5,URI="v/p2.0.ts"',)}
    return [
        ("media-sequence-decreased",
         reloads({"v": window(PLAIN, 3, 5)}, {"v": window(PLAIN, 2, 5)}),
         [(r.MEDIA_SEQUENCE_DECREASED, 1, "v", None)]),
        ("segment-changed",
         reloads({"v": window(PLAIN, 0, 5)},
                 {"v": window(PLAIN, 1, 5, uris={3: "v/other3.ts"})}),
         [(r.SEGMENT_CHANGED, 1, "v", 3)]),
        ("segment-moved-to-a-lower-msn",  # channel-engine#79: the count recomputed short
         reloads({"v": window(PLAIN, 10, 3)},
                 {"v": window(PLAIN, 11, 2).replace("SEQUENCE:11\n", "SEQUENCE:7\n")}),
         [(r.MEDIA_SEQUENCE_DECREASED, 1, "v", None), (r.SEGMENT_MOVED, 1, "v", 7),
          (r.SEGMENT_MOVED, 1, "v", 8)]),
        ("segment-moved-within-the-window",  # MSN 11 is still listed, c11 moved past it
         reloads({"v": window(PLAIN, 10, 3)},
                 {"v": window(PLAIN, 10, 3, uris={11: "v/x.ts", 12: "v/c11.ts"})}),
         [(r.SEGMENT_MOVED, 1, "v", 12), (r.SEGMENT_CHANGED, 1, "v", 11),
          (r.SEGMENT_CHANGED, 1, "v", 12)]),
        ("segment-changed-discontinuity-dropped",
         reloads({"v": window(V, 5, 4)}, {"v": window(v_no_disc, 5, 4)}),
         [(r.SEGMENT_CHANGED, 1, "v", 8)]),
        ("dsn-not-grown",  # slot 8's discontinuity left, DSN stayed 0
         reloads({"v": window(V, 7, 5)}, {"v": window(V, 9, 5, dsn_delta=-1)}),
         [(r.DISCONTINUITY_SEQUENCE, 1, "v", None)]),
        ("dsn-decreased",
         reloads({"v": window(V, 9, 5)}, {"v": window(V, 9, 5, dsn_delta=-1)}),
         [(r.DISCONTINUITY_SEQUENCE, 1, "v", None)]),
        ("dsn-grown-too-much",
         reloads({"v": window(V, 6, 5)}, {"v": window(V, 7, 5, dsn_delta=1)}),
         [(r.DISCONTINUITY_SEQUENCE, 1, "v", None)]),
        ("dsn-beyond-what-unseen-segments-allow",  # 4 unseen slots hold 2 discontinuities
         reloads({"v": window(V, 6, 2)}, {"v": window(V, 12, 3, dsn_delta=3)}),
         [(r.DISCONTINUITY_SEQUENCE, 1, "v", None)]),
        ("target-duration-exceeded",  # reported once, not on every reload showing it
         reloads({"v": window(long5, 3, 5)}, {"v": window(long5, 4, 5)}),
         [(r.TARGET_DURATION_EXCEEDED, 0, "v", 5)]),
        ("target-duration-changed",
         reloads({"v": window(PLAIN, 0, 5)}, {"v": window(PLAIN, 1, 5, target=3)}),
         [(r.TARGET_DURATION_CHANGED, 1, "v", None)]),
        ("pdt-drift-short-break",  # ads 0.5 s short, content resumes on its wall clock
         reloads({"v": window(short_ads, 6, 7, clock=wall_clock(PLAIN))}),
         [(r.PDT_DRIFT, 0, "v", 11)]),
        ("pdt-moved-between-reloads",
         reloads({"v": window(PLAIN, 0, 5)}, {"v": window(PLAIN, 1, 5, pdt_shift={1: 1.0})}),
         [(r.PDT_DRIFT, 1, "v", 1)]),
        ("pdt-missing-after-discontinuity",
         reloads({"v": window(V, 6, 6, no_pdt=frozenset({8}))}),
         [(r.PDT_MISSING_AFTER_DISCONTINUITY, 0, "v", 8)]),
        ("renditions-disagree-missing-boundary",
         reloads({"v": window(V, 5, 6), "a": window(a_no_disc, 5, 6)}),
         [(r.RENDITIONS_DISAGREE, 0, "a", 8)]),
        ("renditions-disagree-counter",
         reloads({"v": window(V, 5, 6), "a": window(A, 5, 6, dsn_delta=1)}),
         [(r.RENDITIONS_DISAGREE, 0, "a", 8)]),
        ("renditions-disagree-extra-boundary",  # the first rendition is the reference
         reloads({"v": window(a_no_disc, 5, 6), "a": window(A, 5, 6)}),
         [(r.RENDITIONS_DISAGREE, 0, "a", 8)]),
        ("ll-hls-tags",  # each tag once, however many reloads carry it
         reloads({"v": window(PLAIN, 0, 3, header_extra=ll_header, seg_extra=ll_part)},
                 {"v": window(PLAIN, 1, 3, header_extra=ll_header, seg_extra=ll_part)}),
         [(r.LL_HLS_TAG_PRESENT, 0, "v", None), (r.LL_HLS_TAG_PRESENT, 0, "v", None),
          (r.LL_HLS_TAG_PRESENT, 0, "v", 2)]),
        ("init-inherited-across-discontinuity",  # fMP4 content, ads under its init (B19)
         reloads({"v": window(V, 5, 8, seg_extra={5: ('#EXT-X-MAP:URI="v/init.mp4"',)})}),
         [(r.INIT_INHERITED_ACROSS_DISCONTINUITY, 0, "v", 8),
          (r.INIT_INHERITED_ACROSS_DISCONTINUITY, 0, "v", 11)]),
        ("segment-uri-repeated",  # two subtitle fillers at one URI (B23)
         reloads({"s": window(content(20, "s"), 4, 5, uris={6: "s/f.vtt", 7: "s/f.vtt"})}),
         [(r.SEGMENT_URI_REPEATED, 0, "s", 7)]),
        ("rendition-span-uncovered",  # a complete rendition 2 s short (B23)
         reloads({"v": window(PLAIN, 0, 5) + "#EXT-X-ENDLIST\n",
                  "s": window(content(20, "s"), 0, 4) + "#EXT-X-ENDLIST\n"}),
         [(r.RENDITION_SPAN_UNCOVERED, 0, "s", None)]),
        ("unparseable",
         reloads({"v": window(PLAIN, 0, 5)}, {"v": "<html>502 Bad Gateway</html>\n"},
                 {"v": window(PLAIN, 1, 5)}),
         [(r.UNPARSEABLE, 1, "v", None)]),
        ("multivariant-where-media-expected",
         reloads({"v": '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000\nv.m3u8\n'}),
         [(r.UNPARSEABLE, 0, "v", None)]),
        ("no-target-duration",
         reloads({"v": window(PLAIN, 0, 2).replace("#EXT-X-TARGETDURATION:2\n", "")}),
         [(r.UNPARSEABLE, 0, "v", None)]),
        # Same window for 4 s (target 2: the limit is 3 s); then a stale-announced pause
        # and a pause within the limit are both fine.
        ("playlist-stalled",
         [Snapshot(0, {"v": window(PLAIN, 0, 5)}, time=0.0),
          Snapshot(1, {"v": window(PLAIN, 0, 5)}, time=2.0),
          Snapshot(2, {"v": window(PLAIN, 0, 5)}, time=4.0),
          Snapshot(3, {"v": window(PLAIN, 1, 5)}, time=5.0),
          Snapshot(4, {"v": window(PLAIN, 1, 5)}, time=9.0, stale=frozenset({"v"})),
          Snapshot(5, {"v": window(PLAIN, 1, 5)}, time=11.0),
          Snapshot(6, {"v": window(PLAIN, 2, 5)}, time=12.0)],
         [(r.PLAYLIST_STALLED, 2, "v", 4)]),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize(("snapshots", "expected"), [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_sequence_yields_exactly_its_violations(
        snapshots: list[Snapshot], expected: list[tuple[Rule, int, str, int | None]]) -> None:
    violations = check(snapshots)
    assert found(violations) == expected
    assert all(v.source == "stitcher" and v.severity == "error" for v in violations)
    assert all(RULES[v.rule].quote in v.message for v in violations)


def test_every_rule_has_a_bad_case() -> None:
    assert {rule for _, _, expected in BAD_CASES for rule, *_ in expected} == set(Rule)


def test_a_uri_replayed_after_it_left_or_looping_is_not_a_move() -> None:
    """Slate loops and replays repeat URIs on purpose: only a renumbering is flagged."""
    loop = [Slot(f"v/c{i}.ts") for i in range(4)] + [Slot("v/slate0.ts", disc=True)] + [
        Slot("v/slate0.ts") for _ in range(3)] + [Slot("v/c0.ts", disc=True)] + [
        Slot(f"v/c{i}.ts") for i in range(1, 8)]
    assert check(reloads(*({"v": window(loop, f, 4)} for f in range(12)))) == []


def test_line_numbers_point_at_the_offending_line() -> None:
    changed = window(PLAIN, 1, 5, uris={3: "v/other3.ts"})
    assert [v.line for v in check(reloads({"v": window(PLAIN, 0, 5)}, {"v": changed}))] == [
        line_of(changed, "v/other3.ts")]
    dsn = window(V, 9, 5, dsn_delta=-1)
    assert [v.line for v in check(reloads({"v": window(V, 7, 5)}, {"v": dsn}))] == [
        line_of(dsn, "#EXT-X-DISCONTINUITY-SEQUENCE:0")]
    ll = window(PLAIN, 0, 3, seg_extra={2: ('#EXT-X-PART:DURATION=0.5,URI="v/p2.0.ts"',)})
    assert [v.line for v in check(reloads({"v": ll}))] == [
        line_of(ll, '#EXT-X-PART:DURATION=0.5,URI="v/p2.0.ts"')]


@pytest.mark.parametrize(("extinf", "exceeds"), [("2.499", False), ("2.500", True),
                                                  ("1.000", False), ("3.000", True)])
def test_target_duration_rounds_to_nearest_halves_up(extinf: str, exceeds: bool) -> None:
    slots = content(3, "v", ["2.000", extinf, "2.000"])
    assert bool(check(reloads({"v": window(slots, 0, 3)}))) == exceeds


# --- good sequences -------------------------------------------------------------------


def test_sliding_window_through_an_ad_break_in_two_renditions_is_clean() -> None:
    snapshots = [Snapshot(i, {"v": window(V, first, 6), "a": window(A, first, 6)})
                 for i, first in enumerate([0, 0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12, 14])]
    assert check(snapshots) == []
    # The sequence really exercises rule 2: both discontinuities slid out.
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:2\n" in snapshots[-1].playlists["v"]


def test_renditions_fetched_out_of_phase_are_clean() -> None:
    snapshots = [Snapshot(i, {"v": window(V, first, 6), "a": window(A, max(0, first - 1), 5)})
                 for i, first in enumerate(range(15))]
    assert check(snapshots) == []


def test_dsn_gap_larger_than_window_reports_nothing_it_cannot_know() -> None:
    assert check(reloads({"v": window(V, 6, 2)}, {"v": window(V, 12, 3)})) == []


def test_boundary_outside_the_other_window_is_not_compared() -> None:
    a_no_disc = [replace(s, disc=False) if i == 8 else s for i, s in enumerate(A)]
    assert check(reloads({"v": window(V, 5, 6), "a": window(a_no_disc, 3, 5)})) == []


def test_same_grid_limits_rule_5_to_each_group() -> None:
    a_no_disc = [replace(s, disc=False) if i == 8 else s for i, s in enumerate(A)]
    snapshots = reloads({"v": window(V, 5, 6), "a": window(a_no_disc, 5, 6)})
    assert check(snapshots, same_grid={"v": "video", "a": "audio"}) == []
    assert found(check(snapshots, same_grid={"v": "av", "a": "av"})) == [
        (Rule.RENDITIONS_DISAGREE, 0, "a", 8)]


def test_tolerance_is_a_parameter() -> None:
    snapshots = reloads({"v": window(PLAIN, 0, 5)},
                        {"v": window(PLAIN, 1, 5, pdt_shift={1: 0.04})})
    assert check(snapshots) == []
    assert found(check(snapshots, tolerance=Fraction(1, 100))) == [(Rule.PDT_DRIFT, 1, "v", 1)]


# --- attribution ----------------------------------------------------------------------

LONG_ORIGIN = content(20, "v", ["2.000"] * 5 + ["2.600"] + ["2.000"] * 14)


def test_origin_breaking_rule_3_is_reported_as_inherited() -> None:
    text = window(LONG_ORIGIN, 3, 5)
    violations = check([Snapshot(0, {"v": text}, origin={"v": text})])
    assert [(*t, v.source) for t, v in zip(found(violations), violations)] == [
        (Rule.TARGET_DURATION_EXCEEDED, 0, "v", 5, "origin")]


def test_stitcher_breaking_rule_3_on_a_clean_origin_is_its_own() -> None:
    stitched = with_break(content(20, "v"), 8, ["2.600", "1.400", "2.000"], "v")
    violations = check([Snapshot(0, {"v": window(stitched, 6, 6)},
                                 origin={"v": window(PLAIN, 6, 6)})])
    assert [(*t, v.source) for t, v in zip(found(violations), violations)] == [
        (Rule.TARGET_DURATION_EXCEEDED, 0, "v", 8, "stitcher")]


def test_inherited_and_introduced_side_by_side() -> None:
    stitched = with_break(LONG_ORIGIN, 8, ["2.600", "1.400", "2.000"], "v")
    snapshots = [Snapshot(i, {"v": window(stitched, first, 6)},
                          origin={"v": window(LONG_ORIGIN, first, 6)})
                 for i, first in enumerate([3, 4, 5])]
    assert [(v.msn, v.reload, v.source) for v in check(snapshots)] == [
        (5, 0, "origin"), (8, 0, "stitcher")]


def test_without_origin_everything_is_the_stitchers() -> None:
    violations = check(reloads({"v": window(LONG_ORIGIN, 3, 5)}))
    assert [v.source for v in violations] == ["stitcher"]


def test_ll_hls_tags_are_never_inherited() -> None:
    text = window(PLAIN, 0, 3, header_extra=("#EXT-X-PART-INF:PART-TARGET=0.5",))
    violations = check([Snapshot(0, {"v": text}, origin={"v": text})])
    assert [(v.rule, v.source) for v in violations] == [(Rule.LL_HLS_TAG_PRESENT, "stitcher")]


def test_playlist_level_rule_inherited_at_the_same_reload() -> None:
    first, second = window(PLAIN, 0, 5), window(PLAIN, 1, 5, target=3)
    violations = check([Snapshot(0, {"v": first}, origin={"v": first}),
                        Snapshot(1, {"v": second}, origin={"v": second})])
    assert [(v.rule, v.reload, v.source) for v in violations] == [
        (Rule.TARGET_DURATION_CHANGED, 1, "origin")]


# --- API: incremental feed, JSON, summary, text report ---------------------------------


def test_check_is_a_loop_over_checker_feed() -> None:
    _, snapshots, _ = next(c for c in BAD_CASES if c[0] == "unparseable")
    checker = Checker()
    assert [v for s in snapshots for v in checker.feed(s)] == check(snapshots)


def test_to_json_summary_and_text_report() -> None:
    text = window(LONG_ORIGIN, 3, 5)
    stitched = window(with_break(LONG_ORIGIN, 8, ["2.600", "1.400", "2.000"], "v"), 6, 6)
    violations = check([Snapshot(0, {"v": text}, origin={"v": text}),
                        Snapshot(1, {"v": stitched}, origin={"v": window(LONG_ORIGIN, 6, 6)})])
    assert json.loads(json.dumps(violations[0].to_json())) == {
        "rule": "TARGET_DURATION_EXCEEDED", "invariant": 3, "severity": "error",
        "source": "origin", "reload": 0, "rendition": "v", "msn": 5,
        "line": line_of(text, "#EXTINF:2.600,"), "message": violations[0].message}
    assert summary(violations) == {
        "total": 2, "by_severity": {"error": 2}, "by_source": {"origin": 1, "stitcher": 1},
        "by_rule": {"TARGET_DURATION_EXCEEDED": {"stitcher": 1, "origin": 1}}}
    assert format_text(violations).splitlines() == [
        (f"ERROR [origin] TARGET_DURATION_EXCEEDED (reload 0, rendition v, msn 5, "
         f"line {line_of(text, '#EXTINF:2.600,')}): {violations[0].message}"),
        (f"ERROR [stitcher] TARGET_DURATION_EXCEEDED (reload 1, rendition v, msn 8, "
         f"line {line_of(stitched, '#EXTINF:2.600,')}): {violations[1].message}"),
        "2 violation(s): 1 from origin, 1 from stitcher"]
    assert format_text([]) == "no violations\n"


# --- properties -----------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """A random live channel in two renditions and the windows each reload served."""

    target: int
    slots: dict[str, list[Slot]]
    windows: list[tuple[int, int, int]]  # first msn, v window size, a window size

    def snapshots(self, mutate: int = -1, **overrides: object) -> list[Snapshot]:
        out = []
        for i, (first, size_v, size_a) in enumerate(self.windows):
            v_args: dict[str, object] = {"target": self.target,
                                         **(overrides if i == mutate else {})}
            out.append(Snapshot(i, {
                "v": window(self.slots["v"], first, size_v, **v_args),  # type: ignore[arg-type]
                "a": window(self.slots["a"], first, size_a, target=self.target)}))
        return out


@st.composite
def live_channels(draw: st.DrawFn) -> Live:
    target = draw(st.integers(1, 6))
    n = draw(st.integers(3, 40))
    millis = draw(st.lists(st.integers(500, target * 1000 + 499), min_size=n, max_size=n))
    discs = draw(st.lists(st.integers(0, 4).map(lambda x: x == 0), min_size=n, max_size=n))
    slots = {name: [Slot(f"{name}/s{i}.ts", Fraction(ms, 1000), disc)
                    for i, (ms, disc) in enumerate(zip(millis, discs))] for name in ("v", "a")}
    sizes = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    first, windows = 0, []
    for step in draw(st.lists(st.integers(0, 3), min_size=1, max_size=15)):
        first = min(first + step, n - 1)
        windows.append((first, *sizes))
    return Live(target, slots, windows)


@settings(max_examples=150, deadline=None)
@given(live_channels())
def test_random_valid_live_windows_are_clean(live: Live) -> None:
    assert check(live.snapshots()) == []


@settings(max_examples=150, deadline=None)
@given(live_channels(), st.sampled_from(["uri", "dsn", "target"]), st.data())
def test_one_mutation_always_trips_its_rule(live: Live, kind: str, data: st.DataObject) -> None:
    windows = live.windows
    assume(len(windows) >= 2)
    v_seen = [set(range(f, min(f + size, len(live.slots["v"])))) for f, size, _ in windows]
    if kind == "uri":
        candidates = [(i, msn) for i in range(1, len(windows))
                      for msn in sorted(v_seen[i] & set().union(*v_seen[:i]))]
        assume(candidates)
        i, msn = data.draw(st.sampled_from(candidates))
        snapshots, rule = live.snapshots(i, uris={msn: f"v/changed{msn}.ts"}), Rule.SEGMENT_CHANGED
    elif kind == "dsn":
        # Only where rule 2 is knowable: no segment came and went unseen between reloads.
        knowable = [j for j in range(1, len(windows)) if windows[j][0] <= max(v_seen[j - 1]) + 1]
        assume(knowable)
        i = data.draw(st.sampled_from(knowable))
        snapshots, rule = live.snapshots(i, dsn_delta=-1), Rule.DISCONTINUITY_SEQUENCE
    else:
        i = data.draw(st.integers(0, len(windows) - 1))
        snapshots = live.snapshots(i, target=live.target + 1)
        rule = Rule.TARGET_DURATION_CHANGED
    assert rule in {v.rule for v in check(snapshots)}


# --- bug cases of the corpus --------------------------------------------------------


@needs_corpus
def test_b04_ad_segments_above_the_target_are_flagged_on_the_origin() -> None:
    """INDEX B04: flag MSN 502 and 503 (round(6.006) = 6 > TD 4), and nothing else;
    as the origin's own output it is inherited, as the stitcher's it is its own."""
    text = PLAYLISTS["bugs/B04.m3u8"]
    inherited = check([Snapshot(0, {"v": text}, origin={"v": text})])
    assert [(v.rule, v.msn, v.source) for v in inherited] == [
        (Rule.TARGET_DURATION_EXCEEDED, 502, "origin"),
        (Rule.TARGET_DURATION_EXCEEDED, 503, "origin")]
    assert [v.line for v in inherited] == [line_of(text, "#EXTINF:6.006,") + i * 2
                                          for i in range(2)]
    assert "rounds to 6 > EXT-X-TARGETDURATION 4" in inherited[0].message
    own = check([Snapshot(0, {"v": text})])
    assert [(v.rule, v.msn, v.source) for v in own] == [
        (Rule.TARGET_DURATION_EXCEEDED, 502, "stitcher"),
        (Rule.TARGET_DURATION_EXCEEDED, 503, "stitcher")]


@needs_corpus
def test_b02_reload_2_is_flagged_on_both_counts() -> None:
    """INDEX B02: MSN 196 < 200, and assetA/seg47.ts moved from MSN 201 to 196."""
    first, second = (PLAYLISTS[f"bugs/B02.txt#reload-{i}.m3u8"] for i in (1, 2))
    violations = check(reloads({"v": first}, {"v": second}))
    assert found(violations) == [(Rule.MEDIA_SEQUENCE_DECREASED, 1, "v", None),
                                 (Rule.SEGMENT_MOVED, 1, "v", 196),
                                 (Rule.SEGMENT_MOVED, 1, "v", 197),
                                 (Rule.SEGMENT_MOVED, 1, "v", 198)]
    assert "from 200 to 196" in violations[0].message
    assert "assetA/seg47.ts was MSN 201 in the previous reload, is MSN 196" in (
        violations[1].message)
    # The origin's own fault, when it is the origin's.
    attributed = check([Snapshot(i, {"v": t}, origin={"v": t})
                        for i, t in enumerate((first, second))])
    assert {v.source for v in attributed} == {"origin"} and len(attributed) == 4

def _corpus_check(playlists: Mapping[str, str]) -> list[tuple[Rule, str, int | None]]:
    return [(v.rule, v.rendition, v.msn) for v in check([Snapshot(0, playlists)])]


def test_b19_ads_inheriting_the_content_init_are_flagged() -> None:
    """B19: after each stitcher discontinuity of the faulty output, the segment
    inherits content/v1/init.mp4 (RFC 8216bis 4.4.4.5: a MAP spans discontinuities)."""
    files = bundle_files("B19.txt")
    assert _corpus_check({"v1": files["stitched-faulty.m3u8"]}) == [
        (Rule.INIT_INHERITED_ACROSS_DISCONTINUITY, "v1", 1902),
        (Rule.INIT_INHERITED_ACROSS_DISCONTINUITY, "v1", 1904)]
    assert _corpus_check({"v1": files["content.m3u8"]}) == []
    assert _corpus_check({"ad": files["ad.m3u8"]}) == []


def test_b19_each_span_declaring_its_init_is_clean() -> None:
    faulty = bundle_files("B19.txt")["stitched-faulty.m3u8"]
    fixed = faulty.replace("#EXT-X-DISCONTINUITY\n#EXTINF:4.000,\nads/",
                           '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="ads/c42/v1/init.mp4"\n'
                           "#EXTINF:4.000,\nads/")
    fixed = fixed.replace("#EXT-X-DISCONTINUITY\n#EXTINF:4.000,\ncontent/",
                          '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="content/v1/init.mp4"\n'
                          "#EXTINF:4.000,\ncontent/")
    assert fixed.count("#EXT-X-MAP") == 3
    assert _corpus_check({"v1": fixed}) == []


def _b23_correct() -> str:
    """B23's subtitles done right: fillers like the video's ad segments, one URI each."""
    video = bundle_files("B23.txt")["video.m3u8"]
    fillers = iter(range(3))
    lines = []
    for line in video.splitlines():
        if line.startswith("ads/"):
            line = f"subs/filler-a4-{next(fillers)}.vtt"
        elif line.startswith("content/v/"):
            line = line.replace("content/v/", "subs/").replace(".ts", ".vtt")
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_b23_shared_filler_uri_is_flagged() -> None:
    files = bundle_files("B23.txt")
    assert _corpus_check({"video": files["video.m3u8"],
                          "subs": files["subs-faulty-shared-uri.m3u8"]}) == [
        (Rule.SEGMENT_URI_REPEATED, "subs", 3), (Rule.SEGMENT_URI_REPEATED, "subs", 4)]


def test_b23_missing_filler_span_is_flagged() -> None:
    """20 s of subtitles against 35 s of video, and no discontinuities where the
    video has them (compared on the presentation clock: no PDT in these VODs)."""
    files = bundle_files("B23.txt")
    found_rules = _corpus_check({"video": files["video.m3u8"],
                                 "subs": files["subs-faulty-missing.m3u8"]})
    assert (Rule.RENDITION_SPAN_UNCOVERED, "subs", None) in found_rules
    assert {rule for rule, _, _ in found_rules} == {Rule.RENDITION_SPAN_UNCOVERED,
                                                    Rule.RENDITIONS_DISAGREE}
    assert all(rid == "subs" for _, rid, _ in found_rules)


def test_b23_correct_fillers_are_clean() -> None:
    files = bundle_files("B23.txt")
    assert _corpus_check({"video": files["video.m3u8"], "subs": _b23_correct()}) == []


def test_b05_splices_at_different_content_times_are_flagged() -> None:
    """B05: video spliced at 12 s, audio at 15 s (and back at 22 s vs 25 s)."""
    files = bundle_files("B05.txt")
    found_rules = _corpus_check({"video": files["video.m3u8"], "audio": files["audio.m3u8"]})
    assert found_rules and {r for r, _, _ in found_rules} == {Rule.RENDITIONS_DISAGREE}
    # Audio has no boundary at 12 s (seg2 covers it) nor 22 s (seg4) and two the video
    # lacks (seg3 at 15 s, seg5 at 25 s).
    assert sorted(msn for _, rid, msn in found_rules if rid == "audio") == [2, 3, 4, 5]
