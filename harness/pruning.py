"""One pruning run: validate everything cheap first, then load, calibrate, prune, count, save.

``prepare`` refuses bad input (unknown method or option, unreadable data, unknown model, infeasible
sparsity) using configs and weightless skeletons only; ``execute`` does the heavy work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.data.sources import load_corpus, validate_source
from harness.data.tokens import calibration_samples, tokenize
from harness.errors import PrunebenchError
from harness.hub import hub_reachable
from harness.metrics.base import Scalar, as_scalars
from harness.models import LoadedModel, ModelRef, checked_config, load_model, model_record, resolve_model
from harness.results import PruningReport
from methods import get_method
from methods.arch import ModelAdapter, adapt
from methods.base import (
    MethodOptions,
    Progress,
    ProtocolName,
    PruneContext,
    PruningMethod,
    StageTimer,
    no_progress,
)

log = logging.getLogger(__name__)

OFFLINE_CALIBRATION = "enwiki-sample"
PAPER_CALIBRATION = "c4"

# The method protocol each profile runs. Methods declare their calibration and option defaults per protocol
# (methods.base.PROTOCOLS), never per profile: a new profile maps onto a protocol here, no method changes.
PROFILE_PROTOCOL: dict[str, ProtocolName] = {"paper": "full", "cpu-quick": "quick"}


def method_protocol(profile: str) -> ProtocolName:
    protocol = PROFILE_PROTOCOL.get(profile)
    if protocol is None:
        raise PrunebenchError(f"unknown profile '{profile}'; known: {', '.join(PROFILE_PROTOCOL)}")
    return protocol


@dataclass(frozen=True)
class CalibrationSpec:
    """Which text calibrates, and how much. None means the method's default for the profile."""

    source: str = "auto"
    samples: int | None = None
    seq_len: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class PruneJob:
    method: str
    sparsity: float | None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    profile: str = "paper"
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass
class Prepared:
    job: PruneJob
    method: PruningMethod
    options: MethodOptions
    ref: ModelRef
    calibration: CalibrationSpec  # resolved: concrete source, samples and length
    plan: dict[str, Any]


@dataclass
class PruneOutcome:
    loaded: LoadedModel
    adapter: ModelAdapter
    report: PruningReport


def resolve_calibration_source(source: str) -> str:
    """'auto' is the paper's C4 where the hub answers and the offline Wikipedia sample where it does not."""
    if source != "auto":
        return source
    chosen = PAPER_CALIBRATION if hub_reachable() else OFFLINE_CALIBRATION
    log.debug("calibration data: %s (auto)", chosen)
    return chosen


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


def prepare(job: PruneJob) -> Prepared:
    method = get_method(job.method)
    protocol = method_protocol(job.profile)
    options = method.options(job.options, protocol)
    needs = method.calibration[protocol]
    spec = job.calibration
    calib = CalibrationSpec(
        source=resolve_calibration_source(spec.source) if needs.samples else spec.source,
        samples=spec.samples if spec.samples is not None else needs.samples,
        seq_len=spec.seq_len if spec.seq_len is not None else needs.seq_len,
        seed=spec.seed,
    )
    if needs.samples:
        validate_source(calib.source)
        if calib.samples < 1 or calib.seq_len < 2:
            raise PrunebenchError("calibration needs at least 1 sample of 2 tokens, "
                                  f"got {calib.samples} x {calib.seq_len}")
    ref = resolve_model(job.model)
    config = checked_config(ref, job.trust_remote_code)
    plan = (method.plan(skeleton_adapter(ref, config, job.trust_remote_code), job.sparsity or 0.0, options)
            if method.name != "dense" else {})
    return Prepared(job, method, options, ref, calib, plan)


def calibration_tokens(prepared: Prepared, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Scalar]]:
    spec = prepared.calibration
    if not spec.samples:  # prepare() resolved it from the method's protocol: 0 when it needs none
        return torch.empty(0, 0, dtype=torch.long), {}
    corpus = load_corpus(spec.source, "calibration")
    tokens = tokenize(tokenizer, corpus)
    samples = calibration_samples(tokens, spec.samples, spec.seq_len, spec.seed)
    protocol = {**as_scalars(corpus.protocol), "source": spec.source, "samples": spec.samples, "seq_len": spec.seq_len,
                "seed": spec.seed,
                "selection": "first consecutive chunks" if spec.seed == 0 else "seeded random chunks"}
    return samples, protocol


def execute(prepared: Prepared, progress: Progress = no_progress, loaded: LoadedModel | None = None) -> PruneOutcome:
    job = prepared.job
    loaded = loaded or load_model(prepared.ref, dtype=job.dtype, device=job.device,
                                  trust_remote_code=job.trust_remote_code)
    adapter = adapt(loaded.model)
    before = {"total": adapter.total_parameters(), "blocks": adapter.block_parameters()}
    samples, calib_protocol = calibration_tokens(prepared, loaded.tokenizer)
    torch.manual_seed(prepared.calibration.seed)
    timer = StageTimer(loaded.device)
    ctx = PruneContext(samples, job.sparsity or 0.0, prepared.calibration.seed, progress, timer)
    start = time.perf_counter()
    with torch.no_grad():
        decisions = prepared.method.prune(adapter, prepared.options, ctx)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize(loaded.device)
    seconds = time.perf_counter() - start
    after = {"total": adapter.total_parameters(), "blocks": adapter.block_parameters()}
    report = PruningReport(
        method=prepared.method.name,
        target_sparsity=job.sparsity,
        achieved_sparsity=(before["blocks"] - after["blocks"]) / before["blocks"],
        parameters_before=before,
        parameters_after=after,
        seconds=seconds,
        stages=dict(timer.stages),
        decisions=decisions,
        plan=prepared.plan,
        options=prepared.options.model_dump(mode="json"),
        calibration=calib_protocol,
        model=model_record(loaded),
    )
    return PruneOutcome(loaded, adapter, report)


def save(outcome: PruneOutcome, out: Path) -> Path:
    from harness.checkpoint import save_pruned

    return save_pruned(outcome.adapter, outcome.loaded.tokenizer, out,
                       info={"prune_report": outcome.report.model_dump(mode="json")})
