"""lm-eval's HFLM adapted to pruned models held in memory (imported lazily: lm-eval is slow to import)."""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from methods.arch import adapt

Request = tuple[tuple[str, str] | None, list[int], list[int]]  # ((context, continuation), their token ids)
HEAD_ROWS = 2048  # positions sent through the LM head at once: bounds the logits' memory


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

        The same inputs, batches and right padding as HFLM (the context and continuation, cut to the model's
        length from the left, last token dropped; longest first), but the LM head and the log-softmax run only
        at the positions that predict a continuation token instead of at every position of the batch, and an
        input shared by several requests (lm-eval's one-token continuations, as mmlu's answer letters) runs once.
        The log-softmax is taken in float32.
        """
        if self.backend != "causal" or not isinstance(self.batch_size, int):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        adapter = adapt(self.model)
        inputs = [tuple((context + continuation)[-(self.max_length + 1):][:-1])
                  for _, context, continuation in requests]
        users: dict[tuple[int, ...], list[int]] = {}
        for index, inp in enumerate(inputs):
            users.setdefault(inp, []).append(index)
        order = sorted(users, key=lambda inp: (-len(inp), inp))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batch = override_bs or self.batch_size
        with (
            torch.no_grad(),
            tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                 desc="Running loglikelihood requests") as bar,
        ):
            for start in range(0, len(order), batch):
                chunk = order[start:start + batch]
                padded = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
                for row, inp in enumerate(chunk):
                    padded[row, :len(inp)] = torch.tensor(inp)
                with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                    enabled=self.mixed_precision_dtype is not None):
                    hidden = self.model.model(input_ids=padded.to(self.device), use_cache=False).last_hidden_state
                done = self._score_chunk(adapter, hidden, chunk, users, requests)
                for index, answer in done:
                    results[index] = answer
                    if requests[index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                bar.update(len(done))
        return results

    @staticmethod
    def _score_chunk(adapter: Any, hidden: torch.Tensor, chunk: list[tuple[int, ...]],
                     users: dict[tuple[int, ...], list[int]],
                     requests: list[Request]) -> list[tuple[int, tuple[float, bool]]]:
        """Each request of the chunk's inputs scored from the hidden states at its continuation's positions."""
        rows, positions, targets, spans = [], [], [], []
        for row, inp in enumerate(chunk):
            for index in users[inp]:
                continuation = requests[index][2]
                first = len(inp) - len(continuation)
                spans.append((index, len(targets), len(continuation)))
                rows += [row] * len(continuation)
                positions += range(first, len(inp))
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
