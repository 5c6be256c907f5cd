"""stitcher.vast against the shared VAST corpus, hostile XML, wrapper chains and macros.

Every file under ``../shared/corpus/public/vast`` is a parametrised case with the
outcome ``public/INDEX.md`` (section C) describes, compared as a whole summary.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stitcher.vast import (
    Ad,
    LinearCreative,
    MacroValue,
    MediaFile,
    Mezzanine,
    Resolution,
    Tracking,
    VastError,
    VastForbiddenXmlError,
    VastNoSupportedMediaError,
    VastParseError,
    VastResponse,
    VastSchemaError,
    VastVersionError,
    choose_media_file,
    expand_macros,
    expand_template,
    format_macros,
    macro_template,
    parse_timecode,
    parse_vast,
    parse_vmap,
    resolve,
)

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus"
VAST_DIR = CORPUS / "public" / "vast"
CHAIN_DIR = VAST_DIR / "dailymotion_chain"


def require(path: Path) -> Path:
    """The corpus path, or skip (fail when CI is set) with the reason."""
    if path.exists():
        return path
    reason = f"shared corpus not found at {path.resolve()} (expected ../shared/corpus)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


Fetch = Callable[[str], Awaitable[bytes]]


def offline_fetch(root: Path) -> tuple[Fetch, list[str]]:
    """A fetcher serving file:// URLs under ``root``; anything else is unreachable."""
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        parsed = urlparse(url)
        path = Path(unquote(parsed.path)).resolve()
        if parsed.scheme != "file" or not path.is_relative_to(root.resolve()):
            raise ConnectionError(f"offline test: {url} is not reachable")
        return path.read_bytes()

    return fetch, fetched


def dict_fetch(documents: dict[str, str | bytes]) -> tuple[Fetch, list[str]]:
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        if url not in documents:
            raise ConnectionError(f"no document at {url}")
        body = documents[url]
        return body.encode() if isinstance(body, str) else body

    return fetch, fetched


# --------------------------------------------------------------------------- summaries


def summarize_creative(creative: LinearCreative) -> dict[str, Any]:
    return {
        "id": creative.id,
        "ad_id": creative.ad_id,
        "duration": str(creative.duration),
        "media": [
            (m.type, m.width, m.height, m.bitrate, m.api_framework) for m in creative.media_files
        ],
        "mezzanines": [m.uri for m in creative.mezzanines],
        "universal_ad_ids": [(u.registry, u.value) for u in creative.universal_ad_ids],
        "tracking": [
            (t.event, None if t.offset is None else str(t.offset)) for t in creative.tracking
        ],
        "click_through": creative.click_through,
    }


def summarize_ad(ad: Ad) -> dict[str, Any]:
    if ad.inline is not None:
        return {
            "id": ad.id,
            "sequence": ad.sequence,
            "impressions": ad.inline.impressions,
            "errors": ad.inline.errors,
            "creatives": [summarize_creative(c) for c in ad.inline.creatives],
            "skipped": [(s.creative_id, s.code) for s in ad.inline.skipped],
        }
    assert ad.wrapper is not None
    wrapper = ad.wrapper
    return {
        "id": ad.id,
        "sequence": ad.sequence,
        "wrapper": wrapper.vast_ad_tag_uri,
        "impressions": wrapper.impressions,
        "errors": wrapper.errors,
        "tracking": {
            event: [(t.uri, t.offset_text) for t in trackers]
            for event, trackers in wrapper.tracking.items()
        },
        "flags": (
            wrapper.follow_additional_wrappers,
            wrapper.allow_multiple_ads,
            wrapper.fallback_on_no_ad,
        ),
    }


def summarize(response: VastResponse) -> dict[str, Any]:
    return {
        "version": response.version,
        "errors": response.errors,
        "ads": [summarize_ad(ad) for ad in response.ads],
        "rejected": [(r.id, r.code) for r in response.rejected],
    }


def summarize_resolution(resolution: Resolution) -> dict[str, Any]:
    return {
        "plays": [(ad.ad_id, str(ad.duration)) for ad in resolution.ads],
        "errors": [(report.code, report.urls) for report in resolution.errors],
    }


# --------------------------------------------------------------------------- expectations

QUARTILES = [
    ("start", None),
    ("firstQuartile", None),
    ("midpoint", None),
    ("thirdQuartile", None),
    ("complete", None),
]
IAB_3_MP4 = [
    ("video/mp4", 1280, 720, 2000, None),
    ("video/mp4", 854, 480, 1000, None),
    ("video/mp4", 640, 360, 600, None),
]
NO_FLAGS = (None, None, None)


def iab_inline(version: str, **creative: Any) -> dict[str, Any]:
    """The IAB 'iabtechlab video ad' 20001 family (VAST 4.0/4.1 samples)."""
    base = {
        "id": "5480",
        "ad_id": "2447226",
        "duration": "16",
        "media": IAB_3_MP4,
        "mezzanines": [],
        "universal_ad_ids": [("Ad-ID", "8465")],
        "tracking": [*QUARTILES, ("progress", "10")],
        "click_through": "https://iabtechlab.com",
    }
    base.update(creative)
    return {
        "version": version,
        "errors": [],
        "ads": [
            {
                "id": "20001",
                "sequence": 1,
                "impressions": [
                    "https://example.com/track/impression"
                    if version == "4.1"
                    else "http://example.com/track/impression"
                ],
                "errors": [
                    "https://example.com/error" if version == "4.1" else "http://example.com/error"
                ],
                "creatives": [base],
                "skipped": [],
            }
        ],
        "rejected": [],
    }


# Per corpus file: ("vast", summary) | ("vmap", break count) | ("error", exception, code),
# then what resolving it plays and reports (None: not a VAST response).
EXPECTED: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {
    "dailymotion_chain/empty-no-ad.xml": (
        ("vast", {"version": "4.3", "errors": ["http://example.com/empty-no-ad"], "ads": [],
                  "rejected": []}),
        {"plays": [], "errors": [(303, ["http://example.com/empty-no-ad"])]},
    ),
    "dailymotion_chain/inline-linear.xml": (
        ("vast", {
            "version": "4.3",
            "errors": [],
            "ads": [{
                "id": "20001",
                "sequence": None,
                "impressions": ["http://example.com/track/impression"],
                "errors": ["http://example.com/error"],
                "creatives": [{
                    "id": "5480",
                    "ad_id": None,
                    "duration": "16",
                    "media": [("video/mp4", 400, 300, 500, None)],
                    "mezzanines": [],
                    "universal_ad_ids": [],
                    # start carries offset="09:15:23" = 33323 s, kept as written
                    "tracking": [("start", "33323"), *QUARTILES[1:]],
                    "click_through": None,
                }],
                "skipped": [],
            }],
            "rejected": [],
        }),
        {"plays": [("20001", "16")], "errors": []},
    ),
    "dailymotion_chain/sample.xml": (
        ("vast", {
            "version": "4.3",
            "errors": [],
            "ads": [
                {
                    "id": "ad_id_0001",
                    "sequence": 1,
                    "impressions": [
                        "http://example.com/impression1_asset:[ASSETURI]_[CACHEBUSTING]",
                        "http://example.com/impression2_[random]",
                        "http://example.com/impression3_[RANDOM]",
                    ],
                    "errors": ["http://example.com/error_[ERRORCODE]"],
                    "creatives": [{
                        "id": "id130984",
                        "ad_id": "adId345690",
                        "duration": "90123/1000",
                        "media": [
                            ("video/mp4", 512, 288, 849, None),
                            ("application/javascript", 512, 288, None, "VPAID"),
                        ],
                        "mezzanines": ["http://example.com/linear-mezzanine.mp4"],
                        "universal_ad_ids": [("daily-motion-L1", "Linear-12345")],
                        "tracking": [
                            ("midpoint", None),
                            ("complete", None),
                            ("start", None),
                            ("firstQuartile", None),
                            ("close", None),
                            ("thirdQuartile", None),
                            ("progress", "30"),
                            ("progress", str(Fraction("90.123") * 60 / 100)),
                        ],
                        "click_through": "http://example.com/linear-clickthrough_adplayhead:"
                        "[ADPLAYHEAD]",
                    }],
                    "skipped": [],
                },
                {
                    # VPAID-only MediaFile and Duration "30" (not HH:MM:SS): not stitchable
                    "id": "ad_id_0002",
                    "sequence": None,
                    "impressions": ["http://example.com/impression1"],
                    "errors": [],
                    "creatives": [],
                    "skipped": [("id873421", 403)],
                },
            ],
            "rejected": [],
        }),
        # a pod of one; ad_id_0002 is a stand-alone (buffet) ad, unused since the pod plays
        {"plays": [("ad_id_0001", "90123/1000")], "errors": []},
    ),
    "dailymotion_chain/vpaid.xml": (
        ("vast", {"version": "4.3", "errors": [], "rejected": [], "ads": [{
            "id": "VPAID", "sequence": None, "impressions": [], "errors": [], "creatives": [],
            "skipped": [(None, 403)],
        }]}),
        {"plays": [], "errors": [(403, [])]},
    ),
    "dailymotion_chain/vpaid2.xml": (
        ("vast", {"version": "4.3", "errors": [], "rejected": [], "ads": [{
            "id": "preroll-1", "sequence": None, "impressions": [], "errors": [],
            "creatives": [], "skipped": [(None, 403)],
        }]}),
        {"plays": [], "errors": [(403, [])]},
    ),
    "dailymotion_chain/wrapper-a.xml": (
        ("vast", {"version": "4.3", "errors": [], "rejected": [], "ads": [
            {
                "id": "4321",
                "sequence": None,
                "wrapper": "wrapper-b.xml",
                "impressions": ["http://example.com/wrapperA-impression"],
                "errors": ["http://example.com/wrapperA-error"],
                # Linear trackers only (not the NonLinear start/complete)
                "tracking": {
                    "start": [
                        ("http://example.com/wrapperA-linear-start1", None),
                        ("http://example.com/wrapperA-linear-start2", None),
                    ],
                    "progress": [
                        ("http://example.com/wrapperA-linear-progress-30sec", "00:00:30"),
                        ("http://example.com/wrapperA-linear-progress-60%", "60%"),
                        ("http://example.com/wrapperA-linear-progress-90%", "90%"),
                    ],
                    "complete": [("http://example.com/wrapperA-linear-complete", None)],
                },
                "flags": NO_FLAGS,
            },
            {
                "id": "2032",
                "sequence": None,
                "wrapper": "vpaid.xml",
                "impressions": ["http://example.com/track/impression"],
                "errors": ["http://example.com/error"],
                "tracking": {},
                "flags": NO_FLAGS,
            },
        ]}),
        {
            "plays": [("ad_id_0001", "90123/1000")],
            "errors": [(403, ["http://example.com/error"])],  # 2032 resolves to VPAID only
        },
    ),
    "dailymotion_chain/wrapper-b.xml": (
        ("vast", {"version": "4.3", "errors": [], "rejected": [], "ads": [{
            "id": "1234",
            "sequence": None,
            "wrapper": "sample.xml",
            "impressions": [
                "http://example.com/wrapperB-impression1",
                "http://example.com/wrapperB-impression2",
            ],
            "errors": ["http://example.com/wrapperB-error"],
            "tracking": {
                "start": [("http://example.com/wrapperB-linear-start", None)],
                "progress": [
                    ("http://example.com/wrapperB-linear-progress-30sec", "00:00:30"),
                    ("http://example.com/wrapperB-linear-progress-60%", "60%"),
                ],
                "complete": [("http://example.com/wrapperB-linear-complete", None)],
            },
            "flags": NO_FLAGS,
        }]}),
        {"plays": [("ad_id_0001", "90123/1000")], "errors": []},
    ),
    "dailymotion_chain/wrapper-empty.xml": (
        ("vast", {"version": "4.3", "errors": [], "rejected": [], "ads": [{
            "id": None,
            "sequence": None,
            "wrapper": "empty-no-ad.xml",
            "impressions": ["http://example.com/wrapper-impression"],
            "errors": ["http://example.com/wrapper-empty_wrapper-error"],
            "tracking": {
                "start": [("http://example.com/wrapper-start", None)],
                "complete": [("http://example.com/wrapper-complete", None)],
            },
            "flags": NO_FLAGS,
        }]}),
        {
            "plays": [],
            "errors": [(303, [
                "http://example.com/wrapper-empty_wrapper-error",
                "http://example.com/empty-no-ad",
            ])],
        },
    ),
    "dailymotion_invalid_not_xml.xml": (("error", VastParseError, 100), None),
    "eyevinn_empty_vast40.xml": (
        ("vast", {"version": "4.0", "errors": [], "ads": [], "rejected": []}),
        {"plays": [], "errors": []},  # no-fill, nothing to report
    ),
    "eyevinn_empty_vmap.xml": (("vmap", 0), None),
    "eyevinn_test_vast_3_mediafiles.xml": (
        ("vast", {"version": "4.0", "errors": [], "rejected": [], "ads": [{
            "id": "test-ad_1",
            "sequence": None,
            "impressions": ["about:blank"],
            "errors": [],
            "creatives": [{
                "id": "from-test-adserver",
                "ad_id": "a-unique-ID",
                "duration": "16",
                "media": IAB_3_MP4,
                "mezzanines": [],
                "universal_ad_ids": [],
                "tracking": QUARTILES,
                "click_through": None,
            }],
            "skipped": [],
        }]}),
        {"plays": [("test-ad_1", "16")], "errors": []},
    ),
    "iab_vast2_inline_linear.xml": (
        ("vast", {"version": "2.0", "errors": [], "rejected": [], "ads": [{
            "id": "preroll-1",
            "sequence": None,
            "impressions": [
                ("http://b.scorecardresearch.com/b?C1=1&C2=6000003&C3=0000000200500000197000000"
                "&C4=us&C7=http://www.scanscout.com&C8=scanscout.com&C9=http://www.scanscout.com"
                "&C10=xn&rn=-103217130")
            ],
            "errors": [],
            "creatives": [{
                "id": None,
                "ad_id": None,
                "duration": "30",
                "media": [("video/mp4", 600, 396, 496, None)],
                "mezzanines": [],
                "universal_ad_ids": [],
                "tracking": [],
                "click_through": "http://www.target.com",  # spaces inside CDATA trimmed
            }],
            "skipped": [],
        }]}),
        {"plays": [("preroll-1", "30")], "errors": []},
    ),
    "iab_vast2_wrapper_linear_tremor.xml": (
        ("vast", {"version": "2.0", "errors": [], "rejected": [], "ads": [{
            "id": "602833",
            "sequence": None,
            "wrapper": "http://demo.tremormedia.com/proddev/vast/vast_inline_linear.xml",
            "impressions": ["http://example.com/trackingurl/wrapper/impression"],
            "errors": ["http://example.com/wrapper/error"],
            "tracking": {
                event: [(f"http://example.com/trackingurl/wrapper/{event}", None)]
                for event in (
                    "creativeView", "start", "midpoint", "firstQuartile", "thirdQuartile",
                    "complete", "mute", "unmute", "pause", "resume", "fullscreen",
                )
            },
            "flags": NO_FLAGS,
        }]}),
        # the target is on the internet: offline, resolution fails with 301
        {"plays": [], "errors": [(301, ["http://example.com/wrapper/error"])]},
    ),
    "iab_vast3_inline_linear.xml": (
        ("vast", {"version": "3.0", "errors": [], "rejected": [], "ads": [{
            "id": "20001",
            "sequence": None,
            "impressions": ["http://example.com/track/impression"],
            "errors": ["http://example.com/error"],
            "creatives": [{
                "id": "5480",
                "ad_id": None,
                "duration": "16",
                "media": [("video/mp4", 400, 300, 500, None)],
                "mezzanines": [],
                "universal_ad_ids": [],
                "tracking": [*QUARTILES, ("progress", "10")],
                "click_through": None,
            }],
            "skipped": [],
        }]}),
        {"plays": [("20001", "16")], "errors": []},
    ),
    "iab_vast3_wrapper.xml": (
        ("vast", {"version": "3.0", "errors": [], "rejected": [], "ads": [{
            "id": "20011",
            "sequence": None,
            "wrapper": "https://raw.githubusercontent.com/InteractiveAdvertisingBureau/"
            "VAST_Samples/master/VAST%203.0%20Samples/Inline_Companion_Tag-test.xml",
            "impressions": ["http://example.com/track/impression"],
            "errors": ["http://example.com/error"],
            "tracking": {},
            "flags": NO_FLAGS,
        }]}),
        {"plays": [], "errors": [(301, ["http://example.com/error"])]},
    ),
    "iab_vast41_inline_simple.xml": (
        ("vast", iab_inline(
            "4.1", tracking=[("start", None), ("progress", "10"), *QUARTILES[1:]]
        )),
        {"plays": [("20001", "16")], "errors": []},
    ),
    "iab_vast41_wrapper.xml": (
        ("vast", {"version": "4.1", "errors": [], "rejected": [], "ads": [{
            "id": "20011",
            "sequence": 1,
            "wrapper": "https://raw.githubusercontent.com/InteractiveAdvertisingBureau/"
            "VAST_Samples/master/VAST%204.0%20Samples/Inline_Companion_Tag-test.xml",
            "impressions": ["https://example.com/track/impression"],
            "errors": ["https://example.com/error"],
            "tracking": {},
            "flags": (False, True, False),
        }]}),
        {"plays": [], "errors": [(301, ["https://example.com/error"])]},
    ),
    "iab_vast4_event_tracking.xml": (
        ("vast", iab_inline("4.0")),
        {"plays": [("20001", "16")], "errors": []},
    ),
    "iab_vast4_ssai_mezzanine.xml": (
        # UniversalAdId idValue="8465" with text "1234": VAST 4.0's attribute wins
        ("vast", iab_inline(
            "4.0",
            mezzanines=[
                ("http://pilot.iabtechlab.com/beacon?type=complete"
                "&imprid=s5-ea2f7f298e28c0c98374491aec3dfeb1&ts=4235")
            ],
        )),
        {"plays": [("20001", "16")], "errors": []},
    ),
}  # fmt: skip


def corpus_cases() -> list[str]:
    if VAST_DIR.is_dir():
        return sorted(p.relative_to(VAST_DIR).as_posix() for p in VAST_DIR.rglob("*.xml"))
    return sorted(EXPECTED)  # each case then skips (or fails under CI) in require()


def test_every_corpus_file_has_an_expectation() -> None:
    require(VAST_DIR)
    assert corpus_cases() == sorted(EXPECTED)


@pytest.mark.parametrize("name", corpus_cases())
def test_corpus_parse(name: str) -> None:
    data = require(VAST_DIR / name).read_bytes()
    kind, *expected = EXPECTED[name][0]
    if kind == "error":
        error_type, code = expected
        with pytest.raises(error_type) as caught:
            parse_vast(data)
        assert caught.value.code == code
    elif kind == "vmap":
        assert len(parse_vmap(data).breaks) == expected[0]
        with pytest.raises(VastSchemaError):  # a VMAP is not a VAST response
            parse_vast(data)
    else:
        assert summarize(parse_vast(data)) == expected[0]


@pytest.mark.parametrize("name", [n for n in corpus_cases() if EXPECTED[n][1] is not None])
async def test_corpus_resolution(name: str) -> None:
    path = require(VAST_DIR / name)
    fetch, _ = offline_fetch(VAST_DIR)
    resolution = await resolve(path.resolve().as_uri(), fetch)
    assert summarize_resolution(resolution) == EXPECTED[name][1]


# --------------------------------------------------------------------------- the dailymotion chain


async def test_wrapper_chain_merges_every_level() -> None:
    """wrapper-a -> wrapper-b -> sample.xml: each party's URLs, outermost first."""
    start = require(CHAIN_DIR / "wrapper-a.xml").resolve()
    fetch, fetched = offline_fetch(VAST_DIR)
    resolution = await resolve(start.as_uri(), fetch)

    chain = start.parent
    # the two buffet wrappers resolve concurrently: compare the set of fetches
    assert sorted(fetched) == sorted(
        (chain / name).as_uri()
        for name in ("wrapper-a.xml", "wrapper-b.xml", "sample.xml", "vpaid.xml")
    )
    [ad] = resolution.ads
    assert ad.ad_id == "ad_id_0001"
    assert ad.sequence == 1
    assert ad.duration == Fraction("90.123")
    assert ad.wrapper_urls == [(chain / "wrapper-b.xml").as_uri(), (chain / "sample.xml").as_uri()]
    assert ad.media == Mezzanine(
        uri="http://example.com/linear-mezzanine.mp4",
        delivery="progressive",
        type="video/mp4",
        width=1080,
        height=720,
        codec="h264",
        id="mezzanine-id-165468451",
        file_size=700,
    )
    assert ad.universal_ad_id.registry == "daily-motion-L1"
    assert ad.universal_ad_id.value == "Linear-12345"
    assert ad.impressions == [
        "http://example.com/wrapperA-impression",
        "http://example.com/wrapperB-impression1",
        "http://example.com/wrapperB-impression2",
        "http://example.com/impression1_asset:[ASSETURI]_[CACHEBUSTING]",
        "http://example.com/impression2_[random]",
        "http://example.com/impression3_[RANDOM]",
    ]
    assert ad.errors == [
        "http://example.com/wrapperA-error",
        "http://example.com/wrapperB-error",
        "http://example.com/error_[ERRORCODE]",
    ]
    tracking = {event: [(t.uri, t.offset) for t in ts] for event, ts in ad.tracking.items()}
    sixty_percent = Fraction("90.123") * Fraction(60, 100)
    assert tracking == {
        "start": [
            ("http://example.com/wrapperA-linear-start1", None),
            ("http://example.com/wrapperA-linear-start2", None),
            ("http://example.com/wrapperB-linear-start", None),
            ("http://example.com/linear-start", None),
        ],
        # wrapper percentages resolved against the InLine's 90.123 s
        "progress": [
            ("http://example.com/wrapperA-linear-progress-30sec", Fraction(30)),
            ("http://example.com/wrapperA-linear-progress-60%", sixty_percent),
            ("http://example.com/wrapperA-linear-progress-90%", Fraction("90.123") * 90 / 100),
            ("http://example.com/wrapperB-linear-progress-30sec", Fraction(30)),
            ("http://example.com/wrapperB-linear-progress-60%", sixty_percent),
            ("http://example.com/linear-progress-30sec", Fraction(30)),
            ("http://example.com/linear-progress-60%", sixty_percent),
        ],
        "complete": [
            ("http://example.com/wrapperA-linear-complete", None),
            ("http://example.com/wrapperB-linear-complete", None),
            ("http://example.com/linear-complete", None),
        ],
        "midpoint": [("http://example.com/linear-midpoint", None)],
        "firstQuartile": [("http://example.com/linear-firstQuartile", None)],
        "close": [("http://example.com/linear-close", None)],
        "thirdQuartile": [("http://example.com/linear-thirdQuartile", None)],
    }
    [report] = resolution.errors
    assert (report.code, report.urls, report.ad_id) == (403, ["http://example.com/error"], "VPAID")


async def test_wrapper_depth_limit() -> None:
    start = require(CHAIN_DIR / "wrapper-a.xml").resolve()
    fetch, fetched = offline_fetch(VAST_DIR)
    resolution = await resolve(start.as_uri(), fetch, max_depth=1)
    assert resolution.ads == []
    # wrapper-b would be the second wrapper: 302 without fetching sample.xml; both
    # wrappers' Error URLs are fired. Ad 2032 (one wrapper) reaches its VPAID InLine.
    assert [(r.code, r.urls) for r in resolution.errors] == [
        (302, ["http://example.com/wrapperA-error", "http://example.com/wrapperB-error"]),
        (403, ["http://example.com/error"]),
    ]
    assert (start.parent / "sample.xml").as_uri() not in fetched

    fetch, _ = offline_fetch(VAST_DIR)
    exact = await resolve(start.as_uri(), fetch, max_depth=2)
    assert [ad.ad_id for ad in exact.ads] == ["ad_id_0001"]


WRAPPER = """<VAST version="4.2"><Ad id="{id}"><Wrapper {attrs}>
<AdSystem>t</AdSystem><VASTAdTagURI>{target}</VASTAdTagURI>
<Error>http://err/{id}?c=[ERRORCODE]</Error><Impression>http://imp/{id}</Impression>
<Creatives><Creative><Linear><TrackingEvents>
<Tracking event="start">http://start/{id}</Tracking>
</TrackingEvents></Linear></Creative></Creatives>
</Wrapper></Ad></VAST>"""


def inline_ad(ad_id: str, seconds: int, sequence: int | None = None, *, vpaid: bool = False) -> str:
    seq = "" if sequence is None else f' sequence="{sequence}"'
    media = (
        '<MediaFile delivery="progressive" type="application/javascript" apiFramework="VPAID">'
        "http://m/vpaid.js</MediaFile>"
        if vpaid
        else '<MediaFile delivery="progressive" type="video/mp4" width="640" height="360">'
        f"http://m/{ad_id}.mp4</MediaFile>"
    )
    return (
        f'<Ad id="{ad_id}"{seq}><InLine><AdSystem>t</AdSystem><AdTitle>{ad_id}</AdTitle>'
        f"<Error>http://err/{ad_id}</Error><Impression>http://imp/{ad_id}</Impression>"
        f"<Creatives><Creative><Linear><Duration>00:00:{seconds:02d}</Duration>"
        f"<MediaFiles>{media}</MediaFiles></Linear></Creative></Creatives></InLine></Ad>"
    )


def vast(*ads: str) -> str:
    return f'<VAST version="4.2">{"".join(ads)}</VAST>'


async def test_wrapper_loop_stops_at_default_depth() -> None:
    loop = WRAPPER.format(id="w", attrs="", target="http://ads/loop")
    fetch, fetched = dict_fetch({"http://ads/loop": loop})
    resolution = await resolve("http://ads/loop", fetch)
    assert resolution.ads == []
    [report] = resolution.errors
    assert report.code == 302
    assert report.urls == ["http://err/w?c=[ERRORCODE]"] * 6  # five wrappers + the refused sixth
    assert len(fetched) == 6  # the top-level request and five wrapper targets


async def test_wrapper_target_failures_report_codes() -> None:
    async def slow(url: str) -> bytes:
        raise TimeoutError

    parsed = parse_vast(WRAPPER.format(id="w", attrs="", target="http://ads/x"))
    timed_out = await resolve(parsed, slow)
    assert [(r.code, r.urls) for r in timed_out.errors] == [(301, ["http://err/w?c=[ERRORCODE]"])]

    for body, code in [
        ("{ vast: null }", 100),
        ('<!DOCTYPE VAST SYSTEM "http://evil/x.dtd"><VAST version="4.2"/>', 100),
        ("<VideoAdServingTemplate/>", 102),
        ("<html/>", 101),
        ('<VAST version="4.2"/>', 303),
    ]:
        fetch, _ = dict_fetch({"http://ads/x": body})
        resolution = await resolve(parsed, fetch)
        assert resolution.ads == []
        assert [(r.code, r.urls) for r in resolution.errors] == [
            (code, ["http://err/w?c=[ERRORCODE]"])
        ], body


async def test_wrapper_merges_with_inline_when_target_resolves() -> None:
    """The Tremor wrapper's trackers join the InLine's once its target is reachable."""
    wrapper = require(VAST_DIR / "iab_vast2_wrapper_linear_tremor.xml").read_bytes()
    inline = require(VAST_DIR / "iab_vast3_inline_linear.xml").read_bytes()
    fetch, _ = dict_fetch(
        {"http://demo.tremormedia.com/proddev/vast/vast_inline_linear.xml": inline}
    )
    resolution = await resolve(parse_vast(wrapper), fetch)
    [ad] = resolution.ads
    assert ad.impressions == [
        "http://example.com/trackingurl/wrapper/impression",
        "http://example.com/track/impression",
    ]
    assert ad.errors == ["http://example.com/wrapper/error", "http://example.com/error"]
    assert [t.uri for t in ad.tracking["start"]] == [
        "http://example.com/trackingurl/wrapper/start",
        "http://example.com/tracking/start",
    ]
    assert [t.uri for t in ad.tracking["mute"]] == ["http://example.com/trackingurl/wrapper/mute"]
    assert [t.offset for t in ad.tracking["progress"]] == [Fraction(10)]
    assert ad.media == MediaFile(
        uri="https://iab-publicfiles.s3.amazonaws.com/vast/VAST-4.0-Short-Intro.mp4",
        delivery="progressive",
        type="video/mp4",
        width=400,
        height=300,
        bitrate=500,
        codec="0",
        api_framework=None,
        id="5241",
    )


async def test_follow_additional_wrappers_false_refuses_a_second_wrapper() -> None:
    top = WRAPPER.format(id="w1", attrs='followAdditionalWrappers="false"', target="http://a/2")
    second = WRAPPER.format(id="w2", attrs="", target="http://a/3")
    fetch, fetched = dict_fetch({"http://a/2": second, "http://a/3": vast(inline_ad("x", 5))})
    resolution = await resolve(parse_vast(top), fetch)
    assert resolution.ads == []
    assert [(r.code, r.urls) for r in resolution.errors] == [
        (302, ["http://err/w1?c=[ERRORCODE]", "http://err/w2?c=[ERRORCODE]"])
    ]
    assert fetched == ["http://a/2"]


async def test_pod_order_and_buffet_fallback() -> None:
    document = vast(
        inline_ad("buffet-1", 7),
        inline_ad("second", 15, sequence=2),
        inline_ad("broken", 10, sequence=3, vpaid=True),
        inline_ad("first", 10, sequence=1),
        inline_ad("buffet-2", 6),
    )
    response = parse_vast(document)
    assert [ad.id for ad in response.pod] == ["first", "second", "broken"]
    assert [ad.id for ad in response.buffet] == ["buffet-1", "buffet-2"]
    fetch, fetched = dict_fetch({})
    resolution = await resolve(response, fetch)
    # the VPAID-only pod ad is replaced by the first stand-alone ad
    assert [(ad.ad_id, ad.duration) for ad in resolution.ads] == [
        ("first", Fraction(10)),
        ("second", Fraction(15)),
        ("buffet-1", Fraction(7)),
    ]
    assert [(r.code, r.urls, r.ad_id) for r in resolution.errors] == [
        (403, ["http://err/broken"], "broken")
    ]
    assert fetched == []


async def test_buffet_only_response_plays_every_ad_in_document_order() -> None:
    resolution = await resolve(
        parse_vast(vast(inline_ad("b", 5), inline_ad("a", 6))), dict_fetch({})[0]
    )
    assert [ad.ad_id for ad in resolution.ads] == ["b", "a"]


async def test_allow_multiple_ads_false_takes_one_ad() -> None:
    top = WRAPPER.format(id="w", attrs='allowMultipleAds="false"', target="http://a/pod")
    pod = vast(inline_ad("p2", 5, sequence=2), inline_ad("p1", 5, sequence=1), inline_ad("s", 4))
    fetch, _ = dict_fetch({"http://a/pod": pod})
    resolution = await resolve(parse_vast(top), fetch)
    assert [ad.ad_id for ad in resolution.ads] == ["s"]  # the first stand-alone ad
    assert resolution.ads[0].impressions == ["http://imp/w", "http://imp/s"]

    fetch, _ = dict_fetch({"http://a/pod": vast(inline_ad("p2", 5, 2), inline_ad("p1", 5, 1))})
    only_pod = await resolve(parse_vast(top), fetch)
    assert [ad.ad_id for ad in only_pod.ads] == ["p1"]


async def test_wrapper_uri_macros_expanded_before_fetch() -> None:
    top = WRAPPER.format(id="w", attrs="", target="http://a/vast?cb=[CACHEBUSTING]&amp;x=[random]")
    fetch, fetched = dict_fetch({"http://a/vast?cb=00000042&x=[random]": vast(inline_ad("i", 5))})
    resolution = await resolve(parse_vast(top), fetch, macros={"CACHEBUSTING": 42})
    assert [ad.ad_id for ad in resolution.ads] == ["i"]
    assert fetched == ["http://a/vast?cb=00000042&x=[random]"]


async def test_top_level_request_failure_is_reported_not_raised() -> None:
    async def down(url: str) -> bytes:
        raise ConnectionRefusedError(url)

    resolution = await resolve("http://ads/vast", down)
    assert resolution.ads == []
    assert [(r.code, r.urls) for r in resolution.errors] == [(301, [])]


async def test_pod_wrappers_resolve_concurrently() -> None:
    """Two slow wrapper targets in one pod are fetched at the same time."""
    both_started = asyncio.Event()
    started: list[str] = []

    async def fetch(url: str) -> bytes:
        started.append(url)
        if len(started) == 2:
            both_started.set()
        await asyncio.wait_for(both_started.wait(), 1)
        return vast(inline_ad(url.rsplit("/", 1)[-1], 5)).encode()

    pod = vast(
        WRAPPER.format(id="w1", attrs="", target="http://a/one")
        .removeprefix('<VAST version="4.2">')
        .removesuffix("</VAST>")
        .replace('<Ad id="w1">', '<Ad id="w1" sequence="1">'),
        WRAPPER.format(id="w2", attrs="", target="http://a/two")
        .removeprefix('<VAST version="4.2">')
        .removesuffix("</VAST>")
        .replace('<Ad id="w2">', '<Ad id="w2" sequence="2">'),
    )
    resolution = await resolve(parse_vast(pod), fetch)
    assert [ad.ad_id for ad in resolution.ads] == ["one", "two"]


# --------------------------------------------------------------------------- hostile XML

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<VAST version="4.2"><Ad id="x"><InLine><AdTitle>&lol9;</AdTitle></InLine></Ad></VAST>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE VAST [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<VAST version="4.2"><Ad id="x"><InLine><AdTitle>&xxe;</AdTitle></InLine></Ad></VAST>"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE VAST SYSTEM "http://attacker.example/vast.dtd">
<VAST version="4.2"/>"""

PARAMETER_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE VAST [<!ENTITY % remote SYSTEM "http://attacker.example/x.dtd"> %remote;]>
<VAST version="4.2"/>"""


@pytest.mark.parametrize(
    "document",
    [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "xxe", "external-dtd", "parameter-entity"],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_hostile_xml_is_refused(document: str, as_bytes: bool) -> None:
    with pytest.raises(VastForbiddenXmlError) as caught:
        parse_vast(document.encode() if as_bytes else document)
    assert caught.value.code == 100
    with pytest.raises(VastForbiddenXmlError):
        parse_vmap(document)


def test_undeclared_entity_is_a_parse_error() -> None:
    with pytest.raises(VastParseError) as caught:
        parse_vast('<VAST version="4.2"><Error>&xxe;</Error></VAST>')
    assert caught.value.code == 100


def test_oversized_document_is_refused_before_parsing() -> None:
    document = '<VAST version="4.2">' + "<!-- padding -->" * 1000 + "</VAST>"
    with pytest.raises(VastParseError):
        parse_vast(document, max_bytes=1000)
    assert parse_vast(document).ads == []


@pytest.mark.parametrize(
    ("document", "error", "code"),
    [
        ("<VideoAdServingTemplate><Ad/></VideoAdServingTemplate>", VastVersionError, 102),
        ('<VAST version="1.0"/>', VastVersionError, 102),
        ('<VAST version="5.0"/>', VastVersionError, 102),
        ("<VAST/>", VastSchemaError, 101),
        ("<rss/>", VastSchemaError, 101),
        ("", VastParseError, 100),
        (b"\xff\xfe<\x00", VastParseError, 100),
    ],
)
def test_unsupported_documents(document: str | bytes, error: type[VastError], code: int) -> None:
    with pytest.raises(error) as caught:
        parse_vast(document)
    assert caught.value.code == code
    assert isinstance(caught.value, VastError)


def test_leading_bom_and_whitespace_are_tolerated() -> None:
    body = b'\xef\xbb\xbf\n  <?xml version="1.0" encoding="UTF-8"?><VAST version="3.0"/>'
    assert parse_vast(body).version == "3.0"


def test_namespaced_vast_parses_like_plain() -> None:
    plain = vast(inline_ad("n", 12, sequence=1))
    spaced = plain.replace("<VAST ", '<VAST xmlns="http://www.iab.com/VAST" ', 1)
    assert summarize(parse_vast(spaced)) == summarize(parse_vast(plain))


def test_broken_ads_are_rejected_without_losing_the_pod() -> None:
    document = vast(
        '<Ad id="empty" sequence="2"></Ad>',
        '<Ad id="nouri"><Wrapper><Error>http://err/nouri</Error></Wrapper></Ad>',
        inline_ad("ok", 10, sequence=1),
    )
    response = parse_vast(document)
    assert [ad.id for ad in response.ads] == ["ok"]
    assert [(r.id, r.code, r.error_urls) for r in response.rejected] == [
        ("empty", 101, []),
        ("nouri", 101, ["http://err/nouri"]),
    ]


# --------------------------------------------------------------------------- B21 (bugs corpus)


def bundle_file(bundle: Path, name: str) -> str:
    """One file of a ``#-- name --`` bundle (bugs/INDEX.md conventions)."""
    current, lines = None, []
    for line in bundle.read_text().splitlines():
        if line.startswith("#-- ") and line.endswith(" --"):
            current = line[4:-3]
            continue
        if current == name:
            lines.append(line)
    return "\n".join(lines)


def test_b21_declared_media_file_is_what_vast_says() -> None:
    """B21: the VAST declares 1920x1080 avc1.640028; probing the real file is the
    conditioner's job, so the parser must report the declaration faithfully."""
    text = bundle_file(require(CORPUS / "bugs" / "B21.txt"), "vast.xml")
    [ad] = parse_vast(text).ads
    assert ad.inline is not None
    [creative] = ad.inline.creatives
    assert creative.duration == 15
    assert choose_media_file(creative) == MediaFile(
        uri="https://media.example.invalid/cr77/mezz.mp4",
        delivery="progressive",
        type="video/mp4",
        width=1920,
        height=1080,
        bitrate=None,
        codec="avc1.640028",
        api_framework=None,
    )


# --------------------------------------------------------------------------- media choice


def creative_of(name: str) -> LinearCreative:
    response = parse_vast(require(VAST_DIR / name).read_bytes())
    inline = response.ads[0].inline
    assert inline is not None
    return inline.creatives[0]


def test_choose_media_file_prefers_mezzanine() -> None:
    creative = creative_of("iab_vast4_ssai_mezzanine.xml")
    assert choose_media_file(creative) == creative.mezzanines[0]
    best = choose_media_file(creative, prefer="media_file")
    assert isinstance(best, MediaFile)
    assert (best.id, best.width, best.height, best.bitrate) == ("5241", 1280, 720, 2000)


def test_choose_media_file_takes_the_largest_progressive_mp4() -> None:
    best = choose_media_file(creative_of("eyevinn_test_vast_3_mediafiles.xml"))
    assert isinstance(best, MediaFile)
    assert (best.width, best.height, best.bitrate) == (1280, 720, 2000)


def test_choose_media_file_never_picks_vpaid() -> None:
    creative = creative_of("dailymotion_chain/sample.xml")
    chosen = choose_media_file(creative, prefer="media_file")
    assert isinstance(chosen, MediaFile)
    assert chosen.uri == "http://example.com/linear-asset.mp4"


def test_choose_media_file_raises_403_when_nothing_is_stitchable() -> None:
    flash = MediaFile("http://m/a.swf", "progressive", "application/x-shockwave-flash",
                      300, 250, None, None, None)  # fmt: skip
    creative = LinearCreative(None, None, None, [], Fraction(5), [flash], [], [])
    with pytest.raises(VastNoSupportedMediaError) as caught:
        choose_media_file(creative)
    assert caught.value.code == 403


# --------------------------------------------------------------------------- time & macros


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:16", Fraction(16)),
        ("00:01:30.123", Fraction("90.123")),
        ("01:00:00.5", Fraction("3600.5")),
        ("00:00:15.015", Fraction("15.015")),
        ("30", None),
        ("", None),
        ("00:61:00", None),
    ],
)
def test_parse_timecode(text: str, seconds: Fraction | None) -> None:
    assert parse_timecode(text) == seconds


def test_tracking_percent_resolved_later() -> None:
    tracker = Tracking("progress", "http://p", None, "25%")
    assert tracker.resolved(Fraction(10)).offset == Fraction(5, 2)
    assert Tracking("start", "http://s").resolved(Fraction(10)).offset is None


def test_expand_macros_encodes_values() -> None:
    url = "http://example.com/impression1_asset:[ASSETURI]_[CACHEBUSTING]"
    assert (
        expand_macros(url, {"ASSETURI": "http://cdn/a b.mp4?x=1&y=2", "CACHEBUSTING": 1234})
        == "http://example.com/impression1_asset:http%3A%2F%2Fcdn%2Fa%20b.mp4%3Fx%3D1%26y%3D2"
        "_00001234"
    )


def test_expand_macros_time_values() -> None:
    url = "http://t/?ts=[TIMESTAMP]&cp=[CONTENTPLAYHEAD]&mp=[MEDIAPLAYHEAD]&ap=[ADPLAYHEAD]"
    values: dict[str, MacroValue] = {
        "TIMESTAMP": datetime(2016, 1, 17, 8, 15, 7, 127000, tzinfo=UTC),
        "CONTENTPLAYHEAD": Fraction("3723.5"),
        "MEDIAPLAYHEAD": Fraction("3723.5"),
        "ADPLAYHEAD": Fraction(0),
    }
    assert expand_macros(url, values) == (
        "http://t/?ts=2016-01-17T08%3A15%3A07.127%2B00%3A00"
        "&cp=01%3A02%3A03.500&mp=01%3A02%3A03.500&ap=00%3A00%3A00.000"
    )


def test_expand_macros_error_and_break_fields() -> None:
    url = (
        "http://e/?code=[ERRORCODE]&pos=[BREAKPOSITION]&ifa=[IFA]&ss=[SERVERSIDE]&v=[VASTVERSIONS]"
    )
    values = {"ERRORCODE": 303, "BREAKPOSITION": 2, "IFA": None, "SERVERSIDE": 1,
              "VASTVERSIONS": [2, 3, 4]}  # fmt: skip
    assert expand_macros(url, values) == "http://e/?code=303&pos=2&ifa=-1&ss=1&v=2,3,4"


def test_expand_macros_leaves_unknown_and_missing() -> None:
    url = "http://x/[random]_[RANDOM]_[CACHEBUSTING]_[ERRORCODE]_[lower]"
    assert expand_macros(url, {}) == url
    assert (
        expand_macros(url, {"RANDOM": 7})
        == "http://x/[random]_7_[CACHEBUSTING]_[ERRORCODE]_[lower]"
    )
    # missing= fills only spec macros; ad-server tokens ([random]) stay as written
    assert expand_macros(url, {"ERRORCODE": 100}, missing="-1") == (
        "http://x/[random]_[RANDOM]_-1_100_[lower]"
    )


def test_expand_macros_single_pass() -> None:
    assert expand_macros("[ASSETURI]", {"ASSETURI": "[ERRORCODE]", "ERRORCODE": 1}) == (
        "%5BERRORCODE%5D"
    )


def test_expand_macros_custom_session_macro() -> None:
    url = "http://ads/beacon/ad-a/start?session=[SESSIONID]&cb=[CACHEBUSTING]"
    assert expand_macros(url, {"SESSIONID": "s/1", "CACHEBUSTING": 99999999}) == (
        "http://ads/beacon/ad-a/start?session=s%2F1&cb=99999999"
    )


_NAMES = ("CACHEBUSTING", "TIMESTAMP", "SESSIONID", "ADPLAYHEAD", "BREAKPOSITION", "X1", "ASSETURI")
_URL_PIECES = st.lists(st.one_of(
    st.sampled_from([f"[{n}]" for n in _NAMES]),
    st.sampled_from(["[", "]", "[]", "[lower]", "[1A]", "[A-B]", "[[CACHEBUSTING]]", "?", "&cb=",
                     "%5B", "http://t/x"]),
    st.text(alphabet="abz:/?&=%[]_-.AZ09", max_size=8)), max_size=12).map("".join)
_VALUES = st.dictionaries(st.sampled_from(_NAMES), st.one_of(
    st.integers(-5, 10**9), st.text(max_size=6), st.none(), st.booleans(),
    st.fractions(min_value=-100, max_value=10**5),
    st.datetimes(timezones=st.just(UTC)),
    st.lists(st.one_of(st.integers(0, 99), st.text(max_size=3)), max_size=3)))


@settings(max_examples=300, deadline=None)
@given(url=_URL_PIECES, values=_VALUES)
def test_a_parsed_template_expands_exactly_as_expand_macros(
        url: str, values: dict[str, MacroValue]) -> None:
    """The tracker parses a beacon URL once per ad and formats a request's values once
    (``macro_template``/``format_macros``/``expand_template``): the URL sent must be
    the very text ``expand_macros`` gives, brackets, unknown names and all."""
    assert expand_template(macro_template(url), format_macros(values)) == \
        expand_macros(url, values)


# --------------------------------------------------------------------------- VMAP


def test_vmap_with_inline_vast_and_ad_tag() -> None:
    document = f"""<vmap:VMAP xmlns:vmap="http://www.iab.net/videosuite/vmap" version="1.0">
      <vmap:AdBreak timeOffset="start" breakType="linear" breakId="pre">
        <vmap:AdSource id="pre-1" allowMultipleAds="true" followRedirects="true">
          <vmap:VASTAdData>{vast(inline_ad("v", 10, sequence=1))}</vmap:VASTAdData>
        </vmap:AdSource>
        <vmap:TrackingEvents>
          <vmap:Tracking event="breakStart">http://t/break-start</vmap:Tracking>
        </vmap:TrackingEvents>
      </vmap:AdBreak>
      <vmap:AdBreak timeOffset="00:10:00.500" breakType="linear" breakId="mid">
        <vmap:AdSource id="mid-1" allowMultipleAds="false" followRedirects="true">
          <vmap:AdTagURI templateType="vast4"><![CDATA[ http://ads/vast?b=mid ]]></vmap:AdTagURI>
        </vmap:AdSource>
      </vmap:AdBreak>
      <vmap:AdBreak timeOffset="end" breakType="linear" breakId="post">
        <vmap:AdSource id="bad"><vmap:VASTAdData><VAST version="9"/></vmap:VASTAdData>
        </vmap:AdSource>
      </vmap:AdBreak>
    </vmap:VMAP>"""
    schedule = parse_vmap(document)
    assert schedule.version == "1.0"
    pre, mid, post = schedule.breaks
    assert (pre.break_id, pre.offset, pre.break_type) == ("pre", Fraction(0), "linear")
    assert pre.source is not None and pre.source.vast is not None
    assert [ad.id for ad in pre.source.vast.ads] == ["v"]
    assert [(t.event, t.uri) for t in pre.tracking] == [("breakStart", "http://t/break-start")]
    assert mid.offset == Fraction("600.5")
    assert mid.source is not None
    assert (mid.source.ad_tag_uri, mid.source.template_type) == ("http://ads/vast?b=mid", "vast4")
    assert mid.source.allow_multiple_ads is False
    assert post.offset is None
    assert post.source is not None
    assert (post.source.vast, post.source.vast_error_code) == (None, 102)


def test_vmap_rejects_vast() -> None:
    with pytest.raises(VastSchemaError):
        parse_vmap('<VAST version="4.2"/>')
