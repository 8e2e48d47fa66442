"""Exporting pruned checkpoints to formats that other tools load: plain transformers (``hf``), llama.cpp (``gguf``).

    from harness.export import export; export("runs/x/2ssp-0.375", "gguf", "out/model.gguf", dtype="f16")

Adding a format: a module with an :class:`~harness.export.base.ExportFormat` subclass and one line in
``FORMATS``. ``check_export`` refuses what a format cannot hold, from the manifest alone, naming the
formats that can.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from harness.errors import UnknownName
from harness.export.base import ExportFormat, ExportRefused, ExportReport, PrunedStructure, file_digest, read_structure
from harness.export.hf import HFExport

log = logging.getLogger(__name__)

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (HFExport(),)}

__all__ = ["FORMATS", "ExportRefused", "ExportReport", "check_export", "export", "read_structure"]


def check_export(checkpoint: str | Path, fmt: str, dtype: str | None = None) -> tuple[ExportFormat, PrunedStructure, str]:
    """Everything cheap: the format and dtype exist, the path is a pruned checkpoint, the format can hold it."""
    if fmt not in FORMATS:
        raise UnknownName(f"unknown export format '{fmt}'; choose {', '.join(FORMATS)}")
    target = FORMATS[fmt]
    dtype = dtype or target.default_dtype
    if dtype not in target.dtypes:
        raise UnknownName(f"format '{fmt}' has no dtype '{dtype}'; choose {', '.join(target.dtypes)}")
    structure = read_structure(checkpoint)
    reason = target.refusal(structure, dtype)
    if reason is not None:
        others = [name for name, f in FORMATS.items() if name != fmt and f.refusal(structure, f.default_dtype) is None]
        where = f"; format {' or '.join(others)} can hold it" if others else "; no export format can hold it"
        raise ExportRefused(f"cannot export '{checkpoint}' as {fmt}: {reason}{where}")
    return target, structure, dtype


def export(checkpoint: str | Path, fmt: str, out: str | Path, dtype: str | None = None) -> ExportReport:
    """Write the checkpoint in ``fmt`` to ``out`` (written beside it first, then renamed into place)."""
    target, structure, dtype = check_export(checkpoint, fmt, dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    start = time.perf_counter()
    try:
        notes = target.write(Path(checkpoint), structure, tmp, dtype)
        _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)
    seconds = time.perf_counter() - start
    size, sha = file_digest(out)
    log.info("exported %s as %s (%s): %s, %.1f MB in %.1f s", checkpoint, fmt, dtype, out, size / 1e6, seconds)
    return ExportReport(format=fmt, dtype=dtype, path=str(out), bytes=size, sha256=sha, seconds=round(seconds, 3),
                        notes=notes)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
