"""Architecture adapters: one class per model family hides where attention, FFN and norms live.

The pruning algorithms only talk to a :class:`ModelAdapter`: they never branch on ``model_type`` to find,
measure or edit a module. (``model_type`` does key one protocol table: the length of EvoPress's reference
calibration samples, which the authors' scripts set per model family.)
Every structural edit goes through the adapter, which logs it (``adapter.ops``) so that a saved
checkpoint can be rebuilt by replaying the same edits on a fresh skeleton (see ``replay``).

What "removed" means, for every architecture:
- attention removed: the layer computes ``h + ffn_branch(h)``; the attention module and the norms that
  only feed it are replaced by parameter-free stand-ins, so their weights are freed;
- FFN removed: the layer computes ``h + attention_branch(h)``, likewise;
- layer removed: the decoder layer is deleted from the stack and the survivors are renumbered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn

from methods.errors import MethodError

# Replays one method-specific logged edit on an adapter (see ModelAdapter.replay).
Replayer = Callable[["ModelAdapter", dict[str, Any]], None]
NO_CUSTOM_OPS: Mapping[str, Replayer] = MappingProxyType({})


class RemovedAttention(nn.Module):
    """Stands where an attention module was removed: it adds nothing to the residual stream.

    With a KV cache it still appends one zero per token (a [batch, 1, tokens, 1] tensor) to its cache
    slot: transformers reads the number of cached tokens from the first cache layer to place positions
    and masks, and an empty slot there would make generation restart positions at 0.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, past_key_values: Any = None, **kwargs: Any):
        if past_key_values is not None:
            marker = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(marker, marker, self.layer_idx)
        # A 0-dim zero broadcasts in the residual add (h + 0 == h exactly) without a full-size buffer.
        return hidden_states.new_zeros(()), None


class RemovedFFN(nn.Module):
    """Stands where an FFN was removed: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(())


def linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear holding the given (already sliced) tensors; built on meta so nothing is initialised twice."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=old.weight.requires_grad)
    return new


class ModelAdapter:
    """Llama-style decoder (also the base for the other families).

    Class attributes name the submodules of one decoder layer; subclasses override only what differs.
    """

    model_types: ClassVar[tuple[str, ...]] = ("llama",)
    attn_name: ClassVar[str] = "self_attn"
    attn_norm_names: ClassVar[tuple[str, ...]] = ("input_layernorm",)  # norms that only feed attention
    attn_in_names: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")
    attn_out_name: ClassVar[str] = "o_proj"
    ffn_name: ClassVar[str] = "mlp"
    ffn_norm_names: ClassVar[tuple[str, ...]] = ("post_attention_layernorm",)  # norms that only feed the FFN
    ffn_in_names: ClassVar[tuple[str, ...]] = ("gate_proj", "up_proj")
    ffn_out_name: ClassVar[str] = "down_proj"
    needs_bos: ClassVar[bool] = False  # the model expects BOS at the start of every sequence
    # SliceGPT rotates the residual stream; it needs pre-norm layers whose norms fuse into linears.
    supports_rotation: ClassVar[bool] = True

    def __init__(self, model: nn.Module):
        self.model = model
        # The dense configuration and the edits made since: together they rebuild the pruned structure.
        self.base_config: dict[str, Any] = model.config.to_dict()
        self.ops: list[dict[str, Any]] = []

    # ---- where things are -------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def embedding(self) -> nn.Module:
        return self.model.model.embed_tokens

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def logits(self, normed_hidden: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """Logits from the output of the final norm, as the model's own forward computes them.

        ``head``: a linear map onto some rows of the LM head (a part of the vocabulary) instead of it.
        """
        logits = (head or self.lm_head())(normed_hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def attention(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.attn_name)

    def ffn(self, i: int) -> nn.Module:
        return getattr(self.layers[i], self.ffn_name)

    def has_attention(self, i: int) -> bool:
        return not isinstance(self.attention(i), RemovedAttention)

    def has_ffn(self, i: int) -> bool:
        return not isinstance(self.ffn(i), RemovedFFN)

    def ffn_down(self, i: int) -> nn.Linear:
        """The FFN's output projection: its input is the activation ``act(gate(x)) * up(x)`` scored by 2SSP."""
        return getattr(self.ffn(i), self.ffn_out_name)

    def ffn_width(self, i: int) -> int:
        return self.ffn_down(i).in_features if self.has_ffn(i) else 0

    def attn_inputs(self, i: int) -> list[nn.Linear]:
        return [getattr(self.attention(i), n) for n in self.attn_in_names]

    def attn_output(self, i: int) -> nn.Linear:
        return getattr(self.attention(i), self.attn_out_name)

    def ffn_inputs(self, i: int) -> list[nn.Linear]:
        return [getattr(self.ffn(i), n) for n in self.ffn_in_names]

    def attn_norms(self, i: int) -> list[nn.Module]:
        return [getattr(self.layers[i], n) for n in self.attn_norm_names]

    def ffn_norms(self, i: int) -> list[nn.Module]:
        return [getattr(self.layers[i], n) for n in self.ffn_norm_names]

    # ---- parameter counts -------------------------------------------------------------------
    def block_parameters(self) -> int:
        """Parameters inside the transformer layers: what sparsity is measured against."""
        return sum(p.numel() for p in self.layers.parameters())

    def total_parameters(self) -> int:
        # parameters() de-duplicates tied tensors (embedding / LM head), as a model size should.
        return sum(p.numel() for p in self.model.parameters())

    def attention_parameters(self, i: int) -> int:
        """The attention module of layer i with the norms that only feed it."""
        if not self.has_attention(i):
            return 0
        mods = [self.attention(i), *self.attn_norms(i)]
        return sum(p.numel() for m in mods for p in m.parameters())

    def ffn_parameters(self, i: int) -> int:
        if not self.has_ffn(i):
            return 0
        mods = [self.ffn(i), *self.ffn_norms(i)]
        return sum(p.numel() for m in mods for p in m.parameters())

    def ffn_neuron_parameters(self, i: int) -> int:
        """Parameters one FFN neuron owns (a row of each input projection, a column of the output one)."""
        per = sum(m.in_features + (1 if m.bias is not None else 0) for m in self.ffn_inputs(i))
        return per * self.ffn_rows_per_neuron() + self.ffn_down(i).out_features

    def ffn_rows_per_neuron(self) -> int:
        return 1

    # ---- surgery (logged, replayable) -------------------------------------------------------
    def remove_attention(self, i: int) -> None:
        if not self.has_attention(i):
            raise MethodError(f"layer {i} has no attention left to remove")
        self._strip_attention(i)
        self.ops.append({"op": "remove_attention", "layer": i})

    def remove_ffn(self, i: int) -> None:
        if not self.has_ffn(i):
            raise MethodError(f"layer {i} has no FFN left to remove")
        self._strip_ffn(i)
        self.ops.append({"op": "remove_ffn", "layer": i})

    def remove_layers(self, indices: Iterable[int]) -> None:
        """Delete whole decoder layers (indices into the current stack) and renumber the rest."""
        drop = sorted(set(indices))
        if any(not 0 <= i < self.num_layers for i in drop):
            raise MethodError(f"layer indices {drop} out of range for {self.num_layers} layers")
        keep = [i for i in range(self.num_layers) if i not in drop]
        self.model.model.layers = nn.ModuleList([self.layers[i] for i in keep])
        self.config.num_hidden_layers = len(keep)
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types is not None:
            self.config.layer_types = [layer_types[i] for i in keep]
        for new_idx, layer in enumerate(self.layers):
            self._renumber(layer, new_idx)
        self.ops.append({"op": "remove_layers", "layers": drop})

    def keep_ffn_neurons(self, i: int, keep: torch.Tensor | list[int]) -> None:
        """Shrink layer i's FFN to the given neurons (rows of the input projections, columns of the output)."""
        idx = torch.as_tensor(keep, dtype=torch.long).sort().values
        width = self.ffn_width(i)
        if idx.numel() == 0 or idx.unique().numel() != idx.numel() or idx.min() < 0 or idx.max() >= width:
            raise MethodError(f"layer {i}: neuron indices must be distinct, non-empty and below {width}")
        self._slice_ffn(i, idx)
        self.ops.append({"op": "keep_ffn_neurons", "layer": i, "width": int(idx.numel())})

    @contextmanager
    def without(self, attention: Iterable[int] = (), ffn: Iterable[int] = ()) -> Iterator[None]:
        """Temporarily remove sub-blocks (for a search): same computation as the real removal, undone on exit."""
        saved: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for i in attention:
                saved += self._swap(i, [self.attn_name, *self.attn_norm_names], RemovedAttention(i))
            for i in ffn:
                saved += self._swap(i, [self.ffn_name, *self.ffn_norm_names], RemovedFFN())
            yield
        finally:
            for layer, name, module in reversed(saved):
                setattr(layer, name, module)

    def replay(self, ops: list[dict[str, Any]], custom: Mapping[str, Replayer] = NO_CUSTOM_OPS) -> None:
        """Re-apply logged edits to a fresh skeleton of the dense model (weights are loaded afterwards).

        ``custom`` replays the method-specific edits by op name (``methods.custom_ops.REPLAYERS``): the
        adapter is given them rather than importing the methods, which themselves build on the adapter.
        """
        for op in ops:
            kind = op["op"]
            if kind == "remove_attention":
                self.remove_attention(op["layer"])
            elif kind == "remove_ffn":
                self.remove_ffn(op["layer"])
            elif kind == "remove_layers":
                self.remove_layers(op["layers"])
            elif kind == "keep_ffn_neurons":
                self.keep_ffn_neurons(op["layer"], list(range(op["width"])))
            elif kind in custom:
                custom[kind](self, op)
            else:
                raise MethodError(f"unknown surgery op '{kind}' in checkpoint manifest (known besides the "
                                  f"adapter's own: {sorted(custom)})")

    # ---- internals --------------------------------------------------------------------------
    def _swap(self, i: int, names: list[str], stand_in: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
        layer = self.layers[i]
        if isinstance(getattr(layer, names[0]), (RemovedAttention, RemovedFFN)):
            raise MethodError(f"layer {i}: {names[0]} is already removed")
        saved = [(layer, n, getattr(layer, n)) for n in names]
        setattr(layer, names[0], stand_in)
        for n in names[1:]:
            setattr(layer, n, nn.Identity())
        return saved

    def _strip_attention(self, i: int) -> None:
        self._swap(i, [self.attn_name, *self.attn_norm_names], RemovedAttention(self._attn_index(i)))

    def _strip_ffn(self, i: int) -> None:
        self._swap(i, [self.ffn_name, *self.ffn_norm_names], RemovedFFN())

    def _attn_index(self, i: int) -> int:
        return getattr(self.attention(i), "layer_idx", i)

    def _renumber(self, layer: nn.Module, idx: int) -> None:
        """Cache slots are addressed by layer index: keep them dense after layers are deleted."""
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = idx
        attn = getattr(layer, self.attn_name)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = idx

    def _slice_ffn(self, i: int, idx: torch.Tensor) -> None:
        ffn = self.ffn(i)
        for name in self.ffn_in_names:
            old = getattr(ffn, name)
            w = old.weight.index_select(0, idx.to(old.weight.device))
            b = old.bias.index_select(0, idx.to(old.bias.device)) if old.bias is not None else None
            setattr(ffn, name, linear_like(old, w, b))
        old = getattr(ffn, self.ffn_out_name)
        w = old.weight.index_select(1, idx.to(old.weight.device))
        setattr(ffn, self.ffn_out_name, linear_like(old, w, old.bias))
        self._after_ffn_resize(ffn, idx.numel())

    def _after_ffn_resize(self, ffn: nn.Module, width: int) -> None:
        if hasattr(ffn, "intermediate_size"):
            ffn.intermediate_size = width


class MistralAdapter(ModelAdapter):
    model_types = ("mistral",)


class Qwen2Adapter(ModelAdapter):
    model_types = ("qwen2",)


class Phi3Adapter(ModelAdapter):
    """Phi-3 fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj`` (gate rows first, then up)."""

    model_types = ("phi3",)
    attn_in_names = ("qkv_proj",)
    ffn_in_names = ("gate_up_proj",)

    def ffn_rows_per_neuron(self) -> int:
        return 2

    def ffn_neuron_parameters(self, i: int) -> int:
        fused = self.ffn_inputs(i)[0]
        return 2 * (fused.in_features + (1 if fused.bias is not None else 0)) + self.ffn_down(i).out_features

    def _slice_ffn(self, i: int, idx: torch.Tensor) -> None:
        ffn = self.ffn(i)
        width = self.ffn_width(i)
        fused = ffn.gate_up_proj
        rows = torch.cat([idx, idx + width]).to(fused.weight.device)  # the same neurons in both halves
        bias = fused.bias.index_select(0, rows) if fused.bias is not None else None
        ffn.gate_up_proj = linear_like(fused, fused.weight.index_select(0, rows), bias)
        old = ffn.down_proj
        ffn.down_proj = linear_like(old, old.weight.index_select(1, idx.to(old.weight.device)), old.bias)


class Gemma3Adapter(ModelAdapter):
    """Gemma-3 has sandwich norms (before and after each branch) and wants BOS at every sequence start."""

    model_types = ("gemma3_text",)
    attn_norm_names = ("input_layernorm", "post_attention_layernorm")
    ffn_norm_names = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
    needs_bos = True
    # A norm after the branch output does not commute with a rotation of the residual stream.
    supports_rotation = False


ADAPTERS: tuple[type[ModelAdapter], ...] = (ModelAdapter, MistralAdapter, Qwen2Adapter, Phi3Adapter, Gemma3Adapter)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str) -> type[ModelAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise MethodError(
        f"architecture '{model_type}' is not supported; supported: {', '.join(supported_model_types())}"
    )


def adapt(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded causal LM."""
    return adapter_class(model.config.model_type)(model)
