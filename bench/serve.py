"""Serving benchmark: the stitcher's hot paths against a bare aiohttp handler and nginx.

On loopback, the server under test pinned to one core and the load generator
(wrk, with a Lua script spreading requests over many session URLs) to another:

  (a) ``stitcher serve`` answering a cached cohort media playlist to many
      sessions (thousands of distinct signed tokens, one cohort: token check +
      cached render + response), reloading: each session requested once,
      unmeasured, before the rounds (on every server alike), as players have
      when a break comes;
  (b) a bare aiohttp handler returning the same bytes (same event loop choice);
  (c) nginx serving the same bytes as a static file;
  (d) the stitcher answering ad-segment requests during a break (token check,
      progress record, beacon enqueue, 302), every request a session's first
      for that segment, with tokens never seen before (the worst case: a
      player has reloaded its playlist with them), and the beacons delivered
      by the same process meanwhile (their CPU counts in (d)'s).

(a), (b) and the stitcher's event loop are the same (uvloop when installed, as
``stitcher serve`` picks it; ``STITCHER_EVENT_LOOP=asyncio`` for both). Each load
phase runs ``--seconds`` (10) in total, split into ``--rounds`` (5) slices run
round robin with the phases it is compared with ((b), (c), (a); then (b), (d)),
so the other work on a shared host weighs on each alike; each line also gives
the server's CPU time per request, which contention disturbs less than req/s.
Also the stitcher's resident memory idle and after 100,000 sessions have started
(``POST /v1/session``). The run stops by itself. Installs Debian's ``wrk`` and ``nginx-light`` with apt-get when missing
(as root). The last line is ``serve_vs_bare=<a/b> serve_vs_nginx=<a/c>
adseg_vs_bare=<d/b>``. Targets: a/b >= 0.8, d/b >= 0.5; RSS growth < 50 MB.
A benchmark, not a test: nothing asserts on time.

Run: .venv/bin/python bench/serve.py [--seconds 10] [--rounds 5] [--connections 64]
     [--profile DIR]
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
ADSEG_SESSIONS = 40000
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
# The loop ``stitcher serve`` runs on (stitcher.cli._run): uvloop when installed unless
# STITCHER_EVENT_LOOP=asyncio. run_app makes its own loop from the default policy
# unless given one, so it is passed explicitly (setting a current loop is not enough).
loop = None
if os.environ.get("STITCHER_EVENT_LOOP", "auto") != "asyncio":
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        pass
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
            print=None, handle_signals=True, loop=loop)
"""


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: str
    #: CPU seconds the server process used meanwhile (None: not measured).
    cpu_s: float | None = None
    slices: int = 1
    #: Of ``cpu_s``, the seconds spent in the kernel (sockets, mostly).
    sys_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        cpu = (f"   CPU {1e6 * self.cpu_s / self.requests:5.0f} us/req"
               f" ({1e6 * self.sys_s / self.requests:.0f} in the kernel)"
               if self.cpu_s is not None and self.requests else "")
        return (f"{self.name:<44} {self.rps:>10,.0f} req/s   p50 {self.p50_ms:6.2f} ms   "
                f"p99 {self.p99_ms:6.2f} ms{cpu}{'   ' + self.errors if self.errors else ''}")

    def plus(self, other: Result) -> Result:
        """Two slices of one phase as one: counts and times add; p50 is the
        request-weighted mean of the slices' p50s, p99 the worst slice's."""
        n = self.requests + other.requests
        p50 = (self.p50_ms * self.requests + other.p50_ms * other.requests) / n if n else 0.0
        cpu = (None if self.cpu_s is None or other.cpu_s is None
               else self.cpu_s + other.cpu_s)
        errors = " ".join(e for e in (self.errors, other.errors) if e)
        return Result(self.name, n, self.seconds + other.seconds, p50,
                      max(self.p99_ms, other.p99_ms), errors, cpu, self.slices + other.slices,
                      self.sys_s + other.sys_s)


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


def _loop_name() -> str:
    """The loop stitcher serve and the bare server both run on (same rule)."""
    if os.environ.get("STITCHER_EVENT_LOOP", "auto") == "asyncio":
        return "asyncio"
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def _cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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

    async def load(self, name: str, port: int, paths: list[str], *, seconds: float,
                   pid: int, profile: bool = False, unique: bool = False) -> Result:
        """wrk on the load core, ``connections`` keep-alive connections, one thread, and
        the CPU time server process ``pid`` used meanwhile; with ``profile``
        (``--profile``), py-spy samples that process too (raw stacks)."""
        paths_file = self.tmp / f"paths-{port}.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        script = self.tmp / "paths.lua"
        script.write_text(WRK_PATHS)
        cmd = [self.wrk, "-t1", f"-c{self.args.connections}",
               f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script),
               f"http://127.0.0.1:{port}", "--", str(paths_file)]
        spy = out = None
        if profile and self.args.profile:
            out = Path(self.args.profile) / (re.sub(r"\W+", "_", name).strip("_") + ".txt")
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid),
                "--nonblocking", "-d", str(max(1, round(seconds) - 1)), "-r", "250",
                "-f", "raw", "-o", str(out), stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        user, kernel = _cpu_s(pid)
        result = await self._wrk(name, cmd)
        user2, kernel2 = _cpu_s(pid)
        result.cpu_s, result.sys_s = user2 - user + kernel2 - kernel, kernel2 - kernel
        if spy is not None:
            await spy.wait()
            print(f"profile of {name}: {out}", flush=True)
        if unique and result.requests > len(paths):  # (d): each a session's first
            result.errors += f" (paths repeated: {len(paths):,} for {result.requests:,})"
        return result

    async def once(self, port: int, paths: list[str]) -> None:
        """Every path requested once, unmeasured: the sessions of (a) have started
        playing (their tokens verified once, as a player's first reload does).
        ``--connections`` client connections share the walk. (It was a wrk run whose
        threads stopped at the end of the list, but wrk runs its whole ``-d`` however
        soon they stop: a minute per server of the bench's time, idle.)"""
        import aiohttp

        walk = iter(paths)
        failed = 0

        async def walker(http: Any) -> None:
            nonlocal failed
            for path in walk:
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    await resp.read()
                    failed += resp.status >= 400

        connector = aiohttp.TCPConnector(limit=self.args.connections)
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(walker(http) for _ in range(self.args.connections)))
        if failed:
            sys.exit(f"{failed} of {len(paths)} warm-up requests to port {port} failed")

    async def interleaved(self, phases: list[tuple[str, int, int, list[list[str]], bool]], *,
                          unique: bool = False) -> list[Result]:
        """Phases (name, port, pid, path chunks, profile) in ``--rounds`` rounds, one
        slice of each per round, round robin: load from the other work on the host
        then falls on every phase alike, not on whichever ran when it peaked. Round
        ``i`` of a phase walks chunk ``i`` of its paths (fresh paths for (d))."""
        rounds = self.args.rounds
        seconds = self.args.seconds / rounds
        totals: list[Result | None] = [None] * len(phases)
        for i in range(rounds):
            for k, (name, port, pid, chunks, profile) in enumerate(phases):
                r = await self.load(name, port, chunks[i % len(chunks)], seconds=seconds,
                                    pid=pid, profile=profile and i == 0,
                                    unique=unique and len(chunks) > 1)
                prev = totals[k]
                totals[k] = r if prev is None else prev.plus(r)
        return [t for t in totals if t is not None]

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

        # (b) bare aiohttp and (c) nginx, same bytes, up alongside the stitcher: the
        # phases run interleaved (``interleaved``), each on the server core alone.
        (self.tmp / "playlist.m3u8").write_bytes(body)
        bare_port = _free_port()
        (self.tmp / "bare.py").write_text(BARE)
        bare = await self.spawn(sys.executable, str(self.tmp / "bare.py"), str(bare_port),
                                str(self.tmp / "playlist.m3u8"), log="bare.log")
        await self.wait_http(f"http://127.0.0.1:{bare_port}/", bare, "bare.log")
        nginx_port = _free_port()
        (self.tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=self.tmp, port=nginx_port))
        ngx = await self.spawn(self.nginx, "-c", str(self.tmp / "nginx.conf"), "-p",
                               str(self.tmp), log="nginx.log")
        await self.wait_http(f"http://127.0.0.1:{nginx_port}/", ngx, "nginx.log")
        media_paths = [f"{s}/media/v0.m3u8" for s in sessions]
        bare_name = "(b) bare aiohttp, same bytes"
        # (a) the stitcher: cached cohort playlist, thousands of sessions, reloading:
        # each played once before (on every server alike), so a token is checked as
        # a reload's is (remembered), not as a session's very first request.
        for warm_port in (bare_port, nginx_port, port):
            await self.once(warm_port, media_paths)
        b1, c, a = await self.interleaved([
            (bare_name, bare_port, bare.pid, [media_paths], False),
            ("(c) nginx, static file", nginx_port, ngx.pid, [media_paths], False),
            (f"(a) stitcher media playlist, {len(sessions)} sessions", port, stitcher.pid,
             [media_paths], True)])
        await self.stop(ngx)

        # (d) ad segments during a break: a break 2 segments ahead of the live edge.
        edge = origin.live_edge_msn()
        origin.insert_break(edge + 2, 30)
        ad_uris = await self._ad_uris(base, sessions[0], aiohttp)
        if not ad_uris:
            for r in (a, b1, c):
                report(r.line())
            report(f"serve_vs_bare={a.rps / b1.rps:.2f} serve_vs_nginx={a.rps / c.rps:.2f} "
                   f"adseg_vs_bare=n/a")
            return lines
        ad_sessions = session_paths(ADSEG_SESSIONS)
        # Every session asks segment 0 of the ad, then 1, then 2 ...: as players do, and
        # each request is that session's first for its segment (progress and beacons):
        # round i walks the i-th part of that sequence.
        ad_paths = [f"{s}/media/{u}" for u in ad_uris for s in ad_sessions]
        async with (aiohttp.ClientSession() as http,
                    http.get(f"{base}{ad_paths[0]}", allow_redirects=False) as resp):
            assert resp.status == 302, (resp.status, await resp.text())
        ad_paths = ad_paths[1:]
        part = -(-len(ad_paths) // self.args.rounds)
        b2, d = await self.interleaved([
            (bare_name, bare_port, bare.pid, [media_paths], False),
            (f"(d) stitcher ad segment 302, {len(ad_sessions)} sessions", port, stitcher.pid,
             [ad_paths[i:i + part] for i in range(0, len(ad_paths), part)], True)],
            unique=True)
        await self.stop(bare)
        b = b1.plus(b2)
        hits = len(await self._beacon_hits(ad_port, aiohttp))

        for r in (a, b, c, d):
            report(r.line())
        report(f"(d) ad segment URIs per session: {len(ad_uris)} ({', '.join(ad_uris)}); "
               f"beacons received by the ad server by the end of (d): {hits:,}")
        report(f"event loop of (a), (b) and (d): {_loop_name()}; "
               f"playlist body {len(body)} bytes; {self.args.rounds} interleaved rounds "
               f"of {self.args.seconds / self.args.rounds:.1f} s per phase (p50: mean of "
               f"the rounds, p99: the worst); (a) and (c) against the (b) rounds run with "
               f"them ({b1.rps:,.0f} req/s), (d) against those run with it ({b2.rps:,.0f})")
        report(f"serve_vs_bare={a.rps / b1.rps:.2f} serve_vs_nginx={a.rps / c.rps:.2f} "
               f"adseg_vs_bare={d.rps / b2.rps:.2f}")
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
        async with (aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{ad_port}/hits") as resp):
            data = await resp.json()
        return list(data.get("hits", data) if isinstance(data, dict) else data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10, help="per load phase")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved slices each phase's seconds are split into")
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
