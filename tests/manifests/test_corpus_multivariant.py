"""Every multivariant playlist of the shared corpus, routed through the stitcher.

INDEX (public/INDEX.md, "multivariant + alternate audio / WebVTT / CC"): every
media playlist URI is rewritten (variants, alternative video, audio and
subtitle renditions, in whatever order EXT-X-MEDIA and EXT-X-STREAM-INF come),
dangling GROUP-IDs do not fail the rewrite, I-frame playlists are dropped (they
would show the unstitched timeline), and every other line stays as it was.
"""

from __future__ import annotations

from collections import Counter

import pytest

from manifests.attributes import AttributeList
from manifests.multivariant import parse_multivariant, rewrite_multivariant
from manifests.playlist import split_lines
from tests.manifests.test_corpus_hls import PLAYLISTS

BASE = "https://origin.example.com/live/master.m3u8"

#: file -> renditions per kind the stitcher must serve (from INDEX's descriptions).
EXPECTED = {
    "bugs/B05.txt#master.m3u8": {"video": 1, "audio": 1},
    "bugs/B21.txt#ad-master.m3u8": {"video": 2},
    "bugs/B21.txt#content-master.m3u8": {"video": 2},
    "public/hls/eyevinn_splice_cmaf_demux_subs_master.m3u8":
        {"video": 1, "audio": 1, "subtitles": 1},
    # Audio groups 'mono' and 'stereo' with sv/en each, listed after the variants.
    "public/hls/eyevinn_splice_demux_master_4_audio.m3u8": {"video": 2, "audio": 4},
    "public/hls/eyevinn_splice_subs_master.m3u8": {"video": 1, "subtitles": 1},
    # "Rewrite all 3 media playlist URIs."
    "public/hls/eyevinn_splice_usp_zero_break_master.m3u8": {"video": 2, "audio": 1},
    # Undeclared CC/SUBS/AUDIO groups: both variant URIs rewritten, nothing fails.
    "public/hls/globo_multivariant_cc_subs_audio.m3u8": {"video": 2},
    # Three camera angles per tier as VIDEO alternatives, plus the variants.
    "public/hls/grafov_master_alternatives.m3u8": {"video": 10},
    # 24 variants over 3 audio groups name 8 video playlists; 6 I-frame streams.
    "public/hls/videojs_master_fmp4_audio_subs_cc.m3u8":
        {"video": 8, "audio": 3, "subtitles": 1},
}

needs_corpus = pytest.mark.skipif(not PLAYLISTS, reason="shared corpus not found")


@needs_corpus
def test_every_corpus_multivariant_is_listed() -> None:
    found = {k for k, text in PLAYLISTS.items() if "#EXT-X-STREAM-INF" in text}
    assert found == set(EXPECTED)


@needs_corpus
@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_rendition_is_routed_and_the_rest_kept(key: str) -> None:
    text = PLAYLISTS[key]
    mv = parse_multivariant(text, BASE)
    assert Counter(r.kind for r in mv.renditions) == Counter(EXPECTED[key])
    assert len({r.id for r in mv.renditions}) == len(mv.renditions)
    out = rewrite_multivariant(mv, BASE, lambda r: f"media/{r.id}.m3u8")

    routed: list[str] = []
    kept: list[str] = []
    for line in split_lines(out)[0]:
        if line.startswith("#EXT-X-I-FRAME-STREAM-INF"):
            pytest.fail("an I-frame playlist would show the unstitched timeline")
        if line.startswith("#EXT-X-MEDIA:"):
            uri = AttributeList.parse(line.split(":", 1)[1]).string("URI")
            if uri is not None:
                routed.append(uri)
                continue
        elif line.strip() and not line.startswith("#"):
            routed.append(line)
            continue
        kept.append(line)
    ids = {f"media/{r.id}.m3u8" for r in mv.renditions}
    assert set(routed) == ids, "every media playlist URI goes through the stitcher"
    original = [line for line in split_lines(text)[0]
                if not line.startswith("#EXT-X-I-FRAME-STREAM-INF")
                and not (line.startswith("#EXT-X-MEDIA:") and "URI=" in line)
                and not (line.strip() and not line.startswith("#"))]
    assert kept == original, "tags other than the URIs pass through unchanged"
    # The rewritten playlist parses to the same renditions, in the same order.
    again = parse_multivariant(out, "https://stitcher.example.com/v1/session/t/ch/master.m3u8")
    assert [(r.id, r.kind, r.group) for r in again.renditions] == [
        (r.id, r.kind, r.group) for r in mv.renditions]
