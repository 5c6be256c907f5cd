"""Every HLS playlist of the shared corpus, with the outcome its INDEX expects.

Inputs are read from ``../shared/corpus`` (they keep their own licences there):
``public/hls/*`` and every playlist in ``bugs/`` (bundles are split on their
``#-- name --`` lines). Expectations live in ``corpus_expectations.json``, one
entry per playlist, written from the INDEX rows (not from the code's output):

* ``kind``: ``media``, ``multivariant`` or ``fragment-no-segments`` (documentation
  snippets whose segments are all elided: their tags are checked as signals);
* ``breaks``: the whole break list, each ``[start_index, planned_duration,
  end_index, event_id]`` where ``end_index`` is the first segment content
  resumes at (null: the break runs past the window) and a fifth element, when
  present, is how long the break had been running at ``start_index`` (a join
  mid-break);
* ``anchor``: for playlists without PDT, the MSN and time the timeline is
  synthesised from (:func:`manifests.timeline.with_pdt`); default: the first
  segment at ``DEFAULT_EPOCH``;
* ``ends``: optionally, each break's effective end (UTC, ms): the instant
  content resumes at the first boundary at or after, known even past the window;
* ``marker_errors``: how many markers were logged as not understood.

Entries of kind ``reloads`` merge successive reloads of one URL and give the
breaks as ``[start_msn, planned_duration, end_msn, event_id]``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from manifests.breaks import EPSILON, Break, BreakPolicy, update_breaks
from manifests.markers import MarkerErrors, Signal, observe, segment_signals
from manifests.multivariant import parse_multivariant
from manifests.playlist import MediaPlaylist, Segment, parse_media, render, render_lines
from manifests.timeline import anchor_of, with_pdt
from manifests.timing import format_pdt, parse_pdt, seconds_between

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
EXPECTATIONS = Path(__file__).with_name("corpus_expectations.json")
DEFAULT_EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
DEFAULT_POLICY = BreakPolicy()
BASE_URL = "https://origin.example.com/live/master.m3u8"
_MEMBER = re.compile(r"^#-- (.+) --\n", re.MULTILINE)


def corpus_playlists() -> dict[str, str]:
    """Every HLS playlist in the corpus, keyed like the expectations."""
    found: dict[str, str] = {}
    for path in sorted((CORPUS / "public" / "hls").iterdir()):
        found[f"public/hls/{path.name}"] = path.read_bytes().decode("utf-8")
    for path in sorted((CORPUS / "bugs").iterdir()):
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".m3u8":
            found[f"bugs/{path.name}"] = text
        elif path.suffix == ".txt":
            parts = _MEMBER.split(text)
            for name, body in zip(parts[1::2], parts[2::2]):
                if body.startswith("#EXTM3U"):
                    found[f"bugs/{path.name}#{name}"] = body
    return found


def bundle_files(name: str) -> dict[str, str]:
    """Every file of one ``bugs/`` bundle (``#-- name --`` lines), by name; skips
    (fails under CI) when the corpus is absent."""
    path = CORPUS / "bugs" / name
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"shared corpus file missing: {path}")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    parts = _MEMBER.split(path.read_bytes().decode("utf-8"))
    return dict(zip(parts[1::2], parts[2::2]))


def _load() -> tuple[dict[str, str], dict[str, Any]]:
    if not CORPUS.is_dir():
        return {}, {}
    return corpus_playlists(), json.loads(EXPECTATIONS.read_text())


PLAYLISTS, EXPECTED = _load()
needs_corpus = pytest.mark.skipif(not PLAYLISTS, reason=f"shared corpus not found at {CORPUS}")
FILE_KEYS = sorted(k for k, v in EXPECTED.items() if v["kind"] != "reloads")
MEDIA_KEYS = sorted(k for k, v in EXPECTED.items() if v["kind"] not in ("reloads", "multivariant"))
RELOAD_KEYS = sorted(k for k, v in EXPECTED.items() if v["kind"] == "reloads")


def parse(key: str) -> MediaPlaylist:
    # .m3u8 files and bundle members start with #EXTM3U; .txt files are fragments.
    return parse_media(PLAYLISTS[key], strict_header=not key.endswith(".txt"))


def timed(key: str, playlist: MediaPlaylist) -> MediaPlaylist:
    anchor = EXPECTED[key].get("anchor")
    if anchor is None:
        # The first listed segment (after any EXT-X-SKIP of a delta update) starts the epoch.
        first = playlist.segments[0].msn if playlist.segments else playlist.media_sequence
        return with_pdt(playlist, first, DEFAULT_EPOCH)
    pdt = parse_pdt(anchor["pdt"])
    assert pdt is not None
    return with_pdt(playlist, anchor["msn"], pdt)


def decimal(value: Fraction | None) -> Fraction | None:
    return None if value is None else Fraction(value)


def summarise(playlist: MediaPlaylist, breaks: tuple[Break, ...],
              policy: BreakPolicy = DEFAULT_POLICY) -> list[list[Any]]:
    """Breaks as ``[start_index, planned, end_index, event_id(, running)]``, using the
    same slot rule the splice uses (:meth:`Break.covers`)."""
    segs = playlist.segments
    rows: list[list[Any]] = []
    for b in breaks:
        start = next((i for i, s in enumerate(segs)
                      if s.pdt is not None and s.pdt + EPSILON >= b.start), None)
        end = None
        for i in range(start if start is not None else len(segs), len(segs)):
            seg = segs[i]
            assert seg.pdt is not None
            if not b.covers(seg.pdt, seg.duration, policy):
                end = i
                break
        row: list[Any] = [start, b.planned_duration, end, b.event_id]
        if start is not None:
            first = segs[start].pdt
            assert first is not None
            running = seconds_between(b.start, first)
            if abs(running) > Fraction(1, 50):
                row.append(running)
        rows.append(row)
    return rows


def expected_rows(rows: list[list[Any]]) -> list[list[Any]]:
    """JSON rows with their decimals as exact Fractions."""
    out = []
    for row in rows:
        start, planned, end, event_id, *rest = row
        out.append([start, None if planned is None else Fraction(planned), end, event_id,
                    *(Fraction(r) for r in rest)])
    return out


def trailer_signals(playlist: MediaPlaylist, errors: MarkerErrors) -> list[Signal]:
    """Signals of a fragment whose segments are all elided: its tags are trailer lines."""
    seg = Segment(playlist.media_sequence, Fraction(0), "",
                  tuple(line.text for line in playlist.trailer))
    return segment_signals(seg, errors=errors)


# --- the corpus is covered ---------------------------------------------------------


@needs_corpus
def test_every_corpus_playlist_has_an_expectation() -> None:
    assert sorted(PLAYLISTS) == FILE_KEYS


# --- lossless ----------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("key", FILE_KEYS)
def test_parse_render_is_lossless(key: str) -> None:
    text = PLAYLISTS[key]
    if EXPECTED[key]["kind"] == "multivariant":
        mv = parse_multivariant(text, BASE_URL)
        assert len(mv.renditions) == EXPECTED[key]["renditions"]
        out = render_lines([line.text for line in mv.lines], newline=mv.newline,
                           final_newline=mv.final_newline)
    else:
        out = render(parse(key))
    assert out == text


@needs_corpus
@pytest.mark.parametrize("key", MEDIA_KEYS)
def test_synthesised_pdt_keeps_the_text(key: str) -> None:
    playlist = parse(key)
    stamped = timed(key, playlist)
    assert render(stamped) == PLAYLISTS[key]
    assert all(s.pdt is not None for s in stamped.segments)


# --- breaks ------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("key", MEDIA_KEYS)
def test_breaks(key: str) -> None:
    expected = EXPECTED[key]
    playlist = timed(key, parse(key))
    errors = MarkerErrors()
    if expected["kind"] == "fragment-no-segments":
        signals = trailer_signals(playlist, errors)
        got = [[s.kind.value, decimal(s.planned_duration), s.event_id] for s in signals]
        want = [[k, None if p is None else Fraction(p), e] for k, p, e in expected["signals"]]
        assert got == want
    else:
        update = update_breaks((), observe(playlist, errors=errors))
        assert summarise(playlist, update.breaks) == expected_rows(expected["breaks"])
        assert update.ignored == []
        if "ends" in expected:
            assert [format_pdt(b.effective_end()) for b in update.breaks] == expected["ends"]
    assert len(errors.items) == expected.get("marker_errors", 0), errors.items


@needs_corpus
@pytest.mark.parametrize("key", RELOAD_KEYS)
def test_breaks_merged_over_reloads(key: str) -> None:
    """Successive reloads of one URL: the PDT anchor is carried from one reload to
    the next (as the shared store does) and breaks merge on that timeline."""
    expected = EXPECTED[key]
    known: tuple[Break, ...] = ()
    anchor: tuple[int, datetime] | None = None
    last: MediaPlaylist | None = None
    for member in expected["members"]:
        playlist = parse(member)
        msn, pdt = anchor if anchor is not None else (playlist.media_sequence, DEFAULT_EPOCH)
        playlist = with_pdt(playlist, msn, pdt)
        known = update_breaks(known, observe(playlist)).breaks
        anchor, last = anchor_of(playlist), playlist
    assert last is not None
    rows = []
    for b in known:
        end_msn = None
        cut = b.end if b.end is not None else b.effective_end()
        for seg in last.segments:
            assert seg.pdt is not None
            if seg.pdt + EPSILON >= cut:
                end_msn = seg.msn
                break
        start = seconds_between(DEFAULT_EPOCH, b.start)
        rows.append([start, b.planned_duration, end_msn, b.event_id])
    assert rows == [[Fraction(s), None if p is None else Fraction(p), e, i]
                    for s, p, e, i in expected["breaks"]]


@needs_corpus
def test_both_aws_dialects_yield_the_same_breaks() -> None:
    """INDEX: the 'Elemental' and 'SCTE-35 enhanced' samples of one timeline must
    give identical break lists. Only the event id differs: the enhanced one names
    the SCTE-35 event (segmentation_event_id), the plain one has none to give."""
    lists = []
    for key in ("public/hls/aws_mediaconvert_elemental_vod.m3u8",
                "public/hls/aws_mediaconvert_scte35_enhanced_vod.m3u8"):
        playlist = timed(key, parse(key))
        breaks = update_breaks((), observe(playlist)).breaks
        lists.append([(b.start, b.planned_duration, b.end, b.effective_end()) for b in breaks])
        assert len(breaks) == 2
    assert lists[0] == lists[1]


@needs_corpus
def test_interstitials_are_not_breaks_and_pass_through() -> None:
    for key, expected in EXPECTED.items():
        if "interstitial" not in key:
            continue
        playlist = timed(key, parse(key))
        assert observe(playlist) == [], key
        assert expected["breaks"] == []
        assert render(playlist) == PLAYLISTS[key]


@needs_corpus
def test_ll_hls_playlists_parse() -> None:
    for key in ("public/hls/globo_ll_hls_parts.m3u8", "public/hls/videojs_llhls.m3u8",
                "public/hls/androidx_ll_hls_segments_and_parts.m3u8",
                "public/hls/globo_ll_hls_delta_skip_dateranges.m3u8",
                "public/hls/hlsjs_daterange_delta_skip.m3u8"):
        playlist = parse(key)
        assert playlist.segments, key
        assert render(playlist) == PLAYLISTS[key]
    androidx = parse("public/hls/androidx_ll_hls_segments_and_parts.m3u8")
    assert (androidx.media_sequence, androidx.last_msn) == (10, 15)
    parts = parse("public/hls/globo_ll_hls_parts.m3u8")
    assert (parts.media_sequence, parts.last_msn) == (264, 272)


def test_corpus_location_is_the_documented_one() -> None:
    assert os.path.normpath(str(CORPUS)).endswith(os.path.join("shared", "corpus"))


@needs_corpus
@pytest.mark.parametrize("key", ["public/hls/globo_ll_hls_parts.m3u8", "public/hls/videojs_llhls.m3u8",
                                 "public/hls/androidx_ll_hls_segments_and_parts.m3u8",
                                 "public/hls/globo_ll_hls_delta_skip_dateranges.m3u8",
                                 "public/hls/hlsjs_daterange_delta_skip.m3u8"])
def test_ll_hls_stitched_promises_only_what_the_stitcher_serves(key: str) -> None:
    """INDEX asks LL-HLS to pass through "or be rewritten consistently"; DESIGN.md
    (invariant 6) settles it: the stitcher does not serve parts, preload hints,
    blocking reloads or rendition reports yet, so it strips those tags and serves
    the whole segments, numbered and timed as the origin has them."""
    from manifests.checker import Snapshot, check
    from manifests.ledger import Ledger
    from manifests.playlist import LL_HLS_TAGS
    from manifests.splice import SpliceOptions, splice

    class Uris:
        def ad_segment(self, *args: object) -> str:
            return "ad.ts"

        def slate_segment(self, *args: object) -> str:
            return "slate.ts"

    source = timed(key, parse(key))
    result = splice(source, breaks=(), pods={}, ledger=Ledger(), uris=Uris(),
                    options=SpliceOptions(base_url="https://origin.example.com/live/p.m3u8"))
    out = parse_media(result.text)
    assert not [line for line in result.text.splitlines()
                if line.split(":", 1)[0] in LL_HLS_TAGS], "an LL-HLS promise left in"
    assert [(s.msn, s.duration) for s in out.segments] == [
        (s.msn, s.duration) for s in source.segments]
    assert all(s.uri.startswith("https://") for s in out.segments)
    assert [v for v in check([Snapshot(0, {"v0": result.text}, origin={"v0": render(source)})])
            if v.source == "stitcher"] == []


@needs_corpus
def test_uri_lines_with_leading_space_are_trimmed() -> None:
    """INDEX (hlsjs_issue910): the URI lines start with a space: trim it (the text
    keeps it, for the lossless round trip)."""
    key = "public/hls/hlsjs_issue910_multi_dialect_fragment.txt"
    playlist = parse(key)
    assert all(s.uri == s.uri.strip() and s.uri.startswith("VIDEO_0_7064000/")
               for s in playlist.segments)
    assert any(line.startswith(" VIDEO_0") for line in PLAYLISTS[key].splitlines())
    assert render(playlist) == PLAYLISTS[key]
