"""Plain transformers (``hf``): a model directory that ``AutoModelForCausalLM.from_pretrained(PATH)`` loads alone.

What a standard config can say: fewer layers (``num_hidden_layers``, with ``layer_types`` cut alike) and one
FFN width for every layer (``intermediate_size``). So it holds a pruned model whose layers all keep attention
and an FFN of one common width (ShortGPT, window, whole-block BlockPruner and EvoPress, the dense model);
anything else is refused in one line naming what differs. The weights are rebuilt into a fresh model of that
config and must fill it exactly (strict load), so the directory is the pruned model with nothing of
prunebench in it: no ``prunebench.json``, no prunebench keys, no ``auto_map``, no remote code.

A heterogeneous model (attention or FFN removed in some layers, FFN widths that differ) would need the
per-layer overrides (``per_layer_config``) that transformers added to its configs; whether the installed
transformers also *builds* them is checked at run time (:func:`_per_layer_problem`), and only then used.

Default dtype float32: every dtype a checkpoint is saved in widens to it exactly, so the export gives the
logits of ``load_pruned(PATH, dtype=torch.float32)``; bfloat16 halves the size (exact for a bfloat16 checkpoint).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from harness.export.base import ExportFormat, PrunedStructure
from methods.arch import ModelAdapter, adapter_class

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Edits outside the layer family change what the weights mean, not only how many there are.
OTHER_OPS = {
    "slicegpt": "SliceGPT's rotations of the residual stream",
    "keep_ffn_channels": "2SSP's FFN channel pruning (FFN inputs and outputs narrower than the hidden size)",
}
# Config keys that hold one value per layer and that the adapter cuts when it removes layers.
CUT_BY_ADAPTER = ("layer_types",)
DROPPED_KEYS = ("auto_map", "_name_or_path", "per_layer_config")


class HFExport(ExportFormat):
    name = "hf"
    dtypes = tuple(DTYPES)
    default_dtype = "float32"
    summary = ("plain transformers: a model directory for AutoModelForCausalLM.from_pretrained, "
               "no prunebench, no remote code")

    def refusal(self, structure: PrunedStructure, dtype: str) -> str | None:
        if dtype not in DTYPES:
            return f"no dtype '{dtype}' (choose {', '.join(DTYPES)})"
        if structure.other_ops:
            what = "; ".join(OTHER_OPS.get(op, f"the edit '{op}'") for op in structure.other_ops)
            return f"{what} (ops: {', '.join(structure.other_ops)}) have no transformers config equivalent"
        if not structure.layers:
            return "no decoder layer is left"
        uncut = _uncut_layer_lists(structure)
        if uncut:
            return f"config keys {', '.join(uncut)} hold one value per layer and prunebench does not cut them"
        if structure.homogeneous:
            return None
        problem = _per_layer_problem(structure)
        return None if problem is None else f"{_differences(structure)}; {problem}"

    def write(self, adapter: ModelAdapter, tokenizer: Any, structure: PrunedStructure, out: Path,
              dtype: str) -> list[str]:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        torch_dtype = DTYPES[dtype]
        config = type(adapter.config).from_dict({**export_config(adapter.config.to_dict(), structure), "dtype": dtype})
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        # Strict: every tensor of the standard model comes from the pruned one and nothing is left over.
        state = {k: v.detach().to("cpu", torch_dtype) for k, v in adapter.model.state_dict().items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.tie_weights()
        still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        if still_meta:
            raise RuntimeError(f"hf export: tensors not filled from the pruned model: {still_meta[:5]}")
        model.generation_config = copy.deepcopy(adapter.model.generation_config)
        with _quiet_progress():  # a bar per shard would clutter a cell's log and the command's one-screen summary
            model.save_pretrained(out)
        notes = [f"standard {config.model_type} config: {len(structure.layers)} of {structure.dense_layers} layers, "
                 f"intermediate_size {_common_width(structure)} (dense {structure.dense_ffn_width})"]
        if getattr(config, "is_heterogeneous", False):
            notes.append("per-layer overrides in per_layer_config (built by this transformers, checked at export)")
        if tokenizer is None:
            notes.append("no tokenizer was given: the directory has none")
        else:
            tokenizer.save_pretrained(out)
        notes.append("load: AutoModelForCausalLM.from_pretrained(PATH), without prunebench or trust_remote_code")
        return notes


@contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _common_width(structure: PrunedStructure) -> int:
    """The FFN width most layers keep (the one ``intermediate_size`` says; others would be per-layer overrides)."""
    widths = Counter(layer.ffn_width for layer in structure.layers if layer.ffn_width)
    return widths.most_common(1)[0][0] if widths else structure.dense_ffn_width


def _uncut_layer_lists(structure: PrunedStructure) -> list[str]:
    """Per-layer config lists that would keep the dense length while layers were removed."""
    if len(structure.layers) == structure.dense_layers:
        return []
    return sorted(key for key, value in structure.base_config.items()
                  if isinstance(value, list) and len(value) == structure.dense_layers and key not in CUT_BY_ADAPTER
                  and not key.endswith("_token_id") and key != "architectures")  # lists that are not per layer


def export_config(pruned: dict[str, Any], structure: PrunedStructure) -> dict[str, Any]:
    """The standard config of the pruned model, from its own config (layers and ``layer_types`` already cut).

    A heterogeneous structure gets ``per_layer_config`` overrides: a narrower ``intermediate_size``, or
    ``skip`` naming the removed modules with the norms that only fed them (the adapter's names).
    """
    cfg = {k: v for k, v in pruned.items() if k not in DROPPED_KEYS}
    common = _common_width(structure)
    cfg["num_hidden_layers"] = len(structure.layers)
    cfg["intermediate_size"] = common
    if structure.homogeneous:
        return cfg
    names = adapter_class(structure.model_type)
    overrides: dict[int, dict[str, Any]] = {}
    for i, layer in enumerate(structure.layers):
        skip = [*([names.attn_name, *names.attn_norm_names] if not layer.heads else []),
                *([names.ffn_name, *names.ffn_norm_names] if not layer.ffn_width else [])]
        entry: dict[str, Any] = {"skip": skip} if skip else {}
        if layer.ffn_width and layer.ffn_width != common:
            entry["intermediate_size"] = layer.ffn_width
        if entry:
            overrides[i] = entry
    cfg["per_layer_config"] = overrides
    return cfg


def _differences(structure: PrunedStructure) -> str:
    """What makes the structure heterogeneous, in a few words: e.g. 'layers 3, 7 have no attention'."""
    def which(indices: list[int]) -> str:
        shown = ", ".join(map(str, indices[:8])) + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")
        return f"layer {shown} has" if len(indices) == 1 else f"layers {shown} have"

    layers = structure.layers
    common = _common_width(structure)
    parts = []
    if no_attn := [i for i, layer in enumerate(layers) if not layer.heads]:
        parts.append(f"{which(no_attn)} no attention")
    if no_ffn := [i for i, layer in enumerate(layers) if not layer.ffn_width]:
        parts.append(f"{which(no_ffn)} no FFN")
    if odd := [i for i, layer in enumerate(layers) if layer.ffn_width and layer.ffn_width != common]:
        i = odd[0]
        kept = f"layer {i} keeps {layers[i].ffn_width} of {structure.dense_ffn_width} FFN neurons"
        parts.append(f"{kept} while others keep {common}" if len(odd) == 1
                     else f"FFN widths differ in {len(odd)} layers ({kept}, most keep {common})")
    return "; ".join(parts)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _pruned_shapes(structure: PrunedStructure) -> dict[str, tuple[int, ...]]:
    """The tensors of the pruned model: a weightless dense skeleton of its depth with its edits applied.

    Which layers were removed does not change any tensor's shape, so the dense config with fewer layers
    (its per-layer lists dropped, to be recomputed) stands in for the removal.
    """
    from accelerate import init_empty_weights
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from methods.arch import adapt

    cfg = {k: v for k, v in structure.base_config.items() if k not in (*CUT_BY_ADAPTER, *DROPPED_KEYS)}
    cfg["num_hidden_layers"] = len(structure.layers)
    with init_empty_weights():
        adapter = adapt(AutoModelForCausalLM.from_config(CONFIG_MAPPING[structure.model_type].from_dict(cfg)))
    for i, layer in enumerate(structure.layers):
        if not layer.heads:
            adapter.remove_attention(i)
        if not layer.ffn_width:
            adapter.remove_ffn(i)
        elif layer.ffn_width != adapter.ffn_width(i):
            adapter.keep_ffn_neurons(i, list(range(layer.ffn_width)))
    return _shapes(adapter.model)


def _per_layer_problem(structure: PrunedStructure) -> str | None:
    """None when the installed transformers builds this structure's ``per_layer_config`` into its exact tensors.

    How it is checked: the config the export would write (per-layer overrides included) is built into a
    weightless model by transformers itself, and its tensor names and shapes are compared with those of the
    pruned model. transformers 5.23 accepts ``per_layer_config`` in a config, but its Llama (and Mistral,
    Qwen2, Phi-3, Gemma-3) modelling reads the global ``intermediate_size``, which the config then refuses
    to give (AmbiguousGlobalPerLayerAttributeError), and ignores ``skip``: refused, with that reason.
    """
    import transformers
    from accelerate import init_empty_weights
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    version = f"transformers {transformers.__version__}"
    cfg = {k: v for k, v in structure.base_config.items() if k not in (*CUT_BY_ADAPTER, *DROPPED_KEYS)}
    cfg = export_config(cfg, structure)
    try:
        config = CONFIG_MAPPING[structure.model_type].from_dict(cfg)
        with init_empty_weights():
            built = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # transformers' own answer that it cannot build it: the reason of the refusal
        log.debug("%s does not build a per-layer %s config: %s: %s", version, structure.model_type,
                  type(err).__name__, err)
        return f"{version} cannot build per-layer configs for {structure.model_type} ({type(err).__name__})"
    got, want = _shapes(built), _pruned_shapes(structure)
    if got != want:
        differ = sorted(set(got.items()) ^ set(want.items()))
        return (f"{version} ignores per_layer_config for {structure.model_type} (it builds {differ[0][0]} as "
                f"{got.get(differ[0][0], 'absent')}, the pruned model has {want.get(differ[0][0], 'none')})")
    return None
