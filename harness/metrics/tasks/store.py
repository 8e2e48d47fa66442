"""Offline task datasets on disk, as JSONL + lm-eval YAML.

One directory per (task, generator version, fingerprint of the source and of the generator): a new
generator, an edited builder or a changed source gets a new directory, so a stale dataset is never reused. \
A directory is written under a temporary name and
renamed into place, so a concurrent bench cell sees either nothing or a complete dataset; ``meta.json``
records the JSONL's sha256, which is checked on every reuse.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import DataUnavailable
from harness.files import sha256_file
from harness.metrics.tasks.builders import Built

LOG = logging.getLogger(__name__)
META = "meta.json"


@dataclass(frozen=True)
class StoredTask:
    """A generated task on disk and what identifies it."""

    name: str
    version: int
    directory: Path
    data_file: Path
    yaml_file: Path
    sha256: str
    n_rows: int
    n_skipped: int
    source: str
    source_sha256: str


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Canonical JSONL (sorted keys, ASCII escapes): equal rows give equal bytes, hence equal sha256,
    and no U+2028-like character can pass for a line break in a line-based reader."""
    return "".join(json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n" for r in rows).encode()


def materialise(
    root: Path,
    name: str,
    version: int,
    source: str,
    source_sha256: str,
    fingerprint: str,
    build: Callable[[], Built],
    task_config: Callable[[Path], dict[str, Any]],
) -> StoredTask:
    """The stored task for this generator version and fingerprint (a digest of everything the rows
    depend on), generated first if missing or corrupt."""
    final = root / name / f"v{version}-{fingerprint[:16]}"
    stored = _read(final, name)
    if stored is not None:
        _point_yaml_here(stored, task_config)
        return stored
    if final.exists():
        LOG.warning("offline task %s at %s is corrupt; regenerating", name, final)
        shutil.rmtree(final, ignore_errors=True)
    _write(final, name, version, source, source_sha256, build, task_config)
    stored = _read(final, name)
    if stored is None:
        raise DataUnavailable(f"offline task {name!r} could not be written to {final}")
    return stored


def _point_yaml_here(stored: StoredTask, task_config: Callable[[Path], dict[str, Any]]) -> None:
    """Rewrite the YAML if it names the data file elsewhere: a cache generated on the host and
    mounted at another path in a container (or moved) must still be read from where it now is.
    The replacement is atomic, so a concurrent reader sees the old or the new YAML, never half."""
    text = _yaml_text(task_config(stored.data_file))
    if stored.yaml_file.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{stored.yaml_file.name}.", dir=stored.directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, stored.yaml_file)
    LOG.info("offline task %s: YAML re-pointed at %s", stored.name, stored.data_file)


def _yaml_text(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _read(directory: Path, name: str) -> StoredTask | None:
    """The task in ``directory`` if it is complete and its JSONL matches the recorded sha256."""
    try:
        meta = json.loads((directory / META).read_text())
        data_file, yaml_file = directory / f"{name}.jsonl", directory / f"{name}.yaml"
        if not yaml_file.is_file() or sha256_file(data_file) != meta["sha256"]:
            return None
        return StoredTask(
            name=name,
            version=meta["version"],
            directory=directory,
            data_file=data_file,
            yaml_file=yaml_file,
            sha256=meta["sha256"],
            n_rows=meta["n_rows"],
            n_skipped=meta["n_skipped"],
            source=meta["source"],
            source_sha256=meta["source_sha256"],
        )
    except (OSError, ValueError, KeyError):
        return None


def _write(
    final: Path,
    name: str,
    version: int,
    source: str,
    source_sha256: str,
    build: Callable[[], Built],
    task_config: Callable[[Path], dict[str, Any]],
) -> None:
    """Generate into a temporary sibling directory, then rename it to ``final`` in one step."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        built = build()
        if not built.rows:
            raise DataUnavailable(f"offline task {name!r}: the source {source} gave no usable example")
        payload = jsonl_bytes(built.rows)
        (tmp / f"{name}.jsonl").write_bytes(payload)
        # The YAML names the data file by its final path, which is where lm-eval will read it.
        config = task_config(final / f"{name}.jsonl")
        (tmp / f"{name}.yaml").write_text(_yaml_text(config))
        meta = {
            "name": name,
            "version": version,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "n_rows": len(built.rows),
            "n_skipped": built.n_skipped,
            "source": source,
            "source_sha256": source_sha256,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
            LOG.info("generated offline task %s: %d rows in %s", name, len(built.rows), final)
        except OSError:
            LOG.info("offline task %s was generated concurrently; using %s", name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
