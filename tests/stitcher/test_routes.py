"""Player-facing routes that are not playlists: generated WebVTT for subtitle
slots in a break, CORS preflight, HEAD, and clear 4xx answers."""

from __future__ import annotations

import asyncio
import json
import logging
from fractions import Fraction
from pathlib import Path

import pytest

from fixtures.clock import ManualClock
from manifests.pod import ItemKind, Pod, PodItem
from stitcher.ads import Decision
from stitcher.app import CHANNELS
from tests.harness import Stack, start_stack


async def decided(stack: Stack, cohort: str, break_id: str = "b123") -> None:
    """Freeze a decision for ``break_id``: ad A (10 s) then ad B (30 s), 2 s slots."""
    pod = Pod(break_id, (PodItem(ItemKind.AD, "ad-a", Fraction(10), Fraction(0),
                                 Fraction(10), 5),
                         PodItem(ItemKind.AD, "ad-b", Fraction(30), Fraction(10),
                                 Fraction(30), 15)), Fraction(2))
    await stack.runtime.store.put_decision_if_absent(stack.channel, break_id, cohort,
                                                     Decision(pod, ()).to_json())


async def test_subtitle_slot_is_an_empty_webvtt_tied_to_the_ad_pts(tmp_path: Path) -> None:
    async with start_stack(clock=ManualClock(), data_dir=tmp_path, subtitles=True) as stack:
        session = await stack.start_session()
        await decided(stack, session.cohort)
        status, headers, body = await stack.get(f"{session.base}/media/ad/s0/b123/1/3.vtt")
        assert status == 200
        assert headers["Content-Type"].startswith("text/vtt")
        assert headers["Access-Control-Allow-Origin"] == "*"
        pts = 126_000 + 3 * 2 * 90_000
        assert body.decode() == f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{pts},LOCAL:00:00:00.000\n\n"

        forged = session.base.replace(session.token, session.token[:-2] + "AA")
        status, headers, body = await stack.get(f"{forged}/media/ad/s0/b123/1/3.vtt")
        assert status == 403
        assert json.loads(body)["error"] == "session_invalid"

        # Only slots of a decided break (found by a newcomer: any path was a 200).
        for path in ("s0/b999/1/3.vtt", "s0/b123/2/0.vtt", "s0/b123/0/5.vtt",
                     "s0/b123/1/15.vtt", "v0/b123/1/3.vtt", "nope/b123/1/3.vtt"):
            status, _, body = await stack.get(f"{session.base}/media/ad/{path}")
            assert status == 404 and json.loads(body)["error"] == "not_found", (path, body)
        status, _, body = await stack.get(f"{session.base}/media/ad/s0/b123/1/14.vtt")
        assert status == 200, body  # ad B's 15th and last 2 s slot


async def test_subtitle_filler_map_counts_in_the_subtitle_grid_cadence(
        tmp_path: Path) -> None:
    """Filler segment indexes count in the subtitle grid's cadence: with 6 s subtitle
    segments over 2 s video, filler 3 starts 18 s into the ad. The fixture origin
    has one cadence for every rendition, so the 6 s is set as the channel would have
    learnt it from the subtitle playlist when prepared."""
    async with start_stack(clock=ManualClock(), data_dir=tmp_path, subtitles=True) as stack:
        mv = await stack.runtime.multivariant()
        subs = next(r for r in mv.renditions if r.kind == "subtitles")
        stack.runtime.nominal = Fraction(2)
        stack.runtime.cadences.update({"main": Fraction(2), subs.grid: Fraction(6)})
        session = await stack.start_session()
        await decided(stack, session.cohort)
        status, _, body = await stack.get(f"{session.base}/media/ad/{subs.id}/b123/1/3.vtt")
        assert status == 200
        pts = 126_000 + 3 * 6 * 90_000
        assert body.decode() == f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{pts},LOCAL:00:00:00.000\n\n"


async def test_preflight_head_and_unknown_paths(tmp_path: Path) -> None:
    async with start_stack(clock=ManualClock(), data_dir=tmp_path) as stack:
        session = await stack.start_session()
        async with stack.http.options(session.manifest_url, headers={
                "Origin": "https://player.example.com",
                "Access-Control-Request-Method": "GET"}) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "GET" in resp.headers["Access-Control-Allow-Methods"]
        async with stack.http.head(session.manifest_url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
        for path, status in [("/v1/session/nochannel", 404),
                             (f"{session.base}/media/v9.m3u8", 404),
                             ("/assets/%2e%2e/%2e%2e/etc/passwd", 404),
                             ("/no/such/path", 404)]:
            if path.startswith("/v1/session/nochannel"):
                async with stack.http.post(stack.base + path) as resp:
                    assert resp.status == status
                    assert "reason" in await resp.json()
                continue
            from yarl import URL

            url = stack.base + path if path.startswith("/") else path
            got, headers, body = await stack.get(str(URL(url, encoded=True)))
            assert got == status, (path, body)
            assert json.loads(body)["error"] == "not_found"
            assert headers["Access-Control-Allow-Origin"] == "*"


async def test_hostile_requests_get_clear_4xx(tmp_path: Path) -> None:
    """Found by a newcomer trying to break the product: each was a 500 once."""
    from stitcher.app import SIGNER
    from stitcher.sessions import Session

    async with start_stack(clock=ManualClock(), data_dir=tmp_path) as stack:
        from yarl import URL

        status, _headers, body = await stack.get(str(URL(stack.base + "/assets/%00",
                                                        encoded=True)))
        assert status == 404 and json.loads(body)["error"] == "not_found"

        deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
        async with stack.http.post(f"{stack.base}/v1/session/{stack.channel}", data=deep,
                                   headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_request"

        signer = stack.app[SIGNER]
        # A validly signed token whose expiry is not a number: malformed, not a crash.
        bad_expiry = signer.encode(Session("k1", "deadbeef", stack.channel, "default",
                                           "abc"))  # type: ignore[arg-type]
        # A validly signed token naming a cohort the channel's rules cannot produce.
        bad_cohort = signer.encode(Session("k1", "deadbeef", stack.channel, "../../etc",
                                           2_000_000_000))
        for token, reason in ((bad_expiry, "malformed"), (bad_cohort, "cohort")):
            status, _headers, body = await stack.get(
                f"/v1/session/{token}/{stack.channel}/master.m3u8")
            assert status == 403, body
            assert reason in json.loads(body)["reason"]
        metrics = await stack.metrics_text()
        assert 'status="403"' in metrics and 'status="500"' not in metrics


def test_client_ip_behind_trusted_proxies() -> None:
    import ipaddress

    from stitcher.app import client_ip

    cdn = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    # Not behind a trusted proxy: the peer is the viewer, X-Forwarded-For is ignored.
    assert client_ip("203.0.113.7", ["1.2.3.4"], cdn) == "203.0.113.7"
    assert client_ip("10.1.1.1", ["1.2.3.4"], ()) == "10.1.1.1"
    # Behind the CDN: the right-most untrusted hop (the left part is client-controlled).
    assert client_ip("10.1.1.1", ["6.6.6.6, 198.51.100.9, 10.2.2.2"], cdn) == "198.51.100.9"
    assert client_ip("2001:db8::1", ["198.51.100.9", "2001:db8::2"], cdn) == "198.51.100.9"
    assert client_ip("10.1.1.1", [], cdn) == "10.1.1.1"


async def test_readyz_prepares_the_channels_itself(media: object, assets_dir: Path,
                                                   tmp_path: Path) -> None:
    """Found by a newcomer: /readyz stayed 503 until a viewer's first playlist
    request started the preparation, so a load balancer waiting for readiness
    before sending viewers would wait forever. Asking it starts the work."""
    async with start_stack(clock=ManualClock(start=1_800_200_000.0), media=media,
                           data_dir=tmp_path / "s", assets_dir=assets_dir) as stack:
        status, _, body = await stack.get(f"{stack.base}/readyz")
        assert json.loads(body)["preparing"] == [stack.channel] and status == 503
        for _ in range(300):  # the slate is conditioned in the background
            status, _, body = await stack.get(f"{stack.base}/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and json.loads(body) == {"ready": True, "preparing": [],
                                                      "failed": []}


async def test_one_dead_channel_does_not_make_the_instance_unready(
        media: object, assets_dir: Path, tmp_path: Path) -> None:
    """Found by a newcomer: a channel whose origin is down kept /readyz at 503 for
    good, so a load balancer would take every channel out; and it was retried (and
    logged) on every probe."""
    token = "readyz-admin-token-0123456789"
    async with start_stack(clock=ManualClock(start=1_800_200_000.0), media=media,
                           data_dir=tmp_path / "s", assets_dir=assets_dir,
                           stitcher_config={"admin_token": token}) as stack:
        async with stack.http.post(f"{stack.base}/admin/channels", json={
                "id": "dead", "origin_url": "http://127.0.0.1:9/live/dead/master.m3u8"},
                headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 201, await resp.text()
        for _ in range(300):
            status, _, body = await stack.get(f"{stack.base}/readyz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and json.loads(body) == {"ready": True, "preparing": [],
                                                      "failed": ["dead"]}, body
        dead = stack.app[CHANNELS]["dead"]
        tries = dead.prepare_failures
        for _ in range(5):  # probes within the retry interval start nothing new
            assert (await stack.get(f"{stack.base}/readyz"))[0] == 200
        await asyncio.sleep(0.2)
        assert dead.prepare_failures == tries


def test_accepts_gzip_reads_q_values() -> None:
    """Found by a newcomer: ``gzip;q=0`` (refused) still got gzip; ``GZIP`` did not."""
    from stitcher.app import accepts_gzip

    for header, ok in (("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True),
                       ("gzip;q=0", False), ("gzip; q=0.0", False), ("*", True),
                       ("identity", False), ("", False), ("br, x-gzip", True),
                       ("gzip;q=nonsense", False)):
        assert accepts_gzip(header) is ok, header


async def test_a_request_the_parser_refuses_is_one_warning_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by a newcomer: an over-long header was logged at ERROR with a traceback
    (anyone can flood the log with those); now one WARNING line, counted."""
    async with start_stack(clock=ManualClock(), data_dir=tmp_path) as stack:
        host, port = stack.base.split("//")[1].split(":")
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            for _ in range(2):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                             + b"secret" * 4_000 + b"\r\n\r\n")
                await writer.drain()
                answer = await reader.read(200)
                writer.close()
                assert answer.split(b" ")[1] in (b"400", b"431"), answer
        refused = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert len(refused) == 2, refused
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in refused)
        assert all("secret" not in r.getMessage() for r in refused), refused[0].getMessage()
        assert "LineTooLong" in refused[0].getMessage() or "Header" in refused[0].getMessage()
        assert await stack.metric("stitcher_requests_total", endpoint="unparsed") == 2
