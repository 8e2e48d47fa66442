"""GGUF export, checked by llama.cpp itself (llama-cpp-python built from source): logits, perplexity, greedy text.

Each method prunes the embedded SmolLM2-135M at 37.5 % (small calibration: the test is about the export
of each method's structure, not the quality of its choices); its checkpoint is exported to F32 GGUF and
llama.cpp scores the same token windows as prunebench's evaluator.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.checkpoint import save_pruned
from harness.export import FORMATS, ExportRefused, check_export, export, export_model
from harness.metrics.qualitative import DEFAULT_PROMPTS
from methods.arch import adapt
from tests.conftest import prune_with, windows_perplexity

llama_cpp = pytest.importorskip("llama_cpp",
                                reason="llama-cpp-python is installed by `make test` (pyproject extra 'engine')")

EMBEDDED = {"name": "smollm2-135m", "kind": "embedded"}
METHODS = ("dense", "2ssp", "shortgpt", "window", "blockpruner", "blockpruner-block", "evopress", "evopress-block")
# Search budgets cut down (these tests check the export of each method's structure, not its choices):
# the searches score one 16-token sample, EvoPress runs three generations.
SEARCHES = ("blockpruner", "blockpruner-block", "evopress", "evopress-block")
FAST = {
    name: {"generations": 3, "offspring": 4, "initially_generated": 8, "initial_tokens": 16,
           "tokens_per_selection": [16, 16]}
    for name in ("evopress", "evopress-block")
}


class Engine:
    """llama.cpp on one GGUF, with logits for every position."""

    def __init__(self, path, n_ctx: int = 512):
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False)

    def logits(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float64))

    def perplexity(self, windows: torch.Tensor) -> float:
        nll, count = 0.0, 0
        for window in windows.tolist():
            logp = torch.log_softmax(self.logits(window)[:-1], dim=-1)
            nll -= logp[torch.arange(len(window) - 1), torch.tensor(window[1:])].sum().item()
            count += len(window) - 1
        return math.exp(nll / count)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            out.append(token)
            if len(out) == n:
                return out
        return out

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def close(self) -> None:
        self.llm.close()


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def windows(enwiki_tokens):
    evaluation = enwiki_tokens[1]
    return evaluation[: 3 * 256].reshape(3, 256)


@pytest.fixture(scope="module")
def calibration(enwiki_tokens):
    return enwiki_tokens[0][: 4 * 128].reshape(4, 128)


@pytest.mark.parametrize("method", METHODS)
def test_gguf_of_each_method_matches_prunebench_in_llama_cpp(method, smollm2, windows, calibration, tmp_path):
    adapter = adapt(smollm2.model)
    if method != "dense":
        calib = calibration[:1, :16] if method in SEARCHES else calibration
        prune_with(method, adapter, sparsity=0.375, calib=calib, **FAST.get(method, {}))
    checkpoint = save_pruned(adapter, smollm2.tokenizer, tmp_path / "ckpt",
                             info={"prune_report": {"model": EMBEDDED}})
    report = export(checkpoint, "gguf", tmp_path / "model.gguf", dtype="f32")
    assert report.bytes == (tmp_path / "model.gguf").stat().st_size

    ours = windows_perplexity(adapter, windows)
    engine = Engine(tmp_path / "model.gguf")
    try:
        theirs = engine.perplexity(windows)
        assert abs(theirs / ours - 1) < 2e-3, (method, ours, theirs, report.notes)
        for prompt in DEFAULT_PROMPTS[:2]:
            ids = smollm2.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            assert engine.greedy(ids, 10) == torch_greedy(smollm2.model, ids, 10), (method, prompt)
    finally:
        engine.close()


def test_structures_llama_cpp_mishandles_are_written_as_exact_equivalents(smollm2, windows, tmp_path):
    """No attention in layer 0, a layer with attention but no FFN (the last one too), an empty layer."""
    adapter = adapt(smollm2.model)
    adapter.remove_attention(0)
    adapter.remove_ffn(4)
    adapter.remove_attention(9)
    adapter.remove_ffn(9)  # layer 9: the identity
    adapter.remove_ffn(29)
    adapter.keep_ffn_neurons(7, list(range(0, 1536, 3)))
    report = export_model(adapter, smollm2.tokenizer, EMBEDDED, "gguf", tmp_path / "edge.gguf", dtype="f32")
    notes = " ".join(report.notes)
    assert "layer 0 (first in the file) has no attention" in notes
    assert "layer 4 keeps attention without an FFN" in notes and "layer 29 keeps attention" in notes
    assert "layers [9] have neither" in notes
    engine = Engine(tmp_path / "edge.gguf")
    try:
        ours, theirs = windows_perplexity(adapter, windows[:2]), engine.perplexity(windows[:2])
        assert abs(theirs / ours - 1) < 2e-3, (ours, theirs)
    finally:
        engine.close()


def test_f16_and_q8_0_load_and_stay_close(smollm2, windows, calibration, tmp_path):
    adapter = adapt(smollm2.model)
    prune_with("2ssp", adapter, sparsity=0.375, calib=calibration)
    ours = windows_perplexity(adapter, windows[:2])
    sizes = {}
    for dtype, rtol in (("f16", 5e-3), ("q8_0", 3e-2)):
        report = export_model(adapter, smollm2.tokenizer, EMBEDDED, "gguf", tmp_path / f"m-{dtype}.gguf", dtype=dtype)
        sizes[dtype] = report.bytes
        engine = Engine(tmp_path / f"m-{dtype}.gguf")
        try:
            assert abs(engine.perplexity(windows[:2]) / ours - 1) < rtol, dtype
        finally:
            engine.close()
        if dtype == "q8_0":  # 2SSP's FFN widths are not multiples of 32: those down projections stay F16
            assert any("stay F16" in n for n in report.notes)
    assert sizes["q8_0"] < 0.75 * sizes["f16"]


def test_tokenizer_described_from_tokenizer_json_tokenizes_as_transformers(smollm2, tmp_path):
    """A hub-style model (no source GGUF): llama.cpp must split text exactly as the Hugging Face tokenizer."""
    adapter = adapt(smollm2.model)
    adapter.remove_layers(range(4, 30))  # the vocabulary is what is tested: a small file loads fast
    report = export_model(adapter, smollm2.tokenizer, {"name": "local-smollm2", "kind": "local"}, "gguf",
                          tmp_path / "hf-tok.gguf", dtype="f16")
    assert any("pre-tokenizer 'gpt-2'" in n for n in report.notes)
    engine = Engine(tmp_path / "hf-tok.gguf", n_ctx=64)
    try:
        text = "Prices rose 12.5% in 2024 -- naïve café owners' \"résumés\"\n\tcan't   stop. 東京 🙂"
        assert engine.tokenize(text) == smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        engine.close()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_each_family_with_its_own_layout_matches_in_llama_cpp(family, smollm2, tmp_path):
    """Random tiny models with SmolLM2's vocabulary: GQA, Qwen2's q/k/v biases, untied LM heads, pruned layers."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    config_type = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
    torch.manual_seed(0)
    config = config_type(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=False, sliding_window=None, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    adapter = adapt(model)
    adapter.remove_attention(1)
    adapter.remove_ffn(2)
    adapter.keep_ffn_neurons(3, [0, 5, 9, 40, 95])
    export_model(adapter, smollm2.tokenizer, {"name": f"tiny-{family}", "kind": "local"}, "gguf",
                 tmp_path / "tiny.gguf", dtype="f32")
    ids = torch.randint(3, 49152, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double()
    engine = Engine(tmp_path / "tiny.gguf", n_ctx=64)
    try:
        # llama.cpp's float32 kernels round differently (about 1e-4 here); a wrong rotary order, a missing bias
        # or a misplaced module moves these random-weight logits by 1e-2 and more.
        assert (engine.logits(ids) - ours).abs().max().item() < 2e-3
    finally:
        engine.close()


def test_refusals_name_the_reason_and_exit_2_before_loading_weights(tmp_path):
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    adapter = adapt(model)
    prune_with("slicegpt", adapter, sparsity=0.3)
    checkpoint = save_pruned(adapter, None, tmp_path / "sliced")
    with pytest.raises(ExportRefused, match="no GGUF form"):
        check_export(checkpoint, "gguf")
    plain = tmp_path / "plain"
    plain.mkdir()
    for args, expected in (
        ([str(checkpoint), "--format", "gguf", "--out", str(tmp_path / "s.gguf")], "no GGUF form"),
        ([str(plain), "--format", "gguf", "--out", str(tmp_path / "x.gguf")], "not a pruned checkpoint"),
        ([str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "x.onnx")], "unknown export format"),
        ([str(checkpoint), "--format", "gguf", "--dtype", "q4_k", "--out", str(tmp_path / "x.gguf")], "no dtype"),
    ):
        run = subprocess.run([sys.executable, "-m", "harness.cli", "export", *args], capture_output=True, text=True)
        assert run.returncode == 2, run.stderr
        assert expected in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not list(tmp_path.glob("*.gguf"))
    assert "gguf" in FORMATS
