"""The sequence ledger: what each slot of a (channel, cohort, grid) was published as.

Because ads map one to one onto content slots (``docs/architecture.md``), the
media sequence number of a stitched segment equals the origin's. What must be
remembered is (a) which slots were published as ad, slate or content after a
break, so a slot is never published twice differently (invariant 7), and
(b) how many discontinuities the stitcher added or removed before each slot,
so EXT-X-DISCONTINUITY-SEQUENCE stays right after breaks slide out
(invariant 2). Entries are append-only; old ones are folded into ``base``.
"""

from __future__ import annotations

import enum
import json
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any


class SlotKind(enum.Enum):
    CONTENT = "content"
    AD = "ad"
    SLATE = "slate"


@dataclass(frozen=True, slots=True)
class SlotEntry:
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


@dataclass(frozen=True, slots=True)
class Ledger:
    """An immutable snapshot; :meth:`append` returns a new one."""

    #: Highest MSN published for this key (-1: nothing yet).
    hwm: int = -1
    entries: dict[int, SlotEntry] = field(default_factory=dict)
    #: Sum of ``delta`` over entries folded away (all below ``floor``).
    base: int = 0
    floor: int = 0

    def delta_before(self, msn: int) -> int:
        # Sorted and cut in C: a refresh asks this of a ledger holding every slot the
        # breaks of a 2-hour window touched, and wants the few before (entries are
        # appended in MSN order, so the sort only checks that).
        entries = self.entries
        keys = sorted(entries)
        before = keys[:bisect_left(keys, msn)]
        return self.base + sum(map(_DELTA, map(entries.__getitem__, before)))

    def append(self, new: list[SlotEntry], hwm: int) -> Ledger:
        entries = dict(self.entries)
        for e in new:
            if e.msn <= self.hwm or e.msn in entries:
                continue  # published before: never changed (append-only)
            entries[e.msn] = e
        return Ledger(max(self.hwm, hwm), entries, self.base, self.floor)

    def compact(self, keep_from: int) -> Ledger:
        """Fold entries below ``keep_from`` into ``base`` (they left every window)."""
        if keep_from <= self.floor:
            return self
        gone = [e for m, e in self.entries.items() if m < keep_from]
        if not gone:
            return Ledger(self.hwm, self.entries, self.base, keep_from)
        kept = {m: e for m, e in self.entries.items() if m >= keep_from}
        return Ledger(self.hwm, kept, self.base + sum(e.delta for e in gone), keep_from)

    def to_json(self) -> str:
        return json.dumps({"hwm": self.hwm, "base": self.base, "floor": self.floor,
                           "entries": [e.to_json() for e in sorted(self.entries.values(),
                                                                  key=lambda e: e.msn)]})

    @staticmethod
    def from_json(text: str) -> Ledger:
        data = json.loads(text)
        entries = {e[0]: SlotEntry.from_json(e) for e in data["entries"]}
        return Ledger(int(data["hwm"]), entries, int(data["base"]), int(data["floor"]))
