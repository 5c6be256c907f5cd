"""``stitcher serve --workers 3``: worker processes sharing one port, and a graceful drain.

The real command runs as a subprocess (its own process tree, as in production)
against a real ``redis-server`` and a fixture origin and ad server served by
this test's event loop. Observed from outside: every session playlist is 200
and byte-identical, more than one worker process answered (the
``X-Stitcher-Worker`` header, the PID), and on SIGTERM a request in flight
(held by a slow origin) still completes, new connections are refused, and the
parent and its workers exit with status 0 within a bound.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from fixtures.adserver import AdServerConfig
from fixtures.adserver import create_app as create_adserver
from fixtures.clock import SystemClock
from fixtures.origin import ORIGIN_STATE, FaultRule, OriginConfig, run_origin, synthetic_renditions
from tests.harness import default_start_epoch, free_port
from tests.loopback import refused

pytestmark = pytest.mark.redis

WORKERS = 3
CHANNEL = "workers1"
SESSIONS = 200
ROOT = Path(__file__).resolve().parents[2]
SLOW = 3.0  # seconds the origin holds the in-flight request across the SIGTERM
EXIT_BOUND = 15.0  # seconds from SIGTERM to the parent's exit


@asynccontextmanager
async def _upstreams() -> AsyncIterator[tuple[web.AppRunner, str, str]]:
    """Fixture origin (real time, no breaks) and ad server on free loopback ports."""
    clock = SystemClock()
    renditions = synthetic_renditions()
    origin_cfg = OriginConfig(renditions=renditions, channel=CHANNEL, break_interval=None,
                              window_segments=6,
                              start_epoch=default_start_epoch(clock, Fraction(2), 6))
    origin, origin_port = await run_origin(origin_cfg, clock, host="127.0.0.1", port=0)
    ads = web.AppRunner(create_adserver(AdServerConfig(ads=[])), access_log=None)
    await ads.setup()
    try:
        await web.TCPSite(ads, "127.0.0.1", 0).start()
        yield (origin, f"http://127.0.0.1:{origin_port}",
               f"http://127.0.0.1:{ads.addresses[0][1]}")
    finally:
        await ads.cleanup()
        await origin.cleanup()


async def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_workers_share_the_port_and_drain_on_sigterm(redis_url: str,
                                                           tmp_path: Path) -> None:
    async with _upstreams() as (origin_runner, origin_base, ad_base):
        origin = origin_runner.app[ORIGIN_STATE]
        port = free_port()
        config = tmp_path / "stitcher.yaml"
        config.write_text(yaml.safe_dump({
            "host": "127.0.0.1", "port": port, "redis_url": redis_url,
            "session_keys": {"k1": "workers-test-key"}, "data_dir": str(tmp_path / "data"),
            "origin_timeout": 10.0, "shutdown_timeout": 10.0,
            "channels": [{"id": CHANNEL,
                          "origin_url": f"{origin_base}/live/{CHANNEL}/master.m3u8",
                          "ad_server_url": f"{ad_base}/vast?duration={{duration}}",
                          "allow_private_ad_hosts": True}],
        }))
        log_path = tmp_path / "stitcher.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stitcher.cli", "serve", "--workers", str(WORKERS),
                "--config", str(config), cwd=ROOT, stdout=log_file, stderr=log_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            await _run(proc, port, origin, log_path)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _run(proc: asyncio.subprocess.Process, port: int, origin, log_path: Path) -> None:  # type: ignore[no-untyped-def]
    def log() -> str:
        return log_path.read_text(errors="replace")

    await _wait_for(lambda: len(re.findall(r"worker \d+ serving on", log())) == WORKERS
                    or proc.returncode is not None, 60, f"{WORKERS} workers serving")
    assert proc.returncode is None, log()
    pids = {int(p) for p in re.findall(r"worker (\d+) serving on", log())}
    assert len(pids) == WORKERS, log()

    base = f"http://127.0.0.1:{port}"
    # A new connection per request, as many viewers would open: the kernel spreads
    # connections (not requests) over the workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=32)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def start_session() -> str:
            async with http.post(f"{base}/v1/session/{CHANNEL}", json={}) as resp:
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["manifestUrl"]).rsplit("/", 1)[0]

        sessions = await asyncio.gather(*(start_session() for _ in range(SESSIONS)))
        assert len(set(sessions)) == SESSIONS

        async def playlist(session: str) -> tuple[int, str, bytes]:
            async with http.get(f"{base}{session}/media/v0.m3u8",
                                headers={"Accept-Encoding": "identity"}) as resp:
                return resp.status, resp.headers.get("X-Stitcher-Worker", ""), await resp.read()

        answers = await asyncio.gather(*(playlist(s) for s in sessions))
        statuses = [a[0] for a in answers]
        assert statuses == [200] * SESSIONS, (statuses, log())
        answered = {int(a[1]) for a in answers}
        assert answered <= pids, (answered, pids)
        assert len(answered) > 1, f"one worker answered every request: {answered}"
        bodies = {a[2] for a in answers}
        # The live edge may move between the first and the last answer: one or two
        # versions of the cohort's playlist, never one per worker or per session.
        assert 1 <= len(bodies) <= 2, len(bodies)
        assert all(b.startswith(b"#EXTM3U") for b in bodies)

        # A slow request in flight across the SIGTERM: the origin holds the first fetch
        # of the other rendition for SLOW seconds.
        origin.add_fault(FaultRule(kinds=frozenset({"media"}), renditions=frozenset({"720p"}),
                                   delay=SLOW, remaining=1))

        async def slow() -> tuple[int, bytes, float]:
            started = time.monotonic()
            async with http.get(f"{base}{sessions[0]}/media/v1.m3u8",
                                headers={"Accept-Encoding": "identity"}) as resp:
                return resp.status, await resp.read(), time.monotonic() - started

        in_flight = asyncio.ensure_future(slow())
        # The origin took the fault's one use: the request is inside a worker's handler.
        await _wait_for(lambda: not origin.faults, 10, "the slow request to reach the origin")
        await asyncio.sleep(0.2)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        # Draining stops accepting at once, while the slow request is still running.
        deadline = time.monotonic() + 2.0
        while not await refused(port):
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.05)
        assert not in_flight.done(), "the slow request ended before the drain was observed"

        status, body, took = await asyncio.wait_for(in_flight, SLOW + 10)
        assert status == 200, (status, body[:200], log())
        assert body.startswith(b"#EXTM3U") and b"#EXTINF" in body
        assert took >= SLOW - 0.5, took

    code = await asyncio.wait_for(proc.wait(), EXIT_BOUND)
    assert code == 0, log()
    assert time.monotonic() - signalled < EXIT_BOUND
    # Every worker drained and stopped (none killed), and none is left running.
    stopped = {int(p) for p in re.findall(r"worker (\d+) stopped", log())}
    assert stopped == pids, log()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "did not drain in time" not in log()
