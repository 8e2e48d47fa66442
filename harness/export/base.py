"""What every export format shares: the pruned structure read from a checkpoint, and the format protocol.

A format first says, from the manifest alone (no weights), whether it can hold a checkpoint
(:meth:`ExportFormat.refusal`), so that bad input is one line before any heavy work; then it writes.
A checkpoint's structure is read by replaying its edits on a weightless skeleton, so it is exactly the
model that :func:`harness.load_pruned` rebuilds; a model in memory (a bench cell's) is described by its adapter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.checkpoint import build_skeleton, read_manifest
from harness.errors import PrunebenchError
from methods.arch import ModelAdapter

# The edits of the layer-structure family: whole modules or layers removed, FFN neurons dropped.
STRUCTURAL_OPS = frozenset({"remove_attention", "remove_ffn", "remove_layers", "keep_ffn_neurons"})


class ExportRefused(PrunebenchError):
    """A checkpoint that a format cannot hold (one line naming why, and which format can)."""


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer as exported: 0 heads means no attention, width 0 means no FFN."""

    heads: int
    kv_heads: int
    ffn_width: int


@dataclass(frozen=True)
class PrunedStructure:
    """The shape of a pruned checkpoint, from its manifest: what a format needs to decide and to write."""

    model_type: str
    base_config: dict[str, Any]
    dense_layers: int
    dense_ffn_width: int
    layers: tuple[LayerShape, ...]
    other_ops: tuple[str, ...]  # edits outside the layer-structure family (e.g. SliceGPT's rotations)
    source: dict[str, str]  # the prune report's model record: name, kind, dtype, device
    tokenizer: dict[str, Any] | None  # the tokenizer.json without its vocabulary and merges (None: no fast tokenizer)

    @property
    def homogeneous(self) -> bool:
        """Whole layers removed at most: every layer keeps attention and an FFN of one common width."""
        if self.other_ops or not self.layers:
            return False
        widths = {layer.ffn_width for layer in self.layers}
        return all(layer.heads for layer in self.layers) and len(widths) == 1 and 0 not in widths

    def describe(self) -> str:
        attn = sum(1 for layer in self.layers if layer.heads)
        ffn = sum(1 for layer in self.layers if layer.ffn_width)
        return f"{len(self.layers)} layers, {attn} with attention, {ffn} with an FFN"


def tokenizer_outline(tokenizer_json: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a format decides a tokenizer by: its tokenizer.json without the (large) vocabulary and merges."""
    if tokenizer_json is None:
        return None
    outline = {k: v for k, v in tokenizer_json.items() if k not in ("model", "added_tokens")}
    outline["model"] = {k: v for k, v in (tokenizer_json.get("model") or {}).items() if k not in ("vocab", "merges")}
    return outline


def structure_of(adapter: ModelAdapter, ops: list[dict[str, Any]], source: dict[str, Any] | None = None,
                 tokenizer_json: dict[str, Any] | None = None) -> PrunedStructure:
    """The structure of a model held by ``adapter`` (on any device, meta included), given its edit log."""
    config = adapter.config
    base = adapter.base_config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    layers = tuple(
        LayerShape(heads if adapter.has_attention(i) else 0, kv_heads if adapter.has_attention(i) else 0,
                   adapter.ffn_width(i))
        for i in range(adapter.num_layers)
    )
    return PrunedStructure(
        model_type=config.model_type,
        base_config=dict(base),
        dense_layers=int(base["num_hidden_layers"]),
        dense_ffn_width=int(base["intermediate_size"]),
        layers=layers,
        other_ops=tuple(sorted({op["op"] for op in ops} - STRUCTURAL_OPS)),
        source={k: str(v) for k, v in (source or {}).items()},
        tokenizer=tokenizer_outline(tokenizer_json),
    )


def read_structure(checkpoint: str | Path) -> PrunedStructure:
    """A checkpoint's structure without loading its weights (a meta-device skeleton replays its edits)."""
    manifest = read_manifest(checkpoint)
    report = manifest.get("prune_report") or {}
    tokenizer_file = Path(checkpoint) / "tokenizer.json"
    tokenizer_json = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else None
    return structure_of(build_skeleton(manifest), manifest["ops"], report.get("model"), tokenizer_json)


class ExportReport(BaseModel):
    """What an export wrote: recorded beside a bench result and printed by ``prunebench export``."""

    model_config = ConfigDict(extra="forbid")

    format: str
    dtype: str
    path: str
    bytes: int
    sha256: str
    seconds: float
    notes: list[str] = []  # exact equivalents written where the engine needs them, tensors kept wider, ...


def file_digest(path: Path) -> tuple[int, str]:
    """Total size and sha256 of a file, or of a directory's files in name order."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    size = 0
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


class ExportFormat:
    """One export format. ``refusal`` is cheap (structure only); ``write`` does the work."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]]
    default_dtype: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and the README: what loads it

    def refusal(self, structure: PrunedStructure, dtype: str) -> str | None:
        """None when this format can hold the checkpoint in ``dtype``; else why not, in one line."""
        raise NotImplementedError

    def write(self, adapter: ModelAdapter, tokenizer: Any, structure: PrunedStructure, out: Path,
              dtype: str) -> list[str]:
        """Write the model held by ``adapter`` (float weights on the CPU) to ``out``; return notes for the reader.

        ``tokenizer`` is the model's Hugging Face tokenizer; ``structure.source`` names where the model came
        from (an embedded model's own files may carry a better tokenizer description).
        """
        raise NotImplementedError
