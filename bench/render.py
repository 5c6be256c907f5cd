"""Render benchmark: a 2-hour DVR playlist (3,600 x 2 s segments, 40 breaks).

Times, in the same process:
  (a) the m3u8 package's loads + dumps of the playlist (the baseline),
  (b) our full stitch of it from text (cold: nothing cached),
  (c) our refresh after the window slides by one segment (the same playlist
      with one more segment and the oldest gone), with the previous work cached,
and, for information, (b) again on the same playlist with relative segment URIs
(most origins' form; the stitch makes them absolute).
Prints the ratios; the last line is ``render_vs_m3u8=<b/a> refresh_vs_m3u8=<c/a>``.
Targets: b/a <= 0.1, c/a <= 0.005. A benchmark, not a test: nothing asserts on time.

Run: .venv/bin/python bench/render.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import m3u8

from manifests.breaks import update_breaks
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.pod import Candidate, plan_pod
from manifests.refresh import IncrementalParser
from manifests.splice import SpliceCache, SpliceOptions, splice

SEGMENTS = 3600
BREAKS = 40
BREAK_SEGMENTS = 15  # 30 s
EPOCH = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


ABSOLUTE = "https://origin.example.com/live/720p/"


def dvr_playlist(first: int, count: int = SEGMENTS, uri_prefix: str = ABSOLUTE) -> str:
    """A live DVR window with CUE-OUT/CONT/IN breaks spread evenly; segment URIs
    absolute by default, relative to the playlist with ``uri_prefix=""``."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2",
             f"#EXT-X-MEDIA-SEQUENCE:{first}", "#EXT-X-DISCONTINUITY-SEQUENCE:0"]
    spacing = SEGMENTS // BREAKS
    for msn in range(first, first + count):
        pdt = EPOCH + timedelta(seconds=2 * msn)
        lines.append("#EXT-X-PROGRAM-DATE-TIME:" + pdt.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        pos = msn % spacing
        if pos == 10:
            lines.append("#EXT-X-CUE-OUT:DURATION=30")
        elif 10 < pos < 10 + BREAK_SEGMENTS:
            lines.append(f"#EXT-X-CUE-OUT-CONT:ElapsedTime={2 * (pos - 10)},Duration=30")
        elif pos == 10 + BREAK_SEGMENTS:
            lines.append("#EXT-X-CUE-IN")
        lines.append("#EXTINF:2.000,")
        lines.append(f"{uri_prefix}seg_{msn:06d}.ts")
    return "\n".join(lines) + "\n"


class Uris:
    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.ts"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return None

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return None


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


ROUNDS = 7
REFRESHES_PER_ROUND = 3


def main() -> None:
    text = dvr_playlist(1000)
    relative = dvr_playlist(1000, uri_prefix="")  # most origins': made absolute by the stitch
    options = SpliceOptions(base_url="https://origin.example.com/live/720p.m3u8")
    ads = [Candidate("adA", Fraction(10)), Candidate("adB", Fraction(15))]
    uris = Uris()

    def baseline() -> None:
        m3u8.loads(text).dumps()

    def stitch(parser: IncrementalParser, body: str, state: dict[str, object]) -> str:
        playlist = parser.parse(body)
        seen: int = state.get("seen", -1)  # type: ignore[assignment]
        update = update_breaks(state.get("breaks", ()),  # type: ignore[arg-type]
                               observe(playlist, since_msn=seen))
        state["seen"] = playlist.last_msn
        pods = state.setdefault("pods", {})
        for b in update.breaks:
            if b.id not in pods:  # type: ignore[operator]
                pods[b.id] = plan_pod(b.id, ads, available=b.duration_hint or Fraction(30),  # type: ignore[index]
                                      nominal=Fraction(2), slate_segments=3)
        state["breaks"] = update.breaks
        ledger: Ledger = state.get("ledger", Ledger())  # type: ignore[assignment]
        cache = state.setdefault("cache", SpliceCache())
        result = splice(playlist, breaks=update.breaks, pods=pods, ledger=ledger,  # type: ignore[arg-type]
                        uris=uris, options=options, cache=cache)  # type: ignore[arg-type]
        state["ledger"] = ledger.append(result.new_entries, result.hwm, result.anchor)
        return result.text

    def cold() -> None:
        stitch(IncrementalParser(), text, {})

    def cold_relative() -> None:
        stitch(IncrementalParser(), relative, {})

    warm_parser = IncrementalParser()
    warm_state: dict[str, object] = {}
    stitch(warm_parser, text, warm_state)
    bodies = [dvr_playlist(1001 + i) for i in range(ROUNDS * REFRESHES_PER_ROUND)]
    it = iter(bodies)

    def refresh() -> None:
        stitch(warm_parser, next(it), warm_state)

    # Interleaved rounds, each ratio taken within its round and the median reported:
    # on a shared machine the load changes from one second to the next, and timing
    # all of (a) before all of (b) let it land on one side only.
    a_times, b_times, c_times, r_times = [], [], [], []
    for _ in range(ROUNDS):
        a_times.append(timed(baseline))
        b_times.append(timed(cold))
        r_times.append(timed(cold_relative))
        c_times.append(statistics.median(timed(refresh) for _ in range(REFRESHES_PER_ROUND)))
    a, b, c, r = (statistics.median(t) for t in (a_times, b_times, c_times, r_times))
    print(f"segments={SEGMENTS} breaks={BREAKS} rounds={ROUNDS} (medians)")
    print(f"(a) m3u8 loads+dumps      {a * 1000:8.2f} ms")
    print(f"(b) stitch from text      {b * 1000:8.2f} ms")
    print(f"(c) refresh (+1 segment)  {c * 1000:8.2f} ms")
    print(f"(b) with relative URIs    {r * 1000:8.2f} ms   "
          f"ratio {statistics.median(rt / at for at, rt in zip(a_times, r_times)):.4f}")
    render = statistics.median(bt / at for at, bt in zip(a_times, b_times))
    refresh_ratio = statistics.median(ct / at for at, ct in zip(a_times, c_times))
    print(f"render_vs_m3u8={render:.4f} refresh_vs_m3u8={refresh_ratio:.4f}")


if __name__ == "__main__":
    main()
