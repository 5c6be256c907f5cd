"""Cohort-URL mode: CDN-cacheable playlists per cohort, client-side tracking.

Real media (ads conditioned), a ManualClock moved one segment at a time into
a break. A cohort URL answers every viewer of the cohort with the same bytes,
cacheable by anyone for half a target duration, with an ETag (304) and the
once-compressed body for gzip; its ad segments point straight at the
conditioned assets (no session, so no per-session redirect) and the cohort's
tracking JSON lists the avail and its ads so players can beacon. The served
window is capped. Session-mode playlists of the same cohort stay private and
keep their per-session ad routes, on the same slots (one ledger).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, check, format_text
from manifests.playlist import parse_media
from tests.harness import Stack, start_stack

GEOS = ("us", "fr")
WINDOW_CAP = 4
PLAIN = {"Accept-Encoding": "identity"}


def _config(**extra: Any) -> dict[str, Any]:
    return {"cohort_urls": True, "window_cap": WINDOW_CAP,
            "cohorts": [{"attribute": "geo", "values": list(GEOS), "default": "us"}], **extra}


def _cohort_url(stack: Stack, cohort: str, rest: str, base: str | None = None) -> str:
    return f"{base or stack.base}/v1/cohort/{stack.channel}/{cohort}/{rest}"


def _ad_uris(text: str) -> list[str]:
    """Segment URIs of inserted ads (not content, not slate)."""
    return [s.uri for s in parse_media(text).segments
            if (s.uri.startswith("ad/") or "/assets/" in s.uri) and "/assets/slate-" not in s.uri]


async def test_cohort_playlists_are_cacheable_and_point_ads_at_assets(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    clock = ManualClock(start=1_830_000_000.0)
    origin = {"break_interval": 60, "break_duration": 30, "first_break_at": 20}
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True,
                           channel_config=_config()) as stack:
        rid = (await stack.stitcher_renditions())[0]
        url = _cohort_url(stack, "fr", f"media/{rid}.m3u8")

        # The multivariant: public, relative rendition URIs (valid under the cohort path).
        status, headers, body = await stack.get(_cohort_url(stack, "fr", "master.m3u8"),
                                                headers=PLAIN)
        assert status == 200, body
        assert headers["Cache-Control"] == "public, max-age=1"
        assert f"media/{rid}.m3u8" in body.decode() and "ETag" in headers

        # Reload step by step into the break, as a player (and the checker) would.
        snapshots: list[Snapshot] = []
        ads: list[str] = []
        text = ""
        for step in range(30):
            status, headers, body = await stack.get(url, headers=PLAIN)
            assert status == 200, body
            text = body.decode()
            snapshots.append(Snapshot(index=step, time=clock.now(), playlists={rid: text}))
            ads = _ad_uris(text)
            if len(ads) >= 2:
                break
            clock.advance(2)
            await asyncio.sleep(0)
        assert ads, "the break was stitched into the cohort playlist"
        faults = [v for v in check(snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        # Ad segments point straight at the conditioned assets, and they are there.
        assert all(uri.startswith("/assets/") for uri in ads), ads
        status, headers, _seg = await stack.get(ads[0])
        assert status == 200 and headers["Content-Type"] == "video/mp2t"

        # Caching headers; the same bytes for a second viewer of the cohort.
        assert headers_ok(await stack.get(url, headers=PLAIN), text)
        again = await stack.get(url, headers=PLAIN)
        assert again[2] == body
        etag = again[1]["ETag"]

        # If-None-Match: 304, no body, same validators.
        status, headers, body304 = await stack.get(url, headers={**PLAIN,
                                                                 "If-None-Match": etag})
        assert status == 304 and body304 == b""
        assert headers["ETag"] == etag and headers["Cache-Control"] == "public, max-age=1"

        # gzip: the once-compressed render, byte for byte the same every time.
        async with aiohttp.ClientSession(auto_decompress=False) as raw:
            zipped = []
            for _ in range(2):
                async with raw.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Encoding"] == "gzip"
                    assert resp.headers["Vary"] == "Accept-Encoding"
                    assert resp.headers["Cache-Control"] == "public, max-age=1"
                    zipped.append(await resp.read())
        assert zipped[0] == zipped[1]
        assert gzip.decompress(zipped[0]) == again[2]

        # The window is capped; the origin serves more.
        served = parse_media(text)
        origin_text = stack.origin.media_playlist(await stack.origin_rendition(rid))
        assert origin_text is not None
        assert len(parse_media(origin_text).segments) > WINDOW_CAP
        assert len(served.segments) == WINDOW_CAP

        # The cohort's tracking JSON: the avail with its ads and their beacons.
        status, headers, body = await stack.get(_cohort_url(stack, "fr", "tracking"),
                                                headers=PLAIN)
        assert status == 200, body
        assert headers["Cache-Control"] == "public, max-age=1"
        # Cacheable like the playlist (found by a newcomer: no ETag, 304 or gzip).
        assert headers["Vary"] == "Accept-Encoding" and headers["ETag"].startswith('"')
        tag = headers["ETag"]
        status, headers304, _ = await stack.get(_cohort_url(stack, "fr", "tracking"),
                                                headers={**PLAIN, "If-None-Match": tag})
        assert status == 304 and headers304["ETag"] == tag
        async with (aiohttp.ClientSession(auto_decompress=False) as raw,
                    raw.get(_cohort_url(stack, "fr", "tracking"),
                            headers={"Accept-Encoding": "gzip"}) as resp):
            assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["ETag"] == tag[:-1] + '-gz"'
            assert gzip.decompress(await resp.read()) == body
        avails = json.loads(body)["avails"]
        assert len(avails) == 1, avails
        assert avails[0]["ads"], avails
        for ad in avails[0]["ads"]:
            events = {e["eventType"] for e in ad["trackingEvents"]}
            assert "impression" in events and "start" in events, ad
            assert all(e["beaconUrls"] for e in ad["trackingEvents"]
                       if e["eventType"] == "impression"), ad
            # Shared by every viewer: the session macro is left for the player.
            assert any("[SESSIONID]" in u for e in ad["trackingEvents"]
                       for u in e["beaconUrls"]), ad

        # A session of the same cohort: private, per-session ad routes, the same slots.
        session = await stack.start_session(geo="fr")
        assert session.cohort == "fr"
        status, headers, body = await stack.get(session.media_url(rid), headers=PLAIN)
        assert status == 200
        assert headers["Cache-Control"].startswith("private")
        own = parse_media(body.decode())
        assert own.media_sequence == served.media_sequence
        assert own.discontinuity_sequence == served.discontinuity_sequence
        session_ads = _ad_uris(body.decode())
        assert session_ads and all(uri.startswith("ad/") for uri in session_ads), session_ads
        assert ([s.duration for s in own.segments] == [s.duration for s in served.segments])


def headers_ok(reply: tuple[int, Any, bytes], text: str) -> bool:
    status, headers, body = reply
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=1"  # 2 s target duration
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["ETag"].startswith('"')
    assert headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Encoding" not in headers
    return body.decode() == text


async def test_unknown_cohorts_and_channels_without_cohort_urls_are_404(tmp_path: Path) -> None:
    async with start_stack(clock=ManualClock(), data_dir=tmp_path / "a",
                           channel_config=_config(), subtitles=True) as stack:
        for cohort in ("de", "us.fr", "default", "FR", "fr%2F..", "x" * 300):
            for rest in ("master.m3u8", "media/s0.m3u8", "tracking"):
                status, headers, body = await stack.get(_cohort_url(stack, cohort, rest))
                assert status == 404, (cohort, rest, body)
                reply = json.loads(body)
                assert reply["error"] == "not_found" and "cohort" in reply["reason"], reply
                assert headers["Cache-Control"] == "no-store"
        status, _, body = await stack.get("/v1/cohort/nochannel/us/master.m3u8")
        assert status == 404 and "nochannel" in json.loads(body)["reason"]
        status, _, _ = await stack.get(_cohort_url(stack, "us", "master.m3u8"))
        assert status == 200
        # Subtitle slots inside a break: the same generated WebVTT as for sessions.
        from tests.stitcher.test_routes import decided

        await decided(stack, "us", "b1")
        status, headers, body = await stack.get(_cohort_url(stack, "us",
                                                            "media/ad/s0/b1/0/3.vtt"))
        assert status == 200 and body.startswith(b"WEBVTT\n")
        assert headers["Cache-Control"].startswith("public")
        status, _, body = await stack.get(_cohort_url(stack, "us", "media/ad/v0/b1/0/3.ts"))
        assert status == 404 and json.loads(body)["error"] == "not_found"
    async with start_stack(clock=ManualClock(), data_dir=tmp_path / "b") as stack:
        status, _, body = await stack.get(_cohort_url(stack, "default", "master.m3u8"))
        assert status == 404
        assert "cohort URLs" in json.loads(body)["reason"]


async def _metric(stack: Stack, instance: int, name: str, **labels: str) -> float:
    status, _, body = await stack.get(f"{stack.bases[instance]}/metrics")
    assert status == 200
    return sum(s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_instances_share_renders_through_redis(tmp_path: Path, redis_url: str) -> None:
    """An instance that did not render serves another's render (same bytes, same
    ETag) from the shared cache instead of rendering it again."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    await client.flushdb()
    clock = ManualClock(start=1_830_100_000.0)
    async with start_stack(clock=clock, data_dir=tmp_path, instances=2,
                           channel_config=_config(),
                           stitcher_config={"redis_url": redis_url}) as stack:
        rid = (await stack.stitcher_renditions())[0]
        for _step in range(5):
            first = await stack.get(_cohort_url(stack, "fr", f"media/{rid}.m3u8"),
                                    headers=PLAIN)
            second = await stack.get(_cohort_url(stack, "fr", f"media/{rid}.m3u8",
                                                 stack.bases[1]), headers=PLAIN)
            assert first[0] == second[0] == 200
            assert first[2] == second[2] and first[1]["ETag"] == second[1]["ETag"]
            clock.advance(2)
            await asyncio.sleep(0)
        assert await _metric(stack, 1, "stitcher_render_cache_total", result="shared") == 5
        assert await _metric(stack, 0, "stitcher_render_cache_total", result="shared") == 0
        # Only instance 0 rendered: one render per origin version.
        assert await _metric(stack, 1, "stitcher_render_seconds_count") == 0
        keys = [k async for k in client.scan_iter(match="ss:render:*")]
        assert keys and all(b":cohort:" in k for k in keys), keys
        ttl = await client.pttl(keys[0])
        assert 0 < ttl <= 3 * 2 * 1000  # a few target durations
    await client.aclose()


def test_ad_uris_do_not_depend_on_this_instances_disk(tmp_path: Path) -> None:
    """Found by a newcomer (two instances, one Redis): an instance that did not have
    a creative on its disk yet named the cohort redirect route for its segments,
    one that had it named the asset, and the shared render cache served either
    (SEGMENT_CHANGED, once). Both name the asset by its layout now, and so does
    the fMP4 init, in cohort and session mode; the route stays only for a
    rendition the ladder does not know."""
    from fractions import Fraction

    from manifests.pod import ItemKind, PodItem
    from stitcher.ads import CreativeLibrary
    from stitcher.channel import _CohortUris, _Uris
    from stitcher.conditioning import Conditioner, RenditionSpec
    from stitcher.metrics import Metrics

    metrics = Metrics()
    empty = CreativeLibrary(tmp_path, Conditioner(metrics=metrics), metrics)
    specs = [RenditionSpec("v0", 640, 360, 800_000, Fraction(25)),
             RenditionSpec("v1", 1280, 720, 2_000_000, Fraction(25), container="fmp4")]
    item = PodItem(ItemKind.AD, "c0ffee", Fraction(10), Fraction(0), Fraction(10), 5)
    cohort = {rid: _CohortUris(rid, "video", empty, "/assets", "slate-x", lambda: specs)
              for rid in ("v0", "v1", "v9")}
    assert cohort["v0"].ad_segment("b1", 0, item, 3) == "/assets/c0ffee/v0/seg_00003.ts"
    assert cohort["v1"].ad_segment("b1", 0, item, 3) == "/assets/c0ffee/v1/seg_00003.m4s"
    assert cohort["v9"].ad_segment("b1", 0, item, 3) == "ad/v9/b1/0/3.ts"
    assert cohort["v0"].ad_map("b1", 0, item) is None
    assert cohort["v1"].ad_map("b1", 0, item) == "/assets/c0ffee/v1/init.mp4"
    session = _Uris("v1", "video", empty, "/assets", "slate-x", lambda: specs)
    assert session.ad_segment("b1", 0, item, 3) == "ad/v1/b1/0/3.ts"
    assert session.ad_map("b1", 0, item) == "/assets/c0ffee/v1/init.mp4"
    subtitles = _CohortUris("s0", "subtitles", empty, "/assets", "slate-x", lambda: specs)
    assert subtitles.ad_segment("b1", 0, item, 3) == "ad/s0/b1/0/3.vtt"
    # The slate too, in both modes (it named a route that does not exist).
    for uris in (cohort["v1"], session):
        assert uris.slate_segment("b1", 1, 2, 77) == "/assets/slate-x/v1/seg_00002.m4s"
        assert uris.slate_map("b1", 1) == "/assets/slate-x/v1/init.mp4"
    assert cohort["v0"].slate_segment("b1", 1, 2, 77) == "/assets/slate-x/v0/seg_00002.ts"
