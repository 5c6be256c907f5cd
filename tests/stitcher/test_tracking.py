"""Client-side tracking JSON across reloads, on an accelerated (manual) clock.

Over real HTTP with real media: a session polls its tracking URL and its video
playlist at every step of a break. Each ad's start must be the PDT of its first
segment in the stitched playlist, its duration the creative's, and every poll
must agree, however far the window has slid past the ad's first segments (a
client tracker that re-read a moving start would fire its beacons late or twice).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

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
