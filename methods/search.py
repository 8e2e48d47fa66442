"""Perplexity of sub-block removals on fixed calibration samples, for greedy searches.

Removing a sub-block of layer i leaves layers 0..i-1 untouched, so the hidden state entering layer i
is the same for every candidate of layer i and beyond. ``cached=True`` keeps the hidden states at
every layer input and resumes from the candidate's layer; after a removal is made permanent, only the
states after it are recomputed. ``cached=False`` runs every candidate from the embeddings (the
straightforward implementation; kept for the benchmark that shows both give the same decisions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from methods.arch import ModelAdapter
from methods.nll import summed_nll
from methods.runner import LayerRunner


class PerplexityProbe:
    def __init__(self, adapter: ModelAdapter, samples: torch.Tensor, cached: bool = True):
        self.adapter = adapter
        self.samples = [s[None] for s in samples]  # batch 1 per sample, as the reference does
        self.cached = cached
        self.runner = LayerRunner(adapter)
        self.traces: list[list[torch.Tensor]] = [self.runner.trace(s) for s in self.samples] if cached else []

    @torch.no_grad()
    def perplexity(self, attention: Iterable[int] = (), ffn: Iterable[int] = ()) -> float:
        """Perplexity with the given sub-blocks temporarily removed."""
        attention, ffn = list(attention), list(ffn)
        start = min(attention + ffn, default=self.adapter.num_layers)
        nll, count = 0.0, 0
        with self.adapter.without(attention=attention, ffn=ffn):
            for i, ids in enumerate(self.samples):
                if self.cached:
                    last = self.runner.run(self.traces[i][start], start)
                    s, c = self.runner.nll(last, ids)
                else:
                    hidden = self.adapter.model.model(input_ids=ids.to(self._device()), use_cache=False).last_hidden_state
                    s, c = summed_nll(self.adapter, hidden, ids)
                nll, count = nll + s, count + c
        return math.exp(nll / count)

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
