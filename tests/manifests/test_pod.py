"""Pods: the fallback slate pod and which ads a cut-short break never reaches."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from manifests.pod import Candidate, ItemKind, Pod, PodItem, plan_pod, slate_pod, unplayed


def _pod() -> Pod:
    # 10 s + 6 s ads, 4 s slate over a 20 s break in 2 s slots.
    return plan_pod("b", [Candidate("a", Fraction(10)), Candidate("b", Fraction(5.5))],
                    available=Fraction(20), nominal=Fraction(2), slate_segments=3)


def test_unplayed_ads_of_a_cancelled_or_shortened_break() -> None:
    pod = _pod()
    assert [(it.kind, it.start) for it in pod.items] == [
        (ItemKind.AD, 0), (ItemKind.AD, 10), (ItemKind.SLATE, 16)]
    assert unplayed(pod, Fraction(0)) == [0, 1], "cancelled before it started"
    assert unplayed(pod, Fraction(4)) == [1], "the ad in progress was cut, not unused"
    assert unplayed(pod, Fraction(10)) == [1], "ended exactly where the second ad starts"
    assert unplayed(pod, Fraction(12)) == []
    assert unplayed(pod, Fraction(20)) == [], "slate is not an ad"
    assert unplayed(Pod("b", (), Fraction(2), personalized=False), Fraction(0)) == []


def test_slate_pod_fills_the_whole_avail_with_slate() -> None:
    pod = slate_pod("b", start=Fraction(4), available=Fraction(16), nominal=Fraction(2),
                    slate_segments=5)
    assert pod.personalized
    [item] = pod.items
    assert (item.kind, item.start, item.span, item.segments) == (
        ItemKind.SLATE, 4, 16, 5)
    found = pod.item_at(Fraction(14))
    assert found is not None and found[0] == 0
    assert pod.item_at(Fraction(2)) is None, "before the pod's start: the content shows"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fractions(min_value=Fraction(-1), max_value=Fraction(40), max_denominator=1001),
                max_size=4),
       st.fractions(min_value=Fraction(0), max_value=Fraction(90), max_denominator=1001),
       st.sampled_from([Fraction(2), Fraction(6), Fraction("2.002"), Fraction("6.006"),
                        Fraction(1, 3)]),
       st.fractions(min_value=Fraction(0), max_value=Fraction(30), max_denominator=1001),
       st.integers(0, 4))
def test_the_bounds_plan_pod_leaves_are_the_ones_its_items_give(
        durations: list[Fraction], available: Fraction, nominal: Fraction, start: Fraction,
        slate_segments: int) -> None:
    """plan_pod computes the layout's microsecond bounds from its own integers;
    they are what pod_bounds computes from the pod's items (Fractions)."""
    from manifests import pod as module

    candidates = [Candidate(f"ad{i}", d) for i, d in enumerate(durations)]
    pod = plan_pod("b", candidates, available=available, nominal=nominal, start=start,
                   slate_segments=slate_segments)
    if not pod.personalized:
        return
    seeded = module.pod_bounds(pod)
    module._BOUNDS.clear()
    assert module.pod_bounds(pod) == seeded


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40_000_000), st.integers(0, 40_000_000),
                          st.integers(1, 5), st.sampled_from([0, 0, 4_000_000, 6_000_000])),
                min_size=1, max_size=4),
       st.lists(st.integers(-1_000_000, 60_000_000), max_size=30), st.booleans(),
       st.sampled_from([None, 2_000_000, 2_002_000, 6_006_000]), st.booleans())
@example([(30_000_000, 40_000_000, 1, 0), (0, 10_000_000, 1, 0)], [5_000_000], True, None,
         False)  # out of order: the walk must not be used
@example([(0, 20_000_000, 1, 0), (5_000_000, 10_000_000, 1, 0), (8_000_000, 30_000_000, 2, 0)],
         [1_000_000, 9_000_000, 21_000_000], True, None, False)  # overlapping
def test_items_at_is_item_in_offset_by_offset(spans: list[tuple[int, int, int, int]],
                                              offsets: list[int], ordered: bool,
                                              cadence: int | None, consecutive: bool) -> None:
    """The walk over a break's slots gives what item_in gives each slot: over
    consecutive layouts (plan_pod's) and arbitrary ones, offsets in order or not."""
    from manifests.pod import item_in, items_at

    if consecutive:  # each span starts where the previous ended
        at, laid = spans[0][0], []
        for start, end, segments, period in spans:
            length = abs(end - start)
            laid.append((at, at + length, segments, period))
            at += length
        spans = laid
    if ordered:
        offsets = sorted(offsets)
    items = tuple(PodItem(ItemKind.SLATE if period else ItemKind.AD, f"c{k}", Fraction(1),
                          Fraction(0), Fraction(1), segments)
                  for k, (_s, _e, segments, period) in enumerate(spans))
    bounds = (2_000_000, tuple(spans))
    assert items_at(items, bounds, offsets, cadence) == [
        item_in(items, bounds, offset, cadence) for offset in offsets]


def test_items_at_walks_plan_pods_layout() -> None:
    """A planned pod's slots in order, through the walk: ads then slate, its loop."""
    from manifests.pod import item_in, items_at, pod_bounds

    pod = _pod()
    bounds = pod_bounds(pod)
    offsets = [k * 1_000_000 for k in range(-2, 26)]
    hits = items_at(pod.items, bounds, offsets)
    assert hits == [item_in(pod.items, bounds, o) for o in offsets]
    assert [h[0] if h else None for h in hits[2::2]] == [0] * 5 + [1] * 3 + [2] * 2 + [None] * 3
