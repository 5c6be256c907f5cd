"""House style, enforced: the pure library is ruff-clean and mypy --strict clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ruff_on_manifests() -> None:
    done = _run("ruff", "check", "manifests")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_on_manifests() -> None:
    done = _run("mypy", "--strict", "manifests")
    assert done.returncode == 0, done.stdout + done.stderr
