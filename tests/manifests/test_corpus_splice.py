"""Every live playlist of the corpus, stitched, passes the checker.

For each media playlist (and fragment) in ``../shared/corpus``, its breaks are
found, a pod is planned for each (two ads and slate), and the stitched output
is checked against the origin with :mod:`manifests.checker`: whatever the
origin got wrong is reported as inherited, and the stitcher must add nothing.
The ads include short ones (4, 2 and 1 s next to 10 and 15 s), so every break
the INDEX expects gets a non-empty pod: the replaced slots must be exactly the
expected ones (first replaced slot, and so MSN, PDT and replaced duration), and
the set of stitched files is asserted exactly, so "nothing found" is not vacuous.
A break whose start is unknown (joined from a bare CONT, ``start_unknown``) is
left to the content underneath, by design.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from manifests.breaks import update_breaks
from manifests.checker import Rule, Snapshot, Violation, check, format_text
from manifests.errors import ManifestError, SequenceRegressionError
from manifests.ledger import Ledger, SlotKind
from manifests.markers import observe
from manifests.playlist import render_lines
from manifests.pod import Candidate, plan_pod
from manifests.splice import SpliceOptions, SpliceResult, breaks_to_decide, splice
from tests.manifests.reloads import Stitcher, header_value, segment_dsns, slide
from tests.manifests.test_corpus_hls import (
    BASE_URL,
    DEFAULT_POLICY,
    EXPECTED,
    MEDIA_KEYS,
    PLAYLISTS,
    needs_corpus,
    parse,
    timed,
)

ADS = [Candidate("adA", Fraction(10)), Candidate("adB", Fraction(15)),
       Candidate("adC", Fraction(4)), Candidate("adD", Fraction(2)), Candidate("adE", Fraction(1))]
STITCHED: set[str] = set()


class Uris:
    """Ads follow the content's container, as the service conditions them: fMP4
    (with their own init, declared after each discontinuity) under fMP4 content."""

    def __init__(self, fmp4: bool = False) -> None:
        self.ext = "m4s" if fmp4 else "ts"
        self.fmp4 = fmp4

    def ad_segment(self, break_id: str, item_index: int, item: object, segment: int) -> str:
        return f"ad/v0/{break_id}/{item_index}/{segment}.{self.ext}"

    def slate_segment(self, break_id: str, item_index: int, segment: int, msn: int) -> str:
        return f"/assets/slate/v0/seg_{segment:05d}.{self.ext}"

    def ad_map(self, break_id: str, item_index: int, item: object) -> str | None:
        return f"ad/v0/{break_id}/{item_index}/init.mp4" if self.fmp4 else None

    def slate_map(self, break_id: str, item_index: int) -> str | None:
        return "/assets/slate/v0/init.mp4" if self.fmp4 else None


def _origin_text(playlist) -> str:  # type: ignore[no-untyped-def]
    """The origin as a complete playlist (fragments get the header they lack)."""
    lines = [line.text for line in playlist.header]
    if not lines or not lines[0].startswith("#EXTM3U"):
        lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{playlist.target_duration or 10}"] + lines
    for seg in playlist.segments:
        lines.extend(seg.raw)
    lines.extend(line.text for line in playlist.trailer)
    return render_lines(lines)


@needs_corpus
@pytest.mark.parametrize("key", MEDIA_KEYS)
def test_stitched_corpus_playlist_passes_the_checker(key: str) -> None:
    playlist = timed(key, parse(key))
    breaks = update_breaks((), observe(playlist), DEFAULT_POLICY).breaks
    nominal = Fraction(playlist.target_duration or 2)
    pods = {}
    for break_id, start in breaks_to_decide(playlist, breaks, Ledger(), DEFAULT_POLICY).items():
        b = next(x for x in breaks if x.id == break_id)
        available = (b.duration_hint or DEFAULT_POLICY.max_duration) - start
        pods[break_id] = plan_pod(break_id, ADS, available=available, start=start,
                                  nominal=nominal, slate_segments=1)
    result = splice(playlist, breaks=breaks, pods=pods, ledger=Ledger(),
                    uris=Uris(any(seg.map is not None for seg in playlist.segments)),
                    options=SpliceOptions(base_url=BASE_URL, break_policy=DEFAULT_POLICY))
    if any(e.kind.value != "content" for e in result.new_entries):
        STITCHED.add(key)
    if EXPECTED[key]["kind"] == "media":
        replaced = [i for i, slot in enumerate(result.slots) if slot.kind.value != "content"]
        want = _expected_slots(key, len(playlist.segments))
        assert replaced == want
        segs = playlist.segments
        assert sum((segs[i].duration for i in replaced), Fraction(0)) == sum(
            (segs[i].duration for i in want), Fraction(0))
        if want:
            assert result.slots[want[0]].segment.msn == segs[want[0]].msn
            assert result.slots[want[0]].segment.pdt == segs[want[0]].pdt
    text = result.text
    if not text.startswith("#EXTM3U"):
        text = "#EXTM3U\n" + f"#EXT-X-TARGETDURATION:{playlist.target_duration or 10}\n" + text
    snapshot = Snapshot(index=0, playlists={"v0": text}, origin={"v0": _origin_text(playlist)})
    faults = [v for v in check([snapshot]) if v.source == "stitcher"]
    assert faults == [], format_text(faults)


def _expected_slots(key: str, count: int) -> list[int]:
    """Indices the INDEX expects replaced: each break's ``start_index`` up to the
    slot content resumes at (the window's end if none)."""
    expected = EXPECTED[key]
    if expected.get("start_unknown"):
        return []
    return sorted(i for start, _, end, *_ in expected["breaks"] if start is not None
                  for i in range(start, end if end is not None else count))


@needs_corpus
def test_every_expected_break_was_stitched() -> None:
    if not STITCHED:
        for key in MEDIA_KEYS:
            test_stitched_corpus_playlist_passes_the_checker(key)
    want = {key for key in MEDIA_KEYS if EXPECTED[key]["kind"] == "media"
            and _expected_slots(key, len(parse(key).segments))}
    assert sorted(STITCHED) == sorted(want)
    assert len(STITCHED) == 33


# ------------------------------------------------------------- reload sequences
#
# Bundles with successive reloads (B01, B02, B06) and the files whose INDEX row
# describes refresh behaviour (globo_discontinuity_pdt, globo_cue_out_cont_slash:
# their next refreshes synthesised by sliding the window) go through the splice
# with one ledger, as the service drives them (tests/manifests/reloads.py); the
# stitched snapshots must pass the checker and show the INDEX's values.

DSN_TAG = "#EXT-X-DISCONTINUITY-SEQUENCE"


def _reloads(bundle: str) -> list[str]:
    keys = sorted(k for k in PLAYLISTS if k.startswith(f"bugs/{bundle}#reload-"))
    assert keys, bundle
    return [PLAYLISTS[k] for k in keys]


def _names(text: str) -> dict[str, int]:
    """Origin-relative URI -> discontinuity sequence number, in a served text."""
    return {uri.removeprefix("https://origin.example.com/live/"): dsn
            for uri, dsn in segment_dsns(text).items()}


def _rules(violations: list[Violation]) -> set[Rule]:
    return {v.rule for v in violations}


@needs_corpus
def test_b01_the_stitcher_counts_the_discontinuity_the_origin_forgot() -> None:
    """INDEX B01 (ExoPlayer#1789): MSN 102 (the DISCONTINUITY) slides out and the
    origin writes no EXT-X-DISCONTINUITY-SEQUENCE. The origin's own reloads are
    flagged (a1 goes from DSN 1 to 0); the stitched reload-2 carries DSN 1, so a1
    stays 1 and content/seg104.ts is 2, and the checker finds nothing at all."""
    origin = _reloads("B01.txt")
    flagged = check([Snapshot(index=i, playlists={"v0": t}) for i, t in enumerate(origin)])
    assert _rules(flagged) == {Rule.DISCONTINUITY_SEQUENCE}
    assert {v.reload for v in flagged} == {1}
    st = Stitcher()
    for text in origin:
        st.reload(text)
    assert st.violations() == [], format_text(st.violations())
    first, second = (s.playlists["v0"] for s in st.snapshots)
    assert header_value(first, DSN_TAG) is None
    assert _names(first) == {"content/seg100.ts": 0, "content/seg101.ts": 0,
                             "ads/pod7/a0.ts": 1, "ads/pod7/a1.ts": 1}
    assert header_value(second, DSN_TAG) == 1
    assert _names(second) == {"ads/pod7/a1.ts": 1, "content/seg104.ts": 2,
                              "content/seg105.ts": 2, "content/seg106.ts": 2}


@needs_corpus
def test_b01_after_a_restart_between_the_reloads() -> None:
    """The count lives in the ledger: a new process reading it back (JSON) mid-sequence
    serves the same reload-2."""
    origin = _reloads("B01.txt")
    straight, restarted = Stitcher(), Stitcher()
    for text in origin:
        straight.reload(text)
        restarted.reload(text)
        restarted.restart()
    assert [s.playlists for s in restarted.snapshots] == [s.playlists for s in straight.snapshots]


@needs_corpus
def test_b02_a_regressed_window_is_refused_and_the_last_good_served() -> None:
    """INDEX B02 (channel-engine#79): reload-2 says MSN 196 after 200 (seg47 moves from
    201 to 196). The ledger keeps no content URIs, so the splice cannot renumber it
    back (INDEX's "correct reload-2"); it refuses it (SequenceRegressionError, a
    ManifestError the service answers with its last good playlist, stale). The
    origin's corrected reload-2 (MSN 201) then gives exactly the INDEX's values:
    MSN 201, DSN 9, slate/s0.ts at MSN 204 after a DISCONTINUITY."""
    first, regressed = _reloads("B02.txt")
    corrected = regressed.replace("#EXT-X-MEDIA-SEQUENCE:196", "#EXT-X-MEDIA-SEQUENCE:201")
    st = Stitcher()
    st.reload(first)
    refused = st.reload(regressed)
    assert isinstance(refused, SequenceRegressionError) and isinstance(refused, ManifestError)
    assert (refused.last, refused.hwm) == (199, 203)
    assert st.ledger.hwm == 203  # nothing of the refused window was recorded
    served = st.reload(corrected)
    assert isinstance(served, SpliceResult)
    texts = [s.playlists["v0"] for s in st.snapshots]
    assert texts[1] == texts[0] and st.snapshots[1].stale == {"v0"}
    assert (served.media_sequence, served.discontinuity_sequence) == (201, 9)
    assert header_value(texts[2], "#EXT-X-MEDIA-SEQUENCE") == 201
    assert header_value(texts[2], DSN_TAG) == 9
    slate = next(s for s in served.slots if s.segment.uri == "slate/s0.ts")
    assert slate.segment.msn == 204 and slate.segment.discontinuity
    assert texts[2].splitlines()[-3:] == [
        "#EXT-X-DISCONTINUITY", "#EXTINF:6.000,", "https://origin.example.com/live/slate/s0.ts"]
    assert st.violations() == [], format_text(st.violations())
    # Served as is, the regressed window is what the checker flags (non-vacuous).
    flagged = check([Snapshot(index=i, playlists={"v0": t})
                     for i, t in enumerate((first, regressed))])
    assert _rules(flagged) == {Rule.MEDIA_SEQUENCE_DECREASED, Rule.SEGMENT_MOVED}


@needs_corpus
@pytest.mark.parametrize("passthrough", [False, True])
def test_b06_cue_in_on_a_later_reload_closes_the_break_at_seg303(passthrough: bool) -> None:
    """INDEX B06 (hls-vodtolive#46): the break {300, 301, 302} (18 s) is known from
    reload-1; CUE-IN appears with seg303 in reload-2 and opens reload-3. Stitched:
    exactly those three slots replaced, content back at live/seg303.ts after a
    DISCONTINUITY in both reloads that list it, reload-3 parses; with markers passed
    through, CUE-IN sits on seg303 only, never on the replaced seg302."""
    policy = DEFAULT_POLICY
    st = Stitcher(policy=policy, options=SpliceOptions(
        base_url="https://origin.example.com/live/v0.m3u8", break_policy=policy,
        passthrough_markers=passthrough))
    for text in _reloads("B06.txt"):
        st.reload(text)
    assert st.stitcher_faults() == [], format_text(st.stitcher_faults())
    results = [r for r in st.results if isinstance(r, SpliceResult)]
    assert len(results) == 3
    replaced = sorted({slot.segment.msn for r in results for slot in r.slots
                       if slot.kind is not SlotKind.CONTENT})
    assert replaced == [300, 301, 302]
    texts = [s.playlists["v0"] for s in st.snapshots]
    back = "https://origin.example.com/live/live/seg303.ts"
    for text in texts[1:]:
        lines = text.splitlines()
        at = lines.index(back)
        assert "#EXT-X-DISCONTINUITY" in lines[at - 4:at]
        assert ("#EXT-X-CUE-IN" in lines[at - 4:at]) is passthrough
        assert text.count("#EXT-X-CUE-IN") == int(passthrough)
    # reload-3 starts at seg303: every discontinuity of the break has left the window.
    breaks_discs = texts[0].splitlines().count("#EXT-X-DISCONTINUITY")
    assert breaks_discs >= 1
    assert header_value(texts[2], DSN_TAG) == breaks_discs
    assert _names(texts[2])["live/seg303.ts"] == breaks_discs + 1


@needs_corpus
def test_globo_discontinuity_pdt_refreshes_keep_the_count() -> None:
    """INDEX globo_discontinuity_pdt: the DISCONTINUITY (and the +7 s PDT jump) before
    g_50121.ts, no EXT-X-DISCONTINUITY-SEQUENCE. Refreshes synthesised one segment
    at a time until it has left: the stitched DSN is 0 while g_50121 is listed and 1
    after, g_50121 keeps DSN 1 and its PDT in every reload, the checker finds
    nothing; an origin that writes the right tag gets the same numbers."""
    text = PLAYLISTS["public/hls/globo_discontinuity_pdt.m3u8"]
    runs = {}
    for mode in ("keep", "right"):
        origin = [text]
        for _ in range(8):
            origin.append(slide(origin[-1], 1, dsn=mode))
        st = Stitcher()
        for t in origin:
            st.reload(t)
        # The +7 s PDT jump is the origin's (inherited PDT_DRIFT); the count is right.
        assert st.stitcher_faults() == [], format_text(st.stitcher_faults())
        assert _rules(st.violations()) == {Rule.PDT_DRIFT}
        runs[mode] = [s.playlists["v0"] for s in st.snapshots]
        if mode == "keep":  # the origin alone forgets the discontinuity that left
            flagged = check([Snapshot(index=i, playlists={"v0": t}) for i, t in enumerate(origin)])
            assert _rules(flagged) == {Rule.DISCONTINUITY_SEQUENCE, Rule.PDT_DRIFT}
    for served in runs.values():
        assert [header_value(t, DSN_TAG) or 0 for t in served] == [0] * 6 + [1] * 3
        for t in served[:6]:
            assert _names(t)["g_50121.ts"] == 1
            assert "#EXT-X-PROGRAM-DATE-TIME:2014-08-13T13:36:55.000+00:00" in t
        assert all(n == 1 for t in served[6:] for n in _names(t).values())
    assert [_names(t) for t in runs["keep"]] == [_names(t) for t in runs["right"]]


@needs_corpus
def test_globo_cue_out_cont_slash_next_refreshes_continue_the_break() -> None:
    """INDEX globo_cue_out_cont_slash: the window ends inside a 119.987 s break (DSN 1).
    The next refreshes (synthesised: one segment later each, CONT elapsed carried on)
    continue it: every slot stays replaced, each keeps what it was published as,
    and the DSN grows by the stitched discontinuities that left (the one entering
    the break at MSN 19980226 first)."""
    text = PLAYLISTS["public/hls/globo_cue_out_cont_slash.m3u8"]
    origin = [text, slide(text, 1)]
    origin.append(slide(origin[-1], 1))
    st = Stitcher()
    for t in origin:
        st.reload(t)
    assert st.violations() == [], format_text(st.violations())
    results = [r for r in st.results if isinstance(r, SpliceResult)]
    assert [[s.segment.msn for s in r.slots] for r in results] == [
        list(range(19980226 + i, 19980230 + i)) for i in range(3)]
    assert all(s.kind is not SlotKind.CONTENT for r in results for s in r.slots)
    first = results[0].entries
    assert first[0] is not None and first[0].discontinuity  # entering the break
    assert [r.discontinuity_sequence for r in results] == [
        1, 2, 2 + int(first[1] is not None and first[1].discontinuity)]
    served = [s.playlists["v0"] for s in st.snapshots]
    assert [header_value(t, DSN_TAG) for t in served] == [
        r.discontinuity_sequence for r in results]
