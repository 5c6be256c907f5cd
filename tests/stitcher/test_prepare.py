"""Preparing a channel: probing fMP4 content (its init segment) and saying why it failed."""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest

import stitcher.channel as channel_mod
from manifests.multivariant import Rendition
from manifests.playlist import parse_media

PLAYLIST = "http://origin.example.com/live/ch1/v.m3u8"


@pytest.mark.parametrize(("map_uri", "segment_uri", "want"), [
    # Segments and init in a folder of their own: both relative to the playlist.
    ("fmp4/init.mp4", "fmp4/seg_7.m4s", "http://origin.example.com/live/ch1/fmp4/init.mp4"),
    ("init.mp4", "seg_7.m4s", "http://origin.example.com/live/ch1/init.mp4"),
    ("/abs/init.mp4", "v/seg_7.m4s", "http://origin.example.com/abs/init.mp4"),
    ("init.mp4", "https://cdn.example.com/x/seg_7.m4s",
     "http://origin.example.com/live/ch1/init.mp4"),
])
def test_an_fmp4_init_is_fetched_relative_to_the_playlist(
        monkeypatch: pytest.MonkeyPatch, map_uri: str, segment_uri: str, want: str) -> None:
    """RFC 8216bis 4.1: a URI in a playlist resolves against the playlist's URL.
    Found by a newcomer: ``EXT-X-MAP:URI="fmp4/init.mp4"`` over segments
    ``fmp4/seg.m4s`` was fetched as ``.../fmp4/fmp4/init.mp4`` (404), so the
    channel never got ready and no break was ever filled."""
    playlist = parse_media("\n".join([
        "#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:7",
        f'#EXT-X-MAP:URI="{map_uri}"', "#EXTINF:2.000,", segment_uri, ""]))
    fetched: list[str] = []

    async def fake_fetch(http: Any, url: str, **kw: Any) -> bytes:
        fetched.append(url)
        return b"x"

    async def fake_probe(src: Any, rid: str, **kw: Any) -> str:
        return "spec"

    monkeypatch.setattr(channel_mod, "fetch_bounded", fake_fetch)
    monkeypatch.setattr(channel_mod, "probe_rendition", fake_probe)
    me = SimpleNamespace(_http=None, _origin_timeout=1.0, cfg=SimpleNamespace(id="ch1"))
    r = Rendition(id="v0", kind="video", uri=PLAYLIST, grid="main")
    seg = playlist.rows[-1]
    spec = asyncio.run(channel_mod.ChannelRuntime._probe_content(me, r, seg, Fraction(2)))
    assert spec == "spec"
    assert fetched[0] == want
    assert fetched[1] == (segment_uri if "://" in segment_uri
                          else "http://origin.example.com/live/ch1/" + segment_uri)


def test_a_failed_preparation_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """/readyz lists the channel under ``failed``; the log names the reason."""
    async def failing() -> None:
        raise ValueError("probing http://o/enc/seg_9.ts: Invalid data found")

    async def run() -> None:
        task = asyncio.ensure_future(failing())
        await asyncio.gather(task, return_exceptions=True)
        me = SimpleNamespace(prepare_failures=0, _prepare_failed_at=0.0,
                             _clock=lambda: 5.0, cfg=SimpleNamespace(id="ch1"))
        with caplog.at_level(logging.WARNING, logger="stitcher.channel"):
            channel_mod.ChannelRuntime._prepare_done(me, task)
        assert me.prepare_failures == 1 and me._prepare_failed_at == 5.0

    asyncio.run(run())
    assert any("channel ch1 preparation failed" in r.getMessage()
               and "Invalid data found" in r.getMessage() for r in caplog.records)
