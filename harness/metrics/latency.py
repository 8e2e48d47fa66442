"""Inference latency: prefill of one batch-1 sequence, and greedy decode throughput with a KV cache.

The reference times 10 forwards of one 1 x 2048 sample after 10 warm-ups with CUDA events; we do the
same (CUDA events on GPU, a monotonic clock on CPU), report median and spread, and measure decoding
too. Inputs are fixed random tokens (a seeded generator), so dense and pruned models see the same ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class LatencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    seq_len: int = Field(2048, ge=1, description="prefill length")
    warmup: int = Field(10, ge=0)
    repeats: int = Field(10, ge=1)
    decode_tokens: int = Field(128, ge=1, description="tokens generated per decode measurement")
    decode_prompt: int = Field(128, ge=1, description="prompt length before decoding")


def _timer(device: torch.device) -> tuple[str, Callable[[Callable[[], Any]], float]]:
    """A function timing one call in milliseconds, and the name of the clock it uses."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return "cuda-events", cuda_time

    def wall_time(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0

    return "perf_counter", wall_time


def summarize(values: list[float]) -> dict[str, float | int]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "p25": q[0],
        "p75": q[2],
        "min": min(values),
        "max": max(values),
        "repeats": len(values),
    }


@torch.inference_mode()
def measure(model: torch.nn.Module, config: LatencyConfig, seed: int = 0) -> dict[str, Any]:
    """Prefill milliseconds and decode tokens per second of ``model`` (already on its device)."""
    device = next(model.parameters()).device
    clock, time_ms = _timer(device)
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    prefill_ids = torch.randint(0, vocab, (1, config.seq_len), generator=g).to(device)
    prompt = torch.randint(0, vocab, (1, config.decode_prompt), generator=g).to(device)

    def prefill() -> None:
        model(input_ids=prefill_ids, use_cache=False)

    def decode() -> None:
        out = model(input_ids=prompt, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(config.decode_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)

    def prompt_only() -> None:
        model(input_ids=prompt, use_cache=True)

    for _ in range(config.warmup):
        prefill()
    prefill_ms = [time_ms(prefill) for _ in range(config.repeats)]
    for _ in range(max(1, config.warmup // 5)):
        decode()
    # Decode time = (prompt + n steps) - prompt alone, measured back to back in each repeat.
    rates = []
    for _ in range(config.repeats):
        total, head = time_ms(decode), time_ms(prompt_only)
        rates.append(config.decode_tokens / max(total - head, 1e-6) * 1000.0)
    return {
        "prefill_ms": summarize(prefill_ms),
        "decode_tokens_per_s": summarize(rates),
        "protocol": {
            **config.model_dump(),
            "batch_size": 1,
            "clock": clock,
            "inputs": f"random token ids, torch.Generator seed {seed}",
            "prefill": "one forward pass with logits, no KV cache",
            "decode": "greedy, KV cache; time of prompt+steps minus time of the prompt alone",
            "device": str(device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
        },
    }
