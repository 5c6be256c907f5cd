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
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_is_one_clear_error_and_exit_2(case: str, tmp_path: Path) -> None:
    text, expected = CASES[case]
    path = tmp_path / "channels.yaml"
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "stitcher.cli", "serve", "--config",
                           str(path), "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert expected in output and "Traceback" not in output, output
