"""The drill report: per-phase and per-break figures and the verdict (pure).

:func:`build_report` takes what was observed (:class:`Raw`: the viewers' own
tuples, the fixture origin's request log, the fixture ad server's VAST
requests and raw beacon hits, the decision records read from the stitcher's
store, the poller's checker violations) and returns the JSON-ready report.
Nothing here trusts the stitcher's own account but ``possible_duplicates``
(the one figure only the stitcher can know: a beacon resent after a consumer
died between sending and recording it), which the verdict uses to tell a
reported duplicate from an unreported one.

Expected beacons come from what viewers requested, with the stitcher's
documented rule (``stitcher/beacons.py``): impression and start on an ad's
first segment, each quartile on the segment holding it, complete on the
segment holding its last frame, skipped events caught up, nothing for a
session whose first request for the ad was not its first segment.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from stitcher.drill.schedule import Phase, Schedule

EVENTS = ("impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete")
_REDIRECT = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class BreakInfo:
    id: str
    start: float          # drill seconds
    duration: float


@dataclass
class Raw:
    """What the drill gathered; times in drill seconds."""

    schedule: Schedule
    viewers_requested: int
    viewers_started: int
    session_failures: list[str]
    playlists: Sequence[tuple[float, float, int, bool, float | None, str]]
    ad_segments: Sequence[tuple[float, float, int]]
    content: Sequence[tuple[float, float, int]]
    ad_requests: Mapping[tuple[str, str, int], Sequence[int]]
    sessions: Mapping[str, str]
    #: Origin requests from the stitchers: (t, kind, status).
    origin_requests: Sequence[tuple[float, str, int]]
    #: VAST requests: (t, break id, cohort, fault or None).
    vast_requests: Sequence[tuple[float, str, str, str | None]]
    #: Beacon hits: (session id, ad id, event, query string).
    hits: Sequence[tuple[str, str, str, str]]
    #: Frozen decisions: break id -> cohort -> pod JSON (``stitcher.store.pod_to_json``).
    decisions: Mapping[str, Mapping[str, str]]
    breaks: Sequence[BreakInfo]
    #: Store ids of every break the origin signalled (late ones included).
    known_breaks: set[str]
    segment: float
    violations: Sequence[tuple[float, str, dict[str, Any]]]
    poller_fetch_errors: Sequence[tuple[float, str, str, str]]
    poller_reloads: int
    possible_duplicates: float
    errors: Mapping[str, int] = field(default_factory=dict)
    #: Ads a request of which got no answer: the stitcher may or may not have seen it,
    #: so their beacons are left out of the comparison (and the ad segment error fails).
    uncertain: set[tuple[str, str, int]] = field(default_factory=set)
    ad_retries: int = 0
    #: Beacons the stitchers dead-lettered after their last attempt (None: unknown).
    dead_letters: int | None = None
    #: Beacons still queued or deferred when the drill stopped waiting for delivery
    #: (None: it did not give up): "lost" may be late, and the report says so.
    beacons_waiting: int | None = None
    setup: Mapping[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _r(x: float | None, places: int = 1) -> float | None:
    return None if x is None else round(x, places)


def trigger_segments(duration: float, cadence: float) -> dict[str, int]:
    """The ad segment index each tracked event fires on (``stitcher/beacons.py``)."""
    n = max(1, math.ceil(duration / cadence - 1e-9))
    return {"impression": 0, "start": 0,
            "firstQuartile": min(n - 1, math.floor(duration / 4 / cadence + 1e-9)),
            "midpoint": min(n - 1, math.floor(duration / 2 / cadence + 1e-9)),
            "thirdQuartile": min(n - 1, math.floor(3 * duration / 4 / cadence + 1e-9)),
            "complete": n - 1}


def _records(raw: Raw) -> dict[str, dict[str, dict[str, Any]]]:
    """Decision records parsed: ``{"pod": ..., "reason": ..., "ads": [...]}``."""
    return {b: {c: json.loads(text) for c, text in by_cohort.items()}
            for b, by_cohort in raw.decisions.items()}


def expected_beacons(raw: Raw) -> tuple[Counter[tuple[str, str, str]], Counter[str]]:
    """(expected count per (session, ad id, event), expected count per break id)."""
    records = _records(raw)
    expected: Counter[tuple[str, str, str]] = Counter()
    per_break: Counter[str] = Counter()
    for (sid, brk, position), segments in raw.ad_requests.items():
        if (sid, brk, position) in raw.uncertain:
            continue
        record = records.get(brk, {}).get(raw.sessions.get(sid, ""))
        if record is None or not segments:
            continue
        ad = next((a for a in record.get("ads", []) if a["item"] == position), None)
        if ad is None:
            continue  # slate, or content underneath
        if segments[0] != 0:
            continue  # joined the ad late: not counted for it (stitcher/beacons.py)
        reached = max(segments)
        for event, seg in trigger_segments(float(Fraction(ad["duration"])),
                                           raw.segment).items():
            if seg <= reached:
                expected[(sid, str(ad["ad_id"]), event)] += 1
                per_break[brk] += 1
    return expected, per_break


def _fill(pod: Mapping[str, Any], nominal: float) -> float:
    if not pod.get("personalized", True):
        return 0.0
    ads = sum(float(i["span"]) for i in pod["items"] if i["kind"] == "ad")
    return min(1.0, ads / nominal) if nominal > 0 else 0.0


def _in(t: float, phase: Phase, last: bool) -> bool:
    return phase.start <= t < phase.end or (last and t >= phase.end)


def build_report(raw: Raw) -> dict[str, Any]:
    s = raw.schedule
    phases = s.phases
    n_viewers = max(1, raw.viewers_started)
    records = _records(raw)
    expected, expected_by_break = expected_beacons(raw)
    observed: Counter[tuple[str, str, str]] = Counter()
    other_hits: Counter[str] = Counter()
    uncertain_sessions = {sid for sid, _b, _p in raw.uncertain}
    for sid, ad_id, event, _query in raw.hits:
        if sid in uncertain_sessions:
            other_hits["(session with an unanswered ad request)"] += 1
        elif event in EVENTS and sid in raw.sessions:
            observed[(sid, ad_id, event)] += 1
        else:
            other_hits[event if sid in raw.sessions else f"{event} (not a viewer)"] += 1
    lost_keys = {k: n - observed[k] for k, n in expected.items() if n > observed[k]}
    dup_keys = {k: n - expected[k] for k, n in observed.items() if n > expected[k]}
    lost, duplicated = sum(lost_keys.values()), sum(dup_keys.values())
    # Duplicates by kind: the same URL again (one queued beacon sent twice: a queue
    # resend) or another URL (its macros expanded anew: the event queued twice).
    urls: Counter[tuple[str, str, str, str]] = Counter(
        h for h in raw.hits if (h[0], h[1], h[2]) in dup_keys)
    resent = min(duplicated, sum(n - 1 for n in urls.values()))
    vast_by_break: Counter[str] = Counter(b for _, b, _, _ in raw.vast_requests)

    breaks_out: list[dict[str, Any]] = []
    for b in raw.breaks:
        by_cohort = {c: r["pod"] for c, r in records.get(b.id, {}).items()}
        decisions = {c: {"personalized": p.get("personalized", True),
                         "ads": [a["ad_id"] for a in records[b.id][c].get("ads", [])],
                         "reason": records[b.id][c].get("reason", ""),
                         "ad_seconds": sum(float(i["span"]) for i in p["items"]
                                           if i["kind"] == "ad"),
                         "slate_seconds": sum(float(i["span"]) for i in p["items"]
                                              if i["kind"] == "slate"),
                         "fill": round(_fill(p, b.duration), 3)}
                     for c, p in sorted(by_cohort.items())}
        no_fill = sum(1 for d in decisions.values() if d["fill"] == 0)
        breaks_out.append({
            "id": b.id, "start": round(b.start, 2), "duration": b.duration,
            "phase": s.phase_at(b.start).name,
            "decision_records": len(by_cohort), "no_fill": no_fill,
            "fill_rate": round(sum(d["fill"] for d in decisions.values())
                               / len(s.cohorts), 3),
            "vast_requests": vast_by_break[b.id],
            "expected_beacons": expected_by_break[b.id],
            "decisions": decisions,
        })
    stray_decisions = sorted(set(raw.decisions) - raw.known_breaks - {b.id for b in raw.breaks})

    phases_out: list[dict[str, Any]] = []
    for i, p in enumerate(phases):
        last = i == len(phases) - 1
        pl = [x for x in raw.playlists if _in(x[0], p, last)]
        ok = [x for x in pl if x[2] == 200]
        lat = [x[1] for x in pl if x[2] != 0]
        drift = [x[4] for x in pl if x[4] is not None]
        ads = [x for x in raw.ad_segments if _in(x[0], p, last)]
        content = [x for x in raw.content if _in(x[0], p, last)]
        upstream = [x for x in raw.origin_requests if _in(x[0], p, last)]
        brks = [b for b in breaks_out if _in(b["start"], p, last)]
        fills = [d["fill"] for b in brks for d in b["decisions"].values()]
        phases_out.append({
            "name": p.name, "start": p.start, "end": p.end, "faults": p.describe(),
            "degraded": p.degraded,
            "playlist_requests": len(pl),
            "playlist_errors": len(pl) - len(ok),
            "availability": round(len(ok) / len(pl), 5) if pl else None,
            "stale_serves": sum(1 for x in ok if x[3]),
            "latency_ms": {"p50": _r(percentile(lat, 50)), "p99": _r(percentile(lat, 99)),
                           "max": _r(max(lat) if lat else None)},
            "ad_segment_requests": len(ads),
            "ad_segment_errors": sum(1 for x in ads if x[2] not in _REDIRECT),
            "content_heads": len(content),
            "content_errors": sum(1 for x in content if x[2] != 200),
            "upstream_calls": len(upstream),
            "upstream_calls_per_viewer": round(len(upstream) / n_viewers, 4),
            "upstream_errors": sum(1 for x in upstream if x[2] >= 400),
            "vast_requests": sum(1 for x in raw.vast_requests if _in(x[0], p, last)),
            "live_edge_drift_s": {"p50": _r(percentile(drift, 50)),
                                  "max": _r(max(drift) if drift else None)},
            "breaks": [b["id"] for b in brks],
            "decision_records": sum(b["decision_records"] for b in brks),
            "no_fill": sum(b["no_fill"] for b in brks),
            "fill_rate": round(sum(fills) / len(fills), 3) if fills else None,
            "expected_beacons": sum(b["expected_beacons"] for b in brks),
            "checker_violations": sum(1 for t, _, _ in raw.violations if _in(t, p, last)),
            "poller_fetch_errors": sum(1 for x in raw.poller_fetch_errors
                                       if _in(x[0], p, last)),
        })

    beacons = {"expected": sum(expected.values()), "delivered": sum(observed.values()),
               "lost": lost, "duplicated": duplicated,
               "duplicated_same_url": resent,
               "possible_duplicates_reported": int(raw.possible_duplicates),
               "waiting_when_given_up": raw.beacons_waiting,
               "dead_lettered": raw.dead_letters,
               "other_hits": dict(sorted(other_hits.items())),
               # (session, ad id, event): how many missing / extra, the first few
               "lost_sample": [[*k, n] for k, n in sorted(lost_keys.items())[:20]],
               "duplicated_sample": [[*k, n] for k, n in sorted(dup_keys.items())[:20]]}
    totals = {
        "playlist_requests": len(raw.playlists),
        "playlist_errors": sum(1 for x in raw.playlists if x[2] != 200),
        "stale_serves": sum(1 for x in raw.playlists if x[2] == 200 and x[3]),
        "ad_segment_requests": len(raw.ad_segments),
        "ad_segment_errors": sum(1 for x in raw.ad_segments if x[2] not in _REDIRECT),
        "ad_segment_retries": raw.ad_retries,
        "ads_left_out_of_beacon_count": len(raw.uncertain),
        "content_heads": len(raw.content),
        "upstream_calls": len(raw.origin_requests),
        "upstream_calls_per_viewer": round(len(raw.origin_requests) / n_viewers, 4),
        "vast_requests": len(raw.vast_requests),
        "decision_records": sum(len(v) for v in raw.decisions.values()),
        "checker_violations": len(raw.violations),
        "poller_reloads": raw.poller_reloads,
        "poller_fetch_errors": len(raw.poller_fetch_errors),
        "live_edge_drift_max_s": _r(max((x[4] for x in raw.playlists if x[4] is not None),
                                        default=None)),
        "latency_ms": {"p50": _r(percentile([x[1] for x in raw.playlists if x[2]], 50)),
                       "p99": _r(percentile([x[1] for x in raw.playlists if x[2]], 99))},
    }
    checks = _verdict(raw, totals, breaks_out, beacons, stray_decisions)
    return {
        "drill": {"schedule": s.name, "description": s.description, "speed": s.speed,
                  "duration": s.duration, "cohorts": list(s.cohorts),
                  "viewers_requested": raw.viewers_requested,
                  "viewers_started": raw.viewers_started,
                  "session_failures": raw.session_failures[:20],
                  "breaks_planned": {"first": s.breaks.first, "every": s.breaks.every,
                                     "duration": s.breaks.duration},
                  "max_drift": s.max_drift,
                  "wall_seconds": round(raw.wall_seconds, 1), **dict(raw.setup)},
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
        "totals": totals,
        "beacons": beacons,
        "phases": phases_out,
        "breaks": breaks_out,
        "stray_decisions": stray_decisions,
        "violations": [{"t": round(t, 2), "cohort": c, **v} for t, c, v in raw.violations[:200]],
        "poller_fetch_errors": [{"t": round(t, 2), "cohort": c, "rendition": r, "error": e}
                                for t, c, r, e in raw.poller_fetch_errors[:200]],
        "client_errors": dict(sorted(raw.errors.items(), key=lambda kv: -kv[1])[:20]),
        "series": series(raw),
    }


def _verdict(raw: Raw, totals: Mapping[str, Any], breaks: Sequence[Mapping[str, Any]],
             beacons: Mapping[str, Any], stray: Sequence[str]) -> list[dict[str, Any]]:
    n_cohorts = len(raw.schedule.cohorts)
    bad_breaks = [f"{b['id']}: {b['decision_records']}" for b in breaks
                  if b["decision_records"] != n_cohorts]
    checks = [
        ("viewers", raw.viewers_started == raw.viewers_requested,
         f"{raw.viewers_started} of {raw.viewers_requested} viewers started"
         + (f" (first failure: {raw.session_failures[0]})" if raw.session_failures else "")),
        ("playlist errors", totals["playlist_errors"] == 0,
         (f"{totals['playlist_errors']} player-visible playlist errors, "
         f"{totals['stale_serves']} announced stale serves")),
        ("ad segment errors", totals["ad_segment_errors"] == 0,
         (f"{totals['ad_segment_errors']} of {totals['ad_segment_requests']} ad segment "
         f"requests failed")),
        ("breaks", bool(breaks), f"{len(breaks)} breaks started during the drill"),
        ("decision records", not bad_breaks and not stray,
         f"{sum(b['decision_records'] for b in breaks)} records for {len(breaks)} breaks x "
         f"{n_cohorts} cohorts" + (f"; wrong: {', '.join(bad_breaks)}" if bad_breaks else "")
         + (f"; records for unknown breaks: {', '.join(stray)}" if stray else "")),
        ("beacons lost", beacons["lost"] == 0 and beacons["expected"] > 0,
         (f"{beacons['lost']} of {beacons['expected']} expected beacons never reached the "
          f"ad server")
         + (f" ({beacons['dead_lettered']} dead-lettered by the stitchers)"
            if beacons["dead_lettered"] else "")
         + (f" ({beacons['waiting_when_given_up']} still waiting in the stitchers when "
            "the drill stopped waiting for delivery)"
            if beacons["waiting_when_given_up"] else "")),
        ("beacon duplicates", beacons["duplicated"] <= beacons["possible_duplicates_reported"],
         (f"{beacons['duplicated']} duplicates at the ad server "
          f"({beacons['duplicated_same_url']} a resent URL, the others queued twice), "
         f"{beacons['possible_duplicates_reported']} reported as possible by the stitcher")),
        ("checker", totals["checker_violations"] == 0 and totals["poller_reloads"] > 0,
         (f"{totals['checker_violations']} violations over {totals['poller_reloads']} "
         f"poller reloads")),
        ("live-edge drift", raw.schedule.max_drift is None
         or (totals["live_edge_drift_max_s"] or 0) <= raw.schedule.max_drift,
         f"viewers at most {totals['live_edge_drift_max_s']} s behind the origin's live edge"
         + (f" (limit {raw.schedule.max_drift:g} s: further, a player's buffer runs dry)"
            if raw.schedule.max_drift is not None else " (no limit set)")),
        ("poller fetches", totals["poller_fetch_errors"] == 0,
         f"{totals['poller_fetch_errors']} failed poller fetches"),
    ]
    return [{"name": n, "ok": bool(ok), "detail": d} for n, ok, d in checks]


def series(raw: Raw, bucket: float | None = None) -> dict[str, Any]:
    """Per-``bucket`` (drill seconds; default half a segment, so every bucket holds
    reloads) time series for the charts."""
    bucket = bucket or max(1.0, raw.segment / 2)
    end = raw.schedule.duration
    n = max(1, math.ceil(end / bucket))
    lat: list[list[float]] = [[] for _ in range(n)]
    reqs, errs, stale, up = [0] * n, [0] * n, [0] * n, [0] * n

    def idx(t: float) -> int | None:
        i = math.floor(t / bucket)
        return i if 0 <= i < n else None

    for t, ms, status, was_stale, _d, _c in raw.playlists:
        i = idx(t)
        if i is None:
            continue
        reqs[i] += 1
        if status != 200:
            errs[i] += 1
        elif was_stale:
            stale[i] += 1
        if status:
            lat[i].append(ms)
    for t, _k, _s in raw.origin_requests:
        i = idx(t)
        if i is not None:
            up[i] += 1
    return {
        "bucket_s": bucket,
        "t": [round(i * bucket, 3) for i in range(n)],
        "requests": reqs,
        "availability": [round(1 - e / r, 5) if r else None for e, r in zip(errs, reqs)],
        "stale_ratio": [round(s_ / r, 5) if r else None for s_, r in zip(stale, reqs)],
        "p50_ms": [_r(percentile(x, 50)) for x in lat],
        "p99_ms": [_r(percentile(x, 99)) for x in lat],
        "upstream_calls": up,
    }


def summary_text(report: Mapping[str, Any]) -> str:
    """The terminal summary: one line per phase, then the checks."""
    d = report["drill"]
    lines = [(f"drill {d['schedule']}: {d['viewers_started']}/{d['viewers_requested']} viewers, "
             f"{len(d['cohorts'])} cohorts, {d['duration']:g} s at speed {d['speed']:g} "
             f"({d['wall_seconds']:g} s wall)"), ""]
    head = (f"{'phase':<16} {'avail':>7} {'stale':>6} {'p50ms':>7} {'p99ms':>7} "
            f"{'up/view':>8} {'drift':>6} {'fill':>5} {'viol':>4}  faults")
    lines.append(head)
    for p in report["phases"]:
        avail = "-" if p["availability"] is None else f"{100 * p['availability']:.2f}%"
        fill = "-" if p["fill_rate"] is None else f"{100 * p['fill_rate']:.0f}%"
        drift = p["live_edge_drift_s"]["max"]
        lines.append(
            f"{p['name'][:16]:<16} {avail:>7} {p['stale_serves']:>6} "
            f"{_fmt(p['latency_ms']['p50']):>7} {_fmt(p['latency_ms']['p99']):>7} "
            f"{p['upstream_calls_per_viewer']:>8.3f} {_fmt(drift):>6} {fill:>5} "
            f"{p['checker_violations']:>4}  {p['faults']}")
    b = report["beacons"]
    lines += ["", (f"breaks: {len(report['breaks'])}; decision records "
                  f"{report['totals']['decision_records']}; beacons expected {b['expected']}, "
                  f"delivered {b['delivered']}, lost {b['lost']}, duplicated {b['duplicated']} "
                  f"(reported possible: {b['possible_duplicates_reported']})"), ""]
    for c in report["checks"]:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    lines.append("")
    lines.append("PASSED" if report["ok"] else "FAILED")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"

