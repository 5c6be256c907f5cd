"""Three stitcher OS processes on one Redis, a SIGKILL mid-break, and Redis Cluster.

Issue 4, "What must be shown", observed from outside the stitcher:

* three ``python -m stitcher.cli serve --config ...`` processes (same config, same
  session keys, the ``redis-server`` the test session started), each on its own
  port, in front of a fixture origin and a fixture VAST ad server served by this
  test's event loop in real time (2 s segments, 10 s breaks inserted a few
  segments ahead of the live edge, so the first break comes at once);
  thousands of sessions in three cohorts started over the three processes, a
  sample of them reloading every half target duration, round-robin over the
  processes. Every reload of one (cohort, rendition) at one origin version
  (media sequence and last MSN) is byte-identical whichever process answered;
  the origin's own request log shows one media-playlist fetch per rendition per
  refresh interval across all processes; the ad server's own log shows exactly
  one decision request per (break, cohort).
* the same setup, and an independent poller following one session per cohort
  (every rendition, every half target duration, on whichever process is up,
  fed to :class:`manifests.checker.Checker`): when ad segments appear, one
  process is SIGKILLed; the poller carries on against the survivors and finds
  no violation, the same numbering for the MSNs served before the kill, the same
  creatives behind the same ad URIs, and the break (and the next one) run to
  their end.
* a 3-master Redis Cluster on loopback ports: the in-process three-instance
  agreement run of ``test_instances`` against it, and the store's coordination
  keys of the channel all in one hash slot.

The stitcher processes need the conditioned creatives and slate: the test first
warms an in-process stitcher up on the same ``data_dir`` (the session's
``assets_dir``, conditioned once per test session) against the same ad server,
so the creative keys for this ad server's URLs are on disk (``keys.json``) when
the processes start, as they would be for a deployment that warmed up before
the event. The warm-up's VAST request names the break ``prefetch`` and is not
counted as a decision.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import yaml
from aiohttp import web

from fixtures.adserver import AdServerConfig, FixtureAd, vast_requests
from fixtures.adserver import create_app as create_adserver
from fixtures.adserver import hits as adserver_hits
from fixtures.clock import ManualClock, SystemClock
from fixtures.origin import (
    ORIGIN_STATE,
    AdBreak,
    OriginConfig,
    OriginState,
    renditions_from_media,
    run_origin,
)
from manifests.checker import Checker, Snapshot, Violation, check, format_text
from manifests.playlist import MediaPlaylist, parse_media
from stitcher.config import StitcherConfig
from tests.harness import (
    ChildProcess,
    default_start_epoch,
    spawn,
    until_up,
    warm_up_assets,
)

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3
GEOS = ("us", "fr", "de")
SEGMENT = 2.0
#: A refresh interval: half the target duration.
INTERVAL = SEGMENT / 2
BREAK = 10  # seconds: five slots, ad A (10 s) fits
SESSION_KEYS = {"k1": "processes-test-key"}


# ------------------------------------------------------------------ the setup
#: One ``stitcher serve`` OS process.
Stitcher = ChildProcess


@dataclass
class Session:
    path: str      # /v1/session/<token>/<channel>: valid on every process
    cohort: str
    started_on: int

    def media(self, rid: str) -> str:
        return f"{self.path}/media/{rid}.m3u8"


@dataclass
class Rig:
    channel: str
    origin: OriginState
    ad_app: web.Application
    stitchers: list[Stitcher]
    http: aiohttp.ClientSession
    renditions: list[str] = field(default_factory=list)

    def alive(self) -> list[Stitcher]:
        return [s for s in self.stitchers if s.alive]

    def logs(self) -> str:
        return "\n".join(f"--- stitcher {s.index} (port {s.port}) ---\n{s.log_text()[-4000:]}"
                         for s in self.stitchers)

    async def start_sessions(self, count: int) -> list[Session]:
        """``count`` sessions, cohorts in turn, POSTed round-robin over the processes."""
        async def start(i: int) -> Session:
            target = self.stitchers[i % len(self.stitchers)]
            geo = GEOS[i % len(GEOS)]
            async with self.http.post(f"{target.base}/v1/session/{self.channel}",
                                      json={"adsParams": {"geo": geo}}) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.json()
            assert data["cohort"] == geo, data
            return Session(str(data["manifestUrl"]).rsplit("/", 1)[0], geo, target.index)

        return list(await asyncio.gather(*(start(i) for i in range(count))))

    def decision_requests(self) -> Counter[tuple[str, str]]:
        """VAST requests per (break, cohort), from the ad server's own log (the
        warm-up's prefetch names no real break and is left out)."""
        found: Counter[tuple[str, str]] = Counter()
        for r in vast_requests(self.ad_app):
            q = parse_qs(r.query_string)
            if q.get("break") != ["prefetch"]:
                found[(q["break"][0], q["geo"][0])] += 1
        return found


def _channel_config(channel: str, origin_base: str, ad_base: str, media: Any) -> dict[str, Any]:
    return {
        "id": channel, "origin_url": f"{origin_base}/live/{channel}/master.m3u8",
        "ad_server_url": (f"{ad_base}/vast?duration={{duration}}&cb=[CACHEBUSTING]"
                          f"&break={{break_id}}&geo={{cohort.geo}}"),
        "allow_private_ad_hosts": True, "slate": str(media.slate),
        "cohorts": [{"attribute": "geo", "values": list(GEOS), "default": "us"}],
    }


async def _spawn(index: int, config_path: Path, log_dir: Path) -> Stitcher:
    return await spawn(index, ["-m", "stitcher.cli", "serve", "--config", str(config_path)],
                       log_dir)


@asynccontextmanager
async def _rig(media: Any, assets_dir: Path, tmp_path: Path, redis_url: str,
               channel: str) -> AsyncIterator[Rig]:
    clock = SystemClock()
    origin_cfg = OriginConfig(renditions=renditions_from_media(media), channel=channel,
                              break_interval=None, window_segments=6,
                              start_epoch=default_start_epoch(clock, Fraction(2), 6))
    origin_runner, origin_port = await run_origin(origin_cfg, clock, host="127.0.0.1", port=0)
    ads = [FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                     title=f"Fixture {a.id}") for a in media.ads]
    ad_runner = web.AppRunner(create_adserver(AdServerConfig(
        ads=ads, creatives_dir=media.ads[0].path.parent, rotate=True)), access_log=None)
    await ad_runner.setup()
    stitchers: list[Stitcher] = []
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=120))
    try:
        await web.TCPSite(ad_runner, "127.0.0.1", 0).start()
        ad_base = f"http://127.0.0.1:{ad_runner.addresses[0][1]}"
        raw = {"host": "127.0.0.1", "port": 0, "redis_url": redis_url,
               "session_keys": SESSION_KEYS, "data_dir": str(assets_dir),
               "origin_timeout": 3.0, "shutdown_timeout": 5.0,
               "channels": [_channel_config(channel, f"http://127.0.0.1:{origin_port}",
                                            ad_base, media)]}
        await warm_up_assets(StitcherConfig.model_validate({**raw, "redis_url": None}), channel,
                       tmp_path / "warm-state")
        config_path = tmp_path / "stitcher.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        stitchers = list(await asyncio.gather(*(_spawn(i, config_path, tmp_path)
                                                for i in range(PROCESSES))))
        await asyncio.gather(*(until_up(http, s, "/healthz") for s in stitchers))
        rig = Rig(channel, origin_runner.app[ORIGIN_STATE], ad_runner.app, stitchers, http)
        # A player's first request (the multivariant) on every process starts the
        # channel's preparation there (ffprobe the ladder, load the slate from disk).
        first = (await rig.start_sessions(PROCESSES))
        for s, session in zip(stitchers, first, strict=True):
            async with http.get(f"{s.base}{session.path}/master.m3u8") as resp:
                assert resp.status == 200, await resp.text()
                text = await resp.text()
        rig.renditions = [line.removeprefix("media/").removesuffix(".m3u8")
                          for line in text.splitlines() if line.startswith("media/")]
        assert rig.renditions == ["v0", "v1"], text
        await asyncio.gather(*(until_up(http, s, "/readyz") for s in stitchers))
        yield rig
    finally:
        await http.close()
        for s in stitchers:
            if s.proc.returncode is None:
                s.proc.send_signal(signal.SIGTERM)
        for s in stitchers:
            try:
                await asyncio.wait_for(s.proc.wait(), 15)
            except TimeoutError:
                s.proc.kill()
                await s.proc.wait()
        await ad_runner.cleanup()
        await origin_runner.cleanup()


def _breaks_ahead(origin: OriginState, *, lead: int, gap: int, count: int) -> list[AdBreak]:
    """``count`` breaks of BREAK seconds, the first ``lead`` segments after the live
    edge, then every ``gap`` segments."""
    edge = origin.live_edge_msn()
    assert edge is not None
    return [origin.insert_break(edge + lead + j * gap, BREAK) for j in range(count)]


def _content(uri: str, channel: str) -> bool:
    return f"/live/{channel}/" in uri


def _edge(origin: OriginState) -> int:
    edge = origin.live_edge_msn()
    assert edge is not None
    return edge


async def _tick(started: float) -> None:
    """Sleep until one refresh interval after ``started`` (at once if it is past)."""
    await asyncio.sleep(max(0.0, started + INTERVAL - time.monotonic()))


# ------------------------------------------------------------ 1: agreement
SESSIONS = 2400
SAMPLE_PER_COHORT = 100


@dataclass(frozen=True)
class Reply:
    round: int
    cohort: str
    rid: str
    process: int
    body: bytes


async def test_three_processes_agree_and_coalesce(media: Any, assets_dir: Path, tmp_path: Path,
                                                  redis_url: str) -> None:
    started = time.monotonic()
    async with _rig(media, assets_dir, tmp_path, redis_url, "procs1") as rig:
        setup = time.monotonic() - started
        sessions = await rig.start_sessions(SESSIONS)
        assert Counter(s.cohort for s in sessions) == {g: SESSIONS // 3 for g in GEOS}
        assert {s.started_on for s in sessions} == set(range(PROCESSES))
        by_cohort: dict[str, list[Session]] = defaultdict(list)
        for s in sessions:
            by_cohort[s.cohort].append(s)
        # Like players, each sampled session follows one rendition.
        sample = [(s, rig.renditions[i % len(rig.renditions)])
                  for g in GEOS for i, s in enumerate(by_cohort[g][:SAMPLE_PER_COHORT])]

        breaks = _breaks_ahead(rig.origin, lead=3, gap=10, count=2)
        end_msn = breaks[-1].end_msn + 3
        rig.origin.clear_log()
        polling = time.monotonic()
        turn = itertools.count()
        replies: list[Reply] = []
        failures: list[str] = []

        async def reload(n: int, session: Session, rid: str) -> None:
            target = rig.stitchers[next(turn) % PROCESSES]
            async with rig.http.get(target.base + session.media(rid),
                                    headers={"Accept-Encoding": "identity"}) as resp:
                body = await resp.read()
                if resp.status != 200 or "X-Stitcher-Stale" in resp.headers:
                    failures.append(f"round {n} {target.index}: {resp.status} "
                                    f"{dict(resp.headers)} {body[:200]!r}")
                    return
            replies.append(Reply(n, session.cohort, rid, target.index, body))

        rounds = 0
        while _edge(rig.origin) < end_msn:
            tick = time.monotonic()
            await asyncio.gather(*(reload(rounds, s, rid) for s, rid in sample))
            rounds += 1
            await _tick(tick)
        polled = time.monotonic() - polling
        fetches = {r: sorted(x.time for x in rig.origin.requests("media", r))
                   for r in rig.origin.renditions}
        decisions = rig.decision_requests()
        logs = rig.logs()

    assert failures == [], failures[:5]
    # Byte-identical: one body per (cohort, rendition, media sequence, last MSN),
    # whichever process answered, and many such groups answered by several processes.
    groups: dict[tuple[str, str, int, int], set[bytes]] = defaultdict(set)
    answered: dict[tuple[str, str, int, int], set[int]] = defaultdict(set)
    parsed: dict[bytes, MediaPlaylist] = {}
    for r in replies:
        pl = parsed.get(r.body) or parsed.setdefault(r.body, parse_media(r.body.decode()))
        key = (r.cohort, r.rid, pl.media_sequence, pl.last_msn)
        groups[key].add(r.body)
        answered[key].add(r.process)
    split = {k: len(v) for k, v in groups.items() if len(v) != 1}
    assert split == {}, (split, logs)
    assert Counter(r.process for r in replies).keys() == set(range(PROCESSES))
    assert sum(len(p) == PROCESSES for p in answered.values()) >= len(answered) // 2, answered

    # The breaks were stitched with ads in every cohort (the agreement is about something).
    ad_breaks = {(r.cohort, line.split("/")[2]) for r in replies
                 for line in r.body.decode().splitlines() if line.startswith("ad/")}
    assert {g for g, _b in ad_breaks} == set(GEOS), ad_breaks
    assert all(len({b for g2, b in ad_breaks if g2 == g}) == 2 for g in GEOS), ad_breaks

    # Every cohort's playlists keep every invariant over the run (the freshest body
    # of each rendition at each round).
    for cohort in GEOS:
        latest: dict[int, dict[str, bytes]] = defaultdict(dict)
        for r in replies:
            if r.cohort != cohort:
                continue
            have = latest[r.round].get(r.rid)
            if have is None or parsed[r.body].last_msn > parsed[have].last_msn:
                latest[r.round][r.rid] = r.body
        snaps = [Snapshot(index=n, playlists={rid: b.decode() for rid, b in pls.items()})
                 for n, pls in sorted(latest.items()) if len(pls) == len(rig.renditions)]
        faults = check(snaps)
        assert faults == [], (cohort, format_text(faults))

    # Origin: at most one media-playlist fetch per rendition per refresh interval
    # across the three processes (arrival times on the origin's own clock, which
    # can only be late by this loop's lag: hence a small slack on each gap).
    for rendition, times in fetches.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times and min(gaps) >= INTERVAL - 0.25, (rendition, sorted(gaps)[:5])
        assert len(times) <= polled / INTERVAL + 2, (rendition, len(times), polled)

    # Ad server: exactly one decision request per (break, cohort), two breaks.
    seen_breaks = {b for b, _g in decisions}
    assert len(seen_breaks) == 2, decisions
    assert decisions == Counter({(b, g): 1 for b in seen_breaks for g in GEOS}), decisions

    print(f"\nsetup {setup:.1f} s, polled {polled:.1f} s in {rounds} rounds, "
          f"{len(replies)} reloads in {len(groups)} groups; origin media fetches "
          f"{ {r: len(t) for r, t in fetches.items()} }, min gap "
          f"{min(b - a for t in fetches.values() for a, b in itertools.pairwise(t)):.3f} s")


# ------------------------------------------------------------ 2: SIGKILL mid-break
BACKGROUND = 60


@dataclass
class Served:
    """What one (session, rendition) reload showed for one MSN."""

    uri: str
    duration: Fraction
    discontinuity: bool
    process: int
    after_kill: bool


@dataclass
class Poller:
    """Follows some sessions' every rendition on whichever process is up and feeds
    the checker; independent of the stitcher and of the test's killer."""

    rig: Rig
    sessions: list[Session]
    violations: list[Violation] = field(default_factory=list)
    served: dict[tuple[str, str, int], list[Served]] = field(
        default_factory=lambda: defaultdict(list))
    errors: list[tuple[int, str]] = field(default_factory=list)
    first_ads: asyncio.Event = field(default_factory=asyncio.Event)
    ad_process: int | None = None
    ad_uris: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    killed: bool = False
    reloads: int = 0
    turn: itertools.count[int] = field(default_factory=itertools.count)
    #: Ad segment URIs of the video rendition this poller requested as a player
    #: would (path -> the processes that answered with the redirect).
    fetched: dict[str, int] = field(default_factory=dict)
    #: Set once the process that first served ads answered an ad segment request.
    ad_fetched_there: asyncio.Event = field(default_factory=asyncio.Event)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET on the next live process; a connection the kill cut is retried on
        another, as a player behind a load balancer would be."""
        for _ in range(PROCESSES):
            alive = self.rig.alive()
            target = alive[next(self.turn) % len(alive)]
            try:
                async with self.rig.http.get(target.base + path) as resp:
                    assert resp.status == 200, (resp.status, await resp.text())
                    assert "X-Stitcher-Stale" not in resp.headers, dict(resp.headers)
                    return target.index, await resp.read()
            except aiohttp.ClientError as exc:
                self.errors.append((target.index, repr(exc)))
        raise AssertionError(f"no process answered {path}: {self.errors[-3:]}")

    async def fetch_ad(self, path: str) -> None:
        """Request one ad segment, as the player does after reading the playlist
        (302 to the conditioned segment; the beacons due fire from there)."""
        for _ in range(PROCESSES):
            alive = self.rig.alive()
            target = alive[next(self.turn) % len(alive)]
            try:
                async with self.rig.http.get(target.base + path,
                                             allow_redirects=False) as resp:
                    assert resp.status == 302, (resp.status, await resp.text())
                    self.fetched[path] = target.index
                    if target.index == self.ad_process:
                        self.ad_fetched_there.set()
                    return
            except aiohttp.ClientError as exc:
                self.errors.append((target.index, repr(exc)))
        raise AssertionError(f"no process answered {path}: {self.errors[-3:]}")

    async def run(self, stop: asyncio.Event) -> None:
        checkers = {s.path: Checker() for s in self.sessions}
        n = 0
        while not stop.is_set():
            tick = time.monotonic()
            jobs = [(s, rid) for s in self.sessions for rid in self.rig.renditions]
            after_kill = self.killed
            replies = await asyncio.gather(*(self.get(s.media(rid)) for s, rid in jobs))
            texts: dict[str, dict[str, str]] = defaultdict(dict)
            for (s, rid), (process, body) in zip(jobs, replies, strict=True):
                text = body.decode()
                texts[s.path][rid] = text
                for seg in parse_media(text).segments:
                    self.served[(s.path, rid, seg.msn)].append(Served(
                        seg.uri, seg.duration, seg.discontinuity, process, after_kill))
                    if seg.uri.startswith("ad/"):
                        self.ad_uris[s.path].add(f"{s.path}/media/{seg.uri}")
                        if self.ad_process is None:
                            self.ad_process = process
                            self.first_ads.set()
            for s in self.sessions:
                self.violations += checkers[s.path].feed(
                    Snapshot(index=n, time=tick, playlists=texts[s.path]))
            video = self.rig.renditions[0]
            for s in self.sessions:  # each session plays the video rendition's ads
                for seg in parse_media(texts[s.path][video]).segments:
                    path = f"{s.path}/media/{seg.uri}"
                    if seg.uri.startswith("ad/") and path not in self.fetched:
                        await self.fetch_ad(path)
            n += 1
            self.reloads = n
            await _tick(tick)


def _no_ads_yet(rig: Rig, poller: Poller, brk: AdBreak, polling: float) -> str:
    """What a run that saw no ads saw instead: the break's slots as served, the ad
    server's log, the stitchers' logs."""
    slots = {m: sorted({(x.uri[-48:], x.process) for s in poller.sessions
                        for x in poller.served[(s.path, "v0", m)]})[:3]
             for m in range(brk.start_msn, brk.end_msn + 1)}
    vast = [(round(r.time - time.time(), 1), r.query_string[-60:], r.fault)
            for r in vast_requests(rig.ad_app)]
    return (f"no ad segment in 30 s of polling ({poller.reloads} reloads, edge "
            f"{_edge(rig.origin)}, break {brk.start_msn}..{brk.end_msn - 1}, "
            f"{time.monotonic() - polling:.1f} s); slots {slots}; VAST (s ago) {vast}; "
            f"errors {poller.errors[:3]}\n{rig.logs()}")


BEACON_EVENTS = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile",
                 "complete")


def _started_items(poller: Poller) -> dict[str, int]:
    """Per session: the (break, pod position) ads whose first segment it requested."""
    items: dict[str, set[tuple[str, str]]] = {s.path: set() for s in poller.sessions}
    for path in poller.fetched:
        session, _, rest = path.partition("/media/ad/")
        _rid, brk, item, seg = rest.split("/")[:4]
        if seg == "0.ts":
            items[session].add((brk, item))
    return {k: len(v) for k, v in items.items()}


async def _beacons_settled(rig: Rig, poller: Poller, survivors: list[Stitcher],
                           timeout: float = 45.0) -> tuple[dict[str, Counter[str]], int]:
    """The ad server's raw hits per session (by the token's path), once every
    started ad's events arrived or ``timeout`` passed (a killed consumer's pending
    entries are reclaimed by the survivors after ``beacon_claim_idle``), and the
    possible duplicates the survivors reported."""
    from stitcher.sessions import SessionSigner

    signer = SessionSigner(SESSION_KEYS)
    ids = {signer.decode(s.path.split("/")[3], rig.channel, time.time()).session_id: s.path
           for s in poller.sessions}
    started = _started_items(poller)
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Counter[str]] = defaultdict(Counter)
        for hit in adserver_hits(rig.ad_app):
            path = ids.get((hit.query.get("session") or [""])[0])
            if path is not None and hit.event in BEACON_EVENTS:
                found[path][hit.event] += 1
        done = all(found[p][e] >= started[p] for p in started for e in BEACON_EVENTS)
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    reported = 0
    for s in survivors:
        async with rig.http.get(s.base + "/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("stitcher_beacon_possible_duplicates_total"):
                    reported += int(float(line.split()[-1]))
    return found, reported


async def _locations(rig: Rig, stitcher: Stitcher, uris: set[str]) -> dict[str, str]:
    """Where each ad segment URI redirects on one process (HEAD: no beacon)."""
    async def one(uri: str) -> tuple[str, str]:
        async with rig.http.head(stitcher.base + uri, allow_redirects=False) as resp:
            assert resp.status == 302, (uri, resp.status)
            return uri, resp.headers["Location"]

    return dict(await asyncio.gather(*(one(u) for u in sorted(uris))))


async def test_sigkill_mid_break_loses_nothing(media: Any, assets_dir: Path, tmp_path: Path,
                                               redis_url: str) -> None:
    started = time.monotonic()
    async with _rig(media, assets_dir, tmp_path, redis_url, "prockill1") as rig:
        setup = time.monotonic() - started
        sessions = await rig.start_sessions(300)
        poller = Poller(rig, [next(s for s in sessions if s.cohort == g) for g in GEOS])
        background = sessions[len(GEOS):len(GEOS) + BACKGROUND]
        background_errors: list[tuple[int, bool, str]] = []
        stop = asyncio.Event()

        async def load() -> None:
            """Other viewers, one rendition each, on the processes up (errors from the
            process being killed are expected: its connections die with it)."""
            turn = itertools.count()
            while not stop.is_set():
                tick = time.monotonic()

                async def one(i: int, s: Session) -> None:
                    alive = rig.alive()
                    target = alive[next(turn) % len(alive)]
                    try:
                        async with rig.http.get(target.base + s.media(
                                rig.renditions[i % len(rig.renditions)])) as resp:
                            await resp.read()
                            if resp.status != 200:
                                background_errors.append((target.index, target.alive,
                                                          f"HTTP {resp.status}"))
                    except aiohttp.ClientError as exc:
                        background_errors.append((target.index, target.alive, repr(exc)))

                await asyncio.gather(*(one(i, s) for i, s in enumerate(background)))
                await _tick(tick)

        first, second = _breaks_ahead(rig.origin, lead=3, gap=10, count=2)
        polling = time.monotonic()
        tasks = [asyncio.ensure_future(poller.run(stop)), asyncio.ensure_future(load())]
        try:
            try:
                await asyncio.wait_for(poller.first_ads.wait(), 30)
            except TimeoutError:
                if tasks[0].done() and tasks[0].exception() is not None:
                    raise AssertionError("the poller stopped") from tasks[0].exception()
                raise AssertionError(_no_ads_yet(rig, poller, first, polling)) from None
            assert poller.ad_process is not None
            # Killed once it has taken ad segment requests (progress recorded, beacons
            # queued on it): what it had not sent yet must still arrive.
            await asyncio.wait_for(poller.ad_fetched_there.wait(), 10)
            victim = rig.stitchers[poller.ad_process]
            edge_at_kill = _edge(rig.origin)
            # Where the ads seen so far point, on the process about to die.
            before = await _locations(rig, victim, set().union(*poller.ad_uris.values()))
            victim.alive = False
            poller.killed = True
            victim.proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(victim.proc.wait(), 10) == -signal.SIGKILL
            killed_at = time.monotonic() - polling
            while _edge(rig.origin) < second.end_msn + 3:
                assert not any(t.done() for t in tasks), [t.exception() for t in tasks
                                                          if t.done()]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks:
            t.result()  # the poller and the load ran to the end without failing
        survivors = rig.alive()
        beacons, reported = await _beacons_settled(rig, poller, survivors)
        every_ad = set().union(*poller.ad_uris.values())
        after = [await _locations(rig, s, every_ad) for s in survivors]
        decisions = rig.decision_requests()
        polled = time.monotonic() - polling
        logs = rig.logs()

    if os.environ.get("DEBUG_PROCS"):
        print(logs)
        for s in poller.sessions:
            for m in range(first.start_msn - 1, first.end_msn + 1):
                print("SERVED", s.cohort, m, [(x.uri[-40:], x.process, x.after_kill)
                                               for x in poller.served[(s.path, "v0", m)]][:3])
        for r in vast_requests(rig.ad_app):
            print("VAST", r.time, r.query_string)
        print("FIRST", first, "edge at kill", edge_at_kill)
    # The kill came mid-break: after the first ad segment, before the break's end.
    assert first.start_msn <= edge_at_kill < first.end_msn - 1, (edge_at_kill, first)
    # No violation over the whole run, across the kill (stalls included).
    assert poller.violations == [], format_text(poller.violations)
    # Only the killed process ever failed a request.
    assert {i for i, _e in poller.errors} <= {victim.index}, poller.errors
    assert {(i, up) for i, up, _e in background_errors} <= {(victim.index, False)}, (
        background_errors[:5])

    # The same numbering: every MSN named one segment (URI, duration, discontinuity)
    # before and after the kill, whichever process answered; and the survivors
    # served MSNs that had been served before the kill.
    overlap = 0
    for key, seen in poller.served.items():
        assert len({(x.uri, x.duration, x.discontinuity) for x in seen}) == 1, (key, seen)
        overlap += any(x.after_kill for x in seen) and any(not x.after_kill for x in seen)
        assert all(x.process != victim.index for x in seen if x.after_kill)
    assert overlap > 20, overlap
    # The same ads: an ad URI served before the kill redirects to the same creative
    # on every survivor, and every ad URI of the run resolves alike on all of them.
    assert before and all({u: loc[u] for u in before} == before for loc in after), (before, after)
    assert all(loc == after[0] for loc in after)

    # Both breaks ran their whole length (five slots not from the origin), for every
    # cohort, with ads, then content again; both decided once per cohort.
    for s in poller.sessions:
        for rid in rig.renditions:
            for b in (first, second):
                slots = [poller.served[(s.path, rid, m)] for m in range(b.start_msn,
                                                                        b.end_msn + 2)]
                assert all(slots), (s.cohort, rid, b)
                uris = [x[0].uri for x in slots]
                assert not any(_content(u, rig.channel) for u in uris[:-2]), uris
                assert all(_content(u, rig.channel) for u in uris[-2:]), uris
                assert any(u.startswith("ad/") for u in uris), uris
    assert len(decisions) == 2 * len(GEOS) and set(decisions.values()) == {1}, decisions
    assert "Traceback" not in logs, logs

    # No beacon went missing: every ad item a session started (its segment 0 was
    # requested, on any process, the victim included) fired each event, counted
    # at the ad server; a duplicate only where a survivor reported a possible one.
    started = _started_items(poller)
    assert started and all(started.values()), started
    for s in poller.sessions:
        expected = Counter({e: started[s.path] for e in BEACON_EVENTS})
        got = beacons.get(s.path, Counter())
        missing = expected - got
        assert not missing, (s.cohort, missing, got)
    extra = sum(max(0, beacons.get(s.path, Counter())[e] - started[s.path])
                for s in poller.sessions for e in BEACON_EVENTS)
    assert extra <= reported, (extra, reported)
    assert any(p == victim.index for p in poller.fetched.values()), \
        "the victim answered none of the ad segment requests: the kill proved nothing"

    print(f"\nsetup {setup:.1f} s, polled {polled:.1f} s ({poller.reloads} poller reloads), "
          f"killed stitcher {victim.index} at {killed_at:.1f} s (edge MSN {edge_at_kill}, "
          f"break {first.start_msn}..{first.end_msn - 1}); poller retries {len(poller.errors)}, "
          f"background errors {len(background_errors)}; {overlap} MSNs served both sides")


# ------------------------------------------------------------ 3: Redis Cluster
async def test_instances_agree_on_redis_cluster(media: object, assets_dir: Path, tmp_path: Path,
                                                redis_cluster_url: str) -> None:
    """The in-process three-instance run of ``test_instances`` (same checks, over
    two breaks) with every instance on a 3-master Redis Cluster."""
    from redis.asyncio.cluster import RedisCluster

    from tests.harness import CHANNEL
    from tests.stitcher import test_instances as ti

    clock = ManualClock(start=1_840_000_000.0)
    config = {"redis_url": redis_cluster_url, "redis_cluster": True}
    async with ti._stack(media, assets_dir, tmp_path, clock, config) as stack:
        seen = await ti._run(stack)
        fetches = ti._media_fetches_per_interval(stack)
        decisions = ti._decision_requests(stack)
        bodies = [s.playlists for s in seen["snapshots"]["us"]]

        client = RedisCluster.from_url(redis_cluster_url)
        try:
            keys = [k.decode() async for k in client.scan_iter(match=f"*{CHANNEL}*",
                                                               count=1000)]
            slots = {k: client.keyslot(k) for k in keys}
            nodes = len(client.get_primaries())
        finally:
            await client.aclose()

    assert nodes == 3
    assert seen["disagreements"] == [], seen["disagreements"][:10]
    assert set(seen["answered_by"]) == set(range(ti.INSTANCES))
    assert sum("ad/" in text for pl in bodies for text in pl.values()) > 20
    for cohort, snaps in seen["snapshots"].items():
        faults = [v for v in check(snaps) if v.source == "stitcher"]
        assert faults == [], (cohort, format_text(faults))
    assert fetches and max(fetches.values()) == 1, fetches.most_common(3)
    per_rendition = Counter(r for r, _t in fetches)
    assert all(n <= ti.STEPS + 1 for n in per_rendition.values()), per_rendition
    breaks = {b for b, _g in decisions}
    assert len(breaks) >= 2, decisions
    assert decisions == Counter({(b, g): 1 for b in breaks for g in ti.GEOS}), decisions

    # The channel's coordination keys (breaks, decisions, ledgers, origin records,
    # leases, fence, streams) are all in one slot; the rendered playlists, the
    # hottest reads, are spread over slots.
    tag = "{ch:" + CHANNEL + "}"
    coordination = {k: s for k, s in slots.items() if tag in k}
    kinds = {k.split(tag + ":", 1)[1].split(":", 1)[0] for k in coordination}
    assert {"breaks", "dec", "ledger", "fence"} <= kinds, kinds
    assert len(set(coordination.values())) == 1, coordination
    renders = {s for k, s in slots.items() if k.startswith(f"ss:render:{CHANNEL}:")}
    assert len(renders) > 1, slots
