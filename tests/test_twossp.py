"""2SSP: the balance formula, feasibility, determinism, the cached search, ablations, and quality."""

from __future__ import annotations

import pytest
import torch
from conftest import llama2_7b, meta_adapter, tiny_model, windows_perplexity

from methods import get_method
from methods.arch import adapt
from methods.base import PruneContext
from methods.errors import MethodError
from methods.twossp import Shape, balanced_attention_count


def mistral_7b():
    from transformers import MistralConfig

    return MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32768)


@pytest.mark.parametrize(("config", "expected"), [(llama2_7b, [5, 9, 13]), (mistral_7b, [1, 2, 5])])
def test_balance_formula_matches_the_paper(config, expected):
    shape = Shape.of(meta_adapter(config()))
    assert [balanced_attention_count(shape, s, 1.5) for s in (0.25, 0.375, 0.5)] == expected


def test_plan_reaches_the_target_on_a_7b_shape():
    method = get_method("2ssp")
    adapter = meta_adapter(llama2_7b())
    shape = Shape.of(adapter)
    for s in (0.25, 0.375, 0.5):
        plan = method.plan(adapter, s, method.options())
        removed = plan["n_attn"] * shape.attn + shape.layers * (shape.width - plan["kept_width"]) * 3 * 4096
        assert abs(removed / shape.blocks - s) < 0.005


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_sparsity_outside_the_open_unit_interval_is_refused(sparsity):
    method = get_method("2ssp")
    with pytest.raises(MethodError, match="sparsity must be strictly between 0 and 1"):
        method.plan(meta_adapter(llama2_7b()), sparsity, method.options())


@pytest.mark.parametrize(("sparsity", "n_attn", "bound"), [(0.25, 30, "attention"), (0.9, 4, "FFN")])
def test_each_bound_names_itself_and_the_feasible_range(sparsity, n_attn, bound):
    # Llama-2-7B with 4 attention modules removed: from 4.2 % (the attention alone) to 70.9 % (every FFN too).
    method = get_method("2ssp")
    with pytest.raises(MethodError) as err:
        method.plan(meta_adapter(llama2_7b()), sparsity, method.options({"n_attn": n_attn}))
    assert f"the {bound} bound fails" in str(err.value)
    if n_attn == 4:
        assert "feasible range here: 0.042-0.709" in str(err.value)


def test_bad_options_are_one_line_errors():
    method = get_method("2ssp")
    for bad in ({"alpha": -1}, {"norm": "l3"}, {"nonsense": 1}, {"stage2_samples": 0}):
        with pytest.raises(MethodError, match="^2ssp: option"):
            method.options(bad)


def prune_tiny(arch="llama", sparsity=0.3, seed=0, **options):
    from harness.pruning import PruneJob  # noqa: F401  (the harness builds the same context)

    model = tiny_model(arch, layers=6)
    adapter = adapt(model)
    method = get_method("2ssp")
    g = torch.Generator().manual_seed(seed)
    calib = torch.randint(3, 128, (4, 32), generator=g)
    decisions = method.prune(adapter, method.options(options), PruneContext(calib, sparsity, seed))
    return adapter, decisions


def test_decisions_are_deterministic_for_a_seed():
    a1, d1 = prune_tiny(seed=3)
    a2, d2 = prune_tiny(seed=3)
    assert d1 == d2
    s1, s2 = a1.model.state_dict(), a2.model.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "phi3"])
def test_cached_search_makes_the_same_decisions_as_the_naive_one(arch):
    _, cached = prune_tiny(arch, sparsity=0.45, n_attn=3)
    _, naive = prune_tiny(arch, sparsity=0.45, n_attn=3, cached_search=False)
    assert cached["removed_attention"] == naive["removed_attention"]
    assert cached["stage2_perplexity"] == naive["stage2_perplexity"]  # bit for bit


@pytest.mark.parametrize("options",
                         [{}, {"stages": "width"}, {"stages": "depth"}, {"norm": "l1"}, {"scoring": "channels"}])
def test_every_variant_reaches_its_target_and_reloads(options, tmp_path):
    from harness.checkpoint import load_pruned, save_pruned

    before = adapt(tiny_model("llama", layers=6)).block_parameters()
    sparsity = 0.15 if options.get("stages") == "depth" else 0.3
    adapter, decisions = prune_tiny(sparsity=sparsity, **options)
    achieved = 1 - adapter.block_parameters() / before
    assert abs(achieved - sparsity) < 0.02  # tiny layers: one neuron is 0.3 % of a block
    x = torch.randint(3, 128, (1, 16))
    with torch.no_grad():
        expected = adapter.model(x).logits
        reloaded = load_pruned(save_pruned(adapter, None, tmp_path / "ckpt"))
        assert torch.equal(reloaded(x).logits, expected)


@pytest.mark.real_model
def test_2ssp_beats_random_structures_on_smollm2(smollm2, enwiki_tokens, tmp_path):
    """At 25 %, 2SSP's choice of attention modules and neurons beats random choices of the same counts."""
    from harness.checkpoint import load_pruned, save_pruned
    from harness.data.tokens import calibration_samples, eval_windows
    from harness.models import load_model

    calib_tokens, eval_tokens = enwiki_tokens
    windows = eval_windows(eval_tokens, 256, max_windows=6)
    adapter = adapt(smollm2.model)
    dense_blocks = adapter.block_parameters()
    method = get_method("2ssp")
    ctx = PruneContext(calibration_samples(calib_tokens, 4, 256), 0.25)
    decisions = method.prune(adapter, method.options(), ctx)
    assert abs(1 - adapter.block_parameters() / dense_blocks - 0.25) < 0.005
    ppl_2ssp = windows_perplexity(adapter, windows)

    out = save_pruned(adapter, smollm2.tokenizer, tmp_path / "2ssp")
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(windows[:1]).logits, adapter.model(windows[:1]).logits)

    random_ppl = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        rand = adapt(load_model(smollm2.ref, dtype="float32", device="cpu").model)
        for i in range(rand.num_layers):
            rand.keep_ffn_neurons(i, torch.randperm(rand.ffn_width(i), generator=g)[: decisions["kept_width"]])
        for i in torch.randperm(rand.num_layers, generator=g)[: decisions["n_attn"]].tolist():
            rand.remove_attention(i)
        assert rand.block_parameters() == adapter.block_parameters()
        random_ppl.append(windows_perplexity(rand, windows))
    assert ppl_2ssp < min(random_ppl), (ppl_2ssp, random_ppl)
