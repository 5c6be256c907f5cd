"""Golden splice cases: successive origin windows in, whole stitched playlists out.

Each folder under ``splice_cases/`` holds ``params.json`` (the pod's candidate
ads, the nominal segment duration, options), ``origin-NN.m3u8`` (successive
reloads of one origin rendition) and ``expected-NN.m3u8`` (the stitched output
for that reload, the ledger carried from reload to reload). Whole files are
compared. Regenerate after a deliberate change with
``UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/manifests/test_splice.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from urllib.parse import urljoin

import pytest

from manifests.breaks import Break, BreakPolicy, update_breaks
from manifests.checker import Snapshot, check
from manifests.ledger import Ledger
from manifests.markers import observe
from manifests.playlist import Segment, parse_media
from manifests.pod import Candidate, plan_pod
from manifests.splice import SpliceOptions, breaks_to_decide, splice
from manifests.timeline import with_pdt
from tests.manifests.test_corpus_hls import bundle_files

CASES = Path(__file__).parent / "splice_cases"


class Uris:
    """``fmp4``: ads and slate are fMP4 with their own init (params ``"fmp4_ads"``)."""

    def __init__(self, fmp4: bool = False) -> None:
        self.fmp4 = fmp4

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.ts"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.ts"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return f"ad/v0/{break_id}/{item_index}/init.mp4" if self.fmp4 else None

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return "/assets/slate/v0/init.mp4" if self.fmp4 else None


class RoutedUris(Uris):
    """A builder serving content segments itself (the stitcher's repaired WebVTT)."""

    def content_segment(self, segment: Segment) -> str | None:
        return f"cv/v0/{segment.msn}.vtt"


def run_case(folder: Path, routed: bool = False) -> list[tuple[str, str]]:
    params = json.loads((folder / "params.json").read_text())
    candidates = [Candidate(c["id"], Fraction(c["duration"])) for c in params["ads"]]
    policy = BreakPolicy(max_duration=Fraction(params.get("max_break", 120)))
    options = SpliceOptions(base_url=params.get("base_url", "https://origin.example.com/ch/v0.m3u8"),
                            passthrough_markers=params.get("passthrough_markers", False),
                            break_policy=policy, window_cap=params.get("window_cap"),
                            ad_dateranges=params.get("ad_dateranges", False))
    breaks: tuple = ()
    pods: dict = {}
    ledger = Ledger()
    outputs = []
    for origin in sorted(folder.glob("origin-*.m3u8")):
        playlist = parse_media(origin.read_text())
        breaks = update_breaks(breaks, observe(playlist), policy).breaks
        by_id = {b.id: b for b in breaks}
        for break_id, start in breaks_to_decide(playlist, breaks, ledger, policy).items():
            if break_id not in pods:
                b = by_id[break_id]
                available = b.duration_hint if b.duration_hint is not None else policy.max_duration
                pods[b.id] = plan_pod(b.id, candidates, available=available - start, start=start,
                                      nominal=Fraction(params.get("nominal", 2)),
                                      slate_segments=params.get("slate_segments", 3),
                                      min_slate=Fraction(params.get("min_slate", 2)))
        result = splice(playlist, breaks=breaks, pods=pods, ledger=ledger, uris=(RoutedUris if routed else Uris)(params.get("fmp4_ads", False)),
                        options=options)
        ledger = ledger.append(result.new_entries, result.hwm)
        outputs.append((origin.name.replace("origin-", "expected-"), result.text))
    return outputs


@pytest.mark.parametrize("folder", sorted(p for p in CASES.iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_golden(folder: Path) -> None:
    outputs = run_case(folder)
    assert outputs, f"{folder.name} has no origin-*.m3u8"
    if os.environ.get("UPDATE_GOLDEN"):
        for name, text in outputs:
            (folder / name).write_text(text)
    for name, text in outputs:
        expected = (folder / name).read_text()
        assert text == expected, f"{folder.name}/{name} differs"
    # Every golden output is itself conformant.
    origins = [p.read_text() for p in sorted(folder.glob("origin-*.m3u8"))]
    snapshots = [Snapshot(index=i, time=float(i), playlists={"v0": text},
                          origin={"v0": origins[i]})
                 for i, (_name, text) in enumerate(outputs)]
    stitcher_faults = [v for v in check(snapshots) if v.source == "stitcher"]
    assert stitcher_faults == []


@pytest.mark.parametrize("folder", sorted(p for p in CASES.iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_a_content_uri_builder_changes_only_the_content_uris(folder: Path) -> None:
    """``ContentUriBuilder``: every content segment's URI is the builder's, on every
    render path (plain runs, tagged segments, the first after a break); every
    other line, ad and slate URIs included, is the golden output's."""
    params = json.loads((folder / "params.json").read_text())
    base = params.get("base_url", "https://origin.example.com/ch/v0.m3u8")
    origin_msn: dict[str, set[int]] = {}  # several with byte ranges of one file
    for origin in sorted(folder.glob("origin-*.m3u8")):
        for seg in parse_media(origin.read_text()).segments:
            origin_msn.setdefault(urljoin(base, seg.uri.strip()), set()).add(seg.msn)
    routed_total = 0
    for (name, plain), (_, routed) in zip(run_case(folder), run_case(folder, routed=True),
                                          strict=True):
        assert [line for line in plain.splitlines() if line.startswith("#")] == [
            line for line in routed.splitlines() if line.startswith("#")], name
        pairs = zip(parse_media(plain).segments, parse_media(routed).segments, strict=True)
        previous = -1
        for mine, theirs in pairs:
            if mine.uri in origin_msn:
                msn = int(theirs.uri.removeprefix("cv/v0/").removesuffix(".vtt"))
                assert msn in origin_msn[mine.uri] and msn > previous, (name, mine.uri, msn)
                previous = msn
                routed_total += 1
            else:
                assert theirs.uri == mine.uri, (name, mine.uri)
    assert routed_total > 0


def test_b02_regressed_window_against_the_previous_anchor_is_a_timeline_error() -> None:
    """INDEX B02, pure side: reload-2 (MSN 196..199) cannot be timed from reload-1's
    end anchor (MSN 204): ``with_pdt`` raises its documented TimelineError (a
    ManifestError), never anything else, and the service's anchor choice
    (``choose_anchor``) times it without raising. The service rejects that body
    before it reaches the splice (tests/stitcher/test_faults.py)."""
    from datetime import UTC, datetime

    from manifests.errors import ManifestError
    from manifests.timeline import TimelineError, anchor_of, choose_anchor, with_pdt
    from tests.manifests.test_corpus_hls import PLAYLISTS

    if not PLAYLISTS:
        pytest.skip("shared corpus not found")
    first, second = (parse_media(PLAYLISTS[f"bugs/B02.txt#reload-{i}.m3u8"]) for i in (1, 2))
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    msn, end = anchor_of(with_pdt(first, 200, t0))
    assert msn == 204
    with pytest.raises(TimelineError) as raised:
        with_pdt(second, msn, end)
    assert isinstance(raised.value, ManifestError) and "outside the window" in str(raised.value)
    at, pdt, exact = choose_anchor({200: t0, 204: end}, 196, 200, 6)
    assert (at, exact) == (200, True)
    assert len(with_pdt(second, at, pdt).segments) == 4


class B19Uris:
    """The fMP4 ad of B19's ad.m3u8 (creative c42, its own init segment)."""

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ads/c42/v1/seg{segment}.m4s"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"slate/v1/seg{segment}.m4s"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return "ads/c42/v1/init.mp4"

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return "slate/v1/init.mp4"


B19_EXPECTED = """\
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:1900
#EXT-X-MAP:URI="content/v1/init.mp4"
#EXTINF:4.000,
content/v1/seg1900.m4s
#EXTINF:4.000,
content/v1/seg1901.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI="ads/c42/v1/init.mp4"
#EXT-X-PROGRAM-DATE-TIME:2020-01-01T00:00:08.000Z
#EXTINF:4.000,
ads/c42/v1/seg0.m4s
#EXT-X-PROGRAM-DATE-TIME:2020-01-01T00:00:12.000Z
#EXTINF:4.000,
ads/c42/v1/seg1.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI="content/v1/init.mp4"
#EXT-X-PROGRAM-DATE-TIME:2020-01-01T00:00:16.000Z
#EXTINF:4.000,
content/v1/seg1904.m4s
#EXTINF:4.000,
content/v1/seg1905.m4s
"""


def _b19_splice(uris: object) -> str:
    files = bundle_files("B19.txt")
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    content = with_pdt(parse_media(files["content.m3u8"]), 1900, epoch)
    # The ad (ad.m3u8: 2 x 4 s) replaces content 1902-1903, as in stitched-faulty.m3u8.
    brk = Break("b19", epoch + timedelta(seconds=8), Fraction(8), epoch + timedelta(seconds=16))
    pod = plan_pod("b19", [Candidate("c42", Fraction(8))], available=Fraction(8),
                   nominal=Fraction(4))
    result = splice(content, breaks=(brk,), pods={"b19": pod}, ledger=Ledger(),
                    uris=uris)  # type: ignore[arg-type]
    return result.text


def test_b19_fmp4_ad_declares_its_init_and_content_restates_its_own() -> None:
    """B19 (grafov/m3u8#153, hls.js#1990): EXT-X-MAP after every discontinuity where
    the init changes: the ad's after the first, the content's after the second."""
    text = _b19_splice(B19Uris())
    assert text == B19_EXPECTED
    assert [v for v in check([Snapshot(0, {"v1": text})])] == []


def test_mpeg_ts_ads_never_play_under_an_fmp4_content_init() -> None:
    """An EXT-X-MAP cannot be unset (RFC 8216bis 4.4.4.5): TS ads (no init) under
    fMP4 content would be parsed with the content's init, so the content shows."""
    files = bundle_files("B19.txt")
    text = _b19_splice(Uris())
    assert "ad/" not in text and "#EXT-X-DISCONTINUITY" not in text
    assert text == files["content.m3u8"]


@pytest.mark.parametrize("uri", [
    "https://cdn.example.com/live/seg.ts", "http://cdn.example.com/seg.ts", "seg.ts",
    "/abs/seg.ts", "../up/seg.ts", "https://cdn.example.com/a/./seg.ts", "seg.ts?token=1",
    "https://cdn.example.com/seg.ts\xa0", "https://cdn.example.com/se g.ts", "//cdn/seg.ts",
    "HTTPS://cdn.example.com/seg.ts",
])
@pytest.mark.parametrize("base", [None, "https://origin.example.com/live/720p.m3u8"])
def test_plain_runs_render_as_each_segment_would(uri: str, base: str | None) -> None:
    """Content between breaks is rendered as a run (raw text joined in one go when
    no URI needs resolving): the same text as rendering each segment on its own."""
    from manifests.splice import _Renderer

    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
    for i in range(4):
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:0{2 * i}.000Z", "#EXTINF:2.000,",
                  uri.replace("seg", f"seg{i}")]
    playlist = parse_media("\n".join(lines) + "\n")

    class Uris:
        def ad_segment(self, *args: object) -> str:
            return "ad.ts"

        def slate_segment(self, *args: object) -> str:
            return "slate.ts"

    renderer = _Renderer(SpliceOptions(base_url=base), Uris())
    assert renderer.plain_run(playlist.segments) == [
        renderer.content(seg, None, None) for seg in playlist.segments]


@pytest.mark.parametrize("uri", [
    "https://cdn.example.com/live/seg.ts", "seg.ts", "/abs/seg.ts", "../up/seg.ts",
    "https://cdn.example.com/a/./seg.ts", "seg.ts?token=1", "//cdn/seg.ts",
    "HTTPS://cdn.example.com/seg.ts", "https://cdn.example.com/se g.ts",
    "https://cdn.example.com/se\tg.ts", "https://cdn.example.com/se\x00g.ts",
    "sub/dir/seg.ts", "dir/./seg.ts", "seg:1.ts", "dir/seg:1.ts", ".seg.ts", "?seg.ts",
    "seg.ts#t=1", "mailto:seg", "se g.ts",
])
@pytest.mark.parametrize("base", [None, "https://origin.example.com/live/720p.m3u8",
                                  "https://origin.example.com/live/720p.m3u8?token=a/b",
                                  "https://origin.example.com/"])
@pytest.mark.parametrize("routed", [False, True])
def test_plain_runs_from_the_columns_render_as_each_segment_would(
        uri: str, base: str | None, routed: bool) -> None:
    """A run of the parse's plain rows (``playlist.rows``) is rendered from the
    columns, no segment built (relative URIs joined to the base in one go): the
    same text as rendering each segment. A URI builder that routes content
    (``subtitle_maps: repair``) is asked for every one: the columns' text would
    send subtitle segments to the origin, skipping the map repair (found when the
    relative runs joined the fast path: absolute origin URIs had lost it)."""
    from manifests.splice import _Renderer

    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
    for i in range(6):
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:0{i}.000Z", "#EXTINF:2.000,",
                  uri.replace("seg", f"seg{i}")]
    playlist = parse_media("\n".join(lines) + "\n")
    rows = playlist.rows[1:]  # the first segment is parsed together with the header
    assert rows.plain(0, len(rows))

    class Uris:
        def ad_segment(self, *args: object) -> str:
            return "ad.ts"

        def slate_segment(self, *args: object) -> str:
            return "slate.ts"

    class RoutingUris(Uris):
        def content_segment(self, segment: Segment) -> str | None:
            return None if segment.msn % 2 else f"cv/{segment.msn}.vtt"

    renderer = _Renderer(SpliceOptions(base_url=base), RoutingUris() if routed else Uris())
    expected = [renderer.content(seg, None, None) for seg in playlist.segments[1:]]
    assert renderer.plain_run(playlist.rows[1:]) == expected
    if routed:
        assert sum("\ncv/" in text for text in expected) == 2  # msn 2 and 4


@pytest.mark.parametrize("disorder", ["none", "swapped", "undated", "undated-first"])
def test_bisected_spans_only_when_every_slot_is_dated_in_order(disorder: str) -> None:
    """_candidates bisects the PDT column for each break's slots only when every
    slot has a PDT and they are in order; otherwise the one span is the window
    (every slot asked), so a slot out of order still meets its break."""
    from manifests.breaks import BreakIndex
    from manifests.splice import _candidates

    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0"]
    seconds = list(range(0, 60, 2))
    if disorder == "swapped":
        seconds[20], seconds[21] = seconds[21], seconds[20]
    for i, t in enumerate(seconds):
        if not (disorder == "undated" and i == 25) and not (
                disorder == "undated-first" and i == 0):
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:{t:02d}.000Z")
        if (i == 0 and disorder == "undated-first") or (i == 25 and disorder == "undated"):
            lines.append("#EXT-X-DISCONTINUITY")  # and no PDT: none derived
        lines += ["#EXTINF:2.000,", f"s{i}.ts"]
    playlist = parse_media("\n".join(lines) + "\n")
    start = datetime(2026, 12, 3, 10, 0, 20, tzinfo=UTC)
    index = BreakIndex((Break(id="b", start=start, planned_duration=Fraction(10)),))
    spans = _candidates(playlist.rows, index)
    if disorder == "none":
        assert spans == [(10, 15)]
    else:
        assert spans == [(0, len(seconds))]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_origin_bom_never_reaches_the_stitched_playlist(newline: str) -> None:
    """RFC 8216 4.1: a playlist MUST NOT carry a BOM (ffmpeg refuses one: "Invalid
    data found"). An origin that sends one still parses; the stitcher's output,
    a playlist it writes, starts with #EXTM3U (found by a newcomer: the media
    playlists kept the origin's BOM while the multivariant dropped it)."""
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:10"]
    for i in range(3):
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:2026-12-03T10:00:0{2 * i}.000Z",
                  "#EXTINF:2.000,", f"seg{i}.ts"]
    playlist = parse_media("\ufeff" + newline.join(lines) + newline)
    assert playlist.bom
    result = splice(playlist, breaks=(), pods={}, ledger=Ledger(), uris=Uris())
    assert result.text.startswith("#EXTM3U" + newline)
    assert "\ufeff" not in result.text
    assert newline.join(lines) + newline == result.text
