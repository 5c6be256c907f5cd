"""Command line: ``stitcher serve`` and ``stitcher demo``.

``stitcher demo`` is the newcomer's path: it generates (or reuses) the fixture
media, starts the fixture live origin, the fixture VAST ad server and the
stitcher with embedded defaults (in-memory store, no Redis), conditions the
ads, and prints a URL any HLS player can open. Ctrl-C stops all of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from fractions import Fraction
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from stitcher.config import ChannelConfig, StitcherConfig, load_config
from stitcher.logs import configure as configure_logs

log = logging.getLogger("stitcher")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class PortInUse(Exception):
    pass


async def _serve(config: StitcherConfig, store: object | None = None, *,
                 reuse_port: bool = False) -> web.AppRunner:
    from stitcher.app import create_app

    # No access log: a line per request costs more than serving a cached playlist.
    runner = web.AppRunner(create_app(config, store=store), access_log=None,  # type: ignore[arg-type]
                           shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(f"cannot listen on {config.host}:{config.port}: {exc.strerror} "
                        f"(choose another with --port)") from exc
    return runner


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed (the ``fast`` extra), else asyncio;
    ``STITCHER_EVENT_LOOP=asyncio`` forces asyncio's own loop."""
    if os.environ.get("STITCHER_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _load_serve_config(args: argparse.Namespace) -> StitcherConfig:
    config = load_config(Path(args.config)) if args.config else StitcherConfig()
    update: dict[str, Any] = {}
    if args.port is not None:
        update["port"] = args.port
    if args.workers is not None:
        update["workers"] = args.workers
    return config.model_copy(update=update) if update else config


async def _drain(runner: web.AppRunner, timeout: float) -> int:
    """Stop accepting, let in-flight requests finish (:mod:`stitcher.drain`): the
    number that had to be cut off at ``timeout``."""
    from stitcher.app import IN_FLIGHT
    from stitcher.drain import drain

    return await drain(runner, runner.app[IN_FLIGHT], timeout)


async def serve_main(config: StitcherConfig) -> int:
    """One process: serve until SIGTERM / SIGINT, then drain (stop accepting, let
    in-flight requests finish within ``shutdown_timeout``, go on once the last has)
    and return 0, or 1 when a request had to be cut off."""
    from stitcher.app import CHANNELS

    runner = await _serve(config)
    # The channels it serves: the file's and those ad ops created through the API.
    log.info("stitcher listening on http://%s:%s (%d channels)", config.host, config.port,
             len(runner.app[CHANNELS]))
    cut = 0
    try:
        await _until_interrupted()
    finally:
        log.info("draining (up to %s s for in-flight requests)", config.shutdown_timeout)
        cut = await _drain(runner, config.shutdown_timeout)
    log.info("stopped")
    return 1 if cut else 0


async def beacons_main(config: StitcherConfig) -> int:
    """``stitcher beacons``: a beacon sender only, one more consumer of the durable
    queue the stitchers share (scale sending apart from serving). It answers
    ``/healthz`` and ``/metrics`` on the config's host and port; SIGTERM stops it
    (what it holds unsent is reclaimed by the other consumers)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from stitcher.app import stream_queue
    from stitcher.metrics import Metrics
    from stitcher.netpolicy import client_session
    from stitcher.redis_store import RedisStore

    if not config.redis_url:
        log.error("stitcher beacons needs redis_url: it consumes the shared beacon queue")
        return 2
    store = RedisStore.from_url(config.redis_url, cluster=config.redis_cluster)
    metrics = Metrics()
    http = client_session(allow_private=any(c.allow_private_ad_hosts for c in config.channels),
                          private_hosts={h for c in config.channels for h in c.private_ad_hosts})
    queue = stream_queue(config, store, http, metrics)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(),
                                  "consumer": queue.consumer})

    async def metrics_route(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, config.host, config.port).start()
        except OSError as exc:
            raise PortInUse(f"cannot listen on {config.host}:{config.port}: "
                            f"{exc.strerror}") from exc
        log.info("beacon sender %s on http://%s:%s", queue.consumer, config.host, config.port)
        await _until_interrupted()
    finally:
        await queue.close()
        await runner.cleanup()
        await store.close()
        await http.close()
    return 0


# ------------------------------------------------------------------ worker processes
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: A worker that dies this soon after starting counts towards giving up.
_FAST_FAILURE = 5.0
_MAX_FAST_FAILURES = 3


class WorkersRefused(Exception):
    pass


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (never listen on) ``host:port`` with SO_REUSEPORT in the parent: a port in
    use fails here with a clear error, port 0 becomes one concrete port every worker
    binds, and the port stays ours while workers restart."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


def _worker(payload: str, verbose: bool) -> None:
    """A worker process (spawned): serve on the shared port until told to stop."""
    _logging(verbose)
    config = StitcherConfig.model_validate_json(payload)
    if config.log_format == "json":
        configure_logs("json", verbose=verbose)
    try:
        code = _run(_worker_main(config))
    except PortInUse as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)


async def _worker_main(config: StitcherConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # The parent started us with the stop signals blocked, so one sent while we were
    # starting up is pending rather than fatal: it is handled (drain) from here on.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    runner = await _serve(config, reuse_port=True)
    log.info("worker %d serving on http://%s:%s", os.getpid(), config.host, config.port)
    cut = 0
    try:
        await stop.wait()
    finally:
        log.info("worker %d draining (up to %s s for in-flight requests)", os.getpid(),
                 config.shutdown_timeout)
        cut = await _drain(runner, config.shutdown_timeout)
    log.info("worker %d stopped", os.getpid())
    return 1 if cut else 0


def serve_workers(config: StitcherConfig, verbose: bool = False) -> int:
    """``config.workers`` processes sharing the port (SO_REUSEPORT, the kernel spreads
    connections over them). SIGTERM / SIGINT are forwarded to every worker, which
    drains; returns 0 once all have exited cleanly. A worker that dies is restarted
    (unless it keeps dying at start-up, then everything stops and this returns 1)."""
    n = config.workers
    if not config.redis_url:
        raise WorkersRefused(
            f"--workers {n} needs a shared store: set redis_url in the config (the "
            f"embedded in-memory store is per process, so workers would serve different "
            f"ledgers and decisions)")
    if not config.session_keys:
        log.warning("no session_keys configured: %d workers share a random key made now "
                    "(sessions will not survive a restart nor work across hosts)", n)
        config = config.model_copy(
            update={"session_keys": {"ephemeral": secrets.token_urlsafe(32)}})
    try:
        reservation, port = _reserve_port(config.host, config.port)
    except OSError as exc:
        raise PortInUse(f"cannot listen on {config.host}:{config.port}: {exc.strerror} "
                        f"(choose another with --port)") from exc
    config = config.model_copy(update={"port": port})
    payload = config.model_dump_json()
    ctx = multiprocessing.get_context("spawn")
    workers: dict[int, Any] = {}
    started: dict[int, float] = {}
    state = {"stopping": False, "deadline": 0.0, "failed": False}

    def forward(signum: int, _frame: object = None) -> None:
        if not state["stopping"]:
            state["stopping"] = True
            state["deadline"] = time.monotonic() + config.shutdown_timeout + 10
            log.info("signal %s: draining %d workers", signal.Signals(signum).name,
                     len(workers))
        for p in list(workers.values()):
            if p.exitcode is None and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    def start(i: int) -> None:
        # Children inherit the blocked mask: a stop signal during their start-up waits
        # until their event loop handles it (drain) instead of killing them half-made.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            p = ctx.Process(target=_worker, args=(payload, verbose), name=f"stitcher-worker-{i}")
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        workers[i], started[i] = p, time.monotonic()

    previous = {sig: signal.signal(sig, forward) for sig in _STOP_SIGNALS}
    fast_failures = 0
    codes: list[int | None] = []
    try:
        for i in range(n):
            start(i)
        log.info("stitcher listening on http://%s:%s with %d workers (pids %s)", config.host,
                 port, n, " ".join(str(p.pid) for p in workers.values()))
        while workers:
            by_sentinel = {p.sentinel: i for i, p in workers.items()}
            for s in mp_connection.wait(list(by_sentinel), timeout=0.5):
                i = by_sentinel[s]
                p = workers.pop(i)
                p.join()
                codes.append(p.exitcode)
                if state["stopping"]:
                    continue
                lived = time.monotonic() - started[i]
                fast_failures = fast_failures + 1 if lived < _FAST_FAILURE else 0
                if fast_failures >= _MAX_FAST_FAILURES:
                    log.error("worker %d (pid %s) exited with %s; workers keep dying at "
                              "start-up: stopping", i, p.pid, p.exitcode)
                    state["failed"] = True
                    forward(signal.SIGTERM)
                else:
                    log.error("worker %d (pid %s) exited with %s after %.0f s: restarting",
                              i, p.pid, p.exitcode, lived)
                    start(i)
            if state["stopping"] and workers and time.monotonic() > state["deadline"]:
                log.error("workers %s did not drain in time: killing them",
                          " ".join(str(p.pid) for p in workers.values()))
                state["failed"] = True
                for p in workers.values():
                    p.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reservation.close()
    clean = not state["failed"] and all(c == 0 for c in codes)
    log.info("all workers stopped%s", "" if clean else f" (exit codes {codes})")
    return 0 if clean else 1


async def demo_main(args: argparse.Namespace) -> int:
    from fixtures.adserver import AdServerConfig, FixtureAd
    from fixtures.adserver import create_app as create_adserver
    from fixtures.media import ensure_media
    from fixtures.origin import OriginConfig, renditions_from_media, run_origin, subtitles_for
    from stitcher.app import CHANNELS

    log.info("step 1/4: fixture media (generated once, then cached)")
    media = await asyncio.to_thread(ensure_media, args.media_cache)
    log.info("media ready in %s", media.root)

    log.info("step 2/4: fixture live origin and VAST ad server")
    # The stream "started" one window ago, so players find a full window at once.
    lead = 12
    renditions = renditions_from_media(media)
    # English WebVTT subtitles (on by default in players): each second's cue is its
    # wall-clock time (PDT), so captions that drift after a break are plain to see.
    subtitles = None if args.no_subtitles else subtitles_for(renditions)
    origin_cfg = OriginConfig(renditions=renditions, channel="demo", subtitles=subtitles,
                              start_epoch=int(time.time()) // 2 * 2 - lead,
                              break_interval=Fraction(args.break_every),
                              break_duration=Fraction(args.break_duration),
                              first_break_at=Fraction(args.first_break + lead))
    origin_runner, origin_port = await run_origin(origin_cfg, host="127.0.0.1", port=0)
    ads = [FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                     title=f"Fixture {a.id}") for a in media.ads]
    ad_runner = web.AppRunner(create_adserver(AdServerConfig(
        ads=ads, creatives_dir=media.ads[0].path.parent)), access_log=None)
    await ad_runner.setup()
    ad_site = web.TCPSite(ad_runner, "127.0.0.1", 0)
    await ad_site.start()
    ad_port = ad_runner.addresses[0][1]

    log.info("step 3/4: stitcher")
    channel = ChannelConfig(
        id="demo", origin_url=f"http://127.0.0.1:{origin_port}/live/demo/master.m3u8",
        ad_server_url=f"http://127.0.0.1:{ad_port}/vast?duration={{duration}}&cb=[CACHEBUSTING]",
        private_ad_hosts=[f"127.0.0.1:{ad_port}"], slate=str(media.slate))
    # Conditioned ads are cached across runs; the live state (ledgers, decisions) is
    # per run, since the fixture origin starts a new timeline every time.
    from stitcher.store import MemoryStore

    state = Path(tempfile.mkdtemp(prefix="stitcher-demo-"))
    # An admin token of its own, printed below, so the console can be tried at once
    # (found by a newcomer: without one the admin API was disabled).
    admin_token = secrets.token_urlsafe(18)
    config = StitcherConfig(host=args.host, port=args.port, data_dir=Path(args.data_dir),
                            session_keys={"demo": secrets.token_urlsafe(32)},
                            admin_token=admin_token, channels=[channel])
    try:
        runner = await _serve(config, MemoryStore(state))
    except PortInUse:
        await ad_runner.cleanup()
        await origin_runner.cleanup()
        raise
    try:
        log.info("step 4/4: conditioning the ads and the slate to the channel's ladder")
        await runner.app[CHANNELS]["demo"].warm_up()
        url = f"http://{args.host}:{args.port}/v1/master/demo.m3u8"
        single = await _single_variant_url(url)
        captions = "" if args.no_subtitles else (
            "\n  Subtitles (English, on by default): each second's cue is its wall-clock"
            "\n  time, the same as the stream's PDT; none during the ads.")
        print(f"""
  Live stitched stream ready. Open it in any HLS player:

      {url}

  e.g.  vlc {url}   (or Safari, or an hls.js page)
        ffplay {single}
        (ffmpeg/ffplay read every variant of a multivariant URL at once; the
         second URL is one session's 360p media playlist)
  What you will see: a test pattern with a clock and a frame counter; every
  {args.break_every} s (first after {args.first_break} s) a {args.break_duration} s ad break:
  ad A (red, 440 Hz, 10 s), then ad B (blue, 880 Hz, 15 s) when it fits, then
  slate for the rest.{captions}
  Origin:    http://127.0.0.1:{origin_port}/live/demo/master.m3u8 (unstitched)
  Ad server: http://127.0.0.1:{ad_port}/hits (beacons received)
  Metrics:   http://{args.host}:{args.port}/metrics
  Ad ops:    http://{args.host}:{args.port}/console  (token: {admin_token})
  Ctrl-C stops everything.
""", flush=True)
        await _until_interrupted()
    finally:
        log.info("stopping")
        await runner.cleanup()
        await ad_runner.cleanup()
        await origin_runner.cleanup()
        shutil.rmtree(state, ignore_errors=True)
    return 0


async def _single_variant_url(master: str) -> str:
    """Start a session and return its first variant's media playlist URL."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(master) as resp:
        return str(resp.url).rsplit("/", 1)[0] + "/media/v0.m3u8"


def _positive(minimum: float) -> Callable[[str], float]:
    """An argparse type: seconds, finite and above ``minimum`` (``--interval 0``
    polled in a busy loop, ``--duration -5`` checked nothing and exited 0)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value <= minimum:
            raise argparse.ArgumentTypeError(f"{text} s: more than {minimum:g} s, please")
        return value

    return parse


def _seconds(*, minimum: int) -> Callable[[str], int]:
    """An argparse type: whole seconds, at least ``minimum`` (a clear usage error,
    not a traceback from deep in the fixture origin)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") \
                from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} s: at least {minimum} s")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stitcher", description="Live SSAI stitcher for HLS")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the stitcher service")
    p_serve.add_argument("--config", help="YAML or JSON config file")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--workers", type=int, default=None,
                         help="worker processes sharing the port (needs redis_url); "
                              "default: the config's workers (1)")
    p_beacons = sub.add_parser("beacons", help="send beacons only: one more consumer of "
                                                "the shared queue (needs redis_url)")
    p_beacons.add_argument("--config", help="YAML or JSON config file (the stitchers')")
    p_beacons.add_argument("--port", type=int, help="/healthz and /metrics port")
    p_demo = sub.add_parser("demo", help="run fixture origin + ad server + stitcher")
    p_demo.add_argument("--host", default="127.0.0.1")
    p_demo.add_argument("--port", type=int, default=8080)
    p_demo.add_argument("--break-every", type=_seconds(minimum=4), default=60,
                        help="seconds from one break's start to the next (default 60)")
    p_demo.add_argument("--break-duration", type=_seconds(minimum=2), default=30,
                        help="seconds each break lasts, less than --break-every (default 30)")
    p_demo.add_argument("--first-break", type=_seconds(minimum=0), default=20,
                        help="seconds before the first break (default 20)")
    p_demo.add_argument("--data-dir", default=str(Path.home() / ".cache" / "ssai-stitcher"
                                                  / "demo-assets"),
                        help="where conditioned ads are cached between runs")
    p_demo.add_argument("--media-cache", default=None)
    p_demo.add_argument("--no-subtitles", action="store_true",
                        help="no WebVTT subtitle rendition on the fixture origin")
    p_check = sub.add_parser("check", help="poll a live HLS stream and report invariant "
                                           "violations (exit 0 clean, 1 violations, 2 unreadable)")
    p_check.add_argument("url", help="multivariant or media playlist URL")
    p_check.add_argument("--duration", type=_positive(0), default=60.0,
                         help="seconds to poll")
    p_check.add_argument("--interval", type=_positive(0), default=None,
                         help="seconds between reloads (default: half the target duration)")
    p_check.add_argument("--json", action="store_true", help="machine-readable report")
    from stitcher.replay import add_parser as add_replay_parser

    add_replay_parser(sub)  # stitcher replay PATH [--update] [--out DIR] [--json]
    from stitcher.drill.run import add_parser as add_drill_parser

    add_drill_parser(sub)  # stitcher drill [--profile NAME | --schedule FILE] ...
    args = parser.parse_args(argv)
    if args.command == "demo" and args.break_duration >= args.break_every:
        p_demo.error(f"--break-duration ({args.break_duration} s) must be less than "
                     f"--break-every ({args.break_every} s): content between the breaks")
    _logging(args.verbose)
    if args.command == "replay":
        from stitcher.replay import main as replay_main

        return replay_main(args)
    if args.command == "drill":
        from stitcher.drill.run import main as drill_main

        return drill_main(args, run=_run)
    if args.command == "check":
        from stitcher.check import main as check_main

        return check_main(args)
    try:
        if args.command in ("serve", "beacons"):
            if args.command == "beacons":
                args.workers = None
            if args.workers is not None and args.workers < 1:
                parser.error("--workers must be at least 1")
            try:
                config = _load_serve_config(args)
            except ValidationError as exc:  # each bad field named, no traceback
                log.error("config %s is invalid:\n%s", args.config, "\n".join(
                    f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False)))
                return 2
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                # A missing/unreadable file, or YAML/JSON that does not parse
                # (yaml.YAMLError and json.JSONDecodeError are ValueErrors or
                # named below): one line, no traceback.
                log.error("config %s cannot be read: %s", args.config, exc)
                return 2
            if config.log_format == "json":
                configure_logs("json", verbose=args.verbose)
            if args.command == "beacons":
                return _run(beacons_main(config))
            if config.workers > 1:
                return serve_workers(config, args.verbose)
            return _run(serve_main(config))
        return asyncio.run(demo_main(args))
    except KeyboardInterrupt:
        return 130
    except (PortInUse, WorkersRefused) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
