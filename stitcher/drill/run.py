"""``stitcher drill``: the big-event fire drill, end to end.

Starts the fixture origin and ad server (in this process), Redis and the
stitcher processes (or uses ``--target``), runs the viewers and the checker's
poller, walks the schedule's phases degrading the upstreams, then gathers the
independent sources (origin request log, ad server VAST and beacon logs, the
decision records in the stitcher's store) into the report: a terminal summary,
``--json`` and ``--html``. Exit status: 0 passed, 1 the drill found failures,
2 it could not run (bad schedule, missing redis-server, a stitcher that never
became ready).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs

import aiohttp

from fixtures.adserver import hits as adserver_hits
from fixtures.adserver import vast_requests
from stitcher.drill.report import BreakInfo, Raw, build_report, summary_text
from stitcher.drill.rig import ATTRIBUTE, CHANNEL, Rig, RigError, start_rig
from stitcher.drill.schedule import Phase, Schedule, ScheduleError, load_schedule, profile_names
from stitcher.drill.viewers import Poller, Population

log = logging.getLogger("stitcher.drill")

#: Sessions start spread over this many drill seconds before time zero.
RAMP = 4.0
#: After the viewers stop: beacon delivery is done once the ad server's hit log
#: has not grown for this long (real seconds) ...
SETTLE = 3.0
#: ... or at the latest after this long.
SETTLE_MAX = 120.0
#: The stitchers' beacon_shards (the config's default, which the drill keeps).
BEACON_SHARDS = 8


@dataclass
class DrillOptions:
    schedule: Schedule
    data_dir: Path
    json_out: Path | None = None
    html_out: Path | None = None
    target: str | None = None
    channel: str = CHANNEL
    stitchers: int = 1
    #: The viewers' one HTTP client: at most this many sockets (default: one per
    #: viewer, as players each keep their own; fewer makes the drill queue its own
    #: requests and measure that).
    connections: int | None = None
    origin_port: int = 0
    adserver_port: int = 0
    media_cache: str | None = None
    content_head_rate: float = 0.02
    #: Keep the stitchers' logs and Redis' files here (default: a temporary folder).
    workdir: Path | None = None
    #: With ``target``: that stitcher's Redis, where its decision records are read.
    target_redis: str | None = None


class Progress:
    """One status line on a terminal (rewritten in place), a line every 15 s otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = 0.0

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last >= 15:
            self._last = now
            self.stream.write(text + "\n")
            self.stream.flush()


def _status_line(rig: Rig, phase: Phase, pop: Population) -> str:
    recent = pop.obs.playlists[-2000:]
    errors = sum(1 for x in pop.obs.playlists if x[2] != 200)
    stale = sum(1 for x in recent if x[3])
    lat = sorted(x[1] for x in recent if x[2])
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else 0.0
    return (f"drill t={rig.drill_time():6.1f}/{rig.schedule.duration:g} s  {phase.name:<16} "
            f"viewers {pop.started}  reloads {len(pop.obs.playlists)}  errors {errors}  "
            f"stale(recent) {stale}  p99(recent) {p99:.0f} ms  ad segs "
            f"{len(pop.obs.ad_segments)}")


async def _drive(rig: Rig, pop: Population, progress: Progress) -> None:
    """Walk the phases: apply each one's faults a few times a second until the end."""
    previous: Phase | None = None
    speed = rig.schedule.speed
    while True:
        t = rig.drill_time()
        if t >= rig.schedule.duration:
            return
        phase = rig.schedule.phase_at(max(0.0, t))
        if t >= 0:
            await rig.apply(phase, t - phase.start, previous)
            previous = phase
        progress.show(_status_line(rig, phase, pop))
        await asyncio.sleep(0.25 / speed)


async def _settle_beacons(rig: Rig, http: aiohttp.ClientSession) -> int | None:
    """Until beacon delivery is over: nothing waiting in the stitchers' queue (read in
    Redis) nor deferred in a stitcher, and the ad server's hit log still for
    ``SETTLE`` s; at the latest ``SETTLE_MAX`` s (a retry's backoff can outlast a
    quiet hit log, so the log alone says too little). Returns None, or when it gave
    up, how many beacons were still waiting (the report tells late from lost)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        n = len(adserver_hits(rig.ad_app))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= SETTLE and await _beacons_waiting(rig, http) == 0:
            return None
        await asyncio.sleep(0.5)
    try:
        return await _beacons_waiting(rig, http)
    except Exception:  # noqa: BLE001 - a figure for the report, not a verdict
        return None


async def _beacons_waiting(rig: Rig, http: aiohttp.ClientSession) -> int:
    """Beacons not yet delivered: in the Redis Streams queue (undelivered, pending,
    retrying; ``stitcher/beacon_stream.py``) and deferred in each stitcher while the
    store was away (its ``stitcher_beacons_deferred_total`` counters)."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from stitcher.beacon_stream import GROUP

    waiting = 0
    for base in rig.stitcher_bases:
        counts = await _metric(http, base, "stitcher_beacons_deferred_total")
        waiting += int(counts.get("deferred", 0) - counts.get("replayed", 0)
                       - counts.get("dropped", 0))
    if rig.redis is None:
        return waiting
    client = aioredis.from_url(rig.redis.url)
    try:
        for shard in range(BEACON_SHARDS):
            stream = f"ss:beacons:{{{shard}}}"
            try:
                groups = await client.xinfo_groups(stream)
            except RedisError:
                continue  # no beacon ever went to this shard
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if name == GROUP:
                    waiting += int(g["pending"]) + int(g.get("lag") or 0)
            waiting += int(await client.zcard(f"{stream}:retry"))
    finally:
        await client.aclose()
    return waiting


async def _dead_letters(url: str | None) -> int | None:
    """Beacons the stitchers gave up on (``ss:beacons:dead``); None: no store to read."""
    import redis.asyncio as aioredis

    if url is None:
        return None
    client = aioredis.from_url(url)
    try:
        return int(await client.xlen("ss:beacons:dead"))
    finally:
        await client.aclose()


async def _metric(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, float]:
    """A counter's samples by their one label value (``name{result="x"} 3`` -> x: 3)."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            label = line.split('"', 2)[1]
            out[label] = out.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def _possible_duplicates(http: aiohttp.ClientSession, bases: list[str]) -> float:
    total = 0.0
    for base in bases:
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith("stitcher_beacon_possible_duplicates_total"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _decisions(rig: Rig, url: str | None
                     ) -> tuple[dict[str, dict[str, str]], dict[int, str]]:
    """The frozen decision records in the stitcher's store (Redis, read directly) and
    the store's break ids by start (epoch ms)."""
    import redis.asyncio as aioredis

    url = rig.redis.url if rig.redis is not None else url
    if url is None:
        return {}, {}
    client = aioredis.from_url(url)
    try:
        prefix = f"ss:{{ch:{rig.channel}}}:"
        out: dict[str, dict[str, str]] = {}
        async for key in client.scan_iter(match=f"{prefix}dec:*", count=1000):
            name = key.decode()
            brk, cohort = name[len(prefix) + 4:].rsplit(":", 1)
            raw = await client.get(key)
            if isinstance(raw, bytes):  # the drill's client does not decode
                out.setdefault(brk, {})[cohort] = raw.decode()
        breaks: dict[int, str] = {}
        raw_breaks = await client.get(f"{prefix}breaks")
        for b in json.loads(raw_breaks) if raw_breaks else []:
            start = datetime.fromisoformat(str(b["start"]))
            breaks[round(start.timestamp() * 1000)] = str(b["id"])
        return out, breaks
    finally:
        await client.aclose()


def _origin_breaks(rig: Rig, store_ids: dict[int, str]) -> tuple[list[BreakInfo], set[str]]:
    """(the breaks the origin signalled that started inside the drill soon enough for
    viewers to see them: their CUE-OUT segment published two segments before the end,
    named as the store names them (by start PDT); the store ids of every break the
    origin signalled, for telling a stray decision record from a late break's)."""
    state = rig.origin
    d = float(state.d)
    out: list[BreakInfo] = []
    known: set[str] = set()
    for b in state.breaks_between(state.msn(0), state.live_edge_msn() or 0):
        epoch = float(state.segment_epoch(b.start_msn))
        ms = round(epoch * 1000)
        if ms in store_ids:
            known.add(store_ids[ms])
        start = epoch - rig.epoch
        if not 0 <= start < rig.schedule.duration - 2 * d:
            continue
        out.append(BreakInfo(store_ids.get(ms, f"(not in the store: starts at {ms} ms)"),
                             start, float(b.planned_duration)))
    return out, known


async def run_drill(opts: DrillOptions, *, media: Any = None,
                    progress_stream: TextIO | None = None,
                    inspect: Callable[[Rig], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Run the drill and return its report (also written to ``--json`` / ``--html``).
    ``inspect`` sees the rig after the run, before it is torn down (tests read the
    fixtures' logs and the store there, to check the report against them)."""
    if media is None:
        from fixtures.media import ensure_media

        media = await asyncio.to_thread(ensure_media, opts.media_cache)
    s = opts.schedule
    progress = Progress(progress_stream or sys.stderr)
    wall0 = time.monotonic()
    progress.show(f"drill {s.name}: starting the origin, the ad server, Redis and "
                  f"{opts.stitchers if opts.target is None else 'no'} stitcher(s) "
                  f"(the first run conditions the ads)", final=True)
    if opts.target is not None:
        progress.show(f"drill {s.name}: target {opts.target}, its channel {opts.channel!r} "
                      f"must use the origin and ad server the drill starts now", final=True)
    rig = await start_rig(s, media=media, data_dir=opts.data_dir, stitchers=opts.stitchers,
                          target=opts.target, channel=opts.channel,
                          origin_port=opts.origin_port, adserver_port=opts.adserver_port,
                          workdir=opts.workdir, lead=RAMP + 2)
    if opts.target is not None:
        progress.show("the target's channel config (the drill content is synthetic: keep "
                      "the ladder, so nothing is probed): "
                      + json.dumps(rig.channel_config(str(media.slate))), final=True)
    try:
        connector = aiohttp.TCPConnector(limit=opts.connections or s.viewers + 2 * len(
            s.cohorts) + 16, limit_per_host=0)
        async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            pop = Population(http, rig.clock, rig.stitcher_bases, rig.channel, s.cohorts,
                             ATTRIBUTE, rig.drill_time, rig.origin.live_edge_msn, rig.segment(),
                             content_head_rate=opts.content_head_rate)
            poller = Poller(http, rig.clock, rig.stitcher_bases[0], rig.channel, s.cohorts,
                            ATTRIBUTE, rig.drill_time)
            stop_poll = asyncio.Event()
            run_start = time.monotonic()
            viewers = asyncio.create_task(pop.run(s.viewers, RAMP))
            polling = asyncio.create_task(poller.run(stop_poll))
            await _drive(rig, pop, progress)
            pop.stop.set()
            stop_poll.set()
            await viewers
            await polling
            drill_wall = time.monotonic() - run_start
            await rig.heal()
            progress.show(f"drill {s.name}: viewers stopped; waiting for beacon delivery",
                          final=True)
            waiting = await _settle_beacons(rig, http)
            duplicates = await _possible_duplicates(http, rig.stitcher_bases)
        decisions, store_ids = await _decisions(rig, opts.target_redis)
        dead = await _dead_letters(rig.redis.url if rig.redis else opts.target_redis)
        if inspect is not None:
            await inspect(rig)
        raw = _gather(rig, pop, poller, decisions, store_ids, duplicates, opts)
        raw.dead_letters = dead
        raw.beacons_waiting = waiting
        raw.wall_seconds = time.monotonic() - wall0
        raw.setup = {**raw.setup, "drill_wall_seconds": round(drill_wall, 1)}
    finally:
        await rig.close()
    report = build_report(raw)
    if opts.json_out is not None:
        opts.json_out.parent.mkdir(parents=True, exist_ok=True)
        opts.json_out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if opts.html_out is not None:
        from stitcher.drill.html import render_html

        opts.html_out.parent.mkdir(parents=True, exist_ok=True)
        opts.html_out.write_text(render_html(report), encoding="utf-8")
    return report


def _gather(rig: Rig, pop: Population, poller: Poller, decisions: dict[str, dict[str, str]],
            store_ids: dict[int, str], duplicates: float, opts: DrillOptions) -> Raw:
    s = rig.schedule
    clock = rig.clock

    def from_wall(w: float) -> float:  # the ad server logs wall time
        return clock.start + (w - clock.start) * clock.speed - rig.epoch

    # The stitchers' playlist fetches from drill time zero (warm-up and session
    # start-up before it are not the drill's).
    origin_requests = [(r.time - rig.epoch, r.kind, r.status) for r in rig.origin.log
                       if r.kind in ("multivariant", "media") and r.time >= rig.epoch]
    vast: list[tuple[float, str, str, str | None]] = []
    for v in vast_requests(rig.ad_app):
        q = parse_qs(v.query_string)
        brk = q.get("break", ["?"])[0]
        if brk != "prefetch":
            vast.append((from_wall(v.time), brk, q.get(ATTRIBUTE, ["?"])[0], v.fault))
    hits = [(h.query.get("session", ["?"])[0], h.ad_id, h.event, h.query_string)
            for h in adserver_hits(rig.ad_app)]
    obs = pop.obs
    breaks, known = _origin_breaks(rig, store_ids)
    return Raw(
        schedule=s, viewers_requested=s.viewers, viewers_started=pop.started,
        session_failures=obs.session_failures, playlists=obs.playlists,
        ad_segments=obs.ad_segments, content=obs.content, ad_requests=obs.ad_requests,
        sessions=obs.sessions, origin_requests=origin_requests, vast_requests=vast,
        hits=hits, decisions=decisions, breaks=breaks, known_breaks=known,
        segment=rig.segment(),
        violations=[(t, c, v.to_json()) for t, c, v in poller.violations],
        poller_fetch_errors=poller.fetch_errors, poller_reloads=poller.reloads,
        possible_duplicates=duplicates, errors=dict(obs.errors), uncertain=obs.uncertain,
        ad_retries=obs.ad_retries,
        setup={"stitchers": len(rig.stitcher_bases), "target": opts.target,
               "connections": pop.http.connector.limit if pop.http.connector else None,
               "segment": rig.segment(),
               "renditions": sorted(rig.origin.renditions)})


# ------------------------------------------------------------------ command line
def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "drill", help="fire drill: N simulated viewers against degrading upstreams "
                      "(exit 0 passed, 1 failures, 2 could not run)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", help=f"packaged profile ({', '.join(profile_names())}; "
                                       f"default big-event)")
    src.add_argument("--schedule", type=Path, help="schedule file (YAML or JSON)")
    p.add_argument("--viewers", type=int, help="simulated viewers (default: the schedule's)")
    p.add_argument("--duration", type=float,
                   help="drill seconds: cut the schedule there, or stretch its last phase")
    p.add_argument("--cohorts", nargs="+", help="cohort names (default: the schedule's)")
    p.add_argument("--speed", type=float, help="drill clock speed (default: the schedule's)")
    p.add_argument("--json", type=Path, dest="json_out", help="write the JSON report here")
    p.add_argument("--html", type=Path, dest="html_out", help="write the HTML report here")
    p.add_argument("--target", help="a running stitcher's base URL (its channel --channel "
                                    "must point at --origin-port / --adserver-port)")
    p.add_argument("--target-redis", help="with --target: its redis_url (decision records "
                                          "are read there)")
    p.add_argument("--channel", default=CHANNEL)
    p.add_argument("--origin-port", type=int, default=0)
    p.add_argument("--adserver-port", type=int, default=0)
    p.add_argument("--stitchers", type=int, default=1, help="stitcher processes (one Redis)")
    p.add_argument("--connections", type=int, default=None,
                   help="connection limit of the viewers' one HTTP client "
                        "(default: one per viewer)")
    p.add_argument("--data-dir", type=Path,
                   default=Path.home() / ".cache" / "ssai-stitcher" / "drill-assets",
                   help="conditioned ads, kept between runs")
    p.add_argument("--media-cache", default=None)
    p.add_argument("--workdir", type=Path,
                   help="keep the stitchers' logs and Redis' files here")


def options_from_args(args: argparse.Namespace) -> DrillOptions:
    schedule = load_schedule(profile=args.profile, path=args.schedule)
    changes: dict[str, Any] = {}
    if args.viewers is not None:
        if args.viewers < 1:
            raise ScheduleError("--viewers must be at least 1")
        changes["viewers"] = args.viewers
    if args.cohorts:
        cohorts = tuple(c for item in args.cohorts for c in item.split(",") if c)
        if (len(set(cohorts)) != len(cohorts)
                or any("." in c or "/" in c or not c.strip() for c in cohorts)):
            raise ScheduleError("--cohorts: distinct names without '.' or '/'")
        changes["cohorts"] = cohorts
    if args.speed is not None:
        if not 0 < args.speed <= 10:
            raise ScheduleError("--speed must be in (0, 10]")
        changes["speed"] = args.speed
    if changes:
        schedule = replace(schedule, **changes)
    if args.duration is not None:
        schedule = schedule.with_duration(args.duration)
    if args.stitchers < 1:
        raise ScheduleError("--stitchers must be at least 1")
    if args.target and any(p.redis for p in schedule.phases):
        raise ScheduleError("Redis phases need the drill's own Redis: not with --target "
                            f"({', '.join(p.name for p in schedule.phases if p.redis)})")
    return DrillOptions(schedule, args.data_dir, args.json_out, args.html_out, args.target,
                        args.channel, args.stitchers, args.connections, args.origin_port,
                        args.adserver_port, args.media_cache, workdir=args.workdir,
                        target_redis=args.target_redis)


def main(args: argparse.Namespace, *, run: Callable[..., Any] = asyncio.run) -> int:
    """The command; ``run`` runs the coroutine (the CLI passes its uvloop runner)."""
    # The fixture ad server logs every VAST request at INFO: not on the drill's terminal.
    logging.getLogger("fixtures.adserver").setLevel(logging.WARNING)
    try:
        opts = options_from_args(args)
    except ScheduleError as exc:
        print(f"stitcher drill: {exc}", file=sys.stderr)
        return 2
    try:
        report = run(run_drill(opts))
    except RigError as exc:
        print(f"stitcher drill: could not run: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(summary_text(report))
    return 0 if report["ok"] else 1
