"""BlockPruner (arXiv 2406.10594): remove sub-blocks (attention or FFN), one at a time, by perplexity.

Every step tries each remaining candidate, measures the perplexity of the model without it on one
calibration sample (1 x 2048 by default), and removes for good the one that hurts least (ties: lower
layer index, then attention before FFN). Three forms:

- ``blockpruner`` with ``mode="alternating"`` (the default, as the 2SSP authors' harness runs it):
  ``n = ceil(s * L)`` rounds; each round removes the best attention, then the best FFN, so the model
  loses n block-equivalents.
- ``blockpruner`` with ``mode="free"`` (the original paper): each step removes whichever sub-block of
  either kind hurts perplexity least, until the target is *reached*: the search stops after the first
  step at which the removed parameters are ``>= ceil(s * P_blocks)``. The achieved sparsity is
  therefore at or just above s (by less than the last sub-block removed).
- ``blockpruner-block``: ``n = ceil(s * L)`` steps, each deleting the whole layer whose removal gives
  the lowest perplexity. During the search a layer is tried as ``Candidate(layer, attention=True,
  ffn=True)``: with both branches gone it computes exactly the identity the deleted layer would.

The search goes through :class:`methods.search.PerplexityProbe` (prefix caching and batching, same
perplexities bit for bit as one-by-one evaluation; the full LM head only for candidates that a lower
bound does not already prove worse, ``screen_vocab``); ``cached_search=False`` runs every candidate
from the embeddings instead (same decisions, slower; kept for the benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from pydantic import Field

from methods.arch import ModelAdapter
from methods.base import (
    CalibrationNeeds,
    MethodOptions,
    PruneContext,
    PruningMethod,
    StageTimer,
    blocks_for,
    check_sparsity,
    module_parameters,
)
from methods.errors import MethodError
from methods.search import Candidate, PerplexityProbe, screen_vocab_field

Kind = Literal["attention", "ffn", "block"]
KIND_ORDER: dict[str, int] = {"attention": 0, "ffn": 1, "block": 0}  # tie-break after the layer index


class BlockPrunerOptions(MethodOptions):
    mode: Literal["alternating", "free"] = Field(
        "alternating", description="alternating: attention then FFN per round (authors' harness); free: original paper"
    )
    search_samples: int = Field(1, ge=1, description="calibration samples the perplexity is measured on (paper: 1)")
    cached_search: bool = Field(True, description="resume candidates from cached layer inputs (same decisions, faster)")
    search_batch: int = Field(8, ge=1, description="candidates run through the layers together")
    screen_vocab: float = screen_vocab_field()


class BlockPrunerBlockOptions(MethodOptions):
    search_samples: int = Field(1, ge=1, description="calibration samples the perplexity is measured on (paper: 1)")
    cached_search: bool = Field(True, description="resume candidates from cached layer inputs (same decisions, faster)")
    search_batch: int = Field(8, ge=1, description="candidates run through the layers together")
    screen_vocab: float = screen_vocab_field()


class Scorer(Protocol):
    """What the search needs from a perplexity evaluator (``PerplexityProbe``, or a benchmark's own)."""

    def best(self, candidates: list[Candidate], rank: Callable[[int, float], tuple]) -> tuple[int, float]:
        """The candidate with the smallest ``rank(index, perplexity)``, and its perplexity."""
        ...

    def committed(self, layer: int) -> None: ...

    def layer_deleted(self) -> None: ...


# ---- counting (works on a weightless skeleton) ---------------------------------------------------
@dataclass(frozen=True)
class SubBlocks:
    """Parameter counts of the sub-blocks still present (0 where one is already gone)."""

    attention: tuple[int, ...]
    ffn: tuple[int, ...]
    blocks: int  # all parameters inside the transformer layers

    @classmethod
    def of(cls, adapter: ModelAdapter) -> SubBlocks:
        L = adapter.num_layers
        return cls(
            attention=tuple(adapter.attention_parameters(i) for i in range(L)),
            ffn=tuple(adapter.ffn_parameters(i) for i in range(L)),
            blocks=adapter.block_parameters(),
        )

    @property
    def layers(self) -> int:
        return len(self.attention)

    def present(self) -> list[int]:
        return [p for p in (*self.attention, *self.ffn) if p > 0]


def alternating_rounds(sub: SubBlocks, sparsity: float) -> int:
    """n = ceil(s * L) rounds; each needs an attention and an FFN left, and some sub-block must survive."""
    check_sparsity(sparsity)
    L = sub.layers
    n = math.ceil(sparsity * L - 1e-9)  # as blocks_for: the epsilon absorbs float noise in s * L
    n_max = min(sum(p > 0 for p in sub.attention), sum(p > 0 for p in sub.ffn), L - 1)
    if n > n_max:
        raise MethodError(
            f"BlockPruner (alternating) cannot reach sparsity {sparsity}: it needs ceil(s*L) = {n} rounds of one "
            f"attention and one FFN, at most {n_max} are possible here (L={L}); "
            f"feasible range here: 0 < s <= {n_max / L:.4f}"
        )
    return n


def free_target(sub: SubBlocks, sparsity: float) -> dict[str, int]:
    """Parameters to remove, and the fewest/most steps any removal order can take to reach them.

    Feasible when at least one sub-block survives whatever the search picks: the target must not
    exceed all present sub-blocks minus the largest one.
    """
    check_sparsity(sparsity)
    target = math.ceil(sparsity * sub.blocks)
    sizes = sorted(sub.present())
    ceiling = sum(sizes) - (sizes[-1] if sizes else 0)
    if target > ceiling:
        raise MethodError(
            f"BlockPruner (free) cannot reach sparsity {sparsity}: {target} parameters to remove, but removing more "
            f"than {ceiling} could leave no sub-block; feasible range here: 0 < s <= {ceiling / sub.blocks:.4f}"
        )
    return {"target_parameters": target, "min_steps": _steps_to(target, sizes[::-1]),
            "max_steps": _steps_to(target, sizes)}


def _steps_to(target: int, sizes: list[int]) -> int:
    total = 0
    for k, p in enumerate(sizes, start=1):
        total += p
        if total >= target:
            return k
    return len(sizes)


def whole_blocks(adapter: ModelAdapter, sparsity: float) -> int:
    check_sparsity(sparsity)
    L = adapter.num_layers
    try:
        return blocks_for(sparsity, L)
    except MethodError as err:
        raise MethodError(
            f"BlockPruner (whole blocks) cannot reach sparsity {sparsity}: {err}; "
            f"feasible range here: 0 < s <= {(L - 1) / L:.4f}"
        ) from None


# ---- the greedy search ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    kind: Kind
    layer: int  # in the ORIGINAL numbering (whole blocks: before any deletion)
    perplexity: float  # of the model right after this step
    parameters: int  # removed by this step

    def asdict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "perplexity": self.perplexity, "parameters": self.parameters}


@dataclass
class GreedySearch:
    """One greedy removal per ``step()``; the method loops it, the benchmark runs variants in lockstep.

    ``form`` is "alternating" (stop after ``2 * rounds`` steps), "free" (stop once ``target``
    parameters are removed) or "block" (stop after ``rounds`` layer deletions).
    """

    adapter: ModelAdapter
    scorer: Scorer
    form: Literal["alternating", "free", "block"]
    rounds: int = 0
    target: int = 0
    timer: StageTimer = field(default_factory=StageTimer)
    steps: list[Step] = field(default_factory=list, init=False)
    removed: int = field(default=0, init=False)  # parameters removed so far
    alive: list[int] = field(default_factory=list, init=False)  # original index of each current layer

    def __post_init__(self) -> None:
        self.alive = list(range(self.adapter.num_layers))

    def done(self) -> bool:
        if self.form == "free":
            return self.removed >= self.target or not self.candidates()
        return len(self.steps) >= (2 * self.rounds if self.form == "alternating" else self.rounds)

    def candidates(self) -> list[Candidate]:
        a, L = self.adapter, self.adapter.num_layers
        if self.form == "block":
            # Only the branches still present: a branch already gone stays gone, as in the deleted layer.
            return [Candidate(i, attention=a.has_attention(i), ffn=a.has_ffn(i)) for i in range(L)]
        kinds = {"alternating": ["ffn" if len(self.steps) % 2 else "attention"],
                 "free": ["attention", "ffn"]}[self.form]
        out = []
        for i in range(L):
            if "attention" in kinds and a.has_attention(i):
                out.append(Candidate(i, attention=True))
            if "ffn" in kinds and a.has_ffn(i):
                out.append(Candidate(i, ffn=True))
        return out

    def step(self) -> Step:
        candidates = self.candidates()
        with self.timer.stage("search"):
            k, perplexity = self.scorer.best(candidates, lambda k, p: _rank(candidates[k], p, self.form))
        best = candidates[k]
        with self.timer.stage("surgery"):
            step = self._remove(best, perplexity)
        with self.timer.stage("search"):
            if self.form == "block":
                self.scorer.layer_deleted()
            else:
                self.scorer.committed(best.layer)
        self.steps.append(step)
        self.removed += step.parameters
        return step

    def _remove(self, c: Candidate, perplexity: float) -> Step:
        a = self.adapter
        if self.form == "block":
            params = module_parameters(a.layers[c.layer])
            a.remove_layers([c.layer])
            return Step("block", self.alive.pop(c.layer), perplexity, params)
        if c.attention:
            params = a.attention_parameters(c.layer)
            a.remove_attention(c.layer)
            return Step("attention", c.layer, perplexity, params)
        params = a.ffn_parameters(c.layer)
        a.remove_ffn(c.layer)
        return Step("ffn", c.layer, perplexity, params)


def _rank(c: Candidate, perplexity: float, form: str) -> tuple[float, int, int]:
    """Lowest perplexity first; NaN (a diverged half-precision run) counts as the worst; ties: lower index."""
    score = math.inf if math.isnan(perplexity) else perplexity
    return score, c.layer, KIND_ORDER["block" if form == "block" else ("attention" if c.attention else "ffn")]


def run_search(search: GreedySearch, progress: Callable[[Step, int], None] = lambda step, evaluated: None) -> None:
    """Step until done; ``progress(step, candidates evaluated)`` after each step."""
    while not search.done():
        evaluated = len(search.candidates())
        progress(search.step(), evaluated)


# ---- the methods ---------------------------------------------------------------------------------
def _probe(adapter: ModelAdapter, options: Any, ctx: PruneContext) -> tuple[PerplexityProbe, torch.Tensor]:
    """The perplexity evaluator on the first ``search_samples`` calibration samples (1 by default)."""
    count = options.search_samples
    samples = ctx.calibration[:count]
    if samples.ndim != 2 or len(samples) < count or samples.shape[1] < 2:
        raise MethodError(f"BlockPruner measures perplexity on {count} calibration sample(s); "
                          f"got {tuple(ctx.calibration.shape)}")
    with ctx.timer.stage("search"):  # the probe's first trace is part of the search, as in 2SSP stage 2
        probe = PerplexityProbe(adapter, samples, cached=options.cached_search, batch=options.search_batch,
                                screen=options.screen_vocab, numerics=ctx.numerics)
    return probe, samples


def _run(search: GreedySearch, ctx: PruneContext, total: int, unit: str) -> None:
    """Run the search with a progress bar counting candidates (or, in free mode, parameters toward the target)."""
    with ctx.progress(f"BlockPruner search ({unit})", total) as advance:
        if unit == "parameters":  # the number of steps of the free mode is not known in advance
            run_search(search, lambda s, n: advance(min(search.removed, total)
                                                    - min(search.removed - s.parameters, total)))
        else:
            run_search(search, lambda s, n: advance(n))


def _decisions(search: GreedySearch, dense_blocks: int, samples: torch.Tensor, ctx: PruneContext) -> dict[str, Any]:
    return {
        "numerics": ctx.numerics,
        "removed": [s.asdict() for s in search.steps],  # in order: kind, original layer, perplexity after, parameters
        "steps": len(search.steps),
        "block_parameters": dense_blocks,
        "removed_parameters": search.removed,
        "achieved_sparsity": search.removed / dense_blocks,
        "search_tokens": list(samples.shape),
    }


class _BlockPrunerBase(PruningMethod):
    # One sample, as the reference: the search measures perplexity on 1 x 2048 tokens.
    calibration = {"full": CalibrationNeeds(1, 2048), "quick": CalibrationNeeds(1, 128)}


class BlockPruner(_BlockPrunerBase):
    name = "blockpruner"
    summary = "BlockPruner: greedy removal of attention/FFN sub-blocks by perplexity on one sample"
    Options = BlockPrunerOptions

    def plan(self, adapter: ModelAdapter, sparsity: float, options: BlockPrunerOptions) -> dict[str, Any]:
        sub = SubBlocks.of(adapter)
        if options.mode == "alternating":
            n = alternating_rounds(sub, sparsity)
            return {"mode": "alternating", "rounds": n}
        return {"mode": "free", **free_target(sub, sparsity)}

    def prune(self, adapter: ModelAdapter, options: BlockPrunerOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        dense = adapter.block_parameters()
        probe, samples = _probe(adapter, options, ctx)
        if plan["mode"] == "alternating":
            n, (a, f) = plan["rounds"], _present_counts(adapter)
            search = GreedySearch(adapter, probe, "alternating", rounds=n, timer=ctx.timer)
            _run(search, ctx, sum((a - r) + (f - r) for r in range(n)), "candidates")
        else:
            search = GreedySearch(adapter, probe, "free", target=plan["target_parameters"], timer=ctx.timer)
            _run(search, ctx, plan["target_parameters"], "parameters")
        ctx.paths["search"] = probe.path
        return {**plan, **_decisions(search, dense, samples, ctx)}


class BlockPrunerBlock(_BlockPrunerBase):
    name = "blockpruner-block"
    summary = "BlockPruner, whole-block form: greedy removal of decoder layers by perplexity on one sample"
    Options = BlockPrunerBlockOptions

    def plan(self, adapter: ModelAdapter, sparsity: float, options: BlockPrunerBlockOptions) -> dict[str, Any]:
        return {"blocks": whole_blocks(adapter, sparsity)}

    def prune(self, adapter: ModelAdapter, options: BlockPrunerBlockOptions, ctx: PruneContext) -> dict[str, Any]:
        n = self.planned(adapter, options, ctx)["blocks"]
        dense, L = adapter.block_parameters(), adapter.num_layers
        probe, samples = _probe(adapter, options, ctx)
        search = GreedySearch(adapter, probe, "block", rounds=n, timer=ctx.timer)
        _run(search, ctx, sum(L - r for r in range(n)), "candidates")
        ctx.paths["search"] = probe.path
        return {
            "blocks": n,
            "removed_layers": sorted(s.layer for s in search.steps),  # original numbering
            **_decisions(search, dense, samples, ctx),
        }


def _present_counts(adapter: ModelAdapter) -> tuple[int, int]:
    L = adapter.num_layers
    return sum(adapter.has_attention(i) for i in range(L)), sum(adapter.has_ffn(i) for i in range(L))
