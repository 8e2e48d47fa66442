"""Speed in a real inference engine: the cell's model and the dense one exported to GGUF and timed in llama.cpp.

An extra, off in every profile: it needs llama-cpp-python, which compiles llama.cpp when it installs
(``make install-engine``; ``make bench ENGINE=1`` or ``bench --engine`` turns it on). Before pruning,
the dense model is exported to a temporary GGUF (``harness.export``) and timed; after, the cell's model
likewise, in the same process with the same threads: prefill tokens/s of one prompt, and decode tokens/s
of greedy single-token steps after a shorter prompt (``harness.engine.llamacpp`` says how llama.cpp
times them). Inputs are random token ids drawn as the PyTorch latency metric draws them, so with the same
lengths both metrics time the same tokens. Every repeat is kept; speed-ups (pruned over dense
tokens/s) carry a bootstrap interval over the repeats of both models, as latency's do.

A model that GGUF cannot hold (SliceGPT's rotated residual stream) is not run: the result says why and
the cell goes on. Timings belong to the machine: ``repro`` reports them and judges nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

# A typed record only: harness.engine.llamacpp imports llama_cpp when a model runs, so a bench without
# the engine metric needs no llama-cpp-python.
from harness.engine.llamacpp import EngineSettings
from harness.metrics.base import (
    Check,
    MeasureContext,
    Metric,
    MetricConfig,
    over_seeds,
)
from harness.metrics.latency import LatencyMetric, SpeedUp, Timing, speedup, summarize
from harness.schema import Scalar, Strict

log = logging.getLogger(__name__)

REFUSAL_PREFIX = "cannot export the model as gguf: "  # harness.export.export_model's wording, left out of cells


class EngineConfig(MetricConfig):
    enabled: bool = False  # an extra: llama-cpp-python must be installed (make install-engine)
    threads: int | None = Field(None, ge=1, description="llama.cpp threads; None: the cell's torch threads")
    gguf_dtype: str = Field("f16", description="weights of the exported GGUF (harness.export: f32, f16, q8_0)")
    prompt_tokens: int = Field(2048, ge=2, description="prefill length")
    decode_tokens: int = Field(128, ge=1, description="tokens generated per decode measurement")
    decode_prompt: int = Field(128, ge=1, description="prompt length before decoding")
    warmup: int = Field(2, ge=0, description="untimed prefills and decodes before the timed ones, per model")
    repeats: int = Field(10, ge=2)


class GGUFFile(Strict):
    """The exported file a model was timed from (deleted after timing)."""

    dtype: str
    bytes: int
    sha256: str
    export_seconds: float
    notes: list[str]


class EngineTimings(Strict):
    """One model in llama.cpp."""

    gguf: GGUFFile
    prefill_tokens_per_s: Timing
    decode_tokens_per_s: Timing


class EngineProtocol(Strict):
    prompt_tokens: int
    decode_tokens: int
    decode_prompt: int
    warmup: int
    repeats: int
    inputs: str
    prefill: str = "one batch in a fresh KV cache, logits of the last position"
    decode: str = "greedy single-token steps after the prompt (fresh KV cache each repeat), the prompt untimed"
    clock: str = "llama.cpp's performance counters (llama_perf_context)"
    settings: EngineSettings  # threads, context, batch, mmap, ...
    llama_cpp_python: str
    system_info: str  # llama.cpp's build: instruction sets, OpenMP


class EngineScore(Strict):
    """The cell's model and the dense one, both from GGUF, timed in the same process with the same protocol."""

    status: Literal["measured"] = "measured"
    gguf: GGUFFile
    prefill_tokens_per_s: Timing
    decode_tokens_per_s: Timing
    dense_gguf: GGUFFile
    dense_prefill_tokens_per_s: Timing
    dense_decode_tokens_per_s: Timing
    prefill_speedup: SpeedUp  # pruned over dense tokens/s
    decode_speedup: SpeedUp
    protocol: EngineProtocol


class EngineNotRun(Strict):
    """A model that the GGUF export refused: why, and the dense model's run where it had one."""

    status: Literal["not exportable"] = "not exportable"
    reason: str
    dense: EngineTimings | None = None
    protocol: EngineProtocol | None = None


EngineResult = Annotated[EngineScore | EngineNotRun, Field(discriminator="status")]
Run = tuple[EngineTimings, EngineProtocol] | str  # a model timed, or the export's refusal


def resolved_threads(config: EngineConfig) -> int:
    return config.threads or torch.get_num_threads() or os.cpu_count() or 1


def build_features(info: str) -> str:
    """The parts of llama.cpp's system info that are switched on ("CPU : SSE3 = 1 | AVX2 = 1" -> "SSE3, AVX2")."""
    return ", ".join(part.split("=")[0].split(":")[-1].strip() for part in info.split("|")
                     if part.strip().endswith("= 1"))


def time_model(config: EngineConfig, ctx: MeasureContext, label: str) -> Run:
    """Export ``ctx``'s model to a temporary GGUF and time it in llama.cpp; the refusal where it has no GGUF."""
    from harness.engine.llamacpp import LlamaCpp, package_version, system_info
    from harness.export import ExportRefused, export_model
    from harness.paths import cache_dir

    threads = resolved_threads(config)
    # The latency metric's draws: prefill ids first, then the decode prompt, from the cell's seed.
    g = torch.Generator().manual_seed(ctx.seed)
    vocab = ctx.adapter.embedding().weight.shape[0]
    prefill_ids = torch.randint(0, vocab, (config.prompt_tokens,), generator=g).tolist()
    prompt = torch.randint(0, vocab, (config.decode_prompt,), generator=g).tolist()
    # On disk under the cache, not in /tmp: that may be a RAM disk, and a GGUF is as big as the model.
    with tempfile.TemporaryDirectory(prefix="engine-", dir=cache_dir()) as tmp:
        try:
            report = export_model(ctx.adapter, ctx.tokenizer, ctx.source, "gguf", Path(tmp) / f"{label}.gguf",
                                  config.gguf_dtype)
        except ExportRefused as err:
            log.warning("engine: the %s model is not run in llama.cpp: %s", label, err)
            return str(err)
        gguf = GGUFFile(dtype=report.dtype, bytes=report.bytes, sha256=report.sha256, export_seconds=report.seconds,
                        notes=report.notes)
        log.info("engine: timing the %s model in llama.cpp (%s, threads %d)", label, report.dtype, threads)
        with LlamaCpp(report.path, threads,
                      max(config.prompt_tokens, config.decode_prompt + config.decode_tokens)) as engine:
            for _ in range(config.warmup):
                engine.prefill_seconds(prefill_ids)
                engine.decode_seconds(prompt, config.decode_tokens)
            prefill, decode = [], []
            for _ in range(config.repeats):
                prefill.append(config.prompt_tokens / engine.prefill_seconds(prefill_ids))
                decode.append(config.decode_tokens / engine.decode_seconds(prompt, config.decode_tokens))
            settings = engine.settings
    protocol = EngineProtocol(
        prompt_tokens=config.prompt_tokens, decode_tokens=config.decode_tokens, decode_prompt=config.decode_prompt,
        warmup=config.warmup, repeats=config.repeats, inputs=f"random token ids, torch.Generator seed {ctx.seed}",
        settings=settings, llama_cpp_python=package_version(),
        system_info=system_info(),
    )
    return EngineTimings(gguf=gguf, prefill_tokens_per_s=summarize(prefill),
                         decode_tokens_per_s=summarize(decode)), protocol


def _short(reason: str) -> str:
    return reason.removeprefix(REFUSAL_PREFIX)


class EngineMetric(Metric[EngineConfig, EngineResult]):
    name = "engine"
    column_order = 3  # right after the PyTorch speed-ups (latency, 2)
    extra = True  # llama-cpp-python is an extra install (make install-engine)
    interval_note = "speed-ups by bootstrap over the repeats of both models"
    config_type = EngineConfig
    result_type = EngineResult

    def default_config(self, profile: str) -> EngineConfig:
        # The latency metric's prefill length and decode prompt, so both time the same tokens. llama.cpp
        # decodes a small model fast, so cpu-quick affords 32 steps (latency's 4 leave wide intervals).
        # Two warm-ups: llama.cpp sizes its buffers on the first call and has no allocator or kernel
        # autotuning to settle beyond that (PyTorch's latency warms up longer).
        latency = LatencyMetric().default_config(profile)
        decode_tokens = latency.decode_tokens if profile == "paper" else 32
        return EngineConfig(prompt_tokens=latency.seq_len, decode_prompt=latency.decode_prompt,
                            decode_tokens=decode_tokens, warmup=2, repeats=10)

    def validate(self, config: EngineConfig) -> None:
        if config.enabled:
            from harness.engine.llamacpp import load_llama_cpp
            from harness.export import resolve_format

            resolve_format("gguf", config.gguf_dtype)  # an unknown dtype is one line, before any model loads
            load_llama_cpp()  # so is a missing llama-cpp-python

    def positions(self, config: EngineConfig) -> int:
        return max(config.prompt_tokens, config.decode_prompt + config.decode_tokens)

    def describe(self, config: EngineConfig) -> str:
        if not config.enabled:
            return "engine: off (llama.cpp speed; bench --engine, make bench ENGINE=1)"
        threads = config.threads or "as torch's"
        return (f"engine: llama.cpp on the CPU, GGUF {config.gguf_dtype}, threads {threads}; prefill 1 x "
                f"{config.prompt_tokens}, decode {config.decode_tokens} tokens after {config.decode_prompt}, "
                f"{config.warmup} warm-ups, {config.repeats} repeats; speed-up intervals by bootstrap")

    def before_pruning(self, config: EngineConfig, ctx: MeasureContext) -> Run:
        return time_model(config, ctx, "dense")

    def measure(self, config: EngineConfig, ctx: MeasureContext, before: Run) -> EngineScore | EngineNotRun:
        if isinstance(before, str):  # no dense GGUF: nothing to compare with
            return EngineNotRun(reason=f"the dense model: {before}")
        own = before if ctx.is_dense_cell else time_model(config, ctx, "pruned")
        dense, dense_protocol = before
        if isinstance(own, str):
            return EngineNotRun(reason=own, dense=dense, protocol=dense_protocol)
        timings, protocol = own
        return EngineScore(
            gguf=timings.gguf, prefill_tokens_per_s=timings.prefill_tokens_per_s,
            decode_tokens_per_s=timings.decode_tokens_per_s, dense_gguf=dense.gguf,
            dense_prefill_tokens_per_s=dense.prefill_tokens_per_s, dense_decode_tokens_per_s=dense.decode_tokens_per_s,
            prefill_speedup=speedup(dense.prefill_tokens_per_s, timings.prefill_tokens_per_s, higher_is_faster=True,
                                    seed=ctx.seed),
            decode_speedup=speedup(dense.decode_tokens_per_s, timings.decode_tokens_per_s, higher_is_faster=True,
                                   seed=ctx.seed),
            protocol=protocol,
        )

    def protocol_lines(self, result: EngineScore | EngineNotRun) -> list[str]:
        p = result.protocol
        if p is None:
            return [f"- engine (llama.cpp): not run: {_short(result.reason)}"]
        gguf = result.gguf if isinstance(result, EngineScore) else result.dense.gguf
        line = (f"- engine: llama.cpp on the CPU (llama-cpp-python {p.llama_cpp_python}, threads {p.settings.threads}, "
                f"build {build_features(p.system_info)}), GGUF {gguf.dtype} exported from each model; prefill 1 x "
                f"{p.prompt_tokens}, decode {p.decode_tokens} tokens after {p.decode_prompt} ({p.warmup} warm-ups, "
                f"{p.repeats} repeats, {p.clock})")
        if isinstance(result, EngineScore):
            line += (f"; speed-ups against the dense model's GGUF timed in the same process, ratio of medians, "
                     f"95 % interval: {result.prefill_speedup.interval.method}")
        return [line]

    def csv(self, result: EngineScore | EngineNotRun) -> dict[str, Scalar]:
        if isinstance(result, EngineNotRun):
            return {"engine_status": result.status, "engine_reason": result.reason}
        out: dict[str, Scalar] = {
            "engine_status": result.status, "engine_gguf_dtype": result.gguf.dtype,
            "engine_gguf_bytes": result.gguf.bytes,
            "engine_threads": result.protocol.settings.threads,
            "engine_prefill_tokens_per_s": result.prefill_tokens_per_s.median,
            "engine_decode_tokens_per_s": result.decode_tokens_per_s.median,
            "engine_dense_prefill_tokens_per_s": result.dense_prefill_tokens_per_s.median,
            "engine_dense_decode_tokens_per_s": result.dense_decode_tokens_per_s.median,
        }
        for field in ("prefill_speedup", "decode_speedup"):
            s: SpeedUp = getattr(result, field)
            out.update({f"engine_{field}": s.value, f"engine_{field}_low": s.interval.low,
                        f"engine_{field}_high": s.interval.high})
        return out

    def headers(self, sample: EngineScore | EngineNotRun) -> list[str]:
        return ["llama.cpp prefill speed-up [95 % CI]", "llama.cpp decode speed-up [95 % CI]"]

    def cells(self, seeds: list[EngineScore | EngineNotRun],
              dense: list[EngineScore | EngineNotRun] | None) -> list[str]:
        refused = [s for s in seeds if isinstance(s, EngineNotRun)]
        if refused:
            return [f"no GGUF: {_short(refused[0].reason)}", "-"]
        return [over_seeds([getattr(s, f).value for s in seeds], [getattr(s, f).interval for s in seeds], unit="x")
                for f in ("prefill_speedup", "decode_speedup")]

    def compare(self, old: EngineScore | EngineNotRun, new: EngineScore | EngineNotRun,
                tolerance: float | None) -> list[Check]:
        if isinstance(old, EngineNotRun) or isinstance(new, EngineNotRun):
            return [Check("engine.status", old.status, new.status, "", "reported", None)]
        out = []
        for field in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            a, b = getattr(old, field).median, getattr(new, field).median
            out.append(Check(f"engine.{field}", round(a, 3), round(b, 3), f"{b / a:.2f}x", "reported", None))
        return out
