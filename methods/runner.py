"""Run a decoder stack one layer at a time, starting from a cached hidden state.

Searches (2SSP stage 2, BlockPruner) score many variants of a model that differ from some layer on.
The hidden state entering that layer is the same for all of them, so it is computed once and reused.
The keyword arguments every layer receives (masks, rotary tables, per-layer-type variants) are
captured from one ordinary forward pass, so this works for every architecture the adapter supports.
"""

from __future__ import annotations

from typing import Any

import torch

from methods.arch import ModelAdapter


class LayerRunner:
    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        # Per sequence length: the kwargs each layer position was called with. Without padding, the
        # masks and rotary tables of a batch-1 trace broadcast over any batch of the same length.
        self._layer_kwargs: dict[int, list[dict[str, Any]]] = {}

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states entering each layer; entry ``num_layers`` is the last layer's output (pre final norm).

        One ordinary forward pass of the decoder stack (no LM head); also records the layer kwargs.
        """
        adapter = self.adapter
        inputs: list[torch.Tensor | None] = [None] * (adapter.num_layers + 1)
        kwargs: list[dict[str, Any]] = [{} for _ in range(adapter.num_layers)]

        def before_layer(i: int):
            def hook(module, args, kw):
                inputs[i] = args[0] if args else kw["hidden_states"]
                kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}

            return hook

        def before_norm(module, args):
            inputs[adapter.num_layers] = args[0]

        handles = [layer.register_forward_pre_hook(before_layer(i), with_kwargs=True)
                   for i, layer in enumerate(adapter.layers)]
        handles.append(adapter.final_norm().register_forward_pre_hook(before_norm))
        try:
            device = adapter.embedding().weight.device
            adapter.model.model(input_ids=input_ids.to(device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self._layer_kwargs[input_ids.shape[1]] = kwargs
        return inputs  # type: ignore[return-value]

    @torch.no_grad()
    def run(self, hidden: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Apply layers ``start .. stop-1`` to ``hidden`` (the state entering layer ``start``)."""
        kwargs = self._layer_kwargs.get(hidden.shape[1])
        if kwargs is None or len(kwargs) != self.adapter.num_layers:
            raise RuntimeError("LayerRunner.trace must run on an input of this length (and this depth) first")
        stop = self.adapter.num_layers if stop is None else stop
        for i in range(start, stop):
            out = self.adapter.layers[i](hidden, **kwargs[i])
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden
