"""Architecture adapters and surgery on tiny models of every supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from harness.checkpoint import load_pruned, save_pruned
from methods.arch import RemovedAttention, adapt
from methods.errors import MethodError


def ids(n=24, seed=1, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (2, n), generator=g)


@torch.no_grad()
def logits(model, x):
    return model(x, use_cache=False).logits


def test_remove_attention_drops_its_parameters_and_keeps_the_ffn_branch(arch):
    model = tiny_model(arch)
    a = adapt(model)
    before, expected = a.block_parameters(), a.attention_parameters(1)
    a.remove_attention(1)
    assert before - a.block_parameters() == expected > 0
    assert not a.has_attention(1) and a.has_ffn(1) and a.attention_parameters(1) == 0
    logits(model, ids())  # still runs
    with pytest.raises(MethodError):
        a.remove_attention(1)


@torch.no_grad()
def test_removed_attention_layer_computes_h_plus_ffn_branch():
    model = tiny_model("llama")
    a = adapt(model)
    layer = a.layers[2]
    norm2, mlp = layer.post_attention_layernorm, layer.mlp
    h = torch.randn(1, 5, a.hidden_size)
    a.remove_attention(2)
    pos = torch.arange(5)[None]
    out = layer(h, position_embeddings=model.model.rotary_emb(h, pos), attention_mask=None, position_ids=pos)
    assert torch.equal(out, h + mlp(norm2(h)))


def test_remove_ffn_and_layers_drop_exact_counts(arch):
    model = tiny_model(arch, layers=5)
    a = adapt(model)
    n0 = a.block_parameters()
    ffn = a.ffn_parameters(0)
    a.remove_ffn(0)
    assert n0 - a.block_parameters() == ffn
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in a.layers]
    a.remove_layers([1, 3])
    assert a.block_parameters() == n0 - ffn - per_layer[1] - per_layer[3]
    assert a.num_layers == model.config.num_hidden_layers == 3
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 3
    logits(model, ids())


def test_keep_ffn_neurons_drops_exact_counts(arch):
    model = tiny_model(arch)
    a = adapt(model)
    n0, per_neuron, width = a.block_parameters(), a.ffn_neuron_parameters(2), a.ffn_width(2)
    a.keep_ffn_neurons(2, list(range(0, width, 3)))
    kept = len(range(0, width, 3))
    assert a.ffn_width(2) == kept
    assert n0 - a.block_parameters() == (width - kept) * per_neuron
    logits(model, ids())
    for bad in ([], [0, 0], [width + 5]):
        with pytest.raises(MethodError):
            a.keep_ffn_neurons(1, bad)


@torch.no_grad()
def test_kept_neurons_compute_the_same_as_zeroing_the_others():
    model = tiny_model("phi3")
    a = adapt(model)
    x = ids()
    keep = torch.arange(0, a.ffn_width(1), 2)
    mask = torch.zeros(a.ffn_width(1))
    mask[keep] = 1
    handle = a.ffn_down(1).register_forward_pre_hook(lambda m, args: (args[0] * mask,))
    expected = logits(model, x)
    handle.remove()
    a.keep_ffn_neurons(1, keep)
    torch.testing.assert_close(logits(model, x), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_generation_with_kv_cache_matches_full_forward_after_removals(arch):
    model = tiny_model(arch, layers=5)
    a = adapt(model)
    a.remove_attention(0)  # the first cache slot is where transformers reads the cached length
    a.remove_layers([2])
    a.remove_attention(2)
    a.remove_ffn(3)
    prompt = ids(n=12)[:1]
    out = model.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape[1] == 28
    # Every generated token is the argmax of a full forward (no cache) over the sequence so far.
    full = logits(model, out[:, :-1])
    assert torch.equal(full[:, 11:].argmax(-1), out[:, 12:])
    # And the cached incremental logits equal the full ones.
    step = model(out[:, :20], use_cache=True)
    nxt = model(out[:, 20:21], past_key_values=step.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(nxt, full[:, 20], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_temporary_removal_equals_real_removal_and_is_undone(arch):
    model = tiny_model(arch)
    a = adapt(model)
    x = ids()
    dense = logits(model, x)
    with a.without(attention=[1, 3], ffn=[2]):
        temp = logits(model, x)
    assert torch.equal(logits(model, x), dense)
    assert a.ops == [] and all(a.has_attention(i) for i in range(a.num_layers))
    a.remove_attention(1)
    a.remove_attention(3)
    a.remove_ffn(2)
    assert torch.equal(logits(model, x), temp)
    assert isinstance(a.attention(1), RemovedAttention)


@torch.no_grad()
def test_saved_pruned_model_reloads_with_identical_logits(arch, tmp_path):
    model = tiny_model(arch, layers=5)
    a = adapt(model)
    a.keep_ffn_neurons(0, [1, 5, 7, 20, 40])
    a.remove_attention(1)
    a.remove_layers([3])
    a.remove_ffn(2)
    x = ids()
    expected = logits(model, x)
    out = save_pruned(a, None, tmp_path / "ckpt", info={"method": "test"})
    reloaded = load_pruned(out)
    assert torch.equal(logits(reloaded, x), expected)
    assert adapt(reloaded).block_parameters() == a.block_parameters()
    # The reloaded structure is prunable further, and its op log continues the original one.
    assert reloaded.config.num_hidden_layers == 4


@torch.no_grad()
def test_checkpoint_reloaded_in_bf16_computes_as_a_bf16_load_of_the_same_weights(arch, tmp_path):
    """Built in bf16 as from_pretrained builds it: float32 buffers (rotary frequencies) stay float32."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch, layers=3)
    a = adapt(model)
    out = save_pruned(a, None, tmp_path / "ckpt")
    reloaded = load_pruned(out, dtype=torch.bfloat16)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    buffers = {n: b.dtype for n, b in plain.named_buffers()}
    assert {n: b.dtype for n, b in reloaded.named_buffers()} == buffers
    assert all(p.dtype == torch.bfloat16 for p in reloaded.parameters())
    x = ids()
    assert torch.equal(logits(reloaded, x), logits(plain, x))


def test_replay_hands_method_edits_to_the_replayers_it_is_given_and_refuses_unknown_ones():
    from methods.custom_ops import CUSTOM_OPS, REPLAYERS

    seen = []
    a = adapt(tiny_model("llama", layers=3))
    a.replay([{"op": "remove_ffn", "layer": 0}, {"op": "mine", "n": 2}],
             {"mine": lambda adapter, op: seen.append((adapter, op["n"]))})
    assert seen == [(a, 2)] and not a.has_ffn(0)
    with pytest.raises(MethodError, match="unknown surgery op 'nosuch'.*'keep_ffn_channels', 'slicegpt'"):
        adapt(tiny_model("llama", layers=3)).replay([{"op": "nosuch"}], REPLAYERS)
    with pytest.raises(MethodError, match="unknown surgery op 'slicegpt'"):  # without replayers, none is known
        adapt(tiny_model("llama", layers=3)).replay([{"op": "slicegpt"}])
    # The lazy table resolves every entry to a function of the method that logs the op.
    assert set(REPLAYERS) == set(CUSTOM_OPS) and all(callable(REPLAYERS[name]) for name in CUSTOM_OPS)


def test_checkpoint_shrinks_on_disk(tmp_path):
    model = tiny_model("llama", layers=6)
    a = adapt(model)
    dense_dir = save_pruned(a, None, tmp_path / "dense")
    a.remove_layers([0, 1, 2])
    pruned_dir = save_pruned(a, None, tmp_path / "pruned")
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert size(pruned_dir) < 0.75 * size(dense_dir)


def test_unsupported_architecture_is_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(MethodError, match="'gpt2' is not supported; supported: .*llama"):
        adapt(model)
