"""Where camcore keeps its files: the demo media and the heatmap PNGs.

One home directory, ``$CAM_EXPLORER_HOME`` or ``~/.cache/cam-explorer``. Read on every
call (not at import) so tests and users can point it elsewhere at any time.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CAM_EXPLORER_HOME"
DEFAULT_HOME = Path("~/.cache/cam-explorer")


def home() -> Path:
    """The home directory (absolute, created if missing)."""
    raw = os.environ.get(HOME_ENV) or str(DEFAULT_HOME)
    path = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def heatmaps_dir() -> Path:
    """Where pushed heatmaps are written as 16-bit PNGs (absolute, created if missing)."""
    path = home() / "heatmaps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_media_dir() -> Path:
    """Where the demo dataset's images are copied to (absolute, created if missing)."""
    path = home() / "demo-media"
    path.mkdir(parents=True, exist_ok=True)
    return path
