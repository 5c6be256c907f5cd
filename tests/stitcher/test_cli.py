"""``stitcher serve --config``: a bad config file is one clear line and exit 2,
never a traceback (a newcomer found YAML syntax errors, a missing file and a
YAML ``.inf`` all ending in one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "syntax": ("channels: [\n  - {id: x\n", "not valid YAML"),
    "infinite": ('channels:\n  - {id: x, origin_url: "http://o/m.m3u8", max_break: .inf}\n',
                 "channels.0.max_break: Input should be a finite number"),
    "unknown-field": ('channels:\n  - {id: x, origin_url: "http://o/m.m3u8", colour: red}\n',
                      "channels.0.colour"),
    "missing": (None, "No such file"),
    # Found by a newcomer: accepted, the second channel silently dropped, cohorts
    # like ``us.a`` nobody meant.
    "duplicate-channel": (('channels:\n  - {id: x, origin_url: "http://o/m.m3u8"}\n'
                           '  - {id: x, origin_url: "http://o/n.m3u8"}\n'),
                          "channel ids listed twice: ['x']"),
    "duplicate-cohort-value": (
        ('channels:\n  - {id: x, origin_url: "http://o/m.m3u8", cohorts: '
         '[{attribute: geo, values: [us, us], default: us}]}\n'),
        "channels.0.cohorts.0.values: Value error, values listed twice: ['us']"),
    "duplicate-cohort-attribute": (
        ('channels:\n  - {id: x, origin_url: "http://o/m.m3u8", cohorts: '
         '[{attribute: geo, values: [us], default: us}, '
         '{attribute: geo, values: [a], default: a}]}\n'),
        "cohort attributes listed twice: ['geo']"),
}


@pytest.mark.parametrize("argv, expected", [
    (["--break-duration", "0"], "--break-duration: 0 s: at least 2 s"),
    (["--break-every", "abc"], "not a whole number of seconds"),
    (["--break-every", "10", "--break-duration", "30"], "must be less than --break-every"),
])
def test_bad_demo_options_are_a_usage_error(argv: list[str], expected: str) -> None:
    """Found by a newcomer: ``--break-duration 0`` ended in a traceback from the
    fixture origin."""
    proc = subprocess.run([sys.executable, "-m", "stitcher.cli", "demo", *argv],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_clear_error_and_exit_2(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    path = tmp_path / "channels.yaml"
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "stitcher.cli", "serve", "--config",
                           str(path), "--port", "0"], capture_output=True, text=True,
                          timeout=60, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert expected in output and "Traceback" not in output, output


def test_config_paths_expand_the_home_folder(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``~`` in a config's paths (data and state folders, a channel's slate file) is
    the home folder, as in a shell; a slate URL is left alone (noted in an
    earlier session: ``~/slate.mp4`` was looked up under a folder named ``~``)."""
    from stitcher.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "channels.yaml"
    path.write_text("data_dir: ~/var\nstate_dir: ~/state\nchannels:\n"
                    '  - {id: a, origin_url: "http://o/m.m3u8", slate: ~/media/slate.mp4}\n'
                    '  - {id: b, origin_url: "http://o/n.m3u8", slate: "http://o/~s.mp4"}\n'
                    '  - {id: c, origin_url: "http://o/p.m3u8", slate: media/slate.mp4}\n')
    config = load_config(path)
    assert config.data_dir == tmp_path / "var" and config.state_dir == tmp_path / "state"
    assert [c.slate for c in config.channels] == [
        str(tmp_path / "media" / "slate.mp4"), "http://o/~s.mp4", "media/slate.mp4"]
