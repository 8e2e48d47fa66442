"""Qualitative samples: greedy continuations of fixed prompts, to read beside the numbers (samples.md)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from harness.metrics.base import MeasureContext, Metric, MetricConfig
from harness.schema import Strict

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "In 1969, the first humans to walk on the Moon",
    "A good way to learn a new programming language is",
)


class QualitativeConfig(MetricConfig):
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = Field(48, ge=1)


class Sample(Strict):
    prompt: str
    completion: str


@torch.inference_mode()
def generate_samples(model: torch.nn.Module, tokenizer: Any, prompts: list[str],
                     max_new_tokens: int = 48) -> list[Sample]:
    """Greedy, fixed length (no early stop at EOS), so every method answers with the same budget."""
    device = next(model.parameters()).device
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        gen = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        out.append(Sample(prompt=prompt, completion=tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)))
    return out


class QualitativeMetric(Metric[QualitativeConfig, list[Sample]]):
    name = "qualitative"
    config_type = QualitativeConfig
    result_type = list[Sample]

    def default_config(self, profile: str) -> QualitativeConfig:
        # the authors generate up to 128 tokens; a short continuation on a 2-core CPU
        return QualitativeConfig(max_new_tokens=128 if profile == "paper" else 12)

    def describe(self, config: QualitativeConfig) -> str:
        if not config.enabled or not config.prompts:
            return "samples: off"
        return f"samples: {len(config.prompts)} prompts, {config.max_new_tokens} greedy tokens each"

    def measure(self, config: QualitativeConfig, ctx: MeasureContext, before: Any) -> list[Sample] | None:
        if not config.prompts:
            return None
        return generate_samples(ctx.model, ctx.tokenizer, config.prompts, config.max_new_tokens)
