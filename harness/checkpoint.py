"""Pruned checkpoints: a directory that rebuilds the exact pruned model.

Layout: the weights as safetensors and config.json (``save_pretrained``), the tokenizer files, and
``prunebench.json``: the dense configuration plus the list of structural edits (the adapter's op log),
the method, its decisions and parameter counts, and the size and sha256 of every other file
(``files``), so that a truncated or altered checkpoint is detected (:func:`verify_checkpoint`) rather
than loaded or half-loaded. Reloading builds the dense skeleton without allocating weights, replays
the edits, then assigns the saved tensors, so the logits are identical.

    from harness import load_pruned; model = load_pruned("out/2ssp-25")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from harness.errors import PrunebenchError
from harness.files import as_if_created, sha256_file
from methods.arch import ModelAdapter, adapt
from methods.custom_ops import REPLAYERS

MANIFEST_NAME = "prunebench.json"
FORMAT = "prunebench-pruned-model"
FORMAT_VERSION = 1  # ``files`` was added later, optionally: checkpoints without it still load
UNRECORDED = f"no file list in its {MANIFEST_NAME} (written before checkpoints recorded their files)"


def _synced_sha256(file: Path) -> str:
    with open(file, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        os.fsync(f.fileno())  # on disk before the rename publishes it
    return digest


def file_records(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``directory`` except the manifest (flushed to disk on the way)."""
    return {f.relative_to(directory).as_posix(): {"size": f.stat().st_size, "sha256": _synced_sha256(f)}
            for f in sorted(directory.rglob("*")) if f.is_file() and f.name != MANIFEST_NAME}


def save_pruned(adapter: ModelAdapter, tokenizer: Any, out_dir: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the pruned model to ``out_dir`` atomically (a temporary sibling directory, then a rename).

    The manifest records the size and digest of each file as written in the temporary directory, so a
    reader can tell a sound checkpoint from one cut short or altered after the rename.
    """
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    adapter.model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": adapter.config.model_type,
        "base_config": adapter.base_config,
        "ops": adapter.ops,
        "parameters": {"total": adapter.total_parameters(), "blocks": adapter.block_parameters()},
        **(info or {}),
        "files": file_records(tmp),
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
    as_if_created(tmp)  # safetensors writes 0600: a shared cache's other users could not load the weights
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST_NAME
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise PrunebenchError(f"'{path}' is not a pruned checkpoint (no {MANIFEST_NAME})") from err
    except (OSError, json.JSONDecodeError) as err:
        raise PrunebenchError(f"cannot read {file}: {err}") from err
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise PrunebenchError(f"{file} is not a version-{FORMAT_VERSION} {FORMAT} manifest")
    return manifest


def verify_checkpoint(path: str | Path, digests: bool = True) -> str | None:
    """None when every file the manifest lists is there with its size and sha256; else a short reason.

    A checkpoint written before manifests listed their files cannot be verified: that is a reason too
    (``UNRECORDED``), though :func:`load_pruned` still loads it. ``digests=False`` checks sizes only.
    """
    path = Path(path)
    file = path / MANIFEST_NAME
    if not file.is_file():
        return f"no {MANIFEST_NAME}"
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        return f"{MANIFEST_NAME} is unreadable ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:80]})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"{MANIFEST_NAME} is not a {FORMAT} manifest"
    files = manifest.get("files")
    if not files:
        return UNRECORDED
    try:
        records = {name: (int(r["size"]), str(r["sha256"])) for name, r in files.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        return f"the file list in {MANIFEST_NAME} is malformed"
    for name, (size, _) in records.items():  # every size first: cheap, and what a cut file fails
        target = path / name
        if not target.is_file():
            return f"{name} is missing"
        if (actual := target.stat().st_size) != size:
            return f"{name}: {actual} bytes, expected {size}"
    if digests:
        for name, (_, sha) in records.items():
            if sha256_file(path / name) != sha:
                return f"{name}: sha256 differs from the one recorded"
    return None


def weights_problem(directory: Path) -> str | None:
    """Why the safetensors weights of a model directory cannot be whole (cut short, a header that does not
    parse), from each file's header and size alone; None when they can. A pruned checkpoint's manifest checks
    more (:func:`verify_checkpoint`); this also covers any model directory."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length)) if 0 < length < 100_000_000 else None
        except (OSError, ValueError) as err:
            return f"{file.name} is unreadable ({type(err).__name__})"
        if not isinstance(header, dict):
            return f"{file.name} has no readable safetensors header"
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
        expected = 8 + length + max(ends, default=0)
        if (actual := file.stat().st_size) != expected:
            return f"{file.name} is {actual} bytes, its header describes {expected}"
    return None


def base_config(manifest: dict[str, Any]):
    from transformers import CONFIG_MAPPING

    cfg = dict(manifest["base_config"])
    return CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)


def build_skeleton(manifest: dict[str, Any], dtype: torch.dtype | None = None) -> ModelAdapter:
    """The pruned structure with weightless parameters (buffers such as rotary tables are real).

    Built in ``dtype`` as ``from_pretrained(dtype=...)`` builds a model: its buffers get the dtypes they get
    there (rotary frequencies stay float32; ``model.to(dtype)`` afterwards would round them), so a model
    reloaded from the cache computes what the freshly loaded one did.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(base_config(manifest), **({"dtype": dtype} if dtype else {}))
    adapter = adapt(model)
    adapter.replay(manifest["ops"], REPLAYERS)
    return adapter


def load_pruned(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """Rebuild a model saved by :func:`save_pruned`; weights keep their saved dtype unless ``dtype`` is given."""
    from safetensors.torch import load_file

    path = Path(path)
    model = build_skeleton(read_manifest(path), dtype).model
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    if dtype is not None:
        state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    if not state:
        raise PrunebenchError(f"'{path}' holds no safetensors weights")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise PrunebenchError(f"'{path}': weights that the rebuilt structure does not have: {unexpected[:5]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise PrunebenchError(f"'{path}': weights missing from the checkpoint: {still_meta[:5]} (of {len(missing)})")
    if device is not None:
        model.to(device)
    return model.eval()
