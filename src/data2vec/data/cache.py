"""Where data2vec keeps what it makes or fetches once: the built-in sets (prepared on first use), downloaded
checkpoints and converted released models. One folder: ``$DATA2VEC_CACHE``, else ``$XDG_CACHE_HOME/data2vec``,
else ``~/.cache/data2vec``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("DATA2VEC_CACHE"):
        return Path(os.environ["DATA2VEC_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "data2vec"
