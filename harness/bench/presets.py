"""The paper's experiments as named benches (the authors' --main_table_results and --ablation).

Each preset fills the bench's rows, sparsities and seeds; every other setting (model,
profile, executor, metrics) comes from the bench as usual, and the results go to their own folder,
runs/<model>/<preset>/, with their own leaderboard (`prunebench publish` copies them to
results/<model>/<preset>/).
"""

from __future__ import annotations

from harness.bench.config import BenchConfig, CalibrationConfig, Row
from harness.errors import PrunebenchError

PAPER_SPARSITIES = [0.25, 0.375, 0.5]
CALIBRATION_SIZES = [2, 4, 8, 16, 32, 64, 128, 256]


def _main_table(config: BenchConfig, profile: str) -> dict:
    """Every registered method (dense and both forms of BlockPruner and EvoPress included) at the paper's
    three sparsities; perplexity on the profile's datasets."""
    return {"methods": ["every"], "sparsities": PAPER_SPARSITIES}


def _calibration(config: BenchConfig, profile: str) -> dict:
    """2SSP at 50 % with 2..256 calibration samples, seeds 0-4 (mean and spread on the leaderboard)."""
    variants = [Row(name=f"2ssp-calib{n}", method="2ssp", calibration=CalibrationConfig(samples=n))
                for n in CALIBRATION_SIZES]
    return {"methods": [], "rows": variants, "sparsities": [0.5], "seeds": [0, 1, 2, 3, 4]}


def _pair(name_a: str, options_a: dict, name_b: str, options_b: dict) -> dict:
    return {"methods": [], "sparsities": PAPER_SPARSITIES,
            "rows": [Row(name=name_a, method="2ssp", options=options_a),
                         Row(name=name_b, method="2ssp", options=options_b)]}


def _balancing(config: BenchConfig, profile: str) -> dict:
    """2SSP at every sparsity step k/L with every attention count N (the paper's sweep of the balance).

    The paper profile sweeps everything; cpu-quick keeps the paper's three sparsities and every third N,
    which still shows the shape of the heat map in minutes per row on a laptop. Infeasible pairs
    (N attention modules beyond the budget, or too few to reach it) are left out, with a note.
    """
    from harness.models import num_layers

    L = num_layers(config.model, config.trust_remote_code)
    if profile == "paper":
        sparsities, counts = [k / L for k in range(1, L)], range(L)
    else:
        sparsities, counts = PAPER_SPARSITIES, range(0, L, 3)
    variants = [Row(name=f"2ssp-nattn{n}", method="2ssp", options={"n_attn": n}) for n in counts]
    return {"methods": [], "rows": variants, "sparsities": sparsities}


PRESETS = {
    "main-table": _main_table,
    "calibration": _calibration,
    "one-stage": lambda c, p: _pair("2ssp", {}, "2ssp-stage1-only", {"stages": "width"}),
    "rows-vs-cols": lambda c, p: _pair("2ssp", {}, "2ssp-columns", {"scoring": "channels"}),
    "l1-norm": lambda c, p: _pair("2ssp", {}, "2ssp-l1", {"norm": "l1"}),
    "balancing": _balancing,
}


def apply_preset(config: BenchConfig, profile: str) -> BenchConfig:
    build = PRESETS.get(config.preset or "")
    if build is None:
        raise PrunebenchError(f"unknown preset '{config.preset}'; known: {', '.join(PRESETS)}")
    return config.model_copy(update=build(config, profile))
