"""Client-side tracking JSON, in the shape of MediaTailor's tracking API.

Each avail in the current window lists its ads with their duration, their
start on the shared timeline (PDT, and the same instant as epoch seconds) and
their tracking events with the time each is due. Times come from the pod
layout, so they are the same on every poll however far the window has slid;
an ad cut by an early CUE-IN shows the shortened duration that actually aired.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

from manifests.ledger import SlotKind
from manifests.splice import Slot
from manifests.timing import add_seconds, format_pdt, seconds_between
from stitcher.ads import Decision
from stitcher.beacons import ad_events
from stitcher.vast import expand_macros


def avail_schedule(slots: list[Slot], decisions: dict[str, Decision], *,
                   session_id: str | None = None) -> list[dict[str, Any]]:
    """The avails of a rendered window, timed on the break's own timeline.

    With ``session_id`` (a session's own tracking), ``[SESSIONID]`` in the beacon
    URLs is expanded as the server-side beacons expand it; the macros of the
    moment a beacon fires (``CACHEBUSTING``, ``TIMESTAMP``...) are the player's.

    An avail's start and each ad's start and duration come from the pod layout,
    anchored on the break slot the window still shows, so they do not move as
    the window slides past an ad's first segments. Only a cut (content, or the
    next break, aired where the pod still planned this one) shortens an ad.
    """
    breaks: dict[str, datetime] = {}
    cut: dict[str, datetime] = {}
    current: str | None = None
    for slot in slots:
        entry, pdt = slot.entry, slot.segment.pdt
        if pdt is None:
            continue
        here = entry.break_id if entry is not None and entry.kind is not SlotKind.CONTENT \
            else None
        if current is not None and here != current:
            cut.setdefault(current, pdt)  # the break ended here (planned or early)
        current = here
        if entry is None or here is None or here in breaks or entry.kind is not SlotKind.AD:
            continue  # slate loops: its segment index says nothing of the offset
        decision = decisions.get(here)
        if decision is None or not 0 <= entry.item < len(decision.pod.items):
            continue
        # The slot's offset into the break: its item's start plus the segments of
        # that item before it, in this grid's cadence (the slot's own duration).
        offset = decision.pod.items[entry.item].start + entry.segment * slot.segment.duration
        breaks[here] = add_seconds(pdt, -offset)
    avails = []
    for break_id, start in breaks.items():
        decision = decisions[break_id]
        planned = sum((i.span for i in decision.pod.items), Fraction(0))
        end = cut.get(break_id)
        aired = planned if end is None else min(planned, seconds_between(start, end))
        ads = []
        for index, item in enumerate(decision.pod.items):
            ad = decision.ad(index)
            if ad is None or item.start >= aired:
                continue
            ad_start = add_seconds(start, item.start)
            duration = min(ad.duration, aired - item.start)
            events = []
            for event, at in ad_events(ad):
                if at > duration:
                    continue  # cut by an early CUE-IN: never due
                urls = ad.impressions if event == "impression" else ad.tracking.get(event, ())
                if session_id is not None:
                    urls = tuple(expand_macros(u, {"SESSIONID": session_id}) for u in urls)
                when = add_seconds(ad_start, at)
                events.append({"eventType": event, "beaconUrls": list(urls),
                               "startTime": format_pdt(when),
                               "startTimeInSeconds": float(when.timestamp()),
                               "eventId": f"{break_id}-{index}-{event}"})
            ads.append({"adId": ad.ad_id, "creativeId": ad.creative,
                        "startTime": format_pdt(ad_start),
                        "startTimeInSeconds": float(ad_start.timestamp()),
                        "durationInSeconds": float(duration), "trackingEvents": events})
        avails.append({"availId": break_id, "startTime": format_pdt(start),
                       "startTimeInSeconds": float(start.timestamp()),
                       "durationInSeconds": float(aired), "ads": ads,
                       "adBreakTrackingEvents": []})
    return avails

