"""Pruned checkpoints: a directory that rebuilds the exact pruned model.

Layout: the weights as safetensors and config.json (``save_pretrained``), the tokenizer files, and
``prunebench.json``: the dense configuration plus the list of structural edits (the adapter's op log),
the method, its decisions and parameter counts. Reloading builds the dense skeleton without
allocating weights, replays the edits, then assigns the saved tensors, so the logits are identical.

    from harness import load_pruned; model = load_pruned("out/2ssp-25")
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from harness.errors import PrunebenchError
from methods.arch import ModelAdapter, adapt

MANIFEST_NAME = "prunebench.json"
FORMAT = "prunebench-pruned-model"
FORMAT_VERSION = 1


def save_pruned(adapter: ModelAdapter, tokenizer: Any, out_dir: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the pruned model to ``out_dir`` atomically (a temporary sibling directory, then a rename)."""
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
    }
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
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


def base_config(manifest: dict[str, Any]):
    from transformers import CONFIG_MAPPING

    cfg = dict(manifest["base_config"])
    return CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)


def build_skeleton(manifest: dict[str, Any]) -> ModelAdapter:
    """The pruned structure with weightless parameters (buffers such as rotary tables are real)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(base_config(manifest))
    adapter = adapt(model)
    adapter.replay(manifest["ops"])
    return adapter


def load_pruned(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """Rebuild a model saved by :func:`save_pruned`; weights keep their saved dtype unless ``dtype`` is given."""
    from safetensors.torch import load_file

    path = Path(path)
    model = build_skeleton(read_manifest(path)).model
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    if not state:
        raise PrunebenchError(f"'{path}' holds no safetensors weights")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise PrunebenchError(f"'{path}': weights that the rebuilt structure does not have: {unexpected[:5]}")
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise PrunebenchError(f"'{path}': weights missing from the checkpoint: {still_meta[:5]} (of {len(missing)})")
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return model.eval()
