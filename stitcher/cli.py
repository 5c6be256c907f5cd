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
import secrets
import shutil
import signal
import tempfile
import sys
import time
from fractions import Fraction
from pathlib import Path

from aiohttp import web

from stitcher.config import ChannelConfig, StitcherConfig, load_config

log = logging.getLogger("stitcher")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class PortInUse(Exception):
    pass


async def _serve(config: StitcherConfig, store: object | None = None) -> web.AppRunner:
    from stitcher.app import create_app

    runner = web.AppRunner(create_app(config, store=store), access_log=None)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(f"cannot listen on {config.host}:{config.port}: {exc.strerror} "
                        f"(choose another with --port)") from exc
    return runner


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_main(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config)) if args.config else StitcherConfig()
    if args.port is not None:
        config = config.model_copy(update={"port": args.port})
    runner = await _serve(config)
    log.info("stitcher listening on http://%s:%s (%d channels)", config.host, config.port,
             len(config.channels))
    try:
        await _until_interrupted()
    finally:
        await runner.cleanup()
    return 0


async def demo_main(args: argparse.Namespace) -> int:
    from fixtures.adserver import AdServerConfig, FixtureAd
    from fixtures.adserver import create_app as create_adserver
    from fixtures.media import ensure_media
    from fixtures.origin import OriginConfig, renditions_from_media, run_origin
    from stitcher.app import CHANNELS

    log.info("step 1/4: fixture media (generated once, then cached)")
    media = await asyncio.to_thread(ensure_media, args.media_cache)
    log.info("media ready in %s", media.root)

    log.info("step 2/4: fixture live origin and VAST ad server")
    # The stream "started" one window ago, so players find a full window at once.
    lead = 12
    origin_cfg = OriginConfig(renditions=renditions_from_media(media), channel="demo",
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
        allow_private_ad_hosts=True, slate=str(media.slate))
    # Conditioned ads are cached across runs; the live state (ledgers, decisions) is
    # per run, since the fixture origin starts a new timeline every time.
    from stitcher.store import MemoryStore

    state = Path(tempfile.mkdtemp(prefix="stitcher-demo-"))
    config = StitcherConfig(host=args.host, port=args.port, data_dir=Path(args.data_dir),
                            session_keys={"demo": secrets.token_urlsafe(32)},
                            channels=[channel])
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
  slate for the rest.
  Origin:    http://127.0.0.1:{origin_port}/live/demo/master.m3u8 (unstitched)
  Ad server: http://127.0.0.1:{ad_port}/hits (beacons received)
  Metrics:   http://{args.host}:{args.port}/metrics
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stitcher", description="Live SSAI stitcher for HLS")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the stitcher service")
    p_serve.add_argument("--config", help="YAML or JSON config file")
    p_serve.add_argument("--port", type=int)
    p_demo = sub.add_parser("demo", help="run fixture origin + ad server + stitcher")
    p_demo.add_argument("--host", default="127.0.0.1")
    p_demo.add_argument("--port", type=int, default=8080)
    p_demo.add_argument("--break-every", type=int, default=60)
    p_demo.add_argument("--break-duration", type=int, default=30)
    p_demo.add_argument("--first-break", type=int, default=20)
    p_demo.add_argument("--data-dir", default=str(Path.home() / ".cache" / "ssai-stitcher"
                                                  / "demo-assets"),
                        help="where conditioned ads are cached between runs")
    p_demo.add_argument("--media-cache", default=None)
    p_check = sub.add_parser("check", help="poll a live HLS stream and report invariant "
                                           "violations (exit 0 clean, 1 violations, 2 unreadable)")
    p_check.add_argument("url", help="multivariant or media playlist URL")
    p_check.add_argument("--duration", type=float, default=60.0, help="seconds to poll")
    p_check.add_argument("--interval", type=float, default=None,
                         help="seconds between reloads (default: half the target duration)")
    p_check.add_argument("--json", action="store_true", help="machine-readable report")
    args = parser.parse_args(argv)
    _logging(args.verbose)
    if args.command == "check":
        from stitcher.check import main as check_main

        return check_main(args)
    runner = {"serve": serve_main, "demo": demo_main}[args.command]
    try:
        return asyncio.run(runner(args))
    except KeyboardInterrupt:
        return 130
    except PortInUse as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
