"""Client-side tracking JSON across reloads, on an accelerated (manual) clock.

Over real HTTP with real media: a session polls its tracking URL and its video
playlist at every step of a break. Each ad's start must be the PDT of its first
segment in the stitched playlist, its duration the creative's, and every poll
must agree, however far the window has slid past the ad's first segments (a
client tracker that re-read a moving start would fire its beacons late or twice).
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fixtures.clock import ManualClock
from manifests.playlist import parse_media
from tests.harness import start_stack


async def test_tracking_times_hold_while_the_window_slides(media: object, assets_dir: Path,
                                                          tmp_path: Path) -> None:
    clock = ManualClock(start=1_800_100_000.0)
    origin = {"break_interval": 60, "break_duration": 30, "first_break_at": 20}
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True) as stack:
        session = await stack.start_session()
        video = (await stack.stitcher_renditions())[0]
        tracking_url = session.media_url(video).rsplit("/media/", 1)[0] + "/tracking"
        first_pdt: dict[tuple[str, str], datetime] = {}  # (break, item) -> first segment PDT
        seen: dict[tuple[str, str], set[tuple[str, float, tuple[str, ...]]]] = {}
        for _ in range(40):  # 80 s: the first break, whole, and content after it
            status, _, body = await stack.get(session.media_url(video))
            assert status == 200
            for seg in parse_media(body.decode()).segments:
                parts = seg.uri.split("/")
                if parts[0] == "ad" and parts[4] == "0.ts" and seg.pdt is not None:
                    first_pdt.setdefault((parts[2], parts[3]), seg.pdt)
            status, _, body = await stack.get(tracking_url)
            assert status == 200
            for avail in json.loads(body)["avails"]:
                for index, ad in enumerate(avail["ads"]):
                    # A session's own tracking names it (found by a newcomer: the
                    # fixture's ``session=[SESSIONID]`` came through unexpanded).
                    urls = [u for e in ad["trackingEvents"] for u in e["beaconUrls"]]
                    assert urls and all("[SESSIONID]" not in u for u in urls), urls
                    assert all(f"session={session.session_id}" in u for u in urls
                               if "session=" in u), urls
                    events = tuple(f"{e['eventType']}@{e['startTime']}"
                                   for e in ad["trackingEvents"])
                    seen.setdefault((avail["availId"], ad["adId"]), set()).add(
                        (ad["startTime"], ad["durationInSeconds"], events))
            clock.advance(2)
        assert len(first_pdt) >= 2, first_pdt  # a whole break's two ads were published
        assert {ad_id for _, ad_id in seen} == {"ad-a", "ad-b"}, seen
        for (avail, ad_id), versions in seen.items():
            assert len(versions) == 1, (ad_id, versions)  # the same on every poll
            start, duration, events = next(iter(versions))
            assert duration == {"ad-a": 10.0, "ad-b": 15.0}[ad_id]
            assert events[0] == "impression@" + start
            item = "0" if ad_id == "ad-a" else "1"
            if (avail, item) in first_pdt:  # its first segment was in a window polled
                pdt = first_pdt[(avail, item)]
                assert start == pdt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", (ad_id, start)


# ------------------------------------------------------------- every rendition
def _segments_by_ad(body: str) -> dict[tuple[str, int], dict[int, tuple[datetime, Any]]]:
    """(break, pod position) -> segment index -> (PDT, EXTINF) of one stitched playlist."""
    out: dict[tuple[str, int], dict[int, tuple[datetime, Any]]] = {}
    for seg in parse_media(body).segments:
        if not seg.uri.startswith("ad/") or "?msn=" in seg.uri or seg.pdt is None:
            continue  # content, or slate (its URIs carry the MSN)
        _kind, _rid, brk, item, name = seg.uri.split("/")[:5]
        out.setdefault((brk, int(item)), {})[int(name.split(".")[0])] = (seg.pdt, seg.duration)
    return out


async def test_event_times_fall_on_their_segments_in_every_rendition(tmp_path: Path) -> None:
    """The recorded demuxed stream (two video variants on 2 s segments, demuxed audio
    on its own 2 s grid, WebVTT subtitles on a 6 s grid; a 24 s break) through the
    service on its virtual clock, the session's tracking JSON and every rendition
    polled at every reload. For every ad of the JSON, in every rendition: its start
    is the PDT of the ad's first segment there; each event's time falls inside a
    segment of that same ad (break and pod position) in that rendition's grid; and
    in the video grid that segment is the one whose request fires the event
    server-side (the segment containing it, by the pod layout)."""
    import aiohttp
    from aiohttp import web

    from stitcher.app import CHANNELS, create_app
    from stitcher.config import ChannelConfig, StitcherConfig
    from stitcher.replay import (
        CHANNEL,
        FakeAdServer,
        FakeOrigin,
        Stream,
        StubConditioner,
        _channel_config,
        _mezzanine,
    )
    from stitcher.store import MemoryStore

    stream = Stream.load(Path(__file__).resolve().parents[2] / "fixtures" / "streams"
                         / "demuxed_audio_subs")
    clock = ManualClock(start=float(stream.reloads[0]["time"]))
    origin, ads = FakeOrigin(stream, clock), FakeAdServer(stream)
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    http = aiohttp.ClientSession()
    try:
        origin_base = await serve(origin.app())
        ads.base = await serve(ads.app())
        slate = tmp_path / "slate.mp4"
        slate.write_bytes(_mezzanine("slate", str(stream.spec.get("slate_duration", 6))))
        config = StitcherConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                                session_keys={"k": "tracking-json-key"}, channels=[
                                    ChannelConfig(**_channel_config(stream, origin_base,
                                                                    ads.base, slate))])
        app = create_app(config, store=MemoryStore(tmp_path / "state"),
                         conditioner=StubConditioner(),  # type: ignore[arg-type]
                         clock=clock.now)
        base = await serve(app)
        await app[CHANNELS][CHANNEL].warm_up()
        async with http.post(f"{base}/v1/session/{CHANNEL}", json={}) as resp:
            data = await resp.json()
        session = base + str(data["manifestUrl"]).rsplit("/", 1)[0]
        async with http.get(f"{session}/master.m3u8") as resp:
            master = await resp.text()
        rids = sorted({line.split("media/")[1].split(".m3u8")[0]
                       for line in master.splitlines() if "media/" in line})
        assert {r[0] for r in rids} == {"v", "a", "s"}, rids  # video, audio, subtitles

        placed: dict[str, dict[tuple[str, int], dict[int, tuple[datetime, Any]]]] = {
            rid: {} for rid in rids}
        avails: dict[tuple[str, int], set[str]] = {}
        for reload in stream.reloads:
            clock.set(float(reload["time"]))
            for rid in rids:
                async with http.get(f"{session}/media/{rid}.m3u8") as resp:
                    assert resp.status == 200
                    for key, segs in _segments_by_ad(await resp.text()).items():
                        placed[rid].setdefault(key, {}).update(segs)
            async with http.get(f"{session}/tracking") as resp:
                assert resp.status == 200
                for avail in (await resp.json())["avails"]:
                    for ad in avail["ads"]:
                        item = int(ad["trackingEvents"][0]["eventId"].split("-")[-2])
                        avails.setdefault((avail["availId"], item), set()).add(
                            json.dumps(ad, sort_keys=True))
    finally:
        await http.close()
        for r in reversed(runners):
            await r.cleanup()

    assert avails, "the break's ads were in the tracking JSON"
    nominal = 2  # the video grid's cadence: server-side beacons count its segments
    for (brk, item), versions in avails.items():
        assert len(versions) == 1, versions  # the same on every poll
        ad = json.loads(next(iter(versions)))
        start = datetime.fromisoformat(ad["startTime"])
        for rid in rids:
            segs = placed[rid].get((brk, item))
            assert segs, (rid, brk, item, sorted(placed[rid]))
            first_pdt, _d = segs[min(segs)]
            assert min(segs) == 0 and first_pdt == start, (rid, ad["startTime"], segs[0])
            for event in ad["trackingEvents"]:
                at = datetime.fromisoformat(event["startTime"])
                on = [i for i, (pdt, dur) in segs.items()
                      if pdt <= at < pdt + timedelta(seconds=float(dur))]
                assert len(on) == 1, (rid, event["eventType"], event["startTime"], segs)
                if rid.startswith("v"):
                    offset = (at - start).total_seconds()
                    assert on[0] == int(offset // nominal), (rid, event, on)
            # The ad's segments tile its span in this grid: no gap, no overlap.
            ordered = [segs[i] for i in sorted(segs)]
            for (p1, d1), (p2, _d2) in itertools.pairwise(ordered):
                assert p1 + timedelta(seconds=float(d1)) == p2, (rid, ordered)
            assert ordered[-1][0] + timedelta(seconds=float(ordered[-1][1])) >= \
                start + timedelta(seconds=ad["durationInSeconds"])
