"""The tokenizer of a GGUF export: copied from an embedded model's own GGUF, or described from a BPE tokenizer.

llama.cpp tokenizes with its own code, selected by ``tokenizer.ggml.model`` and a pre-tokenizer name
(``tokenizer.ggml.pre``). A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama-3, Qwen2 style) maps onto it
when its pre-tokenizer is one llama.cpp implements; the mapping below recognises those by the
pre-tokenizer of the ``tokenizer.json`` and refuses any other, since a wrong guess would tokenize text
differently in llama.cpp without any error. SentencePiece tokenizers (Llama-2, Mistral) are refused:
their GGUF form needs the SentencePiece scores, which a ``tokenizer.json`` does not keep exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

# The split expressions of two pre-tokenizers as their tokenizer.json files write them (Llama-3 groups
# digits by three, Qwen2 splits every digit); llama.cpp knows them as "llama-bpe" and "qwen2".
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class VocabPlan:
    """Where the exported tokenizer comes from: a source GGUF to copy, or a tokenizer.json to describe."""

    source_gguf: Path | None
    pre: str | None  # llama.cpp's pre-tokenizer name, for a described tokenizer


def _byte_level(node: dict[str, Any] | None, use_regex: bool) -> bool:
    return bool(node) and node.get("type") == "ByteLevel" and bool(node.get("use_regex", True)) == use_regex


def _split_pattern(node: dict[str, Any]) -> str | None:
    pattern = node.get("pattern") or {}
    return pattern.get("Regex") if node.get("type") == "Split" else None


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when it has none of its known forms."""
    pre = tokenizer_json.get("pre_tokenizer")
    if _byte_level(pre, use_regex=True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
            and _byte_level(steps[1], use_regex=True):
        return "smollm"
    if len(steps) == 2 and _byte_level(steps[1], use_regex=False):
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(_split_pattern(steps[0]) or "")
    return None


def tokenizer_json_of(tokenizer: Any) -> dict[str, Any] | None:
    """The ``tokenizer.json`` of a fast Hugging Face tokenizer (None for a slow one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def plan_vocab(source: dict[str, str], tokenizer_json: dict[str, Any] | None,
               embedded_gguf: Path | None) -> VocabPlan | str:
    """How the tokenizer will be written, or why it cannot be (one line)."""
    if embedded_gguf is not None:
        return VocabPlan(embedded_gguf, None)
    name = source.get("name", "the model")
    if tokenizer_json is None:
        return (f"the tokenizer of {name} has no tokenizer.json (a slow tokenizer); "
                "GGUF export needs a byte-level BPE one")
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        kind = model.get("type", "unknown")
        return (f"the tokenizer of {name} is a {kind} tokenizer without byte-level decoding; "
                "GGUF export writes byte-level BPE ones only")
    pre = pre_tokenizer_name(tokenizer_json)
    if pre is None:
        return (f"the pre-tokenizer of {name} is none of the forms llama.cpp implements that prunebench recognises "
                "(GPT-2, SmolLM, Llama-3, Qwen2)")
    return VocabPlan(None, pre)


def copy_vocab(writer: gguf.GGUFWriter, source_gguf: Path) -> int:
    """Copy every ``tokenizer.*`` field of the source GGUF; returns the number of tokens."""
    reader = gguf.GGUFReader(source_gguf)
    count = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(key, value, main, sub)
        if key == "tokenizer.ggml.tokens":
            count = len(value)
    return count


def describe_vocab(writer: gguf.GGUFWriter, tokenizer: Any, tokenizer_json: dict[str, Any], pre: str,
                   vocab_size: int) -> int:
    """Write a byte-level BPE tokenizer: tokens in id order (padded to the model's vocabulary), types, merges."""
    vocab: dict[str, int] = dict(tokenizer_json["model"]["vocab"])
    special = {t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
    for added in tokenizer_json.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    by_id = {i: t for t, i in vocab.items()}
    size = max(vocab_size, max(by_id) + 1)
    tokens: list[str] = []
    types: list[int] = []
    added = {t["content"] for t in tokenizer_json.get("added_tokens", [])}
    for i in range(size):
        token = by_id.get(i)
        if token is None:  # ids the model has rows for but the tokenizer never emits
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special
                         else gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    bos = getattr(tokenizer, "bos_token_id", None)
    # Whether the tokenizer itself prepends BOS, as llama.cpp should when it tokenizes text for this model.
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(bos is not None and bool(probe) and probe[0] == bos)
    writer.add_add_eos_token(False)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    return size
