"""The modules of a SliceGPT model and the structural edits that build them (arXiv 2401.15024).

A sliced model carries its residual stream in a rotated, narrower basis. Three pieces make that work:

- :class:`SliceRMSNorm`: the norms after fusion. Their scales live in the following linears, so what is
  left is ``x / rms(x)``, which commutes with an orthogonal rotation. The mean of squares divides by
  the ORIGINAL hidden size: after slicing, the dropped coordinates held little energy, so the sum over
  the kept ones divided by ``d`` is the dense model's RMS (dividing by the sliced width would inflate it).
  :class:`NormSpec` says which epsilon and compute dtype the replaced norms get (the variants differ).
- :class:`SlicedLayerMixin`: the forward of a pre-norm decoder layer whose two residual adds go through
  shortcut matrices ``Q_in^T Q_mid`` and ``Q_mid^T Q_out`` (each branch writes in its own basis).
- :func:`apply_structure`: the final shapes from the list of stream widths alone, on a weightless
  skeleton, so that a saved checkpoint's weights load strictly into the rebuilt model.

A sliced layer stays an instance of its architecture's decoder-layer class (a subclass is made on the
fly with the mixin first), so transformers' class-keyed machinery (``output_hidden_states`` recording,
gradient checkpointing) keeps working; attention, rotary embeddings and the KV cache live inside the
attention module and are untouched by the rotation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from methods.arch import ModelAdapter
from methods.errors import MethodError

NormCompute = Literal["float32", "input"]


class SliceRMSNorm(nn.Module):
    """``x / sqrt(sum(x**2) / mean_dim + eps)`` without a scale (fused away), ``mean_dim`` = the dense width.

    ``compute``: ``float32`` computes in at least float32, as the models' own RMSNorms do (float64 models
    keep float64); ``input`` computes in the input's dtype, float16 upcast to float32 (bf16 stays bf16), as
    the reference harness's ``RMSN`` does.
    """

    def __init__(self, mean_dim: int, eps: float, compute: NormCompute = "float32"):
        super().__init__()
        self.mean_dim = mean_dim
        self.eps = eps
        self.compute = compute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = x.to(self._work_dtype(x.dtype))
        variance = work.pow(2).sum(-1, keepdim=True) / self.mean_dim
        return (work * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def _work_dtype(self, dtype: torch.dtype) -> torch.dtype:
        if self.compute == "input":
            return torch.float32 if dtype == torch.float16 else dtype
        return torch.promote_types(dtype, torch.float32)

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}, compute={self.compute}"


@dataclass(frozen=True)
class NormSpec:
    """How the replaced norms compute: ``eps`` None keeps each replaced norm's own epsilon."""

    eps: float | None = None
    compute: NormCompute = "float32"

    def replacing(self, norm: nn.Module, mean_dim: int) -> SliceRMSNorm:
        return SliceRMSNorm(mean_dim, norm_eps(norm) if self.eps is None else self.eps, self.compute)


def _shortcut(residual: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
    return residual if q is None else residual @ q


class SlicedLayerMixin(nn.Module):
    """Pre-norm layer forward with rotated residual adds: ``h Q_a + attn(norm(h))``, then the same for the FFN.

    ``slicegpt_names`` = (attention, attention norm, FFN, FFN norm) attribute names of the layer. A
    shortcut that is None is the identity: while the layer is being sliced, the half not yet rotated
    runs exactly as in the dense model.
    """

    slicegpt_names: tuple[str, str, str, str]
    attn_shortcut_Q: nn.Parameter | None
    mlp_shortcut_Q: nn.Parameter | None

    def forward(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        attn, attn_norm, ffn, ffn_norm = self.slicegpt_names
        out = getattr(self, attn)(hidden_states=getattr(self, attn_norm)(hidden_states), **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        hidden_states = _shortcut(hidden_states, self.attn_shortcut_Q) + self._dropout("resid_attn_dropout", out)
        out = getattr(self, ffn)(getattr(self, ffn_norm)(hidden_states))
        return _shortcut(hidden_states, self.mlp_shortcut_Q) + self._dropout("resid_mlp_dropout", out)

    def _dropout(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Residual dropout where the architecture has one (Phi-3): identity in eval, kept for fine-tuning."""
        drop = getattr(self, name, None)
        return x if drop is None else drop(x)


@functools.cache
def sliced_class(base: type[nn.Module]) -> type[nn.Module]:
    """The decoder-layer class ``base`` with the sliced forward (one class per base, made once)."""
    return type(f"SliceGPT{base.__name__}", (SlicedLayerMixin, base), {"__module__": __name__})


def make_sliced(adapter: ModelAdapter, i: int) -> nn.Module:
    """Turn layer i into its sliced variant in place (same children, same state-dict names), no shortcut yet."""
    layer = adapter.layers[i]
    if isinstance(layer, SlicedLayerMixin):
        raise MethodError(f"layer {i} is already sliced")
    layer.__class__ = sliced_class(type(layer))
    layer.slicegpt_names = (adapter.attn_name, adapter.attn_norm_names[0], adapter.ffn_name, adapter.ffn_norm_names[0])
    layer.register_parameter("attn_shortcut_Q", None)
    layer.register_parameter("mlp_shortcut_Q", None)
    return layer


def norm_eps(norm: nn.Module) -> float:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if eps is None:
        raise MethodError(f"cannot read the epsilon of {type(norm).__name__}")
    return float(eps)


def replace_child(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child inside ``root`` (the final norm has no setter in the adapter)."""
    found = False
    for module in root.modules():
        for name, child in list(module.named_children()):
            if child is old:
                setattr(module, name, new)
                found = True
    if not found:
        raise MethodError(f"{type(old).__name__} is not part of the model")


def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give ``linear`` new (rotated, sliced) tensors in place, keeping the module object the adapter returns."""
    grad = linear.weight.requires_grad
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias.contiguous(), requires_grad=grad)
    linear.out_features, linear.in_features = weight.shape


def set_embedding(embedding: nn.Embedding, weight: torch.Tensor) -> None:
    embedding.weight = nn.Parameter(weight.contiguous(), requires_grad=embedding.weight.requires_grad)
    embedding.embedding_dim = weight.shape[1]


def is_tied(adapter: ModelAdapter) -> bool:
    return (adapter.lm_head().weight is adapter.embedding().weight
            or bool(getattr(adapter.config, "tie_word_embeddings", False)))


def untie(adapter: ModelAdapter) -> None:
    """Give the LM head its own weight: the embedding is rotated by Q_0, the head's input by Q_L."""
    adapter.config.tie_word_embeddings = False
    head = adapter.lm_head()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model = adapter.model
    if hasattr(model, "all_tied_weights_keys"):  # transformers' own record of what it ties, kept truthful
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def _meta(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device="meta")


def _meta_in(linear: nn.Linear, width: int) -> None:
    set_linear(linear, _meta((linear.out_features, width), linear.weight), linear.bias)


def _meta_out(linear: nn.Linear, width: int) -> None:
    bias = None if linear.bias is None else _meta((width,), linear.bias)
    set_linear(linear, _meta((width, linear.in_features), linear.weight), bias)


def apply_structure(adapter: ModelAdapter, widths: list[int], untied: bool, norm: NormSpec | None = None) -> None:
    """Shapes of the sliced model on a weightless skeleton (checkpoint replay); the weights come afterwards.

    ``widths`` are the residual-stream widths: entry 0 after the embedding, 2i+1 between layer i's
    attention and FFN, 2i+2 after layer i (the last one is the LM head's input). ``norm``: how the
    replaced norms compute (default: each norm's own epsilon, at least float32).
    """
    L, d = adapter.num_layers, adapter.hidden_size
    if len(widths) != 2 * L + 1 or not all(0 < w <= d for w in widths):
        raise MethodError(f"slicegpt op: {len(widths)} widths for {L} layers (need {2 * L + 1}, each in 1..{d})")
    norm = norm or NormSpec()
    if untied:
        untie(adapter)
    emb = adapter.embedding()
    set_embedding(emb, _meta((emb.weight.shape[0], widths[0]), emb.weight))
    for i in range(L):
        a, m, o = widths[2 * i : 2 * i + 3]
        norms = (norm.replacing(adapter.attn_norms(i)[0], d), norm.replacing(adapter.ffn_norms(i)[0], d))
        layer = make_sliced(adapter, i)
        setattr(layer, adapter.attn_norm_names[0], norms[0])
        setattr(layer, adapter.ffn_norm_names[0], norms[1])
        for lin in adapter.attn_inputs(i):
            _meta_in(lin, a)
        _meta_out(adapter.attn_output(i), m)
        for lin in adapter.ffn_inputs(i):
            _meta_in(lin, m)
        _meta_out(adapter.ffn_down(i), o)
        like = adapter.ffn_down(i).weight
        layer.attn_shortcut_Q = nn.Parameter(_meta((a, m), like), requires_grad=like.requires_grad)
        layer.mlp_shortcut_Q = nn.Parameter(_meta((m, o), like), requires_grad=like.requires_grad)
    _meta_in(adapter.lm_head(), widths[-1])
    final = adapter.final_norm()
    replace_child(adapter.model, final, norm.replacing(final, d))
