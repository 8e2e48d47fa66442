"""The perplexity probe's lower-bound screen: a true bound, and the same choice as full evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_calibration, tiny_model

from methods.arch import adapt
from methods.nll import VocabularyScreen, summed_nll
from methods.search import Candidate, PerplexityProbe


def _normed_states(adapter, ids, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, ids.shape[1], adapter.hidden_size, generator=g) * 3
    return adapter.final_norm()(hidden)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_the_vocabulary_bound_never_exceeds_the_nll(arch, softcap):
    adapter = adapt(tiny_model(arch))
    adapter.config.final_logit_softcapping = softcap  # Gemma-2-style capped logits
    ids = random_calibration(samples=1, tokens=40)
    with torch.no_grad():
        for fraction in (0.0, 0.1, 0.5):
            screen = VocabularyScreen(adapter, _normed_states(adapter, ids, 0), ids, fraction)
            assert screen.size < adapter.config.vocab_size or fraction == 0.5
            for seed in range(1, 4):
                h = _normed_states(adapter, ids, seed)
                exact, _ = summed_nll(adapter, h, ids)
                assert screen.lower_bound(h) <= exact + 1e-6 * abs(exact)
        # The whole vocabulary: the bound is the NLL itself.
        h = _normed_states(adapter, ids, 9)
        full = VocabularyScreen(adapter, h, ids, 1.0)
        assert full.size == adapter.config.vocab_size
        assert math.isclose(full.lower_bound(h), summed_nll(adapter, h, ids)[0], rel_tol=1e-6)


def _rank_of(candidates):
    return lambda k, p: (math.inf if math.isnan(p) else p, candidates[k].layer)


@pytest.mark.parametrize("screen", [0.0, 0.05, 0.5])
def test_best_is_the_minimum_of_all_perplexities(arch, screen):
    adapter = adapt(tiny_model(arch, layers=6))
    probe = PerplexityProbe(adapter, random_calibration(samples=2, tokens=32), batch=3, screen=screen)
    candidates = [Candidate(i, attention=True) for i in range(adapter.num_layers)]
    scores = probe.perplexities(candidates)
    expected = min(range(len(candidates)), key=lambda k: _rank_of(candidates)(k, scores[k]))
    assert probe.best(candidates, _rank_of(candidates)) == (expected, scores[expected])  # bit for bit


def test_half_precision_turns_the_screen_off():
    adapter = adapt(tiny_model("llama").to(torch.bfloat16))
    probe = PerplexityProbe(adapter, random_calibration(samples=1, tokens=16), screen=0.5)
    assert probe.screen == 0.0
    candidates = [Candidate(i, ffn=True) for i in range(adapter.num_layers)]
    k, _ = probe.best(candidates, _rank_of(candidates))
    assert probe.exact_evaluations == len(candidates) and 0 <= k < len(candidates)


@pytest.mark.real_model
def test_the_screen_skips_most_heads_and_keeps_the_choice_on_smollm2(smollm2, enwiki_tokens):
    """On the real model, most candidates are ruled out by the bound; the choice is unchanged."""
    from harness.data.tokens import calibration_samples

    adapter = adapt(smollm2.model)
    samples = calibration_samples(enwiki_tokens[0], 1, 128)
    candidates = [Candidate(i, attention=True) for i in range(adapter.num_layers)]
    full = PerplexityProbe(adapter, samples, screen=0.0)
    scores = full.perplexities(candidates)
    expected = min(range(len(candidates)), key=lambda k: _rank_of(candidates)(k, scores[k]))
    screened = PerplexityProbe(adapter, samples, screen=0.125)
    assert screened.best(candidates, _rank_of(candidates)) == (expected, scores[expected])
    assert screened.exact_evaluations < len(candidates) / 2, screened.exact_evaluations


def _batch_dependent(adapter, layer=4, shift=1e-3):
    """Make one layer's output depend on the batch size, as some half-precision kernels do (AMX, GPUs)."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + shift * (hidden.shape[0] - 1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return adapter.layers[layer].register_forward_hook(hook)


def test_batching_is_kept_only_where_it_equals_one_by_one(arch):
    adapter = adapt(tiny_model(arch, layers=6))
    samples = random_calibration(samples=2, tokens=32)
    candidates = [Candidate(i, attention=True) for i in range(adapter.num_layers)]
    plain = PerplexityProbe(adapter, samples, cached=False).perplexities(candidates)
    probe = PerplexityProbe(adapter, samples, batch=4)
    assert probe.perplexities(candidates) == plain and probe.path == "prefix-cached, batches of 4"
    handle = _batch_dependent(adapter)
    try:
        probe = PerplexityProbe(adapter, samples, batch=4)
        assert probe.perplexities(candidates) == plain  # the check saw the difference and stopped batching
        assert probe.batch == 1 and probe.path.startswith("prefix-cached, one by one (batches of 4 differed")
    finally:
        handle.remove()


def test_reference_numerics_never_batch():
    adapter = adapt(tiny_model("llama", layers=4).to(torch.bfloat16))
    probe = PerplexityProbe(adapter, random_calibration(samples=1, tokens=16), batch=8, numerics="reference")
    probe.perplexities([Candidate(i, attention=True) for i in range(adapter.num_layers)])
    assert probe.batch == 1 and probe.path == "prefix-cached, one by one"


def test_a_cache_that_differs_from_whole_forwards_is_dropped():
    """An embedding whose output changes from call to call (state outside the cache): resuming from cached
    layer inputs no longer equals whole forwards, so the probe runs every candidate from the embeddings."""
    adapter = adapt(tiny_model("llama", layers=4))
    calls = []

    def drift(module, args, output):
        calls.append(1)
        return output + 1e-3 * len(calls)

    handle = adapter.embedding().register_forward_hook(drift)
    try:
        probe = PerplexityProbe(adapter, random_calibration(samples=1, tokens=16))
        probe.perplexities([Candidate(i, ffn=True) for i in range(adapter.num_layers)])
        assert not probe.cached and probe.path.startswith("one by one from the embeddings (resuming from cached")
    finally:
        handle.remove()
