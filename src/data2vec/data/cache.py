"""Where generated data lives: built-in sets, prepared once, under ``$DATA2VEC_CACHE`` (default
``~/.cache/data2vec``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("DATA2VEC_CACHE", Path.home() / ".cache" / "data2vec"))
