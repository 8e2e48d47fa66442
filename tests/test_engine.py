"""The llama.cpp wrapper on the embedded model's own GGUF (Q4_1), and the one line when llama.cpp is missing.

The source file is quantised, so its perplexity is compared with prunebench's float32 model (the same
weights, dequantised) only loosely; exported F32 GGUFs are checked tightly in test_export_gguf.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness.engine.llamacpp import VERSION, EngineError, LlamaCpp

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN = 128
# make test installs the extra (make install-engine); a bare pytest without it skips what needs llama.cpp.
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed: make install-engine")


@pytest.fixture(scope="module")
def source_gguf() -> Path:
    from harness.models import EMBEDDED_MODELS

    spec = EMBEDDED_MODELS["smollm2-135m"]
    return spec.package_dir() / spec.gguf_file


@pytest.fixture(scope="module")
def engine(source_gguf):
    with LlamaCpp(source_gguf, threads=1, n_ctx=SEQ_LEN + 1) as loaded:
        yield loaded


@needs_llama_cpp
@pytest.mark.real_model
def test_window_nll_matches_prunebench_loosely_on_the_same_windows(engine, smollm2, enwiki_tokens):
    from harness.data.tokens import eval_windows
    from harness.metrics.perplexity import window_scores
    from methods.arch import adapt

    windows = eval_windows(enwiki_tokens[1], SEQ_LEN, 3)
    bos = smollm2.tokenizer.bos_token_id
    adapter = adapt(smollm2.model)
    for bos_id in (None, bos):  # BOS as context only: the same tokens scored either way
        ref_nll, ref_targets, _ = window_scores(adapter, windows, bos_id)
        got = [engine.window_nll(w.tolist(), bos_id) for w in windows]
        nll, targets = [n for n, _ in got], [t for _, t in got]
        assert targets == ref_targets == [SEQ_LEN - 1] * 3
        assert all(math.isfinite(n) and n > 0 for n in nll)
        ppl, ref_ppl = math.exp(sum(nll) / sum(targets)), math.exp(sum(ref_nll) / sum(ref_targets))
        # Q4_1 weights and Q8 activations against float32: a few percent; a shifted target would be far off.
        assert abs(ppl / ref_ppl - 1) < 0.05, (ppl, ref_ppl, bos_id)
    assert engine.window_nll(windows[0].tolist()) != engine.window_nll(windows[0].tolist(), bos)


@needs_llama_cpp
@pytest.mark.real_model
def test_greedy_is_deterministic_and_exactly_n_tokens(engine, source_gguf, smollm2):
    prompt = smollm2.tokenizer("The capital of France is", add_special_tokens=False).input_ids
    first = engine.greedy(prompt, 8)
    assert len(first) == 8 and all(0 <= t < engine.n_vocab for t in first)
    engine.window_nll(list(range(100, 140)))  # whatever ran before, a greedy run starts from an empty cache
    assert engine.greedy(prompt, 8) == first
    with LlamaCpp(source_gguf, threads=2, n_ctx=64) as other:  # another load, other threads: the same tokens
        assert other.greedy(prompt, 8) == first
    assert "Paris" in smollm2.tokenizer.decode(first)


@needs_llama_cpp
@pytest.mark.real_model
def test_timings_are_positive_and_counted_by_llama_cpp(engine):
    prompt = list(range(1000, 1064))
    prefill = [engine.prefill_seconds(prompt) for _ in range(2)]
    decode = [engine.decode_seconds(prompt[:16], 6) for _ in range(2)]
    assert all(0 < s < 60 for s in prefill + decode)
    assert engine.settings.threads == 1 and engine.settings.n_ctx >= SEQ_LEN + 1 and not engine.settings.mmap
    with pytest.raises(EngineError, match="do not fit"):
        engine.prefill_seconds(list(range(engine.settings.n_ctx + 1)))


@needs_llama_cpp
def test_a_file_llama_cpp_cannot_load_is_one_line_with_its_reason(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(EngineError) as err:
        LlamaCpp(bad, threads=1, n_ctx=16)
    message = str(err.value)
    assert message.startswith("llama.cpp cannot load bad.gguf: ") and "\n" not in message
    assert "magic" in message  # llama.cpp's own reason, not llama-cpp-python's "failed to load"


def _site_without_llama_cpp(tmp_path: Path) -> Path:
    """This environment's site-packages, every entry linked except llama-cpp-python's: as if never installed."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden = tmp_path / "site"
    hidden.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("llama_cpp", "llama-cpp")) and entry.suffix != ".pth":
            (hidden / entry.name).symlink_to(entry)
    return hidden


def _env_without_llama_cpp(tmp_path: Path) -> dict[str, str]:
    """For ``python -S``: this checkout and that site-packages only (no .pth files, no user site)."""
    return {"PYTHONPATH": f"{REPO}:{_site_without_llama_cpp(tmp_path)}", "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}


def test_without_llama_cpp_the_error_is_one_line_saying_how_to_install(tmp_path):
    """The real import failing (no mock): a subprocess whose only site-packages lacks llama_cpp."""
    env = _env_without_llama_cpp(tmp_path)
    code = ("from harness.engine.llamacpp import LlamaCpp\n"
            "try:\n    LlamaCpp('model.gguf', 1, 16)\nexcept Exception as err:\n    print(type(err).__name__, err)")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=120)
    [line] = result.stdout.strip().splitlines()
    assert line.startswith("EngineUnavailable llama.cpp is not available "
                           "(ModuleNotFoundError: No module named 'llama_cpp')")
    assert line.endswith(f"install it with `make install-engine` (or pip install llama-cpp-python=={VERSION})")


def test_without_llama_cpp_a_bench_runs_unless_the_engine_is_asked_for(tmp_path):
    env = _env_without_llama_cpp(tmp_path)
    # With the engine off, everything a bench runs imports and validates without llama.cpp.
    plain = ("import sys; import harness.bench.cell, harness.report.leaderboard, harness.report.repro; "
             "from harness.bench.config import BenchConfig; from harness.bench.expand import resolve, validate; "
             f"validate(resolve(BenchConfig(methods=['dense', 'shortgpt'], profile='cpu-quick', out='{tmp_path}/o'))); "
             "print('llama_cpp' in sys.modules)")
    without = subprocess.run([sys.executable, "-S", "-c", plain], capture_output=True, text=True, env=env, timeout=300)
    assert without.returncode == 0 and without.stdout.strip() == "False", without.stderr[-2000:]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-S", "-m", "harness.cli", "bench", "--engine", "--methods", "dense",
                             "--profile", "cpu-quick", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "llama.cpp is not available (ModuleNotFoundError: No module named 'llama_cpp')" in line
    assert f"`make install-engine` (or pip install llama-cpp-python=={VERSION})" in line
    assert not (out / "cells").exists()
