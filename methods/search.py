"""Perplexity of sub-block removals on fixed calibration samples, for greedy searches.

Removing a sub-block of layer i leaves layers 0..i-1 untouched, so the hidden state entering layer i
is the same for every candidate of layer i and beyond. ``cached=True`` keeps the hidden states at
every layer input and resumes each candidate from its own layer; after a removal is made permanent,
only the states after it are recomputed. Candidates are also run through their remaining layers
together, as one batch (up to ``batch`` at a time): rows of a batched matrix product are computed
exactly as alone, so every perplexity is bit-for-bit the one of a one-by-one evaluation.
``cached=False`` runs every candidate from the embeddings, one at a time (the straightforward way;
kept so that a benchmark can show that both make the same decisions).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from methods.arch import ModelAdapter
from methods.nll import summed_nll
from methods.runner import LayerRunner


class Candidate(NamedTuple):
    """Sub-blocks of one layer to remove: its attention, its FFN, or both (the whole block)."""

    layer: int
    attention: bool = False
    ffn: bool = False

    def removal(self) -> dict[str, list[int]]:
        return {"attention": [self.layer] if self.attention else [], "ffn": [self.layer] if self.ffn else []}


class PerplexityProbe:
    def __init__(self, adapter: ModelAdapter, samples: torch.Tensor, cached: bool = True, batch: int = 8):
        self.adapter = adapter
        self.samples = [s[None] for s in samples]  # batch 1 per sample, as the reference does
        self.cached = cached
        self.batch = max(1, batch)
        self.runner = LayerRunner(adapter)
        self.traces: list[list[torch.Tensor]] = [self.runner.trace(s) for s in self.samples] if cached else []

    @torch.no_grad()
    def perplexities(self, candidates: list[Candidate]) -> list[float]:
        """Perplexity of the model with each candidate's sub-blocks removed (one at a time)."""
        nll = [0.0] * len(candidates)
        count = [0] * len(candidates)
        for i, ids in enumerate(self.samples):
            per_sample = self._cached(i, candidates) if self.cached else [self._uncached(ids, c) for c in candidates]
            for k, (s, c) in enumerate(per_sample):
                nll[k] += s
                count[k] += c
        return [math.exp(s / c) for s, c in zip(nll, count, strict=True)]

    def _uncached(self, ids: torch.Tensor, candidate: Candidate) -> tuple[float, int]:
        with self.adapter.without(**candidate.removal()):
            hidden = self.adapter.model.model(input_ids=ids.to(self._device()), use_cache=False).last_hidden_state
            return summed_nll(self.adapter, hidden, ids)

    def _cached(self, sample: int, candidates: list[Candidate]) -> list[tuple[float, int]]:
        trace, ids = self.traces[sample], self.samples[sample]
        results: list[tuple[float, int]] = [(0.0, 0)] * len(candidates)
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
                results[k] = self.runner.nll(states[row : row + 1], ids)
        return results

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
