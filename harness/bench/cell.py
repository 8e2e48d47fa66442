"""One bench cell, run in its own process: prune (or reuse the cached pruned model), then measure.

    python -m harness.bench.cell --spec CELL.spec.json --result CELL.json

Writes the result atomically, status ``ok`` or ``failed`` (with the error); exits 0 or 1. Whatever
kills the process before that (a signal, the OOM killer, a timeout) leaves no result: the executor
that started it records the failure.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from harness.bench.config import CellSpec
from harness.env import capture
from harness.errors import PrunebenchError
from harness.results import Cell, CellResult, ErrorInfo, Parameters, PruningReport, write_result
from methods.errors import MethodError

log = logging.getLogger("prunebench.cell")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def model_identity(ref) -> str:
    """A stable name of the weights a model reference points at (for the pruned-model cache key)."""
    from harness.models import EMBEDDED_MODELS

    if ref.kind == "embedded":
        spec = EMBEDDED_MODELS[ref.name]
        return f"{ref.name}@{spec.package}=={spec.package_version}"
    if ref.kind in ("local", "pruned"):
        config = Path(ref.location) / "config.json"
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.exists() else "?"
        return f"{ref.location}#{digest}"
    return ref.location


class PeakMemory:
    """Peak resident memory of this process (Linux VmHWM, resettable) and peak CUDA allocation."""

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def read(self) -> dict[str, int | None]:
        rss = None
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        return {"peak_rss_bytes": rss, "peak_cuda_bytes": cuda}


def _free(model: Any) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prune_or_reuse(spec: CellSpec, loaded, memory: PeakMemory) -> tuple[Any, PruningReport, dict[str, int | None]]:
    """The pruned model of this cell: from the pruned-model cache when the same pruning ran before."""
    from harness import pruning
    from harness.checkpoint import load_pruned, read_manifest, save_pruned
    from harness.paths import cache_dir
    from methods import get_method

    method = get_method(spec.method)
    key = spec.prune_key(model_identity(loaded.ref), getattr(method, "version", 1))
    cached = cache_dir() / "pruned" / key
    if spec.cache_pruned and (cached / "prunebench.json").exists():
        log.info("pruned model found in the cache (%s): not pruning again", cached)
        report = PruningReport.model_validate(read_manifest(cached)["prune_report"])
        _free(loaded.model)
        model = load_pruned(cached, dtype=loaded.dtype, device=loaded.device)
        return model, report.model_copy(update={"from_cache": True, "cache_key": key}), {}
    job = pruning.PruneJob(
        method=spec.method, sparsity=spec.sparsity, model=spec.model, options=spec.method_options,
        calibration=pruning.CalibrationSpec(spec.calibration.source, spec.calibration.samples,
                                            spec.calibration.seq_len, spec.seed),
        profile=spec.profile, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code,
    )
    prepared = pruning.prepare(job)
    memory.reset()
    outcome = pruning.execute(prepared, loaded=loaded)
    peak = memory.read()
    report = outcome.report
    if spec.cache_pruned:
        save_pruned(outcome.adapter, loaded.tokenizer, cached,
                    info={"prune_report": report.model_dump(mode="json"), "cell": spec.id})
    return outcome.loaded.model, report.model_copy(update={"cache_key": key if spec.cache_pruned else None}), peak


def cell_of(spec: CellSpec) -> Cell:
    return Cell(id=spec.id, model=spec.model, method=spec.method, variant=spec.variant, sparsity=spec.sparsity,
                seed=spec.seed)


def run(spec: CellSpec) -> CellResult:
    """Load, measure on the dense model what needs it, prune (or reuse), then run every enabled metric."""
    from harness.metrics.base import MeasureContext
    from harness.metrics.registry import METRICS
    from harness.models import load_model, resolve_model
    from methods.arch import adapt

    started, t0 = now(), time.perf_counter()
    memory = PeakMemory()
    ref = resolve_model(spec.model)
    loaded = load_model(ref, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code)
    dense = adapt(loaded.model)
    before = (dense.total_parameters(), dense.block_parameters())
    enabled = {name: m for name, m in METRICS.items() if getattr(spec, name).enabled}
    is_dense = spec.method == "dense"
    dense_ctx = MeasureContext(loaded.model, dense, loaded.tokenizer, spec.seed, is_dense)
    measured_before = {name: m.before_pruning(getattr(spec, name), dense_ctx) for name, m in enabled.items()}
    del dense_ctx, dense
    pruning_report, peak = None, {}
    model = loaded.model
    if not is_dense:
        log.info("pruning with %s at %.4g", spec.method, spec.sparsity)
        model, pruning_report, peak = prune_or_reuse(spec, loaded, memory)
        model.eval()
    adapter = adapt(model)
    after = (adapter.total_parameters(), adapter.block_parameters())
    ctx = MeasureContext(model, adapter, loaded.tokenizer, spec.seed, is_dense)
    results = {name: m.measure(getattr(spec, name), ctx, measured_before[name]) for name, m in enabled.items()}
    return CellResult(
        status="ok", cell=cell_of(spec), config=spec.model_dump(mode="json"), config_hash=spec.config_hash(),
        started_at=started, finished_at=now(), wall_seconds=time.perf_counter() - t0,
        parameters=Parameters(total_before=before[0], total_after=after[0], blocks_before=before[1],
                              blocks_after=after[1], achieved_sparsity=(before[1] - after[1]) / before[1]),
        pruning=pruning_report, memory={**peak, **{f"process_{k}": v for k, v in memory.read().items()}},
        environment={**capture(), "runtime": {"dtype": str(loaded.dtype).removeprefix("torch."),
                                              "device": str(loaded.device)}},
        **results,
    )


def failed(spec: CellSpec, started: str, seconds: float, kind: str, message: str, log_tail: str = "") -> CellResult:
    return CellResult(
        status="failed",
        cell=cell_of(spec),
        config=spec.model_dump(mode="json"), config_hash=spec.config_hash(), started_at=started, finished_at=now(),
        wall_seconds=seconds, environment=capture(), error=ErrorInfo(kind=kind, message=message, log_tail=log_tail),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one prunebench cell.")
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub", "transformers", "lm_eval"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    spec = CellSpec(**json.loads(args.spec.read_text()))
    started, t0 = now(), time.perf_counter()
    try:
        result = run(spec)
    except (PrunebenchError, MethodError) as err:
        log.error("%s", err)
        result = failed(spec, started, time.perf_counter() - t0, "invalid", str(err))
    except Exception as err:  # record any failure of the cell as its result; the bench goes on
        log.error("cell failed: %s", traceback.format_exc())
        kind_msg = f"{type(err).__name__}: {err}"
        result = failed(spec, started, time.perf_counter() - t0, "exception", kind_msg.splitlines()[0][:500],
                        traceback.format_exc()[-4000:])
    write_result(args.result, result)
    log.info("cell %s: %s in %.1f s", spec.id, result.status, result.wall_seconds)
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
