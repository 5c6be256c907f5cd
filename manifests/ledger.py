"""The sequence ledger: what each slot of a (channel, cohort, grid) was published as.

Because ads map one to one onto content slots (``docs/architecture.md``), the
media sequence number of a stitched segment equals the origin's. What must be
remembered is (a) which slots were published as ad, slate or content after a
break, so a slot is never published twice differently (invariant 7), and
(b) every discontinuity the stitched playlist carries, so
EXT-X-DISCONTINUITY-SEQUENCE stays right after they slide out (invariant 2).
Entries are append-only; old ones are folded into ``base`` and ``dsn``.

The stitched DSN is the ledger's own count, not the origin's tag plus a
correction: from an anchor (``dsn_msn``, ``dsn``: the DSN of a window whose
first slot is ``dsn_msn``), every slot published since that carries a
discontinuity in the stitched output (the stitcher's own, and the origin's
on content slots) is an entry with ``discontinuity`` set. An origin that omits
EXT-X-DISCONTINUITY-SEQUENCE, or gets it wrong, while a discontinuity leaves
its window (google/ExoPlayer#1789, corpus B01) therefore cannot move a
segment's discontinuity number; an origin that gets it right gives the same
value as its tag plus the stitcher's delta. The anchor is set once, from the
first window published (first writer wins), and moves only forward: by
compaction (folding the count of the entries it drops), or by re-anchoring
after a gap (a window that starts above ``hwm + 1``: slots nobody published,
whose discontinuities nobody saw), which is accepted only while that gap
still exists in the store, so every instance keeps the same anchor.
"""

from __future__ import annotations

import enum
import json
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple


class SlotKind(enum.Enum):
    CONTENT = "content"
    AD = "ad"
    SLATE = "slate"


class SlotEntry(NamedTuple):
    """What one slot was published as. A named tuple, not a frozen dataclass: a cold
    render of a 2-hour window creates one per slot its breaks touch, and a frozen
    dataclass sets each field through ``object.__setattr__``."""

    msn: int
    kind: SlotKind
    break_id: str = ""
    item: int = -1
    segment: int = -1
    #: The stitched playlist has EXT-X-DISCONTINUITY before this slot.
    discontinuity: bool = False
    #: Stitched minus origin discontinuity tags on this slot: -1, 0 or +1.
    delta: int = 0

    def to_json(self) -> list[Any]:
        return [self.msn, self.kind.value, self.break_id, self.item, self.segment,
                int(self.discontinuity), self.delta]

    @staticmethod
    def from_json(data: list[Any]) -> SlotEntry:
        msn, kind, break_id, item, segment, disc, delta = data
        return SlotEntry(int(msn), SlotKind(kind), str(break_id), int(item),
                         int(segment), bool(disc), int(delta))


_DELTA: Callable[[SlotEntry], int] = attrgetter("delta")
_DISCONTINUITY: Callable[[SlotEntry], bool] = attrgetter("discontinuity")


@dataclass(frozen=True, slots=True)
class Ledger:
    """An immutable snapshot; :meth:`append` returns a new one."""

    #: Highest MSN published for this key (-1: nothing yet).
    hwm: int = -1
    entries: dict[int, SlotEntry] = field(default_factory=dict)
    #: Sum of ``delta`` over entries folded away (all below ``floor``).
    base: int = 0
    floor: int = 0
    #: The discontinuity anchor: a window whose first slot is ``dsn_msn`` carries
    #: EXT-X-DISCONTINUITY-SEQUENCE ``dsn`` (-1: no anchor yet, a fresh ledger or
    #: one written before the anchor existed).
    dsn_msn: int = -1
    dsn: int = 0

    def delta_before(self, msn: int) -> int:
        # Sorted and cut in C: a refresh asks this of a ledger holding every slot the
        # breaks of a 2-hour window touched, and wants the few before (entries are
        # appended in MSN order, so the sort only checks that).
        entries = self.entries
        keys = sorted(entries)
        before = keys[:bisect_left(keys, msn)]
        return self.base + sum(map(_DELTA, map(entries.__getitem__, before)))

    def dsn_before(self, msn: int) -> int | None:
        """The stitched EXT-X-DISCONTINUITY-SEQUENCE of a window starting at ``msn``,
        from the ledger alone; None where it does not know every discontinuity
        between its anchor and ``msn`` (no anchor, before it, above ``hwm + 1``)."""
        if self.dsn_msn < 0 or not self.dsn_msn <= msn <= self.hwm + 1:
            return None
        # As delta_before: sorted and cut in C, then counted in C (a refresh asks
        # this every time, of a ledger holding every break slot of the window).
        entries = self.entries
        keys = sorted(entries)
        between = keys[bisect_left(keys, self.dsn_msn):bisect_left(keys, msn)]
        return self.dsn + sum(map(_DISCONTINUITY, map(entries.__getitem__, between)))

    def append(self, new: list[SlotEntry], hwm: int,
               anchor: tuple[int, int] | None = None) -> Ledger:
        """Add the slots above ``hwm`` not yet present; ``anchor`` (msn, dsn) is taken
        when there is none yet, or when its slot is above the stored ``hwm`` (a gap:
        re-anchoring), and ignored otherwise (another writer anchored first)."""
        entries = dict(self.entries)
        for e in new:
            if e.msn <= self.hwm or e.msn in entries:
                continue  # published before: never changed (append-only)
            entries[e.msn] = e
        dsn_msn, dsn = self.dsn_msn, self.dsn
        if anchor is not None and anchor[0] >= 0 and (dsn_msn < 0 or anchor[0] > self.hwm):
            dsn_msn, dsn = anchor
        return Ledger(max(self.hwm, hwm), entries, self.base, self.floor, dsn_msn, dsn)

    def compact(self, keep_from: int) -> Ledger:
        """Fold entries below ``keep_from`` into ``base`` and the anchor (they left
        every window)."""
        if keep_from <= self.floor:
            return self
        gone = [e for m, e in self.entries.items() if m < keep_from]
        dsn_msn, dsn = self.dsn_msn, self.dsn
        if dsn_msn >= 0:
            # Every entry is at most hwm, so all of ``gone`` lies below ``upto``.
            upto = min(keep_from, self.hwm + 1)
            if upto > dsn_msn:
                dsn += sum(1 for e in gone if e.msn >= dsn_msn and e.discontinuity)
                dsn_msn = upto
        kept = {m: e for m, e in self.entries.items() if m >= keep_from} if gone else self.entries
        return Ledger(self.hwm, kept, self.base + sum(e.delta for e in gone), keep_from,
                      dsn_msn, dsn)

    def to_json(self) -> str:
        return json.dumps({"hwm": self.hwm, "base": self.base, "floor": self.floor,
                           "dsn_msn": self.dsn_msn, "dsn": self.dsn,
                           "entries": [e.to_json() for e in sorted(self.entries.values(),
                                                                  key=lambda e: e.msn)]})

    @staticmethod
    def from_json(text: str) -> Ledger:
        data = json.loads(text)
        entries = {e[0]: SlotEntry.from_json(e) for e in data["entries"]}
        return Ledger(int(data["hwm"]), entries, int(data["base"]), int(data["floor"]),
                      int(data.get("dsn_msn", -1)), int(data.get("dsn", 0)))
