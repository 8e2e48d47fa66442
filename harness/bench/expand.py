"""From a bench configuration to validated cells, before anything heavy runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harness.bench.config import (
    BenchConfig,
    CalibrationConfig,
    CellSpec,
    cell_id,
    model_slug,
    profile_defaults,
)
from harness.errors import PrunebenchError
from methods import get_method, method_names
from methods.errors import MethodError

log = logging.getLogger(__name__)


@dataclass
class ResolvedBench:
    config: BenchConfig
    profile: str
    out: Path
    cells: list[CellSpec]


def resolve_profile(config: BenchConfig) -> str:
    """'auto' is the paper's protocol on a CUDA machine and the quick one on a CPU."""
    if config.profile != "auto":
        return config.profile
    import torch

    on_gpu = torch.cuda.is_available() and config.device != "cpu"
    return "paper" if on_gpu else "cpu-quick"


def expand_methods(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for n in method_names() if name == "all" else [name]:
            get_method(n)  # unknown names fail here, with the list of known ones
            if n not in out:
                out.append(n)
    return sorted(out, key=lambda n: (n != "dense",))  # the reference row first


def resolve(config: BenchConfig) -> ResolvedBench:
    profile = resolve_profile(config)
    defaults = profile_defaults(profile)
    methods = expand_methods(config.methods)
    if not methods:
        raise PrunebenchError("the bench names no method")
    calibration_source = config.calibration.source if config.calibration.source != "auto" else defaults["calibration_source"]
    cells: list[CellSpec] = []
    for name in methods:
        method = get_method(name)
        unknown = set(config.method_options) - set(method_names())
        if unknown:
            raise PrunebenchError(f"method_options for unknown methods: {', '.join(sorted(unknown))}")
        options = method.options(config.method_options.get(name), profile).model_dump(mode="json")
        needs = method.calibration.get(profile)
        if needs and needs.samples:
            calibration = CalibrationConfig(source=calibration_source,
                                            samples=config.calibration.samples or needs.samples,
                                            seq_len=config.calibration.seq_len or needs.seq_len)
        else:  # a method without calibration (the dense model)
            calibration = CalibrationConfig(source="none")
        grid = [(0.0, 0)] if name == "dense" else [(s, seed) for s in config.sparsities for seed in config.seeds]
        for sparsity, seed in grid:
            cells.append(CellSpec(
                id=cell_id(name, sparsity, seed), model=config.model, method=name, sparsity=sparsity, seed=seed,
                profile=profile, method_options=options, calibration=calibration,
                perplexity=config.perplexity or defaults["perplexity"],
                downstream=config.downstream or defaults["downstream"],
                latency=config.latency or defaults["latency"],
                qualitative=config.qualitative, dtype=config.dtype, device=config.device,
                trust_remote_code=config.trust_remote_code, cache_pruned=config.cache_pruned,
            ))
    out = config.out or Path("results") / model_slug(config.model)
    return ResolvedBench(config, profile, out, cells)


def validate(bench: ResolvedBench) -> None:
    """Every check that needs no weights: data sources, tasks, the model's config, each cell's plan."""
    from harness.data.sources import validate_source
    from harness.metrics.downstream import validate_tasks
    from harness.models import check_model, resolve_model
    from harness.pruning import skeleton_adapter

    first = bench.cells[0]
    for dataset in first.perplexity.datasets:
        validate_source(dataset)
    if first.downstream.enabled:
        validate_tasks(first.downstream.tasks)
    for source in {c.calibration.source for c in bench.cells if c.calibration.source != "none"}:
        validate_source(source)
    ref = resolve_model(bench.config.model)
    config = check_model(ref, bench.config.trust_remote_code)
    skeleton = skeleton_adapter(ref, config, bench.config.trust_remote_code)
    for cell in bench.cells:
        if cell.method == "dense":
            continue
        method = get_method(cell.method)
        try:
            method.plan(skeleton, cell.sparsity, method.Options(**cell.method_options))
        except MethodError as err:
            raise PrunebenchError(f"cell {cell.id}: {err}") from None
