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
from typing import Any

import torch

from harness.errors import UnknownName
from harness.export.base import (
    ExportFormat,
    ExportRefused,
    ExportReport,
    PrunedStructure,
    file_digest,
    read_structure,
    structure_of,
)
from harness.export.gguf import GGUFExport
from harness.export.gguf_vocab import tokenizer_json_of
from harness.export.hf import HFExport
from methods.arch import ModelAdapter, adapt

log = logging.getLogger(__name__)

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (HFExport(), GGUFExport())}

__all__ = ["FORMATS", "ExportRefused", "ExportReport", "check_export", "export", "export_model", "read_structure",
           "resolve_format"]


def resolve_format(fmt: str, dtype: str | None = None) -> tuple[ExportFormat, str]:
    """The format and the dtype (its default when None), or one line naming the choices."""
    if fmt not in FORMATS:
        raise UnknownName(f"unknown export format '{fmt}'; choose {', '.join(FORMATS)}")
    target = FORMATS[fmt]
    dtype = dtype or target.default_dtype
    if dtype not in target.dtypes:
        raise UnknownName(f"format '{fmt}' has no dtype '{dtype}'; choose {', '.join(target.dtypes)}")
    return target, dtype


def check_export(checkpoint: str | Path, fmt: str,
                 dtype: str | None = None) -> tuple[ExportFormat, PrunedStructure, str]:
    """Everything cheap: the format and dtype exist, the path is a pruned checkpoint, the format can hold it."""
    target, dtype = resolve_format(fmt, dtype)
    structure = read_structure(checkpoint)
    reason = target.refusal(structure, dtype)
    if reason is not None:
        others = [name for name, f in FORMATS.items() if name != fmt and f.refusal(structure, f.default_dtype) is None]
        where = f"; format {' or '.join(others)} can hold it" if others else "; no export format can hold it"
        raise ExportRefused(f"cannot export '{checkpoint}' as {fmt}: {reason}{where}")
    return target, structure, dtype


def export(checkpoint: str | Path, fmt: str, out: str | Path, dtype: str | None = None) -> ExportReport:
    """Write a pruned checkpoint in ``fmt`` to ``out``."""
    from transformers import AutoTokenizer

    from harness.checkpoint import load_pruned

    target, structure, dtype = check_export(checkpoint, fmt, dtype)
    model = load_pruned(checkpoint, dtype=torch.float32, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return write_export(target, adapt(model), tokenizer, structure, Path(out), dtype, label=str(checkpoint))


def export_model(adapter: ModelAdapter, tokenizer: Any, source: dict[str, Any] | None, fmt: str, out: str | Path,
                 dtype: str | None = None) -> ExportReport:
    """Write a model in memory (a bench cell's, dense or pruned) in ``fmt``; refused like a checkpoint would be."""
    target, dtype = resolve_format(fmt, dtype)
    structure = structure_of(adapter, adapter.ops, source, tokenizer_json_of(tokenizer))
    reason = target.refusal(structure, dtype)
    if reason is not None:
        raise ExportRefused(f"cannot export the model as {fmt}: {reason}")
    return write_export(target, adapter, tokenizer, structure, Path(out), dtype,
                        label=structure.source.get("name", "model"))


def write_export(target: ExportFormat, adapter: ModelAdapter, tokenizer: Any, structure: PrunedStructure, out: Path,
                 dtype: str, label: str) -> ExportReport:
    """Write beside ``out`` first, then rename into place: a reader never sees half an export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    start = time.perf_counter()
    try:
        notes = target.write(adapter, tokenizer, structure, tmp, dtype)
        _remove(out)
        os.replace(tmp, out)
    finally:
        _remove(tmp)
    seconds = time.perf_counter() - start
    size, sha = file_digest(out)
    log.info("exported %s as %s (%s): %s, %.1f MB in %.1f s", label, target.name, dtype, out, size / 1e6, seconds)
    return ExportReport(format=target.name, dtype=dtype, path=str(out), bytes=size, sha256=sha,
                        seconds=round(seconds, 3), notes=notes)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
