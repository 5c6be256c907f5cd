"""Client-side tracking JSON, in the shape of MediaTailor's tracking API.

Each avail in the current window lists its ads with their duration, their
start on the shared timeline (PDT, and the same instant as epoch seconds) and
their tracking events with the time each is due. An ad cut by an early CUE-IN
shows the shortened duration that actually aired.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from manifests.ledger import SlotKind
from manifests.splice import Slot
from manifests.timing import add_seconds, format_pdt
from stitcher.ads import Decision
from stitcher.beacons import ad_events


def avail_schedule(slots: list[Slot], decisions: dict[str, Decision]) -> list[dict[str, Any]]:
    avails: dict[str, dict[str, Any]] = {}
    aired: dict[tuple[str, int], Fraction] = {}
    first: dict[tuple[str, int], Slot] = {}
    for slot in slots:
        entry = slot.entry
        if entry is None or entry.kind is SlotKind.CONTENT or slot.segment.pdt is None:
            continue
        avail = avails.setdefault(entry.break_id, {
            "availId": entry.break_id, "startTime": format_pdt(slot.segment.pdt),
            "startTimeInSeconds": float(slot.segment.pdt.timestamp()),
            "durationInSeconds": 0.0, "ads": [], "adBreakTrackingEvents": []})
        avail["durationInSeconds"] = round(avail["durationInSeconds"]
                                           + float(slot.segment.duration), 3)
        if entry.kind is SlotKind.AD:
            k = (entry.break_id, entry.item)
            aired[k] = aired.get(k, Fraction(0)) + slot.segment.duration
            first.setdefault(k, slot)
    for (break_id, item), slot in first.items():
        decision = decisions.get(break_id)
        ad = decision.ad(item) if decision else None
        if ad is None or slot.segment.pdt is None:
            continue
        start = slot.segment.pdt
        duration = min(ad.duration, aired[(break_id, item)])
        events = []
        for event, at in ad_events(ad):
            if at > duration:
                continue  # cut by an early CUE-IN: never due
            urls = ad.impressions if event == "impression" else ad.tracking.get(event, ())
            when = add_seconds(start, at)
            events.append({"eventType": event, "beaconUrls": list(urls),
                           "startTime": format_pdt(when),
                           "startTimeInSeconds": float(when.timestamp()),
                           "eventId": f"{break_id}-{item}-{event}"})
        avails[break_id]["ads"].append({
            "adId": ad.ad_id, "creativeId": ad.creative, "startTime": format_pdt(start),
            "startTimeInSeconds": float(start.timestamp()),
            "durationInSeconds": float(duration), "trackingEvents": events})
    return list(avails.values())
