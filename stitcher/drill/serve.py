"""One drill stitcher process: ``stitcher serve`` on the drill's virtual clock.

``python -m stitcher.drill.serve --config FILE --clock SPEED START T0`` builds
the real service (:func:`stitcher.app.create_app`, the config's Redis store)
with a :class:`~fixtures.clock.ScaledClock` made from the drill's reference, so
its origin refreshes keep step with the accelerated fixture origin; it warms
every channel up (probe, slate, creatives), prints ``READY <port>`` and serves
until SIGTERM / SIGINT, then drains like ``stitcher serve``. Production never
runs this: it exists so a drill can pass a clock, which a config file cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from fixtures.clock import ScaledClock
from stitcher.app import CHANNELS, create_app
from stitcher.config import load_config

log = logging.getLogger("stitcher.drill")


async def _main(config_path: Path, reference: tuple[float, float, float]) -> int:
    config = load_config(config_path)
    clock = ScaledClock(*reference)
    runner = web.AppRunner(create_app(config, clock=clock.now), access_log=None,
                           shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = runner.addresses[0][1]
    for runtime in runner.app[CHANNELS].values():
        await runtime.warm_up()
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stitcher.drill.serve")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--clock", nargs=3, type=float, metavar=("SPEED", "START", "T0"),
                        required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        stream=sys.stderr)
    speed, start, t0 = args.clock
    return asyncio.run(_main(args.config, (speed, start, t0)))


if __name__ == "__main__":
    sys.exit(main())
