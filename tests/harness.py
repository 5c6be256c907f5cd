"""A reusable in-process stack: fixture origin + fixture VAST ad server + stitcher.

Everything runs in the test's event loop on free loopback ports, wired the way
``stitcher demo`` wires it (``stitcher/cli.py``), with a clock of the test's
choosing::

    async with start_stack(clock=ManualClock(), media=None) as stack:
        session = await stack.start_session()
        status, headers, body = await stack.get(session.media_url("v0"))

Handles on :class:`Stack`:

* ``stack.origin``: the origin's :class:`~fixtures.origin.OriginState` (clock,
  breaks, faults, request log); ``stack.origin_base``: its base URL.
* ``stack.adserver``: the ad server app (``fixtures.adserver.hits(...)`` /
  ``faults(...)``); ``stack.beacon_hits(session_id=...)``.
* ``stack.app`` / ``stack.runtime``: the stitcher app and the channel's
  :class:`~stitcher.channel.ChannelRuntime`; ``stack.base``: its base URL.
* ``stack.requests``: every request the stitcher received, stamped with
  ``time.time()`` on arrival (before the handler runs), so tests can order the
  ad server's raw beacon hits against the segment requests that caused them.
* ``stack.metrics_text()`` / ``stack.metric(name, **labels)``: ``/metrics``.

Media: ``media=None`` serves synthetic segments (null TS packets: fast, but
nothing can be probed or conditioned, so breaks stay content); pass
``fixtures.media.ensure_media()`` for real media (ads conditioned, slate, ffmpeg
players). ``assets_dir`` is where conditioned creatives go; tests may share it
between stacks (the slate's key is stable across runs).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from fixtures.adserver import AdServerConfig, BeaconHit, FixtureAd, VastRequest
from fixtures.adserver import create_app as create_adserver
from fixtures.adserver import hits as adserver_hits
from fixtures.adserver import vast_requests as adserver_vast_requests
from fixtures.clock import Clock, SystemClock
from fixtures.origin import (
    ORIGIN_STATE,
    OriginConfig,
    OriginState,
    renditions_from_media,
    run_origin,
    subtitles_for,
    synthetic_renditions,
)
from fixtures.origin import demuxed_audio as demuxed_audio_of
from manifests.checker import Snapshot
from manifests.playlist import Segment, parse_media
from stitcher.app import CHANNELS, SIGNER, create_app
from stitcher.channel import ChannelRuntime
from stitcher.config import ChannelConfig, StitcherConfig
from stitcher.drill.rig import free_port
from stitcher.store import MemoryStore

CHANNEL = "live1"


@dataclass(frozen=True)
class StitcherRequest:
    """One request the stitcher received (``time`` is ``time.time()`` at arrival)."""

    time: float
    method: str
    path: str
    query: str
    user_agent: str
    status: int | None = None


@dataclass(frozen=True)
class SessionHandle:
    """A session started with ``POST /v1/session/{channel}``."""

    manifest_url: str      # absolute URL of the session's multivariant playlist
    tracking_url: str
    token: str
    session_id: str
    cohort: str
    base: str              # absolute URL of ``/v1/session/{token}/{channel}``

    def media_url(self, rendition: str) -> str:
        return f"{self.base}/media/{rendition}.m3u8"


@dataclass
class Stack:
    clock: Clock
    media: Any
    channel: str
    origin_runner: web.AppRunner
    origin_base: str
    ad_runner: web.AppRunner
    ad_base: str
    stitcher_runner: web.AppRunner
    base: str
    http: aiohttp.ClientSession
    requests: list[StitcherRequest] = field(default_factory=list)
    #: Every stitcher instance (``instances=N``); the first is ``stitcher_runner``.
    stitcher_runners: list[web.AppRunner] = field(default_factory=list)
    #: Their base URLs, in the same order (``bases[0] == base``).
    bases: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- handles
    @property
    def origin(self) -> OriginState:
        return self.origin_runner.app[ORIGIN_STATE]

    @property
    def adserver(self) -> web.Application:
        return self.ad_runner.app

    @property
    def app(self) -> web.Application:
        return self.stitcher_runner.app

    @property
    def runtime(self) -> ChannelRuntime:
        runtime: ChannelRuntime = self.app[CHANNELS][self.channel]
        return runtime

    def runtime_of(self, instance: int) -> ChannelRuntime:
        runtime: ChannelRuntime = self.stitcher_runners[instance].app[CHANNELS][self.channel]
        return runtime

    def vast_requests(self) -> list[VastRequest]:
        """The ad server's raw log of VAST requests (decisions and warm-up prefetches)."""
        return adserver_vast_requests(self.adserver)

    @property
    def origin_master_url(self) -> str:
        return f"{self.origin_base}/live/{self.channel}/master.m3u8"

    async def stitcher_renditions(self) -> list[str]:
        """The stitcher's rendition ids (``v0``, ``v1`` ...), in multivariant order."""
        return [r.id for r in (await self.runtime.multivariant()).renditions]

    async def origin_rendition(self, rid: str) -> str:
        """The origin's rendition id behind the stitcher's rendition ``rid``."""
        rendition = (await self.runtime.multivariant()).rendition(rid)
        assert rendition is not None, rid
        return rendition.uri.rsplit("/", 1)[-1].removesuffix(".m3u8")

    # ---------------------------------------------------------------- actions
    async def ready(self) -> None:
        """Wait until the channel has probed the origin and conditioned the slate."""
        await self.runtime.prepare()

    async def start_session(self, instance: int = 0, **params: str) -> SessionHandle:
        """Start a session on one instance (its URLs point at that instance; the path
        is valid on every instance, see :meth:`on_instance`)."""
        origin = self.bases[instance] if self.bases else self.base
        async with self.http.post(f"{origin}/v1/session/{self.channel}",
                                  json={"adsParams": params}) as resp:
            assert resp.status == 200, await resp.text()
            data = await resp.json()
        manifest = data["manifestUrl"]
        parts = manifest.strip("/").split("/")  # v1 session <token> <channel> master.m3u8
        token = parts[2]
        session = self.app[SIGNER].decode(token, self.channel, time.time())
        base = f"{origin}/v1/session/{token}/{self.channel}"
        return SessionHandle(f"{origin}{manifest}", f"{origin}{data['trackingUrl']}",
                             token, session.session_id, data["cohort"], base)

    def on_instance(self, url: str, instance: int) -> str:
        """``url`` (on any instance) re-pointed at another instance."""
        for b in self.bases:
            if url.startswith(b):
                return self.bases[instance] + url[len(b):]
        raise ValueError(f"{url} is on no instance of this stack")

    async def get(self, url: str, **kw: Any) -> tuple[int, Mapping[str, str], bytes]:
        """GET ``url`` (absolute, or a path on the stitcher); no redirects followed."""
        if url.startswith("/"):
            url = self.base + url
        kw.setdefault("allow_redirects", False)
        async with self.http.get(url, **kw) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def metrics_text(self) -> str:
        status, _, body = await self.get("/metrics")
        assert status == 200
        return body.decode()

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name`` samples whose labels include ``labels`` (0 when absent)."""
        total = 0.0
        for family in text_string_to_metric_families(await self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def beacon_hits(self, session_id: str | None = None) -> list[BeaconHit]:
        """The ad server's raw hit log (optionally only hits whose ``session=`` matches)."""
        found = adserver_hits(self.adserver)
        if session_id is None:
            return found
        return [h for h in found if h.query.get("session") == [session_id]]

    def requests_of(self, token: str, pattern: str = "") -> list[StitcherRequest]:
        """Stitcher requests under one session's path (containing ``pattern``)."""
        prefix = f"/v1/session/{token}/"
        return [r for r in self.requests if r.path.startswith(prefix) and pattern in r.path]


def _recorder(log: list[StitcherRequest]) -> Callable[..., Any]:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        arrived = time.time()
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            log.append(StitcherRequest(arrived, request.method, request.path,
                                       request.query_string,
                                       request.headers.get("User-Agent", ""), status))

    return record


def default_start_epoch(clock: Clock, segment_duration: Fraction, window: int) -> Fraction:
    """A start one full window ago, on a segment boundary: the window is full at once."""
    now = Fraction(clock.now())
    return math.floor(now / segment_duration) * segment_duration - window * segment_duration


@asynccontextmanager
async def start_stack(
    *,
    clock: Clock | None = None,
    media: Any = None,
    channel: str = CHANNEL,
    origin: Mapping[str, Any] | None = None,
    channel_config: Mapping[str, Any] | None = None,
    stitcher_config: Mapping[str, Any] | None = None,
    ads: list[FixtureAd] | None = None,
    ad_query: str = "",
    adserver: Mapping[str, Any] | None = None,
    data_dir: Path,
    assets_dir: Path | None = None,
    warm_up: bool = False,
    instances: int = 1,
    subtitles: bool = False,
    subtitle_fault: str | None = None,
    demuxed_audio: bool = False,
    ad_host: str | None = None,
) -> AsyncIterator[Stack]:
    """Start origin, ad server and stitcher; stop all three on exit.

    ``origin``: :class:`~fixtures.origin.OriginConfig` overrides (``start_epoch``
    defaults to one full window before now, breaks default to none). ``channel_config``
    / ``stitcher_config``: overrides of the stitcher's config. ``ad_query`` is appended
    to the VAST URL (e.g. ``fault_invalid=1``); ``adserver``: its
    :class:`~fixtures.adserver.AdServerConfig` overrides (e.g. ``rotate``).
    ``data_dir`` holds the stitcher's state (ledgers, decisions); ``assets_dir``
    its conditioned creatives (default: under ``data_dir``). ``warm_up`` conditions the slate and the ads before returning.

    ``subtitles``: the origin also serves its WebVTT rendition (``subs``, cues naming
    their PDT; see :mod:`fixtures.origin`). ``subtitle_fault``: its packager's
    X-TIMESTAMP-MAP fault (``SubtitleSpec.map_fault``: ``missing``, ``stale``).

    ``demuxed_audio``: the variants are video only and the origin serves their audio
    as a demuxed rendition (``audio``, EXT-X-MEDIA TYPE=AUDIO; needs ``media``).

    ``ad_host``: the host the channel's VAST URL names for the ad server (default
    ``127.0.0.1``; e.g. ``localhost`` or a private address, to test the address policy).

    ``instances``: how many stitcher apps to run (same config, each on its own
    port, all sharing the origin, the ad server and ``assets_dir``, as a CDN'd
    object store would be shared). With ``stitcher_config={"redis_url": ...}``
    each builds its own Redis connection from the config, as separate processes
    would; without, each has its own embedded store (instance ``i > 0`` under
    ``data_dir / f"instance{i}"``), which is what the scale-out tests prove wrong.
    """
    clock = clock or SystemClock()
    renditions = (renditions_from_media(media) if media is not None
                  else synthetic_renditions())
    o: dict[str, Any] = {"break_interval": None, "window_segments": 6}
    if demuxed_audio:
        renditions, o["audio"] = demuxed_audio_of(media)
    if subtitles:
        o["subtitles"] = subtitles_for(renditions, map_fault=subtitle_fault)
    o.update(origin or {})
    d = renditions[0].segment_duration
    o.setdefault("start_epoch", default_start_epoch(clock, d, o["window_segments"]))
    origin_cfg = OriginConfig(renditions=renditions, channel=channel, **o)
    origin_runner, origin_port = await run_origin(origin_cfg, clock, host="127.0.0.1", port=0)
    runners: list[web.AppRunner] = [origin_runner]
    http = aiohttp.ClientSession()
    try:
        if ads is None:
            ads = ([FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                              title=f"Fixture {a.id}") for a in media.ads]
                   if media is not None else [])
        creatives = media.ads[0].path.parent if media is not None else None
        ad_runner = web.AppRunner(create_adserver(AdServerConfig(
            ads=ads, creatives_dir=creatives, **{"clock": clock, **(adserver or {})})),
            access_log=None)
        await ad_runner.setup()
        runners.append(ad_runner)
        await web.TCPSite(ad_runner, "127.0.0.1", 0).start()
        ad_port = ad_runner.addresses[0][1]
        ad_base = f"http://127.0.0.1:{ad_port}"

        vast = f"http://{ad_host or '127.0.0.1'}:{ad_port}/vast?duration={{duration}}&cb=[CACHEBUSTING]"
        if ad_query:
            vast += "&" + ad_query
        ch: dict[str, Any] = {
            "id": channel, "origin_url": f"http://127.0.0.1:{origin_port}/live/{channel}/master.m3u8",
            # The fixture ad server named; every other private host allowed too unless
            # a test sets ``allow_private_ad_hosts: False`` (the address policy cases).
            "ad_server_url": vast, "allow_private_ad_hosts": True,
            "private_ad_hosts": [f"127.0.0.1:{ad_port}"],
            "slate": str(media.slate) if media is not None else None,
        }
        ch.update(channel_config or {})
        sc: dict[str, Any] = {"host": "127.0.0.1", "port": 0,
                              "data_dir": assets_dir or data_dir,
                              # Shared by every instance and restart of a test's stack.
                              "session_keys": {"k1": "harness-session-key"},
                              "channels": [ChannelConfig(**ch)]}
        sc.update(stitcher_config or {})
        config = StitcherConfig(**sc)
        requests: list[StitcherRequest] = []
        stitchers: list[web.AppRunner] = []
        for i in range(instances):
            store = None if config.redis_url else MemoryStore(
                data_dir if i == 0 else data_dir / f"instance{i}")
            app = create_app(config, store=store, clock=clock.now, sleep=clock.sleep)
            app.middlewares.insert(0, _recorder(requests))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            stitchers.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        bases = [f"http://127.0.0.1:{r.addresses[0][1]}" for r in stitchers]
        stack = Stack(clock, media, channel, origin_runner,
                      f"http://127.0.0.1:{origin_port}", ad_runner, ad_base, stitchers[0],
                      bases[0], http, requests, stitchers, bases)
        if warm_up:
            for i in range(instances):  # the first conditions; the others find it done
                await stack.runtime_of(i).warm_up()
        yield stack
    finally:
        await http.close()
        for r in reversed(runners):
            await r.cleanup()



# ------------------------------------------------------------- OS processes
# Shared by the multi-process tests (test_processes, test_tracking_e2e).

@dataclass
class Polled:
    """Every rendition of a session reloaded in turn, one clock step apart."""

    snapshots: list[Snapshot]
    #: Each rendition's stitched segments, by MSN, as first served.
    seen: dict[str, dict[int, Segment]]
    #: The origin's segments of each rendition, by the origin's MSN, as first listed.
    origin: dict[str, dict[int, Segment]]


async def poll_renditions(stack: Stack, session: SessionHandle, renditions: list[str],
                          reloads: int, clock: Any, step: float = 2) -> Polled:
    """Reload every rendition ``reloads`` times (one ``step`` of the clock apart),
    keeping the stitched and the origin playlists for the checker."""
    polled = Polled([], {rid: {} for rid in renditions}, {rid: {} for rid in renditions})
    for n in range(reloads):
        playlists, origins = {}, {}
        for rid in renditions:
            status, _, body = await stack.get(session.media_url(rid))
            assert status == 200, body
            playlists[rid] = body.decode()
            origin = stack.origin.media_playlist(await stack.origin_rendition(rid))
            assert origin is not None
            origins[rid] = origin
            for seg in parse_media(origin).segments:
                polled.origin[rid].setdefault(seg.msn, seg)
            for seg in parse_media(playlists[rid]).segments:
                polled.seen[rid].setdefault(seg.msn, seg)
        polled.snapshots.append(Snapshot(n, playlists, clock.now(), origins))
        clock.advance(step)
        await asyncio.sleep(0)
    return polled


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChildProcess:
    """One child OS process serving HTTP on ``port`` (``stitcher serve``, a scaled
    stitcher, ``stitcher beacons``), its output in ``log``."""

    index: int
    port: int
    proc: Any  # asyncio.subprocess.Process
    log: Path
    argv: tuple[str, ...] = ()
    alive: bool = True

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def spawn(index: int, argv: list[str], log_dir: Path, *, port: int | None = None,
                name: str = "stitcher") -> ChildProcess:
    """Start ``python <argv> --port P`` in the repository (output appended to
    ``log_dir/<name><index>.log``, so a restart keeps the first run's lines)."""
    import asyncio
    import os
    import sys

    port = port or free_port()
    log = log_dir / f"{name}{index}.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--port", str(port), cwd=ROOT, stdout=out, stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return ChildProcess(index, port, proc, log, tuple(argv))


async def respawn(child: ChildProcess, log_dir: Path, name: str = "stitcher") -> ChildProcess:
    """The same command on the same port (a restarted instance behind its address)."""
    return await spawn(child.index, list(child.argv), log_dir, port=child.port, name=name)


async def until_up(http: aiohttp.ClientSession, child: ChildProcess, path: str,
                   timeout: float = 60.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        assert child.proc.returncode is None, f"process {child.index} exited:\n{child.log_text()}"
        try:
            async with http.get(child.base + path) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"{child.index}: {path} not 200:\n{child.log_text()}"
        await asyncio.sleep(0.1)  # a child process starting up: nothing to block on


async def stop_children(children: list[ChildProcess], timeout: float = 15.0) -> None:
    """SIGTERM each still running, SIGKILL what has not exited after ``timeout``."""
    import asyncio
    import signal

    for c in children:
        if c.proc.returncode is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in children:
        try:
            await asyncio.wait_for(c.proc.wait(), timeout)
        except TimeoutError:
            c.proc.kill()
            await c.proc.wait()


async def warm_up_assets(config: StitcherConfig, channel: str, state: Path) -> None:
    """Probe, condition the slate and the ad server's creatives into the config's
    ``data_dir`` (ffmpeg only the first time in a test session) with an in-process
    stitcher, as a deployment warmed up before the event would have them on disk."""
    app = create_app(config, store=MemoryStore(state))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        ready = await app[CHANNELS][channel].warm_up()
        assert ready >= 1, "no creative conditioned at warm-up"
    finally:
        await runner.cleanup()


# ------------------------------------------------------------- expected beacons
#: The linear events the fixture ad server tracks, in VAST firing order, plus the
#: impression (``creativeView`` has no URL there).
FIXTURE_EVENTS = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile",
                  "complete")


def event_offsets(duration: Fraction) -> dict[str, Fraction]:
    """When each fixture event is due into an ad of ``duration`` (VAST 4.3 2.3.5.1:
    quartiles of the creative's own duration; complete at its last frame)."""
    return {"impression": Fraction(0), "start": Fraction(0),
            "firstQuartile": duration / 4, "midpoint": duration / 2,
            "thirdQuartile": 3 * duration / 4, "complete": duration - Fraction(1, 1000)}


def expected_events(duration: Fraction, nominal: Fraction, segments: set[int]) -> list[str]:
    """The events one session owes one ad, by the documented rule, written apart from
    the stitcher's code: nothing unless it requested the ad's first segment (a later
    first request is a late join); otherwise every event due before the end of the
    furthest segment it requested (skipped ones catch up), each once, in order."""
    if 0 not in segments:
        return []
    end = (max(segments) + 1) * nominal
    return [e for e, at in event_offsets(duration).items() if at < end]


def fill_pod(durations: list[Fraction], available: Fraction,
             nominal: Fraction) -> list[int]:
    """Which ads of a VAST pod (indexes, in order) a break of ``available`` seconds
    plays, by the documented fill policy: whole ads in pod order, each padded to
    whole segments, skipping one that does not fit."""
    placed, cursor = [], Fraction(0)
    for i, d in enumerate(durations):
        span = math.ceil((d - Fraction(1, 1000)) / nominal) * nominal
        if cursor + span <= available:
            placed.append(i)
            cursor += span
    return placed
