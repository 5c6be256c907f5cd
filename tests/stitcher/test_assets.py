"""The static ``/assets/`` route serves what players fetch (conditioned segments and
init segments) and nothing else of the creative library (found by a newcomer:
``/assets/keys.json`` listed every creative's ad-server URL, ``done.json`` named
server paths, ``/assets/mezzanines/...`` gave the original creative)."""

from __future__ import annotations

import asyncio
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
    fetch = asyncio.ensure_future(library._fetch(
        ("ad-id.org", "AD-1", "http://127.0.0.1:1/creatives/ad-a.mp4")))
    key = await library._condition_fetched(fetch, SPECS, None, "live1")
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


async def test_one_creative_is_conditioned_to_each_ladder_that_asks(tmp_path: Path) -> None:
    """Found by a newcomer: conditioned files were known by creative and rendition
    name only, so the first channel to condition an ad decided its format for
    every channel: an fMP4 channel's ``v0`` got a TS channel's segments (and an
    init that did not exist), a 1080p one a 360p one's. Each ladder now gets the
    creative conditioned to it, downloaded once, and the same ladder shares."""
    from stitcher.ads import ladder_key
    from stitcher.conditioning import Conditioner
    from stitcher.ffmpeg import ffprobe_exe
    from stitcher.metrics import Metrics

    mezzanine = _mezzanine(tmp_path / "mezz.mp4")
    downloads: list[str] = []

    async def download(url: str) -> AsyncIterator[bytes]:
        downloads.append(url)
        yield mezzanine.read_bytes()

    metrics = Metrics()
    library = CreativeLibrary(tmp_path / "lib", Conditioner(metrics=metrics), metrics,
                              download=download)
    ts = [RenditionSpec("v0", 64, 36, 100_000, Fraction(30), segment_duration=Fraction(1))]
    fmp4 = [RenditionSpec("v0", 96, 54, 150_000, Fraction(30), segment_duration=Fraction(1),
                          container="fmp4")]
    ident = ("ad-id.org", "AD-1", "http://127.0.0.1:1/creatives/ad-a.mp4")
    fetch = asyncio.ensure_future(library._fetch(ident))
    keys = [await library._condition_fetched(fetch, specs, None, channel)
            for specs, channel in ((ts, "tsch"), (fmp4, "fmp4ch"), (list(ts), "other"))]
    assert downloads == [ident[2]], "downloaded once"
    assert keys[0] is not None and keys[1] is not None
    assert keys[0] != keys[1] and keys[2] == keys[0], keys
    assert keys == [ladder_key(await fetch or "", s) for s in (ts, fmp4, ts)]
    exe = ffprobe_exe()
    assert exe is not None

    def video_size(path: Path) -> tuple[str, int, int]:
        probe = subprocess.run([exe, "-v", "error", "-show_streams", "-show_format", "-of",
                                "json", str(path)],
                               capture_output=True, text=True, check=True, timeout=30)
        info = json.loads(probe.stdout)
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        return info["format"]["format_name"], video["width"], video["height"]

    for key, spec in zip(keys[:2], (ts[0], fmp4[0]), strict=True):
        cc = library.get(key, ["v0"])
        assert cc is not None and cc.renditions["v0"].spec == spec
        path = library.segment_path(key, "v0", 0)
        assert path is not None and path.startswith(f"{key}/v0/")
        assert (library.init_path(key, "v0") is not None) == (spec.container == "fmp4")
    ts_segment = library.segment_path(keys[0], "v0", 0)
    fmp4_init = library.init_path(keys[1], "v0")
    assert ts_segment is not None and fmp4_init is not None
    assert video_size(library.root / ts_segment) == ("mpegts", 64, 36)
    assert video_size(library.root / fmp4_init)[1:] == (96, 54)
