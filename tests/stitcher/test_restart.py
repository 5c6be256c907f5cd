"""A restart mid-stream in the embedded mode sends no player backwards.

The stitcher is stopped in the middle of an ad break and started again on the
same data folder (ledgers, frozen decisions and breaks are kept in files). A
session from before the restart keeps reloading on the new instance: across
the whole run, the checker finds nothing the stitcher introduced: the same
MSN names the same ad segment before and after, the discontinuity sequence
carries on, and the break ends where it would have.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, check, format_text
from manifests.playlist import parse_media
from tests.harness import Stack, default_start_epoch, start_stack


async def _reload(stack: Stack, paths: dict[str, str], snapshots: list[Snapshot],
                  steps: int) -> None:
    assert isinstance(stack.clock, ManualClock)
    for _ in range(steps):
        playlists, origins = {}, {}
        for rid, path in paths.items():
            status, _headers, body = await stack.get(path)
            assert status == 200, body
            playlists[rid] = body.decode()
            origins[rid] = stack.origin.media_playlist(await stack.origin_rendition(rid))
        snapshots.append(Snapshot(index=len(snapshots), time=stack.clock.now(),
                                  playlists=playlists, origin=origins))
        stack.clock.advance(2)
        await asyncio.sleep(0)


async def _first_run(clock: ManualClock, media: object, assets_dir: Path, state: Path,
                     snapshots: list[Snapshot], steps: int) -> tuple[dict, dict[str, str]]:
    """A first instance on ``state``: one session reloads every rendition ``steps``
    times. Returns the origin config and the session's media paths per rendition."""
    origin = {"break_interval": 60, "break_duration": 30, "first_break_at": 20,
              "start_epoch": default_start_epoch(clock, Fraction(2), 6)}
    async with start_stack(clock=clock, media=media, origin=origin, data_dir=state,
                           assets_dir=assets_dir, warm_up=True) as stack:
        session = await stack.start_session()
        paths = {rid: urlsplit(session.media_url(rid)).path
                 for rid in await stack.stitcher_renditions()}
        await _reload(stack, paths, snapshots, steps)
    return origin, paths


@pytest.mark.parametrize("warm_up", [True, False], ids=["warmed-up", "cold"])
async def test_restart_mid_break_keeps_numbering(media: object, assets_dir: Path,
                                                 tmp_path: Path, warm_up: bool) -> None:
    """``cold``: the restarted stitcher is not warmed up, its first render comes
    before its ladder and slate are known (found by a newcomer: a published slate
    segment was rewritten)."""
    clock = ManualClock(start=1_810_000_000.0)
    state = tmp_path / "state"
    snapshots: list[Snapshot] = []
    # 20 reloads = 40 s: into the middle of the break
    origin, paths = await _first_run(clock, media, assets_dir, state, snapshots, 20)
    before = snapshots[-1].playlists
    assert any("/ad/" in line or line.startswith("ad/") for text in before.values()
               for line in text.splitlines()), "the restart must happen inside the break"

    async with start_stack(clock=clock, media=media, origin=origin, data_dir=state,
                           assets_dir=assets_dir, warm_up=warm_up) as stack:
        await _reload(stack, paths, snapshots, 30)

    faults = [v for v in check(snapshots) if v.source == "stitcher"]
    assert faults == [], format_text(faults)
    last = parse_media(snapshots[-1].playlists[next(iter(paths))])
    first = parse_media(snapshots[0].playlists[next(iter(paths))])
    assert last.discontinuity_sequence > first.discontinuity_sequence


async def test_an_origin_behind_the_ledger_is_never_served(media: object, assets_dir: Path,
                                                           tmp_path: Path) -> None:
    """B02's kind through the service: a new instance on the same state whose origin
    window ends below what was already published (here: its clock is behind, so
    the origin lists older segments) does not serve it. With no last good render
    yet it answers 503 with Retry-After; once the origin has caught up it serves,
    and across both instances the media sequence never went back."""
    clock = ManualClock(start=1_820_000_000.0)
    state = tmp_path / "state"
    snapshots: list[Snapshot] = []
    origin, paths = await _first_run(clock, media, assets_dir, state, snapshots, 10)
    published = parse_media(snapshots[-1].playlists[next(iter(paths))]).media_sequence

    behind = ManualClock(start=clock.now() - 12)  # six segments behind the ledger
    async with start_stack(clock=behind, media=media, origin=origin, data_dir=state,
                           assets_dir=assets_dir, warm_up=True) as stack:
        for path in paths.values():
            status, headers, body = await stack.get(path)
            assert status == 503, body
            assert int(headers["Retry-After"]) >= 1
        behind.advance(14)
        await _reload(stack, paths, snapshots, 5)
    assert parse_media(snapshots[-1].playlists[next(iter(paths))]).media_sequence > published
    faults = [v for v in check(snapshots) if v.source == "stitcher"]
    assert faults == [], format_text(faults)
