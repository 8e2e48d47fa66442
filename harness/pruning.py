"""One pruning run: validate everything cheap first, then load, calibrate, prune, count, save.

``prepare`` refuses bad input (unknown method or option, unreadable data, unknown model, infeasible
sparsity) using configs and weightless skeletons only; ``execute`` does the heavy work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.data.sources import JOIN, load_corpus, validate_source
from harness.data.tokens import (
    Calibration,
    calibration_samples,
    encode,
    per_document_samples,
    shuffled_documents,
    tokenize,
)
from harness.devices import resolve_device
from harness.errors import PrunebenchError
from harness.models import (
    TOKENIZER_KINDS,
    LoadedModel,
    ModelRef,
    TokenizerKind,
    check_positions,
    checked_config,
    load_model,
    model_record,
    resolve_model,
    tokenizer_kind,
)
from harness.profiles import method_protocol, resolve_calibration_source
from harness.pruning_report import PruningReport
from harness.schema import Scalar, as_scalars
from methods import get_method
from methods.arch import ModelAdapter, adapt
from methods.base import (
    NUMERICS,
    MethodOptions,
    Numerics,
    Progress,
    PruneContext,
    PruningMethod,
    StageTimer,
    no_progress,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PruneJob:
    method: str
    sparsity: float | None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)  # as asked: prepare() resolves it
    seed: int = 0  # the method's random choices, and the calibration's draw where it says so
    profile: str = "paper"
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    numerics: Numerics = "exact"
    tokenizer: TokenizerKind = "fast"
    plan: dict[str, Any] | None = None  # made already by the caller (a bench's driver); None: prepare() makes it


@dataclass
class Prepared:
    job: PruneJob
    method: PruningMethod
    options: MethodOptions
    ref: ModelRef
    calibration: Calibration  # resolved: concrete source, samples and length (source "none": no calibration)
    plan: dict[str, Any]


@dataclass
class PruneOutcome:
    loaded: LoadedModel
    adapter: ModelAdapter
    report: PruningReport


def skeleton_adapter(ref: ModelRef, config: Any, trust_remote_code: bool = False) -> ModelAdapter:
    """The model's structure without its weights: enough for parameter counts and feasibility."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    if ref.kind == "pruned":
        from harness.checkpoint import build_skeleton, read_manifest

        return build_skeleton(read_manifest(ref.location))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return adapt(model)


def sparsities_for(num_prune: int, layers: int) -> list[float]:
    """The authors' --num_prune: N blocks' worth (N/L); -2 the paper's three rates; -1 every step 1/L."""
    if num_prune == -2:
        return [0.25, 0.375, 0.5]
    if num_prune == -1:
        return [k / layers for k in range(1, layers)]
    if not 0 < num_prune < layers:
        raise PrunebenchError(f"--num-prune {num_prune}: give 1..{layers - 1} blocks (the model has {layers}), "
                              "-1 or -2")
    return [num_prune / layers]


def check_settings(numerics: str, tokenizer: str, seed: int = 0) -> None:
    """The run-wide settings, refused in one line before anything loads."""
    if numerics not in NUMERICS:
        raise PrunebenchError(f"unknown numerics '{numerics}'; choose {' or '.join(NUMERICS)}")
    if tokenizer not in TOKENIZER_KINDS:
        raise PrunebenchError(f"unknown tokenizer '{tokenizer}'; choose {' or '.join(TOKENIZER_KINDS)}")
    if seed < 0:
        raise PrunebenchError(f"the seed is a non-negative integer, got {seed}")


def resolve_calibration(method: PruningMethod, protocol: str, asked: Calibration, model_type: Callable[[], str],
                        auto_source: Callable[[], str]) -> Calibration:
    """The calibration a run of ``method`` under ``protocol`` uses: ``asked``, with the method's amount where none
    was asked and ``auto_source()`` for the source ``auto``; ``source="none"`` for a method that calibrates on
    nothing (the dense model). The one place where calibration defaults are filled in: a bench's driver calls it
    when it expands its cells (which then carry the result), ``prunebench prune`` when it prepares its run.
    ``model_type()`` is asked only of a method whose amount depends on the model."""
    needs = method.calibration[protocol]
    if not needs.samples:
        return Calibration(source="none")
    if type(method).calibration_needs is not PruningMethod.calibration_needs:
        needs = method.calibration_needs(protocol, model_type(), asked.construction)
    return asked.model_copy(update={"source": auto_source() if asked.source == "auto" else asked.source,
                                    "samples": asked.samples or needs.samples,
                                    "seq_len": asked.seq_len or needs.seq_len})


def prepare(job: PruneJob) -> Prepared:
    method = get_method(job.method)
    protocol = method_protocol(job.profile)
    options = method.options(job.options, protocol)
    check_settings(job.numerics, job.tokenizer, job.seed)
    resolve_device(job.device)  # a CUDA device that is not usable here: one line, before the model and the data
    ref = resolve_model(job.model)
    config = checked_config(ref, job.trust_remote_code)
    calib = resolve_calibration(method, protocol, job.calibration, lambda: config.model_type,
                                lambda: resolve_calibration_source("auto"))
    if calib.samples:
        validate_source(calib.source)
        check_positions(config, calib.seq_len, "a calibration sample")
    plan = job.plan
    if plan is None:
        plan = method.plan(skeleton_adapter(ref, config, job.trust_remote_code), job.sparsity or 0.0, options)
    return Prepared(job, method, options, ref, calib, plan)


def calibration_tokens(prepared: Prepared, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Scalar]]:
    """The calibration samples [samples, seq_len] and the protocol that reproduces them."""
    spec, seed = prepared.calibration, prepared.job.seed
    if not spec.samples:  # resolve_calibration: a method that needs none
        return torch.empty(0, 0, dtype=torch.long), {}
    assert spec.seq_len is not None  # resolved with the samples
    corpus = load_corpus(spec.source, "calibration")
    shuffled = spec.draw == "shuffle" and seed != 0
    documents = shuffled_documents(corpus.documents, seed) if shuffled else list(corpus.documents)
    if spec.construction == "per-document":
        samples, corpus_tokens = per_document_samples(tokenizer, documents, spec.samples, spec.seq_len, JOIN)
        selection = "per document: each tokenized alone, cut at the sample length (corpus_tokens: those consumed)"
    else:
        tokens = encode(tokenizer, JOIN.join(documents)) if shuffled else tokenize(tokenizer, corpus)
        chunk_seed = seed if spec.draw == "random-chunks" else 0
        samples = calibration_samples(tokens, spec.samples, spec.seq_len, chunk_seed)
        corpus_tokens = int(tokens.numel())
        selection = "first consecutive chunks" if chunk_seed == 0 else "seeded random chunks"
    order = f"shuffled by Python random({seed})" if shuffled else "as stored"
    protocol = {**as_scalars(corpus.protocol), "source": spec.source, "samples": spec.samples, "seq_len": spec.seq_len,
                "seed": seed, "construction": spec.construction, "draw": spec.draw, "document_order": order,
                "selection": selection, "corpus_tokens": corpus_tokens, "tokenizer": tokenizer_kind(tokenizer)}
    return samples, protocol


def execute(prepared: Prepared, progress: Progress = no_progress, loaded: LoadedModel | None = None) -> PruneOutcome:
    job = prepared.job
    loaded = loaded or load_model(prepared.ref, dtype=job.dtype, device=job.device,
                                  trust_remote_code=job.trust_remote_code, tokenizer=job.tokenizer)
    adapter = adapt(loaded.model)
    before = {"total": adapter.total_parameters(), "blocks": adapter.block_parameters()}
    attention_norms = sum(p.numel() for m in adapter.attn_norms(0) for p in m.parameters())
    samples, calib_protocol = calibration_tokens(prepared, loaded.corpus_tokenizer)
    torch.manual_seed(job.seed)
    timer = StageTimer(loaded.device)
    ctx = PruneContext(samples, job.sparsity or 0.0, job.seed, progress, timer, job.numerics, plan=prepared.plan)
    start = time.perf_counter()
    with torch.no_grad():
        decisions = prepared.method.prune(adapter, prepared.options, ctx)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    seconds = time.perf_counter() - start
    after = {"total": adapter.total_parameters(), "blocks": adapter.block_parameters()}
    removed = before["blocks"] - after["blocks"]
    # The reference harness leaves a removed attention's input norm in the model and counts it as kept.
    norms_freed = attention_norms * sum(op["op"] == "remove_attention" for op in adapter.ops)
    report = PruningReport(
        method=prepared.method.name,
        target_sparsity=job.sparsity,
        achieved_sparsity=removed / before["blocks"],
        achieved_sparsity_norms_kept=(removed - norms_freed) / before["blocks"] if norms_freed else None,
        parameters_before=before,
        parameters_after=after,
        seconds=seconds,
        stages=dict(timer.stages),
        decisions=decisions,
        plan=prepared.plan,
        options=prepared.options.model_dump(mode="json"),
        calibration=calib_protocol,
        model=model_record(loaded),
        numerics=job.numerics,
        paths=dict(ctx.paths),
    )
    return PruneOutcome(loaded, adapter, report)


def save(outcome: PruneOutcome, out: Path) -> Path:
    from harness.checkpoint import save_pruned

    return save_pruned(outcome.adapter, outcome.loaded.tokenizer, out,
                       info={"prune_report": outcome.report.model_dump(mode="json")})
