"""GGUF export for llama.cpp: every Llama-style layer structure, as llama.cpp's ``deci`` architecture.

``deci`` (written for NVIDIA's Nemotron-NAS models) reads the head count, KV head count and FFN width of
each layer from arrays, where 0 means the module is absent, so it holds any mix of removed attention
modules, removed FFNs and per-layer FFN widths at their exact sizes. Its graph, in the llama.cpp that
llama-cpp-python 0.3.36 vendors, mishandles three structures, which this export writes as exact
equivalents instead (each one is listed in the export's notes):

- no attention in layer 0: llama.cpp derives the head size from layer 0's head count, so a 0 there
  breaks every other layer. Layer 0 gets a one-head attention whose output projection is zero: it adds
  exactly nothing, as the removed module did.
- attention kept, FFN removed: for a layer of FFN width 0 the graph skips the rest of the layer, dropping
  the attention output with it (on the last layer it also skips the selection of output rows, and the
  process aborts). Such a layer gets a one-neuron FFN whose weights are zero.
- neither left: the layer is the identity (which aborts as the last layer), so it is left out of the file.

docs/export.md shows what llama.cpp does with each naive form.

The tensors follow llama.cpp's layout: Q and K rows are reordered for its rotary embedding (pairs of
adjacent values, where transformers rotates halves), 1-D tensors stay float32, and in Q8_0 a matrix whose
rows are not a whole number of 32-value blocks (an FFN width cut by 2SSP, say) stays F16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import torch

from harness.errors import ModelUnavailable
from harness.export.base import ExportFormat, PrunedStructure
from harness.export.gguf_vocab import VocabPlan, copy_vocab, describe_vocab, plan_vocab, tokenizer_json_of
from methods.arch import ModelAdapter

ARCH = "deci"
# Families whose layers llama.cpp's deci graph computes: RMSNorm, rotary attention (biases optional), SwiGLU.
FAMILIES = ("llama", "mistral", "qwen2")
QTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def embedded_gguf(source: dict[str, str]) -> Path | None:
    """The GGUF an embedded model came from (its tokenizer is copied from there)."""
    from harness.models import EMBEDDED_MODELS

    spec = EMBEDDED_MODELS.get(source.get("name", "")) if source.get("kind") == "embedded" else None
    return spec.package_dir() / spec.gguf_file if spec else None


def rope_factors(config: Any) -> torch.Tensor | None:
    """Per-frequency divisors of the rotary angles, for a scaled RoPE (None when it is the plain one).

    transformers computes the scaled inverse frequencies; llama.cpp divides its plain angles by
    ``rope_freqs``, so the factors are the ratio of the two. This holds for every scaling that only
    changes frequencies (linear, llama3); one that also rescales attention or depends on position is refused.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise ValueError(f"its RoPE scaling '{kind}' has no frequency-factor form in llama.cpp's deci graph")
    scaled, attention_scale = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    if attention_scale != 1.0:
        raise ValueError(f"its RoPE scaling '{kind}' rescales attention")
    head_dim = _head_dim(config)
    plain = 1.0 / (float(params["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    return (plain / scaled.double()).float()


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _rotary_order(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a Q or K projection from transformers' half-split rotary order to llama.cpp's interleaved one."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


class GGUFExport(ExportFormat):
    name = "gguf"
    dtypes = ("f32", "f16", "q8_0")
    default_dtype = "f16"
    summary = "llama.cpp (and ollama, LM Studio...): one .gguf file, architecture deci, exact per-layer sizes"

    def refusal(self, structure: PrunedStructure, dtype: str) -> str | None:
        if structure.other_ops:
            return (f"its edits {', '.join(structure.other_ops)} (SliceGPT's rotated residual stream with shortcut "
                    "matrices) have no GGUF form")
        cfg = structure.base_config
        if structure.model_type not in FAMILIES:
            return (f"llama.cpp's deci graph does not compute {structure.model_type} layers "
                    f"(GGUF export: {', '.join(FAMILIES)})")
        if cfg.get("hidden_act", "silu") != "silu" or cfg.get("mlp_bias"):
            return "its FFN is not a bias-free SwiGLU"
        try:
            from transformers import CONFIG_MAPPING

            rope_factors(CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg))
            # The outline stands in for the tokenizer.json: only its model type, decoder and pre-tokenizer are read.
            plan = plan_vocab(structure.source, structure.tokenizer, embedded_gguf(structure.source))
        except (ValueError, ModelUnavailable) as err:
            return str(err)
        return plan if isinstance(plan, str) else None

    def write(self, adapter: ModelAdapter, tokenizer: Any, structure: PrunedStructure, out: Path,
              dtype: str) -> list[str]:
        plan = plan_vocab(structure.source, tokenizer_json_of(tokenizer), embedded_gguf(structure.source))
        assert isinstance(plan, VocabPlan), plan  # refusal() said yes to this structure
        writer = gguf.GGUFWriter(out, ARCH)
        try:
            notes = _write_model(writer, adapter, structure, dtype)
            if plan.source_gguf is not None:
                copy_vocab(writer, plan.source_gguf)
                notes.append(f"tokenizer copied from {plan.source_gguf.name}")
            else:
                describe_vocab(writer, tokenizer, tokenizer_json_of(tokenizer), plan.pre, adapter.config.vocab_size)
                notes.append(f"tokenizer: byte-level BPE, llama.cpp pre-tokenizer '{plan.pre}'")
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        return notes


class _Tensors:
    """Adds tensors in the export dtype; 1-D ones in float32, blocks that do not fit stay F16 (noted once each)."""

    def __init__(self, writer: gguf.GGUFWriter, dtype: str):
        self.writer, self.qtype = writer, QTYPES[dtype]
        self.kept_f16: list[str] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        qtype = gguf.GGMLQuantizationType.F32 if data.ndim == 1 else self.qtype
        if qtype == gguf.GGMLQuantizationType.Q8_0:
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if data.shape[-1] % block:
                self.kept_f16.append(name)
                qtype = gguf.GGMLQuantizationType.F16
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            self.writer.add_tensor(name, gguf.quants.quantize(data, qtype))
        else:
            # The quantised array is bytes per row; the writer derives the element shape from it.
            self.writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _write_model(writer: gguf.GGUFWriter, adapter: ModelAdapter, structure: PrunedStructure, dtype: str) -> list[str]:
    config = adapter.config
    hidden, head_dim = config.hidden_size, _head_dim(config)
    tensors = _Tensors(writer, dtype)
    notes: list[str] = []
    kept = [i for i, layer in enumerate(structure.layers) if layer.heads or layer.ffn_width]
    if len(kept) < len(structure.layers):
        dropped = [i for i in range(len(structure.layers)) if i not in kept]
        notes.append(f"layers {dropped} have neither attention nor FFN (the identity): left out")
    heads, kv_heads, widths = [], [], []
    for out_idx, i in enumerate(kept):
        layer = structure.layers[i]
        prefix = f"blk.{out_idx}"
        if layer.heads:
            _add_attention(tensors, adapter, i, prefix, layer.heads, layer.kv_heads)
            heads.append(layer.heads)
            kv_heads.append(layer.kv_heads)
        elif out_idx == 0:
            _add_zero_attention(tensors, prefix, hidden, head_dim)
            heads.append(1)
            kv_heads.append(1)
            notes.append(f"layer {i} (first in the file) has no attention: written as a one-head attention with a "
                         "zero output projection (exactly nothing added)")
        else:
            heads.append(0)
            kv_heads.append(0)
        if layer.ffn_width:
            _add_ffn(tensors, adapter, i, prefix)
            widths.append(layer.ffn_width)
        else:
            _add_zero_ffn(tensors, prefix, hidden)
            widths.append(1)
            notes.append(f"layer {i} keeps attention without an FFN: written with a one-neuron zero FFN "
                         "(exactly nothing added)")
    tensors.add("token_embd.weight", adapter.embedding().weight)
    tensors.add("output_norm.weight", adapter.final_norm().weight)
    if adapter.lm_head().weight is not adapter.embedding().weight:
        tensors.add("output.weight", adapter.lm_head().weight)
    if (factors := rope_factors(config)) is not None:
        tensors.add("rope_freqs.weight", factors)

    writer.add_name(structure.source.get("name", "model"))
    writer.add_block_count(len(kept))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(widths)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    layer_types = getattr(config, "layer_types", None)
    windowed = "sliding_attention" in layer_types if layer_types else getattr(config, "use_sliding_window", True)
    if (sliding := getattr(config, "sliding_window", None)) and windowed:
        notes.append(f"the model's sliding window ({sliding} tokens) is not applied by llama.cpp's deci graph: "
                     f"identical for contexts up to {sliding} tokens")
    if tensors.kept_f16:
        notes.append(f"{len(tensors.kept_f16)} matrices whose rows are not whole Q8_0 blocks of 32 stay F16")
    return notes


def _add_attention(tensors: _Tensors, adapter: ModelAdapter, i: int, prefix: str, heads: int, kv_heads: int) -> None:
    q, k, v = adapter.attn_inputs(i)
    tensors.add(f"{prefix}.attn_norm.weight", adapter.attn_norms(i)[0].weight)
    tensors.add(f"{prefix}.attn_q.weight", _rotary_order(q.weight, heads))
    tensors.add(f"{prefix}.attn_k.weight", _rotary_order(k.weight, kv_heads))
    tensors.add(f"{prefix}.attn_v.weight", v.weight)
    tensors.add(f"{prefix}.attn_output.weight", adapter.attn_output(i).weight)
    for proj, short, count in ((q, "q", heads), (k, "k", kv_heads), (v, "v", None)):
        if proj.bias is not None:
            bias = proj.bias if count is None else _rotary_order(proj.bias, count)
            tensors.add(f"{prefix}.attn_{short}.bias", bias)
    if adapter.attn_output(i).bias is not None:
        tensors.add(f"{prefix}.attn_output.bias", adapter.attn_output(i).bias)


def _add_zero_attention(tensors: _Tensors, prefix: str, hidden: int, head_dim: int) -> None:
    tensors.add(f"{prefix}.attn_norm.weight", torch.ones(hidden))
    for short in ("q", "k", "v"):
        tensors.add(f"{prefix}.attn_{short}.weight", torch.zeros(head_dim, hidden))
    tensors.add(f"{prefix}.attn_output.weight", torch.zeros(hidden, head_dim))


def _add_ffn(tensors: _Tensors, adapter: ModelAdapter, i: int, prefix: str) -> None:
    gate, up = adapter.ffn_inputs(i)
    tensors.add(f"{prefix}.ffn_norm.weight", adapter.ffn_norms(i)[0].weight)
    tensors.add(f"{prefix}.ffn_gate.weight", gate.weight)
    tensors.add(f"{prefix}.ffn_up.weight", up.weight)
    tensors.add(f"{prefix}.ffn_down.weight", adapter.ffn_down(i).weight)


def _add_zero_ffn(tensors: _Tensors, prefix: str, hidden: int) -> None:
    tensors.add(f"{prefix}.ffn_norm.weight", torch.ones(hidden))
    tensors.add(f"{prefix}.ffn_gate.weight", torch.zeros(1, hidden))
    tensors.add(f"{prefix}.ffn_up.weight", torch.zeros(1, hidden))
    tensors.add(f"{prefix}.ffn_down.weight", torch.zeros(hidden, 1))
