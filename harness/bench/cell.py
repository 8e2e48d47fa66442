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
from harness.errors import PrunebenchError, first_line
from harness.logs import quiet_libraries
from harness.pruning_report import Provenance, PruningReport
from harness.results import (
    EXPORTS_DIR,
    Cell,
    CellResult,
    ErrorInfo,
    Exports,
    Parameters,
    write_result,
)
from methods import get_method
from methods.errors import MethodError

log = logging.getLogger("prunebench.cell")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def model_identity(ref) -> str:
    """A stable name of the weights a model reference points at (for the pruned-model cache key).

    A local directory is named by its path, its config and manifest, and each weight file's name, size
    and modification time: weights saved over the same directory (a fine-tune) give a new name.
    """
    from harness.checkpoint import MANIFEST_NAME
    from harness.models import EMBEDDED_MODELS

    if ref.kind == "embedded":
        spec = EMBEDDED_MODELS[ref.name]
        return f"{ref.name}@{spec.package}=={spec.package_version}"
    if ref.kind in ("local", "pruned"):
        root = Path(ref.location)
        digest = hashlib.sha256()
        for name in ("config.json", MANIFEST_NAME):
            file = root / name
            digest.update(name.encode() + b"\0" + (file.read_bytes() if file.exists() else b"?"))
        for file in sorted([*root.glob("*.safetensors"), *root.glob("*.bin")]):
            stat = file.stat()
            digest.update(f"\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return f"{ref.location}#{digest.hexdigest()[:16]}"
    from harness.hub import cached_commit

    return f"{ref.location}@{ref.revision or cached_commit(ref.location) or 'main'}"  # a hub id at its commit


class PeakMemory:
    """Peak resident memory of this process (Linux VmHWM, resettable) and peak CUDA allocation on the cell's
    device (``cuda:N`` is read on N, not on the current device; none on the CPU)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.cuda = device if device is not None and device.type == "cuda" else None

    def reset(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError as err:  # not Linux, or not allowed: the peak then counts from the process start
            log.debug("cannot reset the peak resident memory (%s)", err)
        if self.cuda is not None:
            torch.cuda.reset_peak_memory_stats(self.cuda)

    def read(self) -> dict[str, int | None]:
        rss = None
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024
        except OSError as err:  # not Linux: no peak recorded
            log.debug("cannot read the peak resident memory (%s)", err)
        cuda = torch.cuda.max_memory_allocated(self.cuda) if self.cuda is not None else None
        return {"peak_rss_bytes": rss, "peak_cuda_bytes": cuda}


def _release_dense(loaded) -> None:
    """Let the dense model go before a cached pruned one is loaded, so that the cell never holds both.

    ``loaded`` is its last holder: ``run`` drops its dense adapter and measuring context and keeps no
    name of its own for the model while the pruned one is obtained.
    """
    loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_cached(entry: Path, key: str, loaded) -> tuple[Any, PruningReport] | str:
    """The cached pruned model and its stored report, the dense model released first; why not, when the
    entry does not load (the dense model is then loaded again to prune)."""
    from harness.checkpoint import load_pruned, read_manifest

    try:
        manifest = read_manifest(entry)
        stored = PruningReport.model_validate(manifest["prune_report"])
        report = stored.model_copy(update={"from_cache": True, "cache_key": key})
        _release_dense(loaded)
        return _logged(load_pruned(entry, dtype=loaded.dtype, device=loaded.device), manifest), report
    except (MemoryError, torch.OutOfMemoryError):
        raise  # the machine's limit, not the entry's fault
    except Exception as err:  # a sound-looking entry that does not load is as bad as a corrupt one
        why = f"not loading ({first_line(err)[:200]})"
        log.warning("cached pruned model %s is %s; pruning again", entry, why)
        return why


def _logged(model: Any, manifest: dict[str, Any]):
    """The adapter of a reloaded pruned model with the dense config and edits its manifest records."""
    from methods.arch import adapt

    adapter = adapt(model)
    adapter.base_config, adapter.ops = dict(manifest["base_config"]), list(manifest["ops"])
    return adapter


def prune_job(spec: CellSpec):
    """The pruning run a cell's spec describes (a ``harness.pruning.PruneJob``)."""
    from harness import pruning

    return pruning.PruneJob(
        method=spec.method, sparsity=spec.sparsity, model=spec.model, options=spec.method_options,
        calibration=spec.calibration, seed=spec.seed, profile=spec.profile, dtype=spec.dtype, device=spec.device,
        trust_remote_code=spec.trust_remote_code, numerics=spec.numerics, tokenizer=spec.tokenizer, plan=spec.plan,
    )


def _prune(spec: CellSpec, loaded, memory: PeakMemory) -> tuple[Any, PruningReport, dict[str, Any]]:
    """Prune ``loaded`` in place: the outcome, the report to store and return, the peak memory."""
    from harness import pruning
    from harness.env import fingerprint

    prepared = pruning.prepare(prune_job(spec))
    memory.reset()
    outcome = pruning.execute(prepared, loaded=loaded)
    peak = memory.read()
    env = capture()
    # who pruned it: a cell served from the cache reports the run its model comes from
    by = Provenance(cell=spec.id, run=spec.run, finished_at=now(), git=env["prunebench"]["git"],
                    hardware=fingerprint(env))
    return outcome, outcome.report.model_copy(update={"pruned_by": by}), peak


def prune_or_reuse(spec: CellSpec, loaded, memory: PeakMemory) -> tuple[Any, PruningReport, dict[str, int | None]]:
    """The pruned model of this cell (its adapter, with the dense config and the edits made: what an export
    reads), from the pruned-model cache when the same pruning ran before.

    The cache (harness.prune_cache) is keyed by what determines the model, code included; it serves only
    entries that verify, and ``spec.reprune`` (bench --force) prunes again. An entry that verifies but
    does not load is pruned again once, in this cell.
    """
    from harness.checkpoint import save_pruned
    from harness.devices import device_identity
    from harness.models import load_weights
    from harness.prune_cache import PrunedModelCache, code_fingerprint

    if not spec.cache_pruned:
        outcome, report, peak = _prune(spec, loaded, memory)
        return outcome.adapter, report, peak
    fingerprint = code_fingerprint()
    key = spec.prune_key(model_identity(loaded.ref), fingerprint, dtype=str(loaded.dtype).removeprefix("torch."),
                         device=device_identity(loaded.device))
    cache = PrunedModelCache.in_cache("pruned")
    fresh: dict[str, Any] = {}

    def create(entry: Path) -> None:
        if loaded.model is None:  # released for a cached model that then did not load: the same weights again
            loaded.model = load_weights(loaded.ref, loaded.dtype, loaded.device, spec.trust_remote_code)
        outcome, report, peak = _prune(spec, loaded, memory)
        info = {"prune_report": report.model_dump(mode="json"), "cell": spec.id, "cache_key": key,
                "fingerprint": fingerprint}
        save_pruned(outcome.adapter, loaded.tokenizer, entry, info=info)
        fresh.update(adapter=outcome.adapter, report=report, peak=peak)

    entry, created, repair = cache.obtain(key, create, spec.reprune)
    if not created:
        log.info("pruned model found in the cache (%s): not pruning again", entry)
        served = _load_cached(entry, key, loaded)
        if not isinstance(served, str):
            return (*served, {})
        repair = served
        cache.obtain(key, create, reprune=True)  # creates: the model is the one pruned now
    report = fresh["report"].model_copy(update={"cache_key": key, "cache_repair": repair})
    return fresh["adapter"], report, fresh["peak"]


def recover_cell(spec: CellSpec, adapter, loaded, report: PruningReport):
    """(adapter, recovery report) of the cell's recovered model: from the recovery cache when the same pruned model
    was recovered with the same settings, data and code before, else trained now (and cached when pruning is)."""
    from harness.recovery import stage

    recovery = stage.plan_of(spec, adapter.config.model_type)
    if not spec.cache_pruned or report.cache_key is None:
        return adapter, stage.run(recovery, adapter, loaded.tokenizer)
    info = {"prune_report": report.model_dump(mode="json"), "cell": spec.id}

    def reload(entry: Path, manifest: dict[str, Any]):
        from harness.checkpoint import load_pruned

        return _logged(load_pruned(entry, dtype=loaded.dtype, device=loaded.device), manifest)

    return stage.run_cached(recovery, adapter, loaded.tokenizer, report.cache_key, info, reload)


def cell_of(spec: CellSpec) -> Cell:
    return Cell(id=spec.id, model=spec.model, method=spec.method, variant=spec.variant, sparsity=spec.sparsity,
                seed=spec.seed)


def run(spec: CellSpec, exports_dir: Path | None = None) -> CellResult:
    """Load, measure on the dense model what needs it, prune (or reuse), run every enabled metric, then write
    the exports the spec asks for into ``exports_dir`` (after the measurements, outside every timing)."""
    from harness.devices import resolve_device
    from harness.metrics.base import MeasureContext
    from harness.metrics.registry import METRICS
    from harness.models import load_model, model_record, resolve_model
    from methods.arch import adapt

    started, t0 = now(), time.perf_counter()
    memory = PeakMemory(resolve_device(spec.device))
    ref = resolve_model(spec.model)
    loaded = load_model(ref, dtype=spec.dtype, device=spec.device, trust_remote_code=spec.trust_remote_code,
                        tokenizer=spec.tokenizer)
    dense = adapt(loaded.model)
    before = (dense.total_parameters(), dense.block_parameters())
    enabled = {name: m for name, m in METRICS.items() if getattr(spec, name).enabled}
    is_dense = get_method(spec.method).reference
    # Where the model came from (a prune report's model record): what an export, the engine's or --export's, names.
    source = model_record(loaded)
    dense_ctx = MeasureContext(loaded.model, dense, loaded.tokenizer, spec.seed, is_dense, source, spec.numerics,
                               loaded.corpus_tokenizer)
    measured_before = {name: m.before_pruning(getattr(spec, name), dense_ctx) for name, m in enabled.items()}
    del dense_ctx, dense  # from here on ``loaded`` alone holds the dense model (a cached pruned one replaces it)
    pruning_report, peak = None, {}
    if is_dense:
        adapter = adapt(loaded.model)
    else:
        log.info("pruning with %s at %.4g", spec.method, spec.sparsity)
        adapter, pruning_report, peak = prune_or_reuse(spec, loaded, memory)
    recovery_report = None
    if spec.recovery is not None and pruning_report is not None:  # the dense cell is never recovered
        adapter, recovery_report = recover_cell(spec, adapter, loaded, pruning_report)
    model = adapter.model.eval()
    after = (adapter.total_parameters(), adapter.block_parameters())
    ctx = MeasureContext(model, adapter, loaded.tokenizer, spec.seed, is_dense, source, spec.numerics,
                         loaded.corpus_tokenizer)
    results = {name: m.measure(getattr(spec, name), ctx, measured_before[name]) for name, m in enabled.items()}
    wall, process_memory = time.perf_counter() - t0, memory.read()  # the cell's own work: exports are not in it
    exports = write_exports(spec, adapter, loaded.tokenizer, source, exports_dir) if spec.export else None
    return CellResult(
        status="ok", cell=cell_of(spec), config=spec.model_dump(mode="json"), config_hash=spec.config_hash(),
        started_at=started, finished_at=now(), wall_seconds=wall,
        parameters=Parameters(total_before=before[0], total_after=after[0], blocks_before=before[1],
                              blocks_after=after[1], achieved_sparsity=(before[1] - after[1]) / before[1]),
        pruning=pruning_report, recovery=recovery_report,
        memory={**peak, **{f"process_{k}": v for k, v in process_memory.items()}},
        exports=exports,
        environment={**capture(), "runtime": runtime(spec, loaded)},
        **results,
    )


def runtime(spec: CellSpec, loaded) -> dict[str, str]:
    """What ``auto`` became in this cell: the dtype and device, and why the CPU when ``auto`` fell back to it."""
    from harness.devices import cpu_fallback

    fallback = cpu_fallback(spec.device)
    return {"dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device),
            **({"cpu_fallback": fallback} if fallback else {})}


def write_exports(spec: CellSpec, adapter, tokenizer, source: dict[str, str], exports_dir: Path | None) -> Exports:
    """Each asked format into ``exports_dir/<cell>.<format>``. A format that cannot hold the model is recorded
    with its reason (the cell is fine); an error while writing fails the cell, like any other error."""
    from harness.export import ExportRefused, export_model

    if exports_dir is None:
        raise PrunebenchError(f"cell {spec.id} asks for exports ({', '.join(spec.export)}) "
                              "but was given no folder for them")
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in adapter.model.parameters()):
        adapter.model.to(device="cpu", dtype=torch.float32)  # what formats read (export/base.py); exact widening
    done = Exports()
    for fmt in spec.export:
        try:
            done.written[fmt] = export_model(adapter, tokenizer, source, fmt, exports_dir / f"{spec.id}.{fmt}")
        except ExportRefused as err:
            log.info("export %s of cell %s refused: %s", fmt, spec.id, err)
            done.refused[fmt] = str(err)
    return done


def failed(spec: CellSpec, started: str, seconds: float, kind: str, message: str, log_tail: str = "",
           exit_code: int | None = None) -> CellResult:
    return CellResult(
        status="failed",
        cell=cell_of(spec),
        config=spec.model_dump(mode="json"), config_hash=spec.config_hash(), started_at=started, finished_at=now(),
        wall_seconds=seconds, environment=capture(),
        error=ErrorInfo(kind=kind, message=message, log_tail=log_tail, exit_code=exit_code),
    )


# What a cell imports on its way (most of it lazily, inside functions): a fork server imports it once, so the
# cells it forks start at their first line of work (executors.forkserver). A module missing here is imported by
# the cell itself, as before; one that is not installed is skipped.
PRELOAD = (
    "harness.checkpoint", "harness.devices", "harness.models", "harness.pruning", "harness.prune_cache",
    "harness.metrics.registry", "harness.metrics.perplexity", "harness.metrics.latency",
    "harness.metrics.downstream", "harness.metrics.qualitative", "harness.metrics.tasks.driver",
    "harness.metrics.tasks.hflm", "methods.registry", "methods.arch",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama", "lm_eval.evaluator", "lm_eval.tasks", "safetensors.torch",
    "scipy.io",  # imported by a library on the way through a downstream evaluation
)


def preload() -> None:
    """Import ``PRELOAD`` and the built-in methods: nothing else (no model, no tensor, no thread pool), since the
    caller forks after it."""
    import importlib

    from methods.registry import METHODS

    for name in (*PRELOAD, *sorted({target.split(":")[0] for target in METHODS.values()})):
        try:
            importlib.import_module(name)
        except ImportError as err:  # an optional extra not installed: the cell never needs it either
            log.debug("not preloaded: %s (%s)", name, err)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one prunebench cell.")
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    quiet_libraries()
    spec = CellSpec(**json.loads(args.spec.read_text()))
    started, t0 = now(), time.perf_counter()
    try:
        result = run(spec, args.result.parent / EXPORTS_DIR)
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
