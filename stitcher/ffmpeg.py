"""Where the ffmpeg and ffprobe programs are.

The system's on PATH when installed (Debian's ffmpeg in production and CI);
otherwise the binary the ``imageio-ffmpeg`` package ships, so the demo runs on
a machine with nothing installed by hand (that package has no ffprobe:
conditioning then probes with ``ffmpeg -i``).
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path


@cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: the system's on PATH, else imageio-ffmpeg's bundled one."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg  # type: ignore[import-untyped]

    return imageio_ffmpeg.get_ffmpeg_exe()


@cache
def ffprobe_exe() -> str | None:
    """Path of ffprobe, or ``None`` when only the bundled ffmpeg is available."""
    exe = shutil.which("ffprobe")
    if exe:
        return exe
    sibling = Path(ffmpeg_exe()).with_name("ffprobe")
    return str(sibling) if sibling.exists() else None
