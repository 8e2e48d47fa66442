"""Where prunebench keeps what it can rebuild: converted models, extracted text, pruned-model caches."""

import os
from pathlib import Path


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
