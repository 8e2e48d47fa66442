"""Qualitative samples: greedy continuations of fixed prompts, to read beside the numbers."""

from __future__ import annotations

from typing import Any

import torch

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "In 1969, the first humans to walk on the Moon",
    "A good way to learn a new programming language is",
)


@torch.inference_mode()
def generate_samples(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int = 48
) -> list[dict[str, str]]:
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
        out.append(
            {
                "prompt": prompt,
                "completion": tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True),
            }
        )
    return out
