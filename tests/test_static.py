"""The product's code stays typed and linted: mypy and ruff over the packages
that ship (``manifests``, ``stitcher``, ``fixtures``), ruff over the tests and
benchmarks too, with the settings in pyproject.toml. A new error fails the suite where it was introduced, instead of
piling up for a later clean-up (ten had, by the time this test was added)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["manifests", "stitcher", "fixtures"]


@pytest.mark.parametrize("tool", [
    ["mypy", "--no-error-summary", *PACKAGES],
    ["ruff", "check", "--output-format", "concise", *PACKAGES, "tests", "bench"],
], ids=["mypy", "ruff"])
def test_the_shipped_packages_are_clean(tool: list[str], tmp_path: Path) -> None:
    argv = [sys.executable, "-m", *tool]
    if tool[0] == "mypy":
        argv += ["--cache-dir", str(tmp_path / "mypy")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
