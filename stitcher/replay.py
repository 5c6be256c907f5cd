"""``stitcher replay PATH``: a recorded fixture stream through the real service.

A fixture stream (``fixtures/streams/<name>/``, made by
:mod:`fixtures.record_stream`; its layout is documented there) is replayed on a
virtual clock, fast and without sleeping:

* an in-process fake origin serves, at every virtual instant, the snapshot
  recorded for it (``NNN/<rendition>.m3u8``, the last reload at or before now);
* an in-process fake ad server answers the recorded VAST for the break (by its
  start PDT and cohort, else the default document; the warm-up request gets
  every ad of every document), its creative URLs pointing at itself and
  serving a few bytes that name the creative's duration;
* a conditioner stub (:class:`StubConditioner`) returns conditioned creatives at
  once (durations from the VAST, segment files of a few bytes under a temp dir),
  and the channel gets an explicit ``ladder`` so nothing is probed: no ffmpeg
  and no ffprobe run;
* the stitcher itself is the real app (``stitcher.app.create_app``), its
  embedded store in a temp dir, its clock the virtual one.

For each reload the clock is set to the recorded time and every stitched
rendition of one session per cohort (``stream.json`` ``sessions``) is requested
over HTTP. Every stitched snapshot is written under ``--out`` (default
``<stream>/stitched/``) and checked with the conformance checker
(:mod:`manifests.checker`, with the origin's snapshots for attribution), then
compared with the goldens (``<stream>/golden/NNN/<rendition>.m3u8``; with
several cohorts ``golden/NNN/<cohort>/<rendition>.m3u8``). ``--update`` rewrites
the goldens instead. When ``stream.json`` carries ``expect`` (break positions
and durations read by hand off the recorded cue tags), the stitched breaks are
asserted against it too::

    "expect": {"breaks": [{"pdt": "2027-01-15T08:00:20.000Z", "msn": 110,
                           "duration": "30"}]}

``msn`` is the first stitched media sequence number on the video grid (other
grids are checked on PDT and duration only); ``duration`` is the EXTINF sum of
the stitched run, which must equal what the cues say the break replaces.

Exit status: 0 clean; 1 a violation the stitcher introduced, a golden
difference, an expectation not met or a failed request; 2 a stream that cannot
be read. Origin-inherited violations are reported but do not fail the replay.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import difflib
import json
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree as ET

import aiohttp
from aiohttp import web

from fixtures.clock import ManualClock
from manifests.checker import Snapshot, Violation, check, format_text, summary
from manifests.multivariant import parse_multivariant
from manifests.playlist import parse_media
from stitcher.conditioning import (
    ConditionedCreative,
    ConditionedRendition,
    ConditionedSegment,
    RenditionSpec,
)

log = logging.getLogger(__name__)

#: Fixed names the loopback addresses of the fake upstreams are rewritten to, so
#: stitched playlists (content URIs are made absolute) are the same on every run.
ORIGIN_HOST = "http://origin.replay.invalid"
ADS_HOST = "http://ads.replay.invalid"
ADS_PLACEHOLDER = "{{ADS}}"
CHANNEL = "live1"
STALE_HEADER = "X-Stitcher-Stale"


class StreamUnreadable(Exception):
    """The fixture stream's files are missing or malformed."""


# --------------------------------------------------------------------- stream files


@dataclass
class Stream:
    folder: Path
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.folder.name)

    @property
    def reloads(self) -> list[dict[str, Any]]:
        return list(self.spec["reloads"])

    @property
    def sessions(self) -> list[dict[str, Any]]:
        return list(self.spec.get("sessions") or [{"cohort": "default", "params": {}}])

    @classmethod
    def load(cls, folder: Path) -> Stream:
        path = folder / "stream.json"
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StreamUnreadable(f"{path}: {exc}") from exc
        for key in ("reloads", "channel"):
            if key not in spec:
                raise StreamUnreadable(f"{path}: no {key!r}")
        if not (folder / "master.m3u8").exists():
            raise StreamUnreadable(f"{folder}: no master.m3u8")
        for r in spec["reloads"]:
            if not (folder / r["dir"]).is_dir():
                raise StreamUnreadable(f"{folder}: reload folder {r['dir']} missing")
        stream = cls(folder, spec)
        stream.validate_channel()
        return stream

    def validate_channel(self) -> None:
        """A bad ``channel`` is an unreadable stream (exit 2, one line naming the
        field), not a traceback from the middle of the replay."""
        from pydantic import ValidationError

        from stitcher.config import ChannelConfig

        try:
            ChannelConfig.model_validate(_channel_config(
                self, "http://127.0.0.1:1", "http://127.0.0.1:2", Path("slate.mp4")))
        except ValidationError as exc:
            fields = "; ".join(f"channel.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                               for e in exc.errors())
            raise StreamUnreadable(f"{self.folder / 'stream.json'}: {fields}") from exc


def find_streams(path: Path) -> list[Path]:
    """``path`` itself when it holds a stream.json, else its subfolders that do."""
    if not path.exists():
        raise StreamUnreadable(f"{path}: no such file or folder")
    if (path / "stream.json").exists():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "stream.json").exists()) if (
        path.is_dir()) else []
    if not found:
        raise StreamUnreadable(f"{path}: no stream.json here nor in its subfolders")
    return found


# --------------------------------------------------------------------- fake upstreams


class FakeOrigin:
    """Serves the recorded snapshot of the current virtual instant."""

    def __init__(self, stream: Stream, clock: ManualClock) -> None:
        self.stream = stream
        self.clock = clock
        self.times = [float(r["time"]) for r in stream.reloads]
        self.dirs = [str(r["dir"]) for r in stream.reloads]
        self.requests = 0

    def current(self) -> str | None:
        i = bisect.bisect_right(self.times, self.clock.now()) - 1
        return self.dirs[i] if i >= 0 else None

    def text(self, name: str, reload_dir: str | None = None) -> str | None:
        folder = self.stream.folder
        if name == "master.m3u8":
            return (folder / name).read_text()
        current = reload_dir or self.current()
        path = folder / current / name if current else None
        return path.read_text() if path is not None and path.is_file() else None

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests += 1
            body = self.text(request.match_info["file"])
            if body is None:
                raise web.HTTPNotFound(text="not recorded\n")
            return web.Response(text=body, content_type="application/vnd.apple.mpegurl",
                                headers={"Cache-Control": "no-cache"})

        app = web.Application()
        app.router.add_get(f"/live/{CHANNEL}/{{file}}", handle)
        return app


def _break_pdt(break_id: str) -> str | None:
    """The start PDT of a break id (``<event>-<ms>`` or ``b<ms>``), as the cues write it."""
    m = re.search(r"(?:^b|-)(\d{10,})$", break_id)
    if not m:
        return None
    ms = int(m.group(1))
    dt = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class FakeAdServer:
    """Answers the recorded VAST documents; serves creatives as a few bytes."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        ads = stream.spec.get("ads") or {}
        self.default = ads.get("default")
        self.breaks: dict[str, Any] = ads.get("breaks") or {}
        self.rules: list[dict[str, Any]] = list(stream.spec["channel"].get("cohorts") or [])
        self.documents = sorted({p.relative_to(stream.folder).as_posix()
                                 for p in (stream.folder / "vast").glob("*.xml")})
        self.base = ""
        self.vast_requests: list[dict[str, str]] = []
        self.beacons = 0
        self.durations = self._durations()

    def _durations(self) -> dict[str, str]:
        """Creative file name -> its Linear duration (seconds), from every document."""
        out: dict[str, str] = {}
        for doc in self.documents:
            root = ET.fromstring((self.stream.folder / doc).read_text())
            for linear in root.iter():
                if not linear.tag.endswith("Linear"):
                    continue
                text = next((e.text for e in linear.iter() if e.tag.endswith("Duration")), None)
                if not text:
                    continue
                h, m, s = text.strip().split(":")
                seconds = Fraction(int(h) * 3600 + int(m) * 60) + Fraction(s)
                for e in linear.iter():
                    if e.tag.endswith(("MediaFile", "Mezzanine")) and e.text:
                        out[e.text.strip().rsplit("/", 1)[-1]] = str(seconds)
        return out

    def document(self, break_id: str, cohort: str) -> str | None:
        if break_id == "prefetch":
            return None  # every ad of every document
        chosen = self.breaks.get(_break_pdt(break_id) or "", self.default)
        if isinstance(chosen, dict):
            chosen = chosen.get(cohort, chosen.get("default", self.default))
        return chosen

    def vast(self, break_id: str, cohort: str) -> str:
        doc = self.document(break_id, cohort)
        if doc is not None:
            text = (self.stream.folder / doc).read_text()
        else:
            merged = ET.Element("VAST", {"version": "4.2"})
            seen: set[str] = set()
            for name in self.documents:
                for ad in ET.fromstring((self.stream.folder / name).read_text()):
                    key = ET.tostring(ad, "unicode")
                    if key not in seen:
                        seen.add(key)
                        merged.append(ad)
            text = ET.tostring(merged, "unicode")
        return text.replace(ADS_PLACEHOLDER, self.base)

    def app(self) -> web.Application:
        async def vast(request: web.Request) -> web.Response:
            q = dict(request.query)
            q["cohort"] = _cohort_of_request(q, self.rules)  # from the cohort attributes
            self.vast_requests.append(q)
            body = self.vast(q.get("break", ""), q["cohort"])
            return web.Response(text=body, content_type="application/xml")

        async def creative(request: web.Request) -> web.Response:
            name = request.match_info["file"]
            duration = self.durations.get(name)
            if duration is None:
                raise web.HTTPNotFound()
            return web.Response(body=_mezzanine(name, duration), content_type="video/mp4")

        async def beacon(request: web.Request) -> web.Response:
            self.beacons += 1
            return web.Response(status=204)

        app = web.Application()
        app.router.add_get("/vast", vast)
        app.router.add_get("/creatives/{file}", creative)
        app.router.add_get("/beacon/{tail:.*}", beacon)
        return app


def _mezzanine(name: str, duration: str) -> bytes:
    return f"replay-mezzanine name={name} duration={duration}\n".encode()


_DURATION_IN_FILE = re.compile(rb"duration=([0-9/.]+)")


class StubConditioner:
    """A :class:`~stitcher.conditioning.Conditioner` that runs no ffmpeg.

    The "mezzanine" it is given names its duration (:func:`_mezzanine`, or the
    slate file the replay writes); the result has one segment file of a few bytes
    per slot of ``spec.segment_duration``, the last one padded, as the real
    conditioner lays it out (a tail within 0.1 s is trimmed).
    """

    trim_tolerance = Fraction(1, 10)

    def __init__(self) -> None:
        self._done: dict[str, ConditionedCreative] = {}
        self.runs = 0

    async def condition(self, creative: str | Path, specs: list[RenditionSpec],
                        out_dir: str | Path, *, key: str,
                        pad_source: str | Path | None = None,
                        declared: object = None, channel: str = "") -> ConditionedCreative:
        found = self.cached(out_dir, key, specs)
        if found is not None:
            return found
        m = _DURATION_IN_FILE.search(Path(creative).read_bytes()[:200])
        if m is None:
            raise ValueError(f"{creative}: not a replay mezzanine")
        duration = Fraction(m.group(1).decode())
        self.runs += 1
        renditions: dict[str, ConditionedRendition] = {}
        old = self._done.get(key)
        if old is not None:
            renditions.update(old.renditions)
        for spec in specs:
            step = spec.exact_segment_duration
            count = max(1, math.ceil((duration - self.trim_tolerance) / step))
            folder = Path(out_dir) / key / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            segments = []
            fmp4 = spec.container == "fmp4"  # ads follow the content's container (B19)
            init = folder / "init.mp4" if fmp4 else None
            if init is not None:
                init.write_bytes(b"\x00\x00\x00\x08ftyp")
            for i in range(count):
                path = folder / f"seg_{i:05d}.{'m4s' if fmp4 else 'ts'}"
                path.write_bytes(b"\x00\x00\x00\x08moof" if fmp4
                                 else b"\x47\x1f\xff\x10" + b"\xff" * 184)
                segments.append(ConditionedSegment(path, step))
            renditions[spec.name] = ConditionedRendition(spec, tuple(segments), duration, init)
        cc = self._done[key] = ConditionedCreative(key, duration, renditions)
        return cc

    def cached(self, out_dir: str | Path, key: str,
               specs: list[RenditionSpec]) -> ConditionedCreative | None:
        cc = self._done.get(key)
        if cc is None or any(s.name not in cc.renditions for s in specs):
            return None
        return cc


# --------------------------------------------------------------------- results


@dataclass
class Run:
    """A stitched run of segments (what replaced one break) in one rendition."""

    pdt: str | None
    msn: int
    duration: Fraction
    segments: int

    def to_json(self) -> dict[str, Any]:
        return {"pdt": self.pdt, "msn": self.msn, "duration": str(self.duration),
                "segments": self.segments}


@dataclass
class StreamResult:
    name: str
    folder: Path
    out: Path
    reloads: int = 0
    sessions: list[str] = field(default_factory=list)
    renditions: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    inherited: list[Violation] = field(default_factory=list)
    diffs: list[tuple[str, list[str]]] = field(default_factory=list)
    expectations: list[str] = field(default_factory=list)
    expectations_checked: int = 0
    errors: list[str] = field(default_factory=list)
    breaks: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    updated: int = 0
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.violations or self.diffs or self.expectations or self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "ok": self.ok, "path": str(self.folder), "out": str(self.out),
            "reloads": self.reloads, "sessions": self.sessions, "renditions": self.renditions,
            "seconds": round(self.seconds, 3), "goldens_updated": self.updated,
            "summary": summary(self.violations + self.inherited),
            "violations": [v.to_json() for v in self.violations],
            "inherited": [v.to_json() for v in self.inherited],
            "golden_differences": [{"file": f, "diff": d} for f, d in self.diffs],
            "expectations_checked": self.expectations_checked,
            "expectation_failures": self.expectations,
            "errors": self.errors, "stats": self.stats,
            "breaks": {c: {r: [run.to_json() for run in runs] for r, runs in by_r.items()}
                       for c, by_r in self.breaks.items()},
        }

    def to_text(self, diff_lines: int = 60) -> str:
        status = "OK" if self.ok else "FAILED"
        runs = next(iter(next(iter(self.breaks.values()), {}).values()), [])
        head = (f"replay {self.name}: {status} - {self.reloads} reloads x "
                f"{len(self.renditions)} renditions x {len(self.sessions)} session(s), "
                f"{len(runs)} break(s) stitched, {len(self.violations)} stitcher "
                f"violation(s), {len(self.inherited)} inherited from the origin, "
                f"{len(self.diffs)} golden difference(s)"
                + (f", {self.updated} goldens written" if self.updated else "")
                + (f", expectations {'met' if not self.expectations else 'NOT met'} "
                   f"({self.expectations_checked} checked)" if self.expectations_checked
                   else "")
                + f" [{self.seconds:.2f} s]\n")
        out = [head]
        for e in self.errors:
            out.append(f"  ERROR {e}\n")
        if self.violations:
            out.append("  " + format_text(self.violations).replace("\n", "\n  ").rstrip()
                       + "\n")
        for e in self.expectations:
            out.append(f"  EXPECTATION {e}\n")
        budget = diff_lines
        for n, (name, diff) in enumerate(self.diffs):
            if budget <= 0:
                rest = [f for f, _ in self.diffs[n:]]
                out.append(f"  ... and {len(rest)} more file(s) differ: "
                           f"{', '.join(rest[:6])}{' ...' if len(rest) > 6 else ''}\n")
                break
            shown = diff[:budget]
            budget -= len(shown)
            out.append(f"  golden differs: {name}\n")
            out += [f"    {line.rstrip(chr(10))}\n" for line in shown]
            if len(shown) < len(diff):
                out.append(f"    ... ({len(diff) - len(shown)} more diff lines)\n")
        return "".join(out)


# --------------------------------------------------------------------- the replay


@dataclass
class _Session:
    cohort: str
    manifest_url: str
    renditions: dict[str, str]  # stitched rendition id -> absolute media playlist URL
    grids: dict[str, str]  # rendition id -> grid
    origin_names: dict[str, str]  # rendition id -> origin playlist file name
    snapshots: list[Snapshot] = field(default_factory=list)


_KIND_ORDER = {"video": 0, "audio": 1, "subtitles": 2}


def _normalise(text: str, hosts: dict[str, str]) -> str:
    for real, fixed in hosts.items():
        text = text.replace(real, fixed)
    return text


def _channel_config(stream: Stream, origin_base: str, ads_base: str,
                    slate: Path) -> dict[str, Any]:
    ch = dict(stream.spec["channel"])
    ch.setdefault("id", CHANNEL)
    if ch["id"] != CHANNEL:
        raise StreamUnreadable(f"{stream.folder}: the channel id must be {CHANNEL!r}")
    query = "".join(f"&c_{r['attribute']}={{cohort.{r['attribute']}}}"
                    for r in ch.get("cohorts") or [])
    ch.update({
        "origin_url": f"{origin_base}/live/{CHANNEL}/master.m3u8",
        "ad_server_url": f"{ads_base}/vast?break={{break_id}}&duration={{duration}}"
                         f"&cb=[CACHEBUSTING]{query}",
        "private_ad_hosts": [urlsplit(ads_base).netloc],  # the fixture ad server only
        "slate": str(slate),
    })
    return ch


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _cohort_of_request(query: dict[str, str], rules: list[dict[str, Any]]) -> str:
    if not rules:
        return "default"
    return ".".join(query.get(f"c_{r['attribute']}", r["default"]) for r in rules)


async def _replay_one(stream: Stream, out: Path, *, update: bool) -> StreamResult:
    from stitcher.app import CHANNELS, create_app
    from stitcher.config import ChannelConfig, StitcherConfig
    from stitcher.store import MemoryStore

    started = time.perf_counter()
    result = StreamResult(stream.name, stream.folder, out, reloads=len(stream.reloads))
    clock = ManualClock(start=float(stream.reloads[0]["time"]))
    origin = FakeOrigin(stream, clock)
    ads = FakeAdServer(stream)
    runners: list[web.AppRunner] = []
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-replay-"))
    http = aiohttp.ClientSession()
    try:
        origin_runner, origin_base = await _start(origin.app())
        runners.append(origin_runner)
        ad_runner, ads_base = await _start(ads.app())
        runners.append(ad_runner)
        ads.base = ads_base
        hosts = {origin_base: ORIGIN_HOST, ads_base: ADS_HOST}

        slate = tmp / "slate.mp4"
        slate.write_bytes(_mezzanine("slate", str(stream.spec.get("slate_duration", 6))))
        config = StitcherConfig(
            host="127.0.0.1", port=0, data_dir=tmp / "data",
            session_keys={"replay": "replay-session-key"},
            channels=[ChannelConfig(**_channel_config(stream, origin_base, ads_base, slate))])
        conditioner = StubConditioner()
        app = create_app(config, store=MemoryStore(tmp / "state"),
                         conditioner=conditioner,  # type: ignore[arg-type]
                         clock=clock.now)
        stitcher_runner, base = await _start(app)
        runners.append(stitcher_runner)

        origin_mv = parse_multivariant(origin.text("master.m3u8") or "",
                                       f"{ORIGIN_HOST}/live/{CHANNEL}/master.m3u8")
        sessions: list[_Session] = []
        for spec in stream.sessions:
            async with http.post(f"{base}/v1/session/{CHANNEL}",
                                 json={"adsParams": spec.get("params") or {}}) as resp:
                if resp.status != 200:
                    raise StreamUnreadable(f"session start: HTTP {resp.status} "
                                           f"{await resp.text()}")
                data = await resp.json()
            manifest = urljoin(base + "/", data["manifestUrl"])
            async with http.get(manifest) as resp:
                if resp.status != 200:
                    raise StreamUnreadable(f"multivariant: HTTP {resp.status}")
                mv = parse_multivariant(await resp.text(), str(resp.url))
            cohort = str(data.get("cohort") or spec.get("cohort") or "default")
            if spec.get("cohort") and spec["cohort"] != cohort:
                result.errors.append(f"session {spec} landed in cohort {cohort!r}")
            names = {o.id: o.uri.rsplit("/", 1)[-1] for o in origin_mv.renditions}
            # Video variants first, then audio, then subtitles: the order a player
            # loads them in (and the checker reports disagreements against the first).
            order = sorted(mv.renditions, key=lambda r: _KIND_ORDER.get(r.kind, 3))
            sessions.append(_Session(cohort, manifest, {r.id: r.uri for r in order},
                                     {r.id: r.grid for r in mv.renditions}, names))
        result.sessions = [s.cohort for s in sessions]
        result.renditions = list(sessions[0].renditions) if sessions else []

        # Warm-up, as an operator does before an event: ladder, slate and the ad
        # server's creatives conditioned before the first break.
        runtime = app[CHANNELS][CHANNEL]
        await runtime.warm_up()

        for i, reload in enumerate(stream.reloads):
            clock.set(float(reload["time"]))
            for session in sessions:
                playlists: dict[str, str] = {}
                origins: dict[str, str] = {}
                stale: set[str] = set()
                for rid, url in session.renditions.items():
                    async with http.get(url) as resp:
                        body = await resp.text()
                        if resp.status != 200:
                            result.errors.append(f"reload {i} {session.cohort}/{rid}: HTTP "
                                                 f"{resp.status} {body[:200]}")
                            continue
                        if STALE_HEADER in resp.headers:
                            stale.add(rid)
                    playlists[rid] = _normalise(body, hosts)
                    origins[rid] = _normalise(
                        origin.text(session.origin_names[rid], reload["dir"]) or "", hosts)
                session.snapshots.append(Snapshot(index=i, time=float(reload["time"]),
                                                  playlists=playlists, origin=origins,
                                                  stale=frozenset(stale)))
            for _ in range(3):  # let background work (decisions, beacons) run
                await asyncio.sleep(0)
        result.stats = {"origin_requests": origin.requests,
                        "vast_requests": len(ads.vast_requests),
                        "conditioner_runs": conditioner.runs}
    finally:
        await http.close()
        for r in reversed(runners):
            await r.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    _write_and_compare(stream, sessions, result, update=update)
    for session in sessions:
        found = check(session.snapshots)
        result.violations += [v for v in found if v.source == "stitcher"]
        result.inherited += [v for v in found if v.source == "origin"]
        result.breaks[session.cohort] = {
            rid: _runs([s.playlists[rid] for s in session.snapshots if rid in s.playlists])
            for rid in session.renditions}
    _expectations(stream, sessions, result)
    result.seconds = time.perf_counter() - started
    return result


def _rel(session: _Session, many: bool, rid: str) -> str:
    return f"{session.cohort}/{rid}.m3u8" if many else f"{rid}.m3u8"


def _write_and_compare(stream: Stream, sessions: list[_Session], result: StreamResult, *,
                       update: bool) -> None:
    many = len(sessions) > 1
    produced: dict[str, str] = {}
    for session in sessions:
        for snap in session.snapshots:
            d = stream.reloads[snap.index]["dir"]
            for rid, text in snap.playlists.items():
                produced[f"{d}/{_rel(session, many, rid)}"] = text
    if result.out.exists():
        shutil.rmtree(result.out)
    for rel, text in produced.items():
        path = result.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    golden = stream.folder / "golden"
    if update:
        if golden.exists():
            shutil.rmtree(golden)
        for rel, text in produced.items():
            path = golden / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        result.updated = len(produced)
        return
    existing = {p.relative_to(golden).as_posix() for p in golden.rglob("*.m3u8")} if (
        golden.exists()) else set()
    for rel in sorted(set(produced) | existing):
        want = (golden / rel).read_text() if rel in existing else ""
        got = produced.get(rel, "")
        if want == got:
            continue
        diff = list(difflib.unified_diff(
            want.splitlines(), got.splitlines(),
            f"golden/{rel}" if rel in existing else "/dev/null (no golden)",
            f"stitched/{rel}" if rel in produced else "/dev/null (not produced)",
            n=2, lineterm=""))
        result.diffs.append((rel, diff))


def _runs(texts: list[str]) -> list[Run]:
    """The stitched runs over a whole session: maximal MSN runs of segments that are
    not the origin's (ads, slate; content subtitles served through the stitcher are
    the origin's), each with its first PDT and EXTINF sum."""
    from manifests.timing import format_pdt
    from stitcher.captions import ROUTE_PREFIX

    origin = (ORIGIN_HOST, ROUTE_PREFIX)

    served: dict[int, tuple[bool, Fraction, str | None]] = {}
    for text in texts:
        for seg in parse_media(text).segments:
            if seg.msn not in served:
                served[seg.msn] = (not seg.uri.startswith(origin), seg.duration,
                                   format_pdt(seg.pdt) if seg.pdt is not None else None)
    runs: list[Run] = []
    current: list[int] = []
    for msn in [*sorted(served), None]:
        if msn is not None and served[msn][0] and (not current or msn == current[-1] + 1):
            current.append(msn)
            continue
        if current:
            runs.append(Run(served[current[0]][2], current[0],
                            sum((served[m][1] for m in current), Fraction(0)), len(current)))
            current = []
        if msn is not None and served[msn][0]:
            current.append(msn)
    return runs


def _expectations(stream: Stream, sessions: list[_Session], result: StreamResult) -> None:
    expect = (stream.spec.get("expect") or {}).get("breaks")
    if expect is None:
        return
    wanted = [(e["pdt"], int(e["msn"]) if e.get("msn") is not None else None,
               Fraction(str(e["duration"]))) for e in expect]
    for session in sessions:
        for rid, runs in result.breaks.get(session.cohort, {}).items():
            main = session.grids.get(rid) == "main"
            got = [(r.pdt, r.msn if main else None, r.duration) for r in runs]
            want = [(p, m if main else None, d) for p, m, d in wanted]
            result.expectations_checked += 1
            if got != want:
                def show(items: list[tuple[str | None, int | None, Fraction]]) -> str:
                    return "; ".join(f"{p} msn {m} {d} s" if m is not None else f"{p} {d} s"
                                     for p, m, d in items) or "none"

                result.expectations.append(
                    f"{session.cohort}/{rid}: stitched breaks {show(got)}, expected "
                    f"{show(want)}")


async def replay_streams(paths: list[Path], *, update: bool = False, out: Path | None = None
                         ) -> list[StreamResult]:
    """Replay every stream under ``paths`` (one by one); see the module docstring."""
    results = []
    folders = [f for p in paths for f in find_streams(p)]
    for folder in folders:
        stream = Stream.load(folder)
        target = (folder / "stitched" if out is None
                  else out / folder.name if len(folders) > 1 else out)
        results.append(await _replay_one(stream, target, update=update))
    return results


def main(args: argparse.Namespace) -> int:
    """``stitcher replay``: 0 clean, 1 violations / differences / expectations, 2 unreadable."""
    root = logging.getLogger()
    level = root.level
    if not getattr(args, "verbose", False):  # the report, not the service's chatter
        root.setLevel(logging.WARNING)
    try:
        results = asyncio.run(replay_streams(
            [Path(args.path)], update=args.update,
            out=Path(args.out) if args.out else None))
    except StreamUnreadable as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"replay: {exc}")
        return 2
    finally:
        root.setLevel(level)
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "streams": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            print(r.to_text(args.diff_lines), end="")
        if len(results) > 1:
            bad = [r.name for r in results if not r.ok]
            print(f"{len(results)} stream(s) replayed, "
                  + (f"{len(bad)} FAILED: {', '.join(bad)}" if bad else "all clean"))
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    """The ``replay`` subcommand's arguments (``stitcher/cli.py``)."""
    p = sub.add_parser("replay", help="replay fixture streams through the stitcher on a "
                                      "virtual clock; check and compare with goldens "
                                      "(exit 0 clean, 1 failures, 2 unreadable)")
    p.add_argument("path", help="a stream folder (with stream.json) or a folder of streams")
    p.add_argument("--update", action="store_true", help="rewrite the golden outputs")
    p.add_argument("--out", default=None,
                   help="where stitched snapshots go (default: <stream>/stitched/)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--diff-lines", type=int, default=60,
                   help="golden diff lines shown per stream (default 60)")


__all__ = ["FakeAdServer", "FakeOrigin", "Run", "StreamResult", "StreamUnreadable",
           "StubConditioner", "add_parser", "find_streams", "main", "replay_streams"]
