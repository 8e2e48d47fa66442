"""Perplexity of sub-block removals on fixed calibration samples, for greedy searches.

Removing a sub-block of layer i leaves layers 0..i-1 untouched, so the hidden state entering layer i
is the same for every candidate of layer i and beyond. ``cached=True`` keeps the hidden states at
every layer input and resumes each candidate from its own layer; after a removal is made permanent,
only the states after it are recomputed. With ``numerics="exact"`` candidates are also run through
their remaining layers together, as one batch (up to ``batch`` at a time). ``cached=False`` runs every
candidate from the embeddings, one at a time, as the authors' loop does.

Neither shortcut is assumed to be exact: whether a batched matrix product computes each row as it would
alone, and whether a layer resumed from a cached state gives what a whole forward gives, depends on the
kernels, hence on the CPU or GPU and on the dtype (bf16 through AMX on Intel Xeons: not for batches). So
the first evaluation checks both on the first candidates, bit for bit, and falls back to the plain path
where they differ; :attr:`PerplexityProbe.path` says which path ran, and the pruning report records it.
``numerics="reference"`` never batches: the authors compute one candidate at a time, and so do we.

A greedy search needs only the best candidate, and on a small model the LM head is a large share of
each evaluation (SmolLM2-135M: 49k x 576, as much as a dozen pruned layers). :meth:`best` therefore
first bounds every candidate's NLL from below on a slice of the vocabulary
(:class:`methods.nll.VocabularyScreen`), then computes the full head in bound order and stops as soon
as the next bound exceeds the best exact NLL by more than float rounding could explain: the skipped
candidates are provably worse, and the chosen candidate and its perplexity are those of the full
evaluation, bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from pydantic import Field

from methods.arch import ModelAdapter
from methods.base import Numerics
from methods.nll import ReferenceMean, VocabularyScreen, reference_window_loss, summed_nll
from methods.runner import LayerRunner

logger = logging.getLogger(__name__)


def screen_vocab_field():
    """The ``screen_vocab`` option of the methods whose searches go through :meth:`PerplexityProbe.best`."""
    return Field(
        0.125, ge=0, le=1, description="vocabulary share of a lower bound that skips the full LM head of "
        "provably worse candidates (same decisions; float32 only; 0 = off)"
    )


class Candidate(NamedTuple):
    """Sub-blocks of one layer to remove: its attention, its FFN, or both (the whole block)."""

    layer: int
    attention: bool = False
    ffn: bool = False

    def removal(self) -> dict[str, list[int]]:
        return {"attention": [self.layer] if self.attention else [], "ffn": [self.layer] if self.ffn else []}


class PerplexityProbe:
    # Bounds within this many nats per predicted token of the best exact NLL are not trusted to rule a
    # candidate out. Float32 rounding of a logit is ~1e-6 here; the margin is 100 times that.
    MARGIN_PER_TOKEN = 1e-4

    def __init__(self, adapter: ModelAdapter, samples: torch.Tensor, cached: bool = True, batch: int = 8,
                 screen: float = 0.0, numerics: Numerics = "exact"):
        self.adapter = adapter
        self.samples = [s[None] for s in samples]  # batch 1 per sample, as the reference does
        self.cached = cached
        self.batch = 1 if numerics == "reference" else max(1, batch)  # the authors' shapes: one at a time
        self.numerics = numerics
        self.fallback = ""  # why a shortcut was dropped after the run-time check ("" while none was)
        self._checked = not cached  # the plain path needs no check
        # The screen needs the reference states (cached) and float32 logits: in half precision the full
        # head's own rounding (~0.4 % of a logit) is larger than the gaps the bound has to resolve. It bounds
        # the exact NLL only: the reference numerics rank by another (rounded) number.
        float_head = adapter.lm_head().weight.dtype in (torch.float32, torch.float64)
        self.screen = screen if cached and float_head and numerics == "exact" else 0.0
        self.exact_evaluations = 0  # full-head evaluations made by best() (for the logs and benchmarks)
        self.runner = LayerRunner(adapter)
        self.traces: list[list[torch.Tensor]] = [self.runner.trace(s) for s in self.samples] if cached else []

    @torch.no_grad()
    def perplexities(self, candidates: list[Candidate]) -> list[float]:
        """Perplexity of the model with each candidate's sub-blocks removed (one at a time).

        ``exact``: exp of the summed float32 NLL over all samples' tokens. ``reference``: each sample is
        one window of the authors' loop (methods.nll.ReferenceMean), in the model's dtype.
        """
        self._check_shortcuts(candidates)
        if self.numerics == "reference":
            means = [ReferenceMean() for _ in candidates]
            for i, ids in enumerate(self.samples):
                for k, normed in self._normed_states(i, candidates):
                    means[k].add(reference_window_loss(self.adapter, normed, ids), ids.shape[1] - 1)
            return [m.perplexity() for m in means]
        nll = [0.0] * len(candidates)
        count = [0] * len(candidates)
        for i, ids in enumerate(self.samples):
            for k, normed in self._normed_states(i, candidates):
                s, c = summed_nll(self.adapter, normed, ids)
                nll[k] += s
                count[k] += c
        return [math.exp(s / c) for s, c in zip(nll, count, strict=True)]

    def _normed_states(self, sample: int, candidates: list[Candidate]) -> Iterator[tuple[int, torch.Tensor]]:
        """(candidate index, output of the final norm) on one sample, for each candidate."""
        if self.cached:
            norm = self.adapter.final_norm()
            for k, last in self._last_states(sample, candidates):
                yield k, norm(last)
            return
        ids = self.samples[sample].to(self._device())
        for k, candidate in enumerate(candidates):
            with self.adapter.without(**candidate.removal()):
                yield k, self.adapter.model.model(input_ids=ids, use_cache=False).last_hidden_state

    def _last_states(self, sample: int, candidates: list[Candidate]) -> Iterator[tuple[int, torch.Tensor]]:
        """(candidate index, last layer's output) for each candidate, a batch of candidates at a time."""
        trace = self.traces[sample]
        order = sorted(range(len(candidates)), key=lambda k: candidates[k].layer)
        for g in range(0, len(order), self.batch):
            group = order[g : g + self.batch]
            states: torch.Tensor | None = None
            members: list[int] = []
            for j in range(candidates[group[0]].layer, self.adapter.num_layers):
                if states is not None:  # candidates that started earlier: layer j as it is
                    states = self.runner.run(states, j, j + 1)
                fresh = []
                for k in (k for k in group if candidates[k].layer == j):  # candidates starting here
                    with self.adapter.without(**candidates[k].removal()):
                        fresh.append(self.runner.run(trace[j], j, j + 1))
                    members.append(k)
                if fresh:
                    states = torch.cat([states, *fresh] if states is not None else fresh)
            for row, k in enumerate(members):
                yield k, states[row : row + 1]

    @torch.no_grad()
    def best(self, candidates: list[Candidate], rank: Callable[[int, float], tuple]) -> tuple[int, float]:
        """The candidate ``k`` with the smallest ``rank(k, perplexity)``, and its perplexity.

        Same answer as ranking :meth:`perplexities`, computing the full head only where needed.
        """
        self._check_shortcuts(candidates)
        if not self.screen:
            scores = self.perplexities(candidates)
            self.exact_evaluations += len(candidates)
            k = min(range(len(candidates)), key=lambda k: rank(k, scores[k]))
            return k, scores[k]
        norm, n = self.adapter.final_norm(), len(candidates)
        normed: list[list[torch.Tensor]] = [[] for _ in candidates]  # per candidate, per sample
        bounds = [0.0] * n
        for i, ids in enumerate(self.samples):
            screen = VocabularyScreen(self.adapter, norm(self.traces[i][-1]), ids, self.screen)
            states = dict(self._last_states(i, candidates))
            for k in range(n):
                normed[k].append(norm(states.pop(k)))
                bounds[k] += screen.lower_bound(normed[k][-1])
        margin = self.MARGIN_PER_TOKEN * sum(ids.shape[1] - 1 for ids in self.samples)
        # A NaN bound (a diverged run) sorts first: it is then evaluated, and rank() decides about it.
        order = sorted(range(n), key=lambda k: (-math.inf if math.isnan(bounds[k]) else bounds[k], k))
        chosen, chosen_nll, chosen_ppl = -1, math.inf, math.nan
        for k in order:
            if chosen >= 0 and bounds[k] > chosen_nll + margin:
                break  # this bound and every later one: worse than the chosen candidate's exact NLL
            parts = [summed_nll(self.adapter, h, ids) for h, ids in zip(normed[k], self.samples, strict=True)]
            self.exact_evaluations += 1
            nll, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
            ppl = math.exp(nll / count)
            if chosen < 0 or rank(k, ppl) < rank(chosen, chosen_ppl):
                chosen, chosen_nll, chosen_ppl = k, (math.inf if math.isnan(nll) else nll), ppl
        return chosen, chosen_ppl

    @property
    def path(self) -> str:
        """How candidates are computed, for the pruning report (machines may differ here, decisions may not)."""
        if not self.cached:
            return "one by one from the embeddings" + (f" ({self.fallback})" if self.fallback else "")
        how = f"batches of {self.batch}" if self.batch > 1 else "one by one"
        return f"prefix-cached, {how}" + (f" ({self.fallback})" if self.fallback else "")

    @torch.no_grad()
    def _check_shortcuts(self, candidates: list[Candidate]) -> None:
        """Once, before the first evaluation: keep batching and the prefix cache only if, on this machine and
        dtype, they give bit for bit what one-by-one whole forwards give on the first candidates."""
        if self._checked or not candidates:
            return
        self._checked = True
        first = sorted(candidates, key=lambda c: c.layer)[: max(2, self.batch)]
        alone = self._states_alone(first)
        if self.batch > 1:
            together = [state for _, state in sorted(self._last_states(0, first), key=lambda t: t[0])]
            if not all(torch.equal(a, b) for a, b in zip(alone, together, strict=True)):
                self.fallback = f"batches of {self.batch} differed from one by one here"
                self.batch = 1
        norm = self.adapter.final_norm()
        ids = self.samples[0].to(self._device())
        for candidate, state in list(zip(first, alone, strict=True))[:2]:
            with self.adapter.without(**candidate.removal()):
                whole = self.adapter.model.model(input_ids=ids, use_cache=False).last_hidden_state
            if not torch.equal(norm(state), whole):
                self.fallback = "resuming from cached states differed from whole forwards here"
                self.cached, self.screen, self.traces = False, 0.0, []
                break
        if self.fallback:
            logger.info("search: %s; computing %s", self.fallback, self.path)

    def _states_alone(self, candidates: list[Candidate]) -> list[torch.Tensor]:
        """Each candidate's last-layer output on the first sample, resumed from the cache, one at a time."""
        batch, self.batch = self.batch, 1
        try:
            return [state for _, state in sorted(self._last_states(0, candidates), key=lambda t: t[0])]
        finally:
            self.batch = batch

    @torch.no_grad()
    def committed(self, layer: int) -> None:
        """Layer ``layer`` changed for good (a sub-block removed): refresh the states after it."""
        if not self.cached:
            return
        for trace in self.traces:
            for j in range(layer, self.adapter.num_layers):
                trace[j + 1] = self.runner.run(trace[j], j, j + 1)

    @torch.no_grad()
    def layer_deleted(self) -> None:
        """A whole layer was deleted for good: positions shift, so trace the shorter stack again."""
        if self.cached:
            self.traces = [self.runner.trace(ids) for ids in self.samples]

    def _device(self) -> torch.device:
        return self.adapter.embedding().weight.device
