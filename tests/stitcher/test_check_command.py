"""``stitcher check`` against a correct and a deliberately faulty server: it finds
exactly the injected faults (and nothing on the correct one)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from manifests.checker import Rule
from stitcher.check import run_check

EPOCH = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
MASTER = ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nv0.m3u8\n"
          "#EXT-X-STREAM-INF:BANDWIDTH=2500000,RESOLUTION=1280x720\nv1.m3u8\n")


def media(first: int, *, disc_at: int | None = 20, dsn: int | None = None,
          uri_of: dict[int, str] | None = None, extra_disc: int | None = None) -> str:
    """A 5-segment live window; a discontinuity before MSN ``disc_at``."""
    if dsn is None:
        dsn = 1 if disc_at is not None and first > disc_at else 0
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}",
             f"#EXT-X-DISCONTINUITY-SEQUENCE:{dsn}"]
    for msn in range(first, first + 5):
        if msn in (disc_at, extra_disc):
            lines.append("#EXT-X-DISCONTINUITY")
        pdt = EPOCH + timedelta(seconds=2 * msn)
        lines.append("#EXT-X-PROGRAM-DATE-TIME:" + pdt.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        lines += ["#EXTINF:2.000,", (uri_of or {}).get(msn, f"s{msn}.ts")]
    return "\n".join(lines) + "\n"


FAULTS = {  # reload -> (rendition, kwargs for media() or a first MSN override)
    3: ("v0", {"first_delta": -2}),                      # media sequence regression
}
#: From reload 5 on, v0 names MSN 7 differently: a published segment changed.
CHANGED_FROM = 5
#: From reload 21 on (the discontinuity before MSN 20 has left), v0 never bumps its DSN.
NO_BUMP_FROM = 21
#: v1 never has v0's discontinuity before MSN 20: the renditions disagree there.
V1_FAULT = {"disc_at": None}


def make_app(faulty: bool) -> web.Application:
    counts: dict[str, int] = {}

    async def master(request: web.Request) -> web.Response:
        return web.Response(text=MASTER, content_type="application/vnd.apple.mpegurl")

    async def playlist(request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        k = counts[rid] = counts.get(rid, -1) + 1
        first, kwargs = k, dict(V1_FAULT) if faulty and rid == "v1" else {}
        if faulty and rid == "v0" and k >= CHANGED_FROM:
            kwargs["uri_of"] = {7: "changed.ts"}
        if faulty and rid == "v0" and k >= NO_BUMP_FROM:
            kwargs["dsn"] = 0
        if faulty and k in FAULTS and FAULTS[k][0] == rid:
            kwargs.update(FAULTS[k][1])
            first += kwargs.pop("first_delta", 0)
        return web.Response(text=media(first, **kwargs),
                            content_type="application/vnd.apple.mpegurl")

    async def start(request: web.Request) -> web.Response:
        # An implicit session start, as the stitcher's /v1/master/{channel}.m3u8:
        # the playlists live under the redirect's path, not the first URL's.
        raise web.HTTPFound("/session/s1/master.m3u8")

    app = web.Application()
    app.router.add_get("/start.m3u8", start)
    app.router.add_get("/session/s1/master.m3u8", master)
    app.router.add_get("/session/s1/{rid}.m3u8", playlist)
    return app


async def _run(faulty: bool, path: str = "/session/s1/master.m3u8") -> object:
    server = TestServer(make_app(faulty))
    await server.start_server()
    try:
        t = [0.0]

        def clock() -> float:
            t[0] += 1.0  # two renditions per reload: 2 s per reload
            return t[0]

        return await run_check(str(server.make_url(path)), duration=56,
                               interval=0, clock=clock)
    finally:
        await server.close()


async def test_check_is_clean_on_a_correct_server() -> None:
    report = await _run(faulty=False)
    assert report.ok, report.to_text()  # type: ignore[attr-defined]
    assert report.reloads >= 25  # type: ignore[attr-defined]


async def test_check_follows_a_redirect_as_players_do() -> None:
    """Variant URIs resolve against the URL after the redirect (the stitcher's
    implicit session start), not the URL asked for: else every fetch is a 404."""
    report = await _run(faulty=False, path="/start.m3u8")
    assert report.ok, report.to_text()  # type: ignore[attr-defined]
    paths = {r: u.split("/", 3)[3] for r, u in report.renditions.items()}  # type: ignore[attr-defined]
    assert paths == {"v0": "session/s1/v0.m3u8", "v1": "session/s1/v1.m3u8"}
    assert report.to_text().endswith("OK\n")  # type: ignore[attr-defined]


async def test_check_finds_exactly_the_injected_faults() -> None:
    report = await _run(faulty=True)
    found = [(v.rule, v.reload, v.rendition) for v in report.violations]  # type: ignore[attr-defined]
    assert (Rule.MEDIA_SEQUENCE_DECREASED, 3, "v0") in found
    assert (Rule.SEGMENT_CHANGED, 5, "v0") in found
    assert (Rule.DISCONTINUITY_SEQUENCE, 21, "v0") in found
    assert (Rule.RENDITIONS_DISAGREE, 16, "v1") in found
    assert found == [(Rule.MEDIA_SEQUENCE_DECREASED, 3, "v0"), (Rule.SEGMENT_CHANGED, 5, "v0"),
                     (Rule.RENDITIONS_DISAGREE, 16, "v1"),
                     (Rule.DISCONTINUITY_SEQUENCE, 21, "v0")], found
    data = report.to_json()  # type: ignore[attr-defined]
    assert data["ok"] is False and json.dumps(data)
    assert report.to_text().endswith("FAILED: 4 violation(s), 0 failed fetch(es)\n")  # type: ignore[attr-defined]


async def test_cli_exit_status_and_json() -> None:
    import asyncio
    import sys

    for faulty, status in ((False, 0), (True, 1)):
        server = TestServer(make_app(faulty))
        await server.start_server()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "stitcher.cli", "check",
                str(server.make_url("/start.m3u8")), "--duration", "1.5", "--interval", "0.01",
                "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            await server.close()
        assert proc.returncode == status, (out, err)
        data = json.loads(out)
        assert data["ok"] is (status == 0)
        assert set(data["renditions"]) == {"v0", "v1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stitcher.cli", "check", "http://127.0.0.1:9/none.m3u8",
        "--duration", "1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    # Found by a newcomer: --interval 0 polled in a busy loop, --duration -5 exited 0.
    for bad in (("--interval", "0"), ("--duration", "-5"), ("--duration", "inf"),
                ("--interval", "soon")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stitcher.cli", "check", "http://127.0.0.1:9/none.m3u8",
            *bad, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2 and bad[0].encode() in err, (bad, err)


async def test_what_is_not_a_url_and_repeated_fetch_errors_are_said_once() -> None:
    """Found by a newcomer: ``check not-a-url`` said 'not-a-url: not-a-url', and a
    rendition failing for a minute printed one identical line per reload."""
    from stitcher.check import CheckReport, StreamUnreadable, run_check

    for bad in ("not-a-url", "ftp://host/x.m3u8", "http:///x.m3u8"):
        with pytest.raises(StreamUnreadable, match="not an http:// or https:// URL"):
            await run_check(bad, 1)
    report = CheckReport("http://h/m.m3u8", {"v0": "a", "v1": "b"})
    report.fetch_errors = [{"rendition": "v1", "reload": r, "error": "503, message='down'"}
                           for r in range(3, 124)]
    report.fetch_errors.insert(1, {"rendition": "v0", "reload": 4, "error": "timeout"})
    lines = report.to_text().splitlines()
    assert [line for line in lines if line.startswith("FETCH")] == [
        "FETCH v1 reloads 3-123 (121 times): 503, message='down'",
        "FETCH v0 reload 4: timeout"]
