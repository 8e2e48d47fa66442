"""lm-eval's HFLM adapted to pruned models held in memory (imported lazily: lm-eval is slow to import)."""

import torch
from lm_eval.models.huggingface import HFLM


class CachelessHFLM(HFLM):
    """HFLM whose forward passes ask for no KV cache.

    Scoring loglikelihoods needs one forward per batch and no cache, but HFLM calls ``model(inps)``
    and transformers 5 then builds a cache sized by ``config.num_hidden_layers`` and indexed by each
    attention's ``layer_idx``. A model whose blocks were removed in place can disagree with both (the
    config updated, the surviving layers not renumbered): the cache update raises IndexError. Without
    a cache the forward only runs the layers that exist; it also saves the cache's memory.
    """

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attn_mask is not None or labels is not None:  # seq2seq models: lm-eval's own path
            return super()._model_call(inps, attn_mask, labels)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(input_ids=inps, use_cache=False).logits
