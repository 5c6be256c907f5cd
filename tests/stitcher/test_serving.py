"""What the player-facing routes put on the wire, header by header: status, every
header in order, body, and the request metrics, for the hot routes (a cached
playlist reload, an ad segment request) and their error cases.

The expected lists were taken from the service as it was before the hot routes
got their synchronous fast path (errors, metrics and CORS were a middleware
then): the fast path must answer exactly as the awaiting path and the old
middleware did (docs/architecture.md "Serving cost")."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from fixtures.clock import ManualClock
from stitcher.sessions import Session
from tests.harness import Stack, start_stack

CORS = [("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Expose-Headers", "ETag, X-Stitcher-Stale, Retry-After")]
JSON = "application/json; charset=utf-8"
DATE, SERVER = ("Date", "<date>"), ("Server", "<server>")


async def _wire(stack: Stack, method: str, url: str, headers: Mapping[str, str] | None = None,
                ) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, the raw headers in order (Date and Server values masked), raw body."""
    if url.startswith("/"):
        url = stack.base + url
    async with stack.http.request(method, url, headers=headers, allow_redirects=False,
                                  auto_decompress=False) as resp:
        raw = [(k.decode(), v.decode()) for k, v in resp.raw_headers]
        body = await resp.read()
    masked = [(k, "<date>" if k == "Date" else "<server>" if k == "Server" else v)
              for k, v in raw]
    assert ("Date", "<date>") in masked and ("Server", "<server>") in masked
    return resp.status, masked, body


def _error(status: int, code: str, reason: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": code, "reason": reason}).encode()
    return status, [("Cache-Control", "no-store"), ("Content-Type", JSON), *CORS,
                    ("Content-Length", str(len(body))), DATE, SERVER], body


def _playlist(etag: str, body: bytes, *, scope: str = "private", extra: tuple[
        tuple[str, str], ...] = (), encoding: str | None = None
              ) -> list[tuple[str, str]]:
    return [*CORS, ("ETag", etag), ("Vary", "Accept-Encoding"),
            ("Cache-Control", f"{scope}, max-age=1"), *extra,
            ("Content-Type", "application/vnd.apple.mpegurl"),
            *([("Content-Encoding", encoding)] if encoding else []),
            ("Content-Length", str(len(body))), DATE, SERVER]


async def _requests_metric(stack: Stack) -> dict[tuple[str, str], float]:
    """``stitcher_requests_total`` by (endpoint, status); each endpoint's latency
    histogram counted the same requests."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for f in text_string_to_metric_families(await stack.metrics_text())
               for s in f.samples]
    counts = {(s.labels["endpoint"], s.labels["status"]): s.value for s in samples
              if s.name == "stitcher_requests_total"}
    timed = {s.labels["endpoint"]: s.value for s in samples
             if s.name == "stitcher_request_seconds_count"}
    for endpoint, n in timed.items():
        if endpoint != "metrics":  # (this scrape is timed after it is written)
            assert n == sum(v for (e, _s), v in counts.items() if e == endpoint), endpoint
    assert {e for e, _s in counts} == set(timed)
    return counts


async def test_playlist_reloads_answer_as_the_awaiting_path_and_the_old_middleware(
        tmp_path: Path) -> None:
    clock = ManualClock(start=1_870_000_000.0)
    identity = {"Accept-Encoding": "identity"}
    async with start_stack(clock=clock, data_dir=tmp_path / "s",
                           channel_config={"cohort_urls": True}) as stack:
        session = await stack.start_session()
        url = session.media_url("v0")
        first = await _wire(stack, "GET", url, identity)  # rendered (awaits)
        status, headers, body = first
        assert status == 200 and body.startswith(b"#EXTM3U\n")
        etag = dict(headers)["ETag"]
        assert headers == _playlist(etag, body)
        assert stack.runtime.ready("v0", session.cohort) is not None  # reloads: no await
        assert await _wire(stack, "GET", url, identity) == first
        assert await _wire(stack, "GET", url, identity) == first

        status, headers, zipped = await _wire(stack, "GET", url, {"Accept-Encoding": "gzip"})
        assert status == 200 and gzip.decompress(zipped) == body
        # Its own strong tag (RFC 9110 8.8.3: one representation's bytes).
        zipped_etag = etag[:-1] + '-gz"'
        assert headers == _playlist(zipped_etag, zipped, encoding="gzip")

        assert await _wire(stack, "GET", url, {"If-None-Match": etag, **identity}) == (
            304, [*CORS, ("ETag", etag), ("Vary", "Accept-Encoding"),
                  ("Cache-Control", "private, max-age=1"), DATE, SERVER], b"")
        # Either tag validates the render; the 304 names the encoding asked for.
        for sent in (etag, zipped_etag):
            assert await _wire(stack, "GET", url, {"If-None-Match": sent,
                                                   "Accept-Encoding": "gzip"}) == (
                304, [*CORS, ("ETag", zipped_etag), ("Vary", "Accept-Encoding"),
                      ("Cache-Control", "private, max-age=1"), DATE, SERVER], b"")
        assert await _wire(stack, "HEAD", url, identity) == (200, first[1], b"")

        # Cohort-URL mode: the same render path, cacheable by anyone.
        cohort = f"/v1/cohort/{stack.channel}/default/media/v0.m3u8"
        status, headers, public = await _wire(stack, "GET", cohort, identity)
        assert status == 200 and headers == _playlist(dict(headers)["ETag"], public,
                                                      scope="public")
        assert await _wire(stack, "GET", cohort, identity) == (status, headers, public)

        # The origin fails: the last good playlist, announced stale, and reloads of it
        # while backing off with the same header.
        stack.origin.add_fault(kinds={"media"}, status=500)
        clock.advance(4)
        stale = await _wire(stack, "GET", url, identity)
        status, headers, body = stale
        stale_header = ("X-Stitcher-Stale", "origin: http: HTTP 500")
        assert status == 200 and headers == _playlist(dict(headers)["ETag"], body,
                                                      extra=(stale_header,)), headers
        assert await _wire(stack, "GET", url, identity) == stale

        metrics = await _requests_metric(stack)
        assert metrics[("media", "200")] == 7 and metrics[("media", "304")] == 3
        assert metrics[("cohort_media", "200")] == 2


async def test_session_errors_preflight_and_unrouted_requests_answer_as_before(
        tmp_path: Path) -> None:
    async with start_stack(clock=ManualClock(start=1_870_000_000.0),
                           data_dir=tmp_path / "s") as stack:
        from stitcher.app import SIGNER

        session = await stack.start_session()
        signer = stack.app[SIGNER]
        channel = stack.channel
        assert (await _wire(stack, "GET", session.media_url("v0")))[0] == 200
        forged = session.token[:-2] + ("AA" if not session.token.endswith("AA") else "BB")
        expired = signer.encode(Session("k1", "0badc0de", channel, "default", 1_000))
        elsewhere = signer.encode(Session("k1", "0badc0de", "other", "default", 2_000_000_000))
        cases: list[tuple[str, str, tuple[int, list[tuple[str, str]], bytes]]] = [
            ("GET", f"/v1/session/{forged}/{channel}/media/v0.m3u8",
             _error(403, "session_invalid", "session token signature does not match")),
            ("GET", f"/v1/session/{expired}/{channel}/media/v0.m3u8",
             _error(410, "session_invalid", "session expired")),
            ("GET", f"/v1/session/{elsewhere}/{channel}/media/v0.m3u8",
             _error(403, "session_invalid", "session token belongs to another channel")),
            ("GET", f"/v1/session/{session.token}/nochannel/media/v0.m3u8",
             _error(404, "not_found", "unknown channel 'nochannel'")),
            ("GET", session.media_url("v9"), _error(404, "not_found", f"no rendition 'v9' on channel '{channel}'")),
            ("GET", f"{session.base}/media/ad/v0/b1/0/0.ts",
             _error(404, "not_found", "no such ad in this session's break")),
            ("GET", f"{session.base}/media/ad/v0/b1/x/0.ts",
             _error(400, "bad_request", "malformed ad segment path")),
            ("GET", f"/v1/session/{forged}/{channel}/media/ad/v0/b1/0/0.ts",
             _error(403, "session_invalid", "session token signature does not match")),
            ("POST", session.media_url("v0"),
             _error(405, "method_not_allowed", "Method Not Allowed")),
            ("GET", "/no/such/path", _error(404, "not_found", "Not Found")),
            ("DELETE", "/no/such/path", _error(404, "not_found", "Not Found")),
        ]
        for method, url, expected in cases:
            got = await _wire(stack, method, url)
            assert got == expected, (method, url, got)

        preflight = (204, [*CORS, ("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS"),
                           ("Access-Control-Allow-Headers", "Content-Type, Range, If-None-Match"),
                           ("Access-Control-Max-Age", "86400"), DATE, SERVER], b"")
        for url in (session.media_url("v0"), "/no/such/path", f"/v1/session/{channel}"):
            assert await _wire(stack, "OPTIONS", url) == preflight, url

        status, headers, body = await _wire(stack, "GET", f"/v1/master/{channel}.m3u8")
        location = dict(headers)["Location"]
        assert location.startswith("/v1/session/") and location.endswith(
            f"/{channel}/master.m3u8")
        assert status == 302 and headers == [
            ("Cache-Control", "no-store"), ("Content-Type", "text/plain; charset=utf-8"),
            ("Location", location), *CORS,
            ("Content-Length", str(len(body))), DATE, SERVER]

        metrics = await _requests_metric(stack)
        expected_counts = {("session", "200"): 1, ("media", "200"): 1, ("media", "403"): 2,
                           ("media", "410"): 1, ("media", "404"): 2, ("ad_segment", "404"): 1,
                           ("ad_segment", "400"): 1, ("ad_segment", "403"): 1,
                           ("other", "405"): 1, ("other", "404"): 2,
                           ("implicit_session", "302"): 1}
        assert {k: v for k, v in metrics.items() if k[0] != "metrics"} == expected_counts


async def test_an_ad_segment_request_answers_its_prebuilt_redirect(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    """The 302 of an ad segment, header by header, the first request of a session for
    it (beacons queued) and a repeat alike."""
    clock = ManualClock(start=1_870_100_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "s",
                           assets_dir=assets_dir, warm_up=True) as stack:
        session = await stack.start_session()
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        stack.origin.insert_break(edge + 2, 30)
        ads: list[str] = []
        for _ in range(12):
            status, _h, body = await stack.get(session.media_url("v0"))
            assert status == 200
            ads = [ln for ln in body.decode().splitlines() if ln.startswith("ad/")]
            if ads:
                break
            clock.advance(2)
        assert ads, "no ad segment published"
        url = f"{session.base}/media/{ads[0]}"
        first = await _wire(stack, "GET", url)
        status, headers, body = first
        location = dict(headers)["Location"]
        assert status == 302 and location.startswith("/assets/") and body == b""
        assert headers == [*CORS, ("Location", location), ("Cache-Control", "no-store"),
                           ("Content-Length", "0"), DATE, SERVER]
        assert await _wire(stack, "GET", url) == first
        assert (await _requests_metric(stack))[("ad_segment", "302")] == 2
        async with aiohttp.ClientSession() as http, http.get(
                stack.base + location) as resp:
            assert resp.status == 200


async def test_ad_segment_requests_fire_once_and_answer_errors_as_the_awaiting_path(
        media: Any, assets_dir: Path, tmp_path: Path) -> None:
    """An ad segment request in a break, by the fast path (the decision held here)
    and by the awaiting handler (a decision to load: this instance forgot it), answer
    the same bytes and queue the same beacons: a session's first request of segment 0
    fires impression and start (each once, whatever repeats), HEAD fires nothing, a
    first request of a later segment is a late join; the error cases of a real break
    (another session's token forged, expired or for another channel, a pod position
    or segment the decision does not have, malformed positions) as before."""
    from stitcher.app import BEACONS, SIGNER, TRACKER

    clock = ManualClock(start=1_870_200_000.0)
    async with start_stack(clock=clock, media=media, data_dir=tmp_path / "s",
                           assets_dir=assets_dir, warm_up=True) as stack:
        sessions = [await stack.start_session() for _ in range(4)]
        edge = stack.origin.live_edge_msn()
        assert edge is not None
        stack.origin.insert_break(edge + 2, 30)
        ads: list[str] = []
        for _ in range(12):
            status, _h, body = await stack.get(sessions[0].media_url("v0"))
            assert status == 200
            ads = [ln for ln in body.decode().splitlines() if ln.startswith("ad/")]
            if len(ads) >= 2:
                break
            clock.advance(2)
        assert len(ads) >= 2, "no ad segments published"
        _, rid, brk, item, seg = ads[0].removesuffix(".ts").split("/")
        assert (rid, item, seg) == ("v0", "0", "0") and ads[1] == f"ad/v0/{brk}/0/1.ts"
        queue, tracker, runtime = stack.app[BEACONS], stack.app[TRACKER], stack.runtime
        await queue.drain()
        hits_before = len(stack.beacon_hits())

        def redirect(location: str) -> tuple[int, list[tuple[str, str]], bytes]:
            return 302, [*CORS, ("Location", location), ("Cache-Control", "no-store"),
                         ("Content-Length", "0"), DATE, SERVER], b""

        async def fired(session_id: str) -> list[str]:
            await queue.drain()
            return [h.event for h in stack.beacon_hits(session_id=session_id)]

        ua = {"User-Agent": "serving-test-player/1.0"}
        decision = runtime.cached_decision(brk, "default")
        assert decision is not None and runtime.nominal is not None
        ad = decision.ad(0)
        assert ad is not None
        # The quartiles inside segment 1 (VAST: each on the segment holding it).
        quartiles = [e for e, at in (("firstQuartile", ad.duration / 4),
                                     ("midpoint", ad.duration / 2),
                                     ("thirdQuartile", 3 * ad.duration / 4))
                     if runtime.nominal <= at < 2 * runtime.nominal]
        # Session 0 through the fast path, session 1 through the handler (the decision
        # dropped from this instance: read back from the store), alike.
        answers = []
        for n, session in enumerate(sessions[:2]):
            if n == 1:
                runtime._decisions.clear()
            url = f"{session.base}/media/{ads[0]}"
            head = await _wire(stack, "HEAD", url, ua)
            assert await fired(session.session_id) == []  # HEAD: the redirect only
            first = await _wire(stack, "GET", url, ua)
            location = dict(first[1])["Location"]
            assert location.startswith("/assets/") and first == redirect(location)
            assert head == (302, [h for h in first[1] if h[0] != "Content-Length"], b"")
            assert await _wire(stack, "GET", url, ua) == first  # a repeat: nothing more
            assert await fired(session.session_id) == ["impression", "start"]
            hits = stack.beacon_hits(session_id=session.session_id)
            assert all(h.headers.get("X-Device-User-Agent") == ua["User-Agent"]
                       for h in hits), hits
            second = await _wire(stack, "GET", f"{session.base}/media/{ads[1]}", ua)
            assert second[0] == 302 and second == redirect(dict(second[1])["Location"])
            assert await fired(session.session_id) == ["impression", "start", *quartiles]
            answers.append((first, second))
        assert answers[0] == answers[1]
        # A session whose first request of the ad is its second segment joined late.
        late = tracker.late_joins
        assert (await _wire(stack, "GET", f"{sessions[2].base}/media/{ads[1]}", ua)
                == answers[0][1])
        assert tracker.late_joins == late + 1
        assert await fired(sessions[2].session_id) == []

        signer, channel, other = stack.app[SIGNER], stack.channel, sessions[3]
        forged = other.token[:-2] + ("AA" if not other.token.endswith("AA") else "BB")
        expired = signer.encode(Session("k1", "0badc0de", channel, "default", 1_000))
        elsewhere = signer.encode(Session("k1", "0badc0de", "other", "default", 2_000_000_000))
        base = other.base
        cases = [
            (f"/v1/session/{forged}/{channel}/media/{ads[0]}",
             _error(403, "session_invalid", "session token signature does not match")),
            (f"/v1/session/{expired}/{channel}/media/{ads[0]}",
             _error(410, "session_invalid", "session expired")),
            (f"/v1/session/{elsewhere}/{channel}/media/{ads[0]}",
             _error(403, "session_invalid", "session token belongs to another channel")),
            (f"{base}/media/ad/v0/{brk}/9/0.ts",
             _error(404, "not_found", "no such ad in this session's break")),
            (f"{base}/media/ad/v0/{brk}/-1/0.ts",
             _error(404, "not_found", "no such ad in this session's break")),
            (f"{base}/media/ad/v0/{brk}/0/999.ts",
             _error(404, "not_found", "ad segment not available")),
            (f"{base}/media/ad/v9/{brk}/0/0.ts",
             _error(404, "not_found", "ad segment not available")),
            (f"{base}/media/ad/v0/nosuchbreak/0/0.ts",
             _error(404, "not_found", "no such ad in this session's break")),
            (f"{base}/media/ad/v0/{brk}/0/x.ts",
             _error(400, "bad_request", "malformed ad segment path")),
        ]
        for url, expected in cases:
            got = await _wire(stack, "GET", url, ua)
            assert got == expected, (url, got)
        assert await fired(other.session_id) == []
        # Every beacon of this test, and nothing else, reached the ad server.
        assert len(stack.beacon_hits()) - hits_before == 2 * (2 + len(quartiles))
