"""Where prunebench keeps what it can rebuild: converted models, extracted text, pruned-model caches."""

import os
from pathlib import Path

from harness.errors import PrunebenchError


def cache_dir() -> Path:
    """``$PRUNEBENCH_CACHE``, else ``$XDG_CACHE_HOME/prunebench``, else ``~/.cache/prunebench``."""
    explicit = os.environ.get("PRUNEBENCH_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "prunebench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_size_limit() -> int | None:
    """``$PRUNEBENCH_CACHE_MAX_GB``: the most bytes each model cache folder (pruned, recovered models) keeps,
    evicting the least recently used entries beyond it; None (no limit) when unset."""
    text = os.environ.get("PRUNEBENCH_CACHE_MAX_GB", "").strip()
    if not text:
        return None
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:  # also refuses nan
        raise PrunebenchError(f"PRUNEBENCH_CACHE_MAX_GB={text!r}: give a number of gigabytes, 0 or more")
    return int(gigabytes * 2**30)
