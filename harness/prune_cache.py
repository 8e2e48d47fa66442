"""The pruned-model cache: one checkpoint directory per key, safe to share between processes.

A bench cell prunes once and every later cell with the same pruning (another metric, a re-run) loads
the result. Three things keep that from serving the wrong model:

- the key covers the code: :func:`code_fingerprint` hashes every project module that pruning imports (the
  import closure of ``harness.pruning`` and of every registered method, imports inside functions included;
  a method added from outside methods/ too), plus the torch and transformers versions, so a fix to any
  of them is never answered with a model the old code pruned;
- an exclusive file lock per key spans the check and the creation, so cells on one shared cache
  (Ray workers, two benches) never prune the same key at once: the second waits and reuses the entry;
- an entry is served only if it verifies against the sizes and digests its manifest recorded
  (:func:`harness.checkpoint.verify_checkpoint`); a truncated, altered or unverifiable one is logged,
  deleted and pruned again, instead of failing every cell that reads it.

Every code change makes new keys, so the folder would only grow: before and after creating an entry, the
least recently used others are evicted while the folder holds more than its size limit
(``$PRUNEBENCH_CACHE_MAX_GB``) or the file system has less than ``MIN_FREE_FRACTION`` free. Never evicted:
an entry whose lock another process holds (being created or checked), and one created or served within
``RECENT_S`` seconds, which a process may still be loading after the lock was released.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock, Timeout

from harness.checkpoint import UNRECORDED, verify_checkpoint
from harness.errors import PrunebenchError
from harness.paths import cache_dir, cache_size_limit

log = logging.getLogger(__name__)

# The share of the file system a new entry leaves free, by evicting old entries first (a full disk fails a
# cell after its pruning has run; an evicted entry only costs a pruning later).
MIN_FREE_FRACTION = 0.05
RECENT_S = 300.0

# What prunes: the entry point every pruning goes through (``prunebench prune`` and a bench cell alike).
PRUNING_ENTRY = "harness.pruning"
PROJECT_PACKAGES = ("harness", "methods")


def _module_file(name: str, base: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _imported(file: Path, name: str) -> set[str]:
    """Every module ``file`` (the module ``name``) may import: each import statement, at any depth (imports
    inside functions run too), with the packages above each module, whose ``__init__`` runs first."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*prefix, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # submodules imported by name
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, len(m.split(".")) + 1)}


def import_closure(roots: Iterable[str], base: Path) -> list[Path]:
    """The source files of the project modules that ``roots`` import, directly or not (``base`` holds the
    harness and methods packages)."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        file = _module_file(name, base)
        if name in seen or file is None:
            continue
        seen[name] = file
        todo += sorted(_imported(file, name) - set(seen))
    return sorted(set(seen.values()))


def fingerprinted_files(base: Path) -> list[Path]:
    """What decides a pruned model: the import closure of the pruning entry point and of every built-in
    method (the registry names them as strings, which no import statement shows)."""
    from methods.registry import METHODS

    return import_closure([PRUNING_ENTRY, *(target.split(":")[0] for target in METHODS.values())], base)


def source_digest(files: Iterable[Path], base: Path) -> str:
    """sha256 of the files in path order, each as its path relative to ``base`` and its bytes (16 hex)."""
    digest = hashlib.sha256()
    for rel, file in sorted((f.relative_to(base).as_posix(), f) for f in files):
        data = file.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())  # lengths make the concatenation unambiguous
        digest.update(data)
    return digest.hexdigest()[:16]


@functools.cache
def _fingerprint() -> tuple[tuple[str, str], ...]:
    import torch
    import transformers

    import harness

    base = Path(harness.__file__).resolve().parent.parent
    return (("code", source_digest(fingerprinted_files(base), base)),
            ("torch", str(torch.__version__)), ("transformers", str(transformers.__version__)))


def added_methods_digest() -> str | None:
    """sha256 (16 hex) of each method added from outside methods/ (methods.registry.added_methods): its
    name, its module:Class and the bytes of that module's file; None when there is none.

    Without it a fix to such a method would be answered from the cache with what its old code pruned.
    """
    import importlib.util

    from methods.registry import added_methods

    added = sorted(added_methods().items())
    if not added:
        return None
    digest = hashlib.sha256()
    for name, target in added:
        spec = importlib.util.find_spec(target.split(":")[0])
        origin = spec.origin if spec is not None else None
        # An unimportable module fails in the cell that names it; here it only marks the key.
        data = Path(origin).read_bytes() if origin and Path(origin).is_file() else b"?"
        digest.update(f"{name}\0{target}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def code_fingerprint() -> dict[str, str]:
    """The code and library versions a pruned model depends on (prunebench's own computed once per process)."""
    added = added_methods_digest()
    return {**dict(_fingerprint()), **({"added_methods": added} if added else {})}


class Obtained(NamedTuple):
    entry: Path
    created: bool  # pruned now (no entry, a repair, or asked to prune again)
    repair: str | None = None  # why an existing entry was not served: corrupt, unverifiable (then pruned again)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class PrunedModelCache:
    """Checkpoint directories ``root/<key>``, each created under the lock ``root/<key>.lock``; at most
    ``max_bytes`` of them (None: no limit), the least recently used evicted first."""

    def __init__(self, root: Path, max_bytes: int | None = None, min_free_fraction: float = MIN_FREE_FRACTION,
                 recent_s: float = RECENT_S) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.min_free_fraction = min_free_fraction
        self.recent_s = recent_s

    @classmethod
    def in_cache(cls, folder: str) -> PrunedModelCache:
        """The cache ``folder`` of prunebench's cache directory, with the configured size limit."""
        return cls(cache_dir() / folder, max_bytes=cache_size_limit())

    def entry(self, key: str) -> Path:
        return self.root / key

    def obtain(self, key: str, create: Callable[[Path], None], reprune: bool = False) -> Obtained:
        """The verified entry of ``key``, whether it was created now, and why an existing one was replaced.

        ``create(path)`` must write a checkpoint at ``path`` atomically (``save_pruned`` does); it is
        called, under the lock, when there is no sound entry or when ``reprune`` asks for a new one.
        """
        entry = self.entry(key)
        repair = None
        with self._locked(key):
            self._sweep(key)
            if entry.exists():
                problem = None if reprune else verify_checkpoint(entry)
                if reprune:
                    log.info("re-pruning as asked: removing the cached %s", entry)
                elif problem is None:
                    os.utime(entry)  # its last use: what the eviction order reads
                    return Obtained(entry, False)
                else:
                    repair = f"{'unverifiable' if problem == UNRECORDED else 'corrupt'} ({problem})"
                    log.warning("pruned-model cache entry %s is %s; pruning again", entry, repair)
                self._remove(entry)
            self.evict(keep=key)  # room for the new entry
            try:
                create(entry)
            finally:
                self._sweep(key)  # what a failed create left half-written
            problem = verify_checkpoint(entry, digests=False)  # just written and hashed: sizes suffice
            if problem is not None:
                raise PrunebenchError(f"creating the pruned-model cache entry {entry} failed: {problem}")
            self.evict(keep=key)  # within the limit, the new entry counted
            return Obtained(entry, True, repair)

    def evict(self, keep: str) -> list[str]:
        """Remove the least recently used entries other than ``keep`` while the folder is over its limit or
        the disk short of free space; the keys removed."""
        def pressed(total: int) -> bool:
            over = self.max_bytes is not None and total > self.max_bytes
            usage = shutil.disk_usage(self.root)
            return over or usage.free < self.min_free_fraction * usage.total

        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        sizes = {p.name: folder_bytes(p) for p in entries}
        total = sum(sizes.values())
        evicted: list[str] = []
        recent = time.time() - self.recent_s
        for victim in sorted((p for p in entries if p.name != keep), key=lambda p: p.stat().st_mtime):
            if not pressed(total) or victim.stat().st_mtime > recent:
                break  # the rest were used more recently still
            lock = FileLock(self.root / f"{victim.name}.lock")
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue  # being created or checked by another process
            try:
                self._remove(victim)
            finally:
                lock.release()
            total -= sizes[victim.name]
            evicted.append(victim.name)
            log.info("evicted the least recently used cache entry %s (%.1f MB) to keep %s within its limit",
                     victim, sizes[victim.name] / 1e6, self.root)
        if pressed(total):
            log.warning("the cache %s holds %.1f GB and nothing more can be evicted (limit %s, %.1f GB free)",
                        self.root, total / 2**30,
                        "none" if self.max_bytes is None else f"{self.max_bytes / 2**30:.1f} GB",
                        shutil.disk_usage(self.root).free / 2**30)
        return evicted

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """The key's exclusive lock (an OS lock: released when its holder dies, however it dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / f"{key}.lock")
        try:
            lock.acquire(blocking=False)
        except Timeout:
            log.info("another process is creating the pruned-model cache entry %s: waiting for it", key)
            start = time.monotonic()
            lock.acquire()
            log.info("waited %.1f s for the pruned-model cache entry %s", time.monotonic() - start, key)
        try:
            yield
        finally:
            lock.release()

    def _sweep(self, key: str) -> None:
        """Temporary directories of ``save_pruned`` for this key: under the lock, nobody is writing them."""
        for leftover in [*self.root.glob(f".{key}.tmp-*"), *self.root.glob(f".{key}.old-*")]:
            shutil.rmtree(leftover, ignore_errors=True)

    def _remove(self, entry: Path) -> None:
        """Rename first, so that the entry disappears at once for a reader, then delete."""
        aside = entry.with_name(f".{entry.name}.old-{os.getpid()}")
        os.replace(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)
