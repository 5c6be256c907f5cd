"""One contract, two stores: MemoryStore (embedded) and RedisStore (scale-out).

Every test runs against both, the Redis one on a real ``redis-server`` the
session starts itself. The contract is what lets instances agree: the first
decision wins everywhere, a published ledger slot never changes, hwm never
goes down, compaction keeps ``delta_before`` exact, and state outlives the
store object (files for the embedded store, the server for Redis).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from manifests.breaks import Break
from manifests.ledger import Ledger, SlotEntry, SlotKind
from stitcher.redis_store import RedisStore
from stitcher.store import MemoryStore, RenderBlob

_channels = itertools.count()


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest,
                 tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Store objects over one backing state: ``stores()`` for another instance's
    view (a new Redis connection; the same object in memory), ``stores(reopen=True)``
    for a new store object over the persisted state (a restart)."""
    if request.param == "memory":  # one process: "instances" share the one store object
        current = [MemoryStore(tmp_path)]

        def memory(reopen: bool = False) -> MemoryStore:
            if reopen:
                current[0] = MemoryStore(tmp_path)
            return current[0]

        yield memory
        return
    url = request.getfixturevalue("redis_url")
    made: list[RedisStore] = []

    def factory(reopen: bool = False) -> RedisStore:
        made.append(RedisStore.from_url(url))
        return made[-1]

    await factory().client.flushdb()
    yield factory
    for s in made:
        await s.close()


def _ch() -> str:
    return f"ch{next(_channels)}"


def _ad(msn: int, segment: int, *, disc: bool = False, delta: int = 0) -> SlotEntry:
    return SlotEntry(msn, SlotKind.AD, "b1", 0, segment, disc, delta)


async def test_decision_set_if_absent_under_concurrency(stores: Callable[[], Any]) -> None:
    ch = _ch()
    # 50 concurrent puts over 5 store objects (5 "instances" on one backing).
    objects = [stores() for _ in range(5)]
    winners = await asyncio.gather(*(
        objects[i % 5].put_decision_if_absent(ch, "brk", "us", f'{{"n": {i}}}')
        for i in range(50)))
    assert len(set(winners)) == 1, set(winners)
    for s in objects:
        assert await s.get_decision(ch, "brk", "us") == winners[0]
    # Another (break, cohort) is independent.
    assert await objects[0].get_decision(ch, "brk", "fr") is None
    assert await objects[0].put_decision_if_absent(ch, "brk", "fr", "x") == "x"


async def test_decide_once_runs_producer_once(stores: Callable[[], Any]) -> None:
    ch = _ch()
    objects = [stores() for _ in range(3)]
    calls: list[int] = []

    async def produce(i: int) -> str:
        calls.append(i)
        await asyncio.sleep(0.05)
        return f"decision-{i}"

    winners = await asyncio.gather(*(
        objects[i % 3].decide_once(ch, "brk", "us", lambda i=i: produce(i)) for i in range(3)))
    assert len(set(winners)) == 1
    if isinstance(objects[0], RedisStore):  # across instances: one ad request
        assert len(calls) == 1, calls


async def test_rendered_playlists_are_shared_for_a_while(stores: Callable[[], Any]) -> None:
    """Redis shares a render (body, gzipped body, ETag) across instances with a TTL;
    the embedded store shares nothing (the runtime's own cache is the one there is)."""
    ch = _ch()
    blob = RenderBlob(b"#EXTM3U\n\n", gzip.compress(b"#EXTM3U\n\n"), '"abc"', 2)
    key = ("v0", "us", "cohort", "0123abcd")
    writer, reader = stores(), stores()
    await writer.put_render(ch, key, blob, ttl=6)
    got = await reader.get_render(ch, key)
    if not isinstance(writer, RedisStore):
        assert got is None
        return
    assert got == blob
    other = RenderBlob(b"other", b"", '"x"', 2)
    await reader.put_render(ch, key, other, ttl=6)  # set-if-absent: the first copy stays
    assert await writer.get_render(ch, key) == blob
    for other_key in (("v0", "us", "session", "0123abcd"), ("v0", "fr", "cohort", "0123abcd"),
                      ("v1", "us", "cohort", "0123abcd"), ("v0", "us", "cohort", "ffff")):
        assert await reader.get_render(ch, other_key) is None
    assert 5000 < await writer.client.pttl(writer._render_key(ch, key)) <= 6000
    await writer.put_render(ch, ("v9", "us", "cohort", "1"), blob, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await reader.get_render(ch, ("v9", "us", "cohort", "1")) is None


async def test_ledger_append_only(stores: Callable[[], Any]) -> None:
    ch = _ch()
    s = stores()
    first = await s.append_ledger(ch, "us", "g", [_ad(10, 0), _ad(11, 1)], 11, 0)
    assert first.hwm == 11 and set(first.entries) == {10, 11}
    # A conflicting append for published MSNs (and one at the hwm) keeps the first.
    conflicting = [SlotEntry(10, SlotKind.SLATE), SlotEntry(11, SlotKind.CONTENT)]
    after = await s.append_ledger(ch, "us", "g", conflicting + [_ad(12, 2)], 12, 0)
    assert after.entries[10] == _ad(10, 0) and after.entries[11] == _ad(11, 1)
    assert after.entries[12] == _ad(12, 2)
    # Same result as the pure Ledger model, and re-read from the store.
    model = Ledger().append([_ad(10, 0), _ad(11, 1)], 11).compact(0)
    model = model.append(conflicting + [_ad(12, 2)], 12).compact(0)
    assert after == model
    assert await s.get_ledger(ch, "us", "g") == model
    # Below the hwm, even a never-recorded slot cannot be filled in later.
    gap = await s.append_ledger(ch, "us", "g2", [_ad(20, 0)], 25, 0)
    again = await s.append_ledger(ch, "us", "g2", [_ad(22, 1)], 25, 0)
    assert set(again.entries) == {20} == set(gap.entries)


async def test_concurrent_appends_agree(stores: Callable[[], Any]) -> None:
    ch = _ch()
    objects = [stores() for _ in range(4)]
    results = await asyncio.gather(*(
        o.append_ledger(ch, "us", "g", [SlotEntry(5, SlotKind.AD, "b", i, 0)], 5, 0)
        for i, o in enumerate(objects)))
    kept = {r.entries[5] for r in results}
    assert len(kept) == 1  # every writer is told the one slot that was kept


async def test_hwm_monotonic(stores: Callable[[], Any]) -> None:
    ch = _ch()
    s = stores()
    assert (await s.get_ledger(ch, "us", "g")).hwm == -1
    assert (await s.append_ledger(ch, "us", "g", [], 40, 0)).hwm == 40
    assert (await s.append_ledger(ch, "us", "g", [], 30, 0)).hwm == 40
    assert (await s.append_ledger(ch, "us", "g", [_ad(35, 0)], 35, 0)).entries == {}
    assert (await s.get_ledger(ch, "us", "g")).hwm == 40


async def test_compaction_keeps_delta_before_exact(stores: Callable[[], Any]) -> None:
    ch = _ch()
    s = stores()
    entries = [_ad(100, 0, disc=True, delta=1), _ad(101, 1), _ad(102, 2),
               SlotEntry(103, SlotKind.CONTENT, "b1", discontinuity=True, delta=1),
               _ad(110, 0, disc=True, delta=1),
               SlotEntry(112, SlotKind.CONTENT, "b2", discontinuity=True, delta=-1)]
    full = await s.append_ledger(ch, "us", "g", entries, 115, 0)
    expected = {m: full.delta_before(m) for m in range(100, 120)}
    assert expected[104] == 2 and expected[113] == 2
    compacted = await s.append_ledger(ch, "us", "g", [], 115, 104)
    assert compacted.floor == 104 and compacted.base == 2
    assert set(compacted.entries) == {110, 112}
    for m in range(104, 120):
        assert compacted.delta_before(m) == expected[m], m
    # Compacting to an older floor is a no-op; a later one folds more.
    assert await s.append_ledger(ch, "us", "g", [], 115, 90) == compacted
    later = await s.append_ledger(ch, "us", "g", [], 115, 111)
    assert later.base == 3 and later.delta_before(113) == expected[113]


async def test_breaks_round_trip(stores: Callable[[], Any]) -> None:
    ch = _ch()
    s = stores()
    assert await s.get_breaks(ch) == ()
    start = datetime(2027, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    breaks = (
        Break("b1", start, Fraction("30.03"), end=None, dialect="cue-out",
              params=(("k", "v"),), pts=123456),
        Break("b2", start.replace(minute=5), None, end=start.replace(minute=6),
              event_id="42", segmentation_type_id=0x34, upid="u", start_known=False),
    )
    await s.put_breaks(ch, breaks)
    assert await s.get_breaks(ch) == breaks
    await s.put_breaks(ch, breaks[1:])
    assert await s.get_breaks(ch) == breaks[1:]


async def test_state_outlives_the_store_object(stores: Callable[[], Any]) -> None:
    ch = _ch()
    s = stores()
    start = datetime(2027, 1, 1, tzinfo=UTC)
    await s.put_breaks(ch, (Break("b1", start, Fraction(30)),))
    await s.put_decision_if_absent(ch, "b1", "us", '{"d": 1}')
    ledger = await s.append_ledger(ch, "us", "v", [_ad(7, 0, disc=True, delta=1)], 9, 0)
    fresh = stores(reopen=True)
    assert fresh is not s
    assert await fresh.get_breaks(ch) == (Break("b1", start, Fraction(30)),)
    assert await fresh.get_decision(ch, "b1", "us") == '{"d": 1}'
    assert await fresh.put_decision_if_absent(ch, "b1", "us", "other") == '{"d": 1}'
    assert await fresh.get_ledger(ch, "us", "v") == ledger


async def test_redis_keys_share_the_channel_slot(redis_url: str) -> None:
    """Every coordination key of a channel carries its hash tag (one cluster slot)."""
    from redis.crc import key_slot

    store = RedisStore.from_url(redis_url)
    try:
        ch = _ch()
        await store.put_breaks(ch, ())
        await store.put_decision_if_absent(ch, "b", "us", "d")
        await store.append_ledger(ch, "us", "g", [_ad(1, 0)], 1, 0)
        await store.decide_once(ch, "b2", "us", _const("d2"))
        keys = [k async for k in store.client.scan_iter(match=f"ss:{{ch:{ch}}}:*")]
        assert len(keys) >= 5, keys
        assert len({key_slot(k) for k in keys}) == 1
    finally:
        await store.close()


def _const(value: str) -> Callable[[], Any]:
    async def produce() -> str:
        return value

    return produce


async def test_timeline_anchors_first_writer_wins_and_trims(stores: Callable[[], Any]) -> None:
    from stitcher.store import ANCHORS_KEPT

    ch = _ch()
    a, b = stores(), stores()
    first = await a.anchors(ch, "main", {100: "2026-12-03T20:00:00+00:00"})
    # A second instance timing the same MSN differently does not move it.
    second = await b.anchors(ch, "main", {100: "2026-12-03T20:00:05+00:00"})
    assert first == second == {100: "2026-12-03T20:00:00+00:00"}
    for msn in range(101, 101 + 2 * ANCHORS_KEPT):
        await a.anchors(ch, "main", {msn: f"2026-12-03T20:01:{msn % 60:02d}+00:00"})
    kept = await b.anchors(ch, "main", {})
    assert sorted(kept) == list(range(101 + ANCHORS_KEPT, 101 + 2 * ANCHORS_KEPT))
    assert await a.anchors(ch, "audio", {}) == {}


async def test_discontinuity_anchor_mirrors_the_model(stores: Callable[[], Any]) -> None:
    """The ledger's discontinuity anchor (B01: the stitched DSN counts what left the
    window) behaves in the store exactly as in the pure model: the first anchor
    wins, a later one only after a gap, compaction folds the discontinuity
    entries into it (an ad slot whose origin discontinuity was removed, delta -1,
    is not one), and it survives a reopen."""
    ch = _ch()
    s = stores()
    steps: list[tuple[list[SlotEntry], int, int, tuple[int, int] | None]] = [
        ([SlotEntry(102, SlotKind.CONTENT, discontinuity=True)], 103, 88, (100, 3)),
        ([_ad(104, 0, disc=True, delta=1), _ad(105, 1, delta=-1)], 106, 91, (103, 0)),
        ([SlotEntry(107, SlotKind.CONTENT, "b", discontinuity=True, delta=1)], 108, 104, None),
        ([], 108, 107, None),
        ([_ad(130, 0, disc=True, delta=1)], 131, 120, (128, 9)),
        ([], 131, 131, None),
    ]
    model = Ledger()
    for entries, hwm, keep_from, anchor in steps:
        got = await s.append_ledger(ch, "us", "g", entries, hwm, keep_from, anchor)
        model = model.append(entries, hwm, anchor).compact(keep_from)
        assert got == model
    assert [model.dsn_before(m) for m in (127, 131, 132, 133)] == [None, 10, 10, None]
    assert await stores(reopen=True).get_ledger(ch, "us", "g") == model


async def test_a_burst_above_the_pool_size_waits_for_connections(redis_url: str) -> None:
    """Found by the drill: 2,000 viewers entering a break sent more concurrent store
    commands than redis-py's default pool holds, which raises MaxConnectionsError
    ("Too many connections") with Redis healthy: 500s and lost beacons. The store's
    pool blocks at its limit instead: every command of the burst succeeds."""
    from stitcher.redis_store import POOL_SIZE

    store = RedisStore.from_url(redis_url)
    ch = _ch()
    try:
        await store.put_decision_if_absent(ch, "b1", "us", "frozen")
        # Scripts hold their connection for a round trip each: 4x the pool at once.
        results = await asyncio.gather(*(store.put_decision_if_absent(ch, "b1", "us", f"x{i}")
                                         for i in range(4 * POOL_SIZE)))
        assert set(results) == {"frozen"}
    finally:
        await store.close()
