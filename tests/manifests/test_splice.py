"""Golden splice cases: successive origin windows in, whole stitched playlists out.

Each folder under ``splice_cases/`` holds ``params.json`` (the pod's candidate
ads, the nominal segment duration, options), ``origin-NN.m3u8`` (successive
reloads of one origin rendition) and ``expected-NN.m3u8`` (the stitched output
for that reload, the ledger carried from reload to reload). Whole files are
compared. Regenerate after a deliberate change with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/manifests/test_splice.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from manifests.breaks import BreakPolicy, update_breaks
from manifests.checker import Snapshot, check
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import parse_media
from manifests.pod import Candidate, plan_pod
from manifests.splice import SpliceOptions, breaks_to_decide, splice

CASES = Path(__file__).parent / "splice_cases"


class Uris:
    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.ts"


def run_case(folder: Path) -> list[tuple[str, str]]:
    params = json.loads((folder / "params.json").read_text())
    candidates = [Candidate(c["id"], Fraction(c["duration"])) for c in params["ads"]]
    policy = BreakPolicy(max_duration=Fraction(params.get("max_break", 120)))
    options = SpliceOptions(base_url=params.get("base_url", "https://origin.example.com/ch/v0.m3u8"),
                            passthrough_markers=params.get("passthrough_markers", False),
                            break_policy=policy, window_cap=params.get("window_cap"),
                            ad_dateranges=params.get("ad_dateranges", False))
    breaks: tuple = ()
    pods: dict = {}
    ledger = Ledger()
    outputs = []
    for origin in sorted(folder.glob("origin-*.m3u8")):
        playlist = parse_media(origin.read_text())
        breaks = update_breaks(breaks, observe(playlist), policy).breaks
        by_id = {b.id: b for b in breaks}
        for break_id, start in breaks_to_decide(playlist, breaks, ledger, policy).items():
            if break_id not in pods:
                b = by_id[break_id]
                available = b.duration_hint if b.duration_hint is not None else policy.max_duration
                pods[b.id] = plan_pod(b.id, candidates, available=available - start, start=start,
                                      nominal=Fraction(params.get("nominal", 2)),
                                      slate_segments=params.get("slate_segments", 3),
                                      min_slate=Fraction(params.get("min_slate", 2)))
        result = splice(playlist, breaks=breaks, pods=pods, ledger=ledger, uris=Uris(),
                        options=options)
        ledger = ledger.append(result.new_entries, result.hwm)
        outputs.append((origin.name.replace("origin-", "expected-"), result.text))
    return outputs


@pytest.mark.parametrize("folder", sorted(p for p in CASES.iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_golden(folder: Path) -> None:
    outputs = run_case(folder)
    assert outputs, f"{folder.name} has no origin-*.m3u8"
    if os.environ.get("UPDATE_GOLDEN"):
        for name, text in outputs:
            (folder / name).write_text(text)
    for name, text in outputs:
        expected = (folder / name).read_text()
        assert text == expected, f"{folder.name}/{name} differs"
    # Every golden output is itself conformant.
    origins = [p.read_text() for p in sorted(folder.glob("origin-*.m3u8"))]
    snapshots = [Snapshot(index=i, time=float(i), playlists={"v0": text},
                          origin={"v0": origins[i]})
                 for i, (_name, text) in enumerate(outputs)]
    stitcher_faults = [v for v in check(snapshots) if v.source == "stitcher"]
    assert stitcher_faults == []


@pytest.mark.parametrize("uri", [
    "https://cdn.example.com/live/seg.ts", "http://cdn.example.com/seg.ts", "seg.ts",
    "/abs/seg.ts", "../up/seg.ts", "https://cdn.example.com/a/./seg.ts", "seg.ts?token=1",
    "https://cdn.example.com/seg.ts\xa0", "https://cdn.example.com/se g.ts", "//cdn/seg.ts",
    "HTTPS://cdn.example.com/seg.ts",
])
@pytest.mark.parametrize("base", [None, "https://origin.example.com/live/720p.m3u8"])
def test_plain_runs_render_as_each_segment_would(uri: str, base: str | None) -> None:
    """Content between breaks is rendered as a run (raw text joined in one go when
    no URI needs resolving): the same text as rendering each segment on its own."""
    from manifests.splice import _Renderer

    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
    for i in range(4):
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:0{2 * i}.000Z", "#EXTINF:2.000,",
                  uri.replace("seg", f"seg{i}")]
    playlist = parse_media("\n".join(lines) + "\n")

    class Uris:
        def ad_segment(self, *args: object) -> str:
            return "ad.ts"

        def slate_segment(self, *args: object) -> str:
            return "slate.ts"

    renderer = _Renderer(SpliceOptions(base_url=base), Uris())
    assert renderer.plain_run(playlist.segments) == [
        renderer.content(seg, None, None) for seg in playlist.segments]
