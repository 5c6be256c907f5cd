"""Shared live state behind one small interface.

The embedded default (:class:`MemoryStore`) keeps everything in process and
writes ledgers and frozen decisions to files under ``data_dir`` so a restart
does not send players backwards. The Redis implementation
(:mod:`stitcher.redis_store`, scale-out) keeps the same contract, checked by
one parametrized test suite (``tests/stitcher/test_redis_store.py``): ``put_pod_if_absent`` is set-if-absent (the first decision wins
everywhere) and ledger appends never change a published slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Protocol, cast

from redis.exceptions import RedisError

from manifests.breaks import Break
from manifests.ledger import Ledger, SlotEntry
from manifests.pod import ItemKind, Pod, PodItem

log = logging.getLogger(__name__)

#: What a store that is not answering raises (Redis gone, a connection reset, a
#: timeout; an embedded store's disk): callers that can serve something else catch
#: these, never a bare Exception.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

#: Timeline anchors kept per grid (a window's worth of reloads is plenty).
ANCHORS_KEPT = 16


@dataclass(frozen=True, slots=True)
class RenderBlob:
    """A rendered playlist as instances share it: the body, compressed once, and its ETag."""

    body: bytes
    gzipped: bytes
    etag: str
    target_duration: int

    def to_bytes(self) -> bytes:
        head = f"{self.etag}\n{self.target_duration}\n{len(self.body)}\n".encode()
        return head + self.body + self.gzipped

    @staticmethod
    def from_bytes(raw: bytes) -> RenderBlob:
        etag, td, size, rest = raw.split(b"\n", 3)
        n = int(size)
        return RenderBlob(rest[:n], rest[n:], etag.decode(), int(td))


#: A render's identity: (rendition, cohort, mode, origin version).
RenderKey = tuple[str, str, str, str]


class Store(Protocol):
    async def get_breaks(self, channel: str) -> tuple[Break, ...]: ...

    async def put_breaks(self, channel: str, breaks: tuple[Break, ...]) -> None: ...

    async def get_decision(self, channel: str, break_id: str, cohort: str) -> str | None: ...

    async def put_decision_if_absent(self, channel: str, break_id: str, cohort: str,
                                     decision: str) -> str:
        """Freeze a decision (JSON); returns the one that won (maybe another instance's)."""
        ...

    async def decide_once(self, channel: str, break_id: str, cohort: str,
                          produce: Callable[[], Awaitable[str]]) -> str:
        """Run ``produce`` (ask the ad server) at most once across instances and freeze
        its result; returns the frozen decision."""
        ...

    async def get_ledger(self, channel: str, cohort: str, grid: str) -> Ledger: ...

    async def append_ledger(self, channel: str, cohort: str, grid: str,
                            entries: list[SlotEntry], hwm: int, keep_from: int,
                            anchor: tuple[int, int] | None = None) -> Ledger:
        """Atomically ``Ledger.append(entries, hwm, anchor).compact(keep_from)`` on the
        stored ledger; returns the result (maybe with another instance's slots)."""
        ...

    async def anchors(self, channel: str, grid: str, record: dict[int, str]) -> dict[int, str]:
        """Timeline anchors (MSN -> ISO PDT) of a grid whose origin sends no PDT.

        Records ``record`` first, set-if-absent per MSN (the first instance to time
        an MSN fixes it for all), keeps the newest few, returns them all.
        """
        ...

    async def get_render(self, channel: str, key: RenderKey) -> RenderBlob | None:
        """Another instance's render of ``key``, if it is still cached."""
        ...

    async def put_render(self, channel: str, key: RenderKey, blob: RenderBlob,
                         ttl: float) -> None:
        """Share a render for ``ttl`` seconds (a few target durations)."""
        ...


def pod_to_json(pod: Pod) -> str:
    return json.dumps({
        "break_id": pod.break_id, "nominal": str(pod.nominal), "personalized": pod.personalized,
        "items": [{"kind": it.kind.value, "creative": it.creative, "duration": str(it.duration),
                   "start": str(it.start), "span": str(it.span), "segments": it.segments}
                  for it in pod.items],
    })


def pod_from_json(text: str) -> Pod:
    d = json.loads(text)
    items = tuple(PodItem(ItemKind(i["kind"]), i["creative"], Fraction(i["duration"]),
                          Fraction(i["start"]), Fraction(i["span"]), int(i["segments"]))
                  for i in d["items"])
    return Pod(d["break_id"], items, Fraction(d["nominal"]), bool(d["personalized"]))


def break_to_json(b: Break) -> dict[str, object]:
    d = asdict(b)
    d["start"] = b.start.isoformat()
    d["end"] = b.end.isoformat() if b.end else None
    d["event_start"] = b.event_start.isoformat() if b.event_start else None
    d["planned_duration"] = str(b.planned_duration) if b.planned_duration is not None else None
    d["params"] = [list(p) for p in b.params]
    return d


def break_from_json(d: dict[str, object]) -> Break:
    d = dict(d)
    d["start"] = datetime.fromisoformat(str(d["start"]))
    d["end"] = datetime.fromisoformat(str(d["end"])) if d.get("end") else None
    d["event_start"] = (datetime.fromisoformat(str(d["event_start"]))
                        if d.get("event_start") else None)
    d["planned_duration"] = Fraction(str(d["planned_duration"])) if d.get(
        "planned_duration") is not None else None
    params = cast("Iterable[Iterable[str]]", d.get("params") or ())
    d["params"] = tuple(tuple(p) for p in params)
    return Break(**d)  # type: ignore[arg-type]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class MemoryStore:
    """In-process store; with ``data_dir`` it persists ledgers, pods and breaks."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._dir = data_dir / "state" if data_dir else None
        self._breaks: dict[str, tuple[Break, ...]] = {}
        self._decisions: dict[tuple[str, str, str], str] = {}
        self._anchors: dict[tuple[str, str], dict[int, str]] = {}
        self._ledgers: dict[tuple[str, str, str], Ledger] = {}
        self._lock = asyncio.Lock()
        if self._dir:
            self._load()

    @property
    def state_dir(self) -> Path | None:
        """Where this store persists (None: memory only); the admin API's control
        state is kept beside it."""
        return self._dir

    # --- persistence (embedded mode) ---
    def _path(self, *parts: str) -> Path:
        assert self._dir is not None
        return self._dir.joinpath(*(_safe(p) for p in parts))

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def _load(self) -> None:
        assert self._dir is not None
        if not self._dir.exists():
            return
        for f in self._dir.glob("*/breaks.json"):
            try:
                self._breaks[f.parent.name] = tuple(
                    break_from_json(d) for d in json.loads(f.read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable %s: %s", f, exc)
        for f in self._dir.glob("*/decisions/*/*.json"):
            self._decisions[(f.parents[2].name, f.parent.name, f.stem)] = f.read_text()
        for f in self._dir.glob("*/ledgers/*/*.json"):
            try:
                self._ledgers[(f.parents[2].name, f.parent.name, f.stem)] = Ledger.from_json(
                    f.read_text())
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable %s: %s", f, exc)

    # --- Store ---
    async def get_breaks(self, channel: str) -> tuple[Break, ...]:
        return self._breaks.get(channel, ())

    async def put_breaks(self, channel: str, breaks: tuple[Break, ...]) -> None:
        if self._breaks.get(channel) == breaks:
            return
        self._breaks[channel] = breaks
        if self._dir:
            self._write(self._path(channel, "breaks.json"),
                        json.dumps([break_to_json(b) for b in breaks]))

    async def get_decision(self, channel: str, break_id: str, cohort: str) -> str | None:
        return self._decisions.get((channel, break_id, cohort))

    async def put_decision_if_absent(self, channel: str, break_id: str, cohort: str,
                                     decision: str) -> str:
        key = (channel, break_id, cohort)
        existing = self._decisions.get(key)
        if existing is not None:
            return existing
        self._decisions[key] = decision
        if self._dir:
            self._write(self._path(channel, "decisions", break_id, cohort + ".json"), decision)
        return decision

    async def decide_once(self, channel: str, break_id: str, cohort: str,
                          produce: Callable[[], Awaitable[str]]) -> str:
        """One process: the runtime already shares one task per (break, cohort)."""
        existing = self._decisions.get((channel, break_id, cohort))
        if existing is not None:
            return existing
        return await self.put_decision_if_absent(channel, break_id, cohort, await produce())

    async def get_ledger(self, channel: str, cohort: str, grid: str) -> Ledger:
        return self._ledgers.get((channel, cohort, grid), Ledger())

    async def anchors(self, channel: str, grid: str, record: dict[int, str]) -> dict[int, str]:
        found = self._anchors.setdefault((channel, grid), {})
        for msn, pdt in record.items():
            found.setdefault(msn, pdt)
        for msn in sorted(found)[:-ANCHORS_KEPT]:
            del found[msn]
        return dict(found)

    async def get_render(self, channel: str, key: RenderKey) -> RenderBlob | None:
        """One process: the runtime's own render cache is the only one there is."""
        return None

    async def put_render(self, channel: str, key: RenderKey, blob: RenderBlob,
                         ttl: float) -> None:
        return None

    async def append_ledger(self, channel: str, cohort: str, grid: str,
                            entries: list[SlotEntry], hwm: int, keep_from: int,
                            anchor: tuple[int, int] | None = None) -> Ledger:
        key = (channel, cohort, grid)
        old = self._ledgers.get(key, Ledger())
        new = old.append(entries, hwm, anchor).compact(keep_from)
        if new != old:
            self._ledgers[key] = new
            if self._dir:
                self._write(self._path(channel, "ledgers", cohort, grid + ".json"), new.to_json())
        return new
