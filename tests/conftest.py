"""Shared fixtures: tiny randomly initialised models of every supported architecture (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests use only embedded data and tiny models
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every code change makes new pruned-model cache keys: the suite keeps at most this much of them (each
# cache folder), the least recently used evicted first, so that runs on one machine never fill its disk.
os.environ.setdefault("PRUNEBENCH_CACHE_MAX_GB", "6")

ARCHS = ("llama", "mistral", "qwen2", "phi3", "gemma3_text")


def tiny_config(arch: str, layers: int = 4):
    """A few-layer config of the architecture; sliding windows small enough to matter in tests."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=8)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=2)
    if arch == "phi3":
        return Phi3Config(**common)
    if arch == "gemma3_text":
        return Gemma3TextConfig(**common, sliding_window=8, query_pre_attn_scalar=16)
    raise ValueError(arch)


def tiny_model(arch: str, layers: int = 4, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers), dtype=torch.float32)
    # Random init leaves norms at 1 and some projections tiny; perturb everything so removals matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def meta_adapter(config):
    """A weightless adapter (meta tensors): what plan() sees in the harness before anything is loaded."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from methods.arch import adapt

    with init_empty_weights():
        return adapt(AutoModelForCausalLM.from_config(config))


def llama2_7b(layers: int = 32):
    """Llama-2-7B's shape (the paper's first model), for counting without weights."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000)


def skeleton(layers: int):
    """A weightless Llama adapter with this many layers (plans and counts only)."""
    return meta_adapter(tiny_config("llama", layers))


def prune_with(method_name: str, adapter, sparsity: float = 0.3, calib=None, seed: int = 0, **options):
    """Prune ``adapter`` in place with a registered method; random calibration unless given."""
    from methods import get_method
    from methods.base import PruneContext

    method = get_method(method_name)
    calib = random_calibration() if calib is None else calib
    return method.prune(adapter, method.options(options), PruneContext(calib, sparsity, seed))


def make_identity(adapter, layers) -> None:
    """Zero the branch outputs of these layers: each then returns its input exactly."""
    with torch.no_grad():
        for i in layers:
            adapter.attn_output(i).weight.zero_()
            adapter.ffn_down(i).weight.zero_()


def random_calibration(samples: int = 3, tokens: int = 24, seed: int = 0) -> torch.Tensor:
    """Token ids for the tiny models' vocabulary (special tokens 0-2 left out)."""
    return torch.randint(3, 128, (samples, tokens), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2_ref():
    """The embedded SmolLM2-135M (converted once into the prunebench cache)."""
    from harness.models import ensure_embedded, resolve_model

    ref = resolve_model("smollm2-135m")
    ensure_embedded(ref.name)
    return ref


@pytest.fixture
def smollm2(smollm2_ref):
    """A fresh float32 CPU copy of SmolLM2 for a test that prunes it (loading takes well under a second)."""
    from harness.models import load_model

    return load_model(smollm2_ref, dtype="float32", device="cpu")


def pruned_checkpoint(out, method: str, sparsity: float, **options):
    """A real pruned checkpoint of the embedded SmolLM2 (2 calibration samples of 64 tokens), as `prunebench prune` \
writes it."""
    from harness import pruning
    from harness.data.tokens import Calibration

    job = pruning.PruneJob(method=method, sparsity=sparsity, model="smollm2-135m", options=options, profile="cpu-quick",
                           dtype="float32", device="cpu",
                           calibration=Calibration(source="enwiki-sample", samples=2, seq_len=64))
    return pruning.save(pruning.execute(pruning.prepare(job)), out)


@pytest.fixture(scope="session")
def shortgpt_checkpoint(smollm2_ref, tmp_path_factory):
    """ShortGPT at 20 %: whole layers removed, every remaining layer intact (a homogeneous structure)."""
    return pruned_checkpoint(tmp_path_factory.mktemp("shortgpt") / "ckpt", "shortgpt", 0.2)


@pytest.fixture(scope="session")
def twossp_checkpoint(smollm2_ref, tmp_path_factory):
    """2SSP at 25 %: attention removed from some layers (not a structure a standard config describes)."""
    return pruned_checkpoint(tmp_path_factory.mktemp("twossp") / "ckpt", "2ssp", 0.25, search_batch=16)


@pytest.fixture(scope="session")
def enwiki_tokens(smollm2_ref):
    """SmolLM2 tokens of the offline Wikipedia sample: (calibration part, evaluation part)."""
    from transformers import AutoTokenizer

    from harness.data.sources import load_corpus
    from harness.data.tokens import tokenize

    tok = AutoTokenizer.from_pretrained(smollm2_ref.location)
    return (tokenize(tok, load_corpus("enwiki-sample", "calibration")),
            tokenize(tok, load_corpus("enwiki-sample", "evaluation")))


def windows_perplexity(adapter, windows) -> float:
    """Perplexity over token windows [n, T] with the evaluator's own scoring loop."""
    import math

    from harness.metrics.perplexity import score_windows

    nll, count = score_windows(adapter, windows)
    return math.exp(nll / count)


DOCKER_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "docker"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """A running Docker engine; skipped where none can run.

    docker/ensure-engine.sh installs and starts one where it can (root on Debian), so CI runs these
    tests for real; PRUNEBENCH_SKIP_DOCKER=1 opts out.
    """
    import subprocess

    if os.environ.get("PRUNEBENCH_SKIP_DOCKER") == "1":
        pytest.skip("PRUNEBENCH_SKIP_DOCKER=1")
    try:
        engine = subprocess.run([str(DOCKER_DIR / "ensure-engine.sh")], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"no Docker engine: ensure-engine.sh did not finish: {err}")
    if engine.returncode != 0:
        pytest.skip(f"no Docker engine: {(engine.stderr.strip().splitlines() or ['?'])[-1]}")


@pytest.fixture(scope="session")
def cpu_image(docker_engine) -> str:
    """The freshly built CPU image (its id), on a running engine. The build reuses cached layers (seconds)."""
    import subprocess

    build = subprocess.run([str(DOCKER_DIR / "build-image.sh"), "cpu"], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, "build-image.sh cpu failed:\n" + "\n".join(build.stderr.splitlines()[-40:])
    tag, image_id = build.stdout.strip().splitlines()[-1].split()[:2]
    assert tag == "prunebench:cpu" and image_id.startswith("sha256:")
    return image_id
