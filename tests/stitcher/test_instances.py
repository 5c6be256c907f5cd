"""Three stitcher instances sharing one Redis serve the same bytes and ask upstream once.

One fixture origin, one fixture ad server, three stitcher apps built from the
same config (each with its own Redis connection, as separate processes would
have) on a real ``redis-server`` the session starts. A ManualClock moves one
segment at a time over two ad breaks; at every step every session reloads
every rendition concurrently, requests spread round-robin over the instances.
The observers are independent of the stitcher: the response bodies, the
origin's own request log and the ad server's own VAST request log.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, check, format_text
from manifests.playlist import parse_media
from tests.harness import Stack, start_stack

INSTANCES = 3
GEOS = ("us", "fr", "de")
SESSIONS_PER_COHORT = 12
STEPS = 75  # 150 s of stream on 2 s segments: breaks at 20 s and 80 s (30 s each)


async def _flush(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def _run(stack: Stack) -> dict[str, Any]:
    """Drive the stack; return what the independent observers saw."""
    assert isinstance(stack.clock, ManualClock)
    # Warm-up (conditioning, seconds of real time) ran with the virtual clock
    # standing still, long enough for the shared playlist record's real-time TTL
    # to lapse: count the origin's fetches from the first reload on.
    stack.origin.clear_log()
    turn = itertools.count()
    sessions = [await stack.start_session(next(turn) % INSTANCES, geo=geo)
                for geo in GEOS for _ in range(SESSIONS_PER_COHORT)]
    assert {s.cohort for s in sessions} == set(GEOS)
    renditions = await stack.stitcher_renditions()

    async def reload(url: str) -> tuple[int, str, bytes]:
        instance = next(turn) % INSTANCES
        status, headers, body = await stack.get(stack.on_instance(url, instance))
        assert status == 200, body
        assert "X-Stitcher-Stale" not in headers
        return instance, headers["ETag"], body

    disagreements: list[str] = []
    snapshots: dict[str, list[Snapshot]] = defaultdict(list)
    answered_by: Counter[int] = Counter()
    for step in range(STEPS):
        jobs = [(s.cohort, rid, s.media_url(rid)) for s in sessions for rid in renditions]
        replies = await asyncio.gather(*(reload(url) for _c, _r, url in jobs))
        bodies: dict[tuple[str, str], set[bytes]] = defaultdict(set)
        for (cohort, rid, _url), (instance, etag, body) in zip(jobs, replies, strict=True):
            bodies[(cohort, rid)].add(body)
            answered_by[instance] += 1
        for (cohort, rid), found in sorted(bodies.items()):
            if len(found) != 1:
                disagreements.append(f"step {step} {cohort}/{rid}: {len(found)} bodies")
        for cohort in GEOS:
            snapshots[cohort].append(Snapshot(
                index=step, time=stack.clock.now(),
                playlists={rid: min(bodies[(cohort, rid)]).decode() for rid in renditions}))
        stack.clock.advance(2)
        await asyncio.sleep(0)
    return {"disagreements": disagreements, "snapshots": snapshots,
            "answered_by": answered_by, "renditions": renditions}


def _decision_requests(stack: Stack) -> Counter[tuple[str, str]]:
    """VAST requests per (break, cohort) from the ad server's own log (warm-up
    prefetches, which name no real break, left out)."""
    found: Counter[tuple[str, str]] = Counter()
    for r in stack.vast_requests():
        q = parse_qs(r.query_string)
        if q.get("break") != ["prefetch"]:
            found[(q["break"][0], q["geo"][0])] += 1
    return found


def _media_fetches_per_interval(stack: Stack) -> Counter[tuple[str | None, float]]:
    """Origin media-playlist fetches per (rendition, clock time): the clock moves in
    whole segments (2 s), a refresh interval is half a target duration (1 s)."""
    return Counter((r.rendition, r.time) for r in stack.origin.requests("media"))


def _stack(media: object, assets_dir: Path, tmp_path: Path, clock: ManualClock,
           stitcher_config: dict[str, Any]) -> Any:
    origin = {"break_interval": 60, "break_duration": 30, "first_break_at": 20}
    cohorts = [{"attribute": "geo", "values": list(GEOS), "default": "us"}]
    return start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "state",
                       assets_dir=assets_dir, warm_up=True, instances=INSTANCES,
                       channel_config={"cohorts": cohorts},
                       stitcher_config=stitcher_config,
                       ad_query="break={break_id}&geo={cohort.geo}",
                       adserver={"rotate": True})


async def test_instances_agree_and_coalesce(media: object, assets_dir: Path, tmp_path: Path,
                                            redis_url: str) -> None:
    await _flush(redis_url)
    clock = ManualClock(start=1_820_000_000.0)
    async with _stack(media, assets_dir, tmp_path, clock, {"redis_url": redis_url}) as stack:
        seen = await _run(stack)
        fetches = _media_fetches_per_interval(stack)
        decisions = _decision_requests(stack)
        bodies = [s.playlists for s in seen["snapshots"]["us"]]

    # Every reload of a (cohort, rendition) at one clock time: one body, whichever
    # instance answered (and every instance answered its share).
    assert seen["disagreements"] == [], seen["disagreements"][:10]
    assert set(seen["answered_by"]) == set(range(INSTANCES))
    # The breaks were stitched with ads (the agreement is about something).
    assert sum("ad/" in text for pl in bodies for text in pl.values()) > 20
    # The cohorts' playlists keep every invariant (one checker run per cohort).
    for cohort, snaps in seen["snapshots"].items():
        faults = [v for v in check(snaps) if v.source == "stitcher"]
        assert faults == [], (cohort, format_text(faults))

    # Origin: at most one media-playlist fetch per rendition per refresh interval,
    # across all instances, and one per step (not one per instance).
    assert fetches and max(fetches.values()) == 1, fetches.most_common(3)
    per_rendition = Counter(r for r, _t in fetches)
    assert all(n <= STEPS + 1 for n in per_rendition.values()), per_rendition

    # Ad server: exactly one decision request per (break, cohort), over at least
    # two breaks (the window holds a third near its edge at the end).
    breaks = {b for b, _g in decisions}
    assert len(breaks) >= 2, decisions
    assert decisions == Counter({(b, g): 1 for b in breaks for g in GEOS}), decisions


async def test_without_redis_instances_disagree(media: object, assets_dir: Path,
                                               tmp_path: Path) -> None:
    """The observers above are sharp: three instances with embedded stores each
    fetch the origin, ask the ad server themselves and (the ad server rotating its
    answers) serve different breaks to one cohort: what the shared store is for."""
    clock = ManualClock(start=1_830_000_000.0)
    async with _stack(media, assets_dir, tmp_path, clock, {}) as stack:
        differing = await _run_short(stack)
        fetches = _media_fetches_per_interval(stack)
        decisions = _decision_requests(stack)
    assert max(fetches.values()) == INSTANCES, fetches.most_common(3)
    assert decisions and max(decisions.values()) == INSTANCES, decisions
    assert differing > 0


async def _run_short(stack: Stack) -> int:
    """Into the first break, every session on every instance; returns how many
    (step, session, rendition) reloads got different bodies from different instances."""
    assert isinstance(stack.clock, ManualClock)
    stack.origin.clear_log()
    sessions = [await stack.start_session(0, geo=g) for g in GEOS]
    renditions = await stack.stitcher_renditions()
    differing = 0
    for _ in range(12):
        for s in sessions:
            for rid in renditions:
                replies = await asyncio.gather(*(stack.get(stack.on_instance(s.media_url(rid), i))
                                                 for i in range(INSTANCES)))
                differing += len({body for _status, _h, body in replies}) > 1
        stack.clock.advance(2)
        await asyncio.sleep(0)
    return differing


async def test_every_cohort_starts_each_break_with_its_pod(media: object, assets_dir: Path,
                                                          tmp_path: Path,
                                                          redis_url: str) -> None:
    """One instance on Redis, three cohorts reloading every rendition at once: each
    break opens with the first segment of its pod in every cohort and rendition,
    in every reload. A render consumes a rendition's new segments' markers once per
    instance; the renders of the other cohorts, running concurrently while that
    render's breaks update was on its way to Redis, once saw neither the marker nor
    the break in the store and published the break's first slot as content for
    good (the pod then started one slot in: the first ad's impression and start
    never fired for that cohort). The embedded store answers without yielding, so
    only Redis showed it."""
    await _flush(redis_url)
    clock = ManualClock(start=1_850_000_000.0)
    origin = {"break_interval": 30, "break_duration": 10, "first_break_at": 20}
    cohorts = [{"attribute": "geo", "values": list(GEOS), "default": "us"}]
    served: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "s",
                           assets_dir=assets_dir, warm_up=True, channel="cohortstart",
                           channel_config={"cohorts": cohorts},
                           stitcher_config={"redis_url": redis_url}) as stack:
        sessions = [await stack.start_session(0, geo=g) for g in GEOS]
        renditions = await stack.stitcher_renditions()
        jobs = [(s, rid) for s in sessions for rid in renditions]
        for _step in range(40):
            replies = await asyncio.gather(*(stack.get(s.media_url(rid)) for s, rid in jobs))
            for (s, rid), (status, _h, body) in zip(jobs, replies, strict=True):
                assert status == 200, body
                for seg in parse_media(body.decode()).segments:
                    served[(s.cohort, rid, seg.msn)].add(seg.uri)
            clock.advance(2)
            await asyncio.sleep(0)
        breaks = stack.origin.breaks_between(0, max(m for _c, _r, m in served))

    # Every MSN named one segment in every reload of a (cohort, rendition).
    changed = {k: uris for k, uris in served.items() if len(uris) > 1}
    assert changed == {}, changed
    checked = 0
    for b in breaks:
        if not all((g, rid, b.start_msn) in served for g in GEOS for rid in renditions):
            continue  # not (yet) in any window
        checked += 1
        for rid in renditions:
            firsts = {g: next(iter(served[(g, rid, b.start_msn)])) for g in GEOS}
            # The pod's first item, from its first segment (ad/<rid>/<break>/0/0.ts).
            assert all(u.startswith(f"ad/{rid}/") and u.endswith("/0/0.ts")
                       for u in firsts.values()), (b, rid, firsts)
    assert checked >= 2, (breaks, checked)
