"""Successive reloads of one origin URL through the pure splice, as the service drives them.

:class:`Stitcher` mirrors ``stitcher/channel.py``'s render path without IO: each
reload is timed (an origin without PDT gets one from anchors recorded by
earlier reloads, ``choose_anchor`` as the service does), its markers merge into
the known breaks, every break that needs a pod gets one planned once and then
frozen, the splice renders against the ledger, and the ledger takes the new
slots, the proposed discontinuity anchor and the compaction the service asks
for. A window the splice refuses (:class:`SequenceRegressionError`) is served
as the last good text, marked stale, as the service does. The snapshots it
collects (stitched text and the origin's) feed :mod:`manifests.checker`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction

from manifests.breaks import Break, BreakPolicy, update_breaks
from manifests.checker import Snapshot, Violation, check
from manifests.errors import SequenceRegressionError
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import MediaPlaylist, parse_media, render_lines
from manifests.pod import Candidate, Pod, plan_pod
from manifests.splice import SpliceOptions, SpliceResult, breaks_to_decide, splice
from manifests.timeline import choose_anchor, with_pdt
from manifests.timing import format_pdt

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
BASE_URL = "https://origin.example.com/live/v0.m3u8"
ADS = [Candidate("adA", Fraction(10)), Candidate("adB", Fraction(15)),
       Candidate("adC", Fraction(4)), Candidate("adD", Fraction(2)), Candidate("adE", Fraction(1))]


class Uris:
    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.ts"


@dataclass
class Stitcher:
    """One (rendition, cohort): breaks, frozen pods, timeline anchors and the ledger."""

    policy: BreakPolicy = field(default_factory=BreakPolicy)
    options: SpliceOptions | None = None
    ledger: Ledger = field(default_factory=Ledger)
    ads: list[Candidate] = field(default_factory=lambda: list(ADS))
    breaks: tuple[Break, ...] = ()
    pods: dict[str, Pod] = field(default_factory=dict)
    anchors: dict[int, datetime] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    results: list[SpliceResult | SequenceRegressionError] = field(default_factory=list)
    last_good: str | None = None

    def reload(self, origin_text: str) -> SpliceResult | SequenceRegressionError:
        playlist = self._timed(parse_media(origin_text))
        self.breaks = update_breaks(self.breaks, observe(playlist), self.policy).breaks
        nominal = Fraction(playlist.target_duration or 2)
        for break_id, start in breaks_to_decide(playlist, self.breaks, self.ledger,
                                                self.policy).items():
            if break_id not in self.pods:  # decided once, then frozen (invariant 7)
                b = next(x for x in self.breaks if x.id == break_id)
                available = (b.duration_hint or self.policy.max_duration) - start
                self.pods[break_id] = plan_pod(break_id, self.ads, available=available,
                                               start=start, nominal=nominal, slate_segments=1)
        options = self.options or SpliceOptions(base_url=BASE_URL, break_policy=self.policy)
        outcome: SpliceResult | SequenceRegressionError
        stale: frozenset[str] = frozenset()
        try:
            outcome = splice(playlist, breaks=self.breaks, pods=self.pods, ledger=self.ledger,
                             uris=Uris(), options=options)
        except SequenceRegressionError as exc:
            outcome = exc
            assert self.last_good is not None, "a cold start has nothing to serve"
            text, stale = self.last_good, frozenset({"v0"})
        else:
            keep_from = playlist.media_sequence - 3 * max(1, len(playlist.segments))
            self.ledger = self.ledger.append(outcome.new_entries, outcome.hwm,
                                             outcome.anchor).compact(keep_from)
            text = self.last_good = outcome.text
        self.results.append(outcome)
        self.snapshots.append(Snapshot(index=len(self.snapshots), playlists={"v0": text},
                                       origin={"v0": origin_text}, stale=stale))
        return outcome

    def restart(self) -> None:
        """A new process: the ledger from its JSON (the store's file or hash); pods,
        breaks and anchors from the shared store too; nothing else survives."""
        self.ledger = Ledger.from_json(self.ledger.to_json())

    def _timed(self, playlist: MediaPlaylist) -> MediaPlaylist:
        segments = playlist.segments
        if not segments or all(seg.pdt is not None for seg in segments):
            return playlist
        first, end = segments[0].msn, segments[-1].msn + 1
        if not self.anchors:
            self.anchors[first] = EPOCH
        msn, pdt, _exact = choose_anchor(self.anchors, first, end, playlist.target_duration or 2)
        timed = with_pdt(playlist, msn, pdt)
        last = timed.segments[-1]
        assert last.pdt is not None
        self.anchors.setdefault(end, last.pdt + last.step)
        return timed

    def violations(self) -> list[Violation]:
        return check(self.snapshots)

    def stitcher_faults(self) -> list[Violation]:
        return [v for v in self.violations() if v.source == "stitcher"]


def header_value(text: str, tag: str) -> int | None:
    """An integer header tag's value in a served text (None when absent)."""
    for line in text.splitlines():
        if line.startswith(tag + ":"):
            return int(line.partition(":")[2])
    return None


def segment_dsns(text: str) -> dict[str, int]:
    """URI -> discontinuity sequence number of each segment in a served text."""
    playlist = parse_media(text)
    return {seg.uri: seg.discontinuity_sequence for seg in playlist.segments}


_NUMBER = re.compile(r"(\d+)(?=\D*$)")


def slide(text: str, steps: int, *, dsn: str = "keep") -> str:
    """The origin's refresh ``steps`` segments later, synthesised from one window.

    The first ``steps`` segments leave; as many new ones join at the end, each a
    copy of the last segment's EXTINF with the number in its URI advanced (a
    ``CUE-OUT-CONT:<elapsed>/<duration>`` before it is carried on with the elapsed
    time advanced, so an open break continues). The new first segment gets the
    PDT it had (the parser derived it). ``dsn``: ``keep`` writes the header's
    EXT-X-DISCONTINUITY-SEQUENCE as the original did, counting the
    discontinuities that left when the original had the tag and omitting it when
    the original did; ``omit`` never writes it (an origin with B01's fault);
    ``right`` always writes the right value.
    """
    playlist = parse_media(text)
    segs = list(playlist.segments)
    gone, kept = segs[:steps], segs[steps:]
    last = segs[-1]
    extinf = next(r for r in last.raw if r.startswith("#EXTINF:"))
    cont = next((r for r in last.raw if r.startswith("#EXT-X-CUE-OUT-CONT:")), None)
    bodies = [list(seg.raw) for seg in kept]
    if kept and not kept[0].pdt_explicit and kept[0].pdt is not None:
        bodies[0].insert(0, f"#EXT-X-PROGRAM-DATE-TIME:{format_pdt(kept[0].pdt)}")
    elapsed = None
    if cont is not None:
        value = cont.partition(":")[2]
        done, _, total = value.partition("/")
        elapsed, duration = Fraction(done), total
    uri = last.uri
    for _ in range(steps):
        match = _NUMBER.search(uri)
        assert match is not None, uri
        uri = uri[:match.start()] + str(int(match.group(1)) + 1).zfill(len(match.group(1))) \
            + uri[match.end():]
        body = []
        if elapsed is not None:
            elapsed += last.duration
            body.append(f"#EXT-X-CUE-OUT-CONT:{_decimal(elapsed)}/{duration}")
        bodies.append([*body, extinf, uri])
    header = [line.text for line in playlist.header
              if not line.text.startswith(("#EXT-X-MEDIA-SEQUENCE", "#EXT-X-DISCONTINUITY-SEQUENCE"))]
    had_dsn = any(line.text.startswith("#EXT-X-DISCONTINUITY-SEQUENCE") for line in playlist.header)
    lines = [*header, f"#EXT-X-MEDIA-SEQUENCE:{playlist.media_sequence + steps}"]
    value = playlist.discontinuity_sequence + sum(seg.discontinuity for seg in gone)
    if dsn == "right" or (dsn == "keep" and had_dsn):
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{value}")
    for body in bodies:
        lines.extend(body)
    lines.extend(line.text for line in playlist.trailer)
    return render_lines(lines)


def _decimal(value: Fraction) -> str:
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return text
