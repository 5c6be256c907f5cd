"""VAST 2.0-4.3 ad responses and VMAP 1.0 schedules: parse, resolve wrappers, expand macros.

Pure: no network, no clock, no randomness. Fetching, timestamps and cachebusters
come in from the caller (``resolve`` takes a ``fetch`` callable; ``expand_macros``
takes the values). VAST is untrusted XML: it is parsed with defusedxml, with DTDs,
entity declarations and external references forbidden (DESIGN.md, "Security").

Exceptions
----------
One hierarchy. Every error carries ``code``, the number of the VAST 4.x
"VAST Error Codes" table that a player (here: the stitcher) puts in ``[ERRORCODE]``
when it fires the ad's ``<Error>`` URLs::

    VastError(message, code)                   base, code 900 "undefined error"
    +-- VastParseError                  100    not well-formed XML, or too large
    |   +-- VastForbiddenXmlError       100    DTD, entity declaration, external reference
    +-- VastSchemaError                 101    well-formed but not a VAST/VMAP document
    +-- VastVersionError                102    VAST 1.0 (<VideoAdServingTemplate>) or unknown version
    +-- VastWrapperError                300    general wrapper error
    |   +-- VastWrapperTimeoutError     301    wrapper target unreachable / timed out
    |   +-- VastWrapperLimitError       302    too many wrappers (depth), or followAdditionalWrappers=false
    |   +-- VastNoAdsAfterWrapperError  303    wrapper target answered with no ads
    +-- VastUnsupportedAdError          (code given: 101 bad Duration, 201 no Linear, 403 no media)
        +-- VastNoSupportedMediaError   403    no MediaFile/Mezzanine the stitcher can transcode

``parse_vast`` raises only for a document that cannot be a VAST response at all.
Inside a valid document it is lenient: a broken ``<Ad>`` is listed in
``VastResponse.rejected`` and an unstitchable creative (VPAID, Flash, bad
Duration) in ``InLine.skipped``, with its error code; the rest of the pod
survives. An empty ``<VAST>`` (no ``<Ad>``) is a valid no-fill answer.

``resolve`` never raises ``VastError``: every failure becomes an
``ErrorReport(urls, code, ...)`` for the caller to fire (with ``[ERRORCODE]``
expanded), so one bad ad never costs the rest of the pod.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Literal
from urllib.parse import quote, urljoin
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import (  # type: ignore[import-untyped]
    fromstring as _defused_fromstring,
)

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "UNKNOWN_AD_ID",
    "VAST_MACROS",
    "Ad",
    "ClosedCaptionFile",
    "CreativeSkip",
    "ErrorReport",
    "Fetch",
    "InLine",
    "LinearCreative",
    "MacroValue",
    "MediaFile",
    "Mezzanine",
    "RejectedAd",
    "Resolution",
    "ResolvedAd",
    "Tracking",
    "UniversalAdId",
    "VastError",
    "VastForbiddenXmlError",
    "VastNoAdsAfterWrapperError",
    "VastNoSupportedMediaError",
    "VastParseError",
    "VastResponse",
    "VastSchemaError",
    "VastUnsupportedAdError",
    "VastVersionError",
    "VastWrapperError",
    "VastWrapperLimitError",
    "VastWrapperTimeoutError",
    "Vmap",
    "VmapAdBreak",
    "VmapAdSource",
    "Wrapper",
    "choose_media_file",
    "expand_macros",
    "expand_template",
    "format_macros",
    "macro_template",
    "parse_timecode",
    "parse_vast",
    "parse_vmap",
    "resolve",
]

#: Larger answers are refused before parsing (VAST responses are kilobytes; a pod
#: of dozens of ads stays far below this). The fetcher should enforce it too.
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024


# --------------------------------------------------------------------------- errors


class VastError(Exception):
    """Base of every error raised here; ``code`` is the VAST error code (4.x table)."""

    default_code = 900

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = self.default_code if code is None else code


class VastParseError(VastError):
    """100 "XML parsing error": not well-formed, wrong encoding, or too large."""

    default_code = 100


class VastForbiddenXmlError(VastParseError):
    """100: a DTD, entity declaration or external reference (XML bomb, XXE) was refused."""


class VastSchemaError(VastError):
    """101 "VAST schema validation error": well-formed XML that is not a usable VAST document."""

    default_code = 101


class VastVersionError(VastError):
    """102 "VAST version of response not supported": VAST 1.0 or an unknown version."""

    default_code = 102


class VastWrapperError(VastError):
    """300 "General Wrapper error"."""

    default_code = 300


class VastWrapperTimeoutError(VastWrapperError):
    """301: the URI in a Wrapper's VASTAdTagURI timed out or was unavailable."""

    default_code = 301


class VastWrapperLimitError(VastWrapperError):
    """302 "Wrapper limit reached": too many Wrappers with no InLine."""

    default_code = 302


class VastNoAdsAfterWrapperError(VastWrapperError):
    """303 "No VAST response after one or more Wrappers" (includes an empty no-fill VAST)."""

    default_code = 303


class VastUnsupportedAdError(VastError):
    """An InLine ad the stitcher cannot play; ``code`` says why (101, 201, 403, ...)."""

    default_code = 400


class VastNoSupportedMediaError(VastUnsupportedAdError):
    """403 "Couldn't find MediaFile that is supported": only VPAID/Flash/unknown types."""

    default_code = 403


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class UniversalAdId:
    """``<UniversalAdId idRegistry=...>`` (VAST 4.x Creative). "unknown" when absent, per spec."""

    registry: str
    value: str


UNKNOWN_AD_ID = UniversalAdId("unknown", "unknown")

# Types a server-side transcoder can take as input; JavaScript (VPAID/SIMID) and
# Flash are interactive units a server cannot render.
_STREAMING_TYPES = frozenset(
    {"application/x-mpegurl", "application/vnd.apple.mpegurl", "application/dash+xml"}
)


@dataclass(frozen=True)
class MediaFile:
    """``<MediaFile>`` (VAST 4.x Linear > MediaFiles)."""

    uri: str
    delivery: str | None
    type: str | None
    width: int | None
    height: int | None
    bitrate: int | None
    codec: str | None
    api_framework: str | None
    id: str | None = None

    @property
    def is_interactive(self) -> bool:
        """VPAID (any type) or Flash: executable units, not video."""
        kind = (self.type or "").lower()
        framework = (self.api_framework or "").upper()
        return framework == "VPAID" or "javascript" in kind or "shockwave-flash" in kind

    @property
    def is_stitchable(self) -> bool:
        """A video file or stream a transcoder can condition into ad segments."""
        kind = (self.type or "").lower()
        return not self.is_interactive and (kind.startswith("video/") or kind in _STREAMING_TYPES)


@dataclass(frozen=True)
class Mezzanine:
    """``<Mezzanine>`` (VAST 4.0+): the raw, high-quality file meant for SSAI transcoding."""

    uri: str
    delivery: str | None = None
    type: str | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    id: str | None = None
    file_size: int | None = None


@dataclass(frozen=True)
class Tracking:
    """``<Tracking event=... offset=...>`` (VAST 4.x Linear > TrackingEvents).

    ``offset`` is seconds from the creative's start, for ``progress`` events (the
    spec's HH:MM:SS(.mmm) or n%). ``offset_text`` keeps the attribute as written:
    a percentage in a Wrapper cannot be resolved until the InLine's Duration is
    known, so Wrapper trackers carry ``offset=None`` until ``resolved()``.
    """

    event: str
    uri: str
    offset: Fraction | None = None
    offset_text: str | None = None

    def resolved(self, duration: Fraction) -> Tracking:
        """This tracker with a percentage offset resolved against ``duration``."""
        if self.offset is not None or self.offset_text is None:
            return self
        return replace(self, offset=_parse_offset(self.offset_text, duration))


@dataclass(frozen=True)
class ClosedCaptionFile:
    """``<ClosedCaptionFile>`` (VAST 4.1+ Linear > MediaFiles > ClosedCaptionFiles)."""

    uri: str
    type: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class LinearCreative:
    """A ``<Creative>`` holding a ``<Linear>`` the stitcher can play (VAST 4.x Creative, Linear)."""

    id: str | None
    ad_id: str | None
    sequence: int | None
    universal_ad_ids: list[UniversalAdId]
    duration: Fraction
    media_files: list[MediaFile]
    mezzanines: list[Mezzanine]
    tracking: list[Tracking]
    click_through: str | None = None
    closed_caption_files: list[ClosedCaptionFile] = field(default_factory=list)

    @property
    def universal_ad_id(self) -> UniversalAdId:
        """The first UniversalAdId, or registry/value "unknown" as the spec asks."""
        return self.universal_ad_ids[0] if self.universal_ad_ids else UNKNOWN_AD_ID


@dataclass(frozen=True)
class CreativeSkip:
    """A Linear creative left out of ``InLine.creatives``, with the VAST error code why."""

    creative_id: str | None
    code: int
    reason: str


@dataclass(frozen=True)
class InLine:
    """``<InLine>`` (VAST 4.x): the ad itself. ``creatives`` holds stitchable Linear ones only."""

    ad_system: str | None
    ad_title: str | None
    impressions: list[str]
    errors: list[str]
    creatives: list[LinearCreative]
    skipped: list[CreativeSkip] = field(default_factory=list)
    ad_serving_id: str | None = None


@dataclass(frozen=True)
class Wrapper:
    """``<Wrapper>`` (VAST 4.x): a redirect plus trackers to merge into the InLine.

    ``tracking`` holds only Linear tracking (NonLinear/Companion trackers do not
    apply to a linear break). The three flags are ``None`` when the attribute is
    absent; see ``resolve`` for how absence is treated.
    """

    vast_ad_tag_uri: str
    impressions: list[str]
    errors: list[str]
    tracking: dict[str, list[Tracking]]
    follow_additional_wrappers: bool | None = None
    allow_multiple_ads: bool | None = None
    fallback_on_no_ad: bool | None = None
    ad_system: str | None = None


@dataclass(frozen=True)
class Ad:
    """``<Ad id sequence>``: exactly one of ``inline`` / ``wrapper`` is set."""

    id: str | None
    sequence: int | None
    inline: InLine | None
    wrapper: Wrapper | None


@dataclass(frozen=True)
class RejectedAd:
    """An ``<Ad>`` that could not be read (no InLine/Wrapper, Wrapper without a URI)."""

    id: str | None
    sequence: int | None
    code: int
    reason: str
    error_urls: list[str]


@dataclass(frozen=True)
class VastResponse:
    """A parsed ``<VAST>`` document. ``ads`` is in document order; see ``pod``/``buffet``."""

    version: str
    ads: list[Ad]
    errors: list[str]
    rejected: list[RejectedAd] = field(default_factory=list)

    @property
    def pod(self) -> list[Ad]:
        """Ads with a ``sequence``: an ad pod, in sequence order (VAST 4.x "Ad Pods")."""
        return sorted((ad for ad in self.ads if ad.sequence is not None), key=_sequence_key)

    @property
    def buffet(self) -> list[Ad]:
        """Stand-alone ads (no ``sequence``), in document order: the "ad buffet"."""
        return [ad for ad in self.ads if ad.sequence is None]


def _sequence_key(ad: Ad) -> int:
    return ad.sequence if ad.sequence is not None else 0


@dataclass(frozen=True)
class VmapAdSource:
    """``<vmap:AdSource>`` (VMAP 1.0 §2.3.2): inline VAST data or an ad tag URI."""

    id: str | None
    allow_multiple_ads: bool | None
    follow_redirects: bool | None
    vast: VastResponse | None = None
    ad_tag_uri: str | None = None
    template_type: str | None = None
    vast_error_code: int | None = None


@dataclass(frozen=True)
class VmapAdBreak:
    """``<vmap:AdBreak>`` (VMAP 1.0 §2.3.1). ``offset`` is seconds for a timecode or "start"."""

    time_offset: str
    break_type: str | None
    break_id: str | None
    repeat_after: str | None
    source: VmapAdSource | None
    tracking: list[Tracking] = field(default_factory=list)

    @property
    def offset(self) -> Fraction | None:
        text = self.time_offset.strip()
        if text == "start":
            return Fraction(0)
        return parse_timecode(text)


@dataclass(frozen=True)
class Vmap:
    """A parsed ``<vmap:VMAP>`` document (IAB VMAP 1.0)."""

    version: str
    breaks: list[VmapAdBreak]


# --------------------------------------------------------------------------- XML helpers


def _local(tag: object) -> str:
    """Element name without namespace: VAST 4.1+ may use xmlns="http://www.iab.com/VAST"."""
    if not isinstance(tag, str):  # comments / processing instructions
        return ""
    return tag.rsplit("}", 1)[-1]


def _children(element: Element | None, name: str) -> list[Element]:
    if element is None:
        return []
    return [child for child in element if _local(child.tag) == name]


def _child(element: Element | None, name: str) -> Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: Element | None) -> str:
    """Element text, CDATA included, trimmed: URIs are often wrapped in whitespace."""
    if element is None:
        return ""
    return "".join(element.itertext()).strip()


def _texts(element: Element | None, name: str) -> list[str]:
    """Non-empty texts of the ``name`` children (empty ``<Impression/>`` is skipped)."""
    return [text for text in (_text(child) for child in _children(element, name)) if text]


def _attr(element: Element, name: str) -> str | None:
    """Attribute by name, case-insensitively: VAST 3 writes ``AdID``, VAST 4 ``adId``."""
    value = element.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in element.attrib.items():
        if key.lower() == lowered:
            return candidate
    return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _bool(text: str | None) -> bool | None:
    """xs:boolean: "true"/"1" or "false"/"0"; anything else counts as absent."""
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    return None


def _parse_document(xml: bytes | str, max_bytes: int) -> Element:
    # The limit counts bytes, or characters for ``str`` input.
    if len(xml) > max_bytes:
        raise VastParseError(f"document of {len(xml)} bytes exceeds the {max_bytes}-byte limit")
    # Some ad servers send a BOM or blank lines before the XML declaration, which
    # expat rejects ("XML declaration not at start"); that is noise, not a bad ad.
    data: bytes | str
    if isinstance(xml, bytes):
        data = xml.removeprefix(b"\xef\xbb\xbf").lstrip()
    else:
        data = xml.lstrip("\ufeff \t\r\n")
    try:
        root: Element = _defused_fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as exc:
        raise VastForbiddenXmlError(f"forbidden XML construct: {exc}") from exc
    except ParseError as exc:
        raise VastParseError(f"not well-formed XML: {exc}") from exc
    except (ValueError, LookupError) as exc:  # unsupported encoding declarations
        raise VastParseError(f"unreadable XML: {exc}") from exc
    return root


# --------------------------------------------------------------------------- time

_TIMECODE = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d)(?:\.(\d+))?$")


def parse_timecode(text: str) -> Fraction | None:
    """``HH:MM:SS`` or ``HH:MM:SS.mmm`` (VAST 4.x Duration, offsets) as exact seconds.

    Returns ``None`` when the text is not a timecode: callers decide what that
    means (a skipped creative, an unknown offset).
    """
    match = _TIMECODE.match(text.strip())
    if match is None:
        return None
    hours, minutes, seconds, frac = match.groups()
    total = Fraction(int(hours) * 3600 + int(minutes) * 60 + int(seconds))
    if frac:
        total += Fraction(int(frac), 10 ** len(frac))
    return total


def _parse_offset(text: str, duration: Fraction | None) -> Fraction | None:
    """A Tracking ``offset``: a timecode, or ``n%`` of ``duration`` (VAST 4.x Tracking)."""
    value = text.strip()
    if value.endswith("%"):
        if duration is None:
            return None
        try:
            percent = Fraction(value[:-1].strip())
        except (ValueError, ZeroDivisionError):
            return None
        return duration * percent / 100
    return parse_timecode(value)


def _format_timecode(seconds: Fraction) -> str:
    """HH:MM:SS.mmm, the macro format for playheads (VAST 4.x Macros)."""
    millis = round(seconds * 1000)
    sign = "-" if millis < 0 else ""
    millis = abs(millis)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{sign}{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


# --------------------------------------------------------------------------- parsing

_VERSION = re.compile(r"^[234](?:\.\d+)*$")


def parse_vast(xml: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> VastResponse:
    """Parse a VAST 2.0, 3.0 or 4.0-4.3 response, namespaced or not.

    Raises ``VastParseError`` (100) for non-XML and forbidden constructs,
    ``VastSchemaError`` (101) for XML that is not ``<VAST>`` (a VMAP document
    included: use ``parse_vmap``), ``VastVersionError`` (102) for VAST 1.0's
    ``<VideoAdServingTemplate>`` or an unknown version.
    """
    return _vast_from_element(_parse_document(xml, max_bytes))


def _vast_from_element(root: Element) -> VastResponse:
    name = _local(root.tag)
    if name == "VideoAdServingTemplate":
        raise VastVersionError("VAST 1.0 (<VideoAdServingTemplate>) is not supported")
    if name == "VMAP":
        raise VastSchemaError("this is a VMAP document, not VAST: use parse_vmap()")
    if name != "VAST":
        raise VastSchemaError(f"root element <{name}> is not <VAST>")
    version = (root.get("version") or "").strip()
    if not version:
        raise VastSchemaError("<VAST> has no version attribute (required since VAST 2.0)")
    if not _VERSION.match(version):
        raise VastVersionError(f"VAST version {version!r} is not supported (2.0 to 4.3)")
    ads: list[Ad] = []
    rejected: list[RejectedAd] = []
    for element in _children(root, "Ad"):
        parsed = _parse_ad(element)
        if isinstance(parsed, Ad):
            ads.append(parsed)
        else:
            rejected.append(parsed)
    return VastResponse(version, ads, _texts(root, "Error"), rejected)


def _parse_ad(element: Element) -> Ad | RejectedAd:
    ad_id = element.get("id")
    sequence = _int(element.get("sequence"))
    if sequence is not None and sequence < 1:  # "an integer greater than zero"
        sequence = None
    inline = _child(element, "InLine")
    if inline is not None:
        return Ad(ad_id, sequence, _parse_inline(inline), None)
    wrapper = _child(element, "Wrapper")
    if wrapper is not None:
        uri = _text(_child(wrapper, "VASTAdTagURI"))
        if not uri:
            errors = _texts(wrapper, "Error")
            return RejectedAd(ad_id, sequence, 101, "Wrapper without VASTAdTagURI", errors)
        return Ad(ad_id, sequence, None, _parse_wrapper(wrapper, uri))
    return RejectedAd(ad_id, sequence, 101, "Ad has neither InLine nor Wrapper", [])


def _linear_creatives(element: Element) -> Iterable[tuple[Element, Element]]:
    for creative in _children(_child(element, "Creatives"), "Creative"):
        linear = _child(creative, "Linear")
        if linear is not None:
            yield creative, linear


def _parse_inline(element: Element) -> InLine:
    creatives: list[LinearCreative] = []
    skipped: list[CreativeSkip] = []
    for creative, linear in _linear_creatives(element):
        parsed = _parse_linear(creative, linear)
        if isinstance(parsed, LinearCreative):
            creatives.append(parsed)
        else:
            skipped.append(parsed)
    return InLine(
        ad_system=_text(_child(element, "AdSystem")) or None,
        ad_title=_text(_child(element, "AdTitle")) or None,
        impressions=_texts(element, "Impression"),
        errors=_texts(element, "Error"),
        creatives=creatives,
        skipped=skipped,
        ad_serving_id=_text(_child(element, "AdServingId")) or None,
    )


def _parse_tracking(linear: Element, duration: Fraction | None) -> list[Tracking]:
    trackers = []
    for element in _children(_child(linear, "TrackingEvents"), "Tracking"):
        uri = _text(element)
        event = (element.get("event") or "").strip()
        if not uri or not event:
            continue
        offset_text = element.get("offset")
        offset = _parse_offset(offset_text, duration) if offset_text else None
        trackers.append(Tracking(event, uri, offset, offset_text))
    return trackers


def _parse_media_file(element: Element) -> MediaFile:
    return MediaFile(
        uri=_text(element),
        delivery=element.get("delivery"),
        type=element.get("type"),
        width=_int(element.get("width")),
        height=_int(element.get("height")),
        bitrate=_int(element.get("bitrate")),
        codec=element.get("codec"),
        api_framework=element.get("apiFramework"),
        id=element.get("id"),
    )


def _parse_mezzanine(element: Element) -> Mezzanine:
    return Mezzanine(
        uri=_text(element),
        delivery=element.get("delivery"),
        type=element.get("type"),
        width=_int(element.get("width")),
        height=_int(element.get("height")),
        codec=element.get("codec"),
        id=element.get("id"),
        file_size=_int(element.get("fileSize")),
    )


def _parse_universal_ad_id(element: Element) -> UniversalAdId:
    # VAST 4.0 carried the value in @idValue; 4.1 moved it into the element text
    # and deprecated the attribute. When both are present the 4.0 attribute wins.
    registry = (element.get("idRegistry") or "").strip() or "unknown"
    value = (element.get("idValue") or "").strip() or _text(element) or "unknown"
    return UniversalAdId(registry, value)


def _parse_linear(creative: Element, linear: Element) -> LinearCreative | CreativeSkip:
    creative_id = creative.get("id")
    media = _child(linear, "MediaFiles")
    media_files = [_parse_media_file(m) for m in _children(media, "MediaFile") if _text(m)]
    mezzanines = [_parse_mezzanine(m) for m in _children(media, "Mezzanine") if _text(m)]
    duration_text = _text(_child(linear, "Duration"))
    duration = parse_timecode(duration_text)

    problems: list[tuple[int, str]] = []
    if not mezzanines and not any(m.is_stitchable for m in media_files):
        kinds = ", ".join(sorted({f"{m.type}/{m.api_framework or '-'}" for m in media_files}))
        problems.append((403, f"no stitchable MediaFile or Mezzanine (found: {kinds or 'none'})"))
    if duration is None:
        problems.append((101, f"Linear Duration {duration_text!r} is not HH:MM:SS(.mmm)"))
    elif duration <= 0:
        problems.append((101, f"Linear Duration {duration_text!r} is not positive"))
    if problems or duration is None:
        code = problems[0][0] if problems else 101
        return CreativeSkip(creative_id, code, "; ".join(reason for _, reason in problems))

    captions = [
        ClosedCaptionFile(_text(c), c.get("type"), c.get("language"))
        for c in _children(_child(media, "ClosedCaptionFiles"), "ClosedCaptionFile")
        if _text(c)
    ]
    return LinearCreative(
        id=creative_id,
        ad_id=_attr(creative, "adId"),
        sequence=_int(creative.get("sequence")),
        universal_ad_ids=[_parse_universal_ad_id(u) for u in _children(creative, "UniversalAdId")],
        duration=duration,
        media_files=media_files,
        mezzanines=mezzanines,
        tracking=_parse_tracking(linear, duration),
        click_through=_text(_child(_child(linear, "VideoClicks"), "ClickThrough")) or None,
        closed_caption_files=captions,
    )


def _parse_wrapper(element: Element, uri: str) -> Wrapper:
    tracking: dict[str, list[Tracking]] = {}
    for _, linear in _linear_creatives(element):
        for tracker in _parse_tracking(linear, None):
            tracking.setdefault(tracker.event, []).append(tracker)
    return Wrapper(
        vast_ad_tag_uri=uri,
        impressions=_texts(element, "Impression"),
        errors=_texts(element, "Error"),
        tracking=tracking,
        follow_additional_wrappers=_bool(element.get("followAdditionalWrappers")),
        allow_multiple_ads=_bool(element.get("allowMultipleAds")),
        fallback_on_no_ad=_bool(element.get("fallbackOnNoAd")),
        ad_system=_text(_child(element, "AdSystem")) or None,
    )


def parse_vmap(xml: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Vmap:
    """Parse a VMAP 1.0 document (any namespace URI; the IAB's and common variants).

    Minimal: breaks with their offset, type, id, the ad source (embedded
    ``VASTAdData`` parsed with ``parse_vast``'s rules, or an ``AdTagURI``) and
    the break's ``breakStart``/``breakEnd``/``error`` trackers. An embedded VAST
    that cannot be read leaves ``source.vast`` ``None`` with its error code, so
    one bad break does not lose the schedule.
    """
    root = _parse_document(xml, max_bytes)
    name = _local(root.tag)
    if name == "VAST":
        raise VastSchemaError("this is a VAST document, not VMAP: use parse_vast()")
    if name != "VMAP":
        raise VastSchemaError(f"root element <{name}> is not <vmap:VMAP>")
    version = (root.get("version") or "").strip()
    if not re.match(r"^1(?:\.\d+)*$", version):
        raise VastVersionError(f"VMAP version {version!r} is not supported (1.0)")
    breaks = []
    for element in _children(root, "AdBreak"):
        source_element = _child(element, "AdSource")
        source = None if source_element is None else _parse_vmap_source(source_element)
        tracking = [
            Tracking((t.get("event") or "").strip(), _text(t))
            for t in _children(_child(element, "TrackingEvents"), "Tracking")
            if _text(t)
        ]
        breaks.append(
            VmapAdBreak(
                time_offset=element.get("timeOffset") or "",
                break_type=element.get("breakType"),
                break_id=element.get("breakId"),
                repeat_after=element.get("repeatAfter"),
                source=source,
                tracking=tracking,
            )
        )
    return Vmap(version, breaks)


def _parse_vmap_source(element: Element) -> VmapAdSource:
    vast: VastResponse | None = None
    error_code: int | None = None
    # VMAP 1.0 names it VASTAdData; several servers write VASTData.
    data = _child(element, "VASTAdData")
    if data is None:
        data = _child(element, "VASTData")
    if data is not None:
        vast_element = _child(data, "VAST")
        if vast_element is None:
            error_code = VastSchemaError.default_code
        else:
            try:
                vast = _vast_from_element(vast_element)
            except VastError as exc:
                error_code = exc.code
    tag = _child(element, "AdTagURI")
    return VmapAdSource(
        id=element.get("id"),
        allow_multiple_ads=_bool(element.get("allowMultipleAds")),
        follow_redirects=_bool(element.get("followRedirects")),
        vast=vast,
        ad_tag_uri=_text(tag) or None,
        template_type=None if tag is None else tag.get("templateType"),
        vast_error_code=error_code,
    )


# --------------------------------------------------------------------------- media choice


def _area_and_bitrate(media: MediaFile) -> tuple[int, int]:
    return ((media.width or 0) * (media.height or 0), media.bitrate or 0)


def choose_media_file(
    creative: LinearCreative,
    prefer: Literal["mezzanine", "media_file"] = "mezzanine",
) -> MediaFile | Mezzanine:
    """The source to condition this creative from.

    ``prefer="mezzanine"`` (SSAI, VAST 4.0 "Mezzanine"): the first Mezzanine if
    any; else the highest-quality (largest frame, then highest bitrate)
    progressive ``video/mp4``; else the best other stitchable video file. With
    ``prefer="media_file"`` the Mezzanine is the last resort instead of the first.
    Raises ``VastNoSupportedMediaError`` (403) when nothing is usable.
    """
    if prefer == "mezzanine" and creative.mezzanines:
        return creative.mezzanines[0]
    usable = [m for m in creative.media_files if m.is_stitchable]
    progressive_mp4 = [
        m
        for m in usable
        if (m.type or "").lower() == "video/mp4" and (m.delivery or "progressive") == "progressive"
    ]
    for candidates in (progressive_mp4, usable):
        if candidates:
            return max(candidates, key=_area_and_bitrate)
    if creative.mezzanines:
        return creative.mezzanines[0]
    raise VastNoSupportedMediaError(f"creative {creative.id!r} has no stitchable media file")


# --------------------------------------------------------------------------- macros

#: Macro names of the VAST 4.x "Macros" section (4.0-4.3). Only these are replaced
#: by ``missing``; any other ``[NAME]`` is left alone unless given in ``values``.
VAST_MACROS = frozenset(
    {
        # generic
        "CACHEBUSTING", "TIMESTAMP",
        # ad break info
        "ADCATEGORIES", "ADCOUNT", "ADPLAYHEAD", "ADSERVINGID", "ADTYPE", "BLOCKEDADCATEGORIES",
        "BREAKMAXADLENGTH", "BREAKMAXADS", "BREAKMAXDURATION", "BREAKMINADLENGTH",
        "BREAKMINDURATION", "BREAKPOSITION", "CONTENTPLAYHEAD", "MEDIAPLAYHEAD",
        "PLACEMENTTYPE", "PODSEQUENCE", "TRANSACTIONID", "UNIVERSALADID",
        # client / publisher info
        "APIFRAMEWORKS", "APPBUNDLE", "CLIENTUA", "CONTENTID", "CONTENTURI", "DEVICEIP",
        "DEVICEUA", "DOMAIN", "EXTENSIONS", "IFA", "IFATYPE", "INVENTORYSTATE", "LATLONG",
        "MEDIAMIME", "OMIDPARTNER", "PAGEURL", "PLAYBACKMETHODS", "PLAYERCAPABILITIES",
        "PLAYERSIZE", "PLAYERSTATE", "SERVERSIDE", "SERVERUA", "STOREID", "STOREURL",
        "VASTVERSIONS", "VERIFICATIONVENDORS",
        # regulations
        "GDPRCONSENT", "LIMITADTRACKING", "REGULATIONS",
        # player state / clicks / errors / verification
        "ASSETURI", "CLICKPOS", "CLICKTYPE", "ERRORCODE", "REASON",
    }
)  # fmt: skip

_MACRO = re.compile(r"\[([A-Z][A-Z0-9_]*)\]")

MacroValue = str | int | bool | Fraction | float | datetime | timedelta | Sequence[str | int] | None


def _format_macro(name: str, value: MacroValue) -> str:
    """Render one macro value, percent-encoded (RFC 3986) as VAST 4.x requires."""
    if value is None:
        return "-1"  # VAST 4.x: -1 when the value is unknown to the player
    if isinstance(value, bool):
        text = "1" if value else "0"
    elif isinstance(value, int):
        text = f"{value:08d}" if name == "CACHEBUSTING" and value >= 0 else str(value)
    elif isinstance(value, datetime):
        text = value.isoformat(timespec="milliseconds")
    elif isinstance(value, timedelta):
        whole = Fraction(value.days * 86_400 + value.seconds)
        text = _format_timecode(whole + Fraction(value.microseconds, 1_000_000))
    elif isinstance(value, Fraction):
        text = _format_timecode(value)
    elif isinstance(value, float):
        text = _format_timecode(Fraction(value)) if math.isfinite(value) else "-1"
    elif isinstance(value, str):
        text = value
    else:  # arrays are comma-separated lists of encoded items
        return ",".join(quote(str(item), safe="") for item in value)
    return quote(text, safe="")


def expand_macros(url: str, values: Mapping[str, MacroValue], *, missing: str | None = None) -> str:
    """Replace ``[NAME]`` macros in ``url`` (VAST 4.x "Macros").

    - A name in ``values`` is replaced by its value, percent-encoded: ``str`` as
      is, ``int`` as digits (``CACHEBUSTING`` zero-padded to 8), ``bool`` as 1/0,
      ``datetime`` as ISO 8601 with milliseconds (``TIMESTAMP``), ``Fraction``/
      ``timedelta``/``float`` seconds as ``HH:MM:SS.mmm`` (the playhead macros),
      a sequence as a comma-separated list, ``None`` as ``-1`` ("unknown").
    - A name not in ``values``: a VAST macro (``VAST_MACROS``) becomes ``missing``
      when given (the spec's ``-1`` unknown / ``-2`` not applicable); otherwise,
      and for any other bracketed token (an ad server's own, e.g. ``[random]``),
      the text is left exactly as is.
    - One pass: brackets inside substituted values are never expanded again.

    Nothing here reads a clock or a random source: give ``CACHEBUSTING`` and
    ``TIMESTAMP`` explicitly, once per beacon, so retries send identical URLs.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return _format_macro(name, values[name])
        if missing is not None and name in VAST_MACROS:
            return quote(missing, safe="")
        return match.group(0)

    return _MACRO.sub(substitute, url)



def macro_template(url: str) -> tuple[str, ...]:
    """``url`` split at its ``[NAME]`` macros: literal, name, literal, ..., literal
    (names at odd indexes), for :func:`expand_template`: a beacon URL is parsed once
    per ad, not once per viewer."""
    return tuple(_MACRO.split(url))


def format_macros(values: Mapping[str, MacroValue]) -> dict[str, str]:
    """``values`` rendered as :func:`expand_macros` renders them (percent-encoded)."""
    return {name: _format_macro(name, value) for name, value in values.items()}


def expand_template(parts: tuple[str, ...], formatted: Mapping[str, str]) -> str:
    """``expand_macros(url, values)`` for ``parts = macro_template(url)`` and
    ``formatted = format_macros(values)`` (``missing`` unset: a name not given is
    left as written), the same text, with no regex or formatting per call."""
    if len(parts) == 1:
        return parts[0]
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        name = parts[i]
        value = formatted.get(name)
        out.append(f"[{name}]" if value is None else value)
        out.append(parts[i + 1])
    return "".join(out)


# --------------------------------------------------------------------------- resolution

Fetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class ResolvedAd:
    """One playable ad after wrapper resolution, with every party's URLs merged.

    ``impressions``, ``errors`` and each ``tracking`` list run from the outermost
    wrapper to the InLine, in document order; nothing is deduplicated (the
    beacon queue's idempotency key covers identical URLs). ``sequence`` is the
    InLine ``<Ad>``'s; list position in ``Resolution.ads`` is the play order.
    """

    ad_id: str | None
    sequence: int | None
    ad_system: str | None
    ad_title: str | None
    creative: LinearCreative
    duration: Fraction
    media: MediaFile | Mezzanine
    impressions: list[str]
    errors: list[str]
    tracking: dict[str, list[Tracking]]
    universal_ad_id: UniversalAdId
    wrapper_urls: list[str] = field(default_factory=list)
    ad_serving_id: str | None = None


@dataclass(frozen=True)
class ErrorReport:
    """Error URLs to fire with ``[ERRORCODE]`` = ``code``. ``urls`` may be empty
    (a failed top-level ad request, an empty no-fill without ``<Error>``)."""

    urls: list[str]
    code: int
    reason: str
    ad_id: str | None = None


@dataclass(frozen=True)
class Resolution:
    """The ads to play, in order, and the errors to report."""

    ads: list[ResolvedAd]
    errors: list[ErrorReport]


@dataclass(frozen=True)
class _Chain:
    """What the wrappers above an ad contribute to it."""

    impressions: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    tracking: tuple[Tracking, ...] = ()
    urls: tuple[str, ...] = ()
    follow_additional_wrappers: bool = True

    @property
    def depth(self) -> int:
        return len(self.urls)

    def through(self, wrapper: Wrapper, target: str) -> _Chain:
        return _Chain(
            impressions=self.impressions + tuple(wrapper.impressions),
            errors=self.errors + tuple(wrapper.errors),
            tracking=self.tracking + tuple(t for ts in wrapper.tracking.values() for t in ts),
            urls=self.urls + (target,),
            follow_additional_wrappers=wrapper.follow_additional_wrappers is not False,
        )


@dataclass(frozen=True)
class _Context:
    fetch: Fetch
    max_depth: int
    macros: Mapping[str, MacroValue]
    prefer: Literal["mezzanine", "media_file"]
    max_bytes: int


async def resolve(
    source: str | VastResponse,
    fetch: Fetch,
    max_depth: int = 5,
    *,
    base_url: str = "",
    macros: Mapping[str, MacroValue] | None = None,
    prefer: Literal["mezzanine", "media_file"] = "mezzanine",
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> Resolution:
    """Follow Wrapper chains down to InLine ads and merge every level's trackers.

    ``source`` is an ad request URL (fetched with ``fetch``) or a parsed
    response (``base_url`` then resolves its relative VASTAdTagURIs).
    ``fetch(url) -> bytes`` does the IO and enforces the network policy
    (schemes, hosts, private addresses, size, time: DESIGN.md "Security"); it
    signals failure by raising (``TimeoutError`` or anything else: both are a
    301, "URI unavailable or timed out"). ``macros`` are expanded in every
    VASTAdTagURI before it is fetched (ad requests are per cohort: no device ids).

    ``max_depth`` is the most Wrappers one chain may contain; the next one is a
    302 without a fetch. Relative VASTAdTagURIs resolve against the document
    that holds them.

    Pod rules (VAST 4.x "Ad Pods", Wrapper attributes):

    - a response with a pod plays the pod in ``sequence`` order; a pod ad that
      yields nothing is replaced by the next unused stand-alone (buffet) ad,
      except a Wrapper with ``fallbackOnNoAd="false"`` (the spec: "move on to
      the next Ad in a Pod");
    - a response with only stand-alone ads plays them all, in document order:
      the break fill policy keeps those that fit;
    - under a Wrapper with ``allowMultipleAds="false"`` only one ad is taken:
      the first stand-alone ad, else (a deviation that keeps fill where servers
      mark a single ad ``sequence="1"``) the first pod ad. An absent attribute
      is not a restriction;
    - ``followAdditionalWrappers="false"``: a Wrapper in the target response is
      refused with 302.

    A failed top-level request (unreachable, not VAST) is reported, not
    raised: one ``ErrorReport`` with no URLs and its code (301 for a fetch
    failure, 100-102 for the document). Each failing ad yields an
    ``ErrorReport`` with the Error URLs of its whole
    chain (wrappers and InLine); an empty response after a wrapper is a 303
    with the wrappers' and the empty response's root Error URLs; an empty
    top-level response with root ``<Error>`` URLs is reported as 303 (no-fill).
    """
    context = _Context(fetch, max_depth, dict(macros or {}), prefer, max_bytes)
    reports: list[ErrorReport] = []
    if isinstance(source, VastResponse):
        response, url = source, base_url
    else:
        url = source.strip()
        try:
            response = parse_vast(await _fetch(context, url), max_bytes=max_bytes)
        except VastError as exc:
            return Resolution([], [ErrorReport([], exc.code, f"ad request {url}: {exc}")])
    ads = await _resolve_response(response, url, _Chain(), context, reports)
    return Resolution(ads, reports)


async def _fetch(context: _Context, url: str) -> bytes:
    target = expand_macros(url, context.macros) if context.macros else url
    try:
        return await context.fetch(target)
    except VastError:
        raise
    except TimeoutError as exc:
        raise VastWrapperTimeoutError(f"timed out fetching {target}") from exc
    except Exception as exc:
        # The caller's fetcher may raise anything; the spec files every
        # "URI unavailable" case under 301.
        raise VastWrapperTimeoutError(f"fetching {target} failed: {exc!r}") from exc


async def _resolve_response(
    response: VastResponse,
    url: str,
    chain: _Chain,
    context: _Context,
    reports: list[ErrorReport],
    *,
    single: bool = False,
) -> list[ResolvedAd]:
    for bad in response.rejected:
        reports.append(
            ErrorReport(list(chain.errors) + bad.error_urls, bad.code, bad.reason, bad.id)
        )
    if not response.ads:
        if chain.depth:
            reason = f"no ads in {url} after {chain.depth} wrapper(s)"
            reports.append(ErrorReport(list(chain.errors) + response.errors, 303, reason))
        elif response.errors:
            reports.append(ErrorReport(list(response.errors), 303, f"no ads in {url} (no-fill)"))
        return []

    pod, buffet = response.pod, response.buffet
    if single:
        pod, buffet = [], (buffet[:1] or pod[:1])

    # Ads resolve concurrently (a pod's wrapper chains are fetched in parallel);
    # each gathers its own reports, merged in ad order so the result is stable.
    async def one(ad: Ad) -> tuple[list[ResolvedAd], list[ErrorReport]]:
        own: list[ErrorReport] = []
        return await _resolve_ad(ad, url, chain, context, own), own

    if not pod:
        played: list[ResolvedAd] = []
        for group, own in await asyncio.gather(*map(one, buffet)):
            played.extend(group)
            reports.extend(own)
        return played

    spare = iter(buffet)
    played = []
    for ad, (group, own) in zip(pod, await asyncio.gather(*map(one, pod)), strict=True):
        reports.extend(own)
        if group:
            played.extend(group)
            continue
        if ad.wrapper is not None and ad.wrapper.fallback_on_no_ad is False:
            continue
        for standby in spare:
            group, own = await one(standby)
            reports.extend(own)
            if group:
                played.extend(group)
                break
    return played


async def _resolve_ad(
    ad: Ad, url: str, chain: _Chain, context: _Context, reports: list[ErrorReport]
) -> list[ResolvedAd]:
    if ad.inline is not None:
        try:
            return [_build(ad, ad.inline, chain, context)]
        except VastError as exc:
            urls = list(chain.errors) + ad.inline.errors
            reports.append(ErrorReport(urls, exc.code, str(exc), ad.id))
            return []
    assert ad.wrapper is not None  # parse_vast guarantees one of the two
    wrapper = ad.wrapper
    target = urljoin(url, wrapper.vast_ad_tag_uri) if url else wrapper.vast_ad_tag_uri
    inner = chain.through(wrapper, target)
    try:
        if chain.depth and not chain.follow_additional_wrappers:
            raise VastWrapperLimitError(
                f'wrapper {ad.id!r} under followAdditionalWrappers="false" (from {url})'
            )
        if inner.depth > context.max_depth:
            raise VastWrapperLimitError(
                f"wrapper {ad.id!r} would be wrapper number {inner.depth} "
                f"(limit {context.max_depth})"
            )
        response = parse_vast(await _fetch(context, target), max_bytes=context.max_bytes)
    except VastError as exc:
        reports.append(ErrorReport(list(inner.errors), exc.code, str(exc), ad.id))
        return []
    return await _resolve_response(
        response, target, inner, context, reports, single=wrapper.allow_multiple_ads is False
    )


def _build(ad: Ad, inline: InLine, chain: _Chain, context: _Context) -> ResolvedAd:
    if not inline.creatives:
        if inline.skipped:
            first = inline.skipped[0]
            raise VastUnsupportedAdError(
                f"ad {ad.id!r}: creative {first.creative_id!r} skipped: {first.reason}", first.code
            )
        raise VastUnsupportedAdError(f"ad {ad.id!r} has no Linear creative", 201)
    # Several Linear creatives in one InLine: the first by creative sequence plays.
    ranked = sorted(
        enumerate(inline.creatives),
        key=lambda item: (item[1].sequence if item[1].sequence is not None else math.inf, item[0]),
    )
    creative = ranked[0][1]
    media = choose_media_file(creative, context.prefer)
    tracking: dict[str, list[Tracking]] = {}
    for tracker in (*chain.tracking, *creative.tracking):
        tracking.setdefault(tracker.event, []).append(tracker.resolved(creative.duration))
    return ResolvedAd(
        ad_id=ad.id,
        sequence=ad.sequence,
        ad_system=inline.ad_system,
        ad_title=inline.ad_title,
        creative=creative,
        duration=creative.duration,
        media=media,
        impressions=list(chain.impressions) + inline.impressions,
        errors=list(chain.errors) + inline.errors,
        tracking=tracking,
        universal_ad_id=creative.universal_ad_id,
        wrapper_urls=list(chain.urls),
        ad_serving_id=inline.ad_serving_id,
    )
