"""Multivariant playlists (RFC 8216bis 4.4.6): find renditions, route them.

Line-preserving like :mod:`manifests.playlist`: only URIs change. Each media
playlist the stitcher serves gets a short stable id (``v0``, ``a1``, ``s0``)
and a *grid*: the renditions that share segment boundaries (every video
variant shares ``main``; each audio or subtitle group has its own), which is
what a sequence ledger is kept per.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin

from manifests.attributes import AttributeList, quote
from manifests.errors import PlaylistParseError
from manifests.playlist import EXTM3U, Line, render_lines, split_lines

EXT_X_STREAM_INF = "#EXT-X-STREAM-INF"
EXT_X_I_FRAME_STREAM_INF = "#EXT-X-I-FRAME-STREAM-INF"
EXT_X_MEDIA = "#EXT-X-MEDIA"
EXT_X_SESSION_DATA = "#EXT-X-SESSION-DATA"
EXT_X_SESSION_KEY = "#EXT-X-SESSION-KEY"
EXT_X_CONTENT_STEERING = "#EXT-X-CONTENT-STEERING"

_KIND = {"AUDIO": "audio", "SUBTITLES": "subtitles", "VIDEO": "video"}
_PREFIX = {"video": "v", "audio": "a", "subtitles": "s"}


@dataclass(frozen=True, slots=True)
class Rendition:
    id: str
    kind: str  # "video" (variant or alternative video), "audio", "subtitles"
    uri: str   # absolute origin URL of its media playlist
    grid: str
    group: str | None = None
    bandwidth: int | None = None
    resolution: tuple[int, int] | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class Multivariant:
    lines: tuple[Line, ...]
    renditions: tuple[Rendition, ...]
    newline: str = "\n"
    final_newline: bool = True

    def rendition(self, rid: str) -> Rendition | None:
        return next((r for r in self.renditions if r.id == rid), None)


def parse_multivariant(text: str, base_url: str) -> Multivariant:
    raw, newline, _bom, final = split_lines(text)
    if not raw or not raw[0].startswith(EXTM3U):
        raise PlaylistParseError("not an HLS playlist: first line is not #EXTM3U")
    lines = tuple(Line.of(r) for r in raw)
    renditions: list[Rendition] = []
    counters = {"v": 0, "a": 0, "s": 0}
    pending: AttributeList | None = None
    for line in lines:
        if line.tag == EXT_X_STREAM_INF:
            pending = AttributeList.parse(line.value or "")
        elif line.tag == EXT_X_MEDIA:
            attrs = AttributeList.parse(line.value or "")
            uri = attrs.string("URI")
            kind = _KIND.get((attrs.string("TYPE") or "").upper())
            if uri is None or kind is None:
                continue  # CLOSED-CAPTIONS and in-band renditions have no playlist
            prefix = _PREFIX[kind]
            group = attrs.string("GROUP-ID")
            rid = f"{prefix}{counters[prefix]}"
            counters[prefix] += 1
            grid = "main" if kind == "video" else f"{kind}-{group}"
            renditions.append(Rendition(rid, kind, urljoin(base_url, uri), grid, group,
                                        language=attrs.string("LANGUAGE")))
        elif line.is_uri and pending is not None:
            uri = urljoin(base_url, line.text.strip())
            if any(r.uri == uri for r in renditions):
                pending = None  # the same playlist listed again (another audio group)
                continue
            rid = f"v{counters['v']}"
            counters["v"] += 1
            renditions.append(Rendition(rid, "video", uri, "main",
                                        bandwidth=pending.integer("BANDWIDTH"),
                                        resolution=pending.resolution("RESOLUTION")))
            pending = None
    if not any(r.kind == "video" for r in renditions) and not renditions:
        raise PlaylistParseError("multivariant playlist lists no renditions")
    return Multivariant(lines, tuple(renditions), newline, final)


def rewrite_multivariant(mv: Multivariant, base_url: str,
                         uri_for: Callable[[Rendition], str]) -> str:
    """Route every rendition through ``uri_for``; absolutize other URIs.

    I-frame playlists are dropped: the stitcher does not serve them yet, and an
    unstitched one would disagree with the stitched timeline.
    """
    by_origin = {r.uri: r for r in mv.renditions}
    out: list[str] = []
    for line in mv.lines:
        if line.tag == EXT_X_I_FRAME_STREAM_INF:
            continue
        if line.tag in (EXT_X_MEDIA, EXT_X_SESSION_DATA, EXT_X_SESSION_KEY,
                        EXT_X_CONTENT_STEERING) and line.value and "URI=" in line.value:
            attrs = AttributeList.parse(line.value)
            uri = urljoin(base_url, attrs.string("URI") or "")
            target = by_origin.get(uri) if line.tag == EXT_X_MEDIA else None
            new = uri_for(target) if target is not None else uri
            out.append(f"{line.tag}:{attrs.replace('URI', quote(new)).render()}")
        elif line.is_uri:
            uri = urljoin(base_url, line.text.strip())
            target = by_origin.get(uri)
            out.append(uri_for(target) if target is not None else uri)
        else:
            out.append(line.text)
    return render_lines(out, newline=mv.newline, final_newline=mv.final_newline)
