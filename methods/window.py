"""Window pruning (Gromov et al., arXiv 2403.17887): remove the n contiguous layers that change the
residual stream least, judged at the last token. No healing fine-tune.

For every start l, the hidden state entering layer l is compared with the one entering layer l + n (the
state the model would see there once layers l .. l+n-1 are gone), per calibration sample at the last
position, and averaged over samples. The most similar window is removed. For the last window (l + n =
L) "the input of layer L" is the last layer's output *before* the final norm: it is what the final norm
would receive after the removal, and the authors' harness (a hook on the layer outputs) compares it too.

Two variants (docs/methods.md):
- ``reference`` (default), the 2SSP authors' harness: mean *cosine similarity*, the most similar window
  wins; starts 1 .. L-n only (their hooks see layer outputs, never the input of layer 0, so layer 0 is
  never removed).
- ``paper``, Gromov et al.: mean *angular distance* arccos(cos) / pi, the smallest wins; every start
  0 .. L-n. (The mean of arccos does not rank windows exactly as the mean of cos does.)
``distance``, ``protect_first`` and ``ties`` override one dimension of the variant each. Both measures
are reported for every window whichever one decides. Ties (exact equality of the mean scores) go to the
last start in the reference variant (the authors keep a window when ``sim >= best``, scanning starts in
increasing order) and to the first start in the paper variant.

``PruneContext.numerics``: ``exact`` computes each cosine in float32 and averages in float64;
``reference`` as the authors' code, each sample's cosine in the hidden states' own dtype (bf16 in their
runs), read as a Python float and averaged as ``sum(list) / len(list)``; the angular distance is taken
of those same per-sample cosines.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod
from methods.similarity import (
    LayerVisitor,
    angular_distance,
    authors_cosine,
    authors_mean,
    cosine,
    forward_each_sample,
    plan_layer_removal,
    remove_and_report,
)

Distance = Literal["cosine", "angular"]
Ties = Literal["first", "last"]


class WindowOptions(MethodOptions):
    variant: Literal["reference", "paper"] = Field(
        "reference", description="reference: the 2SSP authors' harness; paper: Gromov et al."
    )
    distance: Distance | None = Field(
        None, description="similarity that picks the window (default: the variant's, reference cosine, paper angular)"
    )
    protect_first: bool | None = Field(
        None, description="no window may start at layer 0 (default: the variant's, reference yes, paper no)"
    )
    ties: Ties | None = Field(
        None, description="start chosen among equally scored windows (default: the variant's, reference last, "
                          "paper first)"
    )

    def resolved_distance(self) -> Distance:
        if self.distance is not None:
            return self.distance
        return "cosine" if self.variant == "reference" else "angular"

    def resolved_ties(self) -> Ties:
        if self.ties is not None:
            return self.ties
        return "last" if self.variant == "reference" else "first"

    def protected(self) -> list[int]:
        protect = self.protect_first if self.protect_first is not None else self.variant == "reference"
        return [0] if protect else []


def _last_token_states(L: int) -> tuple[list[torch.Tensor | None], LayerVisitor]:
    """States[i]: the last-token state entering layer i (i = L: the last layer's output), and the visitor
    that fills them during one sample's forward."""
    states: list[torch.Tensor | None] = [None] * (L + 1)

    def visit(i: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        # clone: a view would keep the layer's whole [tokens, d] state alive until the sample ends.
        states[i] = hidden_in[0, -1].clone()
        if i == L - 1:
            states[L] = hidden_out[0, -1].clone()

    return states, visit


@torch.no_grad()
def window_similarities(adapter: ModelAdapter, ctx: PruneContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every start l in 0 .. L-n: (mean cosine, mean angular distance) of the last-token states
    entering layers l and l + n, over calibration samples (float64, CPU).

    Only the last position of each layer's input is kept (one vector per layer per sample), and each
    sample is reduced to its L - n + 1 window values as soon as its forward ends.
    ``numerics=reference``: the per-sample cosines as the authors compute them (:func:`authors_window_similarities`).
    """
    if ctx.numerics == "reference":
        return authors_window_similarities(adapter, ctx, n)
    L = adapter.num_layers
    states, visit = _last_token_states(L)
    sums: list[torch.Tensor] = []

    def reduce_sample() -> None:
        if any(s is None for s in states):
            raise RuntimeError("a layer was not reached by the calibration forward")
        stacked = torch.stack(states).double()  # type: ignore[arg-type]  # float64: arccos is ill-conditioned near 1
        cos = cosine(stacked[: L + 1 - n], stacked[n:]).double()
        per_sample = torch.stack([cos, angular_distance(cos)])
        if sums:
            sums[0] += per_sample
        else:
            sums.append(per_sample)
        states[:] = [None] * (L + 1)

    forward_each_sample(adapter, ctx, visit, "Window", after_sample=reduce_sample)
    mean = sums[0].cpu() / len(ctx.calibration)
    return mean[0], mean[1]


@torch.no_grad()
def authors_window_similarities(adapter: ModelAdapter, ctx: PruneContext, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`window_similarities` as the authors compute it: per sample and start, the cosine of the two
    last-token vectors in their own dtype, as a Python float, and the mean over samples of those floats.
    The angular distance of each per-sample cosine is averaged the same way (float64)."""
    L = adapter.num_layers
    states, visit = _last_token_states(L)
    cosines: list[list[float]] = [[] for _ in range(L + 1 - n)]

    def reduce_sample() -> None:
        if any(s is None for s in states):
            raise RuntimeError("a layer was not reached by the calibration forward")
        for start, values in enumerate(cosines):
            values.append(authors_cosine(states[start], states[start + n]))  # type: ignore[arg-type]
        states[:] = [None] * (L + 1)

    forward_each_sample(adapter, ctx, visit, "Window", after_sample=reduce_sample)
    angular = [[math.acos(max(-1.0, min(1.0, c))) / math.pi for c in values] for values in cosines]
    return (torch.tensor([authors_mean(v) for v in cosines], dtype=torch.float64),
            torch.tensor([authors_mean(v) for v in angular], dtype=torch.float64))


def best_start(scores: torch.Tensor, starts: range, higher_is_better: bool, ties: Ties = "first") -> int:
    """The start of the best window among ``starts``; equal scores go to the first or the last start."""
    sign = -1.0 if higher_is_better else 1.0
    order = 1 if ties == "first" else -1
    return min(starts, key=lambda start: (sign * float(scores[start]), order * start))


class Window(PruningMethod):
    name = "window"
    summary = "Window (Gromov et al.): remove the n contiguous layers whose input and output are most similar"
    Options = WindowOptions
    calibration = {"full": CalibrationNeeds(256, 2048), "quick": CalibrationNeeds(32, 128)}
    earlier_options = {"ties": "first"}  # before ``ties``, every variant kept the lower start

    def plan(self, adapter: ModelAdapter, sparsity: float, options: WindowOptions) -> dict[str, Any]:
        plan = plan_layer_removal(adapter, sparsity, options.protected(), "Window")
        # Only layer 0 can be protected, so a window of n <= L - 1 layers always fits after it.
        plan["starts"] = [1 if plan["protected"] else 0, plan["layers"] - plan["n"]]
        return plan

    def prune(self, adapter: ModelAdapter, options: WindowOptions, ctx: PruneContext) -> dict[str, Any]:
        plan = self.planned(adapter, options, ctx)
        n, distance = plan["n"], options.resolved_distance()
        with ctx.timer.stage("calibration_forward"):
            cos, angular = window_similarities(adapter, ctx, n)
        with ctx.timer.stage("search"):
            first, last = plan["starts"]
            scores = cos if distance == "cosine" else angular
            start = best_start(scores, range(first, last + 1), higher_is_better=distance == "cosine",
                               ties=options.resolved_ties())
        decisions: dict[str, Any] = {
            "n": n,
            "variant": options.variant,
            "distance": distance,
            "ties": options.resolved_ties(),
            "numerics": ctx.numerics,
            "protected": plan["protected"],
            "eligible_starts": plan["starts"],  # inclusive
            "start": start,
            # Indexed by start l = 0 .. L-n (start 0 is listed even where it may not be chosen).
            "window_cosine": [float(c) for c in cos],
            "window_angular_distance": [float(a) for a in angular],
        }
        decisions.update(remove_and_report(adapter, ctx, list(range(start, start + n))))
        return decisions
