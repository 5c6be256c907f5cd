"""``stitcher drill``: the fire drill's own logic, a 2,000-viewer drill over a
degradation schedule, and a broken setup that must fail.

* Pure parts: schedules (a bad one names its field), the beacon rule the
  report expects beacons by, and the report's verdict on a hand-made run
  (a lost beacon, an unreported duplicate, a late joiner).
* The drill: 2,000 viewers in three cohorts against one stitcher process on
  Redis while the origin slows from 200 ms to 4 s, answers 429 bursts and a
  503 storm, the ad server hangs and Redis is SIGKILLed and brought back. The
  report must show no player-visible playlist error (announced stale serves
  instead), one decision record per (break, cohort), no lost beacon, only
  reported duplicates and no checker violation; and its figures are checked
  against the fixtures' own logs and the store, read here independently.
* A broken setup: the origin down for longer than a player's buffer (the
  schedule's ``max_drift``) cannot be hidden by stale serving: the CLI reports
  the failure and exits 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from stitcher.drill.report import EVENTS, BreakInfo, Raw, build_report, trigger_segments
from stitcher.drill.schedule import (
    ScheduleError,
    load_schedule,
    parse_schedule,
    profile_names,
)

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize(("doc", "names"), [
    ({"phases": []}, "schedule.phases"),
    ({"phases": [{"name": "a"}]}, "schedule.phases[0].duration"),
    ({"phases": [{"name": "a", "duration": 5, "origin": {"latency": "x"}}]},
     "schedule.phases[0].origin.latency"),
    ({"phases": [{"name": "a", "duration": 5, "origin": {"status": 200}}]},
     "schedule.phases[0].origin.status"),
    ({"phases": [{"name": "a", "duration": 5, "origin": {"burst": {"seconds": 1,
                                                                   "every": 2}}}]},
     "schedule.phases[0].origin.burst"),
    ({"phases": [{"name": "a", "duration": 5, "redis": "pause"}]}, "schedule.phases[0].redis"),
    ({"phases": [{"name": "a", "duration": 5, "adserver": {"hangs": 3}}]},
     "schedule.phases[0].adserver"),
    ({"phases": [{"name": "a", "duration": 5}, {"name": "a", "duration": 5}]},
     "schedule.phases[1].name"),
    ({"cohorts": ["us", "u.s"], "phases": [{"name": "a", "duration": 5}]}, "schedule.cohorts"),
    ({"breaks": {"every": 10, "duration": 12}, "phases": [{"name": "a", "duration": 5}]},
     "schedule.breaks.duration"),
    ({"speed": 0, "phases": [{"name": "a", "duration": 5}]}, "schedule.speed"),
    ({"limits": {"max_drift": -1}, "phases": [{"name": "a", "duration": 5}]},
     "schedule.limits.max_drift"),
    ({"phase": [], "phases": [{"name": "a", "duration": 5}]}, "schedule: unknown field(s) phase"),
])
def test_a_bad_schedule_names_its_field(doc: dict[str, Any], names: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(doc)
    assert str(info.value).startswith(names), str(info.value)


def test_packaged_profiles_load_and_big_event_degrades_every_upstream() -> None:
    assert "big-event" in profile_names()
    for name in profile_names():
        load_schedule(profile=name)
    s = load_schedule(profile="big-event")
    assert s.viewers == 2000 and len(s.cohorts) == 3
    kinds: set[str | None] = set()
    for p in s.phases:
        kinds |= {"latency" if p.origin and p.origin.latency else None,
                  "429" if p.origin and p.origin.status == 429 else None,
                  "5xx" if p.origin and (p.origin.status or 0) >= 500 else None,
                  "ad" if p.adserver and p.adserver.hang else None,
                  "redis" if p.redis else None}
    assert kinds >= {"latency", "429", "5xx", "ad", "redis"}
    ramp = next(p for p in s.phases if p.origin and p.origin.latency).origin
    assert ramp is not None and ramp.latency is not None
    assert (ramp.latency.at(0), ramp.latency.at(1)) == (0.2, 4.0)
    burst = next(p.origin for p in s.phases if p.origin and p.origin.burst_on)
    assert burst is not None
    assert [burst.active_status(t) for t in (0, 2.9, 3.1, 4.5)] == [True, True, False, True]


def test_duration_cuts_the_schedule_or_stretches_its_last_phase() -> None:
    s = parse_schedule({"phases": [{"name": "a", "duration": 10}, {"name": "b", "duration": 10},
                                   {"name": "c", "duration": 10}]})
    cut = s.with_duration(15)
    assert [(p.name, p.start, p.end) for p in cut.phases] == [("a", 0, 10), ("b", 10, 15)]
    longer = s.with_duration(50)
    assert longer.phases[-1].end == 50 and longer.duration == 50
    assert s.break_starts() == [10.0]  # default breaks: first at 10, every 30


# ------------------------------------------------------------- the beacon rule
def test_trigger_segments_follow_the_stitchers_rule() -> None:
    # 10 s on 2 s segments: quartiles at 2.5, 5 and 7.5 s; the last frame in segment 4.
    assert trigger_segments(10, 2) == {"impression": 0, "start": 0, "firstQuartile": 1,
                                       "midpoint": 2, "thirdQuartile": 3, "complete": 4}
    # 15 s: 3.75 / 7.5 / 11.25 s, last frame at 14.97 s (segment 7 of 8).
    assert trigger_segments(15, 2) == {"impression": 0, "start": 0, "firstQuartile": 1,
                                       "midpoint": 3, "thirdQuartile": 5, "complete": 7}


def _raw(**changes: Any) -> Raw:
    schedule = parse_schedule({"cohorts": ["us"], "viewers": 2,
                               "breaks": {"first": 5, "every": 30, "duration": 12},
                               "phases": [{"name": "a", "duration": 20}]})
    record = json.dumps({"pod": {"break_id": "b1", "nominal": "2", "personalized": True,
                                 "items": [{"kind": "ad", "creative": "c", "duration": "10",
                                            "start": "0", "span": "10", "segments": 5},
                                           {"kind": "slate", "creative": "slate",
                                            "duration": "2", "start": "10", "span": "2",
                                            "segments": 1}]},
                         "reason": "ok", "ads": [{"item": 0, "ad_id": "ad-a",
                                                  "duration": "10"}]})
    raw = Raw(
        schedule=schedule, viewers_requested=2, viewers_started=2, session_failures=[],
        playlists=[(1.0, 5.0, 200, False, 0.0, "us"), (2.0, 9.0, 200, True, 2.0, "us")],
        ad_segments=[(6.0, 1.0, 302)], content=[],
        # s1 watched the whole ad; s2 joined at its third segment (a late join).
        ad_requests={("s1", "b1", 0): [0, 1, 2, 3, 4], ("s1", "b1", 1): [0],
                     ("s2", "b1", 0): [2, 3, 4]},
        sessions={"s1": "us", "s2": "us"}, origin_requests=[(1.0, "media", 200)],
        vast_requests=[(5.5, "b1", "us", None)],
        hits=[("s1", "ad-a", e, "") for e in EVENTS],
        decisions={"b1": {"us": record}}, breaks=[BreakInfo("b1", 5.0, 12.0)],
        known_breaks={"b1"}, segment=2.0, violations=[], poller_fetch_errors=[],
        poller_reloads=10, possible_duplicates=0)
    for k, v in changes.items():
        setattr(raw, k, v)
    return raw


def test_report_on_a_clean_run_passes_and_counts_what_it_saw() -> None:
    report = build_report(_raw())
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    assert report["beacons"] == {"expected": 6, "delivered": 6, "lost": 0, "duplicated": 0,
                                 "duplicated_same_url": 0,
                                 "possible_duplicates_reported": 0, "dead_lettered": None,
                                 "waiting_when_given_up": None,
                                 "other_hits": {},
                                 "lost_sample": [], "duplicated_sample": []}
    (brk,) = report["breaks"]
    assert brk["decision_records"] == 1 and brk["fill_rate"] == pytest.approx(10 / 12, abs=1e-3)
    (phase,) = report["phases"]
    assert phase["stale_serves"] == 1 and phase["availability"] == 1.0
    assert phase["latency_ms"] == {"p50": 5.0, "p99": 9.0, "max": 9.0}


def test_report_fails_a_lost_beacon_an_unreported_duplicate_and_a_missing_record() -> None:
    hits = [("s1", "ad-a", e, "") for e in EVENTS if e != "midpoint"]
    hits.append(("s1", "ad-a", "start", "again"))
    report = build_report(_raw(hits=hits, decisions={"b1": _raw().decisions["b1"],
                                                     "b9": {"us": "{}"}}))
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"beacons lost", "beacon duplicates", "decision records"}, failed
    assert (report["beacons"]["lost"], report["beacons"]["duplicated"]) == (1, 1)
    assert report["beacons"]["lost_sample"] == [["s1", "ad-a", "midpoint", 1]]
    assert report["beacons"]["duplicated_sample"] == [["s1", "ad-a", "start", 1]]
    assert report["stray_decisions"] == ["b9"]
    # Duplicates by kind: "again" is another URL (the event queued twice); the same
    # URL twice is one queued beacon sent twice (a queue resend).
    assert report["beacons"]["duplicated_same_url"] == 0
    resent = build_report(_raw(hits=[*_raw().hits, ("s1", "ad-a", "start", "")]))
    assert resent["beacons"]["duplicated_same_url"] == 1
    # Beacons still queued when the drill gave up waiting: said next to "lost".
    late = build_report(_raw(hits=hits, beacons_waiting=3))
    (lost,) = [c for c in late["checks"] if c["name"] == "beacons lost"]
    assert not lost["ok"] and "3 still waiting in the stitchers" in lost["detail"], lost
    # The same duplicate, reported by the stitcher as possible: accepted.
    reported = build_report(_raw(hits=[*_raw().hits, ("s1", "ad-a", "start", "again")],
                                 possible_duplicates=1))
    assert reported["ok"], [c for c in reported["checks"] if not c["ok"]]


def test_report_fails_player_errors_and_fewer_viewers_than_asked() -> None:
    report = build_report(_raw(viewers_started=1, session_failures=["HTTP 503"],
                               playlists=[(1.0, 5.0, 200, False, 0.0, "us"),
                                          (3.0, 30000.0, 0, False, None, "us")]))
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"viewers", "playlist errors"}, failed
    assert report["phases"][0]["availability"] == 0.5


# ------------------------------------------------------------------ the drill
DRILL = {
    "name": "test-degradation", "viewers": 2000, "cohorts": ["us", "fr", "de"],
    "segment": 6, "breaks": {"first": 6, "every": 24, "duration": 12},
    # The origin is of no use from the latency ramp's 3 s to the 5xx storm's end
    # (Redis away in between): about 40 s of stale serving, one segment more at most.
    "limits": {"max_drift": 54},
    "phases": [
        # A break is seen a segment after it starts (its first segment published):
        # the one at 30 s while Redis is away, the one at 54 s while the ad server hangs.
        {"name": "baseline", "duration": 14},
        {"name": "origin-latency", "duration": 14,
         "origin": {"latency": {"from": 0.2, "to": 4.0}}},
        {"name": "redis-down", "duration": 12, "redis": "kill"},
        {"name": "origin-429", "duration": 8,
         "origin": {"status": 429, "retry_after": 2, "burst": {"seconds": 2, "every": 3}}},
        {"name": "origin-5xx", "duration": 6, "origin": {"status": 503}},
        {"name": "ad-timeout", "duration": 14, "adserver": {"hang": 20}},
        {"name": "recovery", "duration": 6},
    ],
}


@pytest.mark.redis
async def test_a_2000_viewer_drill_over_a_degradation_schedule(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    from fixtures.adserver import hits as adserver_hits
    from fixtures.adserver import vast_requests
    from stitcher.drill.rig import Rig
    from stitcher.drill.run import DrillOptions, run_drill
    from tests.redis_server import require_redis_server

    require_redis_server()
    seen: dict[str, Any] = {}

    async def inspect(rig: Rig) -> None:
        """The fixtures' own logs and the store, read here, not through the report."""
        import redis.asyncio as aioredis

        seen["hits"] = Counter((h.query.get("session", ["?"])[0], h.ad_id, h.event)
                               for h in adserver_hits(rig.ad_app))
        seen["vast"] = Counter((q.get("break", ["?"])[0], q.get("geo", ["?"])[0])
                               for q in (parse_qs(v.query_string)
                                         for v in vast_requests(rig.ad_app))
                               if q.get("break") != ["prefetch"])
        seen["origin_playlist_requests"] = sum(
            1 for r in rig.origin.log if r.kind in ("media", "multivariant")
            and 0 <= r.time - rig.epoch)
        client = aioredis.from_url(rig.redis.url if rig.redis else "")
        try:
            seen["records"] = [k.decode() async for k in client.scan_iter(
                match=f"ss:{{ch:{rig.channel}}}:dec:*")]
        finally:
            await client.aclose()

    schedule = parse_schedule(DRILL)
    out = tmp_path / "drill.json"
    started = time.monotonic()
    # Two stitcher processes on the one Redis (viewers round robin over them): the
    # scale-out path under the faults, and the stitchers' share of a loaded machine.
    report = await run_drill(DrillOptions(schedule, assets_dir, json_out=out,
                                          html_out=tmp_path / "drill.html",
                                          workdir=tmp_path / "work", stitchers=2),
                             media=media, inspect=inspect)
    wall = time.monotonic() - started
    logs = "".join(p.read_text(errors="replace")[-3000:]
                   for p in (tmp_path / "work").glob("stitcher*.log"))
    assert json.loads(out.read_text()) == report
    failed = [c for c in report["checks"] if not c["ok"]]
    assert not failed, (failed, logs)
    assert report["ok"]

    d, t = report["drill"], report["totals"]
    assert d["viewers_started"] == d["viewers_requested"] == 2000
    # Zero player-visible playlist errors while the origin degrades: stale serves instead.
    assert t["playlist_errors"] == 0
    by_name = {p["name"]: p for p in report["phases"]}
    for name in ("origin-latency", "origin-429", "origin-5xx", "redis-down"):
        assert by_name[name]["playlist_errors"] == 0, by_name[name]
    # Stale serves where the origin (or the store) is of no use. Not required in the
    # latency ramp: it crosses the 3 s origin timeout only in its last 3.7 s, and
    # whether a fetch times out there depends on when the fetches fall (a CI run saw
    # none; holding the origin at 4 s instead piled every viewer's reload up behind
    # the timeout and overloaded the drill itself at the next break).
    for name in ("origin-429", "origin-5xx", "redis-down"):
        assert by_name[name]["stale_serves"] > 0, (name, by_name[name])
    assert by_name["baseline"]["stale_serves"] == 0
    # Ad decision records = cohorts x breaks, no-fill included (the ad server hung).
    breaks = report["breaks"]
    assert [(b["start"], b["phase"]) for b in breaks] == [
        (6, "baseline"), (30, "redis-down"), (54, "ad-timeout")]
    assert all(b["decision_records"] == 3 for b in breaks), breaks
    assert t["decision_records"] == 3 * len(breaks) == len(seen["records"])
    hung = breaks[-1]  # seen, and decided, while the ad server hung
    assert hung["no_fill"] == 3 and hung["fill_rate"] == 0
    assert breaks[0]["no_fill"] == 0 and breaks[0]["fill_rate"] == 1.0  # 10 s ad, 12 s slot pair
    # (the break seen while Redis was away: decided, filled or not, once it was back)
    # The ad server's own log: each (break, cohort) asked once, for exactly these breaks.
    assert set(seen["vast"]) == {(b["id"], c) for b in breaks for c in d["cohorts"]}, \
        seen["vast"]
    assert all(n == 1 for n in seen["vast"].values()), seen["vast"]
    # Beacons: none lost, duplicates only as reported; the raw log agrees.
    b = report["beacons"]
    assert b["expected"] >= 0.9 * 2000 * 6, b  # (nearly) every viewer saw the first ad whole
    assert b["lost"] == 0 and b["duplicated"] <= b["possible_duplicates_reported"]
    raw_viewer_hits = sum(n for (sid, _ad, ev), n in seen["hits"].items() if ev in EVENTS)
    assert b["delivered"] == raw_viewer_hits
    # Upstream calls from the origin's own log: coalesced, not per viewer.
    assert t["upstream_calls"] == seen["origin_playlist_requests"]
    assert t["upstream_calls_per_viewer"] < 0.2, t
    # The checker saw the whole drill: at least five reloads per cohort (every half
    # target duration when the machine keeps up; each takes seconds when it does not).
    assert t["checker_violations"] == 0 and t["poller_reloads"] >= 3 * 5
    html = (tmp_path / "drill.html").read_text()
    assert html.count("<svg") == 3 and "PASSED" in html and "http" not in html.split(
        "<body>", 1)[1].split("<table>", 1)[0].replace("http://www.w3.org/2000/svg", "")
    assert wall < 300, f"the drill took {wall:.0f} s"


@pytest.mark.redis
def test_an_origin_down_longer_than_a_players_buffer_fails_the_drill(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    """Stale serving keeps every playlist answered (no error), but viewers fall further
    behind the live edge than the schedule allows: the drill fails, exit status 1."""
    from tests.redis_server import require_redis_server

    require_redis_server()
    schedule = tmp_path / "broken.yaml"
    schedule.write_text(
        "name: broken\nviewers: 30\ncohorts: [us, fr]\n"
        "breaks: {first: 4, every: 40, duration: 12}\nlimits: {max_drift: 12}\n"
        "phases:\n  - {name: baseline, duration: 6}\n"
        "  - {name: origin-down, duration: 24, origin: {down: true}}\n"
        "  - {name: recovery, duration: 6}\n")
    out = tmp_path / "broken.json"
    done = subprocess.run(
        [sys.executable, "-m", "stitcher.cli", "drill", "--schedule", str(schedule),
         "--json", str(out), "--data-dir", str(assets_dir)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SSAI_MEDIA_CACHE": str(media.root)})
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr[-3000:])
    report = json.loads(out.read_text())
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert failed == {"live-edge drift"}, (failed, done.stdout)
    assert report["totals"]["live_edge_drift_max_s"] > 12
    assert report["totals"]["playlist_errors"] == 0  # hidden at the playlist level ...
    down = next(p for p in report["phases"] if p["name"] == "origin-down")
    assert down["stale_serves"] > 0  # ... as announced stale serves, for too long
    assert "FAILED" in done.stdout and "live-edge drift" in done.stdout
