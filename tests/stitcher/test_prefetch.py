"""Decisions before the break: a break signalled 60 s ahead, 20 active cohorts.

Real HTTP between the fixture origin, the stitcher and the fixture ad server; time
is a ManualClock that the test moves in half-second steps, waiting after each step
until every request the step caused has been answered, so the ad server's own log
(stamped with the same clock on arrival) reads exactly on the stream's timeline.
The ad server rotates its pod per request, so each frozen decision is
recognisable in the stitched playlist.
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from fixtures.clock import ManualClock
from fixtures.origin import DateRangeDialect
from manifests.playlist import parse_media
from stitcher.ads import Decision
from tests.harness import Stack, start_stack

COHORTS = [f"g{i:02d}" for i in range(20)]
LEAD_SEGMENTS = 30  # 60 s of 2 s segments
RATE = 1.0          # decision requests per second to the ad server
STEP = 0.5


async def _settle(stack: Stack, clock: ManualClock) -> None:
    """Until the work this clock step started is done: every decision in flight
    is either answered or asleep on the clock (the prefetch schedule, the rate cap)."""
    deadline = time.monotonic() + 10
    quiet = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        pending = stack.runtime.pending_decisions()
        quiet = quiet + 1 if pending <= clock.sleepers else 0
        if quiet >= 3:
            return
    raise AssertionError("the stitcher did not settle within 10 s")


async def _step(stack: Stack, clock: ManualClock, poll: str) -> None:
    clock.advance(STEP)
    status, _, body = await stack.get(poll)
    assert status == 200, body
    await _settle(stack, clock)


def _items(body: bytes, break_id: str) -> dict[int, int]:
    """Pod item index -> segments of it in a stitched playlist."""
    counts: dict[int, int] = {}
    for seg in parse_media(body.decode()).segments:
        parts = seg.uri.split("/")
        if "ad" in parts and break_id in parts:
            item = int(parts[parts.index(break_id) + 1])
            counts[item] = counts.get(item, 0) + 1
    return counts


async def test_a_break_known_60_s_ahead_is_decided_for_every_cohort_before_it_starts(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    channel = {
        "cohorts": [{"attribute": "geo", "values": COHORTS, "default": "g00"}],
        "prefetch_window": 10.0, "prefetch_guard": 5.0, "prefetch_jitter": 1.0,
        "decision_budget": 1.0,
    }
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           origin={"dialect": DateRangeDialect()},
                           adserver={"rotate": True}, ad_query="geo={cohort.geo}",
                           channel_config=channel,
                           stitcher_config={"ad_max_rate": RATE}) as stack:
        sessions = {c: await stack.start_session(geo=c) for c in COHORTS}
        assert sorted(s.cohort for s in sessions.values()) == COHORTS
        rid = (await stack.stitcher_renditions())[0]
        for s in sessions.values():  # every cohort is active
            assert (await stack.get(s.media_url(rid)))[0] == 200
        await stack.ready()
        before = len(stack.vast_requests())  # the warm-up's request

        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 1 + LEAD_SEGMENTS, 30,
                                        announce_ahead=LEAD_SEGMENTS)
        break_start = float(stack.origin.segment_epoch(brk.start_msn))
        announced = float(stack.origin.segment_epoch(edge + 1))
        assert break_start - announced == 60
        poll = sessions["g00"].media_url(rid)
        while clock.now() < break_start + 8:  # the break's first slots are published
            await _step(stack, clock, poll)

        requests = stack.vast_requests()[before:]
        times = sorted(r.clock_time for r in requests if r.clock_time is not None)
        geos = sorted(r.query_string.split("geo=")[1].split("&")[0] for r in requests)
        assert geos == COHORTS, "one decision request per cohort, no more"
        assert len(times) == len(requests)
        # All before the break started, none at (or after) it.
        assert times[-1] < break_start - 4, (times[-1], break_start)
        assert times[0] > announced
        # Spread across the window: 20 requests at <= 1/s need 20 s; the window (10 s)
        # was widened to that, ending 5 s before the break.
        assert times[-1] - times[0] >= 15, times
        for t in times:
            in_second = [u for u in times if t <= u < t + 1]
            assert len(in_second) <= RATE, (t, in_second)

        # At the break, every cohort's playlist plays its own frozen decision.
        break_id = next(b.id for b in stack.runtime.breaks if not b.cancelled)
        for cohort, s in sessions.items():
            status, _, body = await stack.get(s.media_url(rid))
            assert status == 200
            stored = await stack.runtime.store.get_decision(stack.channel, break_id, cohort)
            assert stored is not None
            decision = Decision.from_json(stored)
            assert decision.ads, (cohort, decision.reason)
            nominal = Fraction(2)
            published = _items(body, break_id)
            expected = {i: int(item.span / nominal) for i, item in enumerate(decision.pod.items)
                        if item.kind.value == "ad"}
            assert published, f"{cohort}: no ad in the break"
            for i, count in published.items():
                assert count <= expected[i], (cohort, published, expected)
            assert published.get(0) == min(expected[0], 4), (cohort, published, expected)
        assert len(stack.vast_requests()) - before == len(COHORTS), "none at the break"
        orders = {tuple(a.ad_id for a in Decision.from_json(
            await stack.runtime.store.get_decision(stack.channel, break_id, c) or "").ads)
            for c in COHORTS}
        assert len(orders) == 2, "rotated pods: the decisions are the ad server's 20 answers"
        assert await stack.metric("stitcher_prefetch_decisions_total",
                                  channel=stack.channel, result="ok") == len(COHORTS)


async def test_an_adops_break_scheduled_ahead_is_prefetched_and_cancelling_it_fires_not_used(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    """``POST /admin/.../breaks {"after": 40}``: decisions made over the window before
    it; ``DELETE`` before it starts: every decided ad gets ``notUsed`` (once per
    cohort's decision, in the ad server's own hit log)."""
    token = "adops-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    cohorts = ["a", "b", "c"]
    clock = ManualClock(1_700_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           channel_config={
                               "cohorts": [{"attribute": "geo", "values": cohorts,
                                            "default": "a"}],
                               "prefetch_window": 10.0, "prefetch_guard": 5.0},
                           stitcher_config={"admin_token": token}) as stack:
        sessions = {c: await stack.start_session(geo=c) for c in cohorts}
        rid = (await stack.stitcher_renditions())[0]
        for s in sessions.values():
            assert (await stack.get(s.media_url(rid)))[0] == 200
        await stack.ready()
        before = len(stack.vast_requests())
        async with stack.http.post(f"{stack.base}/admin/channels/{stack.channel}/breaks",
                                   json={"duration": 20, "after": 40}, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            inserted = await resp.json()
        poll = sessions["a"].media_url(rid)
        asked_at = clock.now()
        while len(stack.vast_requests()) - before < len(cohorts):
            assert clock.now() < asked_at + 40, "every cohort decided before the break"
            await _step(stack, clock, poll)
        times = [r.clock_time for r in stack.vast_requests()[before:]]
        assert all(t is not None and asked_at + 20 <= t < asked_at + 36 for t in times), (
            asked_at, times)
        break_id = next(b.id for b in stack.runtime.breaks)
        decided = [Decision.from_json(await stack.runtime.store.get_decision(
            stack.channel, break_id, c) or "") for c in cohorts]
        placed = sum(len(d.ads) for d in decided)
        assert placed >= len(cohorts), [d.reason for d in decided]
        assert not any(h.event == "notUsed" for h in stack.beacon_hits())

        async with stack.http.delete(
                f"{stack.base}/admin/channels/{stack.channel}/breaks/{inserted['id']}",
                headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        for _ in range(5):  # the next origin refresh merges the cancel
            await _step(stack, clock, poll)
        deadline = time.monotonic() + 10
        while len([h for h in stack.beacon_hits() if h.event == "notUsed"]) < placed:
            assert time.monotonic() < deadline, stack.beacon_hits()
            await asyncio.sleep(0.05)
        for _ in range(4):  # later reloads fire nothing more
            await _step(stack, clock, poll)
        await asyncio.sleep(0.2)
        hits = [h for h in stack.beacon_hits() if h.event == "notUsed"]
        assert len(hits) == placed
        assert len(stack.vast_requests()) - before == len(cohorts)
