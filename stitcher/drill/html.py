"""The drill's HTML report: one self-contained page (inline CSS and SVG, no script,
no CDN, no build step) from the JSON report (pure: report in, text out).

Charts over drill time, degradation phases shaded and named: playlist latency
(p50, p99), availability and stale serves, upstream calls; then the checks,
the per-phase table, the breaks and the beacons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

W, H = 900, 220
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 22, 28
_PHASE_FILL = ("#f3d9d9", "#f6e7c8", "#dde8f5", "#e3f1de", "#eadff2", "#f0e0d0")


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi == lo else a + (v - lo) * (b - a) / (hi - lo)


def _polyline(ts: Sequence[float], ys: Sequence[float | None], t_end: float, y_max: float,
              color: str, *, log: bool = False) -> str:
    import math

    def y_of(v: float) -> float:
        if log:
            return _scale(math.log10(max(v, 1.0)), 0, math.log10(max(y_max, 10.0)),
                          H - PAD_B, PAD_T)
        return _scale(v, 0, y_max, H - PAD_B, PAD_T)

    runs: list[list[str]] = [[]]
    for t, v in zip(ts, ys, strict=True):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        x = _scale(t, 0, t_end, PAD_L, W - PAD_R)
        runs[-1].append(f"{x:.1f},{y_of(v):.1f}")
    return "".join(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" '
                   f'points="{" ".join(r)}"/>' for r in runs if len(r) > 1)


def _frame(phases: Sequence[Mapping[str, Any]], t_end: float, title: str,
           y_labels: Sequence[tuple[float, str]], body: str,
           legend: Sequence[tuple[str, str]],
           breaks: Sequence[tuple[float, float, str]] = ()) -> str:
    parts = [(f'<svg viewBox="0 0 {W} {H}" width="100%" role="img" '
             f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">')]
    for i, p in enumerate(phases):
        x0 = _scale(p["start"], 0, t_end, PAD_L, W - PAD_R)
        x1 = _scale(min(p["end"], t_end), 0, t_end, PAD_L, W - PAD_R)
        if p["degraded"]:
            parts.append(f'<rect x="{x0:.1f}" y="{PAD_T}" width="{max(0, x1 - x0):.1f}" '
                         f'height="{H - PAD_T - PAD_B}" fill="{_PHASE_FILL[i % len(_PHASE_FILL)]}">'
                         f'<title>{escape(p["name"])}: {escape(p["faults"])}</title></rect>')
        parts.append(f'<text x="{x0 + 3:.1f}" y="{PAD_T + 11}" font-size="10" '
                     f'fill="#555">{escape(p["name"])}</text>')
        parts.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{PAD_T}" y2="{H - PAD_B}" '
                     f'stroke="#bbb" stroke-dasharray="2,3"/>')
    for y, label in y_labels:
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#eee"/><text x="{PAD_L - 4}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end" fill="#444">{escape(label)}</text>')
    step = 10 if t_end <= 200 else 30
    t = 0
    while t <= t_end:
        x = _scale(t, 0, t_end, PAD_L, W - PAD_R)
        parts.append(f'<text x="{x:.1f}" y="{H - PAD_B + 14}" font-size="10" '
                     f'text-anchor="middle" fill="#444">{t:g}</text>')
        t += step
    parts.append(f'<text x="{W - PAD_R}" y="{H - 4}" font-size="10" text-anchor="end" '
                 f'fill="#444">drill time (s)</text>')
    parts.append(f'<text x="{PAD_L}" y="12" font-size="12" font-weight="bold">'
                 f'{escape(title)}</text>')
    lx = W - PAD_R - 10
    for color, name in reversed(legend):
        lx -= 24 + 6 * len(name)
        parts.append(f'<rect x="{lx:.1f}" y="4" width="10" height="3" fill="{color}"/>'
                     f'<text x="{lx + 13:.1f}" y="10" font-size="10">{escape(name)}</text>')
    parts.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" '
                 f'height="{H - PAD_T - PAD_B}" fill="none" stroke="#999"/>')
    for start, duration, name in breaks:  # ad breaks: a bar along the time axis
        x0 = _scale(start, 0, t_end, PAD_L, W - PAD_R)
        x1 = _scale(min(start + duration, t_end), 0, t_end, PAD_L, W - PAD_R)
        parts.append(f'<rect x="{x0:.1f}" y="{H - PAD_B - 4}" width="{max(1, x1 - x0):.1f}" '
                     f'height="4" fill="#1a202c"><title>break {escape(name)}</title></rect>')
    parts.append(body)
    parts.append("</svg>")
    return "".join(parts)


def _breaks(report: Mapping[str, Any]) -> list[tuple[float, float, str]]:
    return [(float(b["start"]), float(b["duration"]), str(b["id"])) for b in report["breaks"]]


def latency_chart(report: Mapping[str, Any]) -> str:
    import math

    s = report["series"]
    t_end = float(report["drill"]["duration"])
    values = [v for v in s["p99_ms"] + s["p50_ms"] if v is not None]
    top = max([10.0, *values])
    decades = [10.0 ** k for k in range(math.ceil(math.log10(top)) + 1)]
    labels = [(_scale(math.log10(d), 0, math.log10(max(top, 10.0)), H - PAD_B, PAD_T),
               f"{d:g} ms") for d in decades if d <= top * 1.0001]
    body = (_polyline(s["t"], s["p50_ms"], t_end, top, "#2b6cb0", log=True)
            + _polyline(s["t"], s["p99_ms"], t_end, top, "#c53030", log=True))
    return _frame(report["phases"], t_end, "Playlist latency seen by viewers (log scale)",
                  labels, body, [("#2b6cb0", "p50"), ("#c53030", "p99")], _breaks(report))


def availability_chart(report: Mapping[str, Any]) -> str:
    s = report["series"]
    t_end = float(report["drill"]["duration"])
    avail = [None if v is None else 100 * v for v in s["availability"]]
    stale = [None if v is None else 100 * v for v in s["stale_ratio"]]
    labels = [(_scale(v, 0, 100, H - PAD_B, PAD_T), f"{v}%") for v in (0, 25, 50, 75, 100)]
    body = (_polyline(s["t"], avail, t_end, 100, "#2f855a")
            + _polyline(s["t"], stale, t_end, 100, "#b7791f"))
    return _frame(report["phases"], t_end, "Playlist availability and announced stale serves",
                  labels, body, [("#2f855a", "available"), ("#b7791f", "stale (announced)")],
                  _breaks(report))


def upstream_chart(report: Mapping[str, Any]) -> str:
    s = report["series"]
    t_end = float(report["drill"]["duration"])
    top = max([4, *s["upstream_calls"]])
    labels = [(_scale(v, 0, top, H - PAD_B, PAD_T), f"{v:g}")
              for v in (0, top / 4, top / 2, 3 * top / 4, top)]
    body = _polyline(s["t"], s["upstream_calls"], t_end, top, "#553c9a")
    return _frame(report["phases"], t_end,
                  f"Upstream calls per {s.get('bucket_s', 1):g} s (fixture origin's own "
                  f"request log)", labels, body,
                  [("#553c9a", "origin playlist requests")], _breaks(report))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(_cell(c))}</td>" for c in r) + "</tr>"
                  for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _pct(v: float | None, places: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{places}f}%"


def render_html(report: Mapping[str, Any]) -> str:
    d = report["drill"]
    verdict = "PASSED" if report["ok"] else "FAILED"
    checks = "".join(
        f'<li class="{"ok" if c["ok"] else "fail"}"><b>{"ok" if c["ok"] else "FAIL"}</b> '
        f'{escape(c["name"])}: {escape(c["detail"])}</li>' for c in report["checks"])
    phases = _table(
        ["phase", "faults", "s", "reloads", "errors", "availability", "stale", "p50 ms",
         "p99 ms", "upstream / viewer", "drift max s", "breaks", "decisions", "no fill",
         "fill", "violations"],
        [[p["name"], p["faults"], f"{p['start']:g}-{p['end']:g}", p["playlist_requests"],
          p["playlist_errors"], _pct(p["availability"]), p["stale_serves"],
          p["latency_ms"]["p50"], p["latency_ms"]["p99"], p["upstream_calls_per_viewer"],
          p["live_edge_drift_s"]["max"], len(p["breaks"]), p["decision_records"],
          p["no_fill"], _pct(p["fill_rate"], 0), p["checker_violations"]]
         for p in report["phases"]])
    breaks = _table(
        ["break", "starts (s)", "phase", "decision records", "no fill", "fill rate",
         "VAST requests", "expected beacons", "per cohort"],
        [[b["id"], b["start"], b["phase"], b["decision_records"], b["no_fill"],
          _pct(b["fill_rate"], 0), b["vast_requests"], b["expected_beacons"],
          "; ".join(f"{c}: {', '.join(x['ads']) or 'no ad'} ({x['reason']})"
                    for c, x in b["decisions"].items())]
         for b in report["breaks"]])
    bc = report["beacons"]
    beacons = _table(["expected", "delivered", "lost", "duplicated",
                      "possible duplicates reported", "other hits"],
                     [[bc["expected"], bc["delivered"], bc["lost"], bc["duplicated"],
                       bc["possible_duplicates_reported"],
                       ", ".join(f"{k}: {v}" for k, v in bc["other_hits"].items()) or "none"]])
    violations = ""
    if report["violations"]:
        violations = "<h2>Checker violations</h2>" + _table(
            ["t (s)", "cohort", "rule", "rendition", "MSN", "message"],
            [[v["t"], v["cohort"], v["rule"], v["rendition"], v["msn"], v["message"][:160]]
             for v in report["violations"][:50]])
    t = report["totals"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>stitcher drill {escape(d['schedule'])}: {verdict}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #222; }}
h1 {{ font-size: 20px; margin-bottom: 4px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.verdict {{ display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff;
  background: {"#2f855a" if report["ok"] else "#c53030"}; }}
ul.checks {{ list-style: none; padding: 0; }} .checks li {{ margin: 2px 0; }}
.ok b {{ color: #2f855a; }} .fail b {{ color: #c53030; }}
table {{ border-collapse: collapse; font-size: 12px; width: 100%; }}
th, td {{ border: 1px solid #ddd; padding: 3px 5px; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }} .muted {{ color: #666; }}
figure {{ margin: 12px 0; }}
</style></head><body>
<h1>Fire drill <i>{escape(d['schedule'])}</i> <span class="verdict">{verdict}</span></h1>
<p class="muted">{escape(d['description'])}</p>
<p>{d['viewers_started']} of {d['viewers_requested']} viewers in {len(d['cohorts'])} cohorts
({escape(', '.join(d['cohorts']))}), {d['duration']:g} drill seconds at speed {d['speed']:g}
({d['wall_seconds']:g} s wall), {d.get('stitchers', 1)} stitcher process(es);
{t['playlist_requests']} playlist reloads, {t['ad_segment_requests']} ad segment requests,
p50 {_cell(t['latency_ms']['p50'])} ms, p99 {_cell(t['latency_ms']['p99'])} ms.</p>
<ul class="checks">{checks}</ul>
<figure>{latency_chart(report)}</figure>
<figure>{availability_chart(report)}</figure>
<figure>{upstream_chart(report)}</figure>
<p class="muted">Shaded: degradation phases (hover for the faults); black bars on the
time axis: ad breaks.</p>
<h2>Per phase</h2>{phases}
<h2>Breaks (decision records from the stitcher's store, VAST requests from the ad server's log)</h2>
{breaks}
<h2>Beacons (the fixture ad server's raw log against what viewers requested)</h2>{beacons}
{violations}
</body></html>
"""
