"""What ad ops watch: per channel the origin's and ad server's health, the live
edge, the current and next break with each cohort's decision and fill, the
render cache's hit ratio, the beacon queue, and plain-words warnings.

Read-only views over the runtimes, the shared store and this instance's
metrics (counts are this instance's; decisions and breaks are the shared ones,
so every instance shows the same breaks and fills).
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from manifests.breaks import Break, IgnoredOut, overridden, update_breaks
from manifests.markers import MarkerErrors, observe
from manifests.pod import ItemKind
from stitcher.ads import Decision
from stitcher.channel import ChannelRuntime
from stitcher.control import ADOPS
from stitcher.errors import StitcherError
from stitcher.sessions import DEFAULT_COHORT

#: Cohorts listed per break: every cohort the rules can make, up to this many;
#: beyond, the cohorts this instance served recently.
MAX_LISTED_COHORTS = 64
#: Ended breaks stay listed this long (seconds behind the live edge).
RECENT = 300


def cohorts_of(runtime: ChannelRuntime) -> list[str]:
    rules = runtime.cfg.cohorts
    if not rules:
        return [DEFAULT_COHORT]
    count = 1
    for rule in rules:
        count *= len(rule.values)
    if count <= MAX_LISTED_COHORTS:
        return [".".join(p) for p in itertools.product(*(r.values for r in rules))]
    return sorted(runtime.active_cohorts)[:MAX_LISTED_COHORTS]


def decision_view(decision: Decision | None, duration: float) -> dict[str, Any]:
    if decision is None:
        return {"decided": False}
    pod = decision.pod
    filled = float(pod.filled)
    slate = float(sum((it.duration for it in pod.items if it.kind is ItemKind.SLATE), 0))
    return {"decided": True, "personalized": pod.personalized, "reason": decision.reason,
            "ads": [{"ad_id": a.ad_id, "duration": float(a.duration)} for a in decision.ads],
            "ad_seconds": filled, "slate_seconds": slate,
            "fill": round(filled / duration, 4) if duration > 0 else None}


async def break_views(app: web.Application, runtime: ChannelRuntime) -> dict[str, Any]:
    """Current and upcoming breaks (and those ended in the last few minutes), each
    with its cohorts' frozen decisions and fill."""
    from stitcher.admin import known_breaks, live_edge

    merged, adops = await known_breaks(app, runtime)
    by_id = {b.id: b for b in adops}
    edge: datetime | None
    try:
        edge = await live_edge(runtime)
    except StitcherError:
        edge = None
    cohorts = cohorts_of(runtime)
    beaten = overridden(merged, runtime.policy)
    views = []
    for b in merged:
        end = b.effective_end(runtime.policy)
        if edge is not None and (end - edge).total_seconds() < -RECENT:
            continue
        views.append(await _break_view(runtime, b, by_id.get(b.id) is not None, edge,
                                       cohorts, beaten.get(b.id)))
    for out in await _ignored_outs(runtime, merged):
        if edge is None or (out.at - edge).total_seconds() >= -RECENT:
            views.append(_ignored_view(out, edge))
    views.sort(key=lambda v: v["start"])
    return {"channel": runtime.cfg.id, "live_edge": edge.isoformat() if edge else None,
            "breaks": views}


async def _ignored_outs(runtime: ChannelRuntime, merged: tuple[Break, ...]) -> list[IgnoredOut]:
    """The feed's OUTs that fall inside an open break: those this instance met
    while rendering, and those of the origin's window now, found from the shared
    breaks (the same on every instance: found by a newcomer, an instance that had
    not rendered the channel listed none)."""
    found = {o.id: o for o in runtime.ignored_outs()}
    try:
        view = await runtime.main_view()
    except StitcherError:
        view = None
    if view is not None:
        update = update_breaks(merged, observe(view[0], errors=MarkerErrors()), runtime.policy)
        found.update((o.id, o) for o in update.ignored)
    return sorted(found.values(), key=lambda o: o.at)


def _ignored_view(out: IgnoredOut, edge: datetime | None) -> dict[str, Any]:
    """A feed OUT that fell inside an open break: listed, so ad ops see the feed
    asked for a break that did not play, and why (``overridden_by``)."""
    duration = float(out.planned_duration or 0)
    end = out.at + timedelta(seconds=duration)
    return {
        "id": out.id, "source": out.dialect, "event_id": out.event_id,
        "start": out.at.isoformat(), "end": end.isoformat(), "duration": round(duration, 3),
        "state": "ignored", "cancelled": False, "overridden_by": out.inside,
        "starts_in": None if edge is None else round((out.at - edge).total_seconds(), 3),
        "ends_in": None if edge is None else round((end - edge).total_seconds(), 3),
        "cohorts": {},
    }


async def _break_view(runtime: ChannelRuntime, b: Break, inserted: bool,
                      edge: datetime | None, cohorts: list[str],
                      overridden_by: str | None) -> dict[str, Any]:
    end = b.effective_end(runtime.policy)
    duration = (end - b.start).total_seconds()
    if b.cancelled:
        state = "cancelled"
    elif overridden_by is not None:
        # It starts inside another break that is open there: that one plays
        # (manifests.breaks.overridden; it plays after all if the other ends first).
        state = "overridden"
    elif edge is None:
        state = "unknown"
    elif edge <= b.start:  # its first slot is the next one the origin publishes
        state = "upcoming"
    elif edge < end:
        state = "current"
    else:
        state = "ended"
    decisions = {}
    for cohort in cohorts:
        decision = runtime.cached_decision(b.id, cohort)
        if decision is None:
            raw = await runtime.store.get_decision(runtime.cfg.id, b.id, cohort)
            decision = Decision.from_json(raw) if raw is not None else None
        decisions[cohort] = decision_view(decision, duration)
    return {
        "id": b.id, "source": ADOPS if inserted else (b.dialect or "markers"),
        "event_id": b.event_id, "start": b.start.isoformat(), "end": end.isoformat(),
        "duration": round(duration, 3), "state": state, "cancelled": b.cancelled,
        "overridden_by": overridden_by,
        "starts_in": None if edge is None else round((b.start - edge).total_seconds(), 3),
        "ends_in": None if edge is None else round((end - edge).total_seconds(), 3),
        "cohorts": decisions,
    }


def _samples(app: web.Application, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    from stitcher.app import METRICS

    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in app[METRICS].registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _by(app: web.Application, name: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in _samples(app, name, **labels).items():
        k = dict(key).get(label, "")
        out[k] = out.get(k, 0.0) + value
    return out


async def channel_status(app: web.Application, runtime: ChannelRuntime) -> dict[str, Any]:
    cid = runtime.cfg.id
    warnings: list[str] = []
    origin: dict[str, Any] = {"status": "unknown", "message": "not fetched yet"}
    edge_msn = None
    try:
        view = await runtime.main_view()
    except StitcherError as exc:
        view = None
        origin = {"status": "down", "message": f"origin unavailable: {exc.reason}"}
        warnings.append(f"origin down ({exc.reason}): players get 503 until it answers")
    if view is not None:
        playlist, fetched, now = view
        age = max(0.0, now - fetched.fetched_at)
        edge_msn = playlist.last_msn if playlist.segments else None
        # Stale when the last good body is older than two target durations (a fresh
        # one is refetched every half): during the fetcher's back-off the last good
        # playlist comes back without the stale mark of the failed attempt.
        late = age > 2 * (playlist.target_duration or 2)
        if fetched.stale or late:
            why = fetched.error or "no newer playlist"
            origin = {"status": "stale", "age_seconds": round(age, 1),
                      "message": f"origin delayed {age:.0f} s, serving last good playlist"
                                 f" ({why})"}
            warnings.append(origin["message"])
        else:
            origin = {"status": "ok", "age_seconds": round(age, 1), "message": "origin ok"}
    origin["errors"] = _by(app, "stitcher_origin_errors_total", "kind", channel=cid)
    origin["stale_serves"] = sum(_by(app, "stitcher_stale_serves_total", "channel",
                                     channel=cid).values())

    requests = _by(app, "stitcher_ad_requests_total", "result", channel=cid)
    ad_errors = _by(app, "stitcher_ad_errors_total", "kind", channel=cid)
    asked = sum(requests.values())
    failed = sum(ad_errors.values())
    ad_server: dict[str, object]
    if not runtime.cfg.ad_server_url:
        ad_server = {"status": "none", "message": "no ad server configured"}
    elif asked == 0 and failed == 0:
        ad_server = {"status": "unknown", "message": "no ad request yet"}
    elif failed and failed >= asked:
        ad_server = {"status": "failing", "message": f"ad server failing ({failed:.0f} errors)"}
        warnings.append(f"ad server failing ({failed:.0f} errors): breaks show slate or content")
    elif failed:
        ad_server = {"status": "degraded",
                     "message": f"ad server: {failed:.0f} errors in {asked:.0f} requests"}
    else:
        ad_server = {"status": "ok", "message": "ad server ok"}
    ad_server.update({"requests": requests, "errors": ad_errors})

    avail = sum(_by(app, "stitcher_avail_seconds_total", "channel", channel=cid).values())
    filled = sum(_by(app, "stitcher_filled_seconds_total", "channel", channel=cid).values())
    cache = _by(app, "stitcher_render_cache_total", "result", channel=cid)
    lookups = sum(cache.values())
    served_from_cache = lookups - cache.get("miss", 0.0)

    breaks = await break_views(app, runtime)
    live = [b for b in breaks["breaks"] if b["state"] in ("current", "upcoming")]
    current = next((b for b in live if b["state"] == "current"), None)
    upcoming = next((b for b in live if b["state"] == "upcoming"), None)
    return {
        "id": cid, "origin_url": runtime.cfg.origin_url,
        "ad_server_url": runtime.cfg.ad_server_url,
        "live_edge": breaks["live_edge"], "live_edge_msn": edge_msn,
        "origin": origin, "ad_server": ad_server,
        "current_break": current, "next_break": upcoming, "breaks": breaks["breaks"],
        "fill_rate": round(filled / avail, 4) if avail else None,
        "avail_seconds": avail, "filled_seconds": filled,
        "cache": {**cache, "ratio": round(served_from_cache / lookups, 4) if lookups else None},
        "cohorts": cohorts_of(runtime),
        "warnings": warnings,
    }


async def console_status(app: web.Application) -> dict[str, Any]:
    from stitcher.admin import _runtimes

    depth = sum(_by(app, "stitcher_beacon_queue_depth", "").values())
    channels = [await channel_status(app, rt) for rt in list(_runtimes(app).values())]
    return {"pid": os.getpid(), "beacon_queue_depth": depth, "channels": channels,
            "warnings": ignored_config_warnings(app)}


def ignored_config_warnings(app: web.Application) -> list[str]:
    """The stored channel configs this instance ignores, in plain words."""
    from stitcher.admin import IGNORED_CONFIGS

    return [f"stored config of channel {i['id']} (revision {i['revision']}) does not "
            f"validate here ({i['problems']}): serving {i['serving']}"
            for _, i in sorted(app[IGNORED_CONFIGS].items())]
