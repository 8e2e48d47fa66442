"""ShortGPT (arXiv 2403.03853): remove the n = ceil(s * L) layers of lowest Block Influence.

``BI_i = 1 - mean cos(h_in_i, h_out_i)``: a layer that barely turns the residual stream is redundant.

Two variants (docs/methods.md):
- ``reference`` (default), the 2SSP authors' harness: the cosine of the *last token* only, averaged
  over samples (256 x 2048 calibration tokens), and layer 0 is never removed. Their harness hooks only
  layer outputs, so it has no input for layer 0 and gives it BI = 1; we compute layer 0's real BI (and
  report it) but keep it out of the candidates, which is what that artefact amounts to.
- ``paper``, the original paper: the cosine averaged over *all tokens* of all samples, and every layer
  is a candidate (the paper scores layer 0 like any other; in practice its BI is among the highest).
``tokens`` and ``protect_first`` override one dimension of the variant each, for ablations.

``PruneContext.numerics``: ``exact`` computes each cosine in float32 and averages in float64;
``reference`` as the authors' code, each sample's cosine in the hidden states' own dtype (bf16 in their
runs), read as a Python float and averaged as ``sum(list) / len(list)``. Ties in BI (common with bf16
cosines) go to the lower layer, as Python's stable ``sorted`` in their code.

The output of the last layer is taken before the final norm: that is the block's output; the norm
rescales channels and would tilt the cosine of the last layer only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod
from methods.similarity import (
    authors_cosine,
    authors_mean,
    cosine,
    forward_each_sample,
    plan_layer_removal,
    remove_and_report,
)

Variant = Literal["reference", "paper"]


class ShortGPTOptions(MethodOptions):
    variant: Variant = Field("reference", description="reference: the 2SSP authors' harness; paper: ShortGPT's paper")
    tokens: Literal["last", "all"] | None = Field(
        None, description="positions whose cosine is averaged (default: the variant's, reference last, paper all)"
    )
    protect_first: bool | None = Field(
        None, description="never remove layer 0 (default: the variant's, reference yes, paper no)"
    )

    def resolved_tokens(self) -> Literal["last", "all"]:
        if self.tokens is not None:
            return self.tokens
        return "last" if self.variant == "reference" else "all"

    def protected(self) -> list[int]:
        protect = self.protect_first if self.protect_first is not None else self.variant == "reference"
        return [0] if protect else []


@torch.no_grad()
def block_cosines(adapter: ModelAdapter, ctx: PruneContext, tokens: Literal["last", "all"]) -> torch.Tensor:
    """Per layer, cos(input, output) averaged over the chosen positions of every sample (float64, CPU).

    Samples have equal length, so the mean over all tokens equals the mean of per-sample means.
    ``numerics=reference``: :func:`authors_block_cosines`.
    """
    if ctx.numerics == "reference":
        return authors_block_cosines(adapter, ctx, tokens)
    L = adapter.num_layers
    sums: list[torch.Tensor | None] = [None] * L  # on the model's device: no host sync per layer

    def visit(i: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        if tokens == "last":
            hidden_in, hidden_out = hidden_in[:, -1:], hidden_out[:, -1:]
        total = cosine(hidden_in, hidden_out).double().mean()
        sums[i] = total if sums[i] is None else sums[i] + total

    forward_each_sample(adapter, ctx, visit, "ShortGPT")
    if any(s is None for s in sums):
        raise RuntimeError("a layer was not reached by the calibration forward")
    return torch.stack([s.cpu() for s in sums]) / len(ctx.calibration)  # type: ignore[union-attr]


@torch.no_grad()
def authors_block_cosines(adapter: ModelAdapter, ctx: PruneContext, tokens: Literal["last", "all"]) -> torch.Tensor:
    """:func:`block_cosines` as the authors compute it: per sample, the cosine of the last token's input and
    output vectors in their own dtype, as a Python float; the mean over samples of those floats.

    Their harness has only the last token; for ``tokens=all`` each token's cosine is computed the same way,
    in the states' dtype, and a sample's value is their float64 mean.
    """
    per_layer: list[list[float]] = [[] for _ in range(adapter.num_layers)]

    def visit(i: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        if tokens == "last":
            per_layer[i].append(authors_cosine(hidden_in[0, -1], hidden_out[0, -1]))
        else:
            cos = torch.nn.functional.cosine_similarity(hidden_in[0], hidden_out[0], dim=-1)
            per_layer[i].append(cos.double().mean().item())

    forward_each_sample(adapter, ctx, visit, "ShortGPT")
    if any(len(values) != len(ctx.calibration) for values in per_layer):
        raise RuntimeError("a layer was not reached by the calibration forward")
    return torch.tensor([authors_mean(values) for values in per_layer], dtype=torch.float64)


def lowest(scores: torch.Tensor, n: int, excluded: list[int]) -> list[int]:
    """The n indices of lowest score outside ``excluded``, in increasing score; ties go to the lower index."""
    order = torch.sort(scores, stable=True).indices.tolist()
    return [i for i in order if i not in excluded][:n]


class ShortGPT(PruningMethod):
    name = "shortgpt"
    summary = "ShortGPT: remove the whole layers of lowest Block Influence (1 - cos(input, output))"
    Options = ShortGPTOptions
    calibration = {"full": CalibrationNeeds(256, 2048), "quick": CalibrationNeeds(32, 128)}

    def plan(self, adapter: ModelAdapter, sparsity: float, options: ShortGPTOptions) -> dict[str, Any]:
        return plan_layer_removal(adapter, sparsity, options.protected(), "ShortGPT")

    def prune(self, adapter: ModelAdapter, options: ShortGPTOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        tokens = options.resolved_tokens()
        with ctx.timer.stage("calibration_forward"):
            cos = block_cosines(adapter, ctx, tokens)
        with ctx.timer.stage("scoring"):
            influence = 1.0 - cos
        with ctx.timer.stage("search"):
            order = lowest(influence, plan["n"], plan["protected"])
        decisions: dict[str, Any] = {
            "n": plan["n"],
            "variant": options.variant,
            "tokens": tokens,
            "numerics": ctx.numerics,
            "protected": plan["protected"],
            "block_influence": [float(b) for b in influence],
            "removal_order": order,  # by increasing BI
        }
        decisions.update(remove_and_report(adapter, ctx, order))
        return decisions
