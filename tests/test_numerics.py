"""``numerics: reference``: perplexity as the 2SSP authors' harness computes it, in the model's dtype, for the
searches and for evaluation; checked against their loop written out independently here, on the real embedded
model in bf16 on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.nll import ReferenceMean
from methods.search import Candidate, PerplexityProbe

pytestmark = pytest.mark.real_model


def authors_perplexity(model, windows: torch.Tensor) -> float:
    """Their evaluate_perplexity: full logits of each window in the model's dtype, the mean cross entropy, the
    running mean ``a * loss + b * running`` from the integer 0, then ``exp().item()``."""
    running, seen = 0, 0
    for window in windows:
        ids = window[None]
        logits = model(ids).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        n = ids.shape[1] - 1
        running = n / (seen + n) * loss + seen / (seen + n) * running
        seen += n
    return running.exp().item()


@pytest.fixture(scope="module")
def bf16(smollm2_ref):
    from harness.models import load_model

    return load_model(smollm2_ref, dtype="bfloat16", device="cpu")


@pytest.fixture(scope="module")
def windows(enwiki_tokens):
    from harness.data.tokens import calibration_samples, eval_windows

    return calibration_samples(enwiki_tokens[0], 1, 128), eval_windows(enwiki_tokens[1], 128, 3)


def test_running_mean_stays_in_the_dtype():
    losses = [torch.tensor(3.1234, dtype=torch.bfloat16), torch.tensor(2.71, dtype=torch.bfloat16)]
    mean = ReferenceMean()
    for loss in losses:
        mean.add(loss, 127)
    expected = 0.5 * losses[1] + 0.5 * (1.0 * losses[0] + 0.0 * 0)
    assert mean.running.dtype == torch.bfloat16 and mean.perplexity() == expected.exp().item()
    assert mean.perplexity() != math.exp((3.1234 + 2.71) / 2)  # rounded, as theirs is


def test_search_perplexities_are_the_authors_and_tie(bf16, windows):
    """Every attention candidate's perplexity equals the authors' loop bit for bit; in bf16 many share one."""
    from methods.arch import adapt

    adapter = adapt(bf16.model)
    sample = windows[0]
    candidates = [Candidate(i, attention=True) for i in range(adapter.num_layers)]
    probe = PerplexityProbe(adapter, sample, numerics="reference")
    ours = probe.perplexities(candidates)
    assert probe.batch == 1  # the authors' shapes; the prefix cache only where checked equal here
    theirs = []
    for c in candidates:
        with adapter.without(**c.removal()):
            theirs.append(authors_perplexity(bf16.model, sample))
    assert ours == theirs
    assert len(set(ours)) < len(ours) / 2  # ties: bf16 keeps about 3 significant digits
    exact = PerplexityProbe(adapter, sample, numerics="exact").perplexities(candidates)
    assert len(set(exact)) == len(exact)


def test_reference_ties_go_to_the_lowest_layer(bf16, windows):
    """The authors' strict ``<`` over layers in order keeps the first of equal perplexities; so does the probe."""
    from methods.arch import adapt

    adapter = adapt(bf16.model)
    candidates = [Candidate(i, attention=True) for i in range(adapter.num_layers)]
    probe = PerplexityProbe(adapter, windows[0], numerics="reference")
    scores = probe.perplexities(candidates)
    k, ppl = probe.best(candidates, lambda k, p: (p, candidates[k].layer))
    best_first = None
    for i, score in enumerate(scores):  # their loop
        if best_first is None or score < scores[best_first]:
            best_first = i
    assert (k, ppl) == (best_first, scores[best_first])
    tied = [i for i, s in enumerate(scores) if s == ppl]
    assert k == min(tied)


def test_evaluation_is_the_authors(bf16, windows):
    from harness.data.sources import Corpus
    from harness.metrics.perplexity import perplexity
    from methods.arch import adapt

    evaluation = windows[1]
    text = bf16.tokenizer.decode(evaluation.flatten())
    corpus = Corpus("test", "evaluation", text, {"text_sha256": "x"})
    adapter = adapt(bf16.model)
    from harness.data.tokens import eval_windows, tokenize

    scored = eval_windows(tokenize(bf16.tokenizer, corpus), 128, 3)
    reference = perplexity(adapter, bf16.tokenizer, corpus, 128, 3, "never", numerics="reference")
    exact = perplexity(adapter, bf16.tokenizer, corpus, 128, 3, "never")
    assert reference.value == authors_perplexity(bf16.model, scored)
    assert reference.protocol.numerics == "reference" and exact.protocol.numerics == "exact"
    assert reference.value != exact.value and abs(reference.value / exact.value - 1) < 0.02
    # The stored window NLLs are the rounded window losses: the interval and the paired tests use them.
    assert reference.window_targets == exact.window_targets
    assert all(abs(a - b) / b < 0.01 for a, b in zip(reference.window_nll, exact.window_nll, strict=True))


def test_blockpruner_in_reference_numerics_computes_as_the_authors_loop(smollm2_ref, windows):
    """One alternating round on SmolLM2 in bf16 (64 tokens): the prefix-cached search (kept only where the
    run-time check finds it bit-identical on this machine) removes what one-by-one whole forwards remove.
    Which sub-blocks that is depends on the CPU's bf16 kernels, so no decision measured elsewhere is asserted."""
    from harness.models import load_model
    from methods import get_method
    from methods.arch import adapt
    from methods.base import PruneContext

    method = get_method("blockpruner")
    removed = {}
    for cached in (True, False):
        adapter = adapt(load_model(smollm2_ref, dtype="bfloat16", device="cpu").model)
        ctx = PruneContext(windows[0][:, :64], 0.02, 0, numerics="reference")
        options = method.options({"cached_search": cached}, "quick")
        decisions = method.prune(adapter, options, ctx)
        assert decisions["numerics"] == "reference" and decisions["rounds"] == 1
        assert ctx.paths["search"].startswith("prefix-cached, one by one" if cached else "one by one from")
        removed[cached] = [(s["kind"], s["layer"], s["perplexity"]) for s in decisions["removed"]]
    assert removed[True] == removed[False]
