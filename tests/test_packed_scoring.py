"""The downstream scorer's shared-prefix rows: the choices of a question run their common prefix once, and every
continuation still scores what it scores alone, on every architecture, pruned in place, under both attention
implementations that take a prepared mask."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import ARCHS, tiny_model

from harness.metrics.tasks import driver
from harness.metrics.tasks.hflm import plan_rows


def _tokenizer():
    """A word-level tokenizer over the tiny models' 128 ids: HFLM wants one; the requests here are token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(128)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t3")),
                                   pad_token="t0", bos_token="t1", eos_token="t2")


def _requests(seed: int = 0) -> list[tuple[None, list[int], list[int]]]:
    """Questions with 1, 2 or 4 choices of 1 to 5 tokens; short ones whose choices share a row even within the
    tiny models' sliding window of 8; a repeated request; one longer than the model."""
    rng = random.Random(seed)
    out = []
    for _ in range(12):
        context = [rng.randrange(3, 128) for _ in range(rng.randrange(2, 14))]
        for _ in range(rng.choice([1, 2, 4])):
            out.append((None, context, [rng.randrange(3, 128) for _ in range(rng.choice([1, 1, 2, 5]))]))
    for _ in range(3):
        context = [rng.randrange(3, 128) for _ in range(rng.randrange(2, 4))]
        out += [(None, context, [rng.randrange(3, 128) for _ in range(2)]) for _ in range(3)]
    return [*out, out[0], (None, [5] * 300, [7, 8])]


def _alone(model: torch.nn.Module, requests: list, max_length: int) -> list[tuple[float, bool]]:
    """Each request scored by its own unbatched forward: HFLM's definition, nothing shared."""
    out = []
    for _, context, continuation in requests:
        inp = (context + continuation)[-(max_length + 1):][:-1]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([inp]), use_cache=False).logits[0].float()
        logprob = torch.log_softmax(logits[len(inp) - len(continuation):], dim=-1)
        target = torch.tensor(continuation)
        out.append((float(logprob.gather(1, target[:, None]).sum()), bool((logprob.argmax(-1) == target).all())))
    return out


def test_rows_share_a_prefix_and_keep_each_sequence():
    ctx = (5, 6, 7)
    inputs = [ctx + (8, 9), ctx + (10,), ctx, ctx, (5, 6)]  # the 4th repeats the 3rd's sequence
    lengths = [3, 2, 1, 1, 1]
    rows = plan_rows(inputs, lengths, limit=100, share=True)
    assert len(rows) == 2
    shared = rows[0]
    assert shared.prefix == ctx and shared.tails == [(8, 9), (10,), ()] and shared.users == [[0], [1], [2, 3]]
    assert shared.packed and shared.tokens() == [5, 6, 7, 8, 9, 10] and shared.positions() == [0, 1, 2, 3, 4, 3]
    assert [(i, where) for i, _, where in shared.scored()] == [(0, [2, 3, 4]), (1, [2, 5]), (2, [2]), (3, [2])]
    # The rows' tokens hold each request's own sequence: prefix + its tail.
    for index, tail, _ in (s for row in rows for s in row.scored()):
        row = next(r for r in rows if index in (u for users in r.users for u in users))
        assert row.prefix + row.tails[tail] == inputs[index]
    # A row stops at the limit: the second tail starts a second row of the same prefix.
    assert [r.tails for r in plan_rows(inputs[:2], lengths[:2], limit=5, share=True)] == [[(8, 9)], [(10,)]]
    # Without sharing, a row is one distinct sequence (the repeat still runs once).
    assert len(plan_rows(inputs, lengths, limit=100, share=False)) == 4
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([(1, 2)], [3], limit=100, share=True)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_shared_rows_score_as_each_request_alone(arch, implementation):
    from methods.arch import adapt

    model = tiny_model(arch)
    model.set_attn_implementation(implementation)
    adapter = adapt(model)
    adapter.remove_attention(1)
    adapter.remove_ffn(2)
    lm = driver._wrap_model(model, _tokenizer(), batch_size=4)
    requests = _requests()
    assert any(row.packed for row in lm.rows(requests))  # the shared path is taken (within a sliding window too)

    got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    want = _alone(model, requests, lm.max_length)
    assert [g[1] for g in got] == [w[1] for w in want]
    assert max(abs(g[0] - w[0]) for g, w in zip(got, want, strict=True)) < 1e-4
