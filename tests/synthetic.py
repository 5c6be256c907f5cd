"""Synthetic live playlists for tests: content on a fixed cadence with PDT, named
like corpus bug case B05's (content/<track>/segN), optionally with a CUE-OUT/CUE-IN
pair, so several tracks on different grids can be laid side by side."""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

from manifests.timing import format_duration, format_pdt


def live_playlist(track: str, cadence: int, count: int, *, epoch: datetime, msn: int = 0,
                  cue: tuple[int, int] | None = None, ext: str = "ts") -> str:
    """``count`` segments of ``cadence`` seconds from ``epoch``, numbered from ``msn``;
    ``cue`` = (start, end) seconds since ``epoch`` puts CUE-OUT/CUE-IN on those slots."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:5",
             f"#EXT-X-MEDIA-SEQUENCE:{msn}"]
    for k in range(count):
        t = k * cadence
        if cue is not None and t == cue[0]:
            lines.append(f"#EXT-X-CUE-OUT:DURATION={cue[1] - cue[0]}")
        if cue is not None and t == cue[1]:
            lines.append("#EXT-X-CUE-IN")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(epoch + timedelta(seconds=t))}")
        lines.append(f"#EXTINF:{format_duration(Fraction(cadence))},")
        lines.append(f"content/{track}/seg{msn + k}.{ext}")
    return "\n".join(lines) + "\n"
