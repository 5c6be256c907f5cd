"""Writes the origin windows of the golden splice cases (run once; outputs are
then generated with UPDATE_GOLDEN=1 and reviewed by hand)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

CASES = Path(__file__).parent / "splice_cases"
EPOCH = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)


def window(first: int, count: int, marks: dict[int, list[str]], *, extra_header: list[str] = (),
           relative: bool = True, disc: set[int] = frozenset(), dsn: int = 0,
           durations: dict[int, str] | None = None, pdt: bool = True) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:2",
             f"#EXT-X-MEDIA-SEQUENCE:{first}"]
    if dsn:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}")
    lines += list(extra_header)
    t = EPOCH + timedelta(seconds=2 * first)
    for msn in range(first, first + count):
        lines += marks.get(msn, [])
        if msn in disc:
            lines.append("#EXT-X-DISCONTINUITY")
        if pdt:
            lines.append("#EXT-X-PROGRAM-DATE-TIME:" + t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
        d = (durations or {}).get(msn, "2.000")
        lines.append(f"#EXTINF:{d},")
        lines.append(f"seg_{msn}.ts" if relative else f"https://cdn.example.com/ch/seg_{msn}.ts")
        t += timedelta(seconds=float(d))
    return "\n".join(lines) + "\n"


def cue_out(start: int, n: int, duration: int, *, cue_in: int | None = None) -> dict[int, list[str]]:
    marks = {start: [f"#EXT-X-CUE-OUT:DURATION={duration}"]}
    for k in range(1, n):
        marks[start + k] = [f"#EXT-X-CUE-OUT-CONT:ElapsedTime={2 * k},Duration={duration}"]
    end = start + n if cue_in is None else cue_in
    marks[end] = ["#EXT-X-CUE-IN"]
    return marks


def write(name: str, params: dict, windows: list[str]) -> None:
    folder = CASES / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    for i, text in enumerate(windows):
        (folder / f"origin-{i:02d}.m3u8").write_text(text)


ADS = [{"id": "adA", "duration": "10"}, {"id": "adB", "duration": "15"}]


def main() -> None:
    # A 30 s break: ad A (5 slots), ad B (8 slots), slate (2 slots); window slides across it.
    marks = cue_out(10, 15, 30)
    write("cue_out_full_break", {"ads": ADS}, [window(f, 6, marks) for f in range(6, 30, 2)])
    # CUE-IN early: after 8 slots of a planned 30 s break (ad B is cut).
    marks = cue_out(10, 8, 30)
    write("early_cue_in", {"ads": ADS}, [window(f, 6, marks) for f in range(6, 22, 1)])
    # No CUE-IN at all: the break ends at its planned 20 s.
    marks = {10: ["#EXT-X-CUE-OUT:20"]}
    write("missing_cue_in", {"ads": ADS}, [window(f, 6, marks) for f in range(6, 24, 2)])
    # Joining mid-break: the first window starts inside the break (CONT only).
    marks = cue_out(4, 15, 30)
    write("join_mid_break", {"ads": ADS}, [window(f, 6, marks) for f in range(9, 24, 2)])
    # Encrypted fMP4 content: ads under METHOD=NONE, key restored with an explicit IV; each
    # fMP4 ad declares its own EXT-X-MAP after the discontinuity, the content's is restated
    # on return (B19).
    marks = cue_out(10, 5, 10)
    key = '#EXT-X-KEY:METHOD=AES-128,URI="keys/k1.key"'
    mp = '#EXT-X-MAP:URI="init.mp4"'
    write("key_and_map", {"ads": ADS, "fmp4_ads": True}, [window(f, 6, {**marks, f: [key, mp] + marks.get(f, [])})
                                         for f in range(6, 20, 2)])
    # Origin discontinuities and a served-window cap; origin DSN carried.
    marks = cue_out(12, 5, 10)
    write("origin_discontinuity_window_cap", {"ads": ADS, "window_cap": 4},
          [window(f, 6, marks, disc={11, 20}, dsn=3) for f in range(6, 24, 2)])
    # Marker passthrough and LL-HLS tags stripped.
    marks = cue_out(10, 5, 10)
    ll = ["#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.0", "#EXT-X-PART-INF:PART-TARGET=0.5"]
    write("passthrough_and_llhls", {"ads": ADS, "passthrough_markers": True,
                                     "ad_dateranges": True},
          [window(f, 6, marks, extra_header=ll) for f in range(6, 18, 3)])
    # Zero-duration and sub-slot breaks: nothing and slate-less remainder.
    write("short_breaks", {"ads": ADS},
          [window(f, 8, {8: ["#EXT-X-CUE-OUT:0"], 9: ["#EXT-X-CUE-IN"],
                         12: ["#EXT-X-CUE-OUT:1.5"], 13: ["#EXT-X-CUE-IN"]})
           for f in range(4, 14, 3)])
    # Byte ranges with implicit offsets: explicit after the break and at the window head.
    def ranged(first: int) -> str:
        text = window(first, 6, cue_out(10, 2, 4), relative=True)
        out = []
        for line in text.splitlines():
            if line.startswith("seg_"):
                msn = int(line[4:-3])
                out.append(f"#EXT-X-BYTERANGE:1000@{msn * 1000}" if msn % 5 == 0
                           else "#EXT-X-BYTERANGE:1000")
                line = "all.ts"
            out.append(line)
        return "\n".join(out) + "\n"
    write("byterange_after_break", {"ads": [{"id": "adE", "duration": "4"}]},
          [ranged(f) for f in range(6, 16, 2)])


if __name__ == "__main__":
    main()
