"""Ad decisions: VAST -> ready creatives -> a frozen pod per (break, cohort).

A decision is made once per (break, cohort) and frozen in the store
(set-if-absent) before any of its segments is published: every viewer,
rendition and instance then plays the same ads. Only creatives already
conditioned for every rendition are placed; the others start conditioning in
the background, are skipped (the next ad or slate takes their time) and get
VAST error 407. When none is ready the break gets the channel's fallback (a
failed decision, not a no-fill: ``ad_fallback``), asked again at the break when
this was ahead of it.
Ad requests carry cohort attributes only, never a device identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import aiohttp

from manifests.breaks import Break
from manifests.pod import Candidate, Pod, plan_pod
from stitcher import vast
from stitcher.adservers import AdServerFailed, AdServerPolicy, AdServers, AdServerUnavailable
from stitcher.conditioning import (
    ConditionedCreative,
    Conditioner,
    ConditioningError,
    DeclaredMedia,
    RenditionSpec,
    write_json_atomic,
)
from stitcher.config import ChannelConfig
from stitcher.metrics import Metrics
from stitcher.store import pod_from_json, pod_to_json

log = logging.getLogger(__name__)

SLATE_KEY = "slate"


def slate_key(channel: str) -> str:
    """A channel's slate in the creative library: its own, ``slate-<channel>`` (found
    by a newcomer: one key for all made every channel play the first one's)."""
    return f"{SLATE_KEY}-{channel}"


@dataclass(frozen=True, slots=True)
class AdInfo:
    """What beacons and tracking need about one placed ad."""

    item: int
    ad_id: str
    creative: str
    duration: Fraction
    impressions: tuple[str, ...]
    errors: tuple[str, ...]
    #: event -> URLs; progress events carry their offset as ``progress@<seconds>``.
    tracking: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    pod: Pod
    ads: tuple[AdInfo, ...]
    reason: str = ""
    #: The ad server could not be asked or did not answer (not a no-fill): the
    #: caller replaces it with the channel's fallback. Never stored (a frozen
    #: decision is whatever replaced it).
    failed: bool = False

    def ad(self, item: int) -> AdInfo | None:
        ads = self.ads
        if 0 <= item < len(ads) and ads[item].item == item:  # (every ad segment request)
            return ads[item]
        return next((a for a in ads if a.item == item), None)

    def to_json(self) -> str:
        return json.dumps({
            "pod": json.loads(pod_to_json(self.pod)), "reason": self.reason,
            "ads": [{"item": a.item, "ad_id": a.ad_id, "creative": a.creative,
                     "duration": str(a.duration), "impressions": list(a.impressions),
                     "errors": list(a.errors),
                     "tracking": {k: list(v) for k, v in a.tracking.items()}}
                    for a in self.ads],
        })

    @staticmethod
    def from_json(text: str) -> Decision:
        d = json.loads(text)
        ads = tuple(AdInfo(a["item"], a["ad_id"], a["creative"], Fraction(a["duration"]),
                           tuple(a["impressions"]), tuple(a["errors"]),
                           {k: tuple(v) for k, v in a["tracking"].items()})
                    for a in d["ads"])
        return Decision(pod_from_json(json.dumps(d["pod"])), ads, d.get("reason", ""))


def creative_key(registry: str, value: str, content_sha256: str) -> str:
    """Conditioning key: (UniversalAdId registry, value, hash of the mezzanine).

    Registries put "unknown" where no id exists, so the mezzanine's bytes are
    part of it: the same file served from another URL is conditioned once.
    """
    text = f"{registry}|{value}|{content_sha256}"
    return "c" + hashlib.sha256(text.encode()).hexdigest()[:20]


def ladder_key(creative: str, specs: list[RenditionSpec]) -> str:
    """The key of ``creative`` conditioned to one ladder: rendition names are the
    channel's own (``v0`` of one channel is 1080p fMP4, of another 360p TS), so
    the conditioned files are known by what they were made to, not by name (found
    by a newcomer: the first channel to condition an ad decided its format for
    every channel). Channels with the same ladder share the files. The specs are
    described as their conditioned folders record them (``to_json``), which a
    new field leaves as it was where the field does not apply."""
    if not specs:
        return creative
    made_to = json.dumps(sorted((spec.to_json() for spec in specs), key=lambda d: d["name"]),
                         sort_keys=True)
    return f"{creative}-{hashlib.sha256(made_to.encode()).hexdigest()[:10]}"


class CreativeLibrary:
    """Conditioned creatives on disk, conditioned on demand, off the event loop.

    A creative is known by its key (:func:`creative_key`); the key needs the
    mezzanine's hash, so the first sight of a media URL downloads it (bounded)
    in the background and conditioning follows, once per ladder it is asked for
    (:func:`ladder_key`). Until then the ad is not ready.
    """

    def __init__(self, root: Path, conditioner: Conditioner, metrics: Metrics,
                 download: Download | None = None, max_bytes: int = 512 << 20) -> None:
        self.root = root
        self._conditioner = conditioner
        self._metrics = metrics
        self._download = download
        self._max_bytes = max_bytes
        self._ready: dict[str, ConditionedCreative] = {}
        self._tasks: dict[str, asyncio.Task[ConditionedCreative | None]] = {}
        #: (registry, value, media URL) -> key, once the mezzanine was hashed.
        self._keys: dict[tuple[str, str, str], str] = {}
        self._keys_file = root / "keys.json"
        if self._keys_file.exists():
            try:
                self._keys = {tuple(k): v for k, v in json.loads(self._keys_file.read_text())}
            except (ValueError, TypeError) as exc:
                log.error("ignoring unreadable %s: %s", self._keys_file, exc)
        self._fetches: dict[tuple[str, str, str], asyncio.Task[str | None]] = {}
        #: creative key -> its downloaded mezzanine (conditioned once per ladder).
        self._sources: dict[str, Path] = {}
        #: (key, rendition, index) -> (the creative it was computed for, asset path).
        self._paths: dict[tuple[str, str, int], tuple[ConditionedCreative, str]] = {}

    def key_for(self, ad: vast.ResolvedAd, specs: list[RenditionSpec]) -> str | None:
        """The key of ``ad`` conditioned to ``specs``, once its mezzanine was hashed."""
        uid = ad.universal_ad_id
        found = self._keys.get((uid.registry, uid.value, ad.media.uri))
        return None if found is None else ladder_key(found, specs)

    def prepare(self, ad: vast.ResolvedAd, specs: list[RenditionSpec], channel: str = ""
                ) -> asyncio.Task[str | None]:
        """Download + hash the mezzanine (once), then condition it to ``specs``
        (once per ladder): the conditioned key, or None when either failed.

        The MediaFile's declared size and codec go along so conditioning can log
        (and count, per ``channel``) a creative that is not what VAST says (B21).
        """
        uid = ad.universal_ad_id
        ident = (uid.registry, uid.value, ad.media.uri)
        fetch = self._fetches.get(ident)
        if fetch is None or (fetch.done() and fetch.result() is None):
            fetch = asyncio.ensure_future(self._fetch(ident))
            self._fetches[ident] = fetch
        return asyncio.ensure_future(self._condition_fetched(
            fetch, specs, DeclaredMedia.of(ad.media), channel))

    async def _condition_fetched(self, fetch: asyncio.Task[str | None],
                                 specs: list[RenditionSpec], declared: DeclaredMedia | None,
                                 channel: str) -> str | None:
        creative = await asyncio.shield(fetch)
        if creative is None:
            return None
        key = ladder_key(creative, specs)
        result = await self.ensure(key, str(self._sources[creative]), specs,
                                   declared=declared, channel=channel)
        return key if result is not None else None

    async def _fetch(self, ident: tuple[str, str, str]) -> str | None:
        """Download and hash a mezzanine: its :func:`creative_key` (None: failed)."""
        registry, value, url = ident
        incoming = self.root / "mezzanines"
        incoming.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        # A temporary file of this download's own: instances sharing the data dir
        # download the same creative at once at start-up (found by the drill: two
        # stitchers, one ``.part`` name, and the second rename failed).
        fd, tmp_name = tempfile.mkstemp(prefix=f".{hashlib.sha1(url.encode()).hexdigest()}.",
                                        suffix=".part", dir=incoming)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if self._download is None:
                    raise OSError("no downloader configured")
                size = 0
                async for chunk in self._download(url):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise OSError(f"mezzanine larger than {self._max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
        except Exception as exc:  # noqa: BLE001 - a bad creative must not hurt the stream
            self._metrics.conditioning.labels("download_error").inc()
            log.warning("downloading creative %s failed: %s", url, exc)
            tmp.unlink(missing_ok=True)
            return None
        key = creative_key(registry, value, digest.hexdigest())
        source = incoming / f"{key}{Path(url.split('?')[0]).suffix or '.mp4'}"
        tmp.replace(source)
        self._sources[key] = source
        self._keys[ident] = key
        write_json_atomic(self._keys_file, [[list(k), v] for k, v in self._keys.items()])
        return key

    def get(self, key: str, renditions: list[str]) -> ConditionedCreative | None:
        cc = self._ready.get(key)
        if cc is None or any(r not in cc.renditions for r in renditions):
            return None
        return cc

    def load(self, key: str, specs: list[RenditionSpec]) -> ConditionedCreative | None:
        """Pick up a creative conditioned before a restart (or by another instance)."""
        cc = self._ready.get(key)
        if cc is not None and all(s.name in cc.renditions for s in specs):
            return cc
        found = self._conditioner.cached(self.root, key, specs) if specs else None
        if found is not None:
            self._ready[key] = found
        return found

    def ensure(self, key: str, source: str, specs: list[RenditionSpec],
               pad_source: str | None = None, *, declared: DeclaredMedia | None = None,
               channel: str = "") -> asyncio.Task[ConditionedCreative | None]:
        task = self._tasks.get(key)
        if task is None or (task.done() and task.result() is None):
            task = asyncio.ensure_future(self._condition(key, source, specs, pad_source,
                                                         declared, channel))
            self._tasks[key] = task
        return task

    async def _condition(self, key: str, source: str, specs: list[RenditionSpec],
                         pad_source: str | None, declared: DeclaredMedia | None = None,
                         channel: str = "") -> ConditionedCreative | None:
        try:
            cc = await self._conditioner.condition(source, specs, self.root, key=key,
                                                   pad_source=pad_source, declared=declared,
                                                   channel=channel)
        except (ConditioningError, OSError, ValueError) as exc:
            self._metrics.conditioning.labels("error").inc()
            log.error("conditioning %s from %s failed: %s", key, source, exc)
            return None
        self._metrics.conditioning.labels("ok").inc()
        self._ready[key] = cc
        return cc

    def pending(self) -> list[asyncio.Task[ConditionedCreative | None]]:
        return [t for t in self._tasks.values() if not t.done()]

    def init_path(self, key: str, rendition: str) -> str | None:
        """The asset path (relative to ``root``) of a conditioned fMP4 rendition's init
        segment; None for MPEG-TS or when not ready."""
        cc = self._ready.get(key)
        r = None if cc is None else cc.renditions.get(rendition)
        if r is None or r.init is None:
            return None
        return str(Path(r.init).resolve().relative_to(self.root.resolve()))

    def segment_path(self, key: str, rendition: str, index: int) -> str | None:
        """The asset path (relative to ``root``) of one conditioned segment."""
        cc = self._ready.get(key)
        if cc is None or rendition not in cc.renditions:
            return None
        cached = self._paths.get((key, rendition, index))
        if cached is not None and cached[0] is cc:  # every ad segment request asks
            return cached[1]
        segs = cc.renditions[rendition].segments
        if not 0 <= index < len(segs):
            return None
        path = str(Path(segs[index].path).resolve().relative_to(self.root.resolve()))
        self._paths[(key, rendition, index)] = (cc, path)
        return path


def ad_request_url(channel: ChannelConfig, brk: Break, cohort_attrs: dict[str, str],
                   duration: Fraction, position: int = 1) -> str:
    """Expand the channel's template: cohort attributes, break, and VAST 4 macros."""
    template = channel.ad_server_url or ""
    values: dict[str, vast.MacroValue] = {
        "CACHEBUSTING": random.randrange(10**8),
        "TIMESTAMP": datetime.now(UTC),
        "BREAKPOSITION": 2,  # midroll
        "PODSEQUENCE": position,
        "ADCOUNT": 0,
    }
    url = vast.expand_macros(template, values)
    subs = {"duration": str(round(float(duration), 3)), "break_id": brk.id,
            "channel": channel.id}
    subs.update({f"cohort.{k}": v for k, v in cohort_attrs.items()})
    subs.update({k: v for k, v in brk.params})
    for name, value in subs.items():
        url = url.replace("{" + name + "}", quote(value, safe=""))
    return url


class AdDecider:
    """One channel's ad decisions: VAST request, wrappers, ready creatives, pod.

    Requests go through the process's :class:`~stitcher.adservers.AdServers`
    (budget, retries, Retry-After, circuit breaker, rate cap); a decision the ad
    server could not give (``Decision.failed``) is the caller's to replace with
    its fallback.
    """

    def __init__(self, session: aiohttp.ClientSession, library: CreativeLibrary,
                 metrics: Metrics, *, timeout: float = 5.0,
                 on_error: ErrorSink | None = None, servers: AdServers | None = None) -> None:
        self._session = session
        self._library = library
        self._metrics = metrics
        self._timeout = timeout
        self._on_error = on_error
        self.servers = servers or AdServers(AdServerPolicy(), metrics)

    def unavailable(self, channel: ChannelConfig) -> AdServerUnavailable | None:
        """Why the channel's ad server must not be asked now (circuit open,
        Retry-After), or None."""
        if not channel.ad_server_url:
            return None
        return self.servers.unavailable(channel.ad_server_url)

    async def decide(self, channel: ChannelConfig, brk: Break, cohort: str,
                     cohort_attrs: dict[str, str], *, start: Fraction, nominal: Fraction,
                     specs: list[RenditionSpec], slate_segments: int,
                     available: Fraction | None = None) -> Decision:
        """``available``: seconds of the pod window from ``start`` (default: to the
        break's end), e.g. rounded to the boundaries every grid shares."""
        if available is None:
            available = (brk.duration_hint if brk.duration_hint is not None
                         else Fraction(str(channel.max_break))) - start
        if available <= 0 or not channel.ad_server_url:
            return Decision(Pod(brk.id, (), nominal, personalized=False), (), "no avail")
        url = ad_request_url(channel, brk, cohort_attrs, available)
        deadline = self.servers.clock() + self._timeout
        #: Why the ad request itself failed, if it did (wrapper failures are the ads').
        failed: list[Exception] = []

        async def fetch(u: str) -> bytes:
            try:
                return await self.servers.fetch(self._session, u, deadline=deadline,
                                                limited=u == url)
            except (AdServerUnavailable, AdServerFailed) as exc:
                if u == url:
                    failed.append(exc)
                raise

        try:
            resolution = await vast.resolve(url, fetch, max_depth=5)
        except Exception as exc:  # noqa: BLE001 - the ad server must never take the stream down
            self._metrics.ad_errors.labels(channel.id, "resolve").inc()
            log.warning("ad decision failed for %s/%s: %s", brk.id, cohort, exc)
            return Decision(Pod(brk.id, (), nominal, personalized=False), (), f"error: {exc}",
                            failed=True)
        if failed:
            why = failed[0]
            kind = why.kind if isinstance(why, AdServerUnavailable) else "301"
            self._metrics.ad_errors.labels(channel.id, kind).inc()
            log.warning("ad decision for %s/%s: %s", brk.id, cohort, why)
            return Decision(Pod(brk.id, (), nominal, personalized=False), (), f"error: {why}",
                            failed=True)
        for report in resolution.errors:
            self._metrics.ad_errors.labels(channel.id, str(report.code)).inc()
            if self._on_error and report.urls:
                self._on_error(report.urls, report.code)
        names = [s.name for s in specs]
        candidates: list[Candidate] = []
        infos: dict[str, vast.ResolvedAd] = {}
        for ad in resolution.ads:
            key = self._library.key_for(ad, specs)
            cc = None if key is None else (self._library.get(key, names)
                                           or self._library.load(key, specs))
            if key is None or cc is None:
                self._library.prepare(ad, specs, channel.id)
                self._metrics.ads_not_ready.labels(channel.id).inc()
                if self._on_error and ad.errors:
                    self._on_error(list(ad.errors), 407)
                continue
            candidates.append(Candidate(key, cc.duration))
            infos.setdefault(key, ad)
        if resolution.ads and not candidates:
            # Filled, but nothing playable yet: not a no-fill (found by a newcomer: the
            # first break of a new creative was reported as one, and showed the
            # content under ``ad_fallback: slate``). The channel's fallback, and
            # ahead of the break nothing frozen: the break's render asks again,
            # when conditioning may be done.
            self._metrics.ad_requests.labels(channel.id, "not_ready").inc()
            log.info("ad decision for %s/%s: %d ads, none conditioned yet", brk.id, cohort,
                     len(resolution.ads))
            return Decision(Pod(brk.id, (), nominal, personalized=False), (), "ads not ready",
                            failed=True)
        pod = plan_pod(
            brk.id, candidates, available=available, nominal=nominal, start=start,
            min_slate=Fraction(str(channel.min_slate)) if slate_segments else Fraction(10**9),
            slate_segments=max(1, slate_segments),
            personalization_threshold=(None if channel.personalization_threshold is None
                                       else Fraction(str(channel.personalization_threshold))))
        ads: list[AdInfo] = []
        for i, item in enumerate(pod.items):
            resolved = infos.get(item.creative)
            if resolved is None:
                continue
            tracking: dict[str, tuple[str, ...]] = {}
            for event, trackers in resolved.tracking.items():
                for t in trackers:
                    name = event
                    if event == "progress" and t.offset is not None:
                        name = f"progress@{t.offset}"
                    tracking[name] = tracking.get(name, ()) + (t.uri,)
            ads.append(AdInfo(i, resolved.ad_id or item.creative, item.creative, item.duration,
                              tuple(resolved.impressions), tuple(resolved.errors), tracking))
        # Ads answered but none placed is not the ad server's no-fill: none fits the
        # avail (or the unfilled rest passes the personalization threshold). Found by
        # a newcomer: reported "no fill", which points ad ops at the ad server.
        result, reason = (("filled", "ok") if ads else ("unfit", "no ad fits the avail")
                          if candidates else ("nofill", "no fill"))
        self._metrics.ad_requests.labels(channel.id, result).inc()
        self._metrics.avail_seconds.labels(channel.id).inc(float(available))
        self._metrics.filled_seconds.labels(channel.id).inc(float(pod.filled))
        return Decision(pod, tuple(ads), reason)


    async def prefetch_creatives(self, channel: ChannelConfig, specs: list[RenditionSpec],
                                 duration: Fraction) -> int:
        """Ask the ad server once and condition what it answers, recording no
        decision, no metrics and no error beacons (warm-up before an event)."""
        if not channel.ad_server_url:
            return 0
        from datetime import datetime

        probe = Break(id="prefetch", start=datetime.now(UTC), planned_duration=duration)
        url = ad_request_url(channel, probe, {}, duration)
        deadline = self.servers.clock() + self._timeout

        async def fetch(u: str) -> bytes:
            return await self.servers.fetch(self._session, u, deadline=deadline,
                                            limited=u == url)

        resolution = await vast.resolve(url, fetch, max_depth=5)
        tasks = [self._library.prepare(ad, specs, channel.id) for ad in resolution.ads]
        keys = await asyncio.gather(*tasks)
        return sum(1 for k in keys if k is not None)


Download = Callable[[str], AsyncIterator[bytes]]


class ErrorSink(Protocol):
    """Callable that queues VAST error URLs with [ERRORCODE] (see beacons)."""

    def __call__(self, urls: list[str], code: int) -> None: ...  # pragma: no cover
