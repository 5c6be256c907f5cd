"""One live channel at run time: origin -> breaks -> decisions -> stitched renders.

Renders are per (rendition, cohort, origin version), never per viewer: every
session of a cohort gets the same bytes, rendered once and compressed once.
Concurrent requests for the same render share one task. The ledger of a
(cohort, grid) is read, extended and written under one lock, so two renditions
of the same grid rendering at once cannot publish a slot differently.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aiohttp

from manifests.breaks import Break, BreakPolicy, prune, update_breaks
from manifests.markers import MarkerErrors, observe
from manifests.multivariant import Multivariant, Rendition, parse_multivariant, rewrite_multivariant
from manifests.pod import Pod, PodItem
from manifests.splice import (
    SpliceCache, SpliceOptions, SpliceResult, breaks_to_decide, splice,
)
from stitcher.ads import SLATE_KEY, AdDecider, CreativeLibrary, Decision
from stitcher.conditioning import RenditionSpec, probe_rendition
from stitcher.config import ChannelConfig
from stitcher.errors import NotFound, OriginUnavailable
from stitcher.metrics import Metrics
from stitcher.origin import Fetched, OriginFetcher
from stitcher.sessions import cohort_attributes
from stitcher.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    gzipped: bytes
    etag: str
    target_duration: int
    stale: bool
    stale_reason: str | None
    result: SpliceResult


class _Uris:
    """Ad segments route through the session path (beacons); slate goes direct."""

    def __init__(self, rid: str, library: CreativeLibrary, assets_base: str) -> None:
        self.rid = rid
        self.library = library
        self.assets_base = assets_base

    def ad_segment(self, break_id: str, item_index: int, item: PodItem, segment: int) -> str:
        return f"ad/{self.rid}/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int) -> str:
        path = self.library.segment_path(SLATE_KEY, self.rid, segment)
        return f"{self.assets_base}/{path}" if path else f"slate/{self.rid}/{segment}.ts"


class ChannelRuntime:
    def __init__(self, cfg: ChannelConfig, *, http: aiohttp.ClientSession, store: Store,
                 decider: AdDecider, library: CreativeLibrary, metrics: Metrics,
                 assets_base: str, origin_timeout: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.store = store
        self.decider = decider
        self.library = library
        self.metrics = metrics
        self.assets_base = assets_base
        self.fetcher = OriginFetcher(http, metrics, cfg.id, timeout=origin_timeout, clock=clock)
        self._clock = clock
        self._http = http
        self._origin_timeout = origin_timeout
        self.policy = BreakPolicy(max_duration=Fraction(str(cfg.max_break)))
        self._mv: Multivariant | None = None
        self._mv_at = 0.0
        self._mv_lock = asyncio.Lock()
        self.specs: list[RenditionSpec] = []
        self.nominal: Fraction | None = cfg.nominal
        self._prepared: asyncio.Task[None] | None = None
        self._renders: OrderedDict[tuple[str, str, str], Rendered] = OrderedDict()
        self._render_tasks: dict[tuple[str, str, str], asyncio.Task[Rendered]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._splice_caches: dict[tuple[str, str], SpliceCache] = {}
        self._uris: dict[str, _Uris] = {}
        self._options: dict[str, SpliceOptions] = {}
        self._decisions: dict[tuple[str, str], Decision] = {}
        self._decision_tasks: dict[tuple[str, str], asyncio.Task[Decision]] = {}
        self.active_cohorts: dict[str, float] = {}
        self.breaks: tuple[Break, ...] = ()

    # ----------------------------------------------------------- multivariant
    async def multivariant(self) -> Multivariant:
        async with self._mv_lock:
            if self._mv is not None and self._clock() - self._mv_at < 30:
                return self._mv
            try:
                async with self._http.get(self.cfg.origin_url, timeout=aiohttp.ClientTimeout(
                        total=self._origin_timeout)) as resp:
                    if resp.status != 200:
                        raise OriginUnavailable(f"origin multivariant HTTP {resp.status}",
                                                retry_after=2)
                    text = await resp.text()
                self._mv = parse_multivariant(text, self.cfg.origin_url)
                self._mv_at = self._clock()
            except Exception as exc:
                self.metrics.origin_errors.labels(self.cfg.id, "multivariant").inc()
                if self._mv is None:
                    if isinstance(exc, OriginUnavailable):
                        raise
                    raise OriginUnavailable(f"origin multivariant unavailable: {exc}",
                                            retry_after=2) from exc
                log.warning("multivariant refresh failed, keeping last good: %s", exc)
                self._mv_at = self._clock() - 20  # retry in ~10 s
            return self._mv

    def multivariant_for_session(self, mv: Multivariant) -> str:
        return rewrite_multivariant(mv, self.cfg.origin_url, lambda r: f"media/{r.id}.m3u8")

    # ----------------------------------------------------------- preparation
    def prepare(self) -> asyncio.Task[None]:
        """Probe the content ladder and condition the slate (once, in the background)."""
        if self._prepared is None or (self._prepared.done() and self._prepared.exception()):
            self._prepared = asyncio.ensure_future(self._prepare())
        return self._prepared

    async def _prepare(self) -> None:
        mv = await self.multivariant()
        specs: list[RenditionSpec] = []
        for r in mv.renditions:
            if r.kind != "video":
                continue
            fetched = await self.fetcher.get(r.uri)
            seg = fetched.playlist.segments[-1]
            nominal = self.nominal or Fraction(fetched.playlist.target_duration or 2)
            self.nominal = nominal
            from urllib.parse import urljoin
            spec = await probe_rendition(urljoin(r.uri, seg.uri), r.id, segment_duration=nominal)
            if r.bandwidth:
                from dataclasses import replace
                spec = replace(spec, video_bitrate=int(r.bandwidth * 0.85))
            specs.append(spec)
        self.specs = specs
        if self.cfg.slate:
            await self.library.ensure(SLATE_KEY, self.cfg.slate, specs)
        log.info("channel %s ready: %d renditions, segment %s s", self.cfg.id, len(specs),
                 self.nominal)

    async def warm_up(self) -> int:
        """Probe the ladder, condition the slate and the ad server's current
        creatives before the event (demo, tests, ops). Returns creatives ready."""
        await self.prepare()
        ready = await self.decider.prefetch_creatives(self.cfg, self.specs,
                                                      Fraction(str(self.cfg.max_break)))
        await asyncio.gather(*self.library.pending())
        return ready

    # ----------------------------------------------------------- rendering
    async def render(self, rid: str, cohort: str) -> Rendered:
        mv = await self.multivariant()
        rendition = mv.rendition(rid)
        if rendition is None:
            raise NotFound(f"no rendition {rid!r} on channel {self.cfg.id!r}")
        self.active_cohorts[cohort] = time.monotonic()
        if self._prepared is None:
            self.prepare()
        fetched = await self.fetcher.get(rendition.uri)
        key = (rid, cohort, fetched.version)
        cached = self._renders.get(key)
        if cached is not None:
            self.metrics.render_cache.labels(self.cfg.id, cohort, "hit").inc()
            if cached.stale != fetched.stale:
                return Rendered(cached.body, cached.gzipped, cached.etag, cached.target_duration,
                                fetched.stale, fetched.error, cached.result)
            return cached
        task = self._render_tasks.get(key)
        if task is None:
            self.metrics.render_cache.labels(self.cfg.id, cohort, "miss").inc()
            task = asyncio.ensure_future(self._render(rendition, cohort, fetched))
            self._render_tasks[key] = task
            task.add_done_callback(lambda _t: self._render_tasks.pop(key, None))
        else:
            self.metrics.render_cache.labels(self.cfg.id, cohort, "coalesced").inc()
        rendered = await asyncio.shield(task)
        self._renders[key] = rendered
        while len(self._renders) > 256:
            self._renders.popitem(last=False)
        return rendered

    async def _render(self, rendition: Rendition, cohort: str, fetched: Fetched) -> Rendered:
        started = time.perf_counter()
        playlist = fetched.playlist
        errors = MarkerErrors()
        observations = observe(playlist, errors=errors)
        if errors.items:
            self.metrics.marker_errors.labels(self.cfg.id).inc(len(errors.items))
        lock = self._locks.setdefault((cohort, rendition.grid), asyncio.Lock())
        async with lock:
            known = await self.store.get_breaks(self.cfg.id)
            update = update_breaks(known, observations, self.policy)
            breaks = update.breaks
            if playlist.segments and playlist.segments[0].pdt is not None:
                horizon = playlist.segments[0].pdt
                from datetime import timedelta
                breaks = prune(breaks, horizon - timedelta(seconds=600), self.policy)
            if breaks != known:
                await self.store.put_breaks(self.cfg.id, breaks)
            self.breaks = breaks
            for b in update.new:
                self._prefetch(b)
            ledger = await self.store.get_ledger(self.cfg.id, cohort, rendition.grid)
            pods = await self._pods_for(playlist, breaks, ledger, cohort)
            uris = self._uris.setdefault(
                rendition.id, _Uris(rendition.id, self.library, self.assets_base))
            options = self._options.setdefault(rendition.id, SpliceOptions(
                base_url=rendition.uri, passthrough_markers=self.cfg.passthrough_markers,
                break_policy=self.policy, window_cap=self.cfg.window_cap))
            cache = self._splice_caches.setdefault((rendition.id, cohort), SpliceCache())
            result = splice(playlist, breaks=breaks, pods=pods, ledger=ledger, uris=uris,
                            options=options, cache=cache)
            keep_from = playlist.media_sequence - 3 * max(1, len(playlist.segments))
            await self.store.append_ledger(self.cfg.id, cohort, rendition.grid,
                                           result.new_entries, result.hwm, keep_from)
        body = result.text.encode("utf-8")
        rendered = Rendered(body, gzip.compress(body, 6, mtime=0),
                            '"' + hashlib.sha1(body).hexdigest()[:20] + '"',
                            playlist.target_duration or 2, fetched.stale, fetched.error, result)
        self.metrics.render_seconds.observe(time.perf_counter() - started)
        return rendered

    async def _pods_for(self, playlist: Any, breaks: tuple[Break, ...], ledger: Any,
                        cohort: str) -> dict[str, Pod]:
        """Decisions needed by this render: breaks with published or new slots in it."""
        needed = breaks_to_decide(playlist, breaks, ledger, self.policy, self.nominal)
        pods: dict[str, Pod] = {}
        by_id = {b.id: b for b in breaks}
        for break_id, start in needed.items():
            brk = by_id.get(break_id)
            decision = await self.decision(break_id, cohort, brk, start)
            if decision is not None:
                pods[break_id] = decision.pod
        return pods

    # ----------------------------------------------------------- decisions
    def cached_decision(self, break_id: str, cohort: str) -> Decision | None:
        return self._decisions.get((break_id, cohort))

    async def decision(self, break_id: str, cohort: str, brk: Break | None,
                       start: Fraction = Fraction(0)) -> Decision | None:
        key = (break_id, cohort)
        found = self._decisions.get(key)
        if found is not None:
            return found
        stored = await self.store.get_decision(self.cfg.id, break_id, cohort)
        if stored is not None:
            found = self._decisions[key] = Decision.from_json(stored)
            return found
        if brk is None:
            return None
        task = self._decision_task(brk, cohort, start)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.cfg.decision_budget)
        except asyncio.TimeoutError:
            self.metrics.ad_errors.labels(self.cfg.id, "decision_timeout").inc()
            log.warning("decision for %s/%s not ready within budget: content", break_id, cohort)
            fallback = Decision(Pod(break_id, (), self.nominal or Fraction(2), False), (),
                                "decision timeout")
            return await self._freeze(key, fallback)

    def _decision_task(self, brk: Break, cohort: str, start: Fraction) -> asyncio.Task[Decision]:
        key = (brk.id, cohort)
        task = self._decision_tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(self._decide(brk, cohort, start))
            self._decision_tasks[key] = task
        return task

    async def _decide(self, brk: Break, cohort: str, start: Fraction) -> Decision:
        if self._prepared is not None and not self._prepared.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._prepared), 1.0)
            except (asyncio.TimeoutError, Exception):  # decide with what is ready
                pass
        slate = self.library.get(SLATE_KEY, [s.name for s in self.specs])
        decision = await self.decider.decide(
            self.cfg, brk, cohort, cohort_attributes(self.cfg, cohort), start=start,
            nominal=self.nominal or Fraction(2), specs=self.specs,
            slate_segments=slate.segment_count if slate is not None and self.specs else 0)
        return await self._freeze((brk.id, cohort), decision)

    async def _freeze(self, key: tuple[str, str], decision: Decision) -> Decision:
        winner = await self.store.put_decision_if_absent(self.cfg.id, key[0], key[1],
                                                         decision.to_json())
        frozen = self._decisions[key] = Decision.from_json(winner)
        return frozen

    def _prefetch(self, brk: Break) -> None:
        """Decide for every recently active cohort as soon as a break is seen."""
        now = time.monotonic()
        for cohort, seen in list(self.active_cohorts.items()):
            if now - seen < 600:
                self._decision_task(brk, cohort, Fraction(0))
