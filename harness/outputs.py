"""Where a command may write. Every ``--out`` is checked before any work starts, and nothing is replaced or
deleted unless it is what that command itself writes.

- :func:`out_path` turns a user's ``--out`` into a path (an empty one is refused: it would mean the current
  folder);
- :func:`check_writable` refuses a path that cannot be written (a file where a folder must go, a file among its
  parents, a folder without write permission) before an hour of pruning fails at the end;
- :func:`check_replaceable` lets ``--force`` replace only what the command writes: a pruned checkpoint, an HF
  export, a GGUF file, a bench run, a leaderboard, repro's results. Anything else in the way is refused.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from harness.errors import PrunebenchError

Kind = Literal["checkpoint", "hf-export", "gguf-export", "bench-run", "repro"]

WHAT = {
    "checkpoint": "a pruned checkpoint (prunebench prune --out)",
    "hf-export": "an HF export (prunebench export --format hf)",
    "gguf-export": "a GGUF file (prunebench export --format gguf)",
    "bench-run": "a bench run (its bench.json)",
    "repro": "results of prunebench repro",
}

# The files a transformers model directory holds (save_pretrained of a model and its tokenizer).
_HF_FILE = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|preprocessor_config"
    r"|chat_template)\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|merges\.txt|tokenizer\.model"
    r"|chat_template\.jinja|vocab\.txt|spiece\.model"
)


def out_path(value: str | Path | None, flag: str = "--out") -> Path | None:
    """The path a user gave; an empty string (the current folder, by accident) is refused."""
    if value is None:
        return None
    if not str(value).strip():
        raise PrunebenchError(f"{flag} is empty: give a path (use '.' to mean the current folder)")
    return Path(value).expanduser()


def check_writable(path: Path, flag: str = "--out", folder: bool = True) -> None:
    """Refuse a path that cannot be created or written: a file where a folder goes (or the reverse), a file
    among its parents, or a nearest existing folder this process may not write into."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise PrunebenchError(f"{flag} {path} is a file; give a folder")
        if not folder and path.is_dir():
            raise PrunebenchError(f"{flag} {path} is a folder; give a file path")
    home = path.absolute() if folder else path.absolute().parent  # the folder the command creates or writes in
    existing = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    if not existing.is_dir():
        raise PrunebenchError(f"{flag} {path}: {existing} is a file, so nothing can be created under it")
    try:  # a real attempt: permission bits do not tell for root, a read-only mount or /sys
        fd, probe = tempfile.mkstemp(prefix=".prunebench-write-check-", dir=existing)
    except OSError as err:
        raise PrunebenchError(f"{flag} {path}: nothing can be written in {existing} ({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def holds(path: Path, kind: Kind) -> bool:
    """Whether ``path`` holds what a command of ``kind`` writes (and may thus be replaced by it)."""
    path = Path(path)
    if kind == "gguf-export":
        try:
            with open(path, "rb") as f:
                return path.is_file() and f.read(4) == b"GGUF"
        except OSError:
            return False
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if kind == "checkpoint":
        try:
            manifest = json.loads((path / "prunebench.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and manifest.get("format") == "prunebench-pruned-model"
    if kind == "hf-export":
        return (path / "config.json").is_file() and all(e.is_file() and _HF_FILE.fullmatch(e.name) for e in entries)
    if kind == "bench-run":
        return (path / "bench.json").is_file()
    if kind == "repro":
        return all(e.is_file() and e.name.endswith((".json", ".log")) and not e.name.startswith(".") for e in entries)
    raise ValueError(kind)


# The lock a bench holds on its run folder while it runs (harness.bench.runner): a folder that holds only the
# lock of a bench that stopped before writing anything is still empty.
RUN_LOCK = ".bench.lock"


def _empty(path: Path) -> bool:
    return path.is_dir() and not any(p.name != RUN_LOCK for p in path.iterdir())


def check_replaceable(path: Path, kind: Kind, force: bool, flag: str = "--out") -> None:
    """``path`` may be written: it does not exist, is an empty folder, or holds what this command writes and
    ``force`` says to replace it. Anything else is refused in one line and left as it is."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()) or _empty(path):
        return
    if not holds(path, kind):
        raise PrunebenchError(f"{flag} {path} exists and is not {WHAT[kind]}: it is left alone; choose another path")
    if not force:
        raise PrunebenchError(f"{flag} {path} holds {WHAT[kind]}; pass --force to replace it")


def check_run_folder(path: Path, flag: str = "--out") -> None:
    """A bench writes into a folder that is new, empty, or an earlier bench run (which it resumes)."""
    check_writable(path, flag)
    if path.exists() and not _empty(path) and not holds(path, "bench-run"):
        raise PrunebenchError(f"{flag} {path} holds files that are not a bench run (no bench.json): a bench writes "
                              "bench.json, cells/ and leaderboard files there, so choose an empty or new folder")
