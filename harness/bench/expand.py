"""From a bench configuration to validated cells, before anything heavy runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from harness.bench.config import (
    BenchConfig,
    CellSpec,
    Row,
    cell_id,
    metric_config,
    model_slug,
    profile_defaults,
)
from harness.bench.presets import apply_preset
from harness.errors import PrunebenchError
from harness.metrics.registry import METRICS
from harness.models import num_layers
from harness.outputs import check_run_folder
from harness.profiles import method_protocol, resolve_profile
from harness.pruning import resolve_calibration, sparsities_for
from methods import expand_method_name, get_method, method_names
from methods.errors import MethodError, UnsupportedArchitecture

log = logging.getLogger(__name__)


@dataclass
class ResolvedBench:
    config: BenchConfig
    profile: str
    out: Path
    cells: list[CellSpec]
    sparsities: list[float]
    notes: list[str] = field(default_factory=list)
    # Rows a group (all, every) brought in, not named by the user: left out where the model's architecture
    # does not support them, so that `--methods all` runs the rest of the comparison on any model.
    grouped: dict[str, str] = field(default_factory=dict)  # row name -> the group that brought it
    # Why ``device: auto`` runs the local cells on the CPU (harness.devices), None when it does not: the header says it.
    cpu_fallback: str | None = None


def expand_methods(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for n in expand_method_name(name):
            get_method(n)  # unknown names fail here, with the list of known ones
            if n not in out:
                out.append(n)
    return sorted(out, key=lambda n: not get_method(n).reference)  # the reference row first


def grouped_methods(names: list[str]) -> dict[str, str]:
    """The methods that only a group among ``names`` brings in (a method also named on its own is not),
    each with the first group that does."""
    grouped: dict[str, str] = {}
    for name in names:
        for m in expand_method_name(name):
            if m not in names:
                grouped.setdefault(m, name)
    return grouped


def with_preset(config: BenchConfig, profile: str) -> BenchConfig:
    return apply_preset(config, profile) if config.preset else config


def resolve(config: BenchConfig) -> ResolvedBench:
    out = config.out or default_out(config.model, config.preset)
    check_out(out)  # first: a bench into results/ is refused before anything else happens
    check_run_folder(out)
    if config.cache_pruned:
        from harness.paths import cache_size_limit

        cache_size_limit()  # a bad $PRUNEBENCH_CACHE_MAX_GB: one line now, not in every cell
    fallback = None
    if config.executor == "local":  # other executors run cells where this machine's torch may not see their GPUs
        from harness.devices import cpu_fallback, resolve_device

        resolve_device(config.device)  # a CUDA device that is not usable here: one line, before anything else
        fallback = cpu_fallback(config.device)
    profile = resolve_profile(config.profile, config.device)
    config = with_preset(config, profile)
    defaults = profile_defaults(profile)
    sparsities = (sparsities_for(config.num_prune, num_layers(config.model, config.trust_remote_code))
                  if config.num_prune is not None else config.sparsities)
    unknown = set(config.method_options) - set(method_names())
    if unknown:
        raise PrunebenchError(f"method_options for unknown methods: {', '.join(sorted(unknown))}")
    variants = [Row(name=m, method=m) for m in expand_methods(config.methods)] + list(config.rows)
    names = [v.name for v in variants]
    if not variants:
        raise PrunebenchError("the bench names no method")
    if len(set(names)) != len(names):
        raise PrunebenchError(f"two bench rows share a name: {sorted({n for n in names if names.count(n) > 1})}")
    source = config.calibration.source if config.calibration.source != "auto" else defaults["calibration_source"]
    model_type = _ModelType(config.model, config.trust_remote_code)
    metrics = {name: metric_config(name, profile, getattr(config, name)) for name in METRICS}
    recovery = _recovery(config, profile)
    cells: list[CellSpec] = []
    for v in variants:
        method = get_method(v.method)
        options = method.options({**config.method_options.get(v.method, {}), **v.options},
                                 method_protocol(profile)).model_dump(mode="json")
        calibration = resolve_calibration(method, method_protocol(profile), v.calibration or config.calibration,
                                          model_type, lambda: source)
        if method.reference:
            grid = [(0.0, 0)]
        else:
            grid = [(s, seed) for s in (v.sparsities or sparsities) for seed in (v.seeds or config.seeds)]
        # With recovery, a pruned model is measured twice, as pruned and as recovered: two cells, the second
        # right after the first (it heals the model the first left in the cache). The first is the same cell as
        # in a bench without recovery, so a recovery bench resumes the plain bench's results.
        healed = [False] if method.reference or recovery is None else [False, True]
        for (sparsity, seed), recovered in ((point, r) for point in grid for r in healed):
            cells.append(CellSpec(
                id=cell_id(v.name, sparsity, seed, recovered, reference=method.reference), model=config.model,
                method=v.method, variant=v.name,
                sparsity=sparsity, seed=seed, profile=profile, method_options=options, calibration=calibration,
                **metrics,
                dtype=config.dtype, device=config.device, numerics=config.numerics, tokenizer=config.tokenizer,
                trust_remote_code=config.trust_remote_code, cache_pruned=config.cache_pruned, export=config.export,
                recovery=recovery if recovered else None,
            ))
    return ResolvedBench(config, profile, out, cells, sparsities, grouped=grouped_methods(config.methods),
                         cpu_fallback=fallback)


def _recovery(config: BenchConfig, profile: str):
    """The bench's recovery settings on top of the profile's, or None when it asks for none."""
    from harness.recovery.config import recovery_config

    asked = dict(config.recovery) if config.recovery is not None else None
    if asked is None or asked.pop("enabled", True) is False:
        return None
    return recovery_config(profile, asked)


def default_out(model: str, preset: str | None = None) -> Path:
    """Where a bench writes unless told otherwise: the user's own runs, never the published results."""
    return Path("runs") / model_slug(model) / (preset or "")


def published_root(path: Path) -> Path | None:
    """The ``results/`` folder of a prunebench checkout that ``path`` is in (or is), if any."""
    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        if folder.name == "results" and (folder.parent / "harness" / "cli.py").is_file():
            return folder
    return None


def check_out(out: Path) -> None:
    """results/ holds published runs only: a bench never writes there (``prunebench publish`` does)."""
    root = published_root(out)
    if root is not None:
        raise PrunebenchError(
            f"--out {out} is inside {root}, which holds published runs only; bench into runs/ (the default) "
            "and copy a finished run there with `prunebench publish RUN_DIR`"
        )


class _ModelType:
    """The model's ``model_type``, read from its config the first time a method's calibration depends on it."""

    def __init__(self, model: str, trust_remote_code: bool):
        self.model, self.trust_remote_code, self.value = model, trust_remote_code, ""

    def __call__(self) -> str:
        if not self.value:
            from harness.models import checked_config, resolve_model

            self.value = checked_config(resolve_model(self.model), self.trust_remote_code).model_type
        return self.value


def hub_needs(bench: ResolvedBench) -> tuple[list[tuple[str, str]], list[str]]:
    """The hub corpora (source, role) and lm-eval hub tasks the bench's cells read (harness.bench.inputs): the
    calibration's, and what each metric says it reads (``Metric.hub_needs``)."""
    from harness.data.sources import hub_source

    first = bench.cells[0]
    corpora = sorted({(c.calibration.source, "calibration") for c in bench.cells if hub_source(c.calibration.source)})
    tasks: list[str] = []
    for name, metric in METRICS.items():
        needs = metric.hub_needs(getattr(first, name))
        corpora += [(d, "evaluation") for d in needs.corpora]
        tasks += needs.tasks
    return corpora, tasks


def validate(bench: ResolvedBench) -> None:
    """Every check that needs no weights: data sources, metrics, the model's config, each cell's plan.

    With ``--num-prune -1`` (every step), cells beyond a method's feasible range are dropped with a
    note; otherwise an infeasible cell is an error. A method that does not support the model's architecture
    is dropped with a note when a group brought it in (``all``), an error when it was named.
    """
    from harness.data.sources import validate_source
    from harness.models import check_positions, checked_config, resolve_model
    from harness.pruning import skeleton_adapter

    ref = resolve_model(bench.config.model)  # first: a model that is not installed is refused before the data
    first = bench.cells[0]
    calibration = sorted({c.calibration.source for c in bench.cells if c.calibration.source != "none"})
    for source in calibration:
        validate_source(source)
    for name, metric in METRICS.items():
        metric.validate(getattr(first, name))
    config = checked_config(ref, bench.config.trust_remote_code)
    recovery = next((c.recovery for c in bench.cells if c.recovery is not None), None)
    if recovery is not None:
        from harness.recovery.stage import evaluation_sources, plan

        plan(bench.profile, recovery.model_dump(), config.model_type, evaluation_sources(first))
        check_positions(config, recovery.seq_len, "a recovery sample")
    for name, metric in METRICS.items():
        if getattr(first, name).enabled:
            check_positions(config, metric.positions(getattr(first, name)), f"{name}: a sequence")
    for length in sorted({c.calibration.seq_len for c in bench.cells if c.calibration.seq_len}):
        check_positions(config, length, "a calibration sample")
    skeleton = skeleton_adapter(ref, config, bench.config.trust_remote_code)
    keep, unsupported = [], {}
    for cell in bench.cells:
        method = get_method(cell.method)
        try:
            plan = method.plan(skeleton, cell.sparsity, method.Options(**cell.method_options))
        except UnsupportedArchitecture as err:
            if cell.variant not in bench.grouped:
                raise PrunebenchError(f"method '{cell.variant}' cannot run on model '{ref.name}': {err}") from None
            unsupported.setdefault(cell.variant, str(err))
            continue
        except MethodError as err:
            if bench.config.num_prune != -1 and not bench.config.preset:
                raise PrunebenchError(f"cell {cell.id}: {err}") from None
            bench.notes.append(f"left out {cell.id}: infeasible ({str(err).split(':')[0]})")
            continue
        keep.append(cell.model_copy(update={"plan": plan}))  # the cell carries it out (CellSpec.plan)
    for variant, reason in unsupported.items():
        bench.notes.append(f"left out {variant} (from '{bench.grouped[variant]}'): {reason}")
        log.warning("%s", bench.notes[-1])
    if not keep:
        raise PrunebenchError(f"no cell of this bench can run on model '{ref.name}': {'; '.join(bench.notes)}")
    bench.cells = keep
