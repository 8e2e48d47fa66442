"""BlockPruner (sub-blocks: alternating and free; whole blocks): counts, feasibility, determinism, the
cached search against the naive one, checkpoints, and quality against random choices on SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import llama2_7b, meta_adapter, tiny_model, windows_perplexity

from methods import get_method
from methods.arch import adapt
from methods.base import PruneContext
from methods.errors import MethodError
from methods.search import Candidate, PerplexityProbe

FORMS = {  # name in the tests -> (registry name, options)
    "alternating": ("blockpruner", {}),
    "free": ("blockpruner", {"mode": "free"}),
    "block": ("blockpruner-block", {}),
}


def prune_tiny(form="alternating", arch="llama", sparsity=0.3, seed=0, layers=6, **options):
    name, base = FORMS[form]
    adapter = adapt(tiny_model(arch, layers=layers))
    method = get_method(name)
    calib = torch.randint(3, 128, (2, 32), generator=torch.Generator().manual_seed(seed))
    decisions = method.prune(adapter, method.options({**base, **options}), PruneContext(calib, sparsity, seed))
    return adapter, decisions


# ---- plan: counts and feasibility on weightless skeletons -----------------------------------------
def test_plans_on_a_7b_shape():
    adapter = meta_adapter(llama2_7b())
    sub = get_method("blockpruner")
    block = get_method("blockpruner-block")
    assert [sub.plan(adapter, s, sub.options())["rounds"] for s in (0.25, 0.375, 0.5)] == [8, 12, 16]
    assert [block.plan(adapter, s, block.options())["blocks"] for s in (0.25, 0.375, 0.5)] == [8, 12, 16]
    free = sub.plan(adapter, 0.25, sub.options({"mode": "free"}))
    assert free["target_parameters"] == math.ceil(0.25 * adapter.block_parameters())
    # Llama-2-7B: an FFN (with its norm) is 2.02 attentions; 8 block-equivalents take 12 FFN, or 25 attentions.
    assert (free["min_steps"], free["max_steps"]) == (12, 25)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5, float("nan")])
@pytest.mark.parametrize("form", FORMS)
def test_sparsity_outside_the_open_unit_interval_is_refused(form, sparsity):
    name, options = FORMS[form]
    method = get_method(name)
    with pytest.raises(MethodError, match="sparsity must be strictly between 0 and 1"):
        method.plan(meta_adapter(llama2_7b()), sparsity, method.options(options))


@pytest.mark.parametrize(("form", "sparsity", "bound"), [
    ("alternating", 0.9, "at most 5 are possible here (L=6); feasible range here: 0 < s <= 0.8333"),
    ("block", 0.9, "would remove all 6 blocks; feasible range here: 0 < s <= 0.8333"),
    ("free", 0.95, "feasible range here: 0 < s <= 0.9"),  # tiny llama: the largest sub-block (an FFN) is 10 %
])
def test_infeasible_targets_name_the_feasible_range_in_one_line(form, sparsity, bound):
    name, options = FORMS[form]
    method = get_method(name)
    with pytest.raises(MethodError) as err:
        method.plan(adapt(tiny_model("llama", layers=6)), sparsity, method.options(options))
    assert "BlockPruner" in str(err.value) and bound in str(err.value)
    assert "\n" not in str(err.value)


def test_alternating_counts_the_sub_blocks_still_present():
    adapter = adapt(tiny_model("llama", layers=6))
    for i in range(5):
        adapter.remove_attention(i)
    method = get_method("blockpruner")
    with pytest.raises(MethodError, match="ceil\\(s\\*L\\) = 2 rounds .* at most 1 are possible"):
        method.plan(adapter, 0.3, method.options())


@pytest.mark.parametrize(("name", "bad"), [
    ("blockpruner", {"mode": "greedy"}), ("blockpruner", {"search_samples": 0}), ("blockpruner", {"nonsense": 1}),
    ("blockpruner", {"search_batch": 0}), ("blockpruner-block", {"mode": "free"}),
])
def test_bad_options_are_one_line_errors(name, bad):
    with pytest.raises(MethodError, match=f"^{name}: option") as err:
        get_method(name).options(bad)
    assert "\n" not in str(err.value)


def test_too_few_calibration_samples_is_refused():
    with pytest.raises(MethodError, match="3 calibration sample"):
        prune_tiny(search_samples=3)  # prune_tiny gives 2


# ---- the search on tiny models --------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_decisions_are_deterministic_for_a_seed(form):
    a1, d1 = prune_tiny(form, seed=3)
    a2, d2 = prune_tiny(form, seed=3)
    assert d1 == d2
    s1, s2 = a1.model.state_dict(), a2.model.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5])
def test_alternating_removes_n_attention_then_n_ffn(sparsity):
    before = adapt(tiny_model("llama", layers=6)).block_parameters()
    adapter, d = prune_tiny("alternating", sparsity=sparsity)
    n = math.ceil(sparsity * 6)
    assert d["rounds"] == n and d["steps"] == 2 * n
    assert [s["kind"] for s in d["removed"]] == ["attention", "ffn"] * n
    attn = {s["layer"] for s in d["removed"] if s["kind"] == "attention"}
    ffn = {s["layer"] for s in d["removed"] if s["kind"] == "ffn"}
    assert attn == {i for i in range(6) if not adapter.has_attention(i)}
    assert ffn == {i for i in range(6) if not adapter.has_ffn(i)}
    assert len(attn) == len(ffn) == n
    assert before - adapter.block_parameters() == d["removed_parameters"]
    assert d["achieved_sparsity"] == pytest.approx(n / 6)  # an attention and an FFN per round: a block


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_free_mode_stops_at_the_first_step_that_reaches_the_target(sparsity):
    before = adapt(tiny_model("llama", layers=6)).block_parameters()
    adapter, d = prune_tiny("free", sparsity=sparsity)
    target = d["target_parameters"]
    assert target == math.ceil(sparsity * before)
    removed = before - adapter.block_parameters()
    assert removed == d["removed_parameters"] == sum(s["parameters"] for s in d["removed"])
    assert removed >= target > removed - d["removed"][-1]["parameters"]
    assert d["min_steps"] <= d["steps"] <= d["max_steps"]
    assert d["achieved_sparsity"] == removed / before >= sparsity


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.8])
def test_block_form_deletes_exactly_ceil_sL_layers_in_original_numbering(sparsity):
    model = tiny_model("qwen2", layers=6)
    original = list(model.model.layers)
    adapter = adapt(model)
    method = get_method("blockpruner-block")
    calib = torch.randint(3, 128, (1, 32), generator=torch.Generator().manual_seed(0))
    d = method.prune(adapter, method.options(), PruneContext(calib, sparsity))
    n = math.ceil(sparsity * 6)
    assert d["blocks"] == n == d["steps"] and adapter.num_layers == 6 - n
    assert d["removed_layers"] == sorted(s["layer"] for s in d["removed"]) and len(set(d["removed_layers"])) == n
    kept = [layer for i, layer in enumerate(original) if i not in d["removed_layers"]]
    assert all(a is b for a, b in zip(adapter.layers, kept, strict=True))  # the survivors, in order


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_a_whole_block_candidate_is_the_deleted_layer(arch):
    """The perplexity the search saw for its last deletion is the one of the really shorter model, bit for bit."""
    model = tiny_model(arch, layers=6)
    adapter = adapt(model)
    method = get_method("blockpruner-block")
    calib = torch.randint(3, 128, (1, 32), generator=torch.Generator().manual_seed(1))
    d = method.prune(adapter, method.options(), PruneContext(calib, 0.5))
    fresh = PerplexityProbe(adapter, calib, cached=False).perplexities([Candidate(0)])  # nothing removed
    assert fresh[0] == d["removed"][-1]["perplexity"]


@pytest.mark.parametrize(("form", "arch"), [("alternating", "phi3"), ("free", "gemma3_text"), ("block", "qwen2")])
def test_cached_search_makes_the_same_decisions_as_the_naive_one(form, arch):
    _, cached = prune_tiny(form, arch, sparsity=0.35)
    _, naive = prune_tiny(form, arch, sparsity=0.35, cached_search=False)
    assert cached == naive  # the removal sequence and every perplexity, bit for bit


@pytest.mark.parametrize("form", FORMS)
def test_pruned_model_reloads_with_identical_logits_and_fewer_parameters(form, tmp_path):
    from harness.checkpoint import load_pruned, save_pruned

    before = adapt(tiny_model("llama", layers=6)).total_parameters()
    adapter, d = prune_tiny(form)
    assert before - adapter.total_parameters() == d["removed_parameters"] > 0
    x = torch.randint(3, 128, (1, 16))
    with torch.no_grad():
        expected = adapter.model(x).logits
        reloaded = load_pruned(save_pruned(adapter, None, tmp_path / form))
        assert torch.equal(reloaded(x).logits, expected)


# ---- the real model ----------------------------------------------------------------------------------
def _random_ppl(ref, windows, remove, seeds=range(3)) -> list[float]:
    """Perplexity of fresh SmolLM2 copies with random structures of the same counts removed."""
    from harness.models import load_model

    out = []
    for seed in seeds:
        rand = adapt(load_model(ref, dtype="float32", device="cpu").model)
        remove(rand, torch.Generator().manual_seed(seed))
        out.append(windows_perplexity(rand, windows))
    return out


@pytest.fixture(scope="module")
def smollm2_data(enwiki_tokens):
    from harness.data.tokens import calibration_samples, eval_windows

    calib_tokens, eval_tokens = enwiki_tokens
    return calibration_samples(calib_tokens, 1, 128), eval_windows(eval_tokens, 256, max_windows=3)


@pytest.mark.real_model
def test_blockpruner_beats_random_sub_blocks_on_smollm2(smollm2, smollm2_data, tmp_path):
    """Alternating at 10 % (3 attention + 3 FFN of 30 layers), searched on 1 x 128 tokens."""
    from harness.checkpoint import load_pruned, save_pruned

    calib, windows = smollm2_data
    adapter = adapt(smollm2.model)
    dense = adapter.block_parameters()
    method = get_method("blockpruner")
    d = method.prune(adapter, method.options(), PruneContext(calib, 0.1))
    assert d["rounds"] == 3 and d["achieved_sparsity"] == pytest.approx(0.1)
    assert 1 - adapter.block_parameters() / dense == pytest.approx(0.1)
    ppl = windows_perplexity(adapter, windows)
    with torch.no_grad():
        out = save_pruned(adapter, smollm2.tokenizer, tmp_path / "bp")
        assert torch.equal(load_pruned(out)(windows[:1]).logits, adapter.model(windows[:1]).logits)

    def remove(rand, g):
        for i in torch.randperm(30, generator=g)[:3].tolist():
            rand.remove_attention(i)
        for i in torch.randperm(30, generator=g)[:3].tolist():
            rand.remove_ffn(i)

    random_ppl = _random_ppl(smollm2.ref, windows, remove)
    assert ppl < sum(random_ppl) / len(random_ppl), (ppl, random_ppl)


@pytest.mark.real_model
def test_blockpruner_block_beats_random_layers_on_smollm2(smollm2, smollm2_data):
    """Whole blocks at 10 % (3 of 30 layers), searched on 1 x 128 tokens."""
    calib, windows = smollm2_data
    adapter = adapt(smollm2.model)
    method = get_method("blockpruner-block")
    d = method.prune(adapter, method.options(), PruneContext(calib, 0.1))
    assert d["blocks"] == 3 and adapter.num_layers == 27
    ppl = windows_perplexity(adapter, windows)
    random_ppl = _random_ppl(smollm2.ref, windows,
                             lambda rand, g: rand.remove_layers(torch.randperm(30, generator=g)[:3].tolist()))
    assert ppl < sum(random_ppl) / len(random_ppl), (ppl, random_ppl)
