"""The drill's upstreams and stitchers: start them, degrade them, stop them (the IO edge).

The fixture origin and the fixture ad server run in the drill's process, on an
event loop of their own in a thread (:class:`FixtureLoop`): 2,000 viewers keep
the drill's main loop busy, and an origin queued behind them answered the
stitcher late enough to look down. Their fault hooks and raw logs are read
in-process (``OriginState.set_faults``, ``fixtures.adserver.faults``, their
request and hit logs: plain attribute writes and list copies, safe across the
two threads). ``redis-server`` and
the stitcher processes are child processes: Redis can be SIGKILLed or stopped
and brought back on the same port with its append-only file, as the README asks
production to run it; each stitcher is ``python -m stitcher.drill.serve`` on
the drill's :class:`~fixtures.clock.ScaledClock`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from fixtures.adserver import AdServerConfig, FixtureAd
from fixtures.adserver import create_app as create_adserver
from fixtures.adserver import faults as adserver_faults
from fixtures.clock import ScaledClock
from fixtures.origin import (
    ORIGIN_STATE,
    FaultRule,
    OriginConfig,
    OriginState,
    run_origin,
    synthetic_renditions,
)
from stitcher.drill.schedule import Phase, Schedule

log = logging.getLogger("stitcher.drill")
T = TypeVar("T")

CHANNEL = "drill"
ATTRIBUTE = "geo"
#: Origin window: a minute of content, as a live packager's sliding window.
WINDOW_SECONDS = 60
#: The drill's content ladder. No player decodes drill content (viewers HEAD a
#: sample of it), so the origin serves synthetic segments and the channel gets
#: this ladder instead of probing it; only the ads and the slate are real media.
LADDER = (("360p", 800_000, (640, 360)), ("720p", 2_500_000, (1280, 720)))
#: A hanging origin / a stopped Redis: longer than any timeout the stitcher has.
_DOWN = 3600.0


class RigError(Exception):
    """The drill could not set up what it degrades (a missing binary, a stitcher
    that never became ready): exit status 2, not a drill result."""


def free_port() -> int:
    """A free TCP port on loopback (the tests' servers take theirs here too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ping(port: int) -> bool:
    """A redis-server on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class FixtureLoop:
    """An event loop in a daemon thread for the fixtures; :meth:`run` awaits a
    coroutine on it from the drill's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="drill-fixtures",
                                        daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class RedisProcess:
    """``redis-server`` with append-only persistence on a fixed port, restartable."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RigError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not await asyncio.to_thread(redis_ping, self.port):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RigError(f"redis-server did not start on port {self.port}")
            await asyncio.sleep(0.05)  # a child process starting to listen

    async def down(self, how: str) -> None:
        """``kill``: SIGKILL (what a crash does); ``stop``: SIGTERM (a clean stop)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        await self.proc.wait()

    async def close(self) -> None:
        await self.down("kill")


@dataclass
class StitcherProcess:
    index: int
    port: int
    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Rig:
    """Everything the drill runs against. ``stitcher_bases``: where viewers go."""

    schedule: Schedule
    clock: ScaledClock
    origin: OriginState
    ad_app: web.Application
    ads: list[FixtureAd]
    origin_base: str
    ad_base: str
    stitcher_bases: list[str]
    channel: str = CHANNEL
    redis: RedisProcess | None = None
    stitchers: list[StitcherProcess] = field(default_factory=list)
    workdir: Path | None = None
    #: Drill time zero on the origin's clock (epoch seconds).
    epoch: float = 0.0
    _runners: list[web.AppRunner] = field(default_factory=list)
    _own_workdir: bool = False
    fixtures: FixtureLoop | None = None

    def drill_time(self) -> float:
        return self.clock.now() - self.epoch

    def segment(self) -> float:
        return float(self.origin.d)

    def channel_config(self, slate: str | None) -> dict[str, Any]:
        speed = self.schedule.speed
        return {
            "ladder": [{"name": f"v{i}", "width": w, "height": h, "bandwidth": bw}
                       for i, (_rid, bw, (w, h)) in enumerate(LADDER)],
            "id": self.channel,
            "origin_url": f"{self.origin_base}/live/{self.channel}/master.m3u8",
            "ad_server_url": (f"{self.ad_base}/vast?duration={{duration}}&cb=[CACHEBUSTING]"
                              f"&break={{break_id}}&{ATTRIBUTE}={{cohort.{ATTRIBUTE}}}"),
            # The fixture ad server on loopback, by name: any other private host refused.
            "private_ad_hosts": [urlsplit(self.ad_base).netloc], "slate": slate,
            "decision_budget": 2.0 / speed,
            "cohorts": [{"attribute": ATTRIBUTE, "values": list(self.schedule.cohorts),
                         "default": self.schedule.cohorts[0]}],
        }

    # ------------------------------------------------------------- faults
    async def apply(self, phase: Phase, offset: float, previous: Phase | None) -> None:
        """Make the upstreams behave as ``phase`` says, ``offset`` s into it (called
        a few times a second; idempotent)."""
        rules: list[FaultRule] = []
        o = phase.origin
        if o is not None:
            kinds = frozenset({"multivariant", "media"})
            delay = o.latency.at(offset / phase.duration) if o.latency is not None else 0.0
            on = o.active_status(offset)
            if o.down and on:
                delay += _DOWN
            if delay > 0:
                rules.append(FaultRule(kinds=kinds, clock_delay=delay))
            if on and (o.status is not None or o.body is not None):
                rules.append(FaultRule(kinds=kinds, status=o.status,
                                       retry_after=o.retry_after, body=o.body))
        # One assignment (the origin's thread reads the list): never a moment without.
        self.origin.faults = rules
        switches = adserver_faults(self.ad_app)
        a = phase.adserver
        switches.hang = a.hang if a else 0.0
        switches.delay = a.delay if a else 0.0
        switches.status = a.status if a else None
        switches.empty = a.empty if a else False
        switches.invalid_xml = a.invalid_xml if a else False
        if self.redis is not None:
            if phase.redis is not None and (previous is not phase):
                await self.redis.down(phase.redis)
            elif phase.redis is None and previous is not None and previous.redis is not None:
                await self.redis.start()

    async def heal(self) -> None:
        """No fault anywhere (the drill's end); Redis back if it was down."""
        self.origin.clear_faults()
        switches = adserver_faults(self.ad_app)
        switches.hang = switches.delay = 0.0
        switches.status = None
        switches.empty = switches.invalid_xml = False
        if self.redis is not None and (self.redis.proc is None
                                       or self.redis.proc.returncode is not None):
            await self.redis.start()

    # ------------------------------------------------------------- shutdown
    async def close(self) -> None:
        for s in self.stitchers:
            if s.proc.returncode is None:
                s.proc.send_signal(signal.SIGTERM)
        for s in self.stitchers:
            try:
                await asyncio.wait_for(s.proc.wait(), 30)
            except TimeoutError:
                s.proc.kill()
                await s.proc.wait()
        if self.redis is not None:
            await self.redis.close()
        if self.fixtures is not None:
            for r in reversed(self._runners):
                await self.fixtures.run(r.cleanup())
            self.fixtures.close()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def _spawn_stitcher(index: int, config: dict[str, Any], clock: ScaledClock,
                          workdir: Path) -> StitcherProcess:
    config_path = workdir / f"stitcher{index}.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    log_path = workdir / f"stitcher{index}.log"
    root = Path(__file__).resolve().parents[2]
    with log_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stitcher.drill.serve", "--config", str(config_path),
            "--clock", *(repr(x) for x in clock.reference), cwd=root,
            stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return StitcherProcess(index, int(config["port"]), proc, log_path)


async def _wait_ready(s: StitcherProcess, timeout: float) -> None:
    assert s.proc.stdout is not None
    try:
        line = await asyncio.wait_for(s.proc.stdout.readline(), timeout)
    except TimeoutError:
        raise RigError(f"stitcher {s.index} not ready after {timeout:.0f} s:\n"
                       f"{s.log_tail()}") from None
    if not line.startswith(b"READY"):
        raise RigError(f"stitcher {s.index} exited before it was ready:\n{s.log_tail()}")


async def start_rig(schedule: Schedule, *, media: Any, data_dir: Path,
                    stitchers: int = 1, target: str | None = None, channel: str = CHANNEL,
                    origin_port: int = 0, adserver_port: int = 0,
                    workdir: Path | None = None, ready_timeout: float = 600.0,
                    lead: float = 4.0) -> Rig:
    """Origin + ad server in this loop, then Redis and ``stitchers`` stitcher processes
    (none with ``target``: the stitcher at that base URL is used as it is, its
    channel ``channel`` pointing at the fixture ports given). Drill time zero is
    ``lead`` seconds after the stitchers are ready (sessions start before it)."""
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="stitcher-drill-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    clock = ScaledClock(schedule.speed)
    d = Fraction(str(schedule.segment))
    window = max(3, int(WINDOW_SECONDS // d))
    renditions = synthetic_renditions(LADDER, count=max(window, 60), segment_duration=d)
    # The origin "started" one window ago, so the window is full from the first fetch;
    # breaks are placed on drill time once the rig is up (below).
    start_epoch = (Fraction(clock.now()) // d) * d - window * d
    origin_cfg = OriginConfig(renditions=renditions, channel=channel, start_epoch=start_epoch,
                              window_segments=window, break_interval=None)
    runners: list[web.AppRunner] = []
    fixtures = FixtureLoop()
    ads = [FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                     title=f"Fixture {a.id}") for a in media.ads]

    async def serve_fixtures() -> tuple[web.AppRunner, int, web.AppRunner, int]:
        origin_runner, origin_bound = await run_origin(origin_cfg, clock, host="127.0.0.1",
                                                       port=origin_port)
        ad_runner = web.AppRunner(create_adserver(AdServerConfig(
            ads=ads, creatives_dir=media.ads[0].path.parent)), access_log=None)
        await ad_runner.setup()
        await web.TCPSite(ad_runner, "127.0.0.1", adserver_port).start()
        return origin_runner, origin_bound, ad_runner, ad_runner.addresses[0][1]

    try:
        origin_runner, origin_bound, ad_runner, ad_bound = await fixtures.run(serve_fixtures())
    except BaseException:
        fixtures.close()
        raise
    runners += [origin_runner, ad_runner]
    rig = Rig(schedule, clock, origin_runner.app[ORIGIN_STATE], ad_runner.app, ads,
              f"http://127.0.0.1:{origin_bound}", f"http://127.0.0.1:{ad_bound}", [],
              channel=channel, workdir=work, _runners=runners, _own_workdir=own,
              fixtures=fixtures)
    try:
        if target is not None:
            rig.stitcher_bases = [target.rstrip("/")]
        else:
            rig.redis = RedisProcess(work / "redis")
            await rig.redis.start()
            speed = schedule.speed
            base_config: dict[str, Any] = {
                "host": "127.0.0.1", "data_dir": str(data_dir), "redis_url": rig.redis.url,
                "session_keys": {"drill": secrets.token_urlsafe(24)},
                "origin_timeout": 3.0 / speed, "ad_timeout": 2.0 / speed,
                "shutdown_timeout": 5.0,
                "channels": [rig.channel_config(str(media.slate))],
            }
            for i in range(stitchers):
                rig.stitchers.append(await _spawn_stitcher(
                    i, {**base_config, "port": free_port()}, clock, work))
            await asyncio.gather(*(_wait_ready(s, ready_timeout) for s in rig.stitchers))
            rig.stitcher_bases = [s.base for s in rig.stitchers]
        # Drill time zero on a segment boundary: a break planned at a multiple of the
        # segment duration starts exactly then.
        step = float(rig.origin.d)
        rig.epoch = -(-(clock.now() + lead) // step) * step
        _schedule_breaks(rig)
    except BaseException:
        await rig.close()
        raise
    return rig


def _schedule_breaks(rig: Rig) -> None:
    """The schedule's breaks on the origin, at drill times (a break starts at the
    first segment boundary at or after its time)."""
    state = rig.origin
    for j, t in enumerate(rig.schedule.break_starts()):
        epoch = Fraction(rig.epoch + t)
        k = -(-(epoch - state.start) // state.d)  # ceil
        state.insert_break(state.msn(int(k)), Fraction(str(rig.schedule.breaks.duration)),
                           event_id=2000 + j)

