"""Writing files so that readers never see half of one, and others may read what is shared.

Every file prunebench writes goes through :func:`write_text_atomic` / :func:`write_bytes_atomic` (a temporary
sibling, fsync, rename). Temporary files and folders from :mod:`tempfile` are created 0600 / 0700, which a
rename would carry into place: on a cache shared by a group (``PRUNEBENCH_CACHE`` on a cluster) nobody else
could read a result, a pruned model or a generated task. So what is put in place gets the permissions a plain
``open``/``mkdir`` would have given it under the process's umask (``umask 002`` shares with the group).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it (Linux reports it in /proc; elsewhere set and restore)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass  # not Linux: the portable way below
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_created(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain open()/mkdir() would have given it."""
    mask = current_umask()
    path = Path(path)
    if path.is_dir():
        for folder, _dirs, files in os.walk(path):
            os.chmod(folder, 0o777 & ~mask)
            for name in files:
                os.chmod(Path(folder) / name, 0o666 & ~mask)
        return
    os.chmod(path, 0o666 & ~mask)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write via a temporary file in the same folder and a rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        as_if_created(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder in ``parent`` to be filled and renamed into place, with the mode mkdir would give it."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    as_if_created(folder)
    return folder


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
