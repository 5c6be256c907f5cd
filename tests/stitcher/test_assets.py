"""The static ``/assets/`` route serves what players fetch (conditioned segments and
init segments) and nothing else of the creative library (found by a newcomer:
``/assets/keys.json`` listed every creative's ad-server URL, ``done.json`` named
server paths, ``/assets/mezzanines/...`` gave the original creative)."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import pytest
from yarl import URL

from fixtures.clock import ManualClock
from stitcher.ads import CreativeLibrary
from stitcher.app import LIBRARY
from stitcher.conditioning import RenditionSpec
from stitcher.ffmpeg import ffmpeg_exe
from tests.harness import start_stack

SPECS = [
    RenditionSpec("v0", 64, 36, 100_000, Fraction(30), segment_duration=Fraction(1)),
    RenditionSpec("f0", 64, 36, 100_000, Fraction(30), segment_duration=Fraction(1),
                  container="fmp4"),
]


def _mezzanine(path: Path) -> Path:
    """A 2 s creative, small enough to condition in about a second."""
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc=size=64x36:rate=30:duration=2",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True, capture_output=True, timeout=60)
    return path


async def _condition(library: CreativeLibrary, mezzanine: Path) -> str:
    """Condition an ad and a slate into ``library`` the way the service does: the ad's
    mezzanine downloaded into ``mezzanines/`` and listed in ``keys.json``."""
    async def download(_url: str) -> AsyncIterator[bytes]:
        yield mezzanine.read_bytes()

    library._download = download
    key = await library._fetch_and_condition(
        ("ad-id.org", "AD-1", "http://127.0.0.1:1/creatives/ad-a.mp4"), SPECS)
    assert key is not None
    assert await library.ensure("slate-live1", str(mezzanine), SPECS) is not None
    return key


async def test_only_conditioned_segments_are_served(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    mezzanine = _mezzanine(tmp_path / "mezz.mp4")
    async with start_stack(clock=ManualClock(), data_dir=tmp_path / "data") as stack:
        library = stack.app[LIBRARY]
        key = await _condition(library, mezzanine)
        root = library.root
        # What a conditioning run has on disk while it runs (its temporary folder, the
        # marker's temporary file) and what a download leaves while it downloads.
        tmp_rendition = root / key / ".tmp-v0-abc123"
        tmp_rendition.mkdir()
        (tmp_rendition / "seg_00000.ts").write_bytes(b"half written")
        (root / key / "v0" / ".done.json.x1y2").write_text("{}")
        (root / "mezzanines" / ".0123.abcd.part").write_bytes(b"part")
        # A rendition folder without its marker (a run that died before publishing).
        (root / key / "v9").mkdir()
        (root / key / "v9" / "seg_00000.ts").write_bytes(b"unpublished")
        # A segment name that is a link out of the library.
        outside = tmp_path / "secret.ts"
        outside.write_bytes(b"secret")
        (root / key / "v0" / "seg_09999.ts").symlink_to(outside)

        players = sorted(p.relative_to(root).as_posix() for k in (key, "slate-live1")
                         for r in ("v0", "f0")
                         for p in (root / k / r).glob("*") if p.suffix in (".ts", ".m4s")
                         or p.name == "init.mp4")
        players.remove(f"{key}/v0/seg_09999.ts")
        # 2 s in 1 s segments, per rendition and creative, plus each fMP4 init.
        assert len(players) == 2 * (2 + 2 + 1), players
        types = {".ts": "video/mp2t", ".m4s": "video/iso.segment", ".mp4": "video/mp4"}
        for rel in players:
            status, headers, body = await stack.get(f"/assets/{rel}")
            assert status == 200, (rel, body)
            assert body == (root / rel).read_bytes()
            assert headers["Content-Type"] == types[Path(rel).suffix], rel
            assert headers["Access-Control-Allow-Origin"] == "*"
        async with stack.http.head(f"{stack.base}/assets/{players[0]}") as resp:
            assert resp.status == 200
        # Sent once each, the connection kept alive for the next (the route sends the
        # file itself, so a drain waits for it: aiohttp must not send it again).
        assert not [r for r in caplog.records if r.name.startswith("aiohttp")
                    and r.levelno >= logging.WARNING], caplog.text

        everything = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                            if p.is_file())
        refused = [rel for rel in everything if rel not in players]
        # Every kind of bookkeeping is there to be refused.
        assert "keys.json" in refused
        assert f"{key}/v0/done.json" in refused and "slate-live1/f0/done.json" in refused
        assert any(rel.startswith("mezzanines/c") for rel in refused), refused
        assert "http://127.0.0.1:1/creatives/ad-a.mp4" in (root / "keys.json").read_text()
        assert str(mezzanine) in (root / "slate-live1" / "v0" / "done.json").read_text()
        refused += [f"{key}/v0", key, "mezzanines", f"{key}/v0/",
                    f"{key}/v0/seg_00000.ts/", f"{key}//v0/seg_00000.ts",
                    f"{key}/v0/seg_00099.ts", f"{key}/v0/init.mp4"]
        for rel in refused:
            status, headers, body = await stack.get(str(URL(f"{stack.base}/assets/{rel}")))
            assert status == 404, (rel, body)
            assert json.loads(body) == {"error": "not_found", "reason": "no such asset"}, rel
            assert headers["Access-Control-Allow-Origin"] == "*"

        # Counted like every answer, under the route's name.
        assert await stack.metric("stitcher_requests_total", endpoint="assets",
                                  status="404") == len(refused)

        # Traversal, raw or percent-encoded, to a file that exists.
        for path in (f"/assets/{key}/v0/../../keys.json", f"/assets/{key}/%2e%2e/keys.json",
                     f"/assets/{key}/v0/%2e%2e/%2e%2e/keys.json",
                     "/assets/%2e%2e/%2e%2e/etc/passwd", f"/assets/{key}%2fv0%2fdone.json",
                     f"/assets/{key}/v0/seg_00000.ts%00", "/assets/%00"):
            status, _, body = await stack.get(str(URL(stack.base + path, encoded=True)))
            assert status == 404, (path, body)
            assert json.loads(body)["error"] == "not_found", path
