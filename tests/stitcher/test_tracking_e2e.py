"""Server-side tracking end to end at scale, then the same run with faults (issue 6).

Everything is counted from the fixture ad server's raw hit log (every request as it
arrived), never from the stitcher's metrics, and the expected beacons are worked
out apart from the stitcher: from the pods the ad server answered (its own log of
each VAST answer), the documented fill policy (:func:`tests.harness.fill_pod`), the
breaks the test inserted and the ad segments each viewer requested
(:func:`tests.harness.expected_events`).

The rig (one per module, shared by both tests): a ``redis-server`` with append-only
persistence, two ``stitcher serve`` processes, one ``stitcher beacons`` process (a
dedicated queue consumer; the stitchers consume too), the fixture origin and ad
server in this test's event loop. Viewers are cheap asyncio clients on one
``ClientSession``, behind a round-robin "load balancer" over the stitchers that are
up, retrying a failed request as hls.js does: each polls its playlist (one
rendition) and requests the ad segments it shows at playback pace.

The clock is accelerated and stepped: the origin's virtual clock moves one segment
(2 s) per step, and a step ends when every viewer has done its part of it (poll
every third step, staggered; up to two pending ad segments per step) and at least
``STEP`` real seconds passed. So virtual time runs as fast as the machine can serve
1,000 viewers, and never outruns them: on a loaded machine a real-time rig missed
segments because viewers fell behind the window, which said nothing of beacons.
Beacon delivery (sends, retries, reclaims) runs in real time in the processes.

1. 1,000 sessions in 5 cohorts through 3 breaks: the hit log holds exactly the
   expected beacons (each event once per session per ad, in firing order), and a
   control group that only polls playlists fires nothing.
2. The same with faults: the tracking endpoint answers 503 and then hangs past the
   send timeout for a while; a third-party tracker URL on another host never
   recovers; a stitcher and the beacon consumer are SIGKILLed mid-break and
   restarted; redis-server is SIGKILLed and restarted once. Once it settles:
   nothing missing, dead letters exactly the never-recovering tracker's beacons
   (with the reason), every duplicate in the log one the stitcher reported as a
   possible duplicate (``ss:beacons:possible-duplicates``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from fixtures.adserver import AdServerConfig, Faults, FixtureAd, faults, vast_requests
from fixtures.adserver import create_app as create_adserver
from fixtures.adserver import hits as adserver_hits
from fixtures.clock import ManualClock
from fixtures.origin import (
    ORIGIN_STATE,
    OriginConfig,
    OriginState,
    renditions_from_media,
    run_origin,
)
from stitcher.config import StitcherConfig
from stitcher.sessions import SessionSigner
from tests.harness import (
    ROOT,
    ChildProcess,
    default_start_epoch,
    expected_events,
    fill_pod,
    respawn,
    spawn,
    stop_children,
    until_up,
    warm_up_assets,
)
from tests.redis_server import RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.integration,
              pytest.mark.asyncio(loop_scope="module")]

CHANNEL = "track1"
GEOS = ("us", "fr", "de", "es", "it")
SEGMENT = Fraction(2)
WINDOW = 15
#: Real seconds a step lasts at least (the stitchers refresh the origin every half
#: target duration of real time: faster steps only make their playlists lag).
STEP = 0.5
#: Viewers poll every POLL_EVERY steps (staggered), the window holding WINDOW.
POLL_EVERY = 3
#: Seconds (virtual) per break: ad B (15 s, 8 slots) alone, or ad A (10 s) and slate.
BREAK = 16
SESSIONS = 1000
CONTROL = 50
STITCHERS = 2
SESSION_KEYS = {"k1": "tracking-e2e-key"}
#: Attempts per beacon, retries at most MAX_BACKOFF apart: the recovering tracker's
#: outages (503 then hangs in break 1, hangs again in break 2: 25 s at most on a
#: loaded machine, a hung attempt costing the 10 s send timeout) never outlast
#: them; with 6 attempts, uncapped, a beacon queued in the 503s was dead-lettered
#: in the second hang. The tracker that never recovers gets all 12 within 30 s.
MAX_ATTEMPTS = 12
MAX_BACKOFF = 3.0
#: Seconds a hung tracking endpoint holds a beacon request (past the send timeout).
HANG = 12.0


@dataclass
class Viewer:
    session_id: str
    path: str       # /v1/session/<token>/<channel>
    cohort: str
    rid: str
    control: bool = False
    #: (break, pod position) -> segment indexes whose request was answered 302.
    fetched: dict[tuple[str, int], set[int]] = field(default_factory=lambda: defaultdict(set))
    seen: set[str] = field(default_factory=set)
    pending: list[str] = field(default_factory=list)


@dataclass
class Rig:
    clock: ManualClock
    origin: OriginState
    ad_app: web.Application
    broken_app: web.Application
    broken_base: str
    redis: RedisProcess
    stitchers: list[ChildProcess]
    sender: ChildProcess
    http: aiohttp.ClientSession
    tmp: Path
    renditions: list[str] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)
    retries: Counter[str] = field(default_factory=Counter)
    #: The most ad segments a viewer had listed and not yet requested (its lag).
    backlog: int = 0
    #: Ad views a viewer saw only part of (under faults).
    partial: int = 0
    open_detail: dict[str, Any] = field(default_factory=dict)
    #: Seconds each answered request took, by expected status (200 playlists, 302 ads).
    latency: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))

    def up(self) -> list[ChildProcess]:
        return [s for s in self.stitchers if s.alive]

    def logs(self) -> str:
        return "\n".join(f"--- {c.log.name} ---\n{c.log_text()[-3000:]}"
                         for c in [*self.stitchers, self.sender])

    async def get(self, path: str, expect: int) -> bytes:
        """GET on the next stitcher up, as a player behind a load balancer: a 5xx or
        a cut connection is retried with backoff (hls.js-like), up to ~15 s."""
        delay = 0.1
        for _ in range(25):
            up = self.up()
            if up:
                target = up[next(self.turn) % len(up)]
                sent = time.monotonic()
                try:
                    async with self.http.get(target.base + path, allow_redirects=False) as resp:
                        body = await resp.read()
                        if resp.status == expect:
                            self.latency[expect].append(time.monotonic() - sent)
                            return body
                        self.retries[f"HTTP {resp.status}"] += 1
                        assert resp.status >= 500, (path, resp.status, body[:300])
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.retries[type(exc).__name__] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        raise AssertionError(f"{path}: no {expect} after retries ({self.retries})")

    async def sessions(self, count: int, control: bool = False) -> list[Viewer]:
        signer = SessionSigner(SESSION_KEYS)

        async def one(i: int) -> Viewer:
            geo = GEOS[i % len(GEOS)]
            target = self.stitchers[i % len(self.stitchers)]
            async with self.http.post(f"{target.base}/v1/session/{CHANNEL}",
                                      json={"adsParams": {"geo": geo}}) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.json()
            path = str(data["manifestUrl"]).rsplit("/", 1)[0]
            sid = signer.decode(path.split("/")[3], CHANNEL, time.time()).session_id
            return Viewer(sid, path, data["cohort"], self.renditions[i % len(self.renditions)],
                          control)

        out: list[Viewer] = []
        for chunk in range(0, count, 200):
            out += await asyncio.gather(*(one(i) for i in range(chunk, min(count, chunk + 200))))
        return out


async def _tick(rig: Rig, viewer: Viewer, step: int, offset: int, last: bool) -> None:
    """One viewer's part of a step: poll its playlist every POLL_EVERY steps (at
    ``offset``), then request up to two listed ad segments, in playlist order (control
    viewers only poll); ``last``: play out everything listed."""
    if (step + offset) % POLL_EVERY == 0 and not last:
        body = await rig.get(f"{viewer.path}/media/{viewer.rid}.m3u8", 200)
        for line in body.decode().splitlines():
            if line.startswith("ad/") and line not in viewer.seen:
                viewer.seen.add(line)
                if not viewer.control:
                    viewer.pending.append(line)
    for _ in range(len(viewer.pending) if last else 2):
        if not viewer.pending:
            break
        uri = viewer.pending.pop(0)
        await rig.get(f"{viewer.path}/media/{uri}", 302)
        _rid, brk, item, seg = uri.split("/")[1:5]
        viewer.fetched[(brk, int(item))].add(int(seg.split(".")[0]))
    rig.backlog = max(rig.backlog, len(viewer.pending))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(media: Any, assets_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp = tmp_path_factory.mktemp("tracking-e2e")
    redis = RedisProcess(tmp / "redis")
    redis.start()
    clock = ManualClock(start=float(int(time.time())))
    origin_cfg = OriginConfig(renditions=renditions_from_media(media), channel=CHANNEL,
                              break_interval=None, window_segments=WINDOW,
                              start_epoch=default_start_epoch(clock, SEGMENT, WINDOW))
    origin_runner, origin_port = await run_origin(origin_cfg, clock, host="127.0.0.1", port=0)
    ads = [FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                     title=f"Fixture {a.id}") for a in media.ads]
    ad_runner = web.AppRunner(create_adserver(AdServerConfig(
        ads=ads, creatives_dir=media.ads[0].path.parent, rotate=True)), access_log=None)
    broken_runner = web.AppRunner(create_adserver(AdServerConfig(
        ads=ads, faults=Faults(beacon_status=503))), access_log=None)
    children: list[ChildProcess] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300))
    try:
        for r in (ad_runner, broken_runner):
            await r.setup()
            await web.TCPSite(r, "127.0.0.1", 0).start()
        ad_base = f"http://127.0.0.1:{ad_runner.addresses[0][1]}"
        broken_base = f"http://127.0.0.1:{broken_runner.addresses[0][1]}"
        raw = {"host": "127.0.0.1", "port": 0, "redis_url": redis.url,
               "session_keys": SESSION_KEYS, "data_dir": str(assets_dir),
               "origin_timeout": 2.0, "shutdown_timeout": 3.0,
               # A send timeout no loaded machine reaches against a live endpoint (a
               # timed-out send that arrived is resent: a reported possible duplicate,
               # which the clean run must not have); the hang fault outlasts it.
               "beacon_claim_idle": 12.0, "beacon_timeout": 10.0, "beacon_backoff": 0.3,
               "beacon_max_attempts": MAX_ATTEMPTS, "beacon_max_backoff": MAX_BACKOFF,
               "beacon_per_host": 32,
               # The fixture ad server shares this process's event loop with 1,050
               # viewers: its answers can take seconds, and a decision over the
               # default 2 s budget would leave a break to content. Decisions are not
               # what this test measures: room for them.
               "ad_timeout": 8.0, "ad_request_timeout": 8.0,
               "channels": [{
                   "id": CHANNEL, "origin_url": f"http://127.0.0.1:{origin_port}/live/"
                                                f"{CHANNEL}/master.m3u8",
                   "ad_server_url": (f"{ad_base}/vast?duration={{duration}}&cb=[CACHEBUSTING]"
                                     f"&break={{break_id}}&geo={{cohort.geo}}"),
                   "allow_private_ad_hosts": True, "slate": str(media.slate),
                   "decision_budget": 10.0,
                   "cohorts": [{"attribute": "geo", "values": list(GEOS), "default": "us"}]}]}
        await warm_up_assets(StitcherConfig.model_validate({**raw, "redis_url": None}),
                             CHANNEL, tmp / "warm-state")
        config_path = tmp / "stitcher.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        serve = ["-m", "stitcher.cli", "serve", "--config", str(config_path)]
        stitchers = [await spawn(i, serve, tmp) for i in range(STITCHERS)]
        sender = await spawn(0, ["-m", "stitcher.cli", "beacons", "--config", str(config_path)],
                             tmp, name="beacons")
        children = [*stitchers, sender]
        await asyncio.gather(*(until_up(http, c, "/healthz") for c in children))
        await asyncio.gather(*(until_up(http, s, "/readyz") for s in stitchers))
        rig = Rig(clock, origin_runner.app[ORIGIN_STATE], ad_runner.app, broken_runner.app,
                  broken_base, redis, stitchers, sender, http, tmp)
        rig.renditions = ["v0", "v1"]
        yield rig
    finally:
        await http.close()
        # The rig's processes as they are now (restarted ones replace the killed).
        if "rig" in locals():
            children = [*rig.stitchers, rig.sender]
        await stop_children(children)
        # The processes' logs, kept for a failed run (pytest prunes its tmp folders).
        import shutil

        keep = ROOT / "artifacts" / "tracking-e2e"
        keep.mkdir(parents=True, exist_ok=True)
        for log in tmp.glob("*.log"):
            shutil.copy(log, keep / log.name)
        for r in (broken_runner, ad_runner, origin_runner):
            await r.cleanup()
        redis.stop()


# ------------------------------------------------------------------ the run
@dataclass
class Run:
    viewers: list[Viewer]
    control: list[Viewer]
    breaks: list[str]
    started_hits: int
    seconds: float = 0.0
    steps: int = 0


def _edge(origin: OriginState) -> int:
    edge = origin.live_edge_msn()
    assert edge is not None
    return edge


async def _run(rig: Rig, on_step: Any = None) -> Run:
    """New sessions (and a control group) watch 3 breaks inserted ahead of the live
    edge, one virtual segment per step; ``on_step(rig, step, breaks)`` (the faults)
    is called at the start of every step."""
    viewers = await rig.sessions(SESSIONS)
    control = await rig.sessions(CONTROL, control=True)
    assert Counter(v.cohort for v in viewers) == {g: SESSIONS // len(GEOS) for g in GEOS}
    edge = _edge(rig.origin)
    gap = BREAK // 2 + 3
    inserted = [rig.origin.insert_break(edge + 3 + j * gap, BREAK) for j in range(3)]
    started_hits = len(adserver_hits(rig.ad_app))
    began = time.monotonic()
    everyone = viewers + control
    offsets = [random.randrange(POLL_EVERY) for _ in everyone]
    end = inserted[-1].end_msn + 2
    step = 0
    while True:
        last = _edge(rig.origin) >= end + POLL_EVERY
        tick = time.monotonic()
        if on_step is not None:
            await on_step(rig, step, inserted)
        await asyncio.gather(*(_tick(rig, v, step, o, last)
                               for v, o in zip(everyone, offsets, strict=True)))
        if last:
            break
        await asyncio.sleep(max(0.0, tick + STEP - time.monotonic()))
        rig.clock.advance(float(SEGMENT))
        step += 1
    breaks = sorted({b for v in viewers for b, _i in v.fetched})
    for status, took in sorted(rig.latency.items()):
        took.sort()
        print(f"latency {status}: n={len(took)} p50={took[len(took) // 2]:.3f} "
              f"p99={took[int(len(took) * 0.99)]:.3f} max={took[-1]:.3f} s")
    rig.latency.clear()
    return Run(viewers, control, breaks, started_hits, time.monotonic() - began, step)


def _answers(rig: Rig) -> dict[tuple[str, str], tuple[list[str], dict[str, list[tuple[str, str]]]]]:
    """(break, cohort) -> (the ad ids the ad server answered, in order; their extra
    trackers), from its own request log (one decision per (break, cohort))."""
    found: dict[tuple[str, str], Any] = {}
    for r in vast_requests(rig.ad_app):
        q = parse_qs(r.query_string)
        if q.get("break") == ["prefetch"]:
            continue
        key = (q["break"][0], q["geo"][0])
        assert key not in found, f"a second decision request for {key}"
        found[key] = (list(r.ads), r.extra)
    return found


def _expected(rig: Rig, run: Run, durations: dict[str, Fraction], *, whole: bool = True
              ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[str]]]:
    """Per session: [(ad id, event)] in firing order over the run's breaks, and the
    extra-tracker URLs (path + event) it owes, from the ad server's answers and the
    segments it requested. ``whole``: every viewer requested every ad segment."""
    answers = _answers(rig)
    expected: dict[str, list[tuple[str, str]]] = {}
    extra: dict[str, list[str]] = defaultdict(list)
    for v in run.viewers:
        events: list[tuple[str, str]] = []
        for brk in run.breaks:
            ads, trackers = answers[(brk, v.cohort)]
            placed = fill_pod([durations[a] for a in ads], Fraction(BREAK), SEGMENT)
            items = {k: seg for (b, k), seg in v.fetched.items() if b == brk}
            # What the viewer requested: every slot of the break, ads then slate.
            assert set(items) <= set(range(len(placed) + 1)), (brk, items, placed)
            for item, index in enumerate(placed):
                ad = ads[index]
                slots = -(-durations[ad] // SEGMENT)
                if items.get(item) != set(range(int(slots))):
                    assert not whole, (v.session_id, brk, item, items.get(item))
                    rig.partial += 1
                due = expected_events(durations[ad], SEGMENT, items.get(item, set()))
                events += [(ad, e) for e in due]
                extra[v.session_id] += [f"{urlsplit(url).path}:{e}"
                                        for e, url in trackers.get(ad, []) if e in due]
        expected[v.session_id] = events
    return expected, extra


def _hits_by_session(app: web.Application, since: int = 0) -> dict[str, list[Any]]:
    """The hits the endpoint accepted (not answered 5xx: a refused beacon is not
    counted by a tracker, and the stitcher retries it), by ``session=``."""
    out: dict[str, list[Any]] = defaultdict(list)
    for h in adserver_hits(app)[since:]:
        if h.status < 500:
            out[(h.query.get("session") or [""])[0]].append(h)
    return out


async def _redis_streams(rig: Rig) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """(dead letters, possible duplicates reported, beacons not settled yet)."""
    from redis.asyncio import Redis

    client = Redis.from_url(rig.redis.url)
    try:
        def s(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        dead = [{s(k): s(v) for k, v in f.items()}
                for n in range(8) for _i, f in await client.xrange(f"ss:beacons:{{{n}}}:dead")]
        dups = [{s(k): s(v) for k, v in f.items()}
                for _i, f in await client.xrange("ss:beacons:possible-duplicates")]
        open_ = 0
        rig.open_detail.clear()
        for n in range(8):
            stream = f"ss:beacons:{{{n}}}"
            if not await client.exists(stream):
                continue
            for g in await client.xinfo_groups(stream):
                # Not yet delivered: entries after the group's last delivered id,
                # counted (the group's "lag" is not kept exact across a restart).
                after = await client.xrange(stream, min=f"({s(g['last-delivered-id'])}",
                                            max="+")
                open_ += int(g["pending"]) + len(after)
                rig.open_detail[f"{n}:pending"] = int(g["pending"])
                rig.open_detail[f"{n}:undelivered"] = len(after)
                rig.open_detail[f"{n}:lag"] = g.get("lag")
                for c in await client.xinfo_consumers(stream, s(g["name"])):
                    rig.open_detail[f"{n}:{s(c['name'])[-14:]}"] = (int(c["pending"]),
                                                                    int(c["idle"]))
            retrying = int(await client.zcard(f"{stream}:retry"))
            rig.open_detail[f"{n}:retry"] = retrying
            open_ += retrying
        return dead, dups, open_
    finally:
        await client.aclose()


async def _settled(rig: Rig, run: Run, expected: dict[str, list[tuple[str, str]]],
                   timeout: float) -> float:
    """Wait until the log holds every expected beacon and the queue is empty."""
    began = time.monotonic()
    want = Counter((sid, ad, e) for sid, evs in expected.items() for ad, e in evs)
    while True:
        got = Counter((sid, h.ad_id, h.event)
                      for sid, hs in _hits_by_session(rig.ad_app, run.started_hits).items()
                      for h in hs)
        _dead, _dups, open_ = await _redis_streams(rig)
        if not want - got and open_ == 0:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            return time.monotonic() - began
        await asyncio.sleep(0.5)


def _check_order(expected: dict[str, list[tuple[str, str]]],
                 hits: dict[str, list[Any]]) -> list[tuple[str, str, list[str], list[str]]]:
    """Per view (session, ad, and which of its plays: the k-th arrival of an event
    belongs to the k-th view of that ad), its events arrive in firing order: the
    order the tracker promises, each beacon of a view naming its predecessor.
    Views of the same ad in different breaks are separate chains, delivered
    concurrently: under the accelerated clock a later break's impression can
    overtake an earlier view's complete (seen once in a full run), which the
    check before, over the whole session, counted as disorder."""
    wrong = []
    for sid, events in expected.items():
        for ad in {a for a, _e in events}:
            want = [e for a, e in events if a == ad]
            got = [h.event for h in hits.get(sid, []) if h.ad_id == ad]
            if _views(got) != _views(want):
                wrong.append((sid, ad, want, got))
    return wrong


def _views(events: list[str]) -> list[list[str]]:
    """Events split into views: the k-th occurrence of an event goes to view k."""
    seen: Counter[str] = Counter()
    views: list[list[str]] = []
    for event in events:
        k = seen[event]
        seen[event] += 1
        while len(views) <= k:
            views.append([])
        views[k].append(event)
    return views


async def _describe_missing(rig: Rig, run: Run, missing: dict[str, Counter[tuple[str, str]]],
                            settle: float, events: list[tuple[float, str]]) -> str:
    """A failed "nothing missing", grouped where it can be acted on: by cohort, ad
    and events, with what the queue still holds (delayed retries are not "open")."""
    from redis.asyncio import Redis

    cohort = {v.session_id: v.cohort for v in run.viewers}
    groups = Counter((cohort.get(sid, "?"), tuple(sorted(c.elements())))
                     for sid, c in missing.items())
    client = Redis.from_url(rig.redis.url)
    try:
        retrying = {n: int(await client.zcard(f"ss:beacons:{{{n}}}:retry")) for n in range(8)}
    finally:
        await client.aclose()
    return (f"{len(missing)} sessions missing beacons after {settle:.0f} s of settling; "
            f"by (cohort, events): {groups.most_common(6)}; delayed retries per shard "
            f"{retrying}; queue {rig.open_detail}; faults {events}\n"
            + "\n".join(line for line in rig.logs().splitlines()
                         if "deferred" not in line)[-6000:])


def _durations(media: Any) -> dict[str, Fraction]:
    return {a.id: Fraction(a.duration) for a in media.ads}


# ------------------------------------------------------------------ 1: clean
async def test_1000_sessions_3_breaks_fire_exactly_the_expected_beacons(
        rig: Rig, media: Any) -> None:
    run = await _run(rig)
    print(f"\nclean run: {run.steps} steps in {run.seconds:.1f} s")
    expected, _extra = _expected(rig, run, _durations(media))
    settle = await _settled(rig, run, expected, timeout=120)
    hits = _hits_by_session(rig.ad_app, run.started_hits)

    assert len(run.breaks) == 3, run.breaks
    assert {a for evs in expected.values() for a, _e in evs} == {"ad-a", "ad-b"}
    # Exactly the expected set: each event once per session per ad, nothing missing,
    # nothing extra, and in firing order per ad (the first arrival of each).
    got = {sid: Counter((h.ad_id, h.event) for h in hits.get(sid, [])) for sid in expected}
    mismatched = {sid: (Counter(expected[sid]) - got[sid], got[sid] - Counter(expected[sid]))
                  for sid in expected if got[sid] != Counter(expected[sid])}
    assert not mismatched, (len(mismatched), list(mismatched.items())[:3], rig.logs())
    assert _check_order(expected, hits) == []
    # The control group polled through the same breaks and fired nothing; every hit
    # of the run belongs to a viewer.
    for v in run.control:
        assert not v.fetched and v.session_id not in hits
    assert set(hits) <= set(expected), set(hits) - set(expected)
    total = sum(len(evs) for evs in expected.values())
    assert sum(len(h) for h in hits.values()) == total
    dead, dups, open_ = await _redis_streams(rig)
    assert dead == [] and dups == [] and open_ == 0
    assert {h.status for h in adserver_hits(rig.ad_app)[run.started_hits:]} == {204}
    print(f"\nclean run: {SESSIONS} sessions + {CONTROL} control, {total} beacons in "
          f"{run.steps} steps, {run.seconds:.1f} s (+{settle:.1f} s to settle), viewer retries {dict(rig.retries)}, "
          f"max viewer backlog {rig.backlog} segments")


# ------------------------------------------------------------------ 2: faults
@dataclass
class FaultLog:
    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))  # the hit log's clock


async def test_faults_lose_nothing_and_every_duplicate_is_reported(
        rig: Rig, media: Any) -> None:
    log = FaultLog()
    endpoint = faults(rig.ad_app)
    # A third-party tracker that never recovers, in the first break's VASTs of one
    # cohort (the extra Tracking is read when the ad server answers).
    # (on whichever ad the ad server's rotation puts first for that cohort).
    for ad in ("ad-a", "ad-b"):
        endpoint.extra_tracking.append(
            (ad, "midpoint", f"{rig.broken_base}/beacon/{ad}/midpoint", "geo=us"))
    rig.retries.clear()
    asked_before = len(vast_requests(rig.ad_app))  # the module's earlier runs asked too

    jobs: list[asyncio.Task[None]] = []

    async def restart_stitcher() -> None:
        victim = rig.stitchers[0]
        victim.alive = False
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()
        log.note("stitcher 0 killed")
        await asyncio.sleep(1.0)
        restarted = await respawn(victim, rig.tmp)
        await until_up(rig.http, restarted, "/readyz")
        rig.stitchers[0] = restarted
        log.note("stitcher 0 back")

    async def restart_consumer() -> None:
        await asyncio.sleep(0.5)  # sends in flight to the hanging endpoint
        rig.sender.proc.send_signal(signal.SIGKILL)
        await rig.sender.proc.wait()
        log.note("consumer killed")
        await asyncio.sleep(1.0)
        rig.sender = await respawn(rig.sender, rig.tmp, name="beacons")
        await until_up(rig.http, rig.sender, "/healthz")
        log.note("consumer back")

    async def restart_redis() -> None:
        rig.redis.kill()
        log.note("redis killed")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(rig.redis.restart)
        log.note("redis back")

    async def on_step(rig: Rig, step: int, breaks: list[Any]) -> None:
        """The fault schedule, by the origin's live edge: each fault mid-break."""
        first, second, third = breaks
        edge = _edge(rig.origin)
        # Only the first break's decision for us carries it: cleared once the ad server
        # has answered us's first decision (the first break's: no break is signalled
        # ahead). Cleared by the live edge instead, a decision a loaded machine asked
        # for late came after the clearing, and the us cohort owed nothing.
        if endpoint.extra_tracking and any(
                parse_qs(r.query_string).get("geo") == ["us"]
                and parse_qs(r.query_string).get("break") != ["prefetch"]
                for r in vast_requests(rig.ad_app)[asked_before:]):  # (this run's)
            endpoint.extra_tracking.clear()
        # Break 1: the endpoint fails (503), then hangs past the send timeout; a
        # stitcher is SIGKILLed and comes back on its port.
        if edge == first.start_msn + 2:
            endpoint.beacon_status = 503
            log.note("endpoint 503")
            jobs.append(asyncio.ensure_future(restart_stitcher()))
        if edge == first.start_msn + 4:
            endpoint.beacon_status, endpoint.beacon_hang = None, HANG
            log.note("endpoint hangs")
        if edge == first.start_msn + 6:
            endpoint.beacon_hang = 0.0
            log.note("endpoint recovered")
        # Break 2, the endpoint hanging again: the dedicated consumer is killed with
        # sends in flight (hits logged, outcomes never recorded).
        if edge == second.start_msn + 3:
            endpoint.beacon_hang = HANG
            log.note("endpoint hangs")
            jobs.append(asyncio.ensure_future(restart_consumer()))
        if edge == second.start_msn + 6:
            endpoint.beacon_hang = 0.0
            log.note("endpoint recovered")
        # Break 3: redis-server SIGKILLed and restarted from its append-only file.
        if edge == third.start_msn + 3:
            jobs.append(asyncio.ensure_future(restart_redis()))

    run = await _run(rig, on_step)
    await asyncio.gather(*jobs)
    durations = _durations(media)
    expected, extra = _expected(rig, run, durations, whole=False)
    settle = await _settled(rig, run, expected, timeout=120)
    hits = _hits_by_session(rig.ad_app, run.started_hits)
    dead, dups, open_ = await _redis_streams(rig)

    assert {"stitcher 0 back", "consumer back", "redis back", "endpoint recovered"} <= {
        w for _t, w in log.events}, log.events
    assert open_ == 0, ("the queue settled", rig.open_detail, log.events)
    # Nothing missing: every expected beacon reached the endpoint at least once.
    got = {sid: Counter((h.ad_id, h.event) for h in hits.get(sid, [])) for sid in expected}
    missing = {sid: Counter(expected[sid]) - got[sid] for sid in expected
               if Counter(expected[sid]) - got[sid]}
    assert not missing, await _describe_missing(rig, run, missing, settle, log.events)
    # Every duplicate in the log is one the stitcher reported as a possible duplicate
    # (the same URL: macros are expanded once, so a resend is byte-identical).
    reported = Counter(urlsplit(d["url"]).path + "?" + urlsplit(d["url"]).query for d in dups)
    seen = Counter(f"{h.path}?{h.query_string}" for hs in hits.values() for h in hs)
    unexplained = {u: n - 1 - reported[u] for u, n in seen.items() if n - 1 > reported[u]}
    faults_at = [(round(t - log.events[0][0], 1), w) for t, w in log.events]
    when = {u: [round(h.time - log.events[0][0], 1) for hs in hits.values() for h in hs
                if f"{h.path}?{h.query_string}" == u] for u in list(unexplained)[:5]}
    assert not unexplained, (len(unexplained), when, faults_at, len(dups))
    for v in run.control:
        assert v.session_id not in hits
    # Dead letters: exactly the never-recovering tracker's beacons, with the reason.
    owed = Counter(f"{p}:{sid}" for sid, urls in extra.items() for p in urls)
    assert owed, "the first break's us cohort was owed the tracker's midpoints"
    dead_urls = Counter(f"{urlsplit(d['url']).path}:midpoint:"
                        f"{parse_qs(urlsplit(d['url']).query)['session'][0]}" for d in dead)
    assert dead_urls == owed, (dead_urls - owed, owed - dead_urls)
    assert {d["reason"] for d in dead} == {f"gave up after {MAX_ATTEMPTS} attempts: HTTP 503"}
    # It heard each one MAX_ATTEMPTS times, plus an attempt repeated wherever its
    # outcome went unrecorded (a consumer killed, Redis down): each such resend is
    # one the stitcher reported as a possible duplicate.
    broken = Counter(f"{h.path}?{h.query_string}" for h in adserver_hits(rig.broken_app))
    assert len(broken) == len(dead)
    odd = {u: (n, reported[u]) for u, n in broken.items()
           if not MAX_ATTEMPTS <= n <= MAX_ATTEMPTS + reported[u]}
    assert not odd, list(odd.items())[:5]
    duplicates = sum(n - 1 for n in seen.values())
    print(f"\nfault run: {run.seconds:.1f} s (+{settle:.1f} s to settle); faults "
          f"{[w for _t, w in log.events]}; viewer retries {dict(rig.retries)}; "
          f"{duplicates} duplicates in the log, {len(dups)} reported possible, "
          f"{len(dead)} dead letters; {rig.partial} ad views seen in part")
