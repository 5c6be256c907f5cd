"""Serving benchmark: the stitcher's hot paths against a bare aiohttp handler and nginx.

On loopback, the server under test pinned to one core and the load generator
(wrk, with a Lua script spreading requests over many session URLs) to another:

  (a) ``stitcher serve`` answering a cached cohort media playlist to many
      sessions (thousands of distinct signed tokens, one cohort: token check +
      cached render + response);
  (b) a bare aiohttp handler returning the same bytes (same event loop choice);
  (c) nginx serving the same bytes as a static file;
  (d) the stitcher answering ad-segment requests during a break (token check,
      progress record, beacon enqueue, 302), every request a session's first
      for that segment, with the beacons delivered by the same process.

Also the stitcher's resident memory idle and after 100,000 sessions have started
(``POST /v1/session``). Each load phase runs ``--seconds`` (10); the run stops by
itself. Installs Debian's ``wrk`` and ``nginx-light`` with apt-get when missing
(as root). The last line is ``serve_vs_bare=<a/b> serve_vs_nginx=<a/c>
adseg_vs_bare=<d/b>``. Targets: a/b >= 0.8, d/b >= 0.5; RSS growth < 50 MB.
A benchmark, not a test: nothing asserts on time.

Run: .venv/bin/python bench/serve.py [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANNEL = "bench"
SESSION_KEY = "bench-session-key"
PLAYLIST_SESSIONS = 5000
ADSEG_SESSIONS = 20000
MEMORY_SESSIONS = 100_000
ASSETS = Path.home() / ".cache" / "ssai-stitcher" / "bench-assets"

# wrk: each thread walks its own slice of a file of paths, round robin; done() prints
# one machine-readable line (latency in microseconds).
WRK_PATHS = r"""
local paths, n, i = {}, 0, 0
function init(args)
  -- Requests are formatted once here: request() costs a table lookup, so the load
  -- generator is not what limits the fastest server.
  for line in io.lines(args[1]) do n = n + 1; paths[n] = wrk.format("GET", line) end
end
function request()
  i = i % n + 1
  return paths[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# wrk: POST /v1/session until ``limit`` responses, then stop.
WRK_SESSIONS = r"""
local limit, seen, path = 0, 0, "/"
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
function init(args) path, limit = args[1], tonumber(args[2]) end
function request() return wrk.format(nil, path) end
function response(status, headers, body)
  seen = seen + 1
  if seen >= limit then wrk.thread:stop() end
end
-- (stop() ends this thread's requests, not the run: the caller runs short runs)
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  types {{ application/vnd.apple.mpegurl m3u8; }}
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  sendfile on;
  tcp_nopush on;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {tmp};
    location / {{ try_files /playlist.m3u8 =404; }}
  }}
}}
"""

BARE = """
import os, sys
from pathlib import Path
from aiohttp import web
body = Path(sys.argv[2]).read_bytes()
async def handler(request):
    return web.Response(body=body, content_type="application/vnd.apple.mpegurl")
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
loop_factory = None
if os.environ.get("STITCHER_EVENT_LOOP", "auto") != "asyncio":
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
if loop_factory is not None:
    import asyncio
    asyncio.set_event_loop(loop_factory())
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=None, handle_signals=True)
"""


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.name:<44} {self.rps:>10,.0f} req/s   p50 {self.p50_ms:6.2f} ms   "
                f"p99 {self.p99_ms:6.2f} ms{'   ' + self.errors if self.errors else ''}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_tools() -> tuple[str, str]:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light"))
               if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit(f"bench/serve.py needs {' and '.join(missing)} (apt-get install "
                     f"{' '.join(missing)}) and cannot install them here")
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    path = os.environ.get("PATH", "") + ":/usr/sbin"
    return shutil.which("wrk", path=path) or "wrk", shutil.which("nginx", path=path) or "nginx"


def _cores() -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("warning: fewer than 2 CPUs: server and load generator share a core", flush=True)
        return None, None
    return {cpus[0]}, {cpus[1]}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, wrk: str, nginx: str) -> None:
        self.args = args
        self.tmp = tmp
        self.wrk = wrk
        self.nginx = nginx
        self.server_core, self.load_core = _cores()
        self.procs: list[asyncio.subprocess.Process] = []

    # ------------------------------------------------------------------ processes
    async def spawn(self, *cmd: str, log: str, env: dict[str, str] | None = None
                    ) -> asyncio.subprocess.Process:
        core = self.server_core

        def pin() -> None:  # in the child, before exec: every thread it makes inherits it
            if core is not None:
                os.sched_setaffinity(0, core)

        out = (self.tmp / log).open("wb")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin, cwd=ROOT,
            env={**os.environ, **(env or {})})
        out.close()
        self.procs.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def wait_http(self, url: str, proc: asyncio.subprocess.Process, log: str,
                        timeout: float = 60) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    sys.exit(f"{url}: server exited:\n{(self.tmp / log).read_text()[-3000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url) as resp:
                        if resp.status < 500:
                            return
                if time.monotonic() > deadline:
                    sys.exit(f"{url} did not come up:\n{(self.tmp / log).read_text()[-3000:]}")
                await asyncio.sleep(0.1)

    async def load(self, name: str, port: int, paths: list[str], *,
                   seconds: float | None = None, profile: int | None = None) -> Result:
        """wrk on the load core, ``connections`` keep-alive connections, one thread;
        with ``--profile``, py-spy samples process ``profile`` meanwhile."""
        paths_file = self.tmp / f"paths-{port}.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        script = self.tmp / "paths.lua"
        script.write_text(WRK_PATHS)
        cmd = [self.wrk, "-t1", f"-c{self.args.connections}",
               f"-d{int(seconds or self.args.seconds)}s", "--timeout", "5s", "-s", str(script),
               f"http://127.0.0.1:{port}", "--", str(paths_file)]
        if not (profile and self.args.profile):
            return await self._wrk(name, cmd)
        out = Path(self.args.profile) / (re.sub(r"\W+", "_", name).strip("_") + ".txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(profile),
            "-d", str(int(seconds or self.args.seconds) - 1), "-r", "250", "-f", "raw",
            "-o", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = await self._wrk(name, cmd)
        await spy.wait()
        print(f"profile of {name}: {out}", flush=True)
        return result

    async def _wrk(self, name: str, cmd: list[str]) -> Result:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        m = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", text,
                      re.MULTILINE)
        if m is None:
            sys.exit(f"wrk failed for {name}:\n{text}")
        n, dur, p50, p99, *errs = (int(x) for x in m.groups())
        labels = ("connect", "read", "write", "status>=400", "timeout")
        errors = " ".join(f"{k}={v}" for k, v in zip(labels, errs) if v)
        return Result(name, n, dur / 1e6, p50 / 1e3, p99 / 1e3,
                      f"errors: {errors}" if errors else "")

    # ------------------------------------------------------------------ phases
    async def run(self) -> list[str]:
        import aiohttp
        from aiohttp import web

        from fixtures.adserver import AdServerConfig, FixtureAd
        from fixtures.adserver import create_app as create_adserver
        from fixtures.clock import SystemClock
        from fixtures.media import ensure_media
        from fixtures.origin import ORIGIN_STATE, OriginConfig, renditions_from_media, run_origin
        from stitcher.sessions import SessionSigner

        if self.load_core is not None:
            os.sched_setaffinity(0, self.load_core)  # this process, its upstreams, and wrk
        print(f"server core {sorted(self.server_core or [])}, load generator core "
              f"{sorted(self.load_core or [])}; {self.args.connections} connections, "
              f"{self.args.seconds} s per phase", flush=True)
        media = await asyncio.to_thread(ensure_media)
        lead = 20
        origin_cfg = OriginConfig(renditions=renditions_from_media(media), channel=CHANNEL,
                                  start_epoch=int(time.time()) // 2 * 2 - lead,
                                  window_segments=10, break_interval=None,
                                  break_duration=Fraction(30))
        origin_runner, origin_port = await run_origin(origin_cfg, SystemClock(),
                                                      host="127.0.0.1", port=0)
        origin = origin_runner.app[ORIGIN_STATE]
        ads = [FixtureAd(id=a.id, duration=a.duration, media_file=a.path.name,
                         title=f"Fixture {a.id}") for a in media.ads]
        ad_runner = web.AppRunner(create_adserver(AdServerConfig(
            ads=ads, creatives_dir=media.ads[0].path.parent)), access_log=None)
        await ad_runner.setup()
        await web.TCPSite(ad_runner, "127.0.0.1", 0).start()
        ad_port = ad_runner.addresses[0][1]
        try:
            return await self._phases(origin, origin_port, ad_port, media, SessionSigner,
                                      aiohttp)
        finally:
            for p in self.procs:
                await self.stop(p)
            await ad_runner.cleanup()
            await origin_runner.cleanup()

    async def _phases(self, origin: Any, origin_port: int, ad_port: int, media: Any,
                      signer_cls: Any, aiohttp: Any) -> list[str]:
        import yaml

        port = _free_port()
        config = {
            "host": "127.0.0.1", "port": port, "data_dir": str(ASSETS),
            # Live state per run: the fixture origin starts a new timeline every time.
            "state_dir": str(self.tmp / "state"),
            "session_keys": {"k1": SESSION_KEY},
            "channels": [{
                "id": CHANNEL,
                "origin_url": f"http://127.0.0.1:{origin_port}/live/{CHANNEL}/master.m3u8",
                "ad_server_url": f"http://127.0.0.1:{ad_port}/vast?duration={{duration}}"
                                 f"&cb=[CACHEBUSTING]",
                "allow_private_ad_hosts": True, "slate": str(media.slate)}],
        }
        (self.tmp / "stitcher.yaml").write_text(yaml.safe_dump(config))
        await self._warm_up(config)

        stitcher = await self.spawn(sys.executable, "-m", "stitcher.cli", "serve", "--config",
                                    str(self.tmp / "stitcher.yaml"), log="stitcher.log")
        base = f"http://127.0.0.1:{port}"
        await self.wait_http(f"{base}/healthz", stitcher, "stitcher.log")
        signer = signer_cls({"k1": SESSION_KEY})
        expires = int(time.time()) + 6 * 3600

        def session_paths(count: int) -> list[str]:
            return [f"/v1/session/{signer.issue(CHANNEL, 'default', expires)[1]}/{CHANNEL}"
                    for _ in range(count)]

        sessions = session_paths(PLAYLIST_SESSIONS)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}{sessions[0]}/media/v0.m3u8") as resp:
                assert resp.status == 200, await resp.text()
            # Ready: the ladder probed and the slate loaded (what a break needs).
            deadline = time.monotonic() + 60
            while True:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        break
                if time.monotonic() > deadline:
                    sys.exit("stitcher not ready after 60 s")
                await asyncio.sleep(0.2)
            async with http.get(f"{base}{sessions[0]}/media/v0.m3u8",
                                headers={"Accept-Encoding": "identity"}) as resp:
                body = await resp.read()
        lines: list[str] = []

        def report(text: str) -> None:
            print(text, flush=True)
            lines.append(text)

        # Memory: idle, then after 100,000 session starts.
        await asyncio.sleep(1)
        idle = _rss_mb(stitcher.pid)
        script = self.tmp / "sessions.lua"
        script.write_text(WRK_SESSIONS)
        total, t0 = 0, time.monotonic()
        while total < self.args.sessions:  # short wrk runs until enough sessions started
            part = await self._wrk("POST /v1/session", [
                self.wrk, "-t1", f"-c{self.args.connections}", "-d5s", "--timeout", "5s",
                "-s", str(script), base, "--", f"/v1/session/{CHANNEL}",
                str(self.args.sessions - total)])
            if part.errors or part.requests == 0:
                sys.exit(f"session starts failed: {part.line()}")
            total += part.requests
        started = Result("POST /v1/session (wall clock)", total, time.monotonic() - t0,
                         part.p50_ms, part.p99_ms, "")
        await asyncio.sleep(1)
        after = _rss_mb(stitcher.pid)
        report(started.line())
        report(f"stitcher RSS: idle {idle:.1f} MB, after {started.requests:,} sessions started "
               f"{after:.1f} MB (+{after - idle:.1f} MB; target < 50 MB)")

        # (b) bare aiohttp, same bytes.
        (self.tmp / "playlist.m3u8").write_bytes(body)
        bare_port = _free_port()
        (self.tmp / "bare.py").write_text(BARE)
        bare = await self.spawn(sys.executable, str(self.tmp / "bare.py"), str(bare_port),
                                str(self.tmp / "playlist.m3u8"), log="bare.log")
        await self.wait_http(f"http://127.0.0.1:{bare_port}/", bare, "bare.log")
        media_paths = [f"{s}/media/v0.m3u8" for s in sessions]
        b = await self.load("(b) bare aiohttp, same bytes", bare_port, media_paths)
        await self.stop(bare)

        # (c) nginx, static file.
        nginx_port = _free_port()
        (self.tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=self.tmp, port=nginx_port))
        ngx = await self.spawn(self.nginx, "-c", str(self.tmp / "nginx.conf"), "-p",
                               str(self.tmp), log="nginx.log")
        await self.wait_http(f"http://127.0.0.1:{nginx_port}/", ngx, "nginx.log")
        c = await self.load("(c) nginx, static file", nginx_port, media_paths)
        await self.stop(ngx)

        # (a) the stitcher: cached cohort playlist, thousands of sessions.
        a = await self.load(f"(a) stitcher media playlist, {len(sessions)} sessions", port,
                            media_paths, profile=stitcher.pid)

        # (d) ad segments during a break: a break 2 segments ahead of the live edge.
        edge = origin.live_edge_msn()
        origin.insert_break(edge + 2, 30)
        ad_uris = await self._ad_uris(base, sessions[0], aiohttp)
        if not ad_uris:
            for r in (a, b, c):
                report(r.line())
            report(f"serve_vs_bare={a.rps / b.rps:.2f} serve_vs_nginx={a.rps / c.rps:.2f} "
                   f"adseg_vs_bare=n/a")
            return lines
        ad_sessions = session_paths(ADSEG_SESSIONS)
        # Every session asks segment 0 of the ad, then 1, then 2 ...: as players do, and
        # each request is that session's first for its segment (progress and beacons).
        ad_paths = [f"{s}/media/{u}" for u in ad_uris for s in ad_sessions]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}{ad_paths[0]}", allow_redirects=False) as resp:
                assert resp.status == 302, (resp.status, await resp.text())
        d = await self.load(f"(d) stitcher ad segment 302, {len(ad_sessions)} sessions",
                            port, ad_paths, profile=stitcher.pid)
        hits = len(await self._beacon_hits(ad_port, aiohttp))

        for r in (a, b, c, d):
            report(r.line())
        report(f"(d) ad segment URIs per session: {len(ad_uris)} ({', '.join(ad_uris)}); "
               f"beacons received by the ad server by the end of (d): {hits:,}")
        report(f"event loop: {'asyncio' if os.environ.get('STITCHER_EVENT_LOOP') == 'asyncio' else 'uvloop if installed'}; "
               f"playlist body {len(body)} bytes")
        report(f"serve_vs_bare={a.rps / b.rps:.2f} serve_vs_nginx={a.rps / c.rps:.2f} "
               f"adseg_vs_bare={d.rps / b.rps:.2f}")
        return lines

    async def _warm_up(self, config: dict[str, Any]) -> None:
        """Condition the ads and the slate into ASSETS (cached across runs) before the
        server starts, as ``stitcher demo`` does: the served process finds them on disk."""
        from aiohttp import web

        from stitcher.app import CHANNELS, create_app
        from stitcher.config import StitcherConfig
        from stitcher.store import MemoryStore

        t = time.monotonic()
        app = create_app(StitcherConfig(**{**config, "port": 0}),
                         store=MemoryStore(self.tmp / "warmup-state"))
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            ready = await app[CHANNELS][CHANNEL].warm_up()
        finally:
            await runner.cleanup()
        print(f"warm-up: {ready} creatives conditioned or cached ({time.monotonic() - t:.0f} s)",
              flush=True)

    async def _ad_uris(self, base: str, session: str, aiohttp: Any) -> list[str]:
        """The ad segment URIs of the break, once three are published (~6 s)."""
        deadline = time.monotonic() + 40
        found: list[str] = []
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(f"{base}{session}/media/v0.m3u8") as resp:
                    text = await resp.text()
                found = [ln for ln in text.splitlines() if ln.startswith("ad/")]
                if len(found) >= 3:
                    return found[:3]
                await asyncio.sleep(0.5)
        log = (self.tmp / "stitcher.log").read_text(errors="replace")[-4000:]
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            metrics = [ln for ln in (await resp.text()).splitlines()
                       if ln.startswith(("stitcher_ad", "stitcher_marker", "stitcher_cond"))]
        log += "\n".join(metrics)
        print(f"(d) skipped: no ads in the break (ad URIs seen: {found}); last playlist:\n"
              f"{text}\nstitcher log:\n{log}", flush=True)
        return []

    async def _beacon_hits(self, ad_port: int, aiohttp: Any) -> list[Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ad_port}/hits") as resp:
                data = await resp.json()
        return list(data.get("hits", data) if isinstance(data, dict) else data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10, help="per load phase")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the stitcher with py-spy during (a) and (d) (raw stacks)")
    parser.add_argument("--sessions", type=int, default=MEMORY_SESSIONS,
                        help="sessions started for the memory measurement")
    args = parser.parse_args()
    wrk, nginx = _ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's worker may read the file as another user
        bench = Bench(args, Path(tmp), wrk, nginx)
        asyncio.run(bench.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
