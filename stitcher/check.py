"""``stitcher check URL``: poll a live HLS stream as a player would and report
every invariant violation (the checker of :mod:`manifests.checker`).

Every rendition of a multivariant URL is polled (a media playlist URL is one
rendition), every half target duration, for ``--duration`` seconds. A
response that announces a stale serve (``X-Stitcher-Stale``) excuses a
playlist that does not advance. Fetch failures are reported too. Exit status:
0 clean, 1 violations or failed fetches, 2 the stream could not be read at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from manifests.checker import Checker, Snapshot, Violation, format_text, summary
from manifests.errors import ManifestError
from manifests.multivariant import parse_multivariant
from manifests.playlist import is_playlist_text, parse_media

log = logging.getLogger(__name__)

STALE_HEADER = "X-Stitcher-Stale"


@dataclass
class CheckReport:
    url: str
    renditions: dict[str, str] = field(default_factory=dict)
    reloads: int = 0
    violations: list[Violation] = field(default_factory=list)
    fetch_errors: list[dict[str, Any]] = field(default_factory=list)
    stale_serves: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations and not self.fetch_errors

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "renditions": self.renditions,
                "reloads": self.reloads, "stale_serves": self.stale_serves,
                "summary": summary(self.violations), "fetch_errors": self.fetch_errors,
                "violations": [v.to_json() for v in self.violations]}

    def to_text(self) -> str:
        head = (f"checked {self.url}: {len(self.renditions)} rendition(s), {self.reloads} "
                f"reloads, {self.stale_serves} stale serves announced\n")
        errors = "".join(_fetch_error_lines(self.fetch_errors))
        verdict = ("OK\n" if self.ok else
                   f"FAILED: {len(self.violations)} violation(s), "
                   f"{len(self.fetch_errors)} failed fetch(es)\n")
        return head + errors + format_text(self.violations) + verdict


def _fetch_error_lines(errors: list[dict[str, Any]]) -> list[str]:
    """One line per rendition and error, with the reloads it failed on (a stream
    down for a minute was one identical line per reload: found by a newcomer)."""
    seen: dict[tuple[str, str], list[int]] = {}
    for e in errors:
        seen.setdefault((e["rendition"], e["error"]), []).append(e["reload"])
    lines = []
    for (rendition, error), reloads in seen.items():
        where = (f"reload {reloads[0]}" if len(reloads) == 1 else
                 f"reloads {reloads[0]}-{reloads[-1]} ({len(reloads)} times)")
        lines.append(f"FETCH {rendition} {where}: {error}\n")
    return lines


class StreamUnreadable(Exception):
    """The URL does not answer with an HLS playlist."""


async def _get(session: aiohttp.ClientSession, url: str, timeout: float
               ) -> tuple[str, bool, str]:
    """(body, announced stale, final URL): relative URIs resolve against the URL
    after redirects, as players do (RFC 8216bis 4.1; hls.js uses responseURL)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        body = await resp.text()
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, resp.history,
                                              status=resp.status, message=body[:200])
        return body, STALE_HEADER in resp.headers, str(resp.url)


async def renditions_of(session: aiohttp.ClientSession, url: str, timeout: float
                        ) -> dict[str, str]:
    """rendition id -> media playlist URL (a media playlist URL is its own rendition)."""
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise StreamUnreadable(f"{url}: not an http:// or https:// URL")
    try:
        text, _, final_url = await _get(session, url, timeout)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise StreamUnreadable(f"{url}: {str(exc) or type(exc).__name__}") from exc
    if not is_playlist_text(text):
        raise StreamUnreadable(f"{url} did not answer with an HLS playlist")
    if "#EXT-X-STREAM-INF" in text or "#EXT-X-MEDIA:" in text:
        try:
            mv = parse_multivariant(text, final_url)
        except ManifestError as exc:
            raise StreamUnreadable(f"{url}: {exc}") from exc
        return {r.id: r.uri for r in mv.renditions}
    return {"media": final_url}


async def run_check(url: str, duration: float, *, interval: float | None = None,
                    timeout: float = 5.0, session: aiohttp.ClientSession | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    progress: Callable[[CheckReport], None] | None = None) -> CheckReport:
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        report = CheckReport(url, await renditions_of(session, url, timeout))
        checker = Checker()
        started = clock()
        while True:
            playlists: dict[str, str] = {}
            stale: set[str] = set()
            target = 0
            for rid, media_url in report.renditions.items():
                try:
                    text, was_stale, _ = await _get(session, media_url, timeout)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    report.fetch_errors.append({"rendition": rid, "reload": report.reloads,
                                                "error": str(exc) or type(exc).__name__})
                    continue
                playlists[rid] = text
                if was_stale:
                    stale.add(rid)
                    report.stale_serves += 1
                try:
                    target = max(target, parse_media(text).target_duration or 0)
                except ManifestError:
                    pass  # the checker reports it
            now = clock() - started
            report.violations += checker.feed(Snapshot(report.reloads, playlists, time=now,
                                                       stale=frozenset(stale)))
            report.reloads += 1
            if progress:
                progress(report)
            if now >= duration:
                return report
            await asyncio.sleep(interval if interval is not None else max(0.5, target / 2))
    finally:
        if own:
            await session.close()


def main(args: Any) -> int:
    live = sys.stdout.isatty() and not args.json

    def show(report: CheckReport) -> None:
        if live:  # a progress line for a person watching, not for logs or pipes
            print(f"\rreload {report.reloads}: {len(report.violations)} violation(s), "
                  f"{len(report.fetch_errors)} fetch error(s)", end="", flush=True)

    try:
        report = asyncio.run(run_check(args.url, args.duration, interval=args.interval,
                                       progress=show))
    except StreamUnreadable as exc:
        print(json.dumps({"url": args.url, "ok": False, "error": str(exc)}) if args.json
              else f"cannot read the stream: {exc}")
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(("\n" if live else "") + report.to_text(), end="")
    return 0 if report.ok else 1
