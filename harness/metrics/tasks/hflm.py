"""lm-eval's HFLM adapted to pruned models held in memory (imported lazily: lm-eval is slow to import)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from methods.arch import adapt

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # ((context, continuation), their token ids)
HEAD_ROWS = 2048  # positions sent through the LM head at once: bounds the logits' memory
# Attention implementations that take a prepared 4D mask, and the mask each expects: True where a query may
# attend (sdpa), or 0 / the dtype's minimum added to the scores (eager). Others score without shared prefixes.
PACKED_MASKS = ("sdpa", "eager")


@dataclass
class _Row:
    """One input row: a prefix, then the tails of the continuations that share it, each seeing only the prefix
    and itself (the sequence lm-eval would feed for each request, with the prefix computed once).

    A request whose continuation ``k`` follows ``prefix`` is predicted by the hidden state of the prefix's last
    token (``k[0]``) and of its tail ``k[:-1]`` (the rest). ``users[j]`` lists the requests whose tail is
    ``tails[j]``.
    """

    prefix: tuple[int, ...]
    tails: list[tuple[int, ...]] = field(default_factory=list)
    users: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.tails)

    @property
    def packed(self) -> bool:
        """Whether the row needs a mask of its own (two tails that must not see each other)."""
        return sum(1 for t in self.tails if t) > 1

    def tokens(self) -> list[int]:
        return [*self.prefix, *(token for tail in self.tails for token in tail)]

    def segments(self) -> list[int]:
        """0 for the prefix, j + 1 for the tokens of tail j."""
        return [0] * len(self.prefix) + [j + 1 for j, tail in enumerate(self.tails) for _ in tail]

    def positions(self) -> list[int]:
        """Each tail continues the prefix's positions, as in the request's own sequence."""
        return [*range(len(self.prefix)), *(len(self.prefix) + i for tail in self.tails for i in range(len(tail)))]

    def scored(self) -> Iterator[tuple[int, int, list[int]]]:
        """(request index, tail number, the row positions whose hidden states predict its continuation)."""
        offset = len(self.prefix)
        for j, tail in enumerate(self.tails):
            where = [len(self.prefix) - 1, *range(offset, offset + len(tail))]
            for index in self.users[j]:
                yield index, j, where
            offset += len(tail)


def plan_rows(inputs: list[tuple[int, ...]], lengths: list[int], limit: float, share: bool) -> list[_Row]:
    """The rows that score every request once: ``inputs[i]`` is request i's sequence as lm-eval feeds it (context
    and continuation cut to the model's length, last token dropped) and ``lengths[i]`` its continuation's length.

    With ``share``, the requests whose sequences differ only in their continuation (a multiple-choice question's
    choices) share one row, up to ``limit`` tokens a row; without it a row is one distinct sequence.
    """
    rows: dict[tuple[int, ...], list[_Row]] = {}
    for index, (inp, n) in enumerate(zip(inputs, lengths, strict=True)):
        if not 1 <= n <= len(inp):
            raise ValueError(f"request {index}: a continuation of {n} tokens does not fit a {len(inp)}-token input")
        cut = len(inp) - n + 1
        prefix, tail = inp[:cut], inp[cut:]
        group = rows.setdefault(prefix if share else inp, [])
        row = next((r for r in group if tail in r.tails), None)
        if row is None:
            row = next((r for r in group if not tail or len(r) + len(tail) <= limit), None) if share else None
            if row is None:
                row = _Row(prefix)
                group.append(row)
            row.tails.append(tail)
            row.users.append([])
        row.users[row.tails.index(tail)].append(index)
    return sorted((r for group in rows.values() for r in group), key=lambda r: (-len(r), r.tokens()))


def packed_mask(rows: list[_Row], kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4D attention mask ([rows, 1, T, T]) and position ids ([rows, T]) of a batch of right-padded rows.

    A token sees the earlier tokens of its own segment and the prefix (causal within the row); a padding token
    sees itself, so that no query row is empty. ``kind`` is the attention implementation (PACKED_MASKS).
    """
    width = len(rows[0])
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        segment[r, :len(row)] = torch.tensor(row.segments())
        positions[r, :len(row)] = torch.tensor(row.positions())
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((query == key) | ((key == 0) & (query >= 0)))
    allowed = allowed[:, None]
    if kind == "sdpa":
        return allowed, positions
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min), positions


class CachelessHFLM(HFLM):
    """HFLM whose forward passes ask for no KV cache, and whose log-likelihoods cost little beyond the forward.

    Scoring loglikelihoods needs one forward per batch and no cache, but HFLM calls ``model(inps)``
    and transformers 5 then builds a cache sized by ``config.num_hidden_layers`` and indexed by each
    attention's ``layer_idx``. A model whose blocks were removed in place can disagree with both (the
    config updated, the surviving layers not renumbered): the cache update raises IndexError. Without
    a cache the forward only runs the layers that exist; it also saves the cache's memory.
    """

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attn_mask is not None or labels is not None:  # seq2seq models: lm-eval's own path
            return super()._model_call(inps, attn_mask, labels)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(input_ids=inps, use_cache=False).logits

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """(summed log-probability, is greedy) of each continuation, as lm-eval's HFLM defines them.

        Each request's sequence is HFLM's (the context and continuation, cut to the model's length from the left,
        last token dropped), and each token sees what it sees there, but the work is less:
        - requests whose sequences differ only in their continuation (the choices of a multiple-choice question,
          lm-eval's one-token answer letters) share one row: the common prefix runs once and each continuation's
          tokens see it and themselves only, through a 4D mask and their own position ids;
        - the LM head and the log-softmax run only at the positions that predict a continuation token;
        - rows are batched longest first and right padded; the log-softmax is taken in float32.
        """
        if self.backend != "causal" or not isinstance(self.batch_size, int):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        adapter = adapt(self.model)
        rows = self.rows(requests)
        batch = override_bs or self.batch_size
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batches = [[r for r in rows if r.packed == packed] for packed in (True, False)]
        with (
            torch.no_grad(),
            tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                 desc="Running loglikelihood requests") as bar,
        ):
            for group in batches:
                for start in range(0, len(group), batch):
                    chunk = group[start:start + batch]
                    hidden = self._hidden(chunk)
                    done = self._score_chunk(adapter, hidden, chunk, requests)
                    for index, answer in done:
                        results[index] = answer
                        if requests[index][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                    bar.update(len(done))
        return results

    def rows(self, requests: list[Request]) -> list[_Row]:
        """The rows that score ``requests``: choices share their prefix where the attention implementation takes a
        prepared mask, up to the model's length and its sliding window, if it has one."""
        window = getattr(self.model.config, "sliding_window", None) or math.inf
        inputs = [tuple((context + continuation)[-(self.max_length + 1):][:-1])
                  for _, context, continuation in requests]
        return plan_rows(inputs, [len(c) for _, _, c in requests], min(self.max_length, window),
                         share=self._attention() in PACKED_MASKS)

    def _attention(self) -> str | None:
        return getattr(self.model.config, "_attn_implementation", None)

    def _hidden(self, chunk: list[_Row]) -> torch.Tensor:
        """The final hidden states of a batch of rows (a plain causal forward unless a row shares a prefix)."""
        padded = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
        for r, row in enumerate(chunk):
            padded[r, :len(row)] = torch.tensor(row.tokens())
        extra: dict[str, torch.Tensor] = {}
        if any(row.packed for row in chunk):
            mask, positions = packed_mask(chunk, self._attention() or "", self.model.dtype)
            extra = {"attention_mask": mask.to(self.device), "position_ids": positions.to(self.device)}
        with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                            enabled=self.mixed_precision_dtype is not None):
            return self.model.model(input_ids=padded.to(self.device), use_cache=False, **extra).last_hidden_state

    @staticmethod
    def _score_chunk(adapter: Any, hidden: torch.Tensor, chunk: list[_Row],
                     requests: list[Request]) -> list[tuple[int, tuple[float, bool]]]:
        """Each request of the chunk's rows scored from the hidden states at its continuation's positions."""
        rows, positions, targets, spans = [], [], [], []
        for r, row in enumerate(chunk):
            for index, _, where in row.scored():
                continuation = requests[index][2]
                spans.append((index, len(targets), len(continuation)))
                rows += [r] * len(continuation)
                positions += where
                targets += continuation
        selected = hidden[torch.tensor(rows), torch.tensor(positions)]
        target = torch.tensor(targets, device=hidden.device)
        logprob = torch.empty(len(targets), dtype=torch.float32)
        greedy = torch.empty(len(targets), dtype=torch.bool)
        for lo in range(0, len(targets), HEAD_ROWS):
            logits = adapter.logits(selected[lo:lo + HEAD_ROWS]).float()
            log_softmax = torch.log_softmax(logits, dim=-1)
            t = target[lo:lo + HEAD_ROWS]
            logprob[lo:lo + HEAD_ROWS] = log_softmax.gather(1, t[:, None])[:, 0].cpu()
            greedy[lo:lo + HEAD_ROWS] = (log_softmax.argmax(dim=-1) == t).cpu()
        return [(index, (float(logprob[at:at + n].sum()), bool(greedy[at:at + n].all()))) for index, at, n in spans]
