"""What ShortGPT and the window method share: one hooked forward per calibration sample, the feasibility
check of a whole-layer removal, and the similarity measures.

Both methods compare hidden states of the residual stream. The hooks reduce each sample's states as soon
as a layer has run, so memory holds one sample's activations at most (the last-token variants hold one
vector per layer), never the whole calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from methods.arch import ModelAdapter
from methods.base import PruneContext, blocks_for, module_parameters
from methods.errors import MethodError

# visit(layer index, hidden state entering the layer, hidden state leaving it), both [1, tokens, d].
LayerVisitor = Callable[[int, torch.Tensor, torch.Tensor], None]


def _layer_io_hook(i: int, visit: LayerVisitor):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        visit(i, hidden_in, hidden_out)

    return hook


@torch.no_grad()
def forward_each_sample(
    adapter: ModelAdapter,
    ctx: PruneContext,
    visit: LayerVisitor,
    label: str,
    after_sample: Callable[[], None] | None = None,
) -> None:
    """One forward of the decoder stack (no LM head) per calibration sample; ``visit`` sees every layer.

    Batch 1, as the authors' harness: no padding, and no batch-dependent numerics in the decisions.
    """
    if ctx.calibration.dim() != 2 or ctx.calibration.shape[0] == 0:
        raise MethodError(f"{label} needs calibration token ids [samples, tokens], "
                          f"got shape {tuple(ctx.calibration.shape)}")
    device = adapter.embedding().weight.device
    handles = [
        layer.register_forward_hook(_layer_io_hook(i, visit), with_kwargs=True)
        for i, layer in enumerate(adapter.layers)
    ]
    try:
        with ctx.progress(f"{label}: calibration forward", len(ctx.calibration)) as advance:
            for sample in ctx.calibration:
                adapter.model.model(input_ids=sample[None].to(device), use_cache=False)
                if after_sample is not None:
                    after_sample()
                advance(1)
    finally:
        for h in handles:
            h.remove()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the hidden dimension, in float32 whatever the model's dtype."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def authors_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The 2SSP authors' cosine of two 1-D hidden states (``numerics=reference``): computed in the states'
    own dtype (bf16 in their runs, so the result is rounded to 8 significant bits) and read as a Python float.

    The same call as theirs; its kernel's internal rounding may still differ between devices and torch versions.
    """
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"authors_cosine compares two vectors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def authors_mean(values: list[float]) -> float:
    """The authors' mean over samples: ``sum(list) / len(list)`` of Python floats (float64).

    Python's ``sum`` adds left to right up to 3.11 and compensates rounding from 3.12 on; bf16 cosines
    (8 significant bits) of similar magnitudes sum exactly in float64 either way.
    """
    return sum(values) / len(values)


def angular_distance(cos: torch.Tensor) -> torch.Tensor:
    """Gromov et al.'s normalised angular distance arccos(cos) / pi, in [0, 1]."""
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def layer_counts(adapter: ModelAdapter) -> list[int]:
    """Parameters of each layer; works on a weightless (meta) skeleton."""
    return [module_parameters(layer) for layer in adapter.layers]


def feasible_range(num_layers: int, protected: list[int]) -> str:
    """The sparsities a whole-layer method can reach, as a phrase for an error message."""
    most = min(num_layers - len(protected), num_layers - 1)  # never every layer: no transformer would be left
    if most < 1:
        return "no sparsity is feasible"
    kept = f", protected: {protected}" if protected else ""
    return f"feasible range here: 0 < s <= {most / num_layers:.4f} (at most {most} of {num_layers} layers{kept})"


def plan_layer_removal(
    adapter: ModelAdapter, sparsity: float, protected: list[int], label: str
) -> dict[str, Any]:
    """n = ceil(s * L) whole layers, or a one-line MethodError with the feasible sparsity range.

    The achieved sparsity is exact before any scoring when all layers have the same size (every dense
    model here); otherwise it depends on which layers are chosen, and ``prune`` reports it.
    """
    L = adapter.num_layers
    removable = L - len(protected)
    feasible = feasible_range(L, protected)
    try:
        n = blocks_for(sparsity, L)
    except MethodError as err:
        raise MethodError(f"{label} cannot reach sparsity {sparsity}: {err}; {feasible}") from None
    if n > removable:
        raise MethodError(
            f"{label} cannot reach sparsity {sparsity}: it needs {n} layers removed, "
            f"only {removable} may be; {feasible}"
        )
    counts = layer_counts(adapter)
    uniform = len(set(counts)) == 1
    return {
        "n": n,
        "layers": L,
        "protected": protected,
        "block_fraction": n / L,
        "achieved_sparsity": n * counts[0] / sum(counts) if uniform else None,
    }


def remove_and_report(adapter: ModelAdapter, ctx: PruneContext, removed: list[int]) -> dict[str, Any]:
    """Delete the layers for real (logged, replayable) and report what fraction of block parameters went."""
    counts = layer_counts(adapter)
    with ctx.timer.stage("surgery"):
        adapter.remove_layers(removed)
    return {
        "removed_layers": sorted(removed),
        "achieved_block_fraction": len(removed) / len(counts),
        "achieved_sparsity": sum(counts[i] for i in removed) / sum(counts),
    }
