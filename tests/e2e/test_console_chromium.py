"""The ad-ops console in headless Chromium: a person's view of a live channel.

Real time, real browser: the fixture origin, ad server and stitcher run in this
process on the wall clock (warmed up: slate and ads conditioned). A break is
scheduled through the admin API two minutes ahead; ``tests/node/drive_console.mjs``
opens ``/console`` in Debian's Chromium (playwright-core), types the admin token,
waits for the channel and its upcoming break, clicks "Insert break now", waits
for the console to show that break on air and takes a screenshot. The test
polls the stitched playlist meanwhile: the clicked break must be stitched there
(ad segments under its id), and the page must have logged no error.

The screenshot is kept under the test's tmp_path and copied to ``artifacts/``
at the repository's root (gitignored). Skipped where node, node_modules or
Chromium are missing; in CI a skip is a failure (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.clock import SystemClock
from manifests.playlist import parse_media
from tests.e2e.test_hlsjs_chromium import CHROMIUM, ROOT, _prerequisites
from tests.harness import start_stack

pytestmark = pytest.mark.e2e

DRIVER = ROOT / "tests" / "node" / "drive_console.mjs"
TOKEN = "console-e2e-token-0123456789"
TIMEOUT = 60


async def test_console_shows_the_channel_and_inserts_a_break(media: Any, assets_dir: Path,
                                                             tmp_path: Path) -> None:
    node, chromium = _prerequisites()
    assert chromium == CHROMIUM
    async with start_stack(clock=SystemClock(), media=media, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           stitcher_config={"admin_token": TOKEN}) as stack:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with stack.http.post(f"{stack.base}/admin/channels/{stack.channel}/breaks",
                                   json={"duration": 10, "after": 120}, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            scheduled = (await resp.json())["id"]
        session = await stack.start_session()
        seen: dict[int, str] = {}
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                status, _h, body = await stack.get(session.media_url("v0"))
                assert status == 200, body
                for seg in parse_media(body.decode()).segments:
                    seen.setdefault(seg.msn, seg.uri)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

        poller = asyncio.ensure_future(poll())
        shot = tmp_path / "console-during-break.png"
        started = time.monotonic()
        try:
            driver = await asyncio.create_subprocess_exec(
                node, str(DRIVER), f"{stack.base}/console", TOKEN, stack.channel, str(shot),
                str(TIMEOUT), str(chromium), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(driver.communicate(), TIMEOUT + 30)
            assert driver.returncode == 0, err.decode()[-4000:]
            report: dict[str, Any] = json.loads(out)
            (tmp_path / "console_report.json").write_text(json.dumps(report, indent=1))
            assert report.get("done") and not report.get("driverError"), report
            inserted = report["current"]
            # Stitched: poll until the clicked break's ad segments are in the playlist.
            deadline = time.monotonic() + 20
            while not any(f"/{inserted}/" in u for u in seen.values()):
                assert time.monotonic() < deadline, (inserted, seen)
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await poller

        assert not report["pageErrors"], report
        assert not [c for c in report["console"] if c["type"] == "error"], report
        assert not report["requestFailures"], report
        assert report["steps"][0]["loginVisible"] is True  # the page asked for the token
        assert report["upcoming"] == scheduled, report
        assert "starts in" in report["upcomingText"]
        assert report["originHealth"] == "origin: ok"
        assert inserted.startswith("adops-") and inserted != scheduled
        assert inserted in report["message"]
        assert "on air" in report["currentText"]
        ads = [m for m, u in sorted(seen.items()) if f"/{inserted}/" in u]
        assert ads == list(range(ads[0], ads[0] + len(ads))), seen
        async with stack.http.get(f"{stack.base}/admin/audit", headers=auth) as resp:
            entries = (await resp.json())["entries"]
        assert [(e["action"], e["break"]) for e in entries][:2] == [
            ("break.insert", inserted), ("break.insert", scheduled)]
        assert "HeadlessChrome" in entries[0]["actor"]["user_agent"]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        artifacts = ROOT / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(shot, artifacts / shot.name)
        print(f"\nconsole e2e {time.monotonic() - started:.1f} s; screenshot "
              f"{artifacts / shot.name}")
