"""A second opinion from a real player's parser.

Stitched outputs (every golden splice case, and streams from the property
generator across all three grids) are parsed by hls.js's own M3U8 parser under
Node (``tests/node/hlsjs_parse.mjs``, hls.js pinned in package.json). It must
agree with ours on every fragment's media sequence number, discontinuity
counter (hls.js's ``cc``), start time and PDT.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from manifests.playlist import parse_media

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "node" / "hlsjs_parse.mjs"
CASES = Path(__file__).parent / "splice_cases"


def hlsjs_parse(playlists: list[tuple[str, str]]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "hls.js").exists():
        pytest.skip("node and node_modules/hls.js are needed (scripts/setup --test installs them)")
    payload = json.dumps([{"url": url, "text": text} for url, text in playlists])
    done = subprocess.run([node, str(SCRIPT)], input=payload, capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stitched_outputs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CASES.glob("*/expected-*.m3u8")):
        out.append((f"https://stitcher.example.com/{path.parent.name}/{path.stem}.m3u8",
                    path.read_text()))
    from tests.manifests import test_splice_properties as prop

    planned = [prop.PlannedBreak(12, 30, 36, "cue-out", 7),
               prop.PlannedBreak(60, 18, None, "oatcls", 8),
               prop.PlannedBreak(96, 12, 108, "daterange", 9)]
    snapshots, _ = prop.stitch_stream(planned, list(range(18, 130, 2)), 18)
    for cohort, snaps in snapshots.items():
        for snap in snaps:
            for rid, text in snap.playlists.items():
                out.append((f"https://stitcher.example.com/{cohort}/{rid}-{snap.index}.m3u8",
                            text))
    return out


def test_hlsjs_agrees_with_our_parser() -> None:
    playlists = stitched_outputs()
    theirs = hlsjs_parse(playlists)
    assert len(theirs) == len(playlists)
    compared = 0
    for (url, text), details in zip(playlists, theirs):
        ours = parse_media(text)
        assert details["startSN"] == ours.media_sequence, url
        assert details["startCC"] == ours.discontinuity_sequence, url
        assert len(details["fragments"]) == len(ours.segments), url
        start = Fraction(0)
        for frag, seg in zip(details["fragments"], ours.segments):
            assert frag["sn"] == seg.msn, (url, seg.msn)
            assert frag["cc"] == seg.discontinuity_sequence, (url, seg.msn)
            assert abs(Fraction(frag["start"]) - start) < Fraction(1, 1000), (url, seg.msn)
            assert abs(Fraction(frag["duration"]) - seg.duration) < Fraction(1, 10**6)
            if seg.pdt is not None:
                assert frag["pdt"] == int(seg.pdt.timestamp() * 1000), (url, seg.msn)
            start += seg.duration
            compared += 1
    assert compared > 500
