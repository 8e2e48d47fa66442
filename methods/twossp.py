"""2SSP (arXiv 2501.17771): FFN neurons by activation norm, then attention modules greedily by perplexity.

1. Balance: remove ``N_attn = round(L * s ** ((P_ffn / P_attn) / alpha))`` attention modules; the
   rest of the budget, ``round((round(s * P_blocks) - N_attn * P_attn) / L)`` parameters per layer, is
   cut from every FFN, which keeps ``round(I * (1 - cut / P_ffn))`` neurons, the same in every layer.
   P_attn and P_ffn count the attention and FFN modules of one layer (not their norms), as the
   authors' code does.
2. Stage 1 (width): per calibration sample and layer, the L2 norm over tokens of each neuron's
   activation (the input of ``down_proj``), averaged over samples; keep the top-k per layer.
   ``PruneContext.numerics``: ``exact`` computes the norms in float32; ``reference`` as the authors'
   code, on the CPU in the activations' dtype (bf16 there), with their running sum.
3. Stage 2 (depth): on the stage-1 model, N_attn times, remove the attention whose absence gives the
   lowest perplexity on the first calibration sample(s).

Ablations of the paper: ``stages`` (width only / depth only), ``norm`` (L1), ``scoring="channels"``
(the authors' "rows vs columns": keep FFN input and output *hidden channels* by norm instead of neurons),
and ``ffn_budget="whole"`` (that ablation as the authors ran it: the FFNs take the whole budget and stage 2
still removes N_attn attention modules, so it removes more than s).
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


# Which stage-1 neurons (or channels) are kept among scores tied at the cut. In half precision
# (numerics=reference) many tie; the authors keep what their torch.topk call returns, whose order among
# equal values depends on the kernel (their own code keeps other bf16 neurons on an AMD CPU than on an Intel one).
StageOneTies = Literal["lowest", "topk"]


class TwoSSPOptions(MethodOptions):
    alpha: float = Field(1.5, gt=0, description="balance between the stages (paper: 1.5)")
    n_attn: int | None = Field(None, ge=0, description="attention modules to remove (overrides the balance formula)")
    stage2_samples: int = Field(1, ge=1, description="calibration samples scored in stage 2")
    stages: Literal["both", "width", "depth"] = Field("both", description="ablation: run one stage only")
    norm: Literal["l2", "l1"] = Field("l2", description="ablation: norm of the activations over tokens")
    scoring: Literal["neurons", "channels"] = Field("neurons", description="ablation 'rows vs columns'")
    ffn_budget: Literal["balanced", "whole"] = Field(
        "balanced", description="FFN share of the budget: balanced (the rest after N_attn), or whole (s of the "
                                "blocks, then N_attn attention modules too: the authors' rows-vs-columns run)"
    )
    cached_search: bool = Field(True, description="reuse layer inputs in stage 2 (same decisions, faster)")
    search_batch: int = Field(8, ge=1, description="stage-2 candidates run through the layers together")
    screen_vocab: float = screen_vocab_field()
    ties: StageOneTies = Field(
        "lowest", description="stage-1 neurons tied at the cut: lowest (the lower index, portable) or topk (the "
                              "authors' torch.topk call: their choice, on the same processor and torch version)"
    )


@dataclass(frozen=True)
class Shape:
    """The dense model's counts the balance formula needs."""

    layers: int
    blocks: int  # parameters inside the transformer layers
    attn: int  # one layer's attention module
    ffn: int  # one layer's FFN module
    width: int  # FFN neurons per layer
    hidden: int
    attn_freed: int  # what one attention removal frees: the module and the norms that only feed it
    per_neuron: int  # FFN parameters one neuron owns
    per_channel: int  # FFN parameters one hidden channel owns (an input column and an output row)

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
            attn_freed=adapter.attention_parameters(0),
            per_neuron=adapter.ffn_neuron_parameters(0),
            per_channel=_channel_parameters(adapter),
        )

    def achieved(self, n_attn: int, kept: int, scoring: str) -> float:
        """The fraction of block parameters removed by n_attn attention removals and ``kept`` neurons or
        channels per FFN, counted as the surgery frees them (exact: every layer has the same shape)."""
        full, unit = (self.width, self.per_neuron) if scoring == "neurons" else (self.hidden, self.per_channel)
        return (n_attn * self.attn_freed + self.layers * (full - kept) * unit) / self.blocks


def _channel_parameters(adapter: ModelAdapter) -> int:
    down = adapter.ffn_down(0)
    return sum(m.out_features for m in adapter.ffn_inputs(0)) + down.in_features + (down.bias is not None)


def balanced_attention_count(shape: Shape, sparsity: float, alpha: float) -> int:
    return round(shape.layers * sparsity ** ((shape.ffn / shape.attn) / alpha))


def whole_budget_kept(shape: Shape, sparsity: float, full: int) -> int:
    """Neurons (or channels, ``full`` = d) kept when the FFNs take the whole budget s * P_blocks.

    The authors' formula (their stage-1-only and rows-vs-columns ablations): the cut share of each FFN is
    ``s * P_blocks / (L * P_ffn)``, with no rounding to whole parameters on the way; rounding the target
    and the per-layer cut first moves the count by one neuron at some sparsities (Llama-2-7B at 55 %).
    """
    return round(full * (1 - sparsity * shape.blocks / (shape.layers * shape.ffn)))


def _check_attention_count(shape: Shape, s: float, n: int) -> None:
    """The two feasibility bounds of the balance, or MethodError naming the one that fails."""
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


def _plan(shape: Shape, s: float, opts: TwoSSPOptions) -> dict[str, Any]:
    """The planned removals, or MethodError naming the bound that fails."""
    check_sparsity(s)
    target = round(s * shape.blocks)
    if opts.stages == "depth":
        if opts.ffn_budget == "whole":
            raise MethodError("ffn_budget=whole gives the FFNs a budget, stages=depth cuts no FFN")
        n = opts.n_attn if opts.n_attn is not None else round(target / shape.attn)
        if n > shape.layers:
            raise MethodError(f"removing only attention reaches at most {shape.layers * shape.attn / shape.blocks:.1%}")
        return {"n_attn": n, "kept_width": shape.width, "ffn_cut_per_layer": 0, "ffn_budget": opts.ffn_budget,
                "achieved_sparsity": shape.achieved(n, shape.width, "neurons")}
    full = shape.width if opts.scoring == "neurons" else shape.hidden
    if opts.stages == "width":
        # The authors' stage-1-only ablation: all of s from the FFNs, by their formula.
        n, cut, kept = 0, s * shape.blocks / shape.layers, whole_budget_kept(shape, s, full)
    else:
        n = opts.n_attn if opts.n_attn is not None else balanced_attention_count(shape, s, opts.alpha)
        _check_attention_count(shape, s, n)
        if opts.ffn_budget == "whole":
            cut, kept = s * shape.blocks / shape.layers, whole_budget_kept(shape, s, full)
        else:
            cut = round((target - n * shape.attn) / shape.layers)
            kept = round(full * (1 - cut / shape.ffn))
    if kept < 1:
        raise MethodError(f"the FFN bound fails: {cut:.0f} of {shape.ffn} FFN parameters per layer "
                          f"leaves no {opts.scoring}")
    return {"n_attn": n, "kept_width": kept, "ffn_cut_per_layer": cut, "ffn_budget": opts.ffn_budget,
            "achieved_sparsity": shape.achieved(n, kept, opts.scoring)}


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
    """Keep FFN input columns ``in_idx`` and output rows ``out_idx`` of layer i (logged, replayable).

    The indices become buffers that index the layer's activations, so they are moved to the layer's device:
    scores, and so the indices chosen from them, live on the CPU.
    """
    ffn = adapter.ffn(i)
    device = adapter.ffn_down(i).weight.device
    in_idx, out_idx = in_idx.to(device), out_idx.to(device)
    for name in adapter.ffn_in_names:
        old = getattr(ffn, name)
        setattr(ffn, name, linear_like(old, old.weight.index_select(1, in_idx), old.bias))
    old = getattr(ffn, adapter.ffn_out_name)
    bias = old.bias.index_select(0, out_idx) if old.bias is not None else None
    setattr(ffn, adapter.ffn_out_name, linear_like(old, old.weight.index_select(0, out_idx), bias))
    wrapped = ChannelSlicedFFN(ffn, in_idx.clone(), out_idx.clone(), adapter.hidden_size)
    setattr(adapter.layers[i], adapter.ffn_name, wrapped)
    adapter.ops.append({"op": "keep_ffn_channels", "layer": i, "inputs": int(in_idx.numel()),
                        "outputs": int(out_idx.numel())})


def replay_channels(adapter: ModelAdapter, op: dict[str, Any]) -> None:
    """Rebuild the structure of ``keep_ffn_channels``; the real indices come back with the weights."""
    keep_ffn_channels(adapter, op["layer"], torch.arange(op["inputs"]), torch.arange(op["outputs"]))


class AuthorsMean:
    """The authors' mean of per-sample norms over tokens, computed as their stage 1 does it.

    Per sample (batch 1) the activations ``[tokens, width]`` are moved to the CPU and reduced there, in
    their own dtype (bf16 in their runs), with ``Tensor.norm``; the running sum starts from the Python
    int 0 (so the first sample's norms are taken as they are) and is divided by the sample count in
    place, all in that dtype. In half precision the sums round and many scores tie.
    """

    def __init__(self, p: int):
        self.p = p
        self.total: torch.Tensor | int = 0

    def add(self, activations: torch.Tensor) -> None:
        self.total += activations.to("cpu").norm(dim=0, p=self.p)

    def mean(self, samples: int) -> torch.Tensor:
        if not isinstance(self.total, torch.Tensor):
            raise RuntimeError("a layer was not reached by the calibration forward")
        self.total /= samples
        return self.total


def _add_input(acc: AuthorsMean):
    def hook(module: nn.Module, args: tuple) -> None:  # None: the input goes on unchanged
        acc.add(args[0][0])  # batch 1: the sample's [tokens, width]

    return hook


@torch.no_grad()
def neuron_scores(adapter: ModelAdapter, ctx: PruneContext, p: int) -> list[torch.Tensor]:
    """Per layer, the mean over samples of each neuron's activation norm over tokens.

    ``exact``: float32 norms, float32 sums; ``reference``: :class:`AuthorsMean`, in the model's dtype.
    One forward pass of the decoder stack per sample; hooks reduce the activations on the fly.
    """
    L = adapter.num_layers
    if ctx.numerics == "reference":
        means = [AuthorsMean(p) for _ in range(L)]
        _forward_with_hooks(adapter, ctx, [adapter.ffn_down(i).register_forward_pre_hook(_add_input(means[i]))
                                           for i in range(L)])
        return [m.mean(len(ctx.calibration)) for m in means]
    sums = [torch.zeros(adapter.ffn_width(i), dtype=torch.float32) for i in range(L)]

    def hook(i: int):
        def accumulate(module, args):
            norms = torch.linalg.vector_norm(args[0], ord=p, dim=1, dtype=torch.float32)  # [batch, width]
            sums[i] += norms.sum(0).cpu()

        return accumulate

    _forward_with_hooks(adapter, ctx, [adapter.ffn_down(i).register_forward_pre_hook(hook(i)) for i in range(L)])
    return [s / len(ctx.calibration) for s in sums]


@torch.no_grad()
def channel_scores(adapter: ModelAdapter, ctx: PruneContext, p: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, mean norms over tokens of each hidden channel of the FFN input and of its output.

    Numerics as :func:`neuron_scores`; ``reference`` reduces the FFN's ``input[0][0]`` and ``output[0]``.
    """
    L, n = adapter.num_layers, len(ctx.calibration)
    if ctx.numerics == "reference":
        means = [(AuthorsMean(p), AuthorsMean(p)) for _ in range(L)]

        def reference_hook(i: int):
            def accumulate(module, args, output):
                means[i][0].add(args[0][0])
                means[i][1].add(output[0])

            return accumulate

        _forward_with_hooks(adapter, ctx, [adapter.ffn(i).register_forward_hook(reference_hook(i)) for i in range(L)])
        return [(a.mean(n), b.mean(n)) for a, b in means]
    d = adapter.hidden_size
    sums = [(torch.zeros(d), torch.zeros(d)) for _ in range(L)]

    def hook(i: int):
        def accumulate(module, args, output):
            for acc, x in zip(sums[i], (args[0], output), strict=True):
                acc += torch.linalg.vector_norm(x, ord=p, dim=1, dtype=torch.float32).sum(0).cpu()

        return accumulate

    _forward_with_hooks(adapter, ctx, [adapter.ffn(i).register_forward_hook(hook(i)) for i in range(L)])
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


def top_k(scores: torch.Tensor, k: int, ties: StageOneTies = "lowest") -> torch.Tensor:
    """Indices of the k largest scores, ascending.

    ``lowest``: among scores tied at the cut the lower indices are kept (a stable sort: the same on every
    processor). ``topk``: what ``torch.topk(scores, k)`` keeps, the authors' call, on the scores as they are (their
    dtype and device): it reproduces the authors' choice among ties where it runs on the same kind of processor
    with the same torch, and nowhere else.
    """
    if ties == "topk":
        return torch.topk(scores, k).indices.sort().values
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k].sort().values


class TwoSSP(PruningMethod):
    name = "2ssp"
    summary = "2SSP: FFN neurons by activation norm, then attention modules greedily by perplexity"
    Options = TwoSSPOptions
    calibration = {"full": CalibrationNeeds(32, 2048), "quick": CalibrationNeeds(8, 128)}
    earlier_options = {"ffn_budget": "balanced", "ties": "lowest"}  # lowest: the only rule before ``ties``

    def plan(self, adapter: ModelAdapter, sparsity: float, options: TwoSSPOptions) -> dict[str, Any]:
        shape = Shape.of(adapter)
        try:
            return _plan(shape, sparsity, options)
        except MethodError as err:
            span = feasible_range(shape, options)
            where = f"feasible range here: {span[0]:.3f}-{span[1]:.3f}" if span else "no sparsity is feasible"
            raise MethodError(f"2SSP cannot reach sparsity {sparsity}: {err}; {where}") from None

    def prune(self, adapter: ModelAdapter, options: TwoSSPOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        decisions: dict[str, Any] = {**plan, "stages": options.stages, "numerics": ctx.numerics,
                                     "ties": options.ties}
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
                keep = [top_k(s, kept, options.ties) for s in scores]
            with ctx.timer.stage("stage1.surgery"):
                for i, idx in enumerate(keep):
                    adapter.keep_ffn_neurons(i, idx)
            return {"kept_ffn_width": kept, "stage1_score_dtype": _dtype_name(scores[0])}
        with ctx.timer.stage("stage1.calibration_forward"):
            scores2 = channel_scores(adapter, ctx, p)
        with ctx.timer.stage("stage1.scoring"):
            keep2 = [(top_k(a, kept, options.ties), top_k(b, kept, options.ties)) for a, b in scores2]
        with ctx.timer.stage("stage1.surgery"):
            for i, (a, b) in enumerate(keep2):
                keep_ffn_channels(adapter, i, a, b)
        return {"kept_ffn_channels": kept, "stage1_score_dtype": _dtype_name(scores2[0][0])}

    def _stage2(self, adapter: ModelAdapter, options: TwoSSPOptions, ctx: PruneContext, n: int) -> dict[str, Any]:
        samples = ctx.calibration[: options.stage2_samples]
        if len(samples) < options.stage2_samples:
            raise MethodError(f"stage 2 asks for {options.stage2_samples} samples, calibration has {len(samples)}")
        order, perplexities = greedy_attention_removal(
            adapter, samples, n, ctx, cached=options.cached_search, batch=options.search_batch,
            screen=options.screen_vocab
        )
        return {"removed_attention": order, "stage2_perplexity": perplexities}


def _dtype_name(score: torch.Tensor) -> str:
    """The dtype stage 1 summed its norms in (recorded: with numerics=reference it is the model's)."""
    return str(score.dtype).removeprefix("torch.")


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

    Ties go to the lower layer index (the authors' strict ``<``: frequent with ``numerics=reference``, whose
    half-precision perplexities round); a NaN perplexity (a diverged half-precision run) counts as the
    worst. The perplexity is computed as ``ctx.numerics`` says. Returns the removal order and the
    perplexity after each removal.
    """
    L = adapter.num_layers
    order: list[int] = []
    best_ppl: list[float] = []
    with ctx.timer.stage("stage2.search"):
        probe = PerplexityProbe(adapter, samples, cached=cached, batch=batch, screen=screen, numerics=ctx.numerics)
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
    ctx.paths["stage2.search"] = probe.path
    logger.debug("2SSP stage 2: full LM head for %d of %d candidates", probe.exact_evaluations,
                 n * L - n * (n - 1) // 2)
    return order, best_ppl


def _rank(candidates: list[Candidate], k: int, perplexity: float) -> tuple[float, int]:
    """Lowest perplexity first, NaN (a diverged half-precision run) last; ties: the lower layer, whatever the
    ``ties`` option says: the authors scan the layers upwards with a strict ``<``, so the lower layer is their
    choice too (``ties`` is about stage 1, where their choice is torch.topk's)."""
    return (math.inf if math.isnan(perplexity) else perplexity), candidates[k].layer
