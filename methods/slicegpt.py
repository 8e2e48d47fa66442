"""SliceGPT (arXiv 2401.15024): rotate the residual stream onto its principal components, delete the smallest.

1. Fuse every RMSNorm scale into the linears it feeds (attention / FFN inputs, the LM head); the norms
   become plain RMS normalisations over the ORIGINAL width (``SliceRMSNorm``), which commute with
   rotations. Tied embeddings are untied: the embedding is rotated by Q_0, the head's input by Q_L.
2. Layer by layer, in order, on the already-sliced upstream model: the PCA (eigendecomposition of the
   damped ``X^T X`` in float64, damping 1 % of the mean diagonal) of the signal entering the layer, of
   the signal between its attention and its FFN, and of its output gives Q_in, Q_mid, Q_out. The
   weights reading the stream are right-multiplied by Q (kept columns only), those writing it are
   left-multiplied by Q^T (kept rows only), and each residual add goes through a shortcut matrix
   ``Q_in^T Q_mid`` / ``Q_mid^T Q_out``: the principal directions past the width are deleted.
3. Width ``floor((1 - s) * d / 8) * 8``, the same for all layers (docs/methods.md). As in the authors'
   code, the LM head's input is rotated but not sliced unless ``slice_head``.

The target sparsity ``s`` maps to a width in one of two ways (option ``mapping``):
- ``slicing`` (default; docs/methods.md, as the reference harness and the SliceGPT paper quote it): ``s``
  is the SLICING fraction. The achieved PARAMETER sparsity is lower: the shortcut matrices add ``2 w^2`` per layer
  and count as kept (SmolLM2 at s = 0.25: 14.2 %). Both are reported; a slicing fraction whose sliced
  model would not be smaller than the dense one is refused.
- ``parameters``: the widest multiple-of-8 width whose achieved parameter sparsity reaches ``s``.

Two variants (option ``variant``; docs/methods.md, docs/reference-harness.md):
- ``reference`` (default), as the 2SSP authors' harness runs Microsoft's SliceGPT code: the tied head is
  untied, then every embedding row's mean is subtracted (this changes the model's function); the
  replaced norms use eps 1e-5 and compute in the model dtype (float16 upcast to float32); each kept basis
  is turned by a random orthogonal k x k matrix (numpy's legacy RNG seeded with the run's seed); the
  calibration states and the shortcut matrices are multiplied in the model dtype, and fused weights
  are cast back before they are rotated.
- ``paper``: the function-preserving fusion above; each replaced norm keeps its own eps and computes
  in at least float32; the bases are the PCA eigenvectors; states and shortcuts in float64, one rounding.

Ablation: ``directions="random"`` deletes the same number of Haar-random orthonormal directions
(seeded) instead of the smallest principal ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from methods.arch import ModelAdapter
from methods.base import (
    CalibrationNeeds,
    MethodOptions,
    Progress,
    PruneContext,
    PruningMethod,
    StageTimer,
    check_sparsity,
    module_parameters,
    no_progress,
)
from methods.errors import MethodError, UnsupportedArchitecture
from methods.runner import LayerRunner
from methods.slicegpt_layers import (
    NormSpec,
    SlicedLayerMixin,
    apply_structure,
    is_tied,
    make_sliced,
    replace_child,
    set_embedding,
    set_linear,
    untie,
)

OP = "slicegpt"
Variant = Literal["reference", "paper"]


@dataclass(frozen=True)
class VariantSpec:
    """What a variant changes; the PCA, the widths and the structure are the same in both."""

    mean_subtract: bool  # subtract each embedding row's mean before fusing (the head, untied first, keeps it)
    norm: NormSpec  # epsilon and compute dtype of the replaced norms
    random_orientation: bool  # turn each kept basis by a random orthogonal k x k matrix (numpy's legacy RNG)
    dtype_rounding: bool  # states and shortcuts multiplied in the model dtype; fused weights cast before rotating


VARIANTS: dict[str, VariantSpec] = {
    "reference": VariantSpec(True, NormSpec(1e-5, "input"), True, True),
    "paper": VariantSpec(False, NormSpec(), False, False),
}


class SliceGPTOptions(MethodOptions):
    variant: Variant = Field(
        "reference", description="reference: the 2SSP authors' harness (embedding mean subtracted, eps 1e-5 in "
        "the model dtype, random orientation); paper: function-preserving fusion, PCA orientation"
    )
    mapping: Literal["slicing", "parameters"] = Field(
        "slicing", description="sparsity is the slicing fraction (reference) or the parameter sparsity to reach"
    )
    slice_head: bool = Field(False, description="also slice the LM head's input (authors' default: rotate only)")
    directions: Literal["pca", "random"] = Field("pca", description="ablation: delete random orthonormal directions")
    damp: float = Field(0.01, ge=0, description="damping of X^T X, relative to its mean diagonal")
    round_to: int = Field(8, ge=1, description="the width is rounded down to a multiple of this")
    batch: int = Field(8, ge=1, description="calibration samples run through a layer together")


# ---- shapes and parameter counts (no forward: plan() runs on a weightless skeleton) ---------------
def check_rotatable(adapter: ModelAdapter) -> None:
    """Refuse models whose structure the rotation cannot go through, with the reason in one line."""
    kind = adapter.config.model_type
    if not adapter.supports_rotation:
        raise UnsupportedArchitecture(
            f"SliceGPT cannot rotate {kind}: its norms after the attention/FFN outputs do not commute with "
            "a rotation of the residual stream"
        )
    d = adapter.hidden_size
    for i in range(adapter.num_layers):
        if isinstance(adapter.layers[i], SlicedLayerMixin):
            raise MethodError("SliceGPT: this model is already sliced")
        if not (adapter.has_attention(i) and adapter.has_ffn(i)):
            raise MethodError(f"SliceGPT needs every layer's attention and FFN; layer {i} lost one")
        norms = [*adapter.attn_norms(i), *adapter.ffn_norms(i)]
        if len(norms) != 2 or not all(_fusable(n, d) for n in norms):
            raise MethodError("SliceGPT needs one RMSNorm (scale only) before each branch; "
                              f"layer {i} of {kind} differs")
    if not _fusable(adapter.final_norm(), d):
        raise MethodError(f"SliceGPT needs an RMSNorm (scale only) before the LM head of {kind}")


def _fusable(norm: nn.Module, d: int) -> bool:
    weight = getattr(norm, "weight", None)
    return weight is not None and tuple(weight.shape) == (d,) and getattr(norm, "bias", None) is None


def stream_widths(num_layers: int, width: int, head_width: int) -> list[int]:
    """Widths of the residual stream: after the embedding, then (between branches, after) per layer."""
    return [width] * (2 * num_layers) + [head_width]


def _bias(lin: nn.Linear) -> int:
    return 0 if lin.bias is None else lin.bias.numel()


@dataclass(frozen=True)
class LayerShape:
    """One layer's parameter count as a function of its stream widths (input a, mid m, output o):
    ``fixed + a * per_in + m * per_mid + o * per_out + a * m + m * o`` (the last two: the shortcuts)."""

    fixed: int  # what slicing does not touch: input-side biases, any other parameter of the layer
    per_in: int  # rows of the attention inputs
    per_mid: int  # columns of the attention output (+ its bias) and rows of the FFN inputs
    per_out: int  # columns of the FFN output (+ its bias)

    @classmethod
    def of(cls, adapter: ModelAdapter, i: int) -> LayerShape:
        ins, out, f_ins, down = (adapter.attn_inputs(i), adapter.attn_output(i), adapter.ffn_inputs(i),
                                 adapter.ffn_down(i))
        touched = [*ins, out, *f_ins, down, *adapter.attn_norms(i), *adapter.ffn_norms(i)]  # norms lose their scales
        fixed = module_parameters(adapter.layers[i]) - sum(module_parameters(t) for t in touched)
        fixed += sum(_bias(lin) for lin in [*ins, *f_ins])
        return cls(
            fixed=fixed,
            per_in=sum(lin.out_features for lin in ins),
            per_mid=out.in_features + (out.bias is not None) + sum(lin.out_features for lin in f_ins),
            per_out=down.in_features + (down.bias is not None),
        )

    def parameters(self, a: int, m: int, o: int) -> int:
        return self.fixed + a * self.per_in + m * self.per_mid + o * self.per_out + a * m + m * o


@dataclass(frozen=True)
class SliceCount:
    width: int
    head_width: int
    blocks_before: int
    blocks_after: int
    total_before: int
    total_after: int
    untie: bool

    @property
    def sparsity(self) -> float:
        return 1 - self.blocks_after / self.blocks_before


@dataclass(frozen=True)
class ModelShape:
    """Everything the parameter counts of a slicing need, read once from a (possibly weightless) model.

    Tied embeddings count once before and twice after (the head is untied). Counted by parts, because
    a weightless skeleton may hold a tied head as a separate tensor.
    """

    d: int
    layers: tuple[LayerShape, ...]
    blocks: int
    rest: int  # parameters outside the layers that slicing leaves alone (none in these models)
    vocab: int
    head_rows: int
    head_bias: int
    final_norm: int
    tied: bool

    @classmethod
    def of(cls, adapter: ModelAdapter) -> ModelShape:
        emb, head, final = adapter.embedding(), adapter.lm_head(), adapter.final_norm()
        blocks = adapter.block_parameters()
        rest = adapter.total_parameters() - blocks - module_parameters(emb) - module_parameters(final)
        rest -= 0 if head.weight is emb.weight else module_parameters(head)
        return cls(adapter.hidden_size, tuple(LayerShape.of(adapter, i) for i in range(adapter.num_layers)), blocks,
                   rest, emb.weight.shape[0], head.weight.shape[0], _bias(head), module_parameters(final),
                   is_tied(adapter))

    def blocks_after(self, widths: list[int]) -> int:
        return sum(s.parameters(*widths[2 * i : 2 * i + 3]) for i, s in enumerate(self.layers))

    def count(self, width: int, slice_head: bool) -> SliceCount:
        head_width = width if slice_head else self.d
        after = self.blocks_after(stream_widths(len(self.layers), width, head_width))
        head_dense = 0 if self.tied else self.head_rows * self.d + self.head_bias
        before_total = self.blocks + self.rest + self.vocab * self.d + self.final_norm + head_dense
        after_total = after + self.rest + self.vocab * width + self.head_rows * head_width + self.head_bias
        return SliceCount(width, head_width, self.blocks, after, before_total, after_total, self.tied)


def slicing_width(fraction: float, d: int, round_to: int) -> int:
    """``floor((1 - s) * d / round_to) * round_to``; the epsilon keeps e.g. 0.7 * 1000 from rounding down."""
    return math.floor((1 - fraction) * d / round_to + 1e-9) * round_to


def _candidate_widths(d: int, round_to: int) -> range:
    return range(d - d % round_to, 0, -round_to)


def plan_slicing(adapter: ModelAdapter, sparsity: float, opts: SliceGPTOptions) -> SliceCount:
    """The width for the target and what it achieves, or a one-line MethodError with the feasible range."""
    check_rotatable(adapter)
    check_sparsity(sparsity)
    d = adapter.hidden_size
    widths = _candidate_widths(d, opts.round_to)
    if not widths:
        raise MethodError(f"SliceGPT: round_to={opts.round_to} is wider than the hidden size {d}")
    shape = ModelShape.of(adapter)
    counts = [shape.count(w, opts.slice_head) for w in widths]  # widest first
    removing = [c for c in counts if c.sparsity > 0]
    if not removing:
        raise MethodError(f"SliceGPT: no width removes parameters from this {d}-wide model (the shortcuts cost more)")
    if opts.mapping == "parameters":
        reaching = [c for c in counts if c.sparsity >= sparsity - 1e-12]
        if not reaching:
            raise MethodError(
                f"SliceGPT cannot reach parameter sparsity {sparsity}: the narrowest width ({widths[-1]}) removes "
                f"{counts[-1].sparsity:.2%}; feasible range here: 0-{counts[-1].sparsity:.3f}"
            )
        return reaching[0]
    w = slicing_width(sparsity, d, opts.round_to)
    low, high = 1 - removing[0].width / d, 1 - widths[-1] / d
    span = f"slicing fractions that remove parameters here: {low:.3f}-{high:.3f}"
    if w < opts.round_to:
        raise MethodError(f"SliceGPT: slicing fraction {sparsity} leaves no width of {d}; {span}")
    count = shape.count(w, opts.slice_head)
    if count.sparsity <= 0:
        raise MethodError(
            f"SliceGPT: slicing fraction {sparsity} keeps width {w} of {d}, which with the shortcut matrices "
            f"removes no parameters (achieved sparsity {count.sparsity:.2%}); {span}"
        )
    return count


# ---- the rotation ---------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def _capture(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """The input ``module`` receives during ``run()``; the pass stops there."""
    captured: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"{type(module).__name__} was not reached by the forward pass")
    return captured[0]


def gram(x: torch.Tensor) -> torch.Tensor:
    """``X^T X`` in float64 over all tokens of a batch."""
    flat = x.reshape(-1, x.shape[-1]).double()
    return flat.T @ flat


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed so the law is uniform)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def random_orientation(rng: np.random.RandomState, k: int) -> torch.Tensor:
    """The reference's random final orientation of a k-wide kept basis: the Q factor of numpy's QR of a
    uniform k x k draw (float64). numpy's QR, as the reference: torch's matches it on the CPU only to
    rounding (1e-15), and another backend's QR need not choose the same column signs."""
    q, _ = np.linalg.qr(rng.rand(k, k))
    return torch.from_numpy(q)


def principal_directions(h: torch.Tensor, width: int, damp: float) -> tuple[torch.Tensor, float]:
    """The ``width`` leading eigenvectors of the damped ``X^T X`` (columns, float64) and the energy they keep.

    Eigenvalues by decreasing value, ties by index (stable sort). The energy share is
    ``trace(Q^T H Q) / trace(H)`` of the undamped ``H``: how much of the signal survives the slicing.
    """
    damped = h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    values, vectors = torch.linalg.eigh(damped)
    q = vectors[:, torch.sort(values, descending=True, stable=True).indices[:width]]
    return q, float((q * (h @ q)).sum() / h.diagonal().sum())


def _rotate_inputs(linears: list[nn.Linear], scale: torch.Tensor, q: torch.Tensor, round_fused: bool) -> None:
    """``W <- (W diag(scale)) Q``: the fused norm scale, then the stream's basis, in float64. ``round_fused``
    casts the fused weight to the model dtype before rotating (the reference fuses first, rotates later)."""
    for lin in linears:
        fused = lin.weight.double() * scale.double()
        if round_fused:
            fused = fused.to(lin.weight.dtype).double()
        set_linear(lin, (fused @ q.to(lin.weight.device)).to(lin.weight.dtype), lin.bias)


def _rotate_output(lin: nn.Linear, q: torch.Tensor) -> None:
    """``W <- Q^T W``, ``b <- b Q``: the branch writes in the stream's new basis, only the kept rows."""
    q = q.to(lin.weight.device)
    bias = None if lin.bias is None else (lin.bias.double() @ q).to(lin.bias.dtype)
    set_linear(lin, (q.T @ lin.weight.double()).to(lin.weight.dtype), bias)


def _shortcut(q: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(q.to(dtype=like.dtype, device=like.device).contiguous(), requires_grad=like.requires_grad)


class _Slicer:
    """The sequential rotate-and-slice pass of one model (state shared by the per-layer steps).

    With ``directions="random"`` the bases do not depend on the signals, so no calibration forward runs.
    """

    def __init__(self, adapter: ModelAdapter, widths: list[int], directions: str, damp: float, seed: int,
                 timer: StageTimer, spec: VariantSpec):
        self.adapter, self.widths, self.damp, self.timer, self.spec = adapter, widths, damp, timer, spec
        self.pca = directions == "pca"
        self.generator = torch.Generator().manual_seed(seed)
        # The reference seeds numpy's global legacy RNG once per run and draws only the orientations from it;
        # a RandomState of the same seed is that stream, without touching the global one.
        self.orientations = np.random.RandomState(seed) if spec.random_orientation else None
        self.d = adapter.hidden_size
        self.device = adapter.embedding().weight.device
        self.runner = LayerRunner(adapter)
        self.mass: dict[str, Any] = {"embedding": None, "attention": [], "mlp": []}

    def _basis(self, width: int, signals: Iterator[torch.Tensor]) -> tuple[torch.Tensor, float | None]:
        """Kept directions at one stream point (PCA of the signals, or random ones), in the variant's orientation.

        The random orientation turns the basis within the kept subspace, so the energy share is unchanged.
        """
        q, mass = self._directions(width, signals)
        if self.orientations is not None:
            with self.timer.stage("scoring"):
                q = q @ random_orientation(self.orientations, width).to(q.device)
        return q, mass

    def _directions(self, width: int, signals: Iterator[torch.Tensor]) -> tuple[torch.Tensor, float | None]:
        if not self.pca:
            with self.timer.stage("scoring"):
                return random_orthogonal(self.d, self.generator)[:, :width].to(self.device), None
        h: torch.Tensor | None = None
        for x in signals:
            with self.timer.stage("scoring"):
                h = gram(x) if h is None else h + gram(x)
        if h is None:
            raise MethodError("SliceGPT needs at least one calibration sample")
        with self.timer.stage("scoring"):
            return principal_directions(h, width, self.damp)

    def _forward(self, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self.timer.stage("calibration_forward"):
            return run()

    def _rotated(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Calibration states in the new basis, kept directions only: a model-dtype product (reference) or a
        float64 one with one rounding (paper)."""
        if self.spec.dtype_rounding:
            return x @ q.to(x.dtype)
        return (x.double() @ q).to(x.dtype)

    def _shortcut(self, left: torch.Tensor, right: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
        """The shortcut ``left @ right``: a product of model-dtype matrices (reference) or of float64 ones."""
        if self.spec.dtype_rounding:
            return _shortcut(left.to(like.dtype) @ right.to(like.dtype), like)
        return _shortcut(left @ right, like)

    def _layer0_inputs(self, calibration: torch.Tensor, batch: int,
                       states: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        model, first = self.adapter.model.model, self.adapter.layers[0]
        self._forward(lambda: self.runner.trace(calibration[:1])[0])  # per-layer masks and rotary tables
        for chunk in calibration.split(batch):
            ids = chunk.to(self.device)
            states.append(self._forward(lambda ids=ids: _capture(first, lambda: model(input_ids=ids, use_cache=False))))
            yield states[-1]

    def _mids(self, i: int, states: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The stream between layer i's attention and FFN (the FFN norm's input); the pass stops there."""
        norm = self.adapter.ffn_norms(i)[0]
        for x in states:
            yield self._forward(lambda x=x: _capture(norm, lambda: self.runner.run(x, i, i + 1)))

    def _outputs(self, i: int, states: list[torch.Tensor], outs: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        for x in states:
            outs.append(self._forward(lambda x=x: self.runner.run(x, i, i + 1)))
            yield outs[-1]

    def center_embedding(self) -> None:
        """The reference's first step: untie the head (it keeps the original rows), then subtract each
        embedding row's mean (float64, cast back). The calibration signals see the centred embedding."""
        with self.timer.stage("surgery"):
            if is_tied(self.adapter):
                untie(self.adapter)
            emb = self.adapter.embedding()
            w = emb.weight.double()
            set_embedding(emb, (w - w.mean(dim=-1, keepdim=True)).to(emb.weight.dtype))

    def embedding(self, calibration: torch.Tensor, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Rotate the embedding by Q_0 (PCA of the first layer's inputs) and slice it."""
        if self.spec.mean_subtract:
            self.center_embedding()
        states: list[torch.Tensor] = []
        q, self.mass["embedding"] = self._basis(self.widths[0], self._layer0_inputs(calibration, batch, states))
        with self.timer.stage("surgery"):
            if is_tied(self.adapter):
                untie(self.adapter)
            emb = self.adapter.embedding()
            set_embedding(emb, (emb.weight.double() @ q).to(emb.weight.dtype))
            return [self._rotated(s, q) for s in states], q

    def layer(self, i: int, states: list[torch.Tensor], q_in: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Slice layer i whose input stream is in basis ``q_in``; return its rotated outputs and ``q_out``."""
        adapter, d, spec = self.adapter, self.d, self.spec
        with self.timer.stage("surgery"):
            norm = adapter.attn_norms(i)[0]
            layer = make_sliced(adapter, i)
            _rotate_inputs(adapter.attn_inputs(i), norm.weight, q_in, spec.dtype_rounding)
            setattr(layer, adapter.attn_norm_names[0], spec.norm.replacing(norm, d))
            like = adapter.ffn_down(i).weight
            layer.attn_shortcut_Q = _shortcut(q_in.T, like)  # for now the attention half writes the dense basis
        q_mid, mass = self._basis(self.widths[2 * i + 1], self._mids(i, states))
        self.mass["attention"].append(mass)
        with self.timer.stage("surgery"):
            _rotate_output(adapter.attn_output(i), q_mid)
            layer.attn_shortcut_Q = self._shortcut(q_in.T, q_mid, like)
            norm = adapter.ffn_norms(i)[0]
            _rotate_inputs(adapter.ffn_inputs(i), norm.weight, q_mid, spec.dtype_rounding)
            setattr(layer, adapter.ffn_norm_names[0], spec.norm.replacing(norm, d))
            layer.mlp_shortcut_Q = _shortcut(q_mid.T, like)  # for now the FFN half writes the dense basis
        outs: list[torch.Tensor] = []
        q_out, mass = self._basis(self.widths[2 * i + 2], self._outputs(i, states, outs))
        self.mass["mlp"].append(mass)
        with self.timer.stage("surgery"):
            _rotate_output(adapter.ffn_down(i), q_out)
            layer.mlp_shortcut_Q = self._shortcut(q_mid.T, q_out, like)
            return [self._rotated(o, q_out) for o in outs], q_out

    def head(self, q: torch.Tensor) -> None:
        """Fuse the final norm's scale into the head and read the last stream basis; the norm becomes plain RMS."""
        with self.timer.stage("surgery"):
            final = self.adapter.final_norm()
            _rotate_inputs([self.adapter.lm_head()], final.weight, q, self.spec.dtype_rounding)
            replace_child(self.adapter.model, final, self.spec.norm.replacing(final, self.d))


@torch.no_grad()
def rotate_and_slice(
    adapter: ModelAdapter,
    calibration: torch.Tensor,
    widths: list[int],
    directions: Literal["pca", "random"] = "pca",
    damp: float = 0.01,
    batch: int = 8,
    seed: int = 0,
    timer: StageTimer | None = None,
    progress: Progress = no_progress,
    variant: Variant = "reference",
) -> dict[str, Any] | None:
    """Rotate and slice the model in place to the stream ``widths`` (see ``apply_structure``); logs one op.

    With ``variant="paper"``, ``widths`` all equal to the hidden size rotates without deleting anything
    (the model's function is unchanged up to rounding); ``reference`` also subtracts the embedding rows'
    means and changes the norms' epsilon. ``seed`` draws the random directions and the reference's
    random orientation. Returns the share of each PCA signal's energy that the kept directions hold
    (None for random directions).
    """
    check_rotatable(adapter)
    L, d = adapter.num_layers, adapter.hidden_size
    if len(widths) != 2 * L + 1 or not all(0 < w <= d for w in widths):
        raise MethodError(f"SliceGPT: need {2 * L + 1} stream widths in 1..{d}, got {widths}")
    if calibration.ndim != 2 or calibration.shape[0] == 0 or calibration.shape[1] < 1:
        raise MethodError("SliceGPT needs calibration token ids [samples, tokens], "
                          f"got shape {tuple(calibration.shape)}")
    untied, spec = is_tied(adapter), VARIANTS[variant]
    if spec.random_orientation and not 0 <= seed < 2**32:
        raise MethodError(f"SliceGPT variant=reference: the seed draws numpy's legacy RNG, which takes 0..2**32-1; "
                          f"got {seed}")
    slicer = _Slicer(adapter, widths, directions, damp, seed, timer or StageTimer(), spec)
    with progress("SliceGPT: rotate and slice layers", L) as advance:
        states, q = slicer.embedding(calibration, batch)
        for i in range(L):
            states, q = slicer.layer(i, states, q)
            advance(1)
    slicer.head(q)
    # What replay needs besides the shapes: the replaced norms' epsilon (None: each norm's own) and compute.
    adapter.ops.append({"op": OP, "widths": list(widths), "untied": untied, "variant": variant,
                        "norm_eps": spec.norm.eps, "norm_compute": spec.norm.compute})
    if not slicer.pca:
        return None  # random directions: no signal was computed
    return {k: [round(x, 4) for x in v] if isinstance(v, list) else round(v, 4) for k, v in slicer.mass.items()}


def replay(adapter: ModelAdapter, op: dict[str, Any]) -> None:
    """Rebuild the sliced structure on a weightless skeleton (checkpoint reload); the weights come after.

    An op logged before the variants existed has no norm keys: its norms are the paper's (own eps, float32).
    """
    compute = op.get("norm_compute", "float32")
    if compute not in ("float32", "input"):
        raise MethodError(f"slicegpt op: unknown norm_compute {compute!r}")
    eps = op.get("norm_eps")
    norm = NormSpec(None if eps is None else float(eps), compute)
    apply_structure(adapter, [int(w) for w in op["widths"]], bool(op["untied"]), norm)
    adapter.ops.append(dict(op))


class SliceGPT(PruningMethod):
    name = "slicegpt"
    summary = "SliceGPT: rotate the residual stream to its principal components and delete the smallest ones"
    # The cut falls inside clusters of nearly equal eigenvalues (relative gaps 6e-5..1e-4 from layer 11 of
    # SmolLM2 on), while the float32 calibration forward perturbs X^T X by 1e-7..1e-6 relative: another
    # thread count or CPU rotates the kept subspace (up to 0.28 rad by the last layers) and moves
    # perplexity by ~1e-3 (measured: relative std 9.7e-4 over 5 perturbed runs, largest gap 2.3e-3). The
    # alternative cuts keep the same signal energy to 6e-6, so none is wrong; docs/uncertainty.md.
    repro_tolerances = MappingProxyType({"perplexity": 1e-2})
    Options = SliceGPTOptions
    calibration = {"full": CalibrationNeeds(256, 2048), "quick": CalibrationNeeds(16, 128)}
    earlier_options = {"variant": "paper"}  # the function-preserving fusion, prunebench's only one before variants

    def plan(self, adapter: ModelAdapter, sparsity: float, options: SliceGPTOptions) -> dict[str, Any]:
        c = plan_slicing(adapter, sparsity, options)
        return {
            "mapping": options.mapping,
            "width": c.width,
            "head_width": c.head_width,
            "hidden_size": adapter.hidden_size,
            "slicing_fraction": round(1 - c.width / adapter.hidden_size, 6),
            "parameter_sparsity": c.sparsity,
            "untie": c.untie,
            "parameters": {"blocks_before": c.blocks_before, "blocks_after": c.blocks_after,
                           "total_before": c.total_before, "total_after": c.total_after},
        }

    def prune(self, adapter: ModelAdapter, options: SliceGPTOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        before = adapter.block_parameters()
        widths = stream_widths(adapter.num_layers, plan["width"], plan["head_width"])
        mass = rotate_and_slice(adapter, ctx.calibration, widths, directions=options.directions, damp=options.damp,
                                batch=options.batch, seed=ctx.seed, timer=ctx.timer, progress=ctx.progress,
                                variant=options.variant)
        return {
            "variant": options.variant,
            # The seed of the reference's random final orientation (numpy's legacy RNG); paper has none.
            "random_orientation_seed": ctx.seed if VARIANTS[options.variant].random_orientation else None,
            "mapping": options.mapping,
            "slicing_fraction": plan["slicing_fraction"],
            "width": plan["width"],
            "head_width": plan["head_width"],
            "achieved_parameter_sparsity": 1 - adapter.block_parameters() / before,
            "untied": plan["untie"],
            "directions": options.directions,
            "eigenvalue_mass_kept": mass,
        }
