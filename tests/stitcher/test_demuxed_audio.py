"""Demuxed audio: every ad and slate slot of an audio rendition is a real audio segment.

An origin whose variants are video only and whose audio is its own rendition
(EXT-X-MEDIA TYPE=AUDIO with a media playlist) gets its ads and slate conditioned
for that rendition too (an audio-only ``RenditionSpec``, probed from the content's
audio segments): before, the audio playlist listed ``ad/a0/...`` slots that all
answered 404 ("ad segment not available"), and players lost the sound or stalled
at every break (found by a newcomer).

Over real HTTP with real media (ManualClock): during a break of ad A, ad B (its
last segment padded) and slate, every ad and slate URI of the audio playlist
answers (ad segments through the session's 302) with an audio-only MPEG-TS
segment that ffprobe reads as AAC at the content's sample rate and channels, on
the content's audio PID, as long as its slot (within one AAC frame); and the
checker finds no stitcher violation over snapshots of every rendition.
"""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from fixtures.clock import ManualClock
from manifests.checker import check, format_text
from manifests.playlist import parse_media
from stitcher.ffmpeg import ffprobe_exe
from tests.harness import poll_renditions, start_stack

BREAK = 30  # ad A (10 s: 5 slots), ad B (15 s: 8 slots, the last padded), slate (2)


def _probe(path: Path) -> dict[str, Any]:
    probe = ffprobe_exe()
    assert probe is not None, "ffprobe is needed to read the segments back"
    out = subprocess.run([probe, "-v", "error", "-count_packets", "-show_streams",
                          "-show_format", "-of", "json", str(path)],
                         capture_output=True, check=True, timeout=60).stdout
    info: dict[str, Any] = json.loads(out)
    return info


async def test_every_ad_and_slate_slot_of_a_demuxed_audio_rendition_is_audio(
        media: Any, tmp_path: Path) -> None:
    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=tmp_path / "assets", warm_up=True,
                           demuxed_audio=True) as stack:
        session = await stack.start_session()
        mv = await stack.runtime.multivariant()
        audio = next(r for r in mv.renditions if r.kind == "audio")
        renditions = [r.id for r in mv.renditions]
        assert len(renditions) == 3, renditions  # two video-only variants and the audio

        # What the content's own audio segments are (the newest one the origin lists).
        origin_audio = stack.origin.media_playlist(await stack.origin_rendition(audio.id))
        assert origin_audio is not None
        status, _, body = await stack.get(urljoin(audio.uri,
                                                  parse_media(origin_audio).segments[-1].uri))
        assert status == 200
        (tmp_path / "content.ts").write_bytes(body)
        (content,) = _probe(tmp_path / "content.ts")["streams"]
        assert (content["codec_type"], content["codec_name"]) == ("audio", "aac"), content
        rate, channels = int(content["sample_rate"]), int(content["channels"])

        edge = stack.origin.live_edge_msn()
        assert edge is not None
        brk = stack.origin.insert_break(edge + 2, BREAK)
        # The break and content after it.
        polled = await poll_renditions(stack, session, renditions, brk.segments + 6, clock)
        seen = polled.seen
        faults = [v for v in check(polled.snapshots) if v.source == "stitcher"]
        assert faults == [], format_text(faults)

        media_base = f"{session.base}/media/"
        slots = [seen[audio.id][m] for m in range(brk.start_msn, brk.end_msn)]
        ads = [s for s in slots if s.uri.startswith("ad/")]
        slate = [s for s in slots if "/slate-" in s.uri]
        assert len(ads) == 13 and len(slate) == 2 and len(ads) + len(slate) == len(slots), [
            s.uri for s in slots]
        #: Per ad (pod position): audio played and slot time so far, so the cut
        #: points are the grid's (each within a frame of k x cadence), not only each
        #: segment's length.
        sums: dict[str, tuple[Fraction, Fraction]] = {}
        for i, seg in enumerate(slots):
            url = urljoin(media_base, seg.uri)
            status, headers, body = await stack.get(url)
            if seg.uri.startswith("ad/"):  # the session's route: beacons, then the asset
                assert status == 302, (seg.uri, status, body)
                location = headers["Location"]
                assert f"/{audio.id}/" in urlsplit(location).path, location
                status, headers, body = await stack.get(urljoin(url, location))
            assert status == 200, (seg.uri, status, body)
            assert headers["Content-Type"] == "video/mp2t", headers
            path = tmp_path / f"slot{i}.ts"
            path.write_bytes(body)
            info = _probe(path)
            (stream,) = info["streams"]  # audio only: no picture in an audio rendition
            assert stream["codec_type"] == "audio" and stream["codec_name"] == "aac", stream
            assert (int(stream["sample_rate"]), int(stream["channels"])) == (rate, channels)
            assert stream["id"] == content["id"], (stream["id"], content["id"])  # its PID
            played = Fraction(int(stream["nb_read_packets"]) * 1024, rate)
            assert abs(played - seg.duration) <= Fraction(1024, rate), (
                seg.uri, played, seg.duration)
            ad = seg.uri.split("/")[3] if seg.uri.startswith("ad/") else "slate"
            so_far = sums.get(ad, (Fraction(0), Fraction(0)))
            sums[ad] = (so_far[0] + played, so_far[1] + seg.duration)
            assert abs(sums[ad][0] - sums[ad][1]) <= Fraction(1024, rate), (seg.uri, sums)
        assert sorted(sums) == ["0", "1", "slate"], sums


async def test_an_audio_rendition_that_cannot_be_probed_fails_the_preparation(
        media: Any, tmp_path: Path, caplog: Any) -> None:
    """No audio segment to read: the channel is not prepared (so no ad is placed
    whose audio slots would 404), with the reason in the log and on /readyz."""
    from fixtures.origin import FaultRule
    from stitcher.conditioning import ConditioningError

    clock = ManualClock(start=1_850_000_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "state",
                           assets_dir=tmp_path / "assets", demuxed_audio=True) as stack:
        stack.origin.add_fault(FaultRule(kinds=frozenset({"segment"}),
                                         renditions=frozenset({"audio"}), status=404))
        caplog.set_level("ERROR", logger="stitcher.channel")
        try:
            await stack.runtime.prepare()
        except ConditioningError as exc:
            assert "cannot probe audio rendition a0" in str(exc), exc
        else:
            raise AssertionError("preparation succeeded without probing the audio")
        assert stack.runtime.specs == []
        assert any("preparation failed" in r.getMessage() and "audio rendition a0"
                   in r.getMessage() for r in caplog.records), caplog.text
        status, _, body = await stack.get("/readyz")
        assert status == 200 and json.loads(body)["failed"] == [stack.channel], body
