"""The service learns each grid's cadence and boundaries and lays pods on the
common ones (B05: 4 s video, 5 s demuxed audio).

A break with no span between boundaries every grid shares is left to the
content underneath in every rendition: a frozen decision that says so, a
warning in the log and ``stitcher_unaligned_breaks_total``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from manifests.playlist import parse_media
from stitcher.app import CHANNELS, create_app
from stitcher.channel import ChannelRuntime
from stitcher.config import StitcherConfig
from stitcher.store import MemoryStore
from tests.synthetic import live_playlist

EPOCH = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
MASTER = """#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="main",DEFAULT=YES,AUTOSELECT=YES,URI="audio.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=1280x720,CODECS="avc1.64001f,mp4a.40.2",AUDIO="aud"
video.m3u8
"""


def _live(track: str, cadence: int, count: int, cue: tuple[int, int] | None = None) -> str:
    return live_playlist(track, cadence, count, epoch=EPOCH, cue=cue)


@asynccontextmanager
async def _service(tmp_path: Path, cue: tuple[int, int]) -> AsyncIterator[ChannelRuntime]:
    bodies = {"master.m3u8": MASTER, "video.m3u8": _live("v", 4, 10, cue),
              "audio.m3u8": _live("a", 5, 8)}

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=bodies[request.match_info["name"]],
                            content_type="application/vnd.apple.mpegurl")

    origin = web.Application()
    origin.router.add_get("/{name}", serve)
    runner = web.AppRunner(origin, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    config = StitcherConfig(data_dir=tmp_path, channels=[{
        "id": "b05", "origin_url": f"{base}/master.m3u8", "segment_duration": 4,
        "ladder": [{"name": "v0", "width": 1280, "height": 720, "bandwidth": 2_000_000}]}])
    app = create_app(config, store=MemoryStore(tmp_path))
    stitcher = web.AppRunner(app, access_log=None)
    await stitcher.setup()
    try:
        yield app[CHANNELS]["b05"]
    finally:
        await stitcher.cleanup()
        await runner.cleanup()


async def test_b05_break_without_a_common_span_is_content_in_every_rendition(
        tmp_path: Path) -> None:
    async with _service(tmp_path, (12, 24)) as runtime:
        await runtime.prepare()
        assert runtime.layout is not None
        assert (runtime.layout.period, runtime.unit) == (20, 20)
        mv = await runtime.multivariant()
        rids = [r.id for r in mv.renditions]
        assert len(rids) == 2
        bodies = {rid: (await runtime.render(rid, "default")).body.decode() for rid in rids}
        for rid, body in bodies.items():
            assert "#EXT-X-DISCONTINUITY" not in body, rid
            assert all(seg.uri.startswith("http") and "/content/" in seg.uri
                       for seg in parse_media(body).segments), rid
        (brk,) = runtime.breaks
        decision = runtime.cached_decision(brk.id, "default")
        assert decision is not None and not decision.pod.personalized
        assert decision.reason == "grids not aligned"
        assert runtime.metrics.unaligned_breaks.labels("b05")._value.get() == 1


async def test_break_on_common_boundaries_is_decided_normally(tmp_path: Path) -> None:
    """20-40 s holds a common span: decided as usual (no ad server here: no fill)."""
    async with _service(tmp_path, (20, 40)) as runtime:
        await runtime.prepare()
        for r in (await runtime.multivariant()).renditions:
            await runtime.render(r.id, "default")
        (brk,) = runtime.breaks
        decision = runtime.cached_decision(brk.id, "default")
        assert decision is not None and decision.reason != "grids not aligned"
        assert runtime.metrics.unaligned_breaks.labels("b05")._value.get() == 0
