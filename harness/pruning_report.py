"""What one pruning run reports: its timing by stage, decisions, plan and calibration.

Its own module, below ``harness.results``, because pruning (``harness.pruning``) writes it and must not
import the metric registry that a cell's result is built from: the pruned-model cache keys on the code
pruning imports, and a change to a metric must not throw away every cached pruned model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from harness.schema import Scalar, Strict


class Provenance(Strict):
    """Who measured a number that a result shows but did not measure itself (a cached pruned model's timing)."""

    cell: str
    run: str | None = None  # the bench run (its folder and start) the cell belonged to
    finished_at: str
    git: dict[str, str | bool] | None  # commit and dirty flag of the code that ran
    hardware: str  # harness.env.fingerprint of the machine


class PruningReport(Strict):
    """One pruning run: its timing by stage, the method's decisions and plan, its options and calibration.

    The same model is returned by ``harness.pruning.execute``, printed by ``prunebench prune``, stored in the
    pruned checkpoint's manifest and in a cell's result. ``decisions``, ``plan`` and ``options`` are the
    method's own JSON data. When a cell reuses a cached pruned model, ``from_cache`` is true and the timings
    are those of the run named by ``pruned_by``, never the cell's own.
    """

    method: str
    target_sparsity: float | None
    achieved_sparsity: float
    # The same with the norms of removed attention modules counted as kept, as the reference harness counts
    # (docs/reference-harness.md); None where no attention module was removed alone.
    achieved_sparsity_norms_kept: float | None = None
    parameters_before: dict[str, int]  # total, blocks
    parameters_after: dict[str, int]
    seconds: float
    stages: dict[str, float]
    decisions: dict[str, JsonValue]
    plan: dict[str, JsonValue]
    options: dict[str, JsonValue]
    calibration: dict[str, Scalar]
    model: dict[str, str]  # name, kind, dtype, device
    numerics: Literal["exact", "reference"] = "exact"  # how the method's scores were computed (methods.base)
    # stage -> the computation path that ran where machines may differ without changing decisions (e.g. a
    # search's batching and prefix cache, kept only where checked bit-identical at run time: methods.search)
    paths: dict[str, str] = {}
    pruned_by: Provenance | None = None
    from_cache: bool = False
    cache_key: str | None = None
    # Why the cache entry this cell should have reused was pruned again (corrupt, unverifiable, not loading).
    cache_repair: str | None = None
