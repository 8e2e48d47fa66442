"""Perplexity with the paper's protocol (METHODS.md, "Evaluation protocol").

Join the documents with "\\n\\n", tokenize once without special tokens, cut non-overlapping windows of
``seq_len`` tokens (the remainder is dropped), batch 1, sum the next-token cross entropy over every
window, divide by the number of predicted tokens, exp. Models that need BOS (Gemma) get it prepended to
every window as context only, so the same tokens are scored with or without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.data.sources import Corpus
from harness.data.tokens import eval_windows, tokenize
from harness.errors import PrunebenchError
from methods.arch import ModelAdapter
from methods.nll import summed_nll

BosPolicy = Literal["auto", "always", "never"]


@dataclass
class PerplexityResult:
    perplexity: float
    nll_sum: float
    targets: int
    windows: int
    seconds: float
    protocol: dict[str, Any] = field(default_factory=dict)


def use_bos(adapter: ModelAdapter, tokenizer: Any, policy: BosPolicy) -> bool:
    if policy not in ("auto", "always", "never"):
        raise PrunebenchError(f"unknown BOS policy '{policy}'; choose auto, always or never")
    wanted = adapter.needs_bos if policy == "auto" else policy == "always"
    if wanted and tokenizer.bos_token_id is None:
        raise PrunebenchError("BOS asked for, but the tokenizer has no BOS token")
    return wanted


@torch.inference_mode()
def score_windows(
    adapter: ModelAdapter,
    windows: torch.Tensor,
    bos_id: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> tuple[float, int]:
    """Summed next-token NLL over windows [n, seq_len] (batch 1 each) and the number of scored tokens.

    With ``bos_id``, BOS is prepended to each window as context and the same tokens are scored.
    """
    device = adapter.embedding().weight.device
    prefix = torch.tensor([[bos_id]]) if bos_id is not None else None
    nll, targets = 0.0, 0
    for n, window in enumerate(windows, 1):
        ids = window[None] if prefix is None else torch.cat([prefix, window[None]], dim=1)
        ids = ids.to(device)
        hidden = adapter.model.model(input_ids=ids, use_cache=False).last_hidden_state
        s, t = summed_nll(adapter, hidden, ids, first=0 if prefix is None else 1)
        nll, targets = nll + s, targets + t
        if on_window:
            on_window(n, len(windows))
    return nll, targets


def perplexity(
    adapter: ModelAdapter,
    tokenizer: Any,
    corpus: Corpus,
    seq_len: int = 2048,
    max_windows: int | None = None,
    bos: BosPolicy = "auto",
    on_window: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of ``adapter.model`` on ``corpus``; ``on_window(done, total)`` reports progress."""
    with_bos = use_bos(adapter, tokenizer, bos)
    tokens = tokenize(tokenizer, corpus)
    windows = eval_windows(tokens, seq_len, max_windows)
    start = time.perf_counter()
    nll, targets = score_windows(adapter, windows, tokenizer.bos_token_id if with_bos else None, on_window)
    seconds = time.perf_counter() - start
    protocol = {
        **corpus.protocol,
        "source": corpus.source,
        "role": corpus.role,
        "join": "\n\n",
        "tokenized": "once, without special tokens",
        "corpus_tokens": int(tokens.numel()),
        "seq_len": seq_len,
        "stride": seq_len,
        "windows": len(windows),
        "max_windows": max_windows,
        "batch_size": 1,
        "bos": "prepended to every window, context only" if with_bos else "none",
        "targets": targets,
        "reduction": "exp(sum of token NLL / targets)",
    }
    return PerplexityResult(math.exp(nll / targets), nll, targets, len(windows), seconds, protocol)
