"""EvoPress (arXiv 2410.14649): evolutionary search over which sub-blocks (or whole blocks) to drop.

Genome. ``n = ceil(s * L)`` block-equivalents. The sub-block form ("evopress") drops n attention
modules and n FFN modules, chosen independently; the block form ("evopress-block") drops n whole
blocks. Removing n attention and n FFN modules removes exactly the parameters of n blocks.

Fitness. Token-averaged KL(dense || candidate) of the next-token distributions, as the authors'
``compute_kl_div``: every position of a piece of calibration text except its last one, averaged over
all positions of the minibatch (lower is better).

Search (the authors' ``evo_drop_search.py``, reference settings of their scripts):
1. ``initially_generated`` (64) distinct random genomes are scored on a random minibatch of
   ``initial_tokens`` (2048) tokens; the ``population_size`` (1) best form the first population.
2. Each generation makes ``offspring`` (32) distinct genomes, none equal to a parent: a random
   parent, then ``min(U, U')`` swaps, U, U' uniform in 1..``max_mutations`` (3); a swap picks a kind
   (attention or FFN, fair coin) and exchanges a kept and a dropped module of that kind.
3. Multi-step selection, ``survivors_per_selection`` [2, 1] on ``tokens_per_selection``
   [2048, 32768]: stage k scores the current candidates on a fresh random minibatch of
   tokens_per_selection[k] tokens and keeps the survivors_per_selection[k] best. So the 32 offspring
   are scored on 2048 tokens (one 2048-token sample) and the best 2 go on; at the last stage the
   parent joins them (elitism) and all three are scored on 32768 fresh tokens (16 samples); the best
   becomes the next parent. The parent's fitness is re-measured every generation, never carried
   over, and it stays the parent unless an offspring beats it (a tie keeps the parent).
4. ``generations`` defaults to ``int(n * (L - n) / 1.5)``, as the authors' run scripts compute it.
A minibatch of t tokens is drawn as the authors do: distinct random calibration samples, whole,
until t tokens are reached, the last one cut to the remainder.

Memory and cost. The dense logits of all calibration tokens (the authors keep them, 131k x vocab)
are never held. The dense model is run once per calibration sample; its final-norm output
(tokens x hidden, vocab/hidden times smaller than the logits) is kept on the CPU and the dense
distribution is rebuilt from it with the LM head, one chunk of positions at a time, exactly as the
model computes it. When one selection's dense probabilities fit in ``dense_probs_mib`` they are built
once and shared by all the candidates of that selection (stage 1 of the paper settings) instead of
rebuilt per candidate (stage 2). The dense hidden states entering some layers are kept too (as many
layers as fit in ``prefix_cache_mib``): a candidate equals the dense model up to its first dropped
module, so it starts from the cached state nearest below that layer. Both caches give bit-for-bit
the same fitness as the straightforward computation (tested); they only save time.

Deviations from the authors' code: n = ceil(s * L) as docs/methods.md says (their scripts use
int(s * L)); the KL is computed in float32 (their runs: fp16 logits) as
sum p log p - (p . z - lse(z) sum p), which equals their F.kl_div up to rounding; a tie in the last
stage keeps the parent (theirs appends the parent last, so an equal offspring would win); a search
space smaller than the asked numbers of initial genomes or offspring is capped instead of looping
forever. The block form's mutation follows the specification (every swap moves a block) by default;
``block_mutation="evopress-code"`` reproduces the authors' script run with ``--drop_entire_block``,
where the swaps drawn for the FFN mask are overwritten by the copy of the attention mask (so about
half of the drawn swaps do nothing).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod, blocks_for
from methods.errors import MethodError
from methods.runner import LayerRunner

KL_CHUNK = 512  # positions per LM-head application: bounds the [positions, vocab] temporaries


class SearchOptions(MethodOptions):
    """Search settings shared by both forms; the defaults are the reference harness's settings."""

    population_size: int = Field(1, ge=1, description="parents kept from one generation to the next")
    offspring: int = Field(32, ge=1, description="distinct offspring per generation")
    initially_generated: int = Field(64, ge=1, description="random genomes scored to pick the first population")
    initial_tokens: int = Field(2048, ge=2, description="calibration tokens scoring the initial genomes")
    survivors_per_selection: tuple[int, ...] = Field(
        (2, 1), min_length=1, description="survivors of each selection stage")
    tokens_per_selection: tuple[int, ...] = Field(
        (2048, 32768), min_length=1, description="tokens of each selection stage")
    max_mutations: int = Field(3, ge=1, description="swaps per offspring: min of two uniform draws in 1..max")
    generations: int | None = Field(None, ge=0, description="None: int(n * (L - n) / 1.5)")
    prefix_cache_mib: int = Field(2048, ge=0, description="memory for dense layer inputs (speed only)")
    dense_probs_mib: int = Field(1024, ge=0, description="memory for one selection's dense probabilities (speed only)")

    @model_validator(mode="after")
    def _stages_agree(self) -> SearchOptions:
        survivors, tokens = self.survivors_per_selection, self.tokens_per_selection
        if len(survivors) != len(tokens):
            raise ValueError(f"survivors_per_selection {list(survivors)} and tokens_per_selection {list(tokens)} "
                             "differ in length")
        if min(survivors) < 1 or min(tokens) < 2:
            raise ValueError("every selection stage keeps at least 1 survivor and scores at least 2 tokens")
        if survivors[-1] != self.population_size:
            raise ValueError(f"the last selection stage must keep population_size={self.population_size}, "
                             f"not {survivors[-1]}")
        if self.initially_generated < self.population_size:
            raise ValueError(f"initially_generated={self.initially_generated} < population_size={self.population_size}")
        return self


class EvoPressOptions(SearchOptions):
    delete_empty_layers: bool = Field(True, description="delete layers left with neither attention nor FFN")


class EvoPressBlockOptions(SearchOptions):
    block_mutation: Literal["swap", "evopress-code"] = Field(
        "swap", description="swap: every swap moves a block; evopress-code: the authors' script (half the swaps void)"
    )


class Genome(NamedTuple):
    """Dropped layer indices, sorted; the block form drops the same layers in both."""

    attention: tuple[int, ...]
    ffn: tuple[int, ...]

    @classmethod
    def of(cls, attention: list[bool], ffn: list[bool]) -> Genome:
        return cls(tuple(i for i, d in enumerate(attention) if d), tuple(i for i, d in enumerate(ffn) if d))

    def masks(self, layers: int) -> tuple[list[bool], list[bool]]:
        return [i in self.attention for i in range(layers)], [i in self.ffn for i in range(layers)]

    def first_change(self, layers: int) -> int:
        """The first layer that differs from the dense model (``layers`` if none does)."""
        return min(self.attention + self.ffn, default=layers)


@dataclass(frozen=True)
class Space:
    """The search space: L layers, n dropped per kind, whole blocks or sub-blocks."""

    layers: int
    n: int
    blocks: bool

    def size(self) -> int:
        one = math.comb(self.layers, self.n)
        return one if self.blocks else one * one

    def neighbours(self, max_swaps: int) -> int:
        """Genomes at most ``max_swaps`` swaps from a given one, itself excluded (what mutation can reach)."""
        at = [math.comb(self.n, k) * math.comb(self.layers - self.n, k) for k in range(max_swaps + 1)]
        if self.blocks:
            return sum(at[1:])
        return sum(at[a] * at[b] for a in range(max_swaps + 1) for b in range(max_swaps + 1 - a)) - 1

    def random_genome(self, rng: random.Random) -> Genome:
        attention = sorted(rng.sample(range(self.layers), self.n))
        ffn = attention if self.blocks else sorted(rng.sample(range(self.layers), self.n))
        return Genome(tuple(attention), tuple(ffn))


def _swap(mask: list[bool], rng: random.Random) -> None:
    """Drop one kept module and bring back one dropped module (rejection sampling, as the authors)."""
    last = len(mask) - 1
    drop = rng.randint(0, last)
    while mask[drop]:
        drop = rng.randint(0, last)
    back = rng.randint(0, last)
    while not mask[back]:
        back = rng.randint(0, last)
    mask[drop], mask[back] = True, False


def mutate(parent: Genome, space: Space, rng: random.Random, max_mutations: int,
           block_mutation: str = "swap") -> Genome:
    """``min(U, U')`` swaps, U, U' uniform in 1..max_mutations (biased towards few swaps)."""
    attention, ffn = parent.masks(space.layers)
    for _ in range(min(rng.randint(1, max_mutations), rng.randint(1, max_mutations))):
        if space.blocks:
            # The authors' script draws a kind per swap even for whole blocks, then overwrites the FFN
            # mask with the attention mask: an FFN swap is lost.
            if block_mutation == "evopress-code" and rng.randint(0, 1) == 1:
                continue
            _swap(attention, rng)
        else:
            _swap(attention if rng.randint(0, 1) == 0 else ffn, rng)
    return Genome.of(attention, attention if space.blocks else ffn)


def draw_pieces(rng: random.Random, samples: int, seq_len: int, tokens: int) -> list[tuple[int, int]]:
    """(sample, length) pieces totalling exactly ``tokens``: distinct random samples, the last one cut."""
    pieces: list[tuple[int, int]] = []
    used: set[int] = set()
    total = 0
    while total < tokens:
        i = rng.randint(0, samples - 1)
        if i in used:
            continue
        used.add(i)
        length = min(seq_len, tokens - total)
        pieces.append((i, length))
        total += length
    return pieces


class DenseTarget(NamedTuple):
    """The dense distribution over one chunk of positions, in the form the KL needs.

    KL(p || q) = sum_v p log p - (sum_v p z - lse(z) sum_v p) for candidate logits z: the first
    term and p itself depend on the dense model only, so they are built once per minibatch and the
    candidate needs its logits, their log-sum-exp and one product with p (no log-softmax tensor).
    """

    probs: torch.Tensor  # [1, rows, vocab] float32
    mass: torch.Tensor  # [1, rows] sum of probs (1 up to rounding)
    neg_entropy: torch.Tensor  # float64 scalar: sum over rows of sum_v p log p


@dataclass
class Minibatch:
    pieces: list[tuple[int, int]]  # (calibration sample, tokens taken from its start)
    dense: list[list[DenseTarget]] | None  # per piece, per chunk of positions; None: rebuilt per candidate

    @property
    def positions(self) -> int:
        return sum(t - 1 for _, t in self.pieces)


class KLScorer:
    """Token-averaged KL(dense || candidate) on pieces of the calibration samples (see module docstring)."""

    def __init__(self, adapter: ModelAdapter, calibration: torch.Tensor, prefix_cache_mib: int, dense_probs_mib: int):
        self.adapter = adapter
        self.samples = [s[None] for s in calibration]
        self.seq_len = calibration.shape[1]
        self.probs_budget = dense_probs_mib * 2**20
        self.vocab = adapter.lm_head().out_features
        self.device = adapter.embedding().weight.device
        self.runner = LayerRunner(adapter)
        self.cached_layers = self._layers_to_cache(adapter, calibration, prefix_cache_mib)
        self.dense_normed: list[torch.Tensor] = []
        self.states: dict[int, list[torch.Tensor]] = {j: [] for j in self.cached_layers}
        self.evaluations = 0
        self.positions_scored = 0
        self._trace_dense()

    @staticmethod
    def _layers_to_cache(adapter: ModelAdapter, calibration: torch.Tensor, mib: int) -> list[int]:
        """Evenly spread layer inputs (never layer 0: the embedding is cheap), as many as fit."""
        L = adapter.num_layers
        per_layer = calibration.numel() * adapter.hidden_size * adapter.embedding().weight.element_size()
        slots = min(L - 1, (mib * 2**20) // max(per_layer, 1))
        if slots <= 0:
            return []
        return sorted({max(1, round(L * k / (slots + 1))) for k in range(1, slots + 1)})

    @torch.no_grad()
    def _trace_dense(self) -> None:
        """One dense forward per sample: keep its final-norm output and the chosen layer inputs, on CPU."""
        L = self.adapter.num_layers
        for ids in self.samples:
            trace = self.runner.trace(ids)
            self.dense_normed.append(self.adapter.final_norm()(trace[L]).cpu())
            for j in self.cached_layers:
                self.states[j].append(trace[j].cpu())

    @torch.no_grad()
    def minibatch(self, pieces: list[tuple[int, int]]) -> Minibatch:
        batch = Minibatch(pieces, None)
        if batch.positions * self.vocab * 4 <= self.probs_budget:
            batch.dense = [[self._dense_target(i, a, b) for a, b in _chunks(t - 1)] for i, t in pieces]
        return batch

    @torch.no_grad()
    def kl(self, genome: Genome, batch: Minibatch) -> float:
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with self.adapter.without(attention=genome.attention, ffn=genome.ffn):
            for k, (i, t) in enumerate(batch.pieces):
                normed = self._candidate_normed(i, t, genome.first_change(self.adapter.num_layers))
                for c, (a, b) in enumerate(_chunks(t - 1)):
                    dense = batch.dense[k][c] if batch.dense is not None else self._dense_target(i, a, b)
                    logits = self.adapter.logits(normed[:, a:b]).float()
                    cross = torch.linalg.vecdot(dense.probs, logits) - dense.mass * torch.logsumexp(logits, dim=-1)
                    total += dense.neg_entropy - cross.double().sum()
        self.evaluations += 1
        self.positions_scored += batch.positions
        return float(total) / batch.positions

    def _dense_target(self, sample: int, start: int, stop: int) -> DenseTarget:
        hidden = self.dense_normed[sample][:, start:stop].to(self.device)
        logp = F.log_softmax(self.adapter.logits(hidden).float(), dim=-1)
        probs = logp.exp()
        return DenseTarget(probs, probs.sum(-1), torch.linalg.vecdot(probs, logp).double().sum())

    def _candidate_normed(self, sample: int, length: int, first_change: int) -> torch.Tensor:
        """Final-norm output of the candidate (sub-blocks already swapped out by the caller)."""
        start = max((j for j in self.cached_layers if j <= first_change), default=None)
        if start is None or length < self.seq_len:  # a cut piece has no cached trace of its length
            ids = self.samples[sample][:, :length].to(self.device)
            return self.adapter.model.model(input_ids=ids, use_cache=False).last_hidden_state
        last = self.runner.run(self.states[start][sample].to(self.device), start)
        return self.adapter.final_norm()(last)


def _chunks(positions: int) -> list[tuple[int, int]]:
    return [(a, min(a + KL_CHUNK, positions)) for a in range(0, positions, KL_CHUNK)]


@dataclass
class SearchResult:
    best: Genome
    initial_fitness: float
    fitness: list[float] = field(default_factory=list)  # the parent's fitness after each generation
    replaced: int = 0  # generations whose parent an offspring beat


def fitness_rank(kl: float, k: int) -> tuple[bool, float, int]:
    """Lowest KL first, then the earlier candidate; NaN after everything, even an infinite KL."""
    nan = math.isnan(kl)
    return nan, 0.0 if nan else kl, k


class Evolution:
    """The (population + offspring) loop with multi-step selection; all randomness from one seeded RNG."""

    def __init__(self, scorer: KLScorer, space: Space, options: SearchOptions, seed: int):
        self.scorer = scorer
        self.space = space
        self.opts = options
        self.rng = random.Random(seed)
        self.block_mutation = getattr(options, "block_mutation", "swap")
        self.offspring_count = min(options.offspring,
                                   max(0, space.neighbours(options.max_mutations) - (options.population_size - 1)))
        self.initial_count = min(options.initially_generated, space.size())

    def select(self, candidates: list[Genome], keep: int, tokens: int) -> tuple[list[Genome], list[float]]:
        """Score all candidates on one fresh random minibatch; keep the best (ties: earlier candidate; a NaN KL,
        a diverged half-precision run, last: sorted as it is, NaN compares false and can come out first)."""
        pieces = draw_pieces(self.rng, len(self.scorer.samples), self.scorer.seq_len, tokens)
        batch = self.scorer.minibatch(pieces)
        scores = [self.scorer.kl(g, batch) for g in candidates]
        order = sorted(range(len(candidates)), key=lambda k: fitness_rank(scores[k], k))[:keep]
        return [candidates[k] for k in order], [scores[k] for k in order]

    def initial(self) -> tuple[list[Genome], list[float]]:
        candidates: list[Genome] = []
        seen: set[Genome] = set()
        while len(candidates) < self.initial_count:
            genome = self.space.random_genome(self.rng)
            if genome not in seen:
                seen.add(genome)
                candidates.append(genome)
        return self.select(candidates, self.opts.population_size, self.opts.initial_tokens)

    def generation(self, population: list[Genome]) -> tuple[list[Genome], list[float]]:
        seen = set(population)
        candidates: list[Genome] = []
        while len(candidates) < self.offspring_count:
            child = mutate(self.rng.choice(population), self.space, self.rng, self.opts.max_mutations,
                           self.block_mutation)
            if child not in seen:
                seen.add(child)
                candidates.append(child)
        scores: list[float] = []
        stages = list(zip(self.opts.survivors_per_selection, self.opts.tokens_per_selection, strict=True))
        for k, (keep, tokens) in enumerate(stages):
            if k == len(stages) - 1:  # elitism: the parents compete in the last stage, first in line
                candidates = population + candidates
            candidates, scores = self.select(candidates, keep, tokens)
        return candidates, scores

    def run(self, generations: int, advance: Any) -> SearchResult:
        population, scores = self.initial()
        result = SearchResult(population[0], scores[0])
        advance(1)
        for _ in range(generations):
            parent = population[0]
            population, scores = self.generation(population)
            result.fitness.append(scores[0])
            result.replaced += population[0] != parent
            advance(1)
        result.best = population[0]
        return result


# The authors' EvoPress calibration, built per document (docs/reference-harness.md): 131,072 tokens, cut into
# samples whose length depends on the model family.
REFERENCE_CALIBRATION_TOKENS = 131072
REFERENCE_SEQ_LEN: dict[str, int] = {"llama": 4096, "phi3": 4096, "qwen2": 2048}
REFERENCE_DEFAULT_SEQ_LEN = 8192


def _short(x: float) -> float:
    return float(f"{x:.4g}")


class EvoPress(PruningMethod):
    name = "evopress"
    summary = "EvoPress: evolutionary search over attention/FFN sub-blocks to drop (KL to the dense model)"
    Options = EvoPressOptions
    blocks: ClassVar[bool] = False  # the genome drops whole blocks
    label: ClassVar[str] = "EvoPress"
    calibration = {"full": CalibrationNeeds(64, 2048), "quick": CalibrationNeeds(8, 128)}
    # quick: SmolLM2 (30 layers) at 25-50 % in about a minute or two on 2 CPU cores.
    protocol_options = {
        "quick": {
            "offspring": 6,
            "initially_generated": 8,
            "initial_tokens": 256,
            "survivors_per_selection": (2, 1),
            "tokens_per_selection": (256, 512),
            "generations": 6,
        }
    }

    def calibration_needs(self, protocol: str, model_type: str, construction: str = "joined") -> CalibrationNeeds:
        """Built per document under the ``full`` protocol, the authors' amount: 131,072 tokens in samples of a
        length that depends on the family (their script: 4096 for Llama and Phi-3, 2048 for Qwen2, 8192 for
        every other model, Mistral among them)."""
        if protocol != "full" or construction != "per-document":
            return super().calibration_needs(protocol, model_type, construction)
        seq_len = REFERENCE_SEQ_LEN.get(model_type, REFERENCE_DEFAULT_SEQ_LEN)
        return CalibrationNeeds(REFERENCE_CALIBRATION_TOKENS // seq_len, seq_len)

    def plan(self, adapter: ModelAdapter, sparsity: float, options: SearchOptions) -> dict[str, Any]:
        L = adapter.num_layers
        if not all(adapter.has_attention(i) and adapter.has_ffn(i) for i in range(L)):
            raise MethodError(f"{self.label} needs a model whose layers all still have attention and FFN")
        try:
            n = blocks_for(sparsity, L)
        except MethodError as err:
            raise MethodError(
                f"{self.label} cannot reach sparsity {sparsity}: {err}; feasible range here: "
                f"0 < s <= {(L - 1) / L:.4f} (1 to {L - 1} of {L} blocks)"
            ) from None
        space = Space(L, n, self.blocks)
        if options.population_size > space.size():
            raise MethodError(f"{self.label}: population_size={options.population_size} exceeds the "
                              f"{space.size()} possible genomes")
        generations = options.generations if options.generations is not None else int(n * (L - n) / 1.5)
        removes = f"{n} of {L} blocks" if self.blocks else f"{n} attention and {n} FFN modules of {L} layers"
        return {"form": "blocks" if self.blocks else "sub-blocks", "layers": L, "n": n, "removes": removes,
                "generations": generations}

    def prune(self, adapter: ModelAdapter, options: SearchOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        samples, seq_len = ctx.calibration.shape if ctx.calibration.dim() == 2 else (0, 0)
        self._check_tokens(options, samples * seq_len, samples, seq_len)
        space = Space(plan["layers"], plan["n"], self.blocks)
        with ctx.timer.stage("calibration_forward"):
            scorer = KLScorer(adapter, ctx.calibration, options.prefix_cache_mib, options.dense_probs_mib)
        evolution = Evolution(scorer, space, options, ctx.seed)
        with (ctx.timer.stage("search"),
              ctx.progress(f"{self.label}: evolutionary search", plan["generations"] + 1) as advance):
            result = evolution.run(plan["generations"], advance)
        with ctx.timer.stage("scoring"):  # the winner on all calibration tokens, for the record
            everything = scorer.minibatch([(i, seq_len) for i in range(samples)])
            final_kl = scorer.kl(result.best, everything)
        with ctx.timer.stage("surgery"):
            removed = self._remove(adapter, result.best, options)
        return {
            **removed,
            "fitness": {
                "measure": "token-mean KL(dense || pruned), nats",
                "initial": _short(result.initial_fitness),
                "per_generation": [_short(f) for f in result.fitness],
                "final_all_calibration": _short(final_kl),
            },
            "parent_replaced_in_generations": result.replaced,
            "evaluations": {"candidates_scored": scorer.evaluations, "positions_scored": scorer.positions_scored},
            "settings": self._settings(plan, options, evolution, scorer, samples, seq_len, ctx.seed),
        }

    def _check_tokens(self, options: SearchOptions, available: int, samples: int, seq_len: int) -> None:
        if seq_len < 2:
            raise MethodError(f"{self.label} needs calibration samples of at least 2 tokens")
        asked = max(options.initial_tokens, *options.tokens_per_selection)
        if asked > available:
            raise MethodError(
                f"{self.label}: a selection asks for {asked} tokens but the calibration holds {samples} x {seq_len} = "
                f"{available}; pass more calibration or smaller initial_tokens/tokens_per_selection"
            )

    def _remove(self, adapter: ModelAdapter, best: Genome, options: SearchOptions) -> dict[str, Any]:
        """Real removal through the adapter (logged for checkpoint replay)."""
        if self.blocks:
            adapter.remove_layers(best.attention)
            return {"removed_blocks": list(best.attention)}
        for i in best.attention:
            adapter.remove_attention(i)
        for i in best.ffn:
            adapter.remove_ffn(i)
        # A layer without attention and FFN computes h exactly; deleting it also drops its call overhead.
        empty = sorted(set(best.attention) & set(best.ffn)) if getattr(options, "delete_empty_layers", False) else []
        if empty:
            adapter.remove_layers(empty)
        return {"removed_attention": list(best.attention), "removed_ffn": list(best.ffn), "deleted_empty_layers": empty}

    def _settings(self, plan: dict[str, Any], options: SearchOptions, evolution: Evolution, scorer: KLScorer,
                  samples: int, seq_len: int, seed: int) -> dict[str, Any]:
        settings = {
            "form": plan["form"], "layers": plan["layers"], "n": plan["n"], "generations": plan["generations"],
            "generations_rule": "option" if options.generations is not None else "int(n*(L-n)/1.5)",
            "population_size": options.population_size,
            "offspring": evolution.offspring_count, "initially_generated": evolution.initial_count,
            "initial_tokens": options.initial_tokens,
            "survivors_per_selection": list(options.survivors_per_selection),
            "tokens_per_selection": list(options.tokens_per_selection),
            "max_mutations": options.max_mutations,
            "calibration": f"{samples} x {seq_len} tokens", "seed": seed,
            "prefix_cache_layers": scorer.cached_layers, "dense_probs_mib": options.dense_probs_mib,
        }
        if self.blocks:
            settings["block_mutation"] = getattr(options, "block_mutation", "swap")
        else:
            settings["delete_empty_layers"] = getattr(options, "delete_empty_layers", True)
        return settings


class EvoPressBlock(EvoPress):
    name = "evopress-block"
    summary = "EvoPress, whole blocks: evolutionary search over transformer blocks to drop (KL to the dense model)"
    Options = EvoPressBlockOptions
    blocks = True
    label = "EvoPress-block"
