"""The manifest of a published run: the sha256 of every file ``prunebench publish`` copied.

A published folder (``results/<model>``) holds ``manifest.json`` beside ``bench.json``. Reading a result
file under it checks the file against the manifest: a result edited after publishing, or added to the folder
by hand, is reported by path and left out of every table (harness.results.scan_results), as a file that
fails its own checks is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.files import sha256_file, write_text_atomic

MANIFEST = "manifest.json"
RUN_RECORD = "bench.json"  # what marks the root of a bench run, published or not


class RunManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = "prunebench-run-manifest"
    version: int = 1
    model: str
    commit: str
    published_at: str
    files: dict[str, str]  # path relative to the run folder -> sha256


def write_manifest(run_dir: Path, model: str, commit: str) -> RunManifest:
    """Record every file under ``run_dir`` (the manifest itself aside)."""
    run_dir = Path(run_dir)
    files = {p.relative_to(run_dir).as_posix(): sha256_file(p) for p in sorted(run_dir.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    manifest = RunManifest(model=model, commit=commit, files=files,
                           published_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_text_atomic(run_dir / MANIFEST, manifest.model_dump_json(indent=2))
    return manifest


def run_root(path: Path) -> Path | None:
    """The bench run folder a file belongs to: the nearest folder above it that holds ``bench.json``."""
    for folder in Path(path).resolve().parents:
        if (folder / RUN_RECORD).is_file():
            return folder
    return None


def read_manifest(root: Path) -> RunManifest | None:
    """The manifest of a run folder, None for a run that was not published; a broken one is a ValueError."""
    file = Path(root) / MANIFEST
    if not file.is_file():
        return None
    try:
        return RunManifest.model_validate_json(file.read_text())
    except (OSError, ValidationError) as err:
        raise ValueError(f"{file} is not a run manifest ({type(err).__name__})") from None


def manifest_problem(path: Path) -> str | None:
    """Why a file under a published run does not match its manifest; None when it does or nothing was published."""
    root = run_root(path)
    if root is None:
        return None
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        return str(err)
    if manifest is None:
        return None
    name = Path(path).resolve().relative_to(root).as_posix()
    recorded = manifest.files.get(name)
    if recorded is None:
        return f"not among the files its published run's manifest ({root / MANIFEST}) lists"
    if sha256_file(Path(path)) != recorded:
        return f"its content differs from what its published run's manifest ({root / MANIFEST}) records"
    return None

