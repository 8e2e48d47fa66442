"""2SSP (arXiv 2501.17771): FFN neurons by activation norm, then attention modules greedily by perplexity.

1. Balance: remove ``N_attn = round(L * s ** ((P_ffn / P_attn) / alpha))`` attention modules; the
   rest of the budget, ``round((round(s * P_blocks) - N_attn * P_attn) / L)`` parameters per layer, is
   cut from every FFN, which keeps ``round(I * (1 - cut / P_ffn))`` neurons, the same in every layer.
   P_attn and P_ffn count the attention and FFN modules of one layer (not their norms), as the
   authors' code does.
2. Stage 1 (width): per calibration sample and layer, the L2 norm over tokens of each neuron's
   activation (the input of ``down_proj``), averaged over samples; keep the top-k per layer.
3. Stage 2 (depth): on the stage-1 model, N_attn times, remove the attention whose absence gives the
   lowest perplexity on the first calibration sample(s).

Ablations of the paper: ``stages`` (width only / depth only), ``norm`` (L1), ``scoring="channels"``
(the authors' "rows vs columns": keep FFN input and output *hidden channels* by norm instead of neurons).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from methods.arch import ModelAdapter, linear_like
from methods.base import (
    CalibrationNeeds,
    MethodOptions,
    PruneContext,
    PruningMethod,
    check_sparsity,
    module_parameters,
)
from methods.errors import MethodError
from methods.search import Candidate, PerplexityProbe, screen_vocab_field

logger = logging.getLogger(__name__)


class TwoSSPOptions(MethodOptions):
    alpha: float = Field(1.5, gt=0, description="balance between the stages (paper: 1.5)")
    n_attn: int | None = Field(None, ge=0, description="attention modules to remove (overrides the balance formula)")
    stage2_samples: int = Field(1, ge=1, description="calibration samples scored in stage 2")
    stages: Literal["both", "width", "depth"] = Field("both", description="ablation: run one stage only")
    norm: Literal["l2", "l1"] = Field("l2", description="ablation: norm of the activations over tokens")
    scoring: Literal["neurons", "channels"] = Field("neurons", description="ablation 'rows vs columns'")
    cached_search: bool = Field(True, description="reuse layer inputs in stage 2 (same decisions, faster)")
    search_batch: int = Field(8, ge=1, description="stage-2 candidates run through the layers together")
    screen_vocab: float = screen_vocab_field()


@dataclass(frozen=True)
class Shape:
    """The dense model's counts the balance formula needs."""

    layers: int
    blocks: int  # parameters inside the transformer layers
    attn: int  # one layer's attention module
    ffn: int  # one layer's FFN module
    width: int  # FFN neurons per layer
    hidden: int

    @classmethod
    def of(cls, adapter: ModelAdapter) -> Shape:
        L = adapter.num_layers
        if not all(adapter.has_attention(i) and adapter.has_ffn(i) for i in range(L)):
            raise MethodError("2SSP needs a model whose layers all still have attention and FFN")
        widths = {adapter.ffn_width(i) for i in range(L)}
        if len(widths) != 1:
            raise MethodError(f"2SSP needs the same FFN width in every layer, found {sorted(widths)}")
        return cls(
            layers=L,
            blocks=adapter.block_parameters(),
            attn=module_parameters(adapter.attention(0)),
            ffn=module_parameters(adapter.ffn(0)),
            width=widths.pop(),
            hidden=adapter.hidden_size,
        )


def balanced_attention_count(shape: Shape, sparsity: float, alpha: float) -> int:
    return round(shape.layers * sparsity ** ((shape.ffn / shape.attn) / alpha))


def _plan(shape: Shape, s: float, opts: TwoSSPOptions) -> dict[str, Any]:
    """The planned removals, or MethodError naming the bound that fails."""
    check_sparsity(s)
    target = round(s * shape.blocks)
    if opts.stages == "depth":
        n = opts.n_attn if opts.n_attn is not None else round(target / shape.attn)
        if n > shape.layers:
            raise MethodError(f"removing only attention reaches at most {shape.layers * shape.attn / shape.blocks:.1%}")
        return {"n_attn": n, "kept_width": shape.width, "ffn_cut_per_layer": 0}
    if opts.stages == "width":
        n, cut = 0, round(target / shape.layers)  # the authors' stage-1-only ablation: all of s from FFNs
    else:
        n = opts.n_attn if opts.n_attn is not None else balanced_attention_count(shape, s, opts.alpha)
        if n > shape.layers:
            raise MethodError(f"the attention bound fails: {n} attention modules asked for, "
                              f"the model has {shape.layers}")
        if n * shape.attn > s * shape.blocks:
            raise MethodError(
                f"the attention bound fails: removing {n} attention modules already removes "
                f"{n * shape.attn / shape.blocks:.2%} > {s:.2%}"
            )
        if n * shape.attn + shape.layers * shape.ffn < s * shape.blocks:
            raise MethodError(
                f"the FFN bound fails: {n} attention modules and every FFN remove only "
                f"{(n * shape.attn + shape.layers * shape.ffn) / shape.blocks:.2%} < {s:.2%}"
            )
        cut = round((target - n * shape.attn) / shape.layers)
    full = shape.width if opts.scoring == "neurons" else shape.hidden
    kept = round(full * (1 - cut / shape.ffn))
    if kept < 1:
        raise MethodError(f"the FFN bound fails: {cut} of {shape.ffn} FFN parameters per layer "
                          f"leaves no {opts.scoring}")
    return {"n_attn": n, "kept_width": kept, "ffn_cut_per_layer": cut}


def feasible_range(shape: Shape, opts: TwoSSPOptions, step: float = 0.001) -> tuple[float, float] | None:
    ok = []
    for k in range(1, int(round(1 / step))):
        try:
            _plan(shape, k * step, opts)
            ok.append(k * step)
        except MethodError:
            pass
    return (ok[0], ok[-1]) if ok else None


class ChannelSlicedFFN(nn.Module):
    """An FFN that reads only some hidden channels and writes only some (the 'columns' ablation).

    The kept channel indices are persistent buffers, so a saved checkpoint restores them.
    """

    def __init__(self, ffn: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor, hidden: int):
        super().__init__()
        self.ffn = ffn
        self.hidden = hidden
        self.register_buffer("in_idx", in_idx)
        self.register_buffer("out_idx", out_idx)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        y = self.ffn(hidden_states.index_select(-1, self.in_idx))
        out = y.new_zeros(*y.shape[:-1], self.hidden)
        return out.index_copy_(y.dim() - 1, self.out_idx, y)


def keep_ffn_channels(adapter: ModelAdapter, i: int, in_idx: torch.Tensor, out_idx: torch.Tensor) -> None:
    """Keep FFN input columns ``in_idx`` and output rows ``out_idx`` of layer i (logged, replayable)."""
    ffn = adapter.ffn(i)
    for name in adapter.ffn_in_names:
        old = getattr(ffn, name)
        setattr(ffn, name, linear_like(old, old.weight.index_select(1, in_idx.to(old.weight.device)), old.bias))
    old = getattr(ffn, adapter.ffn_out_name)
    rows = out_idx.to(old.weight.device)
    bias = old.bias.index_select(0, rows) if old.bias is not None else None
    setattr(ffn, adapter.ffn_out_name, linear_like(old, old.weight.index_select(0, rows), bias))
    wrapped = ChannelSlicedFFN(ffn, in_idx.clone(), out_idx.clone(), adapter.hidden_size)
    setattr(adapter.layers[i], adapter.ffn_name, wrapped)
    adapter.ops.append({"op": "keep_ffn_channels", "layer": i, "inputs": int(in_idx.numel()),
                        "outputs": int(out_idx.numel())})


def replay_channels(adapter: ModelAdapter, op: dict[str, Any]) -> None:
    """Rebuild the structure of ``keep_ffn_channels``; the real indices come back with the weights."""
    keep_ffn_channels(adapter, op["layer"], torch.arange(op["inputs"]), torch.arange(op["outputs"]))


@torch.no_grad()
def neuron_scores(adapter: ModelAdapter, ctx: PruneContext, p: int) -> list[torch.Tensor]:
    """Per layer, the mean over samples of each neuron's activation norm over tokens (float32).

    One forward pass of the decoder stack per sample; hooks reduce the activations on the fly.
    """
    sums = [torch.zeros(adapter.ffn_width(i), dtype=torch.float32) for i in range(adapter.num_layers)]

    def hook(i: int):
        def accumulate(module, args):
            norms = torch.linalg.vector_norm(args[0], ord=p, dim=1, dtype=torch.float32)  # [batch, width]
            sums[i] += norms.sum(0).cpu()

        return accumulate

    _forward_with_hooks(adapter, ctx, [adapter.ffn_down(i).register_forward_pre_hook(hook(i))
                                       for i in range(adapter.num_layers)])
    return [s / len(ctx.calibration) for s in sums]


@torch.no_grad()
def channel_scores(adapter: ModelAdapter, ctx: PruneContext, p: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, mean norms over tokens of each hidden channel of the FFN input and of its output."""
    d = adapter.hidden_size
    sums = [(torch.zeros(d), torch.zeros(d)) for _ in range(adapter.num_layers)]

    def hook(i: int):
        def accumulate(module, args, output):
            for acc, x in zip(sums[i], (args[0], output), strict=True):
                acc += torch.linalg.vector_norm(x, ord=p, dim=1, dtype=torch.float32).sum(0).cpu()

        return accumulate

    _forward_with_hooks(adapter, ctx, [adapter.ffn(i).register_forward_hook(hook(i))
                                       for i in range(adapter.num_layers)])
    n = len(ctx.calibration)
    return [(a / n, b / n) for a, b in sums]


def _forward_with_hooks(adapter: ModelAdapter, ctx: PruneContext, handles: list) -> None:
    device = adapter.embedding().weight.device
    try:
        with ctx.progress("2SSP stage 1: activation norms", len(ctx.calibration)) as advance:
            for sample in ctx.calibration:
                adapter.model.model(input_ids=sample[None].to(device), use_cache=False)
                advance(1)
    finally:
        for h in handles:
            h.remove()


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ascending (ties go to the lower index, deterministically)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


class TwoSSP(PruningMethod):
    name = "2ssp"
    summary = "2SSP: FFN neurons by activation norm, then attention modules greedily by perplexity"
    Options = TwoSSPOptions
    calibration = {"full": CalibrationNeeds(32, 2048), "quick": CalibrationNeeds(8, 128)}

    def plan(self, adapter: ModelAdapter, sparsity: float, options: TwoSSPOptions) -> dict[str, Any]:
        shape = Shape.of(adapter)
        try:
            return _plan(shape, sparsity, options)
        except MethodError as err:
            span = feasible_range(shape, options)
            where = f"feasible range here: {span[0]:.3f}-{span[1]:.3f}" if span else "no sparsity is feasible"
            raise MethodError(f"2SSP cannot reach sparsity {sparsity}: {err}; {where}") from None

    def prune(self, adapter: ModelAdapter, options: TwoSSPOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.plan(adapter, ctx.sparsity, options)
        decisions: dict[str, Any] = {**plan, "stages": options.stages}
        if options.stages != "depth":
            decisions.update(self._stage1(adapter, options, ctx, plan["kept_width"]))
        if options.stages != "width":
            decisions.update(self._stage2(adapter, options, ctx, plan["n_attn"]))
        return decisions

    def _stage1(self, adapter: ModelAdapter, options: TwoSSPOptions, ctx: PruneContext, kept: int) -> dict[str, Any]:
        p = 2 if options.norm == "l2" else 1
        if options.scoring == "neurons":
            with ctx.timer.stage("stage1.calibration_forward"):
                scores = neuron_scores(adapter, ctx, p)
            with ctx.timer.stage("stage1.scoring"):
                keep = [top_k(s, kept) for s in scores]
            with ctx.timer.stage("stage1.surgery"):
                for i, idx in enumerate(keep):
                    adapter.keep_ffn_neurons(i, idx)
            return {"kept_ffn_width": kept}
        with ctx.timer.stage("stage1.calibration_forward"):
            scores2 = channel_scores(adapter, ctx, p)
        with ctx.timer.stage("stage1.scoring"):
            keep2 = [(top_k(a, kept), top_k(b, kept)) for a, b in scores2]
        with ctx.timer.stage("stage1.surgery"):
            for i, (a, b) in enumerate(keep2):
                keep_ffn_channels(adapter, i, a, b)
        return {"kept_ffn_channels": kept}

    def _stage2(self, adapter: ModelAdapter, options: TwoSSPOptions, ctx: PruneContext, n: int) -> dict[str, Any]:
        samples = ctx.calibration[: options.stage2_samples]
        if len(samples) < options.stage2_samples:
            raise MethodError(f"stage 2 asks for {options.stage2_samples} samples, calibration has {len(samples)}")
        order, perplexities = greedy_attention_removal(
            adapter, samples, n, ctx, cached=options.cached_search, batch=options.search_batch,
            screen=options.screen_vocab
        )
        return {"removed_attention": order, "stage2_perplexity": perplexities}


def greedy_attention_removal(
    adapter: ModelAdapter,
    samples: torch.Tensor,
    n: int,
    ctx: PruneContext,
    cached: bool = True,
    batch: int = 8,
    screen: float = 0.0,
) -> tuple[list[int], list[float]]:
    """Remove n attention modules one at a time, each time the one whose absence hurts perplexity least.

    Ties go to the lower layer index; a NaN perplexity (a diverged half-precision run) counts as the
    worst. Returns the removal order and the perplexity after each removal.
    """
    L = adapter.num_layers
    order: list[int] = []
    best_ppl: list[float] = []
    with ctx.timer.stage("stage2.search"):
        probe = PerplexityProbe(adapter, samples, cached=cached, batch=batch, screen=screen)
    with ctx.progress("2SSP stage 2: attention search", n * L - n * (n - 1) // 2) as advance:
        for _ in range(n):
            with ctx.timer.stage("stage2.search"):
                candidates = [Candidate(i, attention=True) for i in range(L) if adapter.has_attention(i)]
                k, ppl = probe.best(candidates, partial(_rank, candidates))
                advance(len(candidates))
                best = candidates[k].layer
            with ctx.timer.stage("stage2.surgery"):
                adapter.remove_attention(best)
            with ctx.timer.stage("stage2.search"):
                probe.committed(best)
            order.append(best)
            best_ppl.append(ppl)
    logger.debug("2SSP stage 2: full LM head for %d of %d candidates", probe.exact_evaluations,
                 n * L - n * (n - 1) // 2)
    return order, best_ppl


def _rank(candidates: list[Candidate], k: int, perplexity: float) -> tuple[float, int]:
    """Lowest perplexity first, NaN (a diverged half-precision run) last; ties: the lower layer."""
    return (math.inf if math.isnan(perplexity) else perplexity), candidates[k].layer
