"""The aiohttp application: thin handlers over the channel runtimes.

Routes (players):
  POST /v1/session/{channel}                        start a session -> manifestUrl, trackingUrl
  GET  /v1/master/{channel}.m3u8                    implicit session start (302 to the session URL)
  GET  /v1/session/{token}/{channel}/master.m3u8    multivariant, renditions routed here
  GET  /v1/session/{token}/{channel}/media/{rid}.m3u8            stitched media playlist
  GET  /v1/session/{token}/{channel}/media/ad/{rid}/{brk}/{item}/{seg}.ts
                                                    beacons, then 302 to the conditioned segment
  GET  /v1/session/{token}/{channel}/media/cv/{rid}/{msn}-{digest}.vtt
                                                    content WebVTT, its timestamp map repaired
  GET  /v1/session/{token}/{channel}/tracking       client-side tracking JSON
Cohort-URL mode (channels with ``cohort_urls``), CDN-cacheable, no session:
  GET  /v1/cohort/{channel}/{cohort}/master.m3u8    multivariant
  GET  /v1/cohort/{channel}/{cohort}/media/{rid}.m3u8             cohort media playlist
                                                    (ad segments straight at /assets)
  GET  /v1/cohort/{channel}/{cohort}/tracking       the cohort's tracking JSON (players beacon)
  GET  /assets/{key}/{rid}/{segment}                conditioned ad and slate segments (only)
Operations: /healthz, /readyz, /metrics; ad ops: /admin/... and /console
(``stitcher.admin``).

Every player-facing response carries CORS headers and answers preflight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from manifests.ledger import SlotKind
from stitcher.ads import AdDecider, CreativeLibrary, Decision
from stitcher.adservers import AdServerPolicy, AdServers
from stitcher.beacon_stream import StreamBeaconQueue
from stitcher.beacons import BeaconQueue, BeaconSink, BeaconTracker, RedisProgress
from stitcher.channel import COHORT, ChannelRuntime, Rendered
from stitcher.conditioning import Conditioner, player_file
from stitcher.config import ChannelConfig, StitcherConfig
from stitcher.drain import InFlight
from stitcher.errors import (
    BadRequest,
    NotFound,
    SessionInvalid,
    StitcherError,
    StoreUnavailable,
    to_response,
)
from stitcher.logs import CONTEXT, ClientErrorFilter, RouteContext, names_context
from stitcher.metrics import Metrics
from stitcher.netpolicy import PublicOnlyConnector, client_session
from stitcher.redis_store import RedisStore
from stitcher.sessions import Session, SessionSigner, cohort_for
from stitcher.store import MemoryStore, Store
from stitcher.tracking import avail_schedule

log = logging.getLogger(__name__)

MPEGURL = "application/vnd.apple.mpegurl"

CONFIG = web.AppKey("config", StitcherConfig)
METRICS = web.AppKey("metrics", Metrics)
CHANNELS = web.AppKey("channels", dict)
SIGNER = web.AppKey("signer", SessionSigner)
TRACKER = web.AppKey("tracker", BeaconTracker)
BEACONS = web.AppKey("beacons", BeaconSink)
LIBRARY = web.AppKey("library", CreativeLibrary)
STORE = web.AppKey("store", object)
TRUSTED = web.AppKey("trusted", tuple)
#: Builds a ChannelRuntime from a ChannelConfig with the app's shared resources.
RUNTIME_FACTORY = web.AppKey("runtime_factory", object)
#: Headers every response carries (CORS, and which worker answered with ``workers``).
COMMON_HEADERS = web.AppKey("common_headers", dict[str, str])
#: The requests being answered, for a graceful drain (:mod:`stitcher.drain`).
IN_FLIGHT = web.AppKey("in_flight", InFlight)

#: CORS on every response. The methods and request headers allowed are what a
#: preflight asks (Fetch standard, "CORS-preflight fetch"): they go on the 204
#: answering OPTIONS only, not on every playlist a player reloads.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "ETag, X-Stitcher-Stale, Retry-After",
}
#: (An ``istr``: a case-insensitive lookup without folding the name per request.)
ALLOW_ORIGIN = hdrs.ACCESS_CONTROL_ALLOW_ORIGIN
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Range, If-None-Match",
    "Access-Control-Max-Age": "86400",
}


#: A route's handler; :func:`served` wraps each.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: A route's synchronous fast path: its response when it needs no await, else None.
FastPath = Callable[[web.Request], web.StreamResponse | None]


class SentFile(web.FileResponse):
    """A file answer :func:`served` sends itself, inside the request's time in flight
    (so a drain waits for the transfer, :mod:`stitcher.drain`); aiohttp's own
    prepare after the handler is then a no-op (``FileResponse`` would send again)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


def served(app: web.Application, name: str | None, handler: Handler,
           fast: FastPath | None = None, *, context: bool = False) -> Handler:
    """A route as players and ad ops see it: errors as JSON (``to_response``), the
    request counted and timed under the route's name (``other`` for none), the
    common headers (CORS) on every response, OPTIONS answered as the CORS
    preflight, and with ``context`` (the path names a channel, a rendition ...)
    the route's log context set while it is handled (:class:`RouteContext`).
    (These were middlewares: aiohttp runs every middleware as a coroutine of its
    own per request, and with any middleware at all adds a layer of its own and
    looks the chain up per request; an app without middlewares calls the route's
    handler directly.) ``fast``: answers without an await when it can (None: the
    handler is awaited), so a cached playlist reload runs in this one coroutine
    (:func:`media_ready`)."""
    record = app[METRICS].requests.recorder(name or "other")
    common = app[COMMON_HEADERS]
    defaults = tuple(common.items())
    # Every request is in flight from here to its answer, so a drain waits for it.
    in_flight = app[IN_FLIGHT]
    entered, left = in_flight.started, in_flight.ended

    async def serve(request: web.Request) -> web.StreamResponse:
        token = CONTEXT.set(RouteContext(request.match_info)) if context else None
        try:
            if request.method == "OPTIONS":
                preflight = common.copy()
                preflight.update(PREFLIGHT_HEADERS)
                return web.Response(status=204, headers=preflight)
            started = perf_counter()
            entered(request)
            try:
                try:
                    response = None if fast is None else fast(request)
                    if response is None:
                        response = await handler(request)
                except StitcherError as exc:
                    response = to_response(exc)
                except web.HTTPException as exc:
                    if exc.status >= 400 and not isinstance(exc, web.HTTPFound):
                        # aiohttp's own 404/405/413...: the same JSON shape as ours.
                        response = to_response(StitcherError(exc.reason, status=exc.status))
                    else:
                        response = exc
                except RedisError as exc:
                    # The shared store went away under a route that needs it (the admin
                    # API, a session start): the player or tool may retry; not a bug, no
                    # traceback.
                    log.warning("%s %s: store unavailable (%s)", request.method,
                                request.path, type(exc).__name__)
                    response = to_response(StoreUnavailable(
                        f"store unavailable ({type(exc).__name__}), retry", retry_after=1))
                except Exception:  # noqa: BLE001 - a bug: answered, logged (traceback), counted
                    _log_unhandled(request)
                    response = to_response(StitcherError("internal error (logged)"))
                record(response.status, perf_counter() - started)
                headers = response.headers
                # (type first: a plain Response skips the ABC instance check)
                if (type(response) is not web.Response
                        and isinstance(response, web.HTTPException)):
                    if ALLOW_ORIGIN not in headers:
                        headers.update(common)
                    raise response
                if ALLOW_ORIGIN not in headers:
                    for k, v in defaults:
                        headers.setdefault(k, v)
                if type(response) is SentFile:
                    # Sent here, so a drain waits for the file to be written, not only
                    # for the handler (a body in memory is in the transport once we
                    # return). A client gone meanwhile is aiohttp's to say, quietly.
                    with contextlib.suppress(ConnectionError):
                        await response.prepare(request)
                        await response.write_eof()
                return response
            finally:
                left(request)
        finally:
            if token is not None:
                CONTEXT.reset(token)

    return serve


def _log_unhandled(request: web.Request) -> None:
    """The traceback of a bug, without the route's log context (as when the error
    handling was the outer middleware, outside the log context's)."""
    token = CONTEXT.set(None)
    try:
        log.exception("unhandled error on %s %s", request.method, request.path)
    finally:
        CONTEXT.reset(token)


async def unrouted(request: web.Request) -> web.StreamResponse:
    """The last route, matching every path and method: what aiohttp answers when no
    route matches (405 when one has the path for other methods, else 404), raised
    inside :func:`served` so it is shaped, counted and given CORS like every answer
    (and OPTIONS on any path is the preflight)."""
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


class Routes:
    """Adds an app's routes, each :func:`served` (the admin API's too)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def add(self, method: str, path: str, handler: Handler, *, name: str | None,
            fast: FastPath | None = None) -> None:
        """``GET`` routes answer ``HEAD`` too (aiohttp's ``add_get``)."""
        wrapped = served(self._app, name, handler, fast, context=names_context(path))
        if method == "GET":
            self._app.router.add_get(path, wrapped, name=name)
        else:
            self._app.router.add_route(method, path, wrapped, name=name)

    def get(self, path: str, handler: Handler, *, name: str | None,
            fast: FastPath | None = None) -> None:
        self.add("GET", path, handler, name=name, fast=fast)


def _common_headers(config: StitcherConfig) -> dict[str, str]:
    """CORS on every player-facing response, and with ``workers`` which worker
    process answered (the PID, taken at app creation, in the worker)."""
    headers = dict(CORS_HEADERS)
    if config.workers > 1:
        headers["X-Stitcher-Worker"] = str(os.getpid())
    return headers


class ResponseHeaders:
    """The header sets of the hot responses, built once and copied per response:
    a cached playlist served to thousands of sessions, an ad segment redirect.
    As ``CIMultiDict``s (a response copies its headers into one: from another, the
    keys come already folded) carrying the playlist's Content-Length, which aiohttp
    would otherwise format and insert per response (same value, same place)."""

    def __init__(self, common: dict[str, str]) -> None:
        self._common = common
        self._playlists: dict[tuple[Any, ...], CIMultiDict[str]] = {}
        self._redirects: dict[str, CIMultiDict[str]] = {}

    def playlist(self, rendered: Rendered, public: bool, variant: str) -> CIMultiDict[str]:
        """``variant``: ``identity``, ``gzip``, or ``304`` / ``304-gzip`` (no body, no
        content type; the ETag of the representation the client would get)."""
        length = (0 if variant.startswith("304") else len(rendered.gzipped)
                  if variant == "gzip" else len(rendered.body))
        key = (rendered.etag, rendered.target_duration, public, rendered.stale,
               rendered.stale_reason, variant, length)
        found = self._playlists.get(key)
        if found is None:
            scope = "public" if public else "private"
            etag = gzip_etag(rendered.etag) if variant.endswith("gzip") else rendered.etag
            found = CIMultiDict({
                **self._common, "ETag": etag, "Vary": "Accept-Encoding",
                "Cache-Control": f"{scope}, max-age={max(1, rendered.target_duration // 2)}"})
            if rendered.stale:
                found["X-Stitcher-Stale"] = f"origin: {rendered.stale_reason or 'unavailable'}"
            if not variant.startswith("304"):
                found["Content-Type"] = MPEGURL
            if variant == "gzip":
                found["Content-Encoding"] = "gzip"
            if length:  # as aiohttp sets it for a non-empty body (HEAD included)
                found["Content-Length"] = str(length)
            if len(self._playlists) >= 1024:  # renders come and go every few seconds
                self._playlists.clear()
            self._playlists[key] = found
        return found

    def redirect(self, location: str) -> CIMultiDict[str]:
        """(No Content-Length: aiohttp leaves it off an empty HEAD answer.)"""
        found = self._redirects.get(location)
        if found is None:
            found = CIMultiDict({**self._common, "Location": location,
                                 "Cache-Control": "no-store"})
            if len(self._redirects) >= 4096:
                self._redirects.clear()
            self._redirects[location] = found
        return found


#: Prebuilt header sets of the hot responses.
HEADERS = web.AppKey("headers", ResponseHeaders)


#: What a cohort of some config looks like (values joined by ``.``; values never
#: hold ``.`` or ``/``): anything else in a signed token is refused, not remapped.
_COHORT_SHAPE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def _channel(request: web.Request) -> ChannelRuntime:
    channel = request.match_info["channel"]
    runtime = request.app[CHANNELS].get(channel)
    if runtime is None:
        raise NotFound(f"unknown channel {channel!r}")
    return runtime


def _session(request: web.Request) -> Session:
    return _session_of(request)[1]


def _session_of(request: web.Request) -> tuple[ChannelRuntime, Session]:
    """The channel and the verified session of a session URL."""
    app = request.app
    return _verified(app[CHANNELS], app[SIGNER], request.match_info)


def _verified(channels: dict[str, ChannelRuntime], signer: SessionSigner,
              info: Mapping[str, str]) -> tuple[ChannelRuntime, Session]:
    channel = info["channel"]
    runtime = channels.get(channel)
    if runtime is None:
        raise NotFound(f"unknown channel {channel!r}")
    session = signer.decode(info["token"], runtime.cfg.id, time.time())
    if not runtime.is_cohort(session.cohort):
        if not _COHORT_SHAPE.fullmatch(session.cohort):
            raise SessionInvalid("session token names a cohort this channel does not have")
        # A cohort of the channel's earlier rules (ad ops changed them): the session
        # plays on, in the default cohort (found by a newcomer: every viewer got 403).
        runtime.recohorted(session.session_id)
        session = replace(session, cohort=cohort_for(runtime.cfg, {}))
    return runtime, session


def _new_session(request: web.Request, attributes: dict[str, str]) -> tuple[Session, str]:
    runtime = _channel(request)
    cfg = request.app[CONFIG]
    cohort = cohort_for(runtime.cfg, attributes)
    return request.app[SIGNER].issue(runtime.cfg.id, cohort, int(time.time() + cfg.session_ttl))


async def start_session(request: web.Request) -> web.Response:
    attributes: dict[str, str] = {k: v for k, v in request.query.items()}
    if request.can_read_body:
        try:
            body = await request.json()
        except (ValueError, RecursionError) as exc:
            raise BadRequest("session body must be a JSON object") from exc
        if not isinstance(body, dict):
            raise BadRequest("session body must be a JSON object")
        params = body.get("adsParams", body)
        if not isinstance(params, dict):
            raise BadRequest("adsParams must be an object")
        attributes.update({str(k): str(v) for k, v in params.items()})
    session, token = _new_session(request, attributes)
    base = f"/v1/session/{token}/{session.channel}"
    return web.json_response({"manifestUrl": f"{base}/master.m3u8",
                              "trackingUrl": f"{base}/tracking",
                              "cohort": session.cohort},
                             headers={"Cache-Control": "no-store"})


async def implicit_session(request: web.Request) -> web.Response:
    session, token = _new_session(request, dict(request.query))
    raise web.HTTPFound(f"/v1/session/{token}/{session.channel}/master.m3u8",
                        headers={"Cache-Control": "no-store"})


async def multivariant(request: web.Request) -> web.Response:
    _session(request)
    runtime = _channel(request)
    mv = await runtime.multivariant()
    runtime.prepare()
    body = runtime.multivariant_for_session(mv)
    return web.Response(text=body, content_type=MPEGURL, charset=None,
                        headers={"Cache-Control": "no-store"})


def _playlist_response(request: web.Request, rendered: Rendered, *,
                       public: bool = False, headers: ResponseHeaders | None = None
                       ) -> web.Response:
    """A render as it is: ETag (304 on If-None-Match), the once-compressed body when
    the client takes gzip; cacheable for half a target duration, by anyone
    (``public``: cohort-URL mode) or by the player only (per-session paths).
    ``headers``: the app's (``HEADERS``), when the caller has them at hand."""
    headers = headers or request.app[HEADERS]
    asked = request.headers
    # (aiohttp's names are ``istr``s: looked up without folding the name per request)
    match = asked.get(hdrs.IF_NONE_MATCH)
    gzipped = _accepts_gzip(asked.get(hdrs.ACCEPT_ENCODING, ""))
    if match is not None and (rendered.etag in match or gzip_etag(rendered.etag) in match
                              or match.strip() == "*"):
        return web.Response(status=304, headers=headers.playlist(
            rendered, public, "304-gzip" if gzipped else "304"))
    if gzipped:
        return web.Response(body=rendered.gzipped,
                            headers=headers.playlist(rendered, public, "gzip"))
    return web.Response(body=rendered.body, headers=headers.playlist(rendered, public, "identity"))


def gzip_etag(etag: str) -> str:
    """The gzipped body's entity tag: a strong tag names one representation's bytes
    (RFC 9110 8.8.3), so the two encodings of a render must not share one (a cache
    holding both would otherwise treat them as interchangeable). Either tag in
    If-None-Match is a 304: both stand for the same render."""
    return etag[:-1] + '-gz"' if etag.endswith('"') else etag + "-gz"


#: Accept-Encoding values players send, parsed once (a few distinct values per
#: player family; anything longer than a real header is parsed every time).
_GZIP_ACCEPTED: dict[str, bool] = {}


def _accepts_gzip(header: str) -> bool:
    found = _GZIP_ACCEPTED.get(header)
    if found is None:
        found = accepts_gzip(header)
        if len(header) <= 200 and len(_GZIP_ACCEPTED) < 256:
            _GZIP_ACCEPTED[header] = found
    return found


def accepts_gzip(header: str) -> bool:
    """RFC 9110 12.5.3: ``gzip`` (any case) or ``*`` with a non-zero q-value."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip()
        if q.lower().startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def media_ready(app: web.Application) -> FastPath:
    """:func:`media`'s answer when the render is cached (:meth:`ChannelRuntime.ready`):
    a live event's reloads, answered without an await, the app's channels, signer
    and header sets looked up once (the channels dict is changed in place)."""
    channels, signer, headers = app[CHANNELS], app[SIGNER], app[HEADERS]

    def ready(request: web.Request) -> web.Response | None:
        info = request.match_info
        runtime, session = _verified(channels, signer, info)
        rendered = runtime.ready(info["rid"], session.cohort)
        return None if rendered is None else _playlist_response(request, rendered,
                                                                headers=headers)

    return ready


async def media(request: web.Request) -> web.Response:
    runtime, session = _session_of(request)
    rid = request.match_info["rid"]
    rendered = runtime.ready(rid, session.cohort) or await runtime.render(rid, session.cohort)
    return _playlist_response(request, rendered)


def _client_ip(request: web.Request) -> str:
    """The viewer's address: behind configured trusted proxies, the right-most
    X-Forwarded-For entry that is not one of them (the left part is client-set)."""
    trusted = request.app[TRUSTED]
    if not trusted:
        return request.remote or ""
    return client_ip(request.remote or "", request.headers.getall("X-Forwarded-For", []),
                     trusted)


def client_ip(remote: str, forwarded: list[str],
              trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not trusted or not is_trusted(remote):
        return remote
    hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else remote


def _ad_position(info: Mapping[str, str]) -> tuple[int, int]:
    """(pod position, segment) of an ad segment path."""
    try:
        return int(info["item"]), int(info["seg"])
    except ValueError as exc:
        raise BadRequest("malformed ad segment path") from exc


def _ad_url(library: CreativeLibrary, runtime: ChannelRuntime, decision: Decision | None,
            item: int, segment: int, rid: str) -> str:
    """The asset URL of segment ``segment`` of the ad at pod position ``item``."""
    if decision is None or not 0 <= item < len(decision.pod.items):
        raise NotFound("no such ad in this session's break")
    creative = decision.pod.items[item].creative
    path = library.segment_path(creative, rid, segment)
    if path is None:
        library.load(creative, runtime.specs)
        path = library.segment_path(creative, rid, segment)
    if path is None:
        raise NotFound("ad segment not available")
    return f"{runtime.assets_base}/{path}"


async def _ad_target(request: web.Request, runtime: ChannelRuntime, cohort: str
                     ) -> tuple[Decision, int, int, str]:
    """(decision, pod position, segment, asset URL) of an ad segment path."""
    info = request.match_info
    item, segment = _ad_position(info)
    break_id = info["brk"]
    # Frozen decisions never change: the one this instance holds needs no await.
    decision = (runtime.cached_decision(break_id, cohort)
                or await runtime.decision(break_id, cohort, None))
    url = _ad_url(request.app[LIBRARY], runtime, decision, item, segment, info["rid"])
    assert decision is not None  # (_ad_url refuses None)
    return decision, item, segment, url


def ad_segment_ready(app: web.Application) -> FastPath:
    """:func:`ad_segment`'s answer without an await: the decision held here and the
    beacons queued in process (:meth:`BeaconTracker.record_now`), the same steps in
    the same order, so the same answers and errors; else None (the handler: a
    decision to load, progress or queue in Redis). Every ad segment request of
    a break, from every session: one coroutine (``served``'s), not one per step."""
    channels, signer, headers = app[CHANNELS], app[SIGNER], app[HEADERS]

    def ready(request: web.Request) -> web.Response | None:
        info = request.match_info
        runtime, session = _verified(channels, signer, info)
        item, segment = _ad_position(info)
        decision = runtime.cached_decision(info["brk"], session.cohort)
        if decision is None:
            return None
        url = _ad_url(app[LIBRARY], runtime, decision, item, segment, info["rid"])
        ad = decision.ad(item)
        if ad is not None and request.method == "GET":
            fired = app[TRACKER].record_now(
                session_id=session.session_id, break_id=info["brk"], ad=ad,
                segment=segment,
                nominal=runtime.segment_cadence(info["rid"]) or decision.pod.nominal,
                client_ip=_client_ip(request),
                user_agent=request.headers.get(hdrs.USER_AGENT, ""))
            if fired is None:
                return None
        return web.Response(status=302, headers=headers.redirect(url))

    return ready


async def ad_segment(request: web.Request) -> web.Response:
    runtime, session = _session_of(request)
    decision, item, segment, url = await _ad_target(request, runtime, session.cohort)
    ad = decision.ad(item)
    if ad is not None and request.method == "GET":
        try:
            await request.app[TRACKER].on_ad_segment(
                session_id=session.session_id, break_id=request.match_info["brk"], ad=ad,
                # Segment indexes count in the rendition's grid's cadence (the video's,
                # or a demuxed audio grid's own), not the pod's unit.
                segment=segment,
                nominal=runtime.segment_cadence(request.match_info["rid"])
                or decision.pod.nominal,
                client_ip=_client_ip(request),
                user_agent=request.headers.get("User-Agent", ""))
        except (RedisError, OSError) as exc:
            request.app[METRICS].beacons.labels("store_unavailable").inc()
            log.warning("beacons of %s not queued (store unavailable: %s): 503, the "
                        "player retries", request.path[-60:], exc)
            raise StoreUnavailable("beacon store unavailable, retry", retry_after=1) from exc
    return web.Response(status=302, headers=request.app[HEADERS].redirect(url))


#: Where the MPEG-TS muxer puts the first PTS of a conditioned segment (ffmpeg's
#: default muxing delay, 1.4 s), in 90 kHz ticks.
_TS_START_TICKS = 126_000


async def ad_caption(request: web.Request) -> web.Response:
    """An empty WebVTT segment for a subtitle slot inside a break.

    X-TIMESTAMP-MAP ties it to the PTS the matching ad video segment starts at
    (RFC 8216bis 3.1.4), so players keep subtitle timing across the break;
    it carries no cues (the ads' own captions are not conditioned yet). The
    segment index counts in the subtitle grid's own cadence (6 s subtitles over
    2 s video: filler 1 starts 6 s into the ad, not 2 s).
    """
    if "token" in request.match_info:
        cohort = _session(request).cohort
        runtime = _channel(request)
    else:
        runtime, cohort = _cohort(request)
    info = request.match_info
    try:
        item, segment = int(info["item"]), int(info["seg"])
    except ValueError as exc:
        raise BadRequest("malformed caption segment path") from exc
    rendition = (await runtime.multivariant()).rendition(info["rid"])
    if rendition is None or rendition.kind != "subtitles":
        raise NotFound(f"no subtitle rendition {info['rid']!r}")
    cadence = runtime.cadences.get(rendition.grid) or runtime.nominal or Fraction(2)
    # Only a slot of a decided break (found by a newcomer: any path answered 200).
    decision = (runtime.cached_decision(info["brk"], cohort)
                or await runtime.decision(info["brk"], cohort, None))
    if decision is None or not 0 <= item < len(decision.pod.items) or not (
            0 <= segment * cadence < decision.pod.items[item].span):
        raise NotFound("no such subtitle slot in this break")
    pts = (_TS_START_TICKS + round(segment * cadence * 90_000)) % (1 << 33)
    body = f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{pts},LOCAL:00:00:00.000\n\n"
    return web.Response(text=body, content_type="text/vtt",
                        headers={"Cache-Control": "public, max-age=86400"})


async def _client_errors(app: web.Application) -> AsyncIterator[None]:
    """Requests aiohttp's parser refused: one WARNING line each, counted as
    ``stitcher_requests_total{endpoint="unparsed"}`` (:class:`ClientErrorFilter`)."""
    server_log = logging.getLogger("aiohttp.server")
    refused = ClientErrorFilter(
        lambda status: app[METRICS].requests.record("unparsed", status, 0.0))
    server_log.addFilter(refused)
    yield
    server_log.removeFilter(refused)


async def content_caption(request: web.Request) -> web.StreamResponse:
    """A content WebVTT segment with the X-TIMESTAMP-MAP of its video span (B22,
    :mod:`stitcher.captions`): the same bytes for every session and cohort."""
    if "token" in request.match_info:
        _session(request)
        runtime = _channel(request)
    else:
        runtime, _cohort_name = _cohort(request)
    msn, _, digest = request.match_info["msn"].partition("-")
    # Canonical digits only: one URI per segment (``040`` aliased ``40`` under a
    # day-long public max-age).
    if not (msn.isdigit() and msn.isascii() and (msn == "0" or msn[0] != "0")
            and len(digest) == 10
            and all(c in "0123456789abcdef" for c in digest)):
        raise BadRequest("malformed caption segment path")
    caption = await runtime.captions.segment(request.match_info["rid"], int(msn), digest)
    if caption.redirect is not None:
        raise web.HTTPFound(caption.redirect, headers={"Cache-Control": "no-store"})
    return web.Response(body=caption.body, content_type="text/vtt", charset="utf-8",
                        headers={"Cache-Control": f"public, max-age={caption.max_age}"})


async def tracking(request: web.Request) -> web.Response:
    """Client-side tracking in the shape of MediaTailor's tracking API (avails)."""
    session = _session(request)
    runtime = _channel(request)
    mv = await runtime.multivariant()
    video = next((r for r in mv.renditions if r.kind == "video"), None)
    avails: list[dict[str, Any]] = []
    if video is not None:
        rendered = await runtime.render(video.id, session.cohort, with_result=True)
        avails = await _avails(runtime, session.cohort, rendered, session.session_id)
    return web.json_response({"avails": avails, "nextToken": "", "nonLinearAvails": []},
                             headers={"Cache-Control": "no-store"})


async def _avails(runtime: ChannelRuntime, cohort: str, rendered: Rendered,
                  session_id: str | None = None) -> list[dict[str, Any]]:
    """The avail schedule of a render, with the cohort's frozen decisions (from the
    store when this instance did not make them); ``[SESSIONID]`` expanded in a
    session's (a cohort's is shared: there the player fills it in)."""
    assert rendered.result is not None  # rendered with_result
    slots = rendered.result.slots
    decisions: dict[str, Decision] = {}
    for break_id in {s.entry.break_id for s in slots
                     if s.entry is not None and s.entry.kind is not SlotKind.CONTENT}:
        decision = await runtime.decision(break_id, cohort, None)
        if decision is not None:
            decisions[break_id] = decision
    return avail_schedule(slots, decisions, session_id=session_id)


# ----------------------------------------------------------- cohort-URL mode
def _cohort(request: web.Request) -> tuple[ChannelRuntime, str]:
    """The channel and cohort of a cohort URL: the channel must offer cohort URLs and
    the cohort be one its rules can produce (so clients cannot mint cohorts)."""
    runtime = _channel(request)
    if not runtime.cfg.cohort_urls:
        raise NotFound(f"channel {runtime.cfg.id!r} does not offer cohort URLs")
    cohort = request.match_info["cohort"]
    if not runtime.is_cohort(cohort):
        raise NotFound(f"channel {runtime.cfg.id!r} has no cohort {cohort[:64]!r}")
    return runtime, cohort


async def cohort_multivariant(request: web.Request) -> web.Response:
    runtime, _cohort_name = _cohort(request)
    mv = await runtime.multivariant()
    runtime.prepare()
    return _playlist_response(request, runtime.multivariant_rendered(mv), public=True)


def cohort_media_ready(request: web.Request) -> web.Response | None:
    """:func:`cohort_media` without an await when the render is cached."""
    runtime, cohort = _cohort(request)
    rendered = runtime.ready(request.match_info["rid"], cohort, COHORT)
    return None if rendered is None else _playlist_response(request, rendered, public=True)


async def cohort_media(request: web.Request) -> web.Response:
    runtime, cohort = _cohort(request)
    rid = request.match_info["rid"]
    rendered = runtime.ready(rid, cohort, COHORT) or await runtime.render(rid, cohort, COHORT)
    return _playlist_response(request, rendered, public=True)


async def cohort_ad_segment(request: web.Request) -> web.Response:
    """Only for an ad whose assets were not on disk when the playlist was rendered
    (cohort playlists normally point at /assets): the same redirect, no beacons."""
    runtime, cohort = _cohort(request)
    _decision, _item, _segment, url = await _ad_target(request, runtime, cohort)
    raise web.HTTPFound(url, headers={"Cache-Control": "public, max-age=86400"})


async def cohort_tracking(request: web.Request) -> web.Response:
    """The cohort's avails and beacon URLs: in cohort-URL mode players beacon."""
    runtime, cohort = _cohort(request)
    mv = await runtime.multivariant()
    video = next((r for r in mv.renditions if r.kind == "video"), None)
    avails: list[dict[str, Any]] = []
    max_age = 1
    if video is not None:
        rendered = await runtime.render(video.id, cohort, COHORT, with_result=True)
        avails = await _avails(runtime, cohort, rendered)
        max_age = max(1, rendered.target_duration // 2)
    body = json.dumps({"avails": avails, "nextToken": "", "nonLinearAvails": []}).encode()
    # Cacheable like the cohort's playlist (found by a newcomer: no ETag, no 304, no
    # gzip): the same bytes for every viewer, revalidated by its entity tag.
    # (The gzipped body its own tag, either answering If-None-Match, as for playlists.)
    etag = f'"{hashlib.sha1(body).hexdigest()[:16]}"'
    gzipped = _accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
    headers = {"Cache-Control": f"public, max-age={max_age}",
               "ETag": gzip_etag(etag) if gzipped else etag, "Vary": "Accept-Encoding"}
    match = request.headers.get(hdrs.IF_NONE_MATCH)
    if match is not None and (etag in match or gzip_etag(etag) in match
                              or match.strip() == "*"):
        return web.Response(status=304, headers=headers)
    response = web.Response(body=body, content_type="application/json", headers=headers)
    if gzipped:
        response.enable_compression(web.ContentCoding.gzip)
    return response


async def assets(request: web.Request) -> web.FileResponse:
    """A conditioned segment or init segment; any other file of the library (its
    bookkeeping, the mezzanines) is a 404 like a missing one."""
    found = player_file(request.app[LIBRARY].root, request.match_info["path"])
    if found is None:
        raise NotFound("no such asset")
    path, media_type = found
    return SentFile(path, headers={"Content-Type": media_type,
                                   "Cache-Control": "public, max-age=86400"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    """Ready once every channel is prepared (ladder probed, slate conditioned) or
    has failed to be (listed as ``failed``; retried every ``PREPARE_RETRY`` s):
    one dead origin must not take every channel of the instance out of a load
    balancer (found by a newcomer). Asking starts the preparation: a load
    balancer that waits for readiness must not wait for a viewer to start it."""
    channels = request.app[CHANNELS]
    tasks = {c: rt.prepare() for c, rt in channels.items()}
    preparing = [c for c, rt in channels.items() if rt.preparing]
    failed = [c for c, t in tasks.items()
              if c not in preparing and (not t.done() or t.cancelled() or t.exception())]
    return web.json_response({"ready": not preparing, "preparing": preparing,
                              "failed": failed}, status=503 if preparing else 200)


async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(config: StitcherConfig, *, store: Store | None = None,
               conditioner: Conditioner | None = None,
               clock: Callable[[], float] | None = None,
               sleep: Callable[[float], Awaitable[None]] | None = None) -> web.Application:
    """The service. ``clock`` (seconds, monotonic) paces origin refreshes and the
    decisions fetched ahead of a break; ``sleep`` waits on it: tests pass the fixture
    origin's virtual clock so an accelerated stream is refetched in step."""
    app = web.Application()
    app[CONFIG] = config
    app[TRUSTED] = tuple(ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies)
    app[METRICS] = Metrics()
    app[IN_FLIGHT] = InFlight()
    keys = config.session_keys
    if not keys:
        log.warning("no session_keys configured: signing sessions with a random key made now "
                    "(sessions will not survive a restart nor work across instances)")
        keys = {"ephemeral": secrets.token_urlsafe(32)}
    app[SIGNER] = SessionSigner(keys, grace=config.session_grace)
    app[CHANNELS] = {}
    app[COMMON_HEADERS] = _common_headers(config)
    app[HEADERS] = ResponseHeaders(app[COMMON_HEADERS])
    # Instances sharing Redis compare fetch times: they need a clock they share
    # (epoch seconds), not each host's monotonic one.
    shared = config.redis_url is not None or isinstance(store, RedisStore)
    default_clock = time.time if shared else time.monotonic
    app.cleanup_ctx.append(_client_errors)
    app.cleanup_ctx.append(_resources(store, conditioner, clock or default_clock,
                                      sleep or asyncio.sleep))
    r = Routes(app)
    base = "/v1/session/{token}/{channel}"
    # The hot routes first: the router tries a path prefix's routes in this order.
    r.get(base + "/media/{rid}.m3u8", media, name="media", fast=media_ready(app))
    r.get(base + "/media/ad/{rid}/{brk}/{item}/{seg}.ts", ad_segment, name="ad_segment",
          fast=ad_segment_ready(app))
    r.add("POST", "/v1/session/{channel}", start_session, name="session")
    r.get("/v1/master/{channel}.m3u8", implicit_session, name="implicit_session")
    r.get(base + "/master.m3u8", multivariant, name="multivariant")
    r.get(base + "/media/ad/{rid}/{brk}/{item}/{seg}.vtt", ad_caption, name="ad_caption")
    r.get(base + "/media/cv/{rid}/{msn}.vtt", content_caption, name="content_caption")
    r.get(base + "/tracking", tracking, name="tracking")
    cohort = "/v1/cohort/{channel}/{cohort}"
    r.get(cohort + "/master.m3u8", cohort_multivariant, name="cohort_multivariant")
    r.get(cohort + "/media/{rid}.m3u8", cohort_media, name="cohort_media",
          fast=cohort_media_ready)
    r.get(cohort + "/media/ad/{rid}/{brk}/{item}/{seg}.ts", cohort_ad_segment,
          name="cohort_ad_segment")
    r.get(cohort + "/media/ad/{rid}/{brk}/{item}/{seg}.vtt", ad_caption,
          name="cohort_ad_caption")
    r.get(cohort + "/media/cv/{rid}/{msn}.vtt", content_caption,
          name="cohort_content_caption")
    r.get(cohort + "/tracking", cohort_tracking, name="cohort_tracking")
    r.get("/assets/{path:.+}", assets, name="assets")
    r.get("/healthz", healthz, name="healthz")
    r.get("/readyz", readyz, name="readyz")
    r.get("/metrics", metrics, name="metrics")
    from stitcher.admin import setup_admin  # the admin API and console (token-protected)

    setup_admin(app, r)
    r.add("*", "/{tail:.*}", unrouted, name=None)  # last: only what no other route takes
    return app


def _resources(store: Store | None, conditioner: Conditioner | None,
               clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
               ) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        m = app[METRICS]
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        origin_http = aiohttp.ClientSession()
        ad_sessions = AdSessions()
        # Beacons and creative downloads serve every channel: the channels' exceptions
        # together (channels added later through the admin API: theirs too).
        beacon_http = ad_sessions.for_all(config.channels)
        owned: RedisStore | None = None
        if store is None and config.redis_url:
            owned = RedisStore.from_url(config.redis_url, cluster=config.redis_cluster)
        the_store: Store = store or owned or MemoryStore(
            Path(config.state_dir) if config.state_dir else data_dir)
        # Beacons: with Redis, a durable queue every instance shares and progress
        # every instance sees; embedded, the in-process queue.
        queue: BeaconSink
        if isinstance(the_store, RedisStore):
            queue = stream_queue(config, the_store, beacon_http, m)
            tracker = BeaconTracker(queue, progress=RedisProgress(
                the_store.client, prefix=the_store.prefix,
                ttl=config.session_ttl + config.session_grace), metrics=m)
        else:
            queue = BeaconQueue(beacon_http, m, max_attempts=config.beacon_max_attempts,
                                timeout=config.beacon_timeout,
                                base_backoff=config.beacon_backoff,
                                max_backoff=config.beacon_max_backoff,
                                per_host=config.beacon_per_host)
            tracker = BeaconTracker(queue)
        library = CreativeLibrary(data_dir / "assets", conditioner or Conditioner(metrics=m), m,
                                  download=_downloader(beacon_http))
        app[BEACONS], app[TRACKER], app[LIBRARY] = queue, tracker, library
        app[STORE] = the_store
        # Scale-out: origin fetches and ad decisions single-flight across instances.
        flights = the_store.flights if isinstance(the_store, RedisStore) else None
        assets_base = (config.assets_base_url or "/assets").rstrip("/")

        # One state per ad server (breaker, rate cap, Retry-After) for every channel.
        servers = AdServers(AdServerPolicy(
            request_timeout=config.ad_request_timeout, max_rate=config.ad_max_rate,
            failure_threshold=config.ad_breaker_failures,
            cool_down=config.ad_breaker_cool_down, retries=config.ad_retries,
            backoff=config.ad_retry_backoff,
            default_retry_after=config.ad_default_retry_after), m, clock=clock, sleep=sleep)

        def make_runtime(cfg: ChannelConfig) -> ChannelRuntime:
            ad_sessions.allow(cfg)
            decider = AdDecider(ad_sessions.for_channel(cfg),
                                library, m, timeout=config.ad_timeout, on_error=tracker.error,
                                servers=servers)
            return ChannelRuntime(
                cfg, http=origin_http, store=the_store, decider=decider, library=library,
                metrics=m, assets_base=assets_base, origin_timeout=config.origin_timeout,
                origin_max_bytes=config.origin_max_bytes, clock=clock, sleep=sleep, flights=flights, on_unused=tracker.not_used)

        # Channels created or changed later (the admin API) are built the same way.
        app[RUNTIME_FACTORY] = make_runtime
        for cfg in config.channels:
            app[CHANNELS][cfg.id] = make_runtime(cfg)
        yield
        for runtime in list(app[CHANNELS].values()):
            await runtime.close()
        await tracker.close()
        await queue.close()
        if owned is not None:
            await owned.close()
        await origin_http.close()
        await ad_sessions.close()

    return ctx


class AdSessions:
    """Client sessions for untrusted URLs, one per network policy: a channel's own
    (its ``private_ad_hosts``) for its ad requests, and one for what every channel
    shares (beacons, creative downloads) with all the channels' exceptions."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[bool, frozenset[str]], aiohttp.ClientSession] = {}
        self._shared: aiohttp.ClientSession | None = None

    def for_channel(self, cfg: ChannelConfig) -> aiohttp.ClientSession:
        key = (cfg.allow_private_ad_hosts,
               frozenset() if cfg.allow_private_ad_hosts else frozenset(cfg.private_ad_hosts))
        if key not in self._sessions:
            self._sessions[key] = client_session(allow_private=key[0], private_hosts=key[1])
        return self._sessions[key]

    def for_all(self, channels: Iterable[ChannelConfig]) -> aiohttp.ClientSession:
        """The shared session (made once): every channel's exceptions, and those of
        channels :meth:`allow` adds later."""
        if self._shared is None:
            channels = list(channels)
            self._shared = client_session(
                allow_private=any(c.allow_private_ad_hosts for c in channels),
                private_hosts={h for c in channels for h in c.private_ad_hosts})
        return self._shared

    def allow(self, cfg: ChannelConfig) -> None:
        """Add a (new or changed) channel's exceptions to the shared session's."""
        connector = self._shared.connector if self._shared is not None else None
        if isinstance(connector, PublicOnlyConnector):
            connector.trust(cfg.private_ad_hosts)

    async def close(self) -> None:
        for s in [*self._sessions.values(), *([self._shared] if self._shared else [])]:
            await s.close()


def stream_queue(config: StitcherConfig, store: RedisStore, http: aiohttp.ClientSession,
                 metrics: Metrics) -> StreamBeaconQueue:
    """The durable beacon queue as the config sets it (stitchers and ``stitcher beacons``)."""
    return StreamBeaconQueue(store.client, http, metrics, prefix=store.prefix,
                             shards=config.beacon_shards, claim_idle=config.beacon_claim_idle,
                             max_attempts=config.beacon_max_attempts,
                             timeout=config.beacon_timeout, base_backoff=config.beacon_backoff,
                             max_backoff=config.beacon_max_backoff,
                             per_host=config.beacon_per_host)


def _downloader(session: aiohttp.ClientSession) -> Callable[[str], AsyncIterator[bytes]]:
    """Streams a creative's bytes (the policy resolver of ``session`` applies)."""

    async def download(url: str) -> AsyncIterator[bytes]:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"creative URL scheme not allowed: {url[:60]}")
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(1 << 16):
                yield chunk

    return download


def nominal_of(runtime: ChannelRuntime) -> Fraction:
    return runtime.nominal or Fraction(2)


__all__ = ["SlotKind", "create_app"]
