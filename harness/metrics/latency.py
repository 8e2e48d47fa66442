"""Inference latency: prefill of one batch-1 sequence, and greedy decode throughput with a KV cache.

The reference times 10 forwards of one 1 x 2048 sample after 10 warm-ups with CUDA events; we do the
same (CUDA events on GPU, a monotonic clock on CPU), report median and spread, and measure decoding
too. Inputs are fixed random tokens (a seeded generator), so dense and pruned models see the same ones.

Every repeat is kept: a timing is reported with its spread, and a speed-up (dense over pruned, both
measured in the cell's own process) with a bootstrap interval over the repeats of both models.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field

from harness.metrics.base import (
    Check,
    MeasureContext,
    Metric,
    MetricConfig,
    over_seeds,
)
from harness.schema import Interval, Scalar, Strict
from harness.stats import ratio_interval

log = logging.getLogger(__name__)


class LatencyConfig(MetricConfig):
    seq_len: int = Field(2048, ge=1, description="prefill length")
    warmup: int = Field(10, ge=0)
    repeats: int = Field(10, ge=2)
    decode_tokens: int = Field(128, ge=1, description="tokens generated per decode measurement")
    decode_prompt: int = Field(128, ge=1, description="prompt length before decoding")


class Timing(Strict):
    median: float
    p25: float
    p75: float
    min: float
    max: float
    repeats: int
    samples: list[float]


class SpeedUp(Strict):
    value: float  # ratio of the medians
    interval: Interval


class LatencyProtocol(Strict):
    seq_len: int
    warmup: int
    repeats: int
    decode_tokens: int
    decode_prompt: int
    batch_size: int = 1
    clock: str
    inputs: str
    prefill: str = "one forward pass with logits, no KV cache"
    decode: str = "greedy, KV cache; time of prompt+steps minus time of the prompt alone"
    device: str
    dtype: str
    torch_threads: int


class Latencies(Strict):
    """One model's timings."""

    prefill_ms: Timing
    decode_tokens_per_s: Timing
    protocol: LatencyProtocol


class LatencyScore(Strict):
    """The cell's model and the dense one, timed in the same process with the same protocol."""

    prefill_ms: Timing
    decode_tokens_per_s: Timing
    dense_prefill_ms: Timing
    dense_decode_tokens_per_s: Timing
    prefill_speedup: SpeedUp
    decode_speedup: SpeedUp
    protocol: LatencyProtocol


def _timer(device: torch.device) -> tuple[str, Callable[[Callable[[], Any]], float]]:
    """A function timing one call in milliseconds, and the name of the clock it uses."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], Any]) -> float:
            # On the model's device and its current stream: with --device cuda:N the events would otherwise be
            # recorded on the current device (0), timing none of the model's kernels.
            with torch.cuda.device(device):
                stream = torch.cuda.current_stream(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                fn()
                end.record(stream)
                end.synchronize()
                return start.elapsed_time(end)

        return "cuda-events", cuda_time

    def wall_time(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0

    return "perf_counter", wall_time


def summarize(values: list[float]) -> Timing:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return Timing(median=statistics.median(values), p25=q[0], p75=q[2], min=min(values), max=max(values),
                  repeats=len(values), samples=list(values))


def speedup(dense: Timing, pruned: Timing, higher_is_faster: bool, seed: int = 0) -> SpeedUp:
    """Ratio of medians, dense over pruned for times (pruned over dense for rates), with its interval."""
    num, den = (pruned, dense) if higher_is_faster else (dense, pruned)
    interval = ratio_interval(num.samples, den.samples, level=0.95, resamples=2000, seed=seed)
    return SpeedUp(value=num.median / den.median, interval=interval)


@torch.inference_mode()
def measure(model: torch.nn.Module, config: LatencyConfig, seed: int = 0) -> Latencies:
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
    protocol = LatencyProtocol(
        seq_len=config.seq_len, warmup=config.warmup, repeats=config.repeats, decode_tokens=config.decode_tokens,
        decode_prompt=config.decode_prompt, clock=clock, inputs=f"random token ids, torch.Generator seed {seed}",
        device=str(device), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        torch_threads=torch.get_num_threads(),
    )
    return Latencies(prefill_ms=summarize(prefill_ms), decode_tokens_per_s=summarize(rates), protocol=protocol)


class LatencyMetric(Metric[LatencyConfig, LatencyScore]):
    name = "latency"
    column_order = 2
    interval_note = "speed-ups by bootstrap over the repeats of both models"
    config_type = LatencyConfig
    result_type = LatencyScore

    def default_config(self, profile: str) -> LatencyConfig:
        if profile == "paper":
            return LatencyConfig(seq_len=2048, warmup=10, repeats=10, decode_tokens=128, decode_prompt=128)
        # cpu-quick: 3 warm-ups, since the dense model is timed first, right after loading; with fewer,
        # its first calls (allocator, thread pool) run cold and inflate every speed-up.
        return LatencyConfig(seq_len=128, warmup=3, repeats=5, decode_tokens=4, decode_prompt=16)

    def positions(self, config: LatencyConfig) -> int:
        return max(config.seq_len, config.decode_prompt + config.decode_tokens)

    def describe(self, config: LatencyConfig) -> str:
        if not config.enabled:
            return "latency: off"
        return (f"latency: prefill 1 x {config.seq_len}, {config.warmup} warm-ups, {config.repeats} repeats; "
                f"decode {config.decode_tokens} tokens after {config.decode_prompt}; speed-up intervals by bootstrap")

    def before_pruning(self, config: LatencyConfig, ctx: MeasureContext) -> Latencies:
        log.info("latency of the dense model")
        return measure(ctx.model, config, seed=ctx.seed)

    def measure(self, config: LatencyConfig, ctx: MeasureContext, before: Latencies) -> LatencyScore:
        own = before if ctx.is_dense_cell else measure(ctx.model, config, seed=ctx.seed)
        return LatencyScore(
            prefill_ms=own.prefill_ms, decode_tokens_per_s=own.decode_tokens_per_s,
            dense_prefill_ms=before.prefill_ms, dense_decode_tokens_per_s=before.decode_tokens_per_s,
            prefill_speedup=speedup(before.prefill_ms, own.prefill_ms, higher_is_faster=False, seed=ctx.seed),
            decode_speedup=speedup(before.decode_tokens_per_s, own.decode_tokens_per_s, higher_is_faster=True,
                                   seed=ctx.seed),
            protocol=own.protocol,
        )

    def protocol_lines(self, result: LatencyScore) -> list[str]:
        p = result.protocol
        return [f"- latency: prefill 1 x {p.seq_len} ({p.warmup} warm-ups, {p.repeats} repeats, {p.clock}), decode "
                f"{p.decode_tokens} tokens; speed-ups against the dense model measured in the same process, "
                f"ratio of medians, 95 % interval: {result.prefill_speedup.interval.method}"]

    def csv(self, result: LatencyScore) -> dict[str, Scalar]:
        return {"prefill_ms": result.prefill_ms.median, "decode_tokens_per_s": result.decode_tokens_per_s.median,
                "prefill_speedup": result.prefill_speedup.value,
                "prefill_speedup_low": result.prefill_speedup.interval.low,
                "prefill_speedup_high": result.prefill_speedup.interval.high,
                "decode_speedup": result.decode_speedup.value,
                "decode_speedup_low": result.decode_speedup.interval.low,
                "decode_speedup_high": result.decode_speedup.interval.high}

    def headers(self, sample: LatencyScore) -> list[str]:
        return ["prefill speed-up [95 % CI]", "decode speed-up [95 % CI]"]

    def cells(self, seeds: list[LatencyScore], dense: list[LatencyScore] | None) -> list[str]:
        return [over_seeds([getattr(s, f).value for s in seeds], [getattr(s, f).interval for s in seeds], unit="x")
                for f in ("prefill_speedup", "decode_speedup")]

    def compare(self, old: LatencyScore, new: LatencyScore, tolerance: float | None) -> list[Check]:
        out = []
        for field in ("prefill_ms", "decode_tokens_per_s"):
            a, b = getattr(old, field).median, getattr(new, field).median
            out.append(Check(f"latency.{field}", round(a, 3), round(b, 3), f"{b / a:.2f}x", "reported", None))
        return out
