"""``stitcher replay``: every fixture stream through the real service, on a virtual clock.

Each stream under ``fixtures/streams/`` (recorded by ``fixtures/record_stream.py``)
must replay with no violation the stitcher introduced and match its goldens
byte for byte; streams that carry hand-written expectations (break positions
and durations read off the recorded cue tags) must also stitch exactly those
breaks, so the goldens cannot simply bless whatever the code does. A
deliberately broken engine (the ledger lost between reloads) must make replay
fail, and ``--update`` followed by a plain replay must round-trip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from manifests.ledger import Ledger, SlotEntry
from stitcher import cli
from stitcher.replay import replay_streams
from stitcher.store import MemoryStore

STREAMS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "streams"
STREAMS = sorted(p for p in STREAMS_DIR.iterdir() if (p / "stream.json").exists())

def _spec(folder: Path) -> dict:
    return json.loads((folder / "stream.json").read_text())


def test_there_are_fixture_streams() -> None:
    assert len(STREAMS) >= 12, STREAMS


def test_a_third_of_the_streams_carry_independent_expectations() -> None:
    expecting = [p.name for p in STREAMS if (_spec(p).get("expect") or {}).get("breaks")]
    assert 3 * len(expecting) >= len(STREAMS), expecting


@pytest.mark.parametrize("folder", STREAMS, ids=lambda p: p.name)
async def test_stream_replays_clean_and_matches_goldens(folder: Path, tmp_path: Path) -> None:
    [result] = await replay_streams([folder], out=tmp_path / "stitched")
    report = result.to_text()
    assert result.errors == [], report
    assert result.reloads >= 20 and result.renditions, report
    assert (folder / "golden").is_dir(), f"{folder.name} has no goldens: run --update"
    assert result.diffs == [], report
    # Every stitched snapshot was written where --out said.
    written = list((tmp_path / "stitched").rglob("*.m3u8"))
    assert len(written) == result.reloads * len(result.renditions) * len(result.sessions)
    if (_spec(folder).get("expect") or {}).get("breaks"):
        assert result.expectations_checked >= len(result.renditions), report
        assert result.expectations == [], report
    assert result.violations == [], report
    assert result.ok, report


@pytest.mark.parametrize("name", ["cue_out", "early_cue_in"])
async def test_a_lost_ledger_makes_replay_fail(name: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine without its sequence ledger (every reload starts from an empty
    one, and so does every append) republishes history differently: replay must
    report it."""

    async def amnesia(self: MemoryStore, channel: str, cohort: str, grid: str) -> Ledger:
        return Ledger()

    async def append_to_nothing(self: MemoryStore, channel: str, cohort: str, grid: str,
                                entries: list[SlotEntry], hwm: int, keep_from: int,
                                anchor: tuple[int, int] | None = None) -> Ledger:
        return Ledger().append(entries, hwm, anchor).compact(keep_from)

    monkeypatch.setattr(MemoryStore, "get_ledger", amnesia)
    monkeypatch.setattr(MemoryStore, "append_ledger", append_to_nothing)
    [result] = await replay_streams([STREAMS_DIR / name], out=tmp_path / "out")
    assert not result.ok
    assert result.violations or result.diffs
    assert result.diffs, "the goldens catch it"
    assert any(v.rule.name in ("DISCONTINUITY_SEQUENCE", "SEGMENT_CHANGED")
               for v in result.violations), result.to_text()


@pytest.mark.parametrize("name", ["cue_out", "early_cue_in"])
async def test_a_render_from_an_empty_read_is_healed_by_the_append(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads that miss the ledger (every render starts from an empty one) while the
    store keeps it: the atomic append answers with the stored ledger, the render's
    slots or discontinuity anchor disagree with it, and the render is redone from
    it (as when another instance published first), so replay stays clean."""

    async def amnesia(self: MemoryStore, channel: str, cohort: str, grid: str) -> Ledger:
        return Ledger()

    monkeypatch.setattr(MemoryStore, "get_ledger", amnesia)
    [result] = await replay_streams([STREAMS_DIR / name], out=tmp_path / "out")
    assert result.ok and result.violations == [] and not result.diffs, result.to_text()


async def test_a_wrong_expectation_is_reported(tmp_path: Path) -> None:
    """The expectations are really compared (one off by a segment fails)."""
    copy = tmp_path / "cue_out"
    shutil.copytree(STREAMS_DIR / "cue_out", copy)
    spec = _spec(copy)
    spec["expect"]["breaks"][0]["msn"] += 1
    (copy / "stream.json").write_text(json.dumps(spec))
    [result] = await replay_streams([copy], out=tmp_path / "out")
    assert not result.ok
    assert result.expectations and "expected" in result.expectations[0]
    assert result.diffs == [] and result.violations == []


async def test_update_then_replay_round_trips(tmp_path: Path) -> None:
    copy = tmp_path / "early_cue_in"
    shutil.copytree(STREAMS_DIR / "early_cue_in", copy)
    shutil.rmtree(copy / "golden")
    [missing] = await replay_streams([copy], out=tmp_path / "a")
    assert not missing.ok and missing.diffs  # no goldens yet: every file differs
    [updated] = await replay_streams([copy], update=True, out=tmp_path / "b")
    assert updated.updated == updated.reloads * len(updated.renditions)
    assert updated.ok
    [again] = await replay_streams([copy], out=tmp_path / "c")
    assert again.ok and again.diffs == []
    # The regenerated goldens are the committed ones.
    for path in (STREAMS_DIR / "early_cue_in" / "golden").rglob("*.m3u8"):
        rel = path.relative_to(STREAMS_DIR / "early_cue_in")
        assert (copy / rel).read_text() == path.read_text(), rel
    # A golden edited by hand shows as a readable diff.
    golden = copy / "golden" / "010" / "v0.m3u8"
    golden.write_text(golden.read_text().replace("ad/v0/", "ad/vX/", 1))
    [changed] = await replay_streams([copy], out=tmp_path / "d")
    assert [f for f, _ in changed.diffs] == ["010/v0.m3u8"]
    text = changed.to_text()
    assert "golden differs: 010/v0.m3u8" in text
    assert "-" in text and "+" in text and "ad/vX/" in text


def test_cli_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = cli.main(["replay", str(STREAMS_DIR / "cue_out"), "--out", str(tmp_path / "o"),
                     "--json"])
    report = json.loads(capsys.readouterr().out)
    assert good == 0 and report["ok"] is True
    [stream] = report["streams"]
    assert stream["violations"] == [] and stream["golden_differences"] == []
    assert stream["breaks"]["default"]["v0"] == [
        {"pdt": "2027-01-15T08:00:20.000Z", "msn": 110, "duration": "30", "segments": 15}]
    broken = tmp_path / "broken"
    shutil.copytree(STREAMS_DIR / "cue_out", broken)
    target = broken / "golden" / "020" / "v1.m3u8"
    target.write_text(target.read_text() + "#EXT-X-EXTRA\n")
    bad = cli.main(["replay", str(broken), "--out", str(tmp_path / "p")])
    out = capsys.readouterr().out
    assert bad == 1 and "FAILED" in out and "golden differs: 020/v1.m3u8" in out
    assert cli.main(["replay", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize(("field", "value", "says"), [
    ("segment_duration", "abc", "channel.segment_duration"),
    ("window_cap", 1, "channel.window_cap"),
    ("surprise", True, "channel.surprise"),
])
def test_a_bad_channel_in_stream_json_is_unreadable_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object,
        says: str) -> None:
    """Exit status 2 and one line naming the field (found by a newcomer: a pydantic
    traceback and exit status 1, as if the stream had failed its checks)."""
    broken = tmp_path / "broken"
    shutil.copytree(STREAMS_DIR / "cue_out", broken)
    spec = _spec(broken)
    spec["channel"][field] = value
    (broken / "stream.json").write_text(json.dumps(spec))
    assert cli.main(["replay", str(broken), "--out", str(tmp_path / "o")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("replay: ") and says in out and "Traceback" not in out


def test_a_missing_stream_folder_says_so(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a newcomer: a path that does not exist was 'no stream.json here nor
    in its subfolders'."""
    assert cli.main(["replay", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().out
