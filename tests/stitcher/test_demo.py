"""``stitcher demo``, the README's first command, run as a newcomer runs it: a
process on a port, whose printed URLs must be the ones that work (the player's,
one session's media playlist, the ad-ops console with the token made for the
run), and Ctrl-C stops it cleanly. Real time and real ffmpeg: about 15 s, most of
it conditioning the two ads."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from stitcher.drill.rig import free_port

READY = "Ctrl-C stops everything."
START_BUDGET = 180.0  # a fresh machine generates the fixture media first


async def _read_banner(proc: asyncio.subprocess.Process) -> str:
    """The demo's output up to its banner's last line (or a clear failure)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_BUDGET
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), left)).decode()
        except TimeoutError:
            break
        if not line:
            pytest.fail("the demo exited before printing its URLs:\n" + "".join(lines))
        lines.append(line)
        if READY in line:
            return "".join(lines)
    pytest.fail("no banner within the start budget:\n" + "".join(lines))


async def test_the_demo_prints_urls_that_work_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stitcher.cli", "demo", "--port", str(port),
        "--data-dir", str(tmp_path / "data"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        banner = await _read_banner(proc)
        player = re.search(r"http://127\.0\.0\.1:\d+/v1/master/demo\.m3u8", banner)
        session = re.search(r"ffplay (http://\S+/media/v0\.m3u8)", banner)
        console = re.search(r"(http://\S+/console)\s+\(token: ([^)]+)\)", banner)
        assert player and session and console, banner
        assert player.group(0) == f"http://127.0.0.1:{port}/v1/master/demo.m3u8"
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(player.group(0)) as resp:
                body = await resp.text()
                assert resp.status == 200, body
                assert "#EXT-X-STREAM-INF" in body and "#EXT-X-MEDIA:TYPE=SUBTITLES" in body
            async with http.get(session.group(1)) as resp:
                body = await resp.text()
                assert resp.status == 200, body
                assert "#EXTINF:" in body and "#EXT-X-MEDIA-SEQUENCE:" in body
            async with http.get(console.group(1)) as resp:
                assert resp.status == 200
            token = console.group(2)
            async with http.get(base + "/admin/channels",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                listing = await resp.json()
                assert resp.status == 200, listing
                assert [c["id"] for c in listing["channels"]] == ["demo"]
            async with http.get(base + "/admin/channels",
                                headers={"Authorization": "Bearer not-the-token-at-all"}) as resp:
                assert resp.status in (401, 403)
        proc.send_signal(signal.SIGINT)
        # The rest of its output (the drain) is read so the pipe never fills.
        assert proc.stdout is not None
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
